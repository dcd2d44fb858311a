"""Plant 'n' Seek benchmark (Fischer & Burkholz 2022): prune a planted host with each method and
score the result against the planted ticket.

One cell = (task, method, kept fraction, seed):

1. ``make_task(task, seed)``, ``target_network(task, depth)``, ``host_network(..., seed)`` and
   ``plant`` give the planted host H and its ticket T.
2. The method prunes a copy of H to ``kept`` (fraction of host *weights* kept; "ticket" = T's
   density; 1 = no pruning). Score methods use ``prune`` with a ScoreSource of the first
   ``score_samples`` training samples and the task's loss; "synflow100" is SynFlow over 100
   rounds; "imp" is multishot magnitude pruning (``imp_rounds`` rounds of: train ``imp_epochs``
   epochs with Adam, prune by global magnitude to kept^(r / rounds), reset the weights to H);
   "edgepopup" / "edgepopup_anneal" train edge-popup scores on H's own weights and biases
   (``weight_init="keep"``, SGD 0.1, momentum 0.9, wd 5e-4, cosine, ``epochs``; annealed:
   density kept^(epoch / epochs)); "ticket" returns T itself (the reference).
3. strong = test performance right after pruning (edge-popup: after score training), weak = after
   training the kept weights (and all biases, except biases edge-popup pruned) with Adam
   (``lr``, batch ``batch_size``, ``epochs``), all through the ``Trainer`` with the task's
   (scaled) loss, pruned weights held at zero by its mask.
4. Recovery of the found weight mask against T: recall, precision, Jaccard, effective density,
   number of collapsed layers.

Readout: ``plant`` folds the output scales into the ticket's output weights (see plant.py), so
``output_scale`` is 1 and the raw host output is what every method is trained and scored on; the
ticket reproduces the target exactly and other masks train at the host's natural scale.
``readout="scale"`` (default) divides by ``output_scale`` anyway (a no-op after folding; it matters
only for hosts planted with ``fold_output_scale=False``); ``readout="none"`` never divides. The
per-output least-squares rescaled MSE (the paper's code) is also reported.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data import ArrayData, DataSplits
from ..masks import Mask
from ..pruning.edge_popup import train_edge_popup
from ..pruning.prune import prune
from ..pruning.schedules import Iterative
from ..pruning.scores import ScoreSource
from ..training import Trainer
from .plant import host_network, plant
from .recovery import recovery_metrics
from .targets import target_network
from .tasks import TaskData, make_task

METHODS = ("random", "magnitude", "snip", "grasp", "synflow", "synflow100", "imp", "edgepopup",
           "edgepopup_anneal")
REFERENCE_METHODS = ("ticket",)  # the planted ticket itself, not a pruning method
_SCORE_METHODS = {"random": ("random", 1), "magnitude": ("magnitude", 1), "snip": ("snip", 1),
                  "grasp": ("grasp", 1), "synflow": ("synflow", 1), "synflow100": ("synflow", 100)}

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _splits(data: TaskData, device: torch.device) -> DataSplits:
    """The task as the Trainer's data (float targets for regression, int64 labels for classification)."""
    return DataSplits(data.name, ArrayData(data.x_train, data.y_train), ArrayData(data.x_test, data.y_test),
                      data.output_dim, (data.input_dim,)).to(device)


def _scaled_loss(kind: str, scale: torch.Tensor) -> Loss:
    base: Loss = F.mse_loss if kind == "regression" else F.cross_entropy

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return base(out / scale, y)

    return loss


@torch.no_grad()
def _performance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, kind: str) -> dict[str, float]:
    was_training = model.training
    model.eval()
    out = model(x) / scale
    model.train(was_training)
    if kind == "regression":
        out64, y64 = out.double(), y.double()
        norm = (out64 * out64).sum(0)
        a = torch.where(norm > 0, (out64 * y64).sum(0) / norm.clamp_min(1e-300), torch.zeros_like(norm))
        return {"perf": float(((out64 - y64) ** 2).mean()),
                "mse_rescaled": float(((a * out64 - y64) ** 2).mean())}
    return {"perf": float((out.argmax(1) == y).double().mean()), "loss": float(F.cross_entropy(out, y))}


def _fit(model: nn.Module, mask: Mask, splits: DataSplits, loss: Loss, epochs: int, lr: float, batch_size: int,
         seed: int, device: torch.device) -> None:
    """Adam on all parameters for ``epochs`` epochs through the Trainer, pruned entries of ``mask`` held at zero."""
    cfg = TrainConfig(optimizer="adam", lr=lr, batch_size=batch_size, steps=f"{epochs}ep",
                      eval_every=f"{max(1, epochs)}ep")
    Trainer(model, splits, cfg, mask, seed=seed, device=device, loss=loss).train()


def _resolve_density(kept: float | str, ticket: Mask) -> float:
    if kept == "ticket":
        return ticket.density
    kept = float(kept)
    if not 0.0 < kept <= 1.0:
        raise ValueError(f"kept must be 'ticket' or a fraction in (0, 1], got {kept!r}")
    return kept


