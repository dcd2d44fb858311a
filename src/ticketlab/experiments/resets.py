"""IMP's reset actions: what a level's kept weights start from, and which part of the schedule it trains.

A reset is one registered record, so a new variant (the "Deconstructing lottery tickets" resets:
random re-init, signed constants, ...) is one ``register_reset`` call, not another branch of IMP.

- ``init``      weights <- theta_0, the original init (LTH); trains 0..T with the schedule;
- ``rewind``    weights <- theta_k, the weights after k dense steps (Frankle et al. 2020); trains k..T;
- ``lr_rewind`` keeps the level's final weights and replays the LR schedule from k (Renda et al. 2020);
- ``finetune``  keeps the final weights and trains k..T at the schedule's final LR, constant.

``baselines_share_segment``: the reinit / random-mask baselines train the ticket's segment from the
ticket's reset weights (init, rewind); where the ticket keeps its trained weights (lr_rewind,
finetune) there is nothing for a baseline to keep, so baselines train 0..T from the init.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ResetInputs:
    """What a reset may start the next level from."""

    init: State                       # theta_0
    final: State                      # the previous level's trained weights
    rewind: Callable[[], State]       # theta_k (loaded on demand: only rewinding resets read it)


@dataclass(frozen=True)
class Reset:
    """One reset action (see the module docstring)."""

    name: str
    start_weights: Callable[[ResetInputs], State]
    starts_at_rewind_step: bool       # trains k..T (else 0..T)
    constant_final_lr: bool           # at the schedule's final LR (fine-tuning)
    needs_rewind_point: bool          # theta_k must be saved while level 0 trains
    baselines_share_segment: bool
    description: str


RESETS: dict[str, Reset] = {}


def register_reset(reset: Reset) -> Reset:
    if reset.name in RESETS:
        raise ValueError(f"a reset named {reset.name!r} is already registered")
    RESETS[reset.name] = reset
    return reset


register_reset(Reset("init", lambda r: r.init, starts_at_rewind_step=False, constant_final_lr=False,
                     needs_rewind_point=False, baselines_share_segment=True,
                     description="theta_0, the original init (LTH); trains 0..T"))
register_reset(Reset("rewind", lambda r: r.rewind(), starts_at_rewind_step=True, constant_final_lr=False,
                     needs_rewind_point=True, baselines_share_segment=True,
                     description="theta_k, the weights after k dense steps; trains k..T"))
register_reset(Reset("lr_rewind", lambda r: r.final, starts_at_rewind_step=True, constant_final_lr=False,
                     needs_rewind_point=True, baselines_share_segment=False,
                     description="the level's final weights, LR schedule replayed from k"))
register_reset(Reset("finetune", lambda r: r.final, starts_at_rewind_step=True, constant_final_lr=True,
                     needs_rewind_point=True, baselines_share_segment=False,
                     description="the level's final weights, k..T at the schedule's final LR"))
