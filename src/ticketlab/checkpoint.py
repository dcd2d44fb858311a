"""Trainer checkpoints as safetensors plus JSON metadata, so a killed run resumes mid-training.

Saved: model state, optimiser state (tensors in the file, scalars in the metadata; by index into
the trained parameters, whose shapes are saved too, so a trainer that trains another set of
parameters is refused), the step and the evaluation history. Data order needs no saving: the
Trainer derives it from (seed, step).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .integrity import CorruptFileError, verify_safetensors
from .masks import Mask
from .store import StoreError, load_tensors, read_verified, save_tensors
from .training import Trainer


def _optimizer_shapes(trainer: Trainer) -> list[list[int]]:
    """Shapes of the optimiser's parameters in order: its state is saved by index into them."""
    return [list(p.shape) for group in trainer.optimizer.param_groups for p in group["params"]]


def save_checkpoint(trainer: Trainer, step: int, path: Path) -> None:
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    if trainer.mask is not None:  # the mask may have changed since the start (RigL, SET, GMP)
        tensors.update({f"mask.{k}": v.to(torch.uint8) for k, v in trainer.mask.items()})
    scalars: dict[str, dict[str, Any]] = {}
    opt_state = trainer.optimizer.state_dict()["state"]
    for idx, state in opt_state.items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {"step": str(step), "history": json.dumps(trainer.history.records),
            "mask_events": json.dumps(trainer.history.mask_events),
            "optim_scalars": json.dumps(scalars), "trained_shapes": json.dumps(_optimizer_shapes(trainer))}
    save_tensors(path, tensors, metadata=meta)  # one atomic file: tensors and metadata together


def load_checkpoint(trainer: Trainer, path: Path) -> int:
    """Restore ``trainer`` from ``path``; return the step to continue from."""
    from safetensors.torch import load

    data = read_verified(path)
    meta = verify_safetensors(data, path)
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises several error types for damaged files
        raise CorruptFileError(path, f"safetensors cannot read it ({exc})") from exc
    try:
        step = int(meta["step"])
        history = json.loads(meta["history"])
        events = json.loads(meta.get("mask_events", "[]"))
        scalars = json.loads(meta["optim_scalars"])
        saved_shapes = json.loads(meta.get("trained_shapes", "null"))  # absent in older checkpoints
    except (KeyError, ValueError) as exc:
        raise CorruptFileError(path, f"its checkpoint metadata is unreadable ({exc})") from exc
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        trainer.model.load_state_dict(model_state)
    except RuntimeError as exc:
        raise StoreError(f"checkpoint {path} does not fit the model ({exc})") from exc
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value.to(trainer.device, copy=True)  # own, writable memory
    for idx, values in scalars.items():
        state.setdefault(int(idx), {}).update(values)
    if saved_shapes is not None and saved_shapes != _optimizer_shapes(trainer):
        raise StoreError(f"checkpoint {path} was saved while training other parameters ({len(saved_shapes)} tensors) "
                         f"than this trainer trains ({len(_optimizer_shapes(trainer))}): its optimiser state does not fit")
    opt = trainer.optimizer.state_dict()
    opt["state"] = state
    trainer.optimizer.load_state_dict(opt)
    trainer.history.records = history
    masks = {k[len("mask."):]: v.bool() for k, v in tensors.items() if k.startswith("mask.")}
    if masks:
        # In the model's parameter order, as before the kill: a file's tensor order is not the
        # saved dict's, and methods that seed per layer by position (SET) depend on the order.
        order = [n for n, _ in trainer.model.named_parameters() if n in masks]
        trainer.set_mask(Mask({n: masks[n] for n in order + sorted(set(masks) - set(order))}))
    trainer.history.mask_events = events
    trainer.reapply_mask()
    return step


def save_weights(model: torch.nn.Module, path: Path) -> None:
    save_tensors(path, model.state_dict())


def load_weights(model: torch.nn.Module, path: Path) -> None:
    state = load_tensors(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise StoreError(f"weights in {path} do not fit the model ({exc})") from exc
