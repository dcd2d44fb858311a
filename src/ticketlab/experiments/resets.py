"""IMP's reset actions: what a level's kept weights start from, and which part of the schedule it trains.

A reset is one registered record, so a new variant (the "Deconstructing lottery tickets" resets:
random re-init, signed constants, ...) is one ``register_reset`` call, not another branch of IMP.

- ``init``      weights <- theta_0, the original init (LTH); trains 0..T with the schedule;
- ``rewind``    weights <- theta_k, the weights after k dense steps (Frankle et al. 2020); trains k..T;
- ``lr_rewind`` keeps the level's final weights and replays the LR schedule from k (Renda et al. 2020);
- ``finetune``  keeps the final weights and trains k..T at the schedule's final LR, constant.

The "mask-1" actions of Zhou et al. 2019 ("Deconstructing lottery tickets"), each trained 0..T from a
start built out of theta_0 (see :func:`deconstructing_start` for the exact definitions, taken from the
authors' code): ``random_reinit``, ``random_reshuffle``, ``signed_reinit``, ``signed_reshuffle``,
``signed_constant``, ``rand_signed_constant``; ``IMPConfig.reset_rescale`` multiplies their kept
weights by (layer size / kept count).

``baselines_share_segment``: the reinit / random-mask baselines train the ticket's segment from the
ticket's reset weights (init, rewind); where the ticket keeps its trained weights (lr_rewind,
finetune) there is nothing for a baseline to keep, so baselines train 0..T from the init.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..masks import Mask

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ResetInputs:
    """What a reset may start the next level from."""

    init: State                       # theta_0
    final: State                      # the previous level's trained weights
    rewind: Callable[[], State]       # theta_k (loaded on demand: only rewinding resets read it)
    mask: "Mask | None" = None        # the level's mask (the weights it names are the masked ones)
    generator: torch.Generator | None = None  # seeded from (run seed, level): same seed, same start
    rescale: bool = False             # multiply the kept weights by layer size / kept count


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
    rescalable: bool = False          # honours ``rescale`` (IMPConfig.reset_rescale)


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


# --- Deconstructing lottery tickets (Zhou et al. 2019): what the kept weights start from ----------
DECONSTRUCTING = ("random_reinit", "random_reshuffle", "signed_reinit", "signed_reshuffle", "signed_constant",
                  "rand_signed_constant")


def _permuted(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``t``'s values permuted over the whole tensor (a uniformly random permutation drawn from ``g``)."""
    perm = torch.randperm(t.numel(), generator=g).to(t.device)
    return t.flatten()[perm].view_as(t)


