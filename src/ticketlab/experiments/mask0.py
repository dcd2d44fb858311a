"""What pruned weights are held at while a ticket trains: Zhou et al.'s "mask-0" actions.

"Deconstructing Lottery Tickets: Zeros, Signs, and the Supermask" (Zhou et al. 2019) asks why
pruned weights are set to *zero*. Its code (uber-research/deconstructing-lottery-tickets,
``train_lottery.py`` lines 390-413, ``--model_type``; ``masked_layers.FreezeDense``: kernel =
trainable * mask + (1 - mask) * frozen) compares, with w_i the initial and w_f the final weights of
the training the mask was computed from:

- ``zero`` — pruned weights are 0 (the lottery ticket; ``--model_type mask``).
- ``frozen_init`` — pruned weights frozen at w_i (``freeze_init``).
- ``variant1`` — pruned weights frozen at 0 where |w_i| > |w_f| (they moved toward zero), at w_i
  elsewhere (``freeze_init_zero_mask``).
- ``variant2`` — as ``variant1`` for the pruned weights, and every *kept* weight whose magnitude
  decreased (|w_i| > |w_f|) starts training at 0 instead of its reset value
  (``freeze_init_zero_all``).

The frozen values are computed from the run's stored init and the level's starting (previous
level's final) weights, so a resumed run holds exactly the same values. Only the ticket branch
takes the action; the baselines (re-init, random mask) keep their pruned weights at zero. Densities,
connectivity and FLOPs count the *trainable* weights (the mask), as the paper's x-axes do.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..masks import Mask

MASK0 = ("zero", "frozen_init", "variant1", "variant2")


def _check(kind: str) -> None:
    if kind not in MASK0:
        raise ValueError(f"mask-0 action {kind!r} is unknown; choose one of {MASK0}")


def _moved_toward_zero(init: torch.Tensor, final: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Where |final| < |init|, on ``device``. IMP keeps ``init`` on the CPU while the trained
    ``final`` may sit on a GPU: compared on ``init``'s device, so the test is exact either way."""
    return (init.abs() > final.to(init.device).abs()).to(device)


def pruned_values(kind: str, init: Mapping[str, torch.Tensor], final: Mapping[str, torch.Tensor],
                  mask: Mask) -> dict[str, torch.Tensor] | None:
    """Per masked parameter, the values its pruned entries are held at (0 at kept entries);
    None for ``zero`` (the Trainer's plain multiply)."""
    _check(kind)
    if kind == "zero":
        return None
    out = {}
    for name in mask:
        w_i = init[name].detach().clone()
        if kind in ("variant1", "variant2"):
            w_i[_moved_toward_zero(init[name], final[name], w_i.device)] = 0
        out[name] = w_i * ~mask[name].to(w_i.device)
    return out


def start_weights(kind: str, start: Mapping[str, torch.Tensor], init: Mapping[str, torch.Tensor],
                  final: Mapping[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """The state the ticket starts from: ``start`` (the reset's), and for ``variant2`` its kept
    weights that moved toward zero set to 0."""
    _check(kind)
    state = dict(start)
    if kind == "variant2":
        for name in mask:
            w = state[name].clone()
            w[_moved_toward_zero(init[name], final[name], w.device) & mask[name].to(w.device)] = 0
            state[name] = w
    return state


__all__ = ["MASK0", "pruned_values", "start_weights"]