def run_cell(task: str, method: str, kept: float | str, seed: int, *, depth: int = 5, width: int = 100,
             epochs: int = 10, lr: float = 1e-3, batch_size: int = 32, score_samples: int = 40,
             imp_rounds: int = 10, imp_epochs: int = 5, device: str | torch.device = "cpu",
             return_model: bool = False, readout: str = "scale") -> dict[str, Any]:
    """One benchmark cell; returns a flat dict (see the module docstring). ``return_model`` adds
    the trained pruned model ("model"), the found weight mask ("mask") and the ticket ("ticket")."""
    if method not in METHODS and method not in REFERENCE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS + REFERENCE_METHODS}")
    start = time.perf_counter()
    dev = torch.device(device)
    torch.manual_seed(seed)
    data: TaskData = make_task(task, seed=seed)
    target = target_network(task, depth)
    host = host_network(data.input_dim, data.output_dim, depth=depth, width=width, seed=seed)
    planted = plant(target, host)
    H, T = planted.host, planted.mask
    density = _resolve_density(kept, T)
    kind = data.kind
    if readout not in ("none", "scale"):
        raise ValueError(f"readout must be 'none' or 'scale', got {readout!r}")
    scale = planted.output_scale.to(dev) if readout == "scale" else torch.ones(data.output_dim, device=dev)
    loss = _scaled_loss(kind, scale)
    splits = _splits(data, dev)
    (x_tr, y_tr), (x_te, y_te) = (splits.train.x, splits.train.y), (splits.test.x, splits.test.y)
    input_shape = (data.input_dim,)
    dense = Mask.dense(H)
    gen = torch.Generator().manual_seed(int(seed))
    source = ScoreSource(batches=lambda: [(x_tr[:score_samples], y_tr[:score_samples])], input_shape=input_shape,
                         generator=gen, device=dev, loss=loss)

    model = copy.deepcopy(H).to(dev)
    train_mask: Mask  # what weak training keeps at zero (edge-popup: weights and biases)
    if method == "ticket":
        found = T
        train_mask = T
    elif density >= 1.0:
        found = dense
        train_mask = dense
    elif method in _SCORE_METHODS:
        score, rounds = _SCORE_METHODS[method]
        found = prune(score, model, dense, source, density, rounds=rounds,
                      on_collapse="ignore")  # the row records collapse (recovery metrics)
        train_mask = found
    elif method == "imp":
        found = dense
        schedule = Iterative(density, imp_rounds)  # multishot: density ** (r / rounds) after round r
        for r in range(1, imp_rounds + 1):
            _fit(model, found, splits, loss, imp_epochs, lr, batch_size, seed * 1_000 + r, dev)
            found = prune("magnitude", model, found, source, schedule.density_at(r), on_collapse="ignore")
            model = copy.deepcopy(H).to(dev)  # reset to the planted init
        train_mask = found
    else:  # edge-popup
        result = train_edge_popup(model, splits, density, epochs=epochs, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                  batch_size=batch_size, anneal=method == "edgepopup_anneal", seed=seed,
                                  include_bias=True, weight_init="keep", bias_init="keep", device=dev, loss=loss)
        model = result["edge_popup"].remove()
        train_mask = result["mask"]
        found = Mask({n: train_mask[n] for n in T})
    train_mask.apply_(model)
    found.apply_(model)

    strong = _performance(model, x_te, y_te, scale, kind)
    recovery = recovery_metrics(found, T, copy.deepcopy(model).cpu(), input_shape)
    _fit(model, train_mask, splits, loss, epochs, lr, batch_size, seed * 1_000 + 999, dev)
    weak = _performance(model, x_te, y_te, scale, kind)
    nan = float("nan")
    row = {
        "task": task, "method": method, "kept": kept, "density": found.density, "target_density": density,
        "ticket_density": T.density, "seed": seed, "kind": kind,
        "strong": strong["perf"], "weak": weak["perf"],
        "strong_mse_rescaled": strong.get("mse_rescaled", nan), "weak_mse_rescaled": weak.get("mse_rescaled", nan),
        "recall": recovery["recall"], "precision": recovery["precision"], "jaccard": recovery["jaccard"],
        "effective_density": recovery["effective_density"], "collapsed": len(recovery["collapsed_layers"]),
        "disconnected": bool(recovery["disconnected"]), "seconds": time.perf_counter() - start,
    }
    if return_model:
        row.update(model=model, mask=found, ticket=T)
    return row


