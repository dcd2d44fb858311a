"""Tropical pictures of lottery tickets (Alfarra et al.), as a stored run (``ticketlab tropical``).

For a 2-D two-class toy problem (scikit-learn's make_moons / make_circles, generated here, offline
and seeded) and an (Affine, ReLU, Affine) network 2-h-2, per seed:

    dense   = train the network from its init theta_0
    for kept in kept fractions:
        mask    = one-shot magnitude pruning of the trained dense weights, layer-wise (both weight
                  matrices keep ``kept`` of their entries; biases are never pruned)
        ticket  = theta_0 under the mask, retrained      (the winning ticket: its original init)
        reinit  = a fresh init under the same mask, retrained
        pruned  = the trained dense weights under the mask, not retrained

Every network is then read as the two zonotopes of ``analysis/tropical.py``; the hull of their
(projected) union is compared with the dense network's after scale normalisation (IoU and
Hausdorff distance, see ``analysis.tropical.shape_distance``), and its decision regions with the
dense network's on a grid over the data (``agreement``: the fraction of grid points given the same
class). One-shot pruning follows the paper's lottery-ticket section (prune the trained network
once at each ratio, then retrain from the original or from another initialisation); IMP tickets
can be studied with ``--source`` on an imp run (its level-0 init and trained dense network).

Training units are resumable (``experiments/common.train_unit``); the summary (all rows) is
written last and marks the run complete. ``--source HASH`` takes the init, trained dense network,
data, training settings and seed of a stored imp run whose model is (Affine, ReLU, Affine) with a
2-D input (e.g. ``ticketlab imp --model mlp --model-option hidden=[100]`` on a 2-feature data set);
classes 0 and 1 are compared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, ModelConfig, TrainConfig, option
from ..data import ArrayData, DataSplits
from ..masks import Mask
from ..store import Store, StoreError, index_fields
from ..training import evaluate, resolve_device
from .common import (Log, Named, UnitContext, build_seeded_model, prepare_data, running, trained_imp_source,
                     train_unit)
from .imp import derived_seed

VARIANTS = ("ticket", "reinit", "pruned")
TOY = ("moons", "circles")
# the procedure's training defaults (the command's base, so flags and the constructor agree)
TROPICAL_TRAIN = dict(optimizer="adam", lr=0.01, batch_size=50, steps="100ep", eval_every="25ep")



def toy_data(name: str, samples: int, noise: float, seed: int = 0) -> DataSplits:
    """make_moons / make_circles (scikit-learn, seeded): ``samples`` training and as many test points."""
    from sklearn.datasets import make_circles, make_moons

    def make(n: int, state: int) -> ArrayData:
        if name == "moons":
            x, y = make_moons(n_samples=n, noise=noise, random_state=state)
        elif name == "circles":
            x, y = make_circles(n_samples=n, noise=noise, factor=0.5, random_state=state)
        else:
            raise ConfigError(f"toy data set {name!r} is unknown; choose one of {TOY}")
        return ArrayData(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64))

    return DataSplits(name, make(samples, seed), make(samples, seed + 10_000), 2, (2,))


@dataclass(frozen=True)
class TropicalConfig:
    """Dense net, one-shot magnitude masks at several kept fractions, ticket / re-init / pruned, per seed."""

    source: str = option("", "a stored imp run to study instead of training here: its full 12-character hash; its "
                             "model must be (Affine, ReLU, Affine) with a 2-D input (its data, training and seed "
                             "are used)", shown_default="none: train on --toy data here")
    toy: str = option("moons", "toy data set (scikit-learn, generated offline)", choices=TOY)
    samples: int = option(1000, "training points (and as many test points)")
    noise: float = option(0.1, "the data set's noise")
    hidden: int = option(100, "hidden width of the 2-h-2 network")
    kept: tuple[float, ...] = option((0.5, 0.2, 0.1, 0.05), "fractions of each weight matrix kept")
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds (init, data order, re-init); the data are the same for all")
    scope: str = option("layerwise", "keep the fraction in each weight matrix (layerwise, as LTH for fully connected "
                                     "nets) or over both together (global)", choices=("layerwise", "global"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**TROPICAL_TRAIN))
    data: Named = field(default=Named(), metadata={"hash": False, "cli": False})
    model: Named = field(default=Named(), metadata={"hash": False, "cli": False})

    experiment = "tropical"

    def __post_init__(self) -> None:
        if self.source and (len(self.source) != 12 or any(c not in "0123456789abcdef" for c in self.source)):
            raise ConfigError(f"--source must be the full 12-character hash of a stored imp run, got {self.source!r}")
        if self.source:
            import dataclasses

            defaults = {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
                        for f in dataclasses.fields(self)}
            given = [n for n in ("toy", "samples", "noise", "hidden", "seeds", "train")
                     if getattr(self, n) != defaults[n] and not (n == "seeds" and tuple(self.seeds) == defaults[n])]
            if given:
                raise ConfigError(f"--source takes the data, model, training settings and seed of the stored run; "
                                  f"drop {', '.join(given)} (only --kept and --scope apply to it)")
        if self.toy not in TOY:
            raise ConfigError(f"toy data set {self.toy!r} is unknown; choose one of {TOY}")
        if self.samples < 2 or self.hidden < 1 or not self.noise >= 0:
            raise ConfigError(f"samples >= 2, hidden >= 1 and noise >= 0 are needed; got {self.samples}, "
                              f"{self.hidden}, {self.noise}")
        kept = tuple(float(k) for k in self.kept)
        if not kept or any(not 0.0 < k < 1.0 for k in kept):
            raise ConfigError(f"kept fractions must lie in (0, 1), got {list(self.kept)}")
        seeds = tuple(int(s) for s in self.seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        if self.scope not in ("layerwise", "global"):
            raise ConfigError(f"scope must be layerwise or global, got {self.scope!r}")
        object.__setattr__(self, "kept", kept)
        object.__setattr__(self, "seeds", seeds)
        if not self.data.name:
            object.__setattr__(self, "data", Named(self.toy))
            object.__setattr__(self, "model", Named(f"mlp_2_{self.hidden}_2"))


def _grid(data: DataSplits, n: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grid over the data's box (with a margin): (xs, ys, points)."""
    x = torch.cat([data.train.x, data.test.x]).double().numpy()
    lo, hi = x.min(0), x.max(0)
    pad = 0.15 * (hi - lo)
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], n)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], n)
    gx, gy = np.meshgrid(xs, ys)
    return xs, ys, np.stack([gx.ravel(), gy.ravel()], axis=1)


