"""Plant 'n' Seek cells computed together: every training of many cells as one stacked model.

A cell's procedure (``benchmark`` module docstring) is, phase by phase:

1. plant: task data, host H, ticket T for (task, seed);
2. prune: singleshot scores once on H; multishot ``rounds`` times train-prune-reset; edge-popup
   scores trained on H's frozen weights; or the references (H itself, T);
3. strong performance and recovery of T;
4. weak training of the kept parameters (Adam), weak performance.

``run_cells`` runs each phase for all its cells at once: every training (a multishot round, the
weak training, edge-popup) is ``replicates.train_stacked`` / ``train_edge_popup_stacked`` over
stacks of up to ``stack_size`` cells of one task (each cell its own data, mask, seed and optimiser
state); the cheap per-cell steps (scores, metrics) run one cell at a time. A replicate's result does
not depend on what else is in its stack (the stack's guarantee), so a cell's row is the same bit
for bit whether it is computed alone (``benchmark.run_cell``), in a stack of 32, or in another
order; multishot's first round, identical for every score and kept fraction of a (task, seed)
(H trained under the full pool with the same seed), is trained once and shared.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data import DataSplits
from ..masks import Mask
from ..pruning.edge_popup_stacked import train_edge_popup_stacked
from ..pruning.prune import prune
from ..pruning.schedules import Iterative
from ..pruning.scores import ScoreSource
from ..replicates import train_stacked
from ..training import DivergenceError
from .benchmark import (_SCORE_METHODS, MULTISHOT, Protocol, _check_method, _distribution, _kept_density,
                        _performance, _prunable, _splits)
from .plant import PlantResult, host_network, plant
from .recovery import recovery_metrics
from .targets import target_network
from .tasks import make_task

Cell = tuple[str, str, "float | str", int]  # (task, method, kept, seed)
Log = Callable[[str], None]
STACK_SIZE = 32  # replicates per stack: the planted MLP's best throughput per core (docs/replicates.md)


@dataclass
class _Plant:
    """What every cell of one (task, seed) starts from."""

    splits: DataSplits
    kind: str
    input_shape: tuple[int, ...]
    planted: PlantResult
    pool: Mask
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(eq=False)  # compared by identity: a cell in progress is one object
class _Work:
    """One cell in progress."""

    task: str
    method: str
    kept: float | str
    seed: int
    setup: _Plant
    density: float
    source: ScoreSource
    found: Mask | None = None
    model: nn.Module | None = None
    seconds: float = 0.0
    failed: str | None = None
    row: dict[str, Any] = field(default_factory=dict)


def _setup(task: str, seed: int, pr: Protocol, dev: torch.device) -> _Plant:
    torch.manual_seed(seed)
    data = make_task(task, n=pr.samples, noise=pr.noise, seed=seed)
    host = host_network(data.input_dim, data.output_dim, depth=pr.depth, width=pr.width, seed=seed)
    planted = plant(target_network(task, pr.depth), host, distance=pr.distance, fold_output_scale=pr.fold_output_scale)
    loss = F.mse_loss if data.kind == "regression" else F.cross_entropy  # on the raw output, as the authors
    return _Plant(_splits(data, dev), data.kind, (data.input_dim,), planted, _prunable(planted.host, pr.prune_bias),
                  loss)


def _source(p: _Plant, seed: int, pr: Protocol, dev: torch.device) -> ScoreSource:
    """The cell's own score source (its own seeded generator: cells never share random draws)."""
    x, y = p.splits.train.x[:pr.score_samples], p.splits.train.y[:pr.score_samples]
    return ScoreSource(batches=lambda: [(x, y)], input_shape=p.input_shape,
                       generator=torch.Generator().manual_seed(int(seed)), device=dev, loss=p.loss)


def _chunks(items: Sequence[Any], size: int, key: Callable[[Any], str] = lambda w: w.task) -> list[list[Any]]:
    """Items grouped by task (``key``; one architecture and loss per stack), each group cut into the
    fewest stacks of at most ``size``, as even as possible."""
    by_task: dict[str, list[Any]] = {}
    for item in items:
        by_task.setdefault(key(item), []).append(item)
    out = []
    for group in by_task.values():
        n = math.ceil(len(group) / size)
        out += [group[i::n] for i in range(n)]
    return out