def run_benchmark(tasks: Iterable[str], methods: Iterable[str], kept_fractions: Iterable[float | str],
                  seeds: Iterable[int], progress: Callable[[dict], None] | None = None, workers: int = 1,
                  **kw: Any) -> list[dict]:
    """Every cell of tasks x methods x kept fractions x seeds, in that nesting order; with
    ``workers`` > 1 in that many single-threaded processes (cells are independent)."""
    cells = [(task, method, kept, seed) for task in tasks for method in methods
             for kept in kept_fractions for seed in seeds]
    if workers <= 1:
        rows = []
        for cell in cells:
            rows.append(run_cell(*cell, **kw))
            if progress is not None:
                progress(rows[-1])
        return rows
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    with ProcessPoolExecutor(workers) as pool:
        rows = []
        for row in pool.map(partial(_cell_single_thread, kw=kw), cells):
            rows.append(row)
            if progress is not None:
                progress(row)
        return rows


def _cell_single_thread(cell: tuple, kw: dict[str, Any]) -> dict:
    torch.set_num_threads(1)
    return run_cell(*cell, **kw)


def plot_benchmark(rows: Sequence[dict], path, metric: str = "weak") -> Any:
    """The paper's figure: performance vs. kept fraction per task, one line per method (mean and
    min-max over seeds), the planted ticket's kept fraction as a vertical reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis.report import _save

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_rows = [r for r in rows if r["task"] == task]
        regression = task_rows[0]["kind"] == "regression"
        key = f"{metric}_mse_rescaled" if regression else metric
        for method in dict.fromkeys(r["method"] for r in task_rows):
            pts: dict[float, list[float]] = {}
            for r in task_rows:
                if r["method"] == method:
                    pts.setdefault(r["density"], []).append(r[key])
            xs = sorted(pts)
            means = [statistics.mean(pts[x]) for x in xs]
            ax.errorbar(xs, means, yerr=[[m - min(pts[x]) for m, x in zip(means, xs)],
                                         [max(pts[x]) - m for m, x in zip(means, xs)]],
                        fmt="-o", markersize=3, capsize=2, label=method)
        ticket = task_rows[0]["ticket_density"]
        ax.axvline(ticket, color="black", linestyle=":", linewidth=1, label="planted ticket")
        ax.set_xscale("log")
        if regression:
            ax.set_yscale("log")
        ax.set_xlabel("fraction of weights kept")
        ax.set_ylabel(("test MSE (rescaled)" if regression else "test accuracy") + f", {metric}")
        ax.set_title(task)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _kept_key(k: float | str) -> tuple[int, float]:
    return (1, 0.0) if k == "ticket" else (0, -float(k))


def _fmt(v: float, kind: str) -> str:
    return f"{v:.2e}" if kind == "regression" else f"{v:.3f}"


def _cell(values: Sequence[float], kind: str) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    return f"{_fmt(statistics.fmean(values), kind)} [{_fmt(min(values), kind)}, {_fmt(max(values), kind)}]"


def benchmark_table(rows: Sequence[dict]) -> str:
    """Markdown: per task, weak and strong performance (mean [min, max] over seeds; rows = method,
    columns = kept fraction), then recall / precision at the ticket's kept fraction."""
    out: list[str] = []
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    for task in tasks:
        sel = [r for r in rows if r["task"] == task]
        kind = sel[0]["kind"]
        metric = "test MSE (lower is better)" if kind == "regression" else "test accuracy"
        methods = list(dict.fromkeys(r["method"] for r in sel))
        kepts = sorted(dict.fromkeys(r["kept"] for r in sel), key=_kept_key)
        header = "| method | " + " | ".join(f"kept {k}" for k in kepts) + " |"
        rule = "|---|" + "---|" * len(kepts)
        for phase in ("weak", "strong"):
            out += [f"### {task}: {phase} ({metric}, mean [min, max] over seeds)", "", header, rule]
            for m in methods:
                cells = [_cell([r[phase] for r in sel if r["method"] == m and r["kept"] == k], kind) for k in kepts]
                out.append(f"| {m} | " + " | ".join(cells) + " |")
            out.append("")
        if kind == "regression":
            out += [f"### {task}: weak, MSE after per-output least-squares rescale", "", header, rule]
            for m in methods:
                cells = [_cell([r["weak_mse_rescaled"] for r in sel if r["method"] == m and r["kept"] == k], kind)
                         for k in kepts]
                out.append(f"| {m} | " + " | ".join(cells) + " |")
            out.append("")
        at_ticket = [r for r in sel if r["kept"] == "ticket"]
        if at_ticket:
            out += [f"### {task}: recovery at the ticket's kept fraction ({at_ticket[0]['ticket_density']:.4f})", "",
                    "| method | recall | precision | jaccard | collapsed layers |", "|---|---|---|---|---|"]
            for m in methods:
                rs = [r for r in at_ticket if r["method"] == m]
                if rs:
                    out.append(f"| {m} | " + " | ".join(
                        _cell([float(r[key]) for r in rs], "classification")
                        for key in ("recall", "precision", "jaccard", "collapsed")) + " |")
            out.append("")
    return "\n".join(out)


__all__ = ["METHODS", "REFERENCE_METHODS", "benchmark_table", "run_benchmark", "run_cell"]
