"""Sparse training runs: dense, static sparse, SET, RigL and gradual magnitude pruning (GMP).

All five share one Trainer; SET/RigL and GMP are callbacks that change the mask (see
``pruning/dynamic.py``), each driven by a schedule (``pruning/schedules.py``: ``CosineDrop``,
``Cubic``). Static, SET and RigL start from a random mask with the distribution's layer-wise
densities (ERK by default); GMP and dense start dense, and GMP prunes along the distribution
('global', 'uniform' (default), 'erk', 'smart', 'smart_vgg'). Each run records its training
FLOPs relative to dense training, counted as the RigL paper does: every step 3 f_S(t) per sample,
plus f_D - f_S at each RigL update step (the dense gradient); f_S(t) follows every mask change.

Each run also logs and records the connectivity of its start mask (``start_effective_density``,
``start_collapsed_layers``) and of its final mask, after RigL/SET/GMP changed it
(``effective_density``, ``collapsed_layers``). ``include`` / ``exclude`` choose the weights
besides the Linear/Conv ones (raw parameters, embeddings) that the masks cover.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..analysis.flops import layer_flops, run_training_flops
from ..config import SparseTrainConfig
from ..data import DataSplits
from ..masks import Mask
from ..pruning.distributions import layer_counts, shapes_of
from ..pruning.dynamic import DropGrow, DropGrowOptions, GMPOptions, GradualMagnitude
from ..pruning.schedules import CosineDrop, Cubic
from ..steps import to_iterations
from ..store import Run, Store, index_fields
from ..training import Callback, resolve_device
from .common import running, Log, UnitContext, build_seeded_model, connectivity, connectivity_line, example_input, \
    load_or_save_init, prepare_data, train_unit, training_length
from .stacked import STACKED, StackedUnit, check_stack_configs, refusal_for, run_stacked_units

_SALT_INIT_MASK = 21


def random_sparse_mask(dense: Mask, distribution: str, density: float, generator: torch.Generator) -> Mask:
    """A random mask with the distribution's exact layer-wise kept counts."""
    counts = layer_counts(distribution, shapes_of(dense), density)
    out = {}
    for name, m in dense.items():
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=generator)[:counts[name]]] = True
        out[name] = flat.reshape(m.shape)
    return Mask(out)


