"""What every experiment shares: data with its validation split, seeded models, and resumable
training units in the Store.

A *unit* is one training run inside a run folder (``level_03/ticket``, ``train``). It is complete
once its ``summary.json`` exists (written last); an incomplete unit resumes from its checkpoint,
written at every evaluation.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .. import distributed, tensorboard
from ..distributed import writer_only
from ..checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from ..atomic import remove_stale_temp_files
from ..config import DataConfig, IMPConfig, ModelConfig, TrainConfig, imp_config_from_dict, to_dict
from ..data import ArrayData, DataSplits, load_dataset, split_validation
from ..data.base import validation_rows
from ..masks import Mask
from ..models import build_model
from ..prunable import UnprunedWeightsWarning
from ..steps import to_iterations
from ..store import CorruptFileError, Run, Store, StoreError, index_fields
from ..training import Callback, DivergenceError, History, Trainer

Log = Callable[[str], None]


def prepare_data(cfg: DataConfig, seed: int) -> tuple[DataSplits, ArrayData | None]:
    """The data set with ``val_size`` training samples held out (seeded) for validation."""
    data = load_dataset(cfg.name, cfg.root, **cfg.options)
    if not cfg.val_size:
        return data, None
    train_part, validation = split_validation(data.train, cfg.val_size, seed=seed)
    return replace(data, train=train_part), validation


def seed_splits(full: DataSplits, cfg: DataConfig, seed: int) -> tuple[DataSplits, ArrayData | None,
                                                                       torch.Tensor | None]:
    """:func:`prepare_data` of a data set already loaded, plus the rows of ``full.train`` the seed's
    training part holds (None without a validation split): what a stack of seeds shares one copy of."""
    if not cfg.val_size:
        return full, None, None
    rows, val_rows = validation_rows(len(full.train), cfg.val_size, seed)
    return replace(full, train=full.train.subset(rows)), full.train.subset(val_rows), rows


def build_seeded_model(cfg: ModelConfig, data: DataSplits, seed: int) -> nn.Module:
    """The model initialised from ``seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg.name, data.input_shape, data.num_classes, **cfg.options)


def example_input(data: DataSplits) -> torch.Tensor:
    """A batch of one real training input for the analyses that run the network on a probe input
    (SynFlow, connectivity, FLOPs): token ids are used as they are, floating inputs only give the
    probe its shape (see :mod:`ticketlab.probe`)."""
    return data.train.x[:1]