def _digest(mask: Mask) -> str:
    h = hashlib.sha1()
    for name in sorted(mask):
        h.update(name.encode())
        h.update(mask[name].numpy().tobytes())
    return h.hexdigest()


class _Stacks:
    """Runs a phase's trainings in stacks and charges each cell its share of the time."""

    def __init__(self, pr: Protocol, dev: torch.device, size: int, log: Log | None):
        self.pr, self.dev, self.size, self.log = pr, dev, size, log

    def fit(self, jobs: Sequence[tuple[_Work, nn.Module, Mask, int]], epochs: int, what: str) -> list[nn.Module | None]:
        """Adam for ``epochs`` epochs on each job's (model, mask, seed) with its cell's data, the
        Trainer's recipe (``benchmark._fit``); None where the replicate diverged (its cell fails)."""
        cfg = TrainConfig(optimizer="adam", lr=self.pr.lr, batch_size=self.pr.batch_size, steps=f"{epochs}ep",
                          eval_every=f"{max(1, epochs)}ep")
        out: list[nn.Module | None] = [None] * len(jobs)
        for chunk in _chunks(list(range(len(jobs))), self.size, key=lambda i: jobs[i][0].task):
            start = time.perf_counter()
            batch = [jobs[i] for i in chunk]
            records = train_stacked([m for _, m, _, _ in batch], [mask for _, _, mask, _ in batch],
                                    [w.setup.splits for w, _, _, _ in batch], cfg, [s for _, _, _, s in batch],
                                    loss=batch[0][0].setup.loss, device=self.dev)
            share = (time.perf_counter() - start) / len(batch)
            for i, (w, _, _, _), rec in zip(chunk, batch, records):
                w.seconds += share
                if rec.diverged is not None:
                    w.failed = f"{what}: {rec.diverged}"
                else:
                    out[i] = rec.model
            if self.log is not None:
                self.log(f"  {what}: {len(batch)} cells of {batch[0][0].task} trained as one stack "
                         f"({share * len(batch):.1f} s)")
        return out


def _prune_singleshot(w: _Work, pr: Protocol, dev: torch.device) -> None:
    score, rounds = _SCORE_METHODS[w.method]
    start = time.perf_counter()
    w.found = prune(score, w.model, w.setup.pool, w.source, w.density, rounds=rounds,
                    distribution=_distribution(score, pr), on_collapse="ignore")  # the row records collapse
    w.seconds += time.perf_counter() - start


# Scores that ignore the weights they are given: a multishot round of such a score prunes the same
# mask whether or not it trained first, so its trainings are skipped (the row is bit for bit the same).
WEIGHT_FREE_SCORES = frozenset({"random"})


def _multishot(cells: Sequence[_Work], pr: Protocol, stacks: _Stacks) -> None:
    """The paper's multishot with any score (``benchmark.multishot``), all cells' rounds stacked:
    round r trains H under each cell's mask (fresh Adam, seed * 1000 + r), then prunes each cell
    with its score to kept^(r / rounds); cells with the same (task, seed, mask) train once.

    A round whose cells all prune with a score that never reads the weights (``WEIGHT_FREE_SCORES``:
    random draws from the cell's own generator) is not trained: the training could not change its
    mask. The rows are the ones the trained rounds give, bit for bit (tested); the one difference is
    that a divergence in such a skipped training, which would have failed the cell, cannot happen
    (none happened in the full benchmark's 60 random multishot cells)."""
    for w in cells:
        w.found = w.setup.pool
    for r in range(1, pr.multishot_rounds + 1):
        live = [w for w in cells if w.failed is None]
        unique: dict[tuple, list[_Work]] = {}
        for w in live:
            unique.setdefault((w.task, w.seed, _digest(w.found)), []).append(w)
        groups = list(unique.values())
        models = []  # each group's H under its mask; trained below where a score reads the weights
        for group in groups:
            model = copy.deepcopy(group[0].setup.planted.host).to(stacks.dev)
            group[0].found.apply_(model)
            models.append(model)
        train = [i for i, group in enumerate(groups)
                 if any(w.method.removeprefix("multishot_") not in WEIGHT_FREE_SCORES for w in group)]
        trained = stacks.fit([(groups[i][0], models[i], groups[i][0].found, groups[i][0].seed * 1_000 + r)
                              for i in train], pr.multishot_epochs, f"multishot round {r}/{pr.multishot_rounds}")
        for i, model in zip(train, trained):
            models[i] = model
        for group, model in zip(groups, models):
            for w in group:
                if model is None:
                    w.failed = w.failed or group[0].failed
                    continue
                start = time.perf_counter()
                score = w.method.removeprefix("multishot_")
                w.found = prune(score, copy.deepcopy(model), w.found, w.source,
                                Iterative(w.density, pr.multishot_rounds).density_at(r),
                                distribution=_distribution(score, pr), on_collapse="ignore")
                w.seconds += time.perf_counter() - start
    for w in cells:
        if w.failed is None:
            w.model = copy.deepcopy(w.setup.planted.host).to(stacks.dev)


