"""Plant 'n' Seek benchmark (Fischer & Burkholz 2022) as its authors ran it: prune a planted host
with each method and score the result against the planted ticket.

One cell = (task, method, kept fraction, seed) under a ``Protocol`` (depth, width, epochs, ...):

1. ``make_task``, ``target_network``, ``host_network`` and ``plant`` give the planted host H, its
   ticket T and the output scale lambda (host output under T = lambda * target). As in the authors'
   code, lambda is never applied to H: every method scores and trains H's raw output.
2. The method prunes a copy of H. The pool is every weight and, with ``prune_bias`` (the authors'
   ``--prune-bias True``, on by default), every bias; the kept fraction counts the pool. "ticket" as
   a kept fraction is T's fraction of host weights (the authors' ``get_sparsity_gt``).
   - singleshot ``random``, ``magnitude``, ``snip``, ``grasp``, ``synflow`` score H once (scores from the
     first ``score_samples`` training samples and the task's loss); ``synflow100`` is SynFlow over
     100 rounds (exponential schedule);
   - multishot ``multishot_<score>``: ``multishot_rounds`` rounds of: train ``multishot_epochs`` epochs
     (Adam, fresh state), prune with the score to kept^(r / rounds), reset the weights to H;
   - ``edgepopup`` / ``edgepopup_anneal``: edge-popup scores over the pool trained on H's own frozen
     weights (SGD 0.1, momentum 0.9, wd 5e-4, cosine, ``epochs``; annealed: kept^(epoch / epochs));
   - references: ``dense`` (H unpruned, kept 1) and ``ticket`` (T, and with ``prune_bias`` the planted
     neurons' nonzero biases).
   GraSP is spread over the layers as ``grasp_distribution`` says (default "uniform": layer-wise, as
   the paper ran it); every other score ranks the pool globally.
3. strong = test performance right after pruning (edge-popup: after score training), weak = after
   training the kept parameters with Adam (``lr``, ``batch_size``, ``epochs``) through the ``Trainer``,
   pruned ones held at zero by its mask.
4. Metrics as the authors compute them: regression MSE after a per-output least-squares rescale on
   test batches of ``test_batch_size`` (``rescaled_mse``; the raw MSE beside it), Circle accuracy of
   the raw output (and a strong accuracy of output / lambda, labelled "up to scale").
5. Recovery of the found weight mask against T (ours; the paper has none): recall, precision,
   Jaccard, effective density, number of collapsed layers.
"""
from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import option
from ..data import ArrayData, DataSplits
from ..masks import Mask
from ..pruning.prune import prune
from ..pruning.schedules import Iterative
from ..pruning.scores import ScoreSource
from .tasks import TaskData

SINGLESHOT = ("random", "magnitude", "snip", "grasp", "synflow", "synflow100")
MULTISHOT = ("multishot_random", "multishot_magnitude", "multishot_snip", "multishot_grasp", "multishot_synflow")
EDGE_POPUP = ("edgepopup", "edgepopup_anneal")
METHODS = SINGLESHOT + MULTISHOT + EDGE_POPUP  # the paper's methods: the benchmark's default
EXTRA_METHODS = ("gem",)  # ticketlab's additions, opt-in (--methods gem): GEM-MINER (Sreenivasan et al. 2022)
ALL_METHODS = METHODS + EXTRA_METHODS
REFERENCE_METHODS = ("dense", "ticket")  # the unpruned host (kept 1) and the planted ticket itself
_SCORE_METHODS = {"random": ("random", 1), "magnitude": ("magnitude", 1), "snip": ("snip", 1),
                  "grasp": ("grasp", 1), "synflow": ("synflow", 1), "synflow100": ("synflow", 100)}