def describe(model: torch.nn.Module, dense_geometry: Any, dense_sign: np.ndarray, grid: np.ndarray) -> dict[str, Any]:
    """Shape numbers of ``model`` against the dense network's geometry and decision regions."""
    from ..analysis.tropical import geometry, polygon_area, shape_distance

    g = geometry(model)
    shape = shape_distance(g.hull, dense_geometry.hull)
    agree = float(np.mean(np.sign(g.net.margin(grid)) == dense_sign))
    return {"iou": shape["iou"], "hausdorff": shape["hausdorff"], "agreement": agree,
            "hull_vertices": int(len(g.hull)), "hull_area": polygon_area(g.hull),
            "generators": int(((np.abs(g.G1[:, :2]).sum(1) + np.abs(g.G2[:, :2]).sum(1)) > 0).sum())}


def _source(config: TropicalConfig, store: Store) -> dict[str, Any]:
    """What a --source imp run gives: data, model config, training, seed, init and trained dense weights."""
    from ..analysis.tropical import affine_relu_affine

    source, imp = trained_imp_source(store, config.source)
    data, _ = prepare_data(imp.data, imp.seed)
    if data.input_shape != (2,) or data.num_classes < 2:
        raise StoreError(f"run {source.hash} has inputs of shape {data.input_shape} and {data.num_classes} classes; "
                         "the tropical pictures need 2-D inputs and two classes or more")
    model = build_seeded_model(imp.model, data, imp.seed)
    affine_relu_affine(model)  # a clear TropicalError for any other shape
    return {"data": data, "model_cfg": imp.model, "train": imp.train, "seed": imp.seed, "hash": source.hash,
            "prunable": imp.prune.prunable_options, "init": source.load_tensors("init.safetensors"),
            "final": source.load_tensors("level_00", "ticket", "final.safetensors"), "data_name": imp.data.name}