def _edge_popup(cells: Sequence[_Work], pr: Protocol, stacks: _Stacks) -> None:
    """Edge-popup scores over the pool on H's frozen weights (SGD 0.1, momentum 0.9, wd 5e-4,
    cosine, ``epochs``), stacked; annealed cells train at kept^((epoch + 1) / epochs)."""
    for chunk in _chunks(cells, stacks.size):
        start = time.perf_counter()
        records = train_edge_popup_stacked(
            [w.setup.planted.host for w in chunk], [w.setup.splits for w in chunk], [w.density for w in chunk],
            [w.seed for w in chunk], epochs=pr.epochs, lr=0.1, momentum=0.9, weight_decay=5e-4,
            batch_size=pr.batch_size, anneal=[w.method == "edgepopup_anneal" for w in chunk],
            include_bias=pr.prune_bias, loss=chunk[0].setup.loss, device=stacks.dev)
        share = (time.perf_counter() - start) / len(chunk)
        for w, rec in zip(chunk, records):
            w.seconds += share
            if rec.diverged is not None:
                w.failed = f"edge-popup: {rec.diverged}"
            else:
                w.found, w.model = rec.mask, rec.model
        if stacks.log is not None:
            stacks.log(f"  edge-popup: {len(chunk)} cells of {chunk[0].task} as one stack ({share * len(chunk):.1f} s)")


GEM_PERIOD = 2  # epochs between GEM-MINER's pruning rounds: 4 rounds in the protocol's 10 epochs


def gem_period(epochs: int) -> int:
    """GEM-MINER's round period for ``epochs``: ``GEM_PERIOD``, shorter for short runs (a round needs
    an epoch after it); a run of one epoch cannot prune."""
    if epochs < 2:
        raise ValueError(f"plant method gem needs --epochs >= 2 (GEM-MINER prunes after an epoch and trains on "
                         f"after its last round), got {epochs}")
    return min(GEM_PERIOD, epochs - 1)


def _gem(cells: Sequence[_Work], pr: Protocol, dev: torch.device) -> None:
    """GEM-MINER (ticketlab's addition to the benchmark, not the paper's): scores over the pool (the
    biases too, as every method here prunes them) on H's frozen weights, SGD 0.1, momentum 0.9,
    L2 1e-4, cosine over ``epochs``, a global round every ``GEM_PERIOD`` epochs to exactly the kept
    fraction; the flag mask is the found mask. One cell at a time (not stacked): ~7 ms per step."""
    from ..pruning.gem_miner import train_gem_miner

    for w in cells:
        start = time.perf_counter()
        model = copy.deepcopy(w.setup.planted.host).to(dev)
        biases = [n for n in w.setup.pool if n.endswith(".bias")]
        result = train_gem_miner(model, w.setup.splits, w.density, epochs=pr.epochs, iter_period=gem_period(pr.epochs), lr=0.1,
                                 momentum=0.9, batch_size=pr.batch_size, weight_init="keep", seed=w.seed, device=dev,
                                 loss=w.setup.loss, include=biases)
        w.found, w.model = result["mask"], model
        w.seconds += time.perf_counter() - start