@dataclass(frozen=True)
class Protocol:
    """Everything besides (task, method, kept, seed) that changes a cell's numbers; the defaults are
    the paper's protocol as the authors' code runs it (../shared/METHODS.md, "Planting")."""

    depth: int = option(5, "layers of the target and of its host, input and output counted (paper: 3, 5, 10)")
    width: int = option(100, "units per hidden layer of the host (paper: 100, 1000)")
    samples: int = option(10_000, "samples drawn per task, split 90/10 into train and test")
    noise: float = option(0.01, "std of the Gaussian noise on regression targets (ReLU, Helix)")
    epochs: int = option(10, "epochs of Adam training of the kept weights, and of edge-popup's scores")
    lr: float = option(1e-3, "Adam learning rate of weak training")
    batch_size: int = option(32, "training batch size")
    score_samples: int = option(40, "training samples the pruning scores are computed from")
    multishot_rounds: int = option(10, "multishot: rounds of train, prune to kept^(r/rounds), reset to init")
    multishot_epochs: int = option(5, "multishot: Adam epochs before each pruning round")
    prune_bias: bool = option(True, "prune biases with the weights (the authors' --prune-bias True); the kept "
                                    "fraction then counts weights and biases", flag="--no-prune-bias")
    grasp_distribution: str = option("uniform", "how GraSP spreads the kept fraction over layers: 'uniform' is "
                                                "layer-wise, as the paper ran it; 'global' ranks all layers together",
                                     choices=("uniform", "global"))
    distance: str = option("l1", "planting: distance of a host neuron to a target neuron (the authors' code: l1)",
                           choices=("l1", "l2"))
    fold_output_scale: bool = option(False, "ablation, not the paper: fold the output scale into the ticket's "
                                            "output weights, which un-hides the ticket")
    test_batch_size: int = option(512, "regression MSE is rescaled per output on test batches of this size, as "
                                       "the authors' evaluation does (their README's --test-batch-size 512)")

    def __post_init__(self) -> None:
        positive = {k: getattr(self, k) for k in ("depth", "width", "samples", "epochs", "batch_size",
                                                  "score_samples", "multishot_rounds", "multishot_epochs",
                                                  "test_batch_size")}
        bad = {k: v for k, v in positive.items() if not (isinstance(v, int) and v >= 1)}
        if bad:
            raise ValueError(f"plant protocol: these must be integers >= 1: {bad}")
        if self.depth < 3:
            raise ValueError(f"plant protocol: depth counts input and output layers and must be >= 3, got {self.depth}")
        if not self.lr > 0 or self.noise < 0:
            raise ValueError(f"plant protocol: lr must be > 0 and noise >= 0, got lr {self.lr}, noise {self.noise}")


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _splits(data: TaskData, device: torch.device) -> DataSplits:
    """The task as the Trainer's data (float targets for regression, int64 labels for classification)."""
    return DataSplits(data.name, ArrayData(data.x_train, data.y_train), ArrayData(data.x_test, data.y_test),
                      data.output_dim, (data.input_dim,)).to(device)


def rescaled_mse(out: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """The authors' regression metric: on each test batch, every output j is rescaled by
    a_j = sum(y_j * out_j) / sum(out_j^2) (1 where out_j is all zero), then the MSE is averaged over
    the batches weighted by their size. Bounded by the targets' second moment, whatever the output's scale."""
    out64, y64 = out.double(), y.double()
    total = 0.0
    for lo in range(0, len(out64), batch_size):
        o, t = out64[lo:lo + batch_size], y64[lo:lo + batch_size]
        norm = (o * o).sum(0)
        a = torch.where(norm > 0, (o * t).sum(0) / torch.where(norm > 0, norm, torch.ones_like(norm)),
                        torch.ones_like(norm))
        total += float(((a * o - t) ** 2).mean()) * len(o)
    return total / len(out64)


@torch.no_grad()
def _performance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, kind: str,
                 test_batch_size: int) -> dict[str, float]:
    """Headline metric ("perf": rescaled MSE, or accuracy of the raw output) and the one beside it
    (raw MSE, or the accuracy of the output divided by the output scale: "up to scale")."""
    was_training = model.training
    model.eval()
    out = model(x)
    model.train(was_training)
    if kind == "regression":
        return {"perf": rescaled_mse(out, y, test_batch_size), "raw": float(((out.double() - y.double()) ** 2).mean())}
    return {"perf": float((out.argmax(1) == y).double().mean()),
            "up_to_scale": float(((out / scale).argmax(1) == y).double().mean())}


def _kept_density(kept: float | str, ticket: Mask) -> float:
    """The kept fraction asked for: a number, or "ticket" = the ticket's fraction of host weights
    (the authors' ``get_sparsity_gt``, weights only, also when biases are pruned)."""
    if kept == "ticket":
        return ticket.density
    try:
        value = float(kept)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"kept must be 'ticket' or a fraction in (0, 1], got {kept!r}")
    return value


def _check_method(method: str, kept: float | str) -> None:
    if method not in ALL_METHODS and method not in REFERENCE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(ALL_METHODS + REFERENCE_METHODS)}")
    if method == "dense" and kept != "ticket" and float(kept) != 1.0:
        raise ValueError(f"method 'dense' is the unpruned host: its kept fraction is 1, got {kept!r}")
    if method == "ticket" and kept != "ticket":
        raise ValueError(f"method 'ticket' is the planted ticket: its kept fraction is 'ticket', got {kept!r}")