def run_tropical(config: TropicalConfig, store: Store, *, device: str | torch.device | None = None,
                 progress: bool = True, log: Log = print) -> list[dict[str, Any]]:
    """Run (or continue) the study; one row per (seed, kept, variant), the dense nets as kept 1."""
    from ..analysis.tropical import geometry

    src = _source(config, store) if config.source else None
    if src is not None:
        object.__setattr__(config, "data", Named(src["data_name"]))
        object.__setattr__(config, "model", Named(src["model_cfg"].name))
        data, model_cfg, train, seeds, prunable = src["data"], src["model_cfg"], src["train"], (src["seed"],), \
            src["prunable"]
    else:
        data = toy_data(config.toy, config.samples, config.noise)
        model_cfg, train, seeds, prunable = (ModelConfig("mlp", {"hidden": [config.hidden]}), config.train,
                                             config.seeds, {})
    dev = resolve_device(device)
    _, _, grid = _grid(data)
    with running(store, config, log) as run:
        if (done := run.complete_summary()) is not None:
            log(f"tropical run {run.hash} is complete; nothing recomputed")
            return done["rows"]
        log(f"tropical run {run.hash} in {run.path}: {len(seeds)} seed(s) x {len(config.kept)} kept fractions"
            + (f" from imp run {src['hash']}" if src else f" on {config.toy}, net 2-{config.hidden}-2"))
        rows: list[dict[str, Any]] = []
        for seed in seeds:
            ctx = UnitContext(run, data, None, train, seed, dev, progress, log, prunable=prunable)
            model = build_seeded_model(model_cfg, data, seed)
            if src is not None:
                init, final = src["init"], src["final"]
            else:
                if run.file(f"seed_{seed}", "init.safetensors").exists():
                    model.load_state_dict(run.load_tensors(f"seed_{seed}", "init.safetensors"))
                else:
                    run.save_tensors(model.state_dict(), f"seed_{seed}", "init.safetensors")
                init = {k: v.detach().clone() for k, v in model.state_dict().items()}
                dense_summary = train_unit(ctx, f"seed_{seed}/dense", model, None, start_step=0)
                final = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(final)
            model.cpu()
            dense_g = geometry(model)
            dense_sign = np.sign(dense_g.net.margin(grid))
            dense_acc = (dense_summary["final_test_accuracy"] if src is None
                         else evaluate(model, data.test)["accuracy"])
            rows.append({"seed": seed, "kept": 1.0, "variant": "dense", "density": 1.0, "test_accuracy": dense_acc,
                         **describe(model, dense_g, dense_sign, grid)})
            dense_mask = Mask.dense(model, **prunable)
            for i, kept in enumerate(config.kept):
                mask = _mask(seed, i, kept, init, final, dense_mask, config.scope)
                for variant in VARIANTS:
                    if variant == "pruned":
                        model.load_state_dict(final)
                        mask.apply_(model)
                        acc = evaluate(model, data.test)["accuracy"]
                    else:
                        if variant == "ticket":
                            model.load_state_dict(init)
                        else:
                            fresh = build_seeded_model(model_cfg, data, derived_seed(seed, "reinit", i + 1))
                            model.load_state_dict(fresh.state_dict())
                        summary = train_unit(ctx, f"seed_{seed}/k{kept:g}/{variant}", model, mask, start_step=0)
                        acc = summary["final_test_accuracy"]
                    model.cpu()
                    rows.append({"seed": seed, "kept": kept, "variant": variant, "density": mask.density,
                                 "test_accuracy": acc, **describe(model, dense_g, dense_sign, grid)})
                    r = rows[-1]
                    log(f"  seed {seed} kept {kept:g} {variant}: IoU {r['iou']:.3f}, Hausdorff {r['hausdorff']:.3f}, "
                        f"agreement {r['agreement']:.3f}, test acc {acc:.4f}")
        dense_accs = [r["test_accuracy"] for r in rows if r["variant"] == "dense"]
        summary = {"source": src["hash"] if src else None, "rows": rows,  # the index (ticketlab ls) shows scalars
                   "dense_test_accuracy": float(np.mean(dense_accs)), "seeds": len(seeds)}
        run.mark_complete(summary)
        run.update_index(status="complete", summary=index_fields(summary))
    return rows


