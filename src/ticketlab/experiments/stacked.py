"""Many runs of one procedure on one small model, their training units trained as one stacked model.

``ticketlab prune ... --seeds 0 1 2 3`` (issue 13): each seed's run is prepared as a solo run is
(its own Store folder, init and mask), the runs' training units are trained together as replicates
of one stacked model (:mod:`ticketlab.replicates`: each with its own weights, mask, data order,
validation split and optimiser state), and each unit's results are written into its own run exactly
as a solo unit's are (weights, metrics.jsonl, summary.json), so ``ls``, ``report``, ``export`` and
resume see ordinary runs.

Such runs carry ``train.numerics = "stacked"`` in their config: they agree with the solo Trainer to
float tolerance, not bit for bit (docs/replicates.md says why), so they are other runs than the
same seeds' solo ones. A replicate's numbers do not depend on the rest of its stack, so a stacked
run trained alone (a rerun that finds the others complete, ``--stack-size 1``) gives the very same
numbers; a killed stack keeps no mid-training checkpoint and is trained again from its start.

Only plain ReLU MLPs are stacked: they have the hand-written batched engine and gain from it
(planted MLP 3.5-5.6x, LeNet-300-100 0.94-1.28x on the 2-core CPU); conv nets ran slower stacked
on a CPU (docs/replicates.md), so their seeds run one at a time, as solo runs.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..checkpoint import save_weights
from ..config import ConfigError, TrainConfig, to_dict
from ..data import ArrayData, DataSplits, load_dataset
from ..masks import Mask
from ..prunable import UnprunedWeightsWarning
from ..replicates import _mlp_layers, train_stacked
from ..steps import to_iterations
from ..store import Run, Store, config_hash
from ..training import Callback, DivergenceError, History, default_metrics
from .common import Log, UnitContext, _flops, build_seeded_model, check_pruned_weights, example_input, running, \
    seed_splits, summarize, training_length

STACKED = "stacked"
MAX_STACK = 32  # the measured best stack size on one CPU core (docs/replicates.md)
MEMORY_BUDGET = 2 << 30  # bytes of stacked parameters, gradients, optimiser state and activations
# On a GPU larger stacks run faster (H200: the planted MLP 27k replicate-steps/s at K = 32, 100k at 512),
# but cuBLAS changes its kernels with the batch count: there a replicate's weights after 300 Adam steps
# were bit-identical in stacks of 1, 4 and 16 and differed by 3e-8 in stacks of 128 and 512
# (benchmarks/replicates_device_check.py, docs/replicates.md). So by default a GPU stack holds at most
# the largest size checked exact; --stack-size may ask for more, trading that for speed.
MAX_STACK_CUDA = 16
CUDA_MEMORY_SHARE = 4  # a stack takes at most 1/this of the GPU memory free when it is sized


class StackSizeWarning(UserWarning):
    """A GPU stack larger than ``MAX_STACK_CUDA``: its replicates' last bits may depend on its size."""


def stack_refusal(model: nn.Module, train: TrainConfig) -> str | None:
    """Why runs of ``model`` under ``train`` are not stacked (None: they are)."""
    if _mlp_layers(model) is None:
        return (f"the model ({type(model).__name__}) is not a plain ReLU MLP; only MLPs gain from stacking "
                "(conv nets ran slower stacked on a CPU: docs/replicates.md)")
    if any(True for _ in model.buffers()):
        return "the model has buffers (e.g. BatchNorm statistics), which the stacked engine does not carry"
    if train.precision != "fp32":
        return f"precision {train.precision!r}: the stacked engine's hand-written backward pass is float32"
    return None