def mask_updater(cfg: SparseTrainConfig, total_steps: int, ipe: int) -> tuple[Callback | None, Any]:
    """The callback that changes the mask for this method (None for dense / static)."""
    o = cfg.options  # the method's own options (SPARSE_OPTIONS in pruning/dynamic.py)
    if isinstance(o, DropGrowOptions):  # set / rigl
        schedule = CosineDrop(alpha=o.alpha, every=o.delta_t, end=int(o.t_end * total_steps), density=cfg.density)
        updater = DropGrow(grow="gradient" if cfg.method == "rigl" else "random", schedule=schedule, seed=cfg.seed)
        return Callback(updater, every=o.delta_t), updater
    if isinstance(o, GMPOptions):
        end = to_iterations(o.end, ipe) if o.end is not None else int(0.75 * total_steps)
        start, every = to_iterations(o.start, ipe), to_iterations(o.every, ipe)
        if end <= start:
            raise ValueError(f"GMP must start (gmp_start {o.start} = step {start}) before it ends (step {end}"
                             f"{'' if o.end else ', 75% of training'}); move gmp_start earlier or train longer")
        end = start + max(1, (end - start) // every) * every  # a whole number of pruning intervals
        if end > total_steps:
            raise ValueError(f"GMP ends at step {end}, after training ends ({total_steps})")
        schedule = Cubic(density=cfg.density, start=start, end=end, every=every,
                         initial_density=1.0 - o.initial_sparsity)
        updater = GradualMagnitude(schedule, distribution=cfg.effective_distribution)
        return Callback(updater, every=1), updater
    return None, None


def flops_summary(rows: list[dict[str, Any]], dense_mask: Mask, start_mask: Mask, events: list[dict],
                  total_steps: int, batch_size: int, dense_gradient_steps: list[int]) -> dict[str, Any]:
    """Training FLOPs of the run and relative to dense training, from the mask's history.

    ``rows`` are ``layer_flops`` rows; a weight used by several rows (a tied weight: an embedding
    shared with the output layer, a layer called twice) adds up the FLOPs per weight of every use.
    """
    per_weight: dict[str, float] = {}
    for r in rows:
        name = r["weight"]
        if name in dense_mask:
            per_weight[name] = per_weight.get(name, 0.0) + r["dense_flops"] / dense_mask[name].numel()
    fixed = sum(r["dense_flops"] for r in rows if r["weight"] not in dense_mask)
    f_dense = sum(r["dense_flops"] for r in rows)

    def forward(kept: dict[str, int]) -> int:
        return int(round(fixed + sum(per_weight[n] * k for n, k in kept.items() if n in per_weight)))

    change_at = {e["step"]: forward(e["kept"]) for e in events}
    f_now = forward(start_mask.kept_per_layer())
    per_step = []
    for t in range(total_steps):  # step t runs with the mask set after t completed steps
        f_now = change_at.get(t, f_now)
        per_step.append(f_now)
    f_now = change_at.get(total_steps, f_now)  # a change after the last step (GMP ending with training)
    total = run_training_flops(total_steps, batch_size, per_step, dense_gradient_steps=dense_gradient_steps,
                               f_dense=f_dense)
    dense_total = 3 * f_dense * total_steps * batch_size
    return {"forward_flops_dense": f_dense, "forward_flops_start": per_step[0], "forward_flops_end": f_now,
            "training_flops": total, "training_flops_dense": dense_total,
            "training_flops_relative": total / dense_total}


def _start_mask(config: SparseTrainConfig, dense: Mask) -> Mask:
    if config.method in ("static", "set", "rigl"):
        g = torch.Generator().manual_seed((config.seed * 1_000_003 + _SALT_INIT_MASK) % (2**31 - 1))
        return random_sparse_mask(dense, config.effective_distribution, config.density, g)
    return dense


def _describe(config: SparseTrainConfig, run: Run) -> str:
    return (f"sparse training run {run.hash} in {run.path} ({config.data.name}, {config.model.name}, "
            f"{config.method}, density {config.density}, {config.effective_distribution}"
            + (f", seed {config.seed}, stacked)" if config.train.numerics == STACKED else ")"))


def _extra(config: SparseTrainConfig, model: nn.Module, data: DataSplits, dense: Mask, start_mask: Mask,
           start_conn: dict[str, Any], total: int, updates: list[int], log: Log) -> Callable[[Any], dict[str, Any]]:
    def extra(trainer: Any) -> dict[str, Any]:
        """Method, distribution, training FLOPs from the mask's history and the connectivity of the
        start and final masks, stored with the unit."""
        events = trainer.history.mask_events
        flops = flops_summary(layer_flops(model, data.input_shape, example_input=example_input(data)), dense,
                              start_mask, events, total, config.train.batch_size, updates)
        final_mask = trainer.mask if trainer.mask is not None else start_mask
        final_conn, _ = connectivity(model, final_mask, data)
        log(connectivity_line(f"final mask ({config.method})", final_mask, final_conn))
        return {"method": config.method, "distribution": config.effective_distribution, **flops,
                "mask_updates": len([e for e in events if e["step"] > 0]),
                **{f"start_{k}": v for k, v in start_conn.items()}, **final_conn}
    return extra


def _prepare(config: SparseTrainConfig, run: Run, data: DataSplits, model: nn.Module, dense: Mask, total: int,
             updater: Any, log: Log) -> tuple[Mask, Callable[[Any], dict[str, Any]]]:
    load_or_save_init(run, model)
    start_mask = _start_mask(config, dense)
    log(f"start mask: density {start_mask.density:.4f}\n{start_mask.table()}")
    start_conn, _ = connectivity(model, start_mask, data)
    log(connectivity_line("start mask", start_mask, start_conn))
    updates = [t for t in range(total) if config.method == "rigl" and updater.is_update_step(t + 1)]
    return start_mask, _extra(config, model, data, dense, start_mask, start_conn, total, updates, log)


def _finish(run: Run, summary: dict[str, Any], log: Log) -> None:
    run.mark_complete(summary)
    run.update_index(status="complete", summary=index_fields(summary))
    log(f"training FLOPs relative to dense: {summary['training_flops_relative']:.4f}")


def run_sparse_training(
    config: SparseTrainConfig,
    store: Store,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Run (or continue) one sparse training run and return its summary."""
    if config.train.numerics == STACKED:  # a run of a stack (``--seeds``), continued alone: a stack of one
        return run_sparse_training_seeds([config], store, device=device, progress=progress, log=log)[0]
    data, validation = prepare_data(config.data, config.seed)
    model = build_seeded_model(config.model, data, config.seed)
    dense = Mask.dense(model, **config.prunable_options)  # checks the include / exclude names before the store
    ipe, total = training_length(config.train, data)
    callback, updater = mask_updater(config, total, ipe)
    dev = resolve_device(device)
    with running(store, config, log) as run:
        if (done := run.complete_summary()) is not None:
            log(f"sparse training run {run.hash} is complete; nothing recomputed")
            return {k: v for k, v in done.items() if k != "status"}
        log(_describe(config, run))
        start_mask, extra = _prepare(config, run, data, model, dense, total, updater, log)
        ctx = UnitContext(run, data, validation, config.train, config.seed, dev, progress, log,
                          prunable=config.prunable_options)
        summary = train_unit(ctx, "train", model, start_mask, start_step=0,
                             callbacks=[callback] if callback is not None else [], extra_summary=extra,
                             expected_density=None if config.method == "dense" else config.density)
        _finish(run, summary, log)
    return summary


def sparse_stack_refusal(config: SparseTrainConfig, data: DataSplits | None = None) -> str | None:
    """Why sparse-training runs of ``config`` are not stacked (None: they can be). Every method
    stacks: SET, RigL and GMP run their mask updates per replicate (``replicates._ReplicateTrainer``)."""
    return refusal_for(config, data)


def run_sparse_training_seeds(
    configs: Sequence[SparseTrainConfig],
    store: Store,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Log = print,
    stack_limit: int | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) sparse-training runs that share their data set, model and training settings
    (``--seeds`` runs; a sweep's seeds, methods and densities with ``--stack``), their training stacked
    (``experiments.stacked``; configs say ``train.numerics = "stacked"``); SET, RigL and GMP update
    each run's mask with its own callback, as a solo run does."""
    full = check_stack_configs(configs, sparse_stack_refusal)
    dev = resolve_device(device)

    def prepare(config: SparseTrainConfig, run: Run, data: DataSplits, validation: Any, rows: Any) -> StackedUnit:
        model = build_seeded_model(config.model, data, config.seed)
        dense = Mask.dense(model, **config.prunable_options)
        ipe, total = training_length(config.train, data)
        callback, updater = mask_updater(config, total, ipe)
        log(_describe(config, run))
        start_mask, extra = _prepare(config, run, data, model, dense, total, updater, log)
        ctx = UnitContext(run, full, validation, config.train, config.seed, dev, progress, log,
                          prunable=config.prunable_options)
        return StackedUnit(ctx, "train", model, start_mask, rows, extra,
                           None if config.method == "dense" else config.density,
                           callbacks=[callback] if callback is not None else [])

    return run_stacked_units(configs, store, full, dev, prepare, lambda run, summary: _finish(run, summary, log), log,
                             stack_limit)