# --- report ------------------------------------------------------------------------------------------

def _mask(seed: int, i: int, kept: float, init: dict[str, torch.Tensor], final: dict[str, torch.Tensor],
          dense: Mask, scope: str) -> Mask:
    """The one-shot magnitude mask of the trained dense weights (kept fraction number i)."""
    from ..analysis.supermask import supermask

    g = torch.Generator().manual_seed(derived_seed(seed, "criterion", i))
    return supermask("large_final", init, final, dense, kept, scope=scope, generator=g)


def _networks(run: Any, seed: int, kept: float, variant: str, described: dict[str, Any]) -> torch.nn.Module:
    """The stored network of one row of a run trained here (rebuilt from the run's files)."""
    from ..models import build_model

    cfg = described["config"]
    model = build_model("mlp", (2,), 2, hidden=[cfg.get("hidden", 100)])
    final = run.load_tensors(f"seed_{seed}", "dense", "final.safetensors")
    if variant == "dense":
        model.load_state_dict(final)
    elif variant == "pruned":
        kepts = [float(k) for k in cfg.get("kept", ())]
        init = run.load_tensors(f"seed_{seed}", "init.safetensors")
        model.load_state_dict(final)
        _mask(seed, kepts.index(kept), kept, init, final, Mask.dense(model),
              cfg.get("scope", "layerwise")).apply_(model)
    else:
        model.load_state_dict(run.load_tensors(f"seed_{seed}", f"k{kept:g}", variant, "final.safetensors"))
    return model


def _mean_std(values: list[float]) -> str:
    v = np.array(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return "n/a (flat hull)"
    text = f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v[0]:.3f}"
    return text if len(v) == len(values) else f"{text} ({len(v)} of {len(values)} seeds; others flat)"


def tropical_report(runs, plot) -> tuple[str, list]:
    """Per run: a table (mean ± std over seeds) per kept fraction and variant, a per-seed table, the
    panel figure of the first seed (decision boundary | normalised zonotopes and hull) and a figure
    of the shape numbers against the kept fraction."""
    from pathlib import Path

    parts, pngs = [], []
    for n, run in enumerate(runs):
        rows = run.read_json("summary.json")["rows"]
        described = run.read_json("config.json")
        kepts = sorted({r["kept"] for r in rows if r["variant"] != "dense"}, reverse=True)
        lines = [f"### tropical {run.hash[:8]} ({described['config'].get('toy', '')}, "
                 f"{len({r['seed'] for r in rows})} seeds)", "",
                 "Shape of the scale-normalised hull conv(Z1 ∪ Z2) against the dense network's (IoU: 1 = same shape; "
                 "Hausdorff: 0 = same shape), agreement of the decision regions with the dense network's on a grid "
                 "over the data, test accuracy; mean ± std over seeds.", "",
                 "| kept % | variant | IoU | Hausdorff | region agreement | test acc |", "|---|---|---|---|---|---|"]
        for kept in [1.0, *kepts]:
            for variant in (("dense",) if kept == 1.0 else VARIANTS):
                sel = [r for r in rows if r["kept"] == kept and r["variant"] == variant]
                lines.append(f"| {100 * kept:g} | {variant} | {_mean_std([r['iou'] for r in sel])} | "
                             f"{_mean_std([r['hausdorff'] for r in sel])} | {_mean_std([r['agreement'] for r in sel])} | "
                             f"{_mean_std([r['test_accuracy'] for r in sel])} |")
        lines += ["", "Paired by seed, ticket against reinit (the paper's claim: the ticket's init keeps the dense "
                  "polytope better): seeds where the ticket's hull is closer to the dense one, and the mean "
                  "difference (ticket - reinit; IoU higher and Hausdorff lower are closer).", "",
                  "| kept % | IoU: ticket closer | mean IoU diff | Hausdorff: ticket closer | mean Hausdorff diff | "
                  "agreement: ticket closer |", "|---|---|---|---|---|---|"]
        for kept in kepts:
            pairs = [(a, b) for a in rows for b in rows if a["kept"] == b["kept"] == kept and a["seed"] == b["seed"]
                     and a["variant"] == "ticket" and b["variant"] == "reinit"]
            cells = []
            for key, better in (("iou", 1), ("hausdorff", -1), ("agreement", 1)):
                ok = [(a[key], b[key]) for a, b in pairs if not (np.isnan(a[key]) or np.isnan(b[key]))]
                wins = sum(better * (x - y) > 0 for x, y in ok)
                cells.append(f"{wins} of {len(ok)}")
                if key != "agreement":
                    cells.append(f"{np.mean([x - y for x, y in ok]):+.3f}" if ok else "n/a")
            lines.append(f"| {100 * kept:g} | " + " | ".join(cells) + " |")
        lines += ["", "Per seed:", "", "| seed | kept % | variant | IoU | Hausdorff | agreement | test acc | hull vertices |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['seed']} | {100 * r['kept']:g} | {r['variant']} | {r['iou']:.4f} | {r['hausdorff']:.4f} | "
                         f"{r['agreement']:.4f} | {r['test_accuracy']:.4f} | {r['hull_vertices']} |")
        parts.append("\n".join(lines))
        base = Path(plot) if n == 0 else Path(plot).with_name(f"{Path(plot).stem}_{run.hash[:8]}.png")
        if described["config"].get("source"):
            continue  # pictures: runs trained here (a source run's model is rebuilt by its own procedure)
        pngs.append(_panel(run, rows, kepts, described, base))
        pngs.append(_curves(rows, kepts, base.with_name(f"{base.stem}_shape.png")))
    return "\n\n".join(parts), pngs