def stack_size(model: nn.Module, train: TrainConfig, runs: int, limit: int | None = None,
               device: torch.device | str | None = None) -> int:
    """How many runs to train in one stack: at most ``MAX_STACK`` on a CPU, ``MAX_STACK_CUDA`` on a
    GPU (or ``limit``), and what fits in ``MEMORY_BUDGET`` (a GPU: 1/``CUDA_MEMORY_SHARE`` of its
    free memory) at 4 bytes for the weight, gradient and two optimiser moments of every parameter,
    plus a batch's activations of every layer, forward and backward."""
    params = sum(p.numel() for p in model.parameters())
    widths = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    per_run = 4 * (4 * params + 3 * train.batch_size * widths)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        cap, budget = MAX_STACK_CUDA, torch.cuda.mem_get_info(dev)[0] // CUDA_MEMORY_SHARE
    else:
        cap, budget = MAX_STACK, MEMORY_BUDGET
    size = max(1, min(runs, limit or cap, budget // max(1, per_run)))
    warn_if_inexact_gpu_stack(size, dev)
    return size


def warn_if_inexact_gpu_stack(size: int, device: torch.device | str) -> None:
    """Say so when a GPU stack is larger than the largest size checked to keep a replicate's bits."""
    if torch.device(device).type == "cuda" and size > MAX_STACK_CUDA:
        warnings.warn(f"a stack of {size} on a GPU: above {MAX_STACK_CUDA} replicates cuBLAS may compute the "
                      "products with other kernels, so a run's last bits can depend on how many runs share its "
                      f"stack (measured on an H200: up to 3e-8 after 300 steps). Give --stack-size {MAX_STACK_CUDA} "
                      "or less for numbers that do not depend on the stack", StackSizeWarning, stacklevel=2)


def stacked_train(train: TrainConfig) -> TrainConfig:
    """The training settings of a stacked run (its config says how it was trained)."""
    return replace(train, numerics=STACKED)


def shared_settings(config: Any) -> str:
    """What the runs of one stack must share: the procedure, the data set, the model and the training
    settings. Their seeds, methods, kept fractions, IMP rates and resets, and masks may differ: each
    replicate has its own mask and seed, its numbers do not depend on the others, and IMP trains
    together only the units that share a segment (start step, LR override, rewind point)."""
    described = [getattr(config, "experiment", type(config).__name__),
                 *(to_dict(getattr(config, part), for_hash=True) for part in ("data", "model", "train"))]
    return json.dumps(described, sort_keys=True)


def check_stack_configs(configs: Sequence[Any], refusal: Callable[[Any, DataSplits], str | None]) -> DataSplits:
    """What every ``run_*_seeds`` asks of its configs: stacked numerics, one ``shared_settings`` (data
    set, model, training settings; seeds, methods, kept fractions may differ), and a setting that
    stacks (``refusal(config, data)`` None); anything else is one clear error. Returns the data set,
    loaded once for the check and the runs."""
    if not configs:
        raise ValueError("no configs to run")
    if any(c.train.numerics != STACKED for c in configs):
        raise ValueError("stacked runs need configs with train.numerics 'stacked' (experiments.stacked.stacked_train)")
    if len({shared_settings(c) for c in configs}) != 1:
        raise ConfigError(f"stacked {configs[0].experiment} runs must share their data set, model and training "
                          "settings (seeds, methods and kept fractions may differ)")
    data = load_dataset(configs[0].data.name, configs[0].data.root, **configs[0].data.options)
    settings = {config_hash(replace(c, seed=0)): c for c in configs}  # a refusal may read more than shared_settings
    for config in settings.values():
        if (why := refusal(config, data)) is not None:
            raise ConfigError(f"these runs cannot be stacked: {why}")
    return data


@dataclass
class StackedUnit:
    """One run's training unit, prepared as :func:`common.train_unit` would train it."""

    ctx: UnitContext
    unit: str
    model: nn.Module
    mask: Mask | None
    train_rows: torch.Tensor | None = None  # the run's training rows of the shared data (its own val split)
    extra_summary: dict[str, Any] | Callable[[Any], dict[str, Any]] | None = None
    expected_density: float | None = None
    start_step: int = 0
    lr_override: float | None = None
    snapshot_step: int | None = None  # after this many iterations the weights go to on_snapshot (a rewind point)
    on_snapshot: Callable[[dict[str, torch.Tensor]], None] | None = None
    callbacks: list[Callback] = field(default_factory=list)  # Trainer callbacks of this unit (RigL, SET, GMP)

    def segment(self) -> tuple[int, float | None, int | None]:
        """What units must share to be trained in one stack (besides the architecture and TrainConfig)."""
        return self.start_step, self.lr_override, self.snapshot_step


@dataclass
class UnitOutcome:
    """A stacked unit's result: its summary, or why its training diverged (then nothing is written)."""

    summary: dict[str, Any] | None
    diverged: str | None = None


def train_units_stacked(units: Sequence[StackedUnit], data: DataSplits, device: torch.device) -> list[UnitOutcome]:
    """Train ``units`` (one architecture, one TrainConfig, one data set) as one stack; write each
    complete unit into its run as ``train_unit`` does. ``data``: the full data set; each unit trains
    on its ``train_rows`` of it (all, when None) and validates on its context's validation split."""
    if not units:
        return []
    train = units[0].ctx.train
    if any(u.ctx.train != train or u.segment() != units[0].segment() for u in units):
        raise ValueError("stacked units need one TrainConfig, start step, LR override and snapshot step")
    start, lr_override, snap = units[0].segment()
    rows = [u.train_rows if u.train_rows is not None else torch.arange(len(data.train)) for u in units]
    validations = [u.ctx.validation for u in units]  # every run's, or none (one config, one val_size)
    validation = validations if any(v is not None and len(v) for v in validations) else None
    records = train_stacked([u.model for u in units], [u.mask for u in units], data, train,
                            [u.ctx.seed for u in units], metrics=default_metrics(data.test), validation=validation,
                            device=device, train_rows=rows, start_step=start, lr_override=lr_override,
                            snapshot_steps=() if snap is None else (snap,), callbacks=[u.callbacks for u in units])
    outcomes = []
    for u, rec in zip(units, records):
        if snap is not None and snap in rec.snapshots and u.on_snapshot is not None:
            u.on_snapshot(rec.snapshots[snap])
        if rec.diverged is not None:
            u.ctx.log(f"  {u.unit}: DIVERGED, not stored ({rec.diverged})")
            outcomes.append(UnitOutcome(None, rec.diverged))
            continue
        with torch.no_grad():  # the trained weights into the run's own module
            for p, q in zip(u.model.parameters(), rec.model.parameters()):
                p.copy_(q)
        u.mask = rec.mask  # the final mask (callbacks may have changed it)
        outcomes.append(UnitOutcome(_write_unit(u, rec.history.records, rec.history.mask_events)))
    return outcomes


def _write_unit(u: StackedUnit, history: list[dict[str, Any]], mask_events: list[dict] = ()) -> dict[str, Any]:
    """The unit's files, as ``common.train_unit`` writes them (summary last: marks it complete)."""
    ctx, run = u.ctx, u.ctx.run
    final_mask = u.mask
    if final_mask is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnprunedWeightsWarning)
            final_mask = Mask.dense(u.model, **ctx.prunable)
    else:
        check_pruned_weights(u.model, final_mask, u.unit, u.expected_density)
    n_train = len(u.train_rows) if u.train_rows is not None else len(ctx.data.train)
    schedule_steps = to_iterations(ctx.train.steps, n_train // ctx.train.batch_size)
    trained = history[-1]["step"] - u.start_step
    extra = u.extra_summary
    if callable(extra):  # a function of the finished training, as train_unit's: its history and final mask
        extra = extra(SimpleNamespace(history=History(records=list(history), mask_events=list(mask_events)),
                                      mask=u.mask))
    summary = {**summarize(History(records=list(history)), final_mask, u.start_step), **(extra or {}),
               **_flops(u.model, final_mask, ctx.data.input_shape, trained, schedule_steps, ctx.train.batch_size,
                        example_input(ctx.data))}
    save_weights(u.model, run.file(u.unit, "final.safetensors"))
    run.write_jsonl(history, u.unit, "metrics.jsonl")
    if mask_events:
        run.write_jsonl(list(mask_events), u.unit, "mask_events.jsonl")
    run.write_json(summary, u.unit, "summary.json")  # written last: marks the unit complete
    ctx.log(f"  {u.unit} (stacked): density {final_mask.density:.4f}  test acc final "
            f"{summary['final_test_accuracy']:.4f}  max {summary['max_test_accuracy']:.4f}  early-stop it "
            f"{summary['early_stop_step']}")
    return summary


def refusal_for(config: Any, data: DataSplits | None = None) -> str | None:
    """:func:`stack_refusal` for a run config (its model built on its data set's shapes; ``data``:
    the data set when the caller has it loaded)."""
    if data is None:
        data = load_dataset(config.data.name, config.data.root, **config.data.options)
    return stack_refusal(build_seeded_model(config.model, data, config.seed), config.train)


def run_stacked_units(configs: Sequence[Any], store: Store, full: DataSplits, device: torch.device,
                      prepare: Callable[[Any, Run, DataSplits, ArrayData | None, torch.Tensor | None], StackedUnit],
                      finish: Callable[[Run, dict[str, Any]], None], log: Log,
                      stack_limit: int | None = None) -> list[dict[str, Any]]:
    """The stacked driver of the one-unit procedures (prune, sparse): every run locked (in hash order,
    one order for every process), the complete ones read, the others' units prepared
    (``prepare(config, run, seed's data, validation, training rows)``), trained in stacks and
    finished (``finish(run, summary)``). Returns the summaries in order; a run whose training
    diverged is marked so and reported by one DivergenceError after the others are stored."""
    summaries: dict[int, dict[str, Any]] = {}
    diverged: list[str] = []
    order = sorted(range(len(configs)), key=lambda i: config_hash(configs[i]))
    with contextlib.ExitStack() as locks:
        pending: list[tuple[int, StackedUnit]] = []
        for i in order:
            config = configs[i]
            data, validation, rows = seed_splits(full, config.data, config.seed)
            training_length(config.train, data)
            run = locks.enter_context(running(store, config, log))
            if (done := run.complete_summary()) is not None:
                log(f"{config.experiment} run {run.hash} (seed {config.seed}) is complete; nothing recomputed")
                summaries[i] = {k: v for k, v in done.items() if k != "status"}
                continue
            pending.append((i, prepare(config, run, data, validation, rows)))
        size = stack_size(pending[0][1].model, configs[0].train, len(pending), stack_limit, device) if pending else 1
        for start in range(0, len(pending), size):
            chunk = pending[start:start + size]
            log(f"training {len(chunk)} run(s) as one stacked model")
            for (i, unit), outcome in zip(chunk, train_units_stacked([u for _, u in chunk], full, device)):
                if outcome.summary is None:
                    unit.ctx.run.update_index(status="diverged")
                    diverged.append(f"{unit.ctx.run.hash} (seed {configs[i].seed}): {outcome.diverged}")
                    continue
                finish(unit.ctx.run, outcome.summary)
                summaries[i] = outcome.summary
    if diverged:
        raise DivergenceError(f"{len(diverged)} of {len(configs)} runs diverged and were not stored (the others "
                              f"were): {'; '.join(diverged)}")
    return [summaries[i] for i in range(len(configs))]
