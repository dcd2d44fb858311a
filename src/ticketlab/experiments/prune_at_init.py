"""Pruning at initialisation: score the untrained network, keep the top weights, train the rest.

One run = one (method, density, distribution, sanity check, seed). The mask is computed once and
stored (``mask.safetensors``); a rerun reuses it. With a sanity check the trained mask or weights
differ from the method's: ``shuffle`` permutes the kept positions within each layer (same
layer-wise densities), ``reinit`` draws fresh weights for the same mask, ``invert`` keeps the
lowest scores. Each summary also records the layer-wise connectivity: effective density (kept
weights on some input-output path) and collapsed layers; the run logs them (loudly when a layer
collapsed), so :func:`compute_mask` asks ``prune`` for no LayerCollapseWarning of its own.
``include`` / ``exclude`` choose the weights besides the Linear/Conv ones (raw parameters,
embeddings) that the mask covers. The probe inputs (SynFlow, connectivity, FLOPs) are built from
a real training input, so token models work.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..analysis.connectivity import ConnectivityError, format_layer_report, is_disconnected
from ..config import PruneAtInitConfig
from ..data import DataSplits
from ..masks import Mask
from ..pruning.prune import prune
from ..pruning.scores import ScoreSource
from ..pruning.selection import random_mask_like
from ..store import Run, Store, index_fields
from ..training import resolve_device
from .common import running, Log, UnitContext, build_seeded_model, connectivity, connectivity_line, example_input, \
    load_or_save_init, prepare_data, train_unit, training_length
from .stacked import STACKED, StackedUnit, check_stack_configs, refusal_for, run_stacked_units

_SALT_SHUFFLE, _SALT_REINIT, _SALT_SCORES, _SALT_BATCHES = 11, 12, 13, 14


def _seed(seed: int, salt: int) -> int:
    return (seed * 1_000_003 + salt * 10_007) % (2**31 - 1)


def scoring_source(data: DataSplits, cfg: PruneAtInitConfig, device: torch.device) -> ScoreSource:
    """A fixed, seeded set of ``score_batches`` training batches (the same on every call)."""
    n = min(len(data.train), cfg.score_batches * cfg.score_batch_size)
    perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(_seed(cfg.seed, _SALT_BATCHES)))[:n]
    x, y = data.train.x[perm], data.train.y[perm]
    batches = [(x[i:i + cfg.score_batch_size], y[i:i + cfg.score_batch_size]) for i in range(0, n, cfg.score_batch_size)]
    return ScoreSource(batches=lambda: iter(batches), input_shape=data.input_shape,
                       generator=torch.Generator().manual_seed(_seed(cfg.seed, _SALT_SCORES)), device=device,
                       example_input=example_input(data))


def compute_mask(cfg: PruneAtInitConfig, model: torch.nn.Module, data: DataSplits, device: torch.device,
                 progress: bool = False, dense: Mask | None = None) -> Mask:
    """The method's mask at ``cfg.density`` (before any shuffle), for the model as given.

    ``dense`` is ``Mask.dense(model, **cfg.prunable_options)`` when the caller already has it.
    Layer collapse is not warned about here: :func:`run_prune_at_init` reports it (with the
    layers whose kept weights lie on no path) in its log and summary.
    """
    if dense is None:
        dense = Mask.dense(model, **cfg.prunable_options)
    rounds = cfg.effective_rounds
    bar = tqdm(total=rounds, desc=f"{cfg.method} rounds", leave=False) if progress and rounds > 1 else None
    # the method's own options (register_score(name, options=...)) are its score's keyword arguments
    options = dataclasses.asdict(cfg.options) if cfg.options is not None else {}
    mask = prune(cfg.method, model, dense, scoring_source(data, cfg, device), cfg.density,
                 distribution=cfg.distribution, rounds=rounds, schedule=cfg.schedule, invert=cfg.sanity == "invert",
                 progress=(lambda k, m: bar.update(1)) if bar is not None else None, on_collapse="ignore",
                 synflow_precision=cfg.synflow_precision, bn_mode=cfg.bn_mode, **options)
    if bar is not None:
        bar.close()
    return mask


def _prepare_unit(config: PruneAtInitConfig, run: Run, data: DataSplits, model: nn.Module, dense: Mask,
                  dev: torch.device, progress: bool, log: Log) -> tuple[nn.Module, Mask, dict[str, Any]]:
    """The run's stored init and mask (computed once), its sanity check applied: the model and mask
    to train and the summary's record of how the mask was made."""
    load_or_save_init(run, model)
    mask_path = run.file("mask.safetensors")
    if mask_path.exists() and run.file("pruning.json").exists():
        mask = Mask.load(mask_path, require_checksum=True)
        prune_seconds = run.read_json("pruning.json")["seconds"]
    else:  # the mask file is the marker: written last, after the record of how it was made
        started = time.perf_counter()
        mask = compute_mask(config, model, data, dev, progress, dense=dense)
        prune_seconds = time.perf_counter() - started
        run.write_json({"seconds": prune_seconds, "rounds": config.effective_rounds}, "pruning.json")
        mask.save(mask_path)
    trained_mask = mask
    if config.sanity == "shuffle":
        trained_mask = random_mask_like(mask, torch.Generator().manual_seed(_seed(config.seed, _SALT_SHUFFLE)))
    if config.sanity == "reinit":
        model = build_seeded_model(config.model, data, _seed(config.seed, _SALT_REINIT))
    conn, layers = connectivity(model, trained_mask, data)
    if layers:
        log(f"pruned with {config.method} to density {trained_mask.density:.4f}\n{format_layer_report(layers)}")
    log(connectivity_line(f"{config.method} mask", trained_mask, conn))
    try:
        disconnected = is_disconnected(model, trained_mask, data.input_shape, example_input(data))
    except ConnectivityError:
        disconnected = None  # conn says why
    extra = {
        "method": config.method, "distribution": config.distribution, "sanity": config.sanity,
        "requested_density": config.density, "rounds": config.effective_rounds,
        "prune_seconds": prune_seconds, **conn, "disconnected": disconnected,
    }
    return model, trained_mask, extra