def _panel(run: Any, rows: list[dict[str, Any]], kepts: list[float], described: dict[str, Any], path: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    from ..analysis.report import _save
    from ..analysis.tropical import _centroid, geometry, polygon_area

    cfg = described["config"]
    data = toy_data(cfg.get("toy", "moons"), cfg.get("samples", 1000), cfg.get("noise", 0.1))
    xs, ys, grid = _grid(data, 120)
    seed = rows[0]["seed"]
    dense = geometry(_networks(run, seed, 1.0, "dense", described))
    by = {(r["kept"], r["variant"]): r for r in rows if r["seed"] == seed}

    def norm(g: Any):
        area = polygon_area(g.hull)
        if area > 1e-12:
            c, s = _centroid(g.hull), np.sqrt(area)
        else:  # a flat hull: centred at its points' mean, scaled by its length
            c, s = g.hull.mean(0), max(1e-12, float(np.ptp(g.hull, axis=0).max()))
        return lambda P: (np.asarray(P) - c) / s

    dense_n = norm(dense)(dense.hull)
    fig, axes = plt.subplots(1 + len(kepts), 2 * len(VARIANTS), figsize=(2.5 * 2 * len(VARIANTS), 2.6 * (1 + len(kepts))),
                             squeeze=False)
    x, y = data.test.x.numpy()[:300], data.test.y.numpy()[:300]  # enough points to see the classes

    def boundary(ax, g, title):
        m = g.net.margin(grid).reshape(len(ys), len(xs))
        ax.imshow(np.where(m > 0, 1.0, 0.0), origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]), aspect="auto",
                  cmap=matplotlib.colors.ListedColormap(["#f6c9c9", "#c9d8f6"]), vmin=0, vmax=1, interpolation="nearest")
        ax.scatter(x[:, 0], x[:, 1], c=np.where(y == 0, "tab:blue", "tab:red"), s=3, alpha=0.7, lw=0)
        if m.min() < 0 < m.max():
            ax.contour(xs, ys, m, levels=[0], colors="k", linewidths=1.2)
        ax.set_title(title, fontsize=8)
        ax.set_box_aspect(1)
        ax.set_xticks([])
        ax.set_yticks([])

    def polytope(ax, g, title):
        f = norm(g)
        if g.upper_edges:
            ax.add_collection(LineCollection([f(np.array(e)) for e in g.upper_edges], colors="0.6", linewidths=0.2,
                                             alpha=0.5))
        for Z, color in ((g.Z1, "tab:blue"), (g.Z2, "tab:red")):
            if len(Z) >= 3:
                P = f(Z)
                ax.fill(P[:, 0], P[:, 1], color=color, alpha=0.25, lw=0)
        H = f(g.hull)
        if len(H) >= 3:
            ax.plot(*np.vstack([H, H[:1]]).T, color="k", lw=1.2)
        ax.plot(*np.vstack([dense_n, dense_n[:1]]).T, color="tab:green", lw=1.0, ls="--")
        ax.set_aspect("equal")
        reach = 1.1 * max(0.9, float(np.abs(dense_n).max()), float(np.abs(H).max()) if len(H) else 0.0)
        ax.set_xlim(-reach, reach)
        ax.set_ylim(-reach, reach)
        ax.set_title(title, fontsize=8)
        ax.set_box_aspect(1)
        ax.set_xticks([])
        ax.set_yticks([])

    r = by[(1.0, "dense")]
    boundary(axes[0][0], dense, f"dense: decision boundary\ntest acc {r['test_accuracy']:.3f}")
    polytope(axes[0][1], dense, "dense: Z1 (blue), Z2 (red),\nhull (black), normalised")
    for ax in axes[0][2:]:
        ax.axis("off")
    axes[0][2].text(0.0, 0.5, "columns: boundary | polytope per variant\nticket = mask + original init, retrained\n"
                    "reinit = mask + fresh init, retrained\npruned = trained dense x mask, no retraining\n"
                    "green dashed: the dense hull (normalised)\ngrey: dual subdivision (upper faces)",
                    fontsize=9, va="center", transform=axes[0][2].transAxes)
    for row, kept in enumerate(kepts, start=1):
        for col, variant in enumerate(VARIANTS):
            r = by[(kept, variant)]
            g = geometry(_networks(run, seed, kept, variant, described))
            boundary(axes[row][2 * col], g, f"kept {100 * kept:g}% {variant}\nacc {r['test_accuracy']:.3f}, "
                                            f"agree {r['agreement']:.3f}")
            polytope(axes[row][2 * col + 1], g, "flat hull: one input direction" if np.isnan(r["iou"])
                     else f"IoU {r['iou']:.3f}, Hausdorff {r['hausdorff']:.3f}")
    fig.suptitle(f"tropical pictures, seed {seed} (one-shot layer-wise magnitude masks of the trained dense net)",
                 fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _curves(rows: list[dict[str, Any]], kepts: list[float], path: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis.report import _save

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = {"ticket": "tab:blue", "reinit": "tab:orange", "pruned": "tab:gray"}
    for ax, key, label in zip(axes, ("iou", "hausdorff", "agreement"),
                              ("IoU with the dense hull (1 = same)", "Hausdorff to the dense hull (0 = same)",
                               "decision-region agreement with dense")):
        for variant in VARIANTS:
            means, stds = [], []
            for kept in kepts:
                v = np.array([r[key] for r in rows if r["kept"] == kept and r["variant"] == variant], dtype=float)
                n = len(v)
                v = v[~np.isnan(v)]
                enough = 2 * len(v) >= n and len(v) > 0  # a mean over fewer than half the seeds (flat hulls) is not drawn
                means.append(v.mean() if enough else np.nan)
                stds.append(v.std() if enough else np.nan)
            ax.errorbar([100 * k for k in kepts], means, yerr=stds, marker="o", capsize=3, label=variant,
                        color=colors[variant])
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([100 * k for k in kepts], [f"{100 * k:g}" for k in kepts])
        ax.invert_xaxis()
        ax.set_xlabel("weights kept (%)")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle("shape numbers: mean ± std over seeds (IoU / Hausdorff drawn where at least half the seeds have a "
                 "non-flat hull)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["TROPICAL_TRAIN", "TropicalConfig", "VARIANTS", "describe", "run_tropical", "toy_data", "tropical_report"]