def connectivity(model: nn.Module, mask: Mask, data: DataSplits) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``({"effective_density", "collapsed_layers"}, layer_report rows)`` of ``mask`` on ``model``.

    ``effective_density``: kept weights on some input->output path / all masked weights;
    ``collapsed_layers``: masked parameters with no kept or no effective weight (the net is cut
    there). Depends on the mask and the model's structure only (not its weights), so it is the
    same on every rerun. A model whose connectivity cannot be computed exactly (a ConnectivityError,
    e.g. a forward pass that subtracts) gets ``effective_density`` None, the layers with no kept
    weight as ``collapsed_layers`` and the reason in ``connectivity_error``; the procedure goes on.
    """
    from ..analysis.connectivity import ConnectivityError, layer_report

    try:
        rows = layer_report(model, mask, data.input_shape, example_input(data))
    except ConnectivityError as exc:
        return {"effective_density": None, "collapsed_layers": mask.empty_layers(),
                "connectivity_error": str(exc)}, []
    return {"effective_density": sum(r["effective"] for r in rows) / mask.num_total,
            "collapsed_layers": [r["name"] for r in rows if r["collapsed"]]}, rows


def connectivity_line(what: str, mask: Mask, conn: dict[str, Any], prefix: str = "") -> str:
    """One log line: density, effective density and collapsed layers, loud when any collapsed."""
    eff = conn.get("effective_density")
    collapsed = conn.get("collapsed_layers") or []
    text = (f"{what}: density {mask.density:.4f} ({mask.num_kept}/{mask.num_total}), effective density "
            + (f"{eff:.4f}" if eff is not None else f"not computed ({conn.get('connectivity_error')})"))
    if collapsed:
        text += (f"; LAYER COLLAPSE: {len(collapsed)} of {len(mask)} layers keep no weight on an input->output "
                 f"path: {collapsed}")
    else:
        text += "; no collapsed layer"
    return prefix + text


def training_length(train: TrainConfig, data: DataSplits) -> tuple[int, int]:
    """(iterations per epoch, total iterations); errors for lengths that cannot train."""
    ipe = len(data.train) // train.batch_size
    if ipe == 0:
        raise ValueError(f"batch size {train.batch_size} exceeds the {len(data.train)} training samples")
    total = to_iterations(train.steps, ipe)
    if total == 0:
        raise ValueError(f"training length {train.steps!r} is zero iterations")
    return ipe, total


@dataclass
class UnitContext:
    """What the training units of one run share."""

    run: Run
    data: DataSplits
    validation: ArrayData | None
    train: TrainConfig
    seed: int
    device: torch.device
    progress: bool
    log: Log
    # Mask.dense options for summarising a unit trained without a mask (as dense)
    prunable: dict[str, Any] = field(default_factory=dict)

    @property
    def iterations_per_epoch(self) -> int:
        return len(self.data.train) // self.train.batch_size


@dataclass(frozen=True)
class Named:
    """A config's ``data`` / ``model`` when only its name matters: the index's dataset and model
    columns, kept outside the hash (taken from a source run, or derived from other fields)."""

    name: str = field(default="", metadata={"cli": False})


def trained_imp_source(store: Store, source: str) -> tuple[Run, IMPConfig]:
    """The stored IMP run ``source`` (its full hash) and its config, once its dense network (level 0)
    is trained: what ``deconstruct`` and ``tropical --source`` start from. Anything else is one
    clear StoreError."""
    run = store.run(source)
    if run.hash != source:
        raise StoreError(f"--source {source!r} names run {run.hash}; give its full hash")
    described = run.read_json("config.json")
    if described.get("experiment") != "imp":
        raise StoreError(f"run {run.hash} is a {described.get('experiment')!r} run; --source needs an imp run")
    if not run.file("level_00", "ticket", "summary.json").exists():
        raise StoreError(f"run {run.hash} has not finished training its dense network (level 0); finish it first")
    return run, imp_config_from_dict(described["config"])


def summarize(history: History, mask: Mask, start_step: int) -> dict[str, Any]:
    """Per-unit result: final and best test accuracy, early-stop iteration (min validation loss)."""
    records = [r for r in history.records if r["step"] > start_step] or history.records
    key = "val_loss" if "val_loss" in records[-1] else "test_loss"
    early = min(records, key=lambda r: (r[key], r["step"]))
    return {
        "density": mask.density,
        "remaining_percent": 100.0 * mask.density,
        "kept": mask.num_kept,
        "total": mask.num_total,
        "layer_density": mask.densities(),
        "final_test_accuracy": records[-1]["test_accuracy"],
        "max_test_accuracy": max(r["test_accuracy"] for r in records),
        "early_stop_step": early["step"],
        "early_stop_on": key,
        "test_accuracy_at_early_stop": early["test_accuracy"],
        "final_step": records[-1]["step"],
    }


def train_unit(
    ctx: UnitContext,
    unit: str,
    model: nn.Module,
    mask: Mask | None,
    *,
    start_step: int,
    end_step: int | None = None,
    lr_override: float | None = None,
    callbacks: Sequence[Callback] = (),
    extra_summary: dict[str, Any] | Callable[[Trainer], dict[str, Any]] | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    expected_density: float | None = None,
    pruned_values: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train one unit, or load it when complete; checkpoints so a kill resumes mid-training.

    ``end_step`` ends training before the schedule does (the schedule, and so the LR, stays the
    configured one). ``extra_summary`` (a dict, or a function of the finished Trainer) is stored in
    the unit's summary, which is written last and marks the unit complete. After training, a guard
    checks that every pruned weight is exactly zero and, when ``expected_density`` is given, that
    the final mask keeps that fraction. ``pruned_values`` holds pruned weights at those values
    instead of zero (Zhou et al.'s mask-0 actions); the guard then checks them against those values.
    """
    run = ctx.run
    if run.is_complete(unit):
        load_weights(model, run.file(unit, "final.safetensors"))
        summary = run.read_json(unit, "summary.json")
        ctx.log(f"  {unit}: done earlier (test acc {summary['final_test_accuracy']:.4f})")
        return summary

    ckpt = run.file(unit, "checkpoint.safetensors")

    def checkpoint(trainer: Trainer, step: int) -> None:
        if step > start_step:  # the starting state is already reproducible without one
            save_checkpoint(trainer, step, ckpt)

    every = to_iterations(ctx.train.eval_every, ctx.iterations_per_epoch)
    tb = tensorboard.unit_log(run.path, unit)  # --log tensorboard: event files of the records (reads only)
    tb_callbacks = [Callback(tb.write, every=1)] if tb is not None else []
    trainer = Trainer(model, ctx.data, ctx.train, mask, validation=ctx.validation, seed=ctx.seed,
                      # the checkpoint runs last, so it holds what the step's other callbacks changed
                      device=ctx.device, callbacks=[*callbacks, *tb_callbacks, Callback(checkpoint, every=every)],
                      progress=ctx.progress, desc=unit, regularizer=regularizer, pruned_values=pruned_values)
    resumed = False
    begin = start_step
    end = trainer.total_steps if end_step is None else min(end_step, trainer.total_steps)
    if ckpt.exists():
        begin = load_checkpoint(trainer, ckpt)
        resumed = True
        ctx.log(f"  {unit}: resuming from step {begin}")
        if tb is not None:  # the checkpoint's records were logged by the session that wrote it
            tb.written = len(trainer.history.records)
    try:
        trainer.train(begin, max(begin, end), lr_override=lr_override, resumed=resumed)
        if tb is not None:
            tb.write(trainer)  # a record made after the last callbacks (a stop request)
    finally:
        if tb is not None:
            tb.close()
    # procedures may change the mask; an unmasked model is summarised as dense
    if trainer.mask is not None or mask is not None:
        final_mask = trainer.mask if trainer.mask is not None else mask
    else:
        with warnings.catch_warnings():  # the procedure named the weights left dense when it checked its options
            warnings.simplefilter("ignore", UnprunedWeightsWarning)
            final_mask = Mask.dense(model, **ctx.prunable)
    if trainer.mask is not None or mask is not None:
        check_pruned_weights(model, final_mask, unit, expected_density, pruned_values)
    trained = trainer.history.records[-1]["step"] - start_step  # a callback may have stopped it early
    extra = extra_summary(trainer) if callable(extra_summary) else (extra_summary or {})
    summary = {**summarize(trainer.history, final_mask, start_step), **extra,
               **_flops(model, final_mask, ctx.data.input_shape, trained,
                        trainer.total_steps, ctx.train.batch_size, example_input(ctx.data))}
    save_weights(model, run.file(unit, "final.safetensors"))
    run.write_jsonl(trainer.history.records, unit, "metrics.jsonl")
    if trainer.history.mask_events:
        run.write_jsonl(trainer.history.mask_events, unit, "mask_events.jsonl")
    run.write_json(summary, unit, "summary.json")  # written last: marks the unit complete
    writer_only(lambda: ckpt.unlink(missing_ok=True))
    ctx.log(f"  {unit}: density {final_mask.density:.4f}  test acc final {summary['final_test_accuracy']:.4f}"
            f"  max {summary['max_test_accuracy']:.4f}  early-stop it {summary['early_stop_step']}")
    return summary


