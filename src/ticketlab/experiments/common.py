"""What every experiment shares: data with its validation split, seeded models, and resumable
training units in the Store.

A *unit* is one training run inside a run folder (``level_03/ticket``, ``train``). It is complete
once its ``summary.json`` exists (written last); an incomplete unit resumes from its checkpoint,
written at every evaluation.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from ..config import DataConfig, ModelConfig, TrainConfig
from ..data import ArrayData, DataSplits, load_dataset, split_validation
from ..masks import Mask
from ..models import build_model
from ..steps import to_iterations
from ..store import Run, Store
from ..training import Callback, History, Trainer

Log = Callable[[str], None]


def prepare_data(cfg: DataConfig, seed: int) -> tuple[DataSplits, ArrayData | None]:
    """The data set with ``val_size`` training samples held out (seeded) for validation."""
    data = load_dataset(cfg.name, cfg.root, **cfg.options)
    if not cfg.val_size:
        return data, None
    train_part, validation = split_validation(data.train, cfg.val_size, seed=seed)
    return replace(data, train=train_part), validation


def build_seeded_model(cfg: ModelConfig, data: DataSplits, seed: int) -> nn.Module:
    """The model initialised from ``seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg.name, data.input_shape, data.num_classes, **cfg.options)


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

    @property
    def iterations_per_epoch(self) -> int:
        return len(self.data.train) // self.train.batch_size


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
    lr_override: float | None = None,
    callbacks: Sequence[Callback] = (),
    extra_summary: dict[str, Any] | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train one unit, or load it when complete; checkpoints so a kill resumes mid-training."""
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
    trainer = Trainer(model, ctx.data, ctx.train, mask, validation=ctx.validation, seed=ctx.seed,
                      # the checkpoint runs last, so it holds what the step's other callbacks changed
                      device=ctx.device, callbacks=[*callbacks, Callback(checkpoint, every=every)],
                      progress=ctx.progress, desc=unit, regularizer=regularizer)
    resumed = False
    begin = start_step
    if ckpt.exists():
        begin = load_checkpoint(trainer, ckpt)
        resumed = True
        ctx.log(f"  {unit}: resuming from step {begin}")
    trainer.train(begin, trainer.total_steps, lr_override=lr_override, resumed=resumed)
    # procedures may change the mask; an unmasked model is summarised as dense
    final_mask = trainer.mask if trainer.mask is not None else (mask if mask is not None else Mask.dense(model))
    summary = {**summarize(trainer.history, final_mask, start_step), **(extra_summary or {}),
               **_flops(model, final_mask, ctx.data.input_shape, trainer.total_steps - start_step,
                        trainer.total_steps, ctx.train.batch_size)}
    save_weights(model, run.file(unit, "final.safetensors"))
    run.write_jsonl(trainer.history.records, unit, "metrics.jsonl")
    if trainer.history.mask_events:
        run.write_jsonl(trainer.history.mask_events, unit, "mask_events.jsonl")
    run.write_json(summary, unit, "summary.json")  # written last: marks the unit complete
    ckpt.unlink(missing_ok=True)
    ctx.log(f"  {unit}: density {final_mask.density:.4f}  test acc final {summary['final_test_accuracy']:.4f}"
            f"  max {summary['max_test_accuracy']:.4f}  early-stop it {summary['early_stop_step']}")
    return summary


def _flops(model: nn.Module, mask: Mask, input_shape: tuple[int, ...], steps: int, schedule_steps: int,
           batch_size: int) -> dict[str, Any]:
    """Forward FLOPs per sample (final mask, and dense), this unit's training FLOPs with that mask,
    and those of one dense run of the whole schedule (3 x forward per sample and step)."""
    from ..analysis.flops import dense_forward_flops, forward_flops

    sparse, dense = forward_flops(model, input_shape, mask), dense_forward_flops(model, input_shape)
    return {"forward_flops": sparse, "forward_flops_dense": dense,
            "unit_training_flops": 3 * sparse * steps * batch_size,
            "dense_run_training_flops": 3 * dense * schedule_steps * batch_size}


@contextmanager
def running(store: Store, config: Any) -> Iterator[Run]:
    """The config's run folder, locked against a second writer; marked 'interrupted' in the index
    if the experiment stops with an error or a kill, so `ticketlab ls` tells the truth."""
    run = store.open_run(config)
    with store.lock(run):
        try:
            yield run
        except BaseException:
            run.update_index(status="interrupted")
            raise


def load_or_save_init(run: Run, model: nn.Module) -> None:
    """theta_0 is saved once; a rerun loads it, so every unit starts from the very same init."""
    path = run.file("init.safetensors")
    if path.exists():
        load_weights(model, path)
    else:
        save_weights(model, path)
