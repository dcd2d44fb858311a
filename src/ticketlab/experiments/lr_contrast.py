"""Rethinking's learning-rate contrast as one command (Liu et al. 2019, as the LTH literature reads it).

With a large learning rate (e.g. SGD 0.1 with momentum) a ticket's original init gives no edge over
a random re-init of the same mask; with a small one (Adam 1.2e-3) it does (../shared/METHODS.md,
"Supermasks and strong tickets"). The contrast is the same IMP run twice, once per *arm* (an
optimiser and learning rate; everything else equal), with the random re-init baseline at every
level, over several seeds:

    for arm in (small, large), seed in seeds:  IMP(config with arm's optimiser, lr, momentum; seed)
    per arm and level:  ticket accuracy - re-init accuracy  (mean [min, max] over seeds)

Every (arm, seed) is an ordinary ``imp`` run in the store (listed by ``ticketlab ls``, resumed by
the same command, reported by ``ticketlab report``); this module only builds the configs and reads
their ``levels.jsonl`` into the contrast table and plot.
"""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import ConfigError, IMPConfig, config_hash
from ..store import Store

ARMS: dict[str, dict[str, Any]] = {
    "small": {"optimizer": "adam", "lr": 1.2e-3, "momentum": 0.0},
    "large": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9},
}


def arm_configs(base: IMPConfig, seeds: Sequence[int], arms: Mapping[str, Mapping[str, Any]] = ARMS
                ) -> list[tuple[str, int, IMPConfig]]:
    """(arm, seed, config) of every IMP run of the contrast: ``base`` with the arm's optimiser
    settings and the seed, and the random re-init baseline (the other baselines as ``base`` has them)."""
    if not seeds:
        raise ConfigError("the learning-rate contrast needs at least one seed")
    if len(arms) < 2:
        raise ConfigError(f"the learning-rate contrast compares at least two arms, got {list(arms)}")
    train_fields = {f.name for f in dataclasses.fields(base.train)}
    out = []
    for arm, settings in arms.items():
        unknown = set(settings) - train_fields
        if unknown:
            raise ConfigError(f"arm {arm!r} sets {sorted(unknown)}, which are not training options")
        train = dataclasses.replace(base.train, **settings)
        baselines = base.baselines if "reinit" in base.baselines else (*base.baselines, "reinit")
        for seed in seeds:
            out.append((arm, seed, dataclasses.replace(base, train=train, seed=seed, baselines=tuple(baselines))))
    return out


def run_lr_contrast(base: IMPConfig, seeds: Sequence[int], store: Store, *,
                    arms: Mapping[str, Mapping[str, Any]] = ARMS, device: str | None = None, progress: bool = False,
                    log: Callable[[str], None] = print) -> list[tuple[str, int, str]]:
    """Run (or find finished) every IMP run of the contrast; (arm, seed, run hash) of each."""
    from .imp import run_imp

    done = []
    configs = arm_configs(base, seeds, arms)
    for k, (arm, seed, cfg) in enumerate(configs, start=1):
        log(f"[{k}/{len(configs)}] arm {arm} ({cfg.train.optimizer} lr {cfg.train.lr:g}"
            + (f" momentum {cfg.train.momentum:g}" if cfg.train.momentum else "") + f"), seed {seed}")
        run_imp(cfg, store, device=device, progress=progress, log=log)
        done.append((arm, seed, config_hash(cfg)))
    return done


def contrast_rows(store: Store, runs: Sequence[tuple[str, int, str]]) -> list[dict[str, Any]]:
    """Per arm and level: density, ticket and re-init final test accuracy over seeds, and their gap."""
    acc: dict[tuple[str, int], dict[str, Any]] = {}
    for arm, seed, run_hash in runs:
        for row in store.run(run_hash).read_jsonl("levels.jsonl"):
            if row["branch"] not in ("ticket", "reinit"):
                continue
            cell = acc.setdefault((arm, row["level"]), {"density": row["density"], "ticket": {}, "reinit": {}})
            cell[row["branch"]][seed] = row["final_test_accuracy"]
    rows = []
    for (arm, level), cell in sorted(acc.items(), key=lambda kv: (list(dict.fromkeys(a for a, _, _ in runs)).index(kv[0][0]),
                                                                   kv[0][1])):
        seeds = sorted(set(cell["ticket"]) & set(cell["reinit"]))
        gaps = [cell["ticket"][s] - cell["reinit"][s] for s in seeds]
        rows.append({"arm": arm, "level": level, "density": cell["density"], "seeds": len(seeds),
                     "ticket": [cell["ticket"][s] for s in seeds], "reinit": [cell["reinit"][s] for s in seeds],
                     "gap": gaps})
    return rows


def _stat(values: Sequence[float], fmt: str = ".4f") -> str:
    if not values:
        return "-"
    return f"{statistics.fmean(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def contrast_table(rows: Sequence[dict[str, Any]], arms: Mapping[str, Mapping[str, Any]] = ARMS) -> str:
    """Markdown: per arm, a line per level with ticket, re-init and gap (mean [min, max] over seeds)."""
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        settings = arms.get(arm, {})
        title = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in settings.items())
        out += [f"### arm {arm} ({title})", "",
                "| level | kept % | ticket test acc | re-init test acc | ticket - re-init | seeds |",
                "|---|---|---|---|---|---|"]
        for r in rows:
            if r["arm"] == arm and r["level"] > 0:
                out.append(f"| {r['level']} | {100 * r['density']:.1f} | {_stat(r['ticket'])} | {_stat(r['reinit'])} | "
                           f"{_stat(r['gap'], '+.4f')} | {r['seeds']} |")
        out.append("")
    means = {arm: statistics.fmean(g for r in rows if r["arm"] == arm and r["level"] > 0 for g in r["gap"])
             for arm in dict.fromkeys(r["arm"] for r in rows)
             if any(r["gap"] for r in rows if r["arm"] == arm and r["level"] > 0)}
    if means:
        out.append("Mean ticket - re-init gap over the pruned levels: "
                   + ", ".join(f"{arm} {gap:+.4f}" for arm, gap in means.items()) + ".")
    return "\n".join(out)


def plot_contrast(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One panel per arm: ticket and re-init test accuracy vs. kept fraction (mean, min-max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis.report import _save

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig, axes = plt.subplots(1, len(arms), figsize=(5.5 * len(arms), 4.2), squeeze=False, sharey=True)
    for ax, arm in zip(axes[0], arms):
        sel = [r for r in rows if r["arm"] == arm and r["ticket"]]
        xs = [100 * r["density"] for r in sel]
        for key, style in (("ticket", "-o"), ("reinit", "--s")):
            means = [statistics.fmean(r[key]) for r in sel]
            ax.errorbar(xs, means, yerr=[[m - min(r[key]) for m, r in zip(means, sel)],
                                         [max(r[key]) - m for m, r in zip(means, sel)]],
                        fmt=style, markersize=3, capsize=2, label="ticket (original init)" if key == "ticket"
                        else "random re-init of its mask")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights kept (%)")
        ax.set_title(f"arm {arm}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("final test accuracy")
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["ARMS", "arm_configs", "contrast_rows", "contrast_table", "plot_contrast", "run_lr_contrast"]