def _prunable(host: nn.Module, prune_bias: bool) -> Mask:
    """The pool a method prunes from: every Linear weight, and every bias with ``prune_bias``."""
    biases = [n for n, m in host.named_modules() if isinstance(m, nn.Linear)] if prune_bias else []
    return Mask.dense(host, include=[f"{n}.bias" for n in biases])


def run_cell(task: str, method: str, kept: float | str, seed: int, protocol: Protocol = Protocol(), *,
             device: str | torch.device = "cpu", return_model: bool = False) -> dict[str, Any]:
    """One benchmark cell; returns a flat dict (see the module docstring). ``return_model`` adds
    the trained pruned model ("model"), the found weight mask ("mask"), the ticket ("ticket") and
    the found mask over the whole pruning pool, biases included where they are pruned ("found").

    The cell runs through ``cells.run_cells`` as a stack of one: its row is bit for bit the row it
    gets when computed together with other cells. A diverged training raises ``DivergenceError``."""
    from .cells import run_cells

    (row,) = run_cells([(task, method, kept, seed)], protocol, device=device, return_models=return_model)
    if isinstance(row, Exception):
        raise row
    return row


def multishot(score: str, init: nn.Module, pool: Mask, source: ScoreSource, density: float, rounds: int,
              fit: Callable[[nn.Module, Mask, int], None], *, distribution: str = "global",
              device: str | torch.device = "cpu", on_round: Callable[[int, Mask], None] | None = None) -> Mask:
    """The paper's multishot pruning with any score: ``rounds`` times, train a copy of ``init`` under
    the current mask (``fit(model, mask, round)``), prune with ``score`` to density^(r / rounds) of
    ``pool``, and reset the weights to ``init`` (the mask stays). ``on_round(r, mask)`` sees each mask.
    The benchmark runs these rounds for many cells at once (``cells._multishot``)."""
    found = pool
    schedule = Iterative(density, rounds)
    for r in range(1, rounds + 1):
        model = copy.deepcopy(init).to(device)
        found.apply_(model)
        fit(model, found, r)
        found = prune(score, model, found, source, schedule.density_at(r), distribution=distribution,
                      on_collapse="ignore")  # the row records collapse (recovery metrics)
        if on_round is not None:
            on_round(r, found)
    return found



def _distribution(score: str, protocol: Protocol) -> str:
    """GraSP is spread over the layers as ``grasp_distribution`` says (the paper: layer-wise); every other score globally."""
    return protocol.grasp_distribution if score == "grasp" else "global"


def run_benchmark(tasks: Iterable[str], methods: Iterable[str], kept_fractions: Iterable[float | str],
                  seeds: Iterable[int], protocol: Protocol = Protocol(), progress: Callable[[dict], None] | None = None,
                  workers: int = 1) -> list[dict]:
    """Every cell of tasks x methods x kept fractions x seeds, in that nesting order, without a
    store (``planting.study`` keeps cells in one); with ``workers`` > 1 in that many
    single-threaded processes (cells are independent)."""
    cells = [(task, method, kept, seed) for task in tasks for method in methods
             for kept in kept_fractions for seed in seeds]
    if workers <= 1:
        rows = []
        for cell in cells:
            rows.append(run_cell(*cell, protocol))
            if progress is not None:
                progress(rows[-1])
        return rows
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    with ProcessPoolExecutor(workers) as pool:
        rows = []
        for row in pool.map(partial(_cell_single_thread, protocol=protocol), cells):
            rows.append(row)
            if progress is not None:
                progress(row)
        return rows


def _cell_single_thread(cell: tuple, protocol: Protocol) -> dict:
    torch.set_num_threads(1)
    return run_cell(*cell, protocol)


_PANELS = (("singleshot and edge-popup", SINGLESHOT + EDGE_POPUP + EXTRA_METHODS), ("multishot", MULTISHOT))