class MaskViolation(RuntimeError):
    """Pruned weights that are not zero after training, or a mask that is not the density asked."""


@torch.no_grad()
def check_pruned_weights(model: nn.Module, mask: Mask, unit: str, expected_density: float | None = None,
                         pruned_values: Mapping[str, torch.Tensor] | None = None) -> None:
    """Guard: every weight the mask prunes is exactly zero (or exactly its ``pruned_values`` entry,
    for a mask-0 action), and the density is the one asked.

    Cheap (one pass over the masked weights) and run after every training unit, so a mask that
    was silently not applied (a parameter replaced, a hook removed) can never become a result.
    """
    params = mask.check_fits(model)

    def held(n: str) -> torch.Tensor:
        if pruned_values is None:
            return torch.zeros(())
        return pruned_values[n].detach().cpu().to(params[n].dtype)

    leaks = {n: int(((p.detach().cpu() != held(n)) & ~mask[n]).sum()) for n, p in params.items()}
    leaks = {n: k for n, k in leaks.items() if k}
    if leaks:
        what = "not zero" if pruned_values is None else "not at their frozen values"
        raise MaskViolation(f"{unit}: pruned weights are {what} after training ({leaks} differ); the mask was "
                            "not applied to these parameters. This is a bug: please report it with the command")
    if expected_density is not None:
        expected = round(expected_density * mask.num_total)
        if abs(mask.num_kept - expected) > len(mask):  # at most one weight per layer from rounding
            raise MaskViolation(f"{unit}: the mask keeps {mask.num_kept} of {mask.num_total} weights (density "
                                f"{mask.density:.6f}) but density {expected_density} was asked")