def _reshuffled(t: torch.Tensor, keep: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``t`` with its values at the kept positions permuted among those positions; the rest as they were."""
    flat = t.flatten().clone()
    kept = keep.flatten().to(t.device).nonzero().squeeze(1)
    perm = torch.randperm(kept.numel(), generator=g).to(t.device)
    flat[kept] = flat[kept][perm]
    return flat.view_as(t)


def deconstructing_start(action: str, r: ResetInputs) -> State:
    """theta_0 with each masked weight tensor replaced by the mask-1 ``action`` of Zhou et al. 2019.

    Definitions, from the authors' code (uber-research/deconstructing-lottery-tickets,
    ``train_lottery.py`` lines 519-634: random_reshuffle 519, signed_reshuffle 528, random_reinit 540,
    signed_reinit 550, rand_signed_constant 604, signed_constant 622; the same in
    ``get_init_loss_train_lottery.py`` lines 287-360), per layer, with w0 the layer's init (theta_0)
    and m its mask at this level:

    - ``random_reinit``: w0's values permuted over the *whole* layer (``shuffle(w0.flatten())``), then
      masked: the kept weights get a random draw of the layer's init values.
    - ``random_reshuffle``: w0's *kept* values permuted among the kept positions
      (``temp = w0[m]; shuffle(temp); w0[m] = temp``): the same multiset of kept values.
    - ``signed_reinit``: |random_reinit| times sign(w0): magnitudes from the whole layer, original signs.
    - ``signed_reshuffle``: |random_reshuffle| times sign(w0) at the kept positions.
    - ``signed_constant``: std(w0) * sign(w0); std is NumPy's ``np.std`` of the whole layer's init
      (population std, ddof 0, over all entries, kept or not), so every kept weight is +-std.
    - ``rand_signed_constant``: std(w0) * sign(w0), then permuted over the whole layer
      (``temp = std * sign(w0); shuffle(temp.flatten())``): +-std with signs drawn at random *as a
      permutation of the layer's init signs* (the layer's count of + and - is the init's; each kept
      weight's sign is random). We follow the code, not i.i.d. fair coins.
    - rescaling (``*_rescaling`` experiments, ``train_lottery.py`` lines 562, 581, 636, 665: after the
      action ``multiplier = mask_values[i].size / np.sum(mask_values[i])``; and the supermask's
      ``dynamic_scaling`` at lines 383-385): the layer times ``mask.size / sum(mask)`` (total / kept).
      The code offers it for random_reinit, signed_reinit, signed_constant and rand_signed_constant;
      ticketlab allows it for all six (it is the same multiplication). A layer with nothing kept is
      left unscaled (the factor is undefined; all its weights are pruned anyway).

    Differences from the code, deliberately: the code's loop runs over every trainable tensor, biases
    included (zero at init in their nets, so a no-op); here only the masked weights (those ``r.mask``
    names) change, and biases and unmasked parameters start from theta_0 exactly as with ``init``.
    The returned tensors are not masked: training applies the level's mask (as for ``init``), so
    pruned entries are zero once the mask is applied, and the random-mask baseline, which shares this
    start, applies its own. Python's unseeded ``random.shuffle`` becomes ``torch.randperm`` drawn
    from ``r.generator`` (seeded from the run seed and the level), layer by layer in mask order, so
    the same seed gives the same start and a resumed run rebuilds it identically. sign(0) = 0, as in
    ``np.sign``: an init weight exactly zero stays zero under the signed actions.
    """
    if r.mask is None:
        raise ValueError(f"reset {action!r} needs the level's mask (ResetInputs.mask)")
    needs_generator = action != "signed_constant"
    if needs_generator and r.generator is None:
        raise ValueError(f"reset {action!r} needs a seeded generator (ResetInputs.generator)")
    out = dict(r.init)
    for name, keep in r.mask.items():
        if name not in r.init:
            raise KeyError(f"mask names {name!r}, which the init state does not hold")
        w0 = r.init[name]
        keep = keep.to(w0.device)
        sign = torch.sign(w0)
        if action == "random_reinit":
            w = _permuted(w0, r.generator)
        elif action == "random_reshuffle":
            w = _reshuffled(w0, keep, r.generator)
        elif action == "signed_reinit":
            w = _permuted(w0, r.generator).abs() * sign
        elif action == "signed_reshuffle":
            w = _reshuffled(w0, keep, r.generator).abs() * sign
        elif action == "signed_constant":
            w = w0.std(correction=0) * sign
        elif action == "rand_signed_constant":
            w = _permuted(w0.std(correction=0) * sign, r.generator)
        else:
            raise ValueError(f"unknown mask-1 action {action!r}; choose one of {DECONSTRUCTING}")
        kept = int(keep.sum())
        if r.rescale and kept:
            w = w * (keep.numel() / kept)
        out[name] = w
    return out


def _mask1(action: str, description: str) -> Reset:
    """A mask-1 action as a reset: starts from theta_0 like ``init`` (trains 0..T, baselines share it)."""
    return Reset(action, partial(deconstructing_start, action), starts_at_rewind_step=False, constant_final_lr=False,
                 needs_rewind_point=False, baselines_share_segment=True, description=description, rescalable=True)


register_reset(_mask1("random_reinit", "the layer's init values permuted over the whole layer, then masked; 0..T"))
register_reset(_mask1("random_reshuffle", "the kept weights' init values permuted among the kept positions; 0..T"))
register_reset(_mask1("signed_reinit", "magnitudes as random_reinit, the original init signs; 0..T"))
register_reset(_mask1("signed_reshuffle", "magnitudes as random_reshuffle, the original init signs; 0..T"))
register_reset(_mask1("signed_constant", "+-std of the layer's init with the original init signs; 0..T"))
register_reset(_mask1("rand_signed_constant", "+-std of the layer's init, signs permuted at random; 0..T"))