def plot_benchmark(rows: Sequence[dict], path, metric: str = "weak") -> Any:
    """The paper's figure: performance vs. kept fraction per task (columns), singleshot and
    edge-popup methods in the top row, multishot in the bottom one; mean and min-max over seeds.
    The dense host is every line's point at kept 1; the planted ticket is a star at its kept fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis.report import _save

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    present = set(r["method"] for r in rows)
    panels = [(title, [m for m in methods if m in present]) for title, methods in _PANELS]
    panels = [(title, methods) for title, methods in panels if methods] or [("references", [])]
    fig, axes = plt.subplots(len(panels), len(tasks), figsize=(5.5 * len(tasks), 4.2 * len(panels)), squeeze=False)
    for col, task in enumerate(tasks):
        task_rows = [r for r in rows if r["task"] == task]
        regression = task_rows[0]["kind"] == "regression"
        dense = [r[metric] for r in task_rows if r["method"] == "dense"]
        ticket = [r for r in task_rows if r["method"] == "ticket"]
        for row_i, (title, methods) in enumerate(panels):
            ax = axes[row_i][col]
            for method in methods:
                pts: dict[float, list[float]] = {1.0: list(dense)} if dense else {}
                for r in task_rows:
                    if r["method"] == method:
                        pts.setdefault(float(r["target_density"]), []).append(r[metric])
                xs = sorted(x for x in pts if pts[x])
                means = [statistics.mean(pts[x]) for x in xs]
                ax.errorbar(xs, means, yerr=[[m - min(pts[x]) for m, x in zip(means, xs)],
                                             [max(pts[x]) - m for m, x in zip(means, xs)]],
                            fmt="-o", markersize=3, capsize=2, label=method)
            if ticket:
                ax.plot([ticket[0]["ticket_density"]], [statistics.mean(r[metric] for r in ticket)], "k*",
                        markersize=10, label="planted ticket")
                ax.axvline(ticket[0]["ticket_density"], color="black", linestyle=":", linewidth=1)
            ax.set_xscale("log")
            if regression:
                ax.set_yscale("log")
            ax.set_xlabel("fraction kept")
            ax.set_ylabel(("test MSE, rescaled per output" if regression else "test accuracy (raw output)")
                          + f", {metric}")
            ax.set_title(f"{task}: {title}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
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


_HEADLINE = {"regression": "test MSE after the per-output least-squares rescale, lower is better",
             "classification": "test accuracy of the raw output"}
_BESIDE = {"regression": [("weak_raw_mse", "weak, raw test MSE (no rescale)"),
                          ("strong_raw_mse", "strong, raw test MSE (no rescale)")],
           "classification": [("strong_up_to_scale", "strong, accuracy up to scale (output / lambda; not the "
                                                     "authors' metric)")]}


def benchmark_table(rows: Sequence[dict]) -> str:
    """Markdown: per task, weak and strong performance in the authors' metric (mean [min, max] over
    seeds; rows = method, columns = kept fraction), the metric beside it (raw MSE, or Circle's
    accuracy up to scale), then recovery of the ticket at its kept fraction."""
    out: list[str] = []
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    order = {m: i for i, m in enumerate(ALL_METHODS + REFERENCE_METHODS)}
    for task in tasks:
        sel = [r for r in rows if r["task"] == task]
        kind = sel[0]["kind"]
        methods = sorted(dict.fromkeys(r["method"] for r in sel), key=lambda m: order.get(m, len(order)))
        kepts = sorted(dict.fromkeys(r["kept"] for r in sel), key=_kept_key)
        header = "| method | " + " | ".join(f"kept {k}" for k in kepts) + " |"
        rule = "|---|" + "---|" * len(kepts)
        seeds = len(dict.fromkeys(r["seed"] for r in sel))
        tables = [("weak", f"weak ({_HEADLINE[kind]})"), ("strong", f"strong ({_HEADLINE[kind]})"), *_BESIDE[kind]]
        for key, title in tables:
            out += [f"### {task}: {title}; mean [min, max] over {seeds} seeds", "", header, rule]
            for m in methods:
                cells = [_cell([r[key] for r in sel if r["method"] == m and r["kept"] == k], kind) for k in kepts]
                out.append(f"| {m} | " + " | ".join(cells) + " |")
            out.append("")
        at_ticket = [r for r in sel if r["kept"] == "ticket"]
        if at_ticket:
            out += [f"### {task}: recovery of the ticket's weights at its kept fraction "
                    f"({at_ticket[0]['ticket_density']:.4f})", "",
                    "| method | recall | precision | jaccard | collapsed layers |", "|---|---|---|---|---|"]
            for m in methods:
                rs = [r for r in at_ticket if r["method"] == m]
                if rs:
                    out.append(f"| {m} | " + " | ".join(
                        _cell([float(r[key]) for r in rs], "classification")
                        for key in ("recall", "precision", "jaccard", "collapsed")) + " |")
            out.append("")
    return "\n".join(out)


__all__ = ["ALL_METHODS", "EDGE_POPUP", "EXTRA_METHODS", "METHODS", "MULTISHOT", "REFERENCE_METHODS", "SINGLESHOT", "Protocol", "benchmark_table",
           "multishot", "plot_benchmark", "rescaled_mse", "run_benchmark", "run_cell"]