def _flops(model: nn.Module, mask: Mask, input_shape: tuple[int, ...], steps: int, schedule_steps: int,
           batch_size: int, example: torch.Tensor | None = None) -> dict[str, Any]:
    """Forward FLOPs per sample (final mask, and dense), this unit's training FLOPs with that mask,
    and those of one dense run of the whole schedule (3 x forward per sample and step)."""
    from ..analysis.flops import dense_forward_flops, forward_flops

    sparse = forward_flops(model, input_shape, mask, example_input=example)
    dense = dense_forward_flops(model, input_shape, example_input=example)
    return {"forward_flops": sparse, "forward_flops_dense": dense,
            "unit_training_flops": 3 * sparse * steps * batch_size,
            "dense_run_training_flops": 3 * dense * schedule_steps * batch_size}


@contextmanager
def running(store: Store, config: Any, log: Log = print) -> Iterator[Run]:
    """The config's run folder, locked against a second writer and checked before anything runs.

    On open: temp files of killed writers and checkpoints of completed units are removed, every
    stored file is verified against its checksum (a damaged one stops the run before it could be
    resumed from), and the thread count and library versions are compared with the run's first
    session. If the experiment stops with an error or a kill, the index says 'interrupted' (or
    'diverged'), unless the run was already complete, which a failed rerun does not change.
    """
    run = store.open_run(config)
    with store.lock(run):
        for tmp in writer_only(lambda: remove_stale_temp_files(run.path)) or []:
            log(f"  removed {tmp.relative_to(run.path)}, left by a killed writer")
        problems = run.verify()
        if problems:
            raise CorruptFileError(problems[0].path, problems[0].problem + (
                f" (and {len(problems) - 1} more damaged files: "
                f"{', '.join(str(p.path.relative_to(run.path)) for p in problems[1:])})" if len(problems) > 1 else ""))
        for ckpt in run.path.rglob("checkpoint.safetensors"):
            if (ckpt.parent / "summary.json").exists():  # the unit completed before its checkpoint was removed
                writer_only(ckpt.unlink)
        record_environment(run, log)
        complete = run.complete_summary() is not None
        if complete:
            store.update(run.hash, create=True, experiment=config.experiment, status="complete",
                         dataset=config.data.name, model=config.model.name,
                         config=json.dumps(to_dict(config), sort_keys=True), summary=index_fields(run.complete_summary()))
        else:
            store.index_run(run, config)
        try:
            yield run
        except BaseException as exc:
            if not complete:
                run.update_index(status="diverged" if isinstance(exc, DivergenceError) else "interrupted")
            raise


def environment() -> dict[str, Any]:
    """What besides the config can change a run's numbers: threads, library versions, device."""
    import platform

    import numpy

    from .. import __version__

    env = {"threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version(), "ticketlab": __version__,
           "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    if distributed.active():  # one run on several processes (torchrun): gradients summed in another order
        env["world_size"] = distributed.world_size()
    return env


def record_environment(run: Run, log: Log) -> None:
    """Record the environment of the run's first session; warn when a later session differs.

    Results depend on the thread count (reduction order) and on library versions, which the config
    hash does not include, so a run continued under different ones may differ from an uninterrupted
    run; the differences are kept in ``environment.json`` under ``later_sessions``.
    """
    now = environment()
    if not run.file("environment.json").exists():
        run.write_json({"first_session": now, "later_sessions": []}, "environment.json")
        return
    stored = run.read_json("environment.json")
    first = stored["first_session"]
    changed = {k: (first.get(k), v) for k, v in now.items() if first.get(k) != v}
    if not changed:
        return
    text = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
    warnings.warn(f"run {run.hash} was started with a different environment ({text}); results computed from "
                  f"here on may differ from an uninterrupted run", RuntimeWarning, stacklevel=3)
    log(f"  warning: environment changed since this run started: {text}")
    if now not in stored["later_sessions"]:
        run.write_json({**stored, "later_sessions": [*stored["later_sessions"], now]}, "environment.json")


def load_or_save_init(run: Run, model: nn.Module) -> None:
    """theta_0 is saved once; a rerun loads it, so every unit starts from the very same init."""
    path = run.file("init.safetensors")
    if path.exists():
        load_weights(model, path)
    else:
        save_weights(model, path)
