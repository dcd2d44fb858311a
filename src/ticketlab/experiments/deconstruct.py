"""Zhou et al.'s ablation grid on one stored IMP run (``ticketlab deconstruct``).

"Deconstructing Lottery Tickets" varies the three choices of the lottery-ticket algorithm: which
weights are kept (the mask criterion over w_i, w_f), what kept weights start from ("mask-1": the
reset), and what pruned weights are held at ("mask-0"). This procedure runs that grid one-shot from
a finished dense training instead of retraining it for every variant:

    w_i, w_f = the source IMP run's init and its trained dense weights (level_00)
    for kept in kept fractions, criterion, reset, mask0:
        mask  = criterion's top weights at kept (per layer or globally; analysis.supermask.supermask)
        start = the reset's start weights (experiments/resets.py) from w_i, w_f, mask
        train the ticket from start under mask, pruned weights held as mask0 says (experiments/mask0.py)

Every combination is a resumable training unit of one ``deconstruct`` run (a killed grid continues
where it stopped; finished units are never retrained). The source is named by its full hash; the
run records the source's data and model, and trains with the source's training settings and seed.
Only resets that start from w_i or w_f are offered (init and the mask-1 actions), as there is no
rewind point in a one-shot grid.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from ..analysis.supermask import supermask
from ..config import ConfigError, criterion_modes, option
from ..masks import Mask
from ..store import Store, index_fields
from ..training import resolve_device
from . import mask0 as mask0_actions
from .common import (Log, Named, UnitContext, build_seeded_model, connectivity, prepare_data, running,
                     trained_imp_source, train_unit)
from .imp import derived_seed
from .resets import RESETS, ResetInputs


def grid_resets() -> tuple[str, ...]:
    """The resets a one-shot grid can use: those that start from w_i or w_f (no rewind point)."""
    return tuple(name for name, r in RESETS.items() if not r.needs_rewind_point)



@dataclass(frozen=True)
class DeconstructConfig:
    """One grid of (criterion, reset, mask0, kept fraction) tickets from one stored IMP run."""

    source: str = option("", "the stored IMP run whose init and trained dense network (level 0) the grid starts from: "
                             "its full 12-character hash, as `ticketlab ls` shows it", required=True)
    criteria: tuple[str, ...] = option(("large_final",), "mask criteria over (w_init, w_final) (pruning/criteria.py)",
                                       choices=criterion_modes)
    resets: tuple[str, ...] = option(("init",), "what kept weights start from: init (the lottery ticket) or a mask-1 "
                                                "action of experiments/resets.py", choices=grid_resets)
    mask0: tuple[str, ...] = option(("zero",), "what pruned weights are held at (experiments/mask0.py)",
                                    choices=mask0_actions.MASK0)
    kept: tuple[float, ...] = option((0.2, 0.05), "fractions of the prunable weights kept")
    scope: str = option("layerwise", "keep the fraction in every layer (layerwise, as the paper) or over all "
                                     "layers together (global)", choices=("layerwise", "global"))
    data: Named = field(default=Named(), metadata={"hash": False, "cli": False})
    model: Named = field(default=Named(), metadata={"hash": False, "cli": False})

    experiment = "deconstruct"

    def __post_init__(self) -> None:
        if len(self.source) != 12 or any(c not in "0123456789abcdef" for c in self.source):
            raise ConfigError(f"--source must be the full 12-character hash of a stored IMP run (as `ticketlab ls` "
                              f"shows it), got {self.source!r}")
        for name, allowed in (("criteria", criterion_modes()), ("resets", grid_resets()),
                              ("mask0", mask0_actions.MASK0)):
            values = tuple(getattr(self, name))
            bad = [v for v in values if v not in allowed]
            if not values or bad:
                raise ConfigError(f"{name} must name at least one of {allowed}; got {list(values)}")
            object.__setattr__(self, name, values)
        kept = tuple(float(k) for k in self.kept)
        if not kept or any(not 0.0 < k < 1.0 for k in kept):
            raise ConfigError(f"kept fractions must lie in (0, 1), got {list(self.kept)}")
        object.__setattr__(self, "kept", kept)
        if self.scope not in ("layerwise", "global"):
            raise ConfigError(f"scope must be layerwise or global, got {self.scope!r}")

    def combinations(self) -> list[tuple[float, str, str, str]]:
        """(kept, criterion, reset, mask0) of every ticket of the grid, in table order."""
        return list(itertools.product(self.kept, self.criteria, self.resets, self.mask0))


def unit_of(kept: float, criterion: str, reset: str, mask0: str) -> str:
    return f"k{kept:g}__{criterion}__{reset}__{mask0}"


def run_deconstruct(config: DeconstructConfig, store: Store, *, device: str | torch.device | None = None,
                    progress: bool = True, log: Log = print) -> list[dict[str, Any]]:
    """Run (or continue) the grid; one row per (kept, criterion, reset, mask0)."""
    source, imp = trained_imp_source(store, config.source)
    object.__setattr__(config, "data", Named(imp.data.name))
    object.__setattr__(config, "model", Named(imp.model.name))
    init = source.load_tensors("init.safetensors")
    final = source.load_tensors("level_00", "ticket", "final.safetensors")
    data, validation = prepare_data(imp.data, imp.seed)
    model = build_seeded_model(imp.model, data, imp.seed)
    dense = Mask.dense(model, **imp.prune.prunable_options)
    dev = resolve_device(device)
    with running(store, config, log) as run:
        if (done := run.complete_summary()) is not None:
            log(f"deconstruct run {run.hash} is complete; nothing recomputed")
            return done["rows"]
        log(f"deconstruct run {run.hash} in {run.path}: {len(config.combinations())} tickets from IMP run {source.hash}")
        ctx = UnitContext(run, data, validation, imp.train, imp.seed, dev, progress, log,
                          prunable=imp.prune.prunable_options)
        rows = []
        masks: dict[tuple[float, str], Mask] = {}  # one mask per (kept, criterion), shared by its resets and mask-0s
        for i, (kept, criterion, reset, action) in enumerate(config.combinations()):
            if (kept, criterion) not in masks:
                g = torch.Generator().manual_seed(derived_seed(imp.seed, "criterion", 0))
                masks[kept, criterion] = supermask(criterion, init, final, dense, kept, scope=config.scope, generator=g)
            mask = masks[kept, criterion]
            start = RESETS[reset].start_weights(ResetInputs(
                init=init, final=final, rewind=lambda: init, mask=mask,
                generator=torch.Generator().manual_seed(derived_seed(imp.seed, "reset", i + 1))))
            model.load_state_dict(mask0_actions.start_weights(action, start, init, final, mask))
            conn, _ = connectivity(model, mask, data)
            summary = train_unit(ctx, unit_of(kept, criterion, reset, action), model, mask, start_step=0,
                                 extra_summary=conn, pruned_values=mask0_actions.pruned_values(action, init, final, mask))
            rows.append({"kept": kept, "criterion": criterion, "reset": reset, "mask0": action,
                         **{k: summary[k] for k in ("density", "final_test_accuracy", "max_test_accuracy",
                                                    "test_accuracy_at_early_stop", "early_stop_step")}})
        summary = {"source": source.hash, "rows": rows}
        run.mark_complete(summary)
        run.update_index(status="complete", summary=index_fields(summary))  # as running() indexes a complete run
    return rows


def deconstruct_report(runs, plot) -> tuple[str, list]:
    """Deconstruct runs: a table per run (a line per ticket) and one bar chart of final test
    accuracy per (criterion, reset, mask0), one group per kept fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis.report import _save

    parts, series = [], []
    for run in runs:
        summary = run.read_json("summary.json")
        rows = summary["rows"]
        lines = [f"### deconstruct {run.hash[:8]} (tickets from IMP run {summary['source']})", "",
                 "| kept % | criterion | reset (mask-1) | mask-0 | final test acc | max test acc | early-stop acc |",
                 "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {100 * r['density']:.2f} | {r['criterion']} | {r['reset']} | {r['mask0']} | "
                         f"{r['final_test_accuracy']:.4f} | {r['max_test_accuracy']:.4f} | "
                         f"{r['test_accuracy_at_early_stop']:.4f} |")
        parts.append("\n".join(lines))
        series.append((run.hash[:8], rows))
    kepts = sorted({r["kept"] for _, rows in series for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(kepts), figsize=(max(5.0, 1.2 * len(series[0][1]) / max(1, len(kepts))) * len(kepts),
                                                     4.5), squeeze=False)
    for ax, kept in zip(axes[0], kepts):
        labels, values = [], []
        for tag, rows in series:
            for r in rows:
                if r["kept"] == kept:
                    labels.append(f"{r['criterion']}\n{r['reset']}\n{r['mask0']}" + (f"\n{tag}" if len(series) > 1 else ""))
                    values.append(r["final_test_accuracy"])
        ax.bar(range(len(values)), values, color="tab:blue")
        ax.set_xticks(range(len(values)), labels, fontsize=7, rotation=90)
        ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.02))
        ax.set_title(f"kept {100 * kept:g}%")
        ax.set_ylabel("final test accuracy")
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return "\n\n".join(parts), [_save(fig, plot)]


__all__ = ["DeconstructConfig", "deconstruct_report", "grid_resets", "run_deconstruct", "unit_of"]