def run_cells(cells: Sequence[Cell], protocol: Protocol = Protocol(), *, device: str | torch.device = "cpu",
              stack_size: int = STACK_SIZE, log: Log | None = None,
              return_models: bool = False) -> list[dict[str, Any] | DivergenceError]:
    """The rows of ``cells`` (task, method, kept, seed), in order (see ``benchmark.run_cell`` for a
    row's keys; ``seconds`` is the cell's share of the stacks it was in). A cell whose training
    diverged gets a ``DivergenceError`` instead of a row; the others are unaffected.
    ``return_models`` adds "model", "mask", "ticket" and "found" as ``run_cell`` does."""
    if not isinstance(stack_size, int) or isinstance(stack_size, bool) or stack_size < 1:
        raise ValueError(f"stack_size must be an integer >= 1, got {stack_size!r}")
    pr, dev = protocol, torch.device(device)
    setups: dict[tuple[str, int], _Plant] = {}
    work: list[_Work] = []
    for task, method, kept, seed in cells:
        _check_method(method, kept)
        kept = 1.0 if method == "dense" else kept
        start = time.perf_counter()
        key = (task, int(seed))
        if key not in setups:
            setups[key] = _setup(task, int(seed), pr, dev)
        p = setups[key]
        w = _Work(task, method, kept, int(seed), p, _kept_density(kept, p.planted.mask), _source(p, int(seed), pr, dev))
        w.model = copy.deepcopy(p.planted.host).to(dev)
        if method == "ticket":
            w.found = Mask({**{n: p.planted.mask[n] for n in p.planted.mask},
                            **({n: p.planted.bias_mask[n] for n in p.planted.bias_mask} if pr.prune_bias else {})})
        elif w.density >= 1.0:
            w.found = p.pool
        w.seconds += time.perf_counter() - start
        work.append(w)
    stacks = _Stacks(pr, dev, stack_size, log)

    pending = [w for w in work if w.found is None]
    for w in pending:
        if w.method in _SCORE_METHODS:
            _prune_singleshot(w, pr, dev)
    _multishot([w for w in pending if w.method in MULTISHOT], pr, stacks)
    _edge_popup([w for w in pending if w.method.startswith("edgepopup")], pr, stacks)
    _gem([w for w in pending if w.method == "gem"], pr, dev)

    live = [w for w in work if w.failed is None]
    for w in live:  # strong performance and recovery, one cell at a time (cheap)
        start = time.perf_counter()
        w.found.apply_(w.model)
        weights = Mask({n: w.found[n] for n in w.setup.planted.mask})
        p = w.setup
        scale = p.planted.output_scale.to(dev)
        w.row["strong"] = _performance(w.model, p.splits.test.x, p.splits.test.y, scale, p.kind, pr.test_batch_size)
        w.row["recovery"] = recovery_metrics(weights, p.planted.mask, copy.deepcopy(w.model).cpu(), p.input_shape)
        w.row["weights"] = weights
        w.seconds += time.perf_counter() - start
    trained = stacks.fit([(w, w.model, w.found, w.seed * 1_000 + 999) for w in live], pr.epochs, "weak training")
    out: list[dict[str, Any] | DivergenceError] = []
    for w, model in zip(live, trained):
        if model is not None:
            w.model = model
    for w in work:
        if w.failed is not None:
            out.append(DivergenceError(f"plant cell {w.task} {w.method} kept {w.kept} seed {w.seed} diverged in "
                                       f"{w.failed}"))
            continue
        out.append(_row(w, pr, dev, return_models))
    return out


def _row(w: _Work, pr: Protocol, dev: torch.device, return_models: bool) -> dict[str, Any]:
    p = w.setup
    start = time.perf_counter()
    weak = _performance(w.model, p.splits.test.x, p.splits.test.y, p.planted.output_scale.to(dev), p.kind,
                        pr.test_batch_size)
    strong, recovery, weights = w.row["strong"], w.row["recovery"], w.row["weights"]
    nan = float("nan")
    row = {
        "task": w.task, "method": w.method, "kept": w.kept, "seed": w.seed, "kind": p.kind,
        "density": w.found.density, "weight_density": weights.density, "target_density": w.density,
        "ticket_density": p.planted.mask.density,
        "strong": strong["perf"], "weak": weak["perf"],
        "strong_raw_mse": strong.get("raw", nan), "weak_raw_mse": weak.get("raw", nan),
        "strong_up_to_scale": strong.get("up_to_scale", nan),
        "recall": recovery["recall"], "precision": recovery["precision"], "jaccard": recovery["jaccard"],
        "effective_density": recovery["effective_density"], "collapsed": len(recovery["collapsed_layers"]),
        "disconnected": bool(recovery["disconnected"]), "fallbacks": int(sum(p.planted.fallbacks)),
        "seconds": w.seconds + time.perf_counter() - start,
    }
    if return_models:
        row.update(model=w.model, mask=weights, ticket=p.planted.mask, found=w.found)
    return row


__all__ = ["STACK_SIZE", "run_cells"]