def _describe(config: PruneAtInitConfig, run: Run) -> str:
    return (f"prune-at-init run {run.hash} in {run.path} ({config.data.name}, {config.model.name}, "
            f"{config.method}, density {config.density}, {config.distribution}, sanity={config.sanity}, "
            f"seed {config.seed}{', stacked' if config.train.numerics == STACKED else ''})")


def _finish(run: Run, summary: dict[str, Any]) -> None:
    run.mark_complete(summary)
    run.update_index(status="complete", summary=index_fields(summary))


def run_prune_at_init(
    config: PruneAtInitConfig,
    store: Store,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Run (or continue) one prune-at-init experiment and return its summary."""
    if config.train.numerics == STACKED:  # a run of a stack (``--seeds``), continued alone: a stack of one
        return run_prune_at_init_seeds([config], store, device=device, progress=progress, log=log)[0]
    data, validation = prepare_data(config.data, config.seed)
    model = build_seeded_model(config.model, data, config.seed)  # validates the model before the store is touched
    dense = Mask.dense(model, **config.prunable_options)  # and the include / exclude names
    training_length(config.train, data)
    dev = resolve_device(device)
    with running(store, config, log) as run:
        if (done := run.complete_summary()) is not None:
            log(f"prune-at-init run {run.hash} is complete; nothing recomputed")
            return {k: v for k, v in done.items() if k != "status"}
        log(_describe(config, run))
        model, trained_mask, extra = _prepare_unit(config, run, data, model, dense, dev, progress, log)
        ctx = UnitContext(run, data, validation, config.train, config.seed, dev, progress, log,
                          prunable=config.prunable_options)
        summary = train_unit(ctx, "train", model, trained_mask, start_step=0, extra_summary=extra,
                             expected_density=config.density)
        _finish(run, summary)
    return summary


def run_prune_at_init_seeds(
    configs: Sequence[PruneAtInitConfig],
    store: Store,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Log = print,
    stack_limit: int | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) prune-at-init runs that share their data set, model and training settings
    (``--seeds`` runs; a sweep's seeds, methods and densities with ``--stack``), their training
    stacked (``experiments.stacked``): every config must say ``train.numerics = "stacked"``. Returns the
    summaries in order; a run whose training diverged is reported by one DivergenceError after the
    others are stored."""
    full = check_stack_configs(configs, refusal_for)
    dev = resolve_device(device)

    def prepare(config: PruneAtInitConfig, run: Run, data: DataSplits, validation: Any, rows: Any) -> StackedUnit:
        log(_describe(config, run))
        model = build_seeded_model(config.model, data, config.seed)
        dense = Mask.dense(model, **config.prunable_options)
        model, mask, extra = _prepare_unit(config, run, data, model, dense, dev, progress, log)
        ctx = UnitContext(run, full, validation, config.train, config.seed, dev, progress, log,
                          prunable=config.prunable_options)
        return StackedUnit(ctx, "train", model, mask, rows, extra, config.density)

    return run_stacked_units(configs, store, full, dev, prepare, _finish, log, stack_limit)
