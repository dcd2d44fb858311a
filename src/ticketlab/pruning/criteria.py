"""Mask criteria over (w_init, w_final): Zhou et al. 2019, "Deconstructing Lottery Tickets".

A criterion is one function ``score(w_init, w_final, eligible, generator) -> tensor`` (higher = keep)
registered with one ``register_criterion`` line; IMP (``PruneConfig.criterion``, ``--criterion``)
keeps the top of these scores through ``keep_top`` over its groups, so counts are exact and pruned
weights are never revived. ``eligible`` is the layer's current mask (only the intersection criteria
read it) and ``generator`` a seeded ``torch.Generator`` (only ``random`` reads it).

Definitions, from the authors' code (uber-research/deconstructing-lottery-tickets at dbad201,
``get_weight_init.py``; the method names are its ``--method`` choices, line 28; a criterion's score is
its ``cumulative_helped``, and ``get_mask_by_layer_by_weight`` (lines 36-52) prunes the lowest scores
of each layer among the weights still kept):

- ``large_final`` |w_f| (lines 129-137; IMP's magnitude ranking, the default), ``small_final`` -|w_f|
  (185-193), ``large_init`` |w_i| (207-215), ``small_init`` -|w_i| (217-225);
- ``magnitude_increase`` |w_f| - |w_i| (286-294), ``movement`` |w_f - w_i| (325-333);
- ``random``: a random ranking (195-204: a shuffled ``arange``); here ``torch.rand`` drawn from the
  seeded generator (the code's ``random.shuffle`` is unseeded), so the same seed gives the same mask;
- ``large_final_same_sign`` / ``large_final_diff_sign`` (153-165 / 139-151): |w_f|, set to 0 where
  sign(w_i) != sign(w_f) (same_sign) or where the signs agree (diff_sign); ``magnitude_increase_same_sign``
  / ``magnitude_increase_diff_sign`` (310-322 / 296-308): |w_f| - |w_i|, zeroed the same way. sign is
  ``np.sign`` (sign(0) = 0). These are the code's scores exactly: the other-sign weights score 0,
  they are not excluded. So the count is always hit: when fewer favoured-sign weights than the count
  have a positive score, the rest of the count is filled from the score-0 weights; the code breaks
  those ties at random (``np.lexsort`` with ``np.random.random``), ticketlab by ``keep_top``'s
  deterministic rule (the earlier position wins). For magnitude_increase_same_sign, as in the code,
  an other-sign weight (score 0) ranks above a same-sign weight whose magnitude shrank (score < 0).
- ``large_init_large_final`` / ``small_init_small_final`` (228-255 / 257-284, with
  ``bsearch_quadrant_threshold`` and ``pruned_count``, lines 54-77): keep a weight iff both |w_i| and
  |w_f| (or -|w_i| and -|w_f|) are above the same per-layer percentile, the percentile found by
  bisection to hit the count (pruned weights set to -9999 so they rank last in both). The bisection
  can miss the count (it returns the upper bound once the interval is below eps). Exact counts here:
  with r_i, r_f a weight's ranks (0 = best, stable: earlier position first) among the layer's
  *eligible* weights (those still kept, as the -9999 sentinel makes them), the weight is in the
  equal-percentile intersection of the top q of both rankings iff max(r_i, r_f) < q. The score is
  1 - (max(r_i, r_f) + 1) / n_eligible, the smallest top fraction of its layer that holds it in both
  rankings: ``keep_top`` of ``count`` then keeps the largest equal-percentile intersection of at most
  ``count`` weights, plus weights entering at the next percentile step (at most two per layer per
  step) up to the exact count, the earlier position first. In a global IMP group the same fraction
  applies to every layer of the group (the code prunes layer-wise only).

Not registered: the code's ``*_single`` variants (a pure sign-agreement mask, no count) and
``snip`` / ``grad`` (they need gradients at init, not (w_init, w_final); see ``pruning/scores.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..masks import Mask, MaskError
from .magnitude import imp_groups
from .selection import keep_top

Score = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Generator | None"], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """One registered mask criterion (see the module docstring)."""

    name: str
    score: Score
    description: str
    needs_generator: bool = False


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, score: Score, description: str, *, needs_generator: bool = False) -> Criterion:
    if name in CRITERIA:
        raise ValueError(f"a criterion named {name!r} is already registered")
    CRITERIA[name] = Criterion(name, score, description, needs_generator)
    return CRITERIA[name]


def _f(t: torch.Tensor) -> torch.Tensor:
    """On the CPU in float64 (the weights may sit on an accelerator; ``keep_top`` ranks in float64)."""
    return t.detach().to("cpu", torch.float64)


def _same_sign(w_i: torch.Tensor, w_f: torch.Tensor) -> torch.Tensor:
    return torch.sign(_f(w_i)) == torch.sign(_f(w_f))


def _ranks(values: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Descending rank (0 = largest) of each eligible entry among the eligible ones, stable
    (among equal values the earlier position ranks first); ineligible entries get rank n_eligible."""
    flat = values.reshape(-1).to("cpu", torch.float64).numpy()
    keep = eligible.reshape(-1).cpu().numpy().astype(bool)
    positions = np.flatnonzero(keep)
    order = positions[np.argsort(-flat[positions], kind="stable")]
    ranks = np.full(flat.size, positions.size, dtype=np.int64)
    ranks[order] = np.arange(positions.size)
    return torch.from_numpy(ranks).reshape(values.shape)


def _intersection(a: torch.Tensor, b: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """1 - (max(rank_a, rank_b) + 1) / n_eligible: the equal-percentile intersection as a score."""
    n = max(int(eligible.sum()), 1)
    level = torch.maximum(_ranks(a, eligible), _ranks(b, eligible)).to(torch.float64)
    return 1.0 - (level + 1.0) / n


def _random(w_i: torch.Tensor, w_f: torch.Tensor, eligible: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    if g is None:
        raise ValueError("criterion 'random' needs a seeded torch.Generator")
    return torch.rand(w_f.shape, generator=g, dtype=torch.float64)


register_criterion("large_final", lambda wi, wf, e, g: _f(wf).abs(), "|w_final| (IMP's magnitude ranking)")
register_criterion("small_final", lambda wi, wf, e, g: -_f(wf).abs(), "-|w_final|")
register_criterion("large_init", lambda wi, wf, e, g: _f(wi).abs(), "|w_init|")
register_criterion("small_init", lambda wi, wf, e, g: -_f(wi).abs(), "-|w_init|")
register_criterion("large_init_large_final", lambda wi, wf, e, g: _intersection(_f(wi).abs(), _f(wf).abs(), e),
                   "both |w_init| and |w_final| above the same percentile")
register_criterion("small_init_small_final", lambda wi, wf, e, g: _intersection(-_f(wi).abs(), -_f(wf).abs(), e),
                   "both |w_init| and |w_final| below the same percentile")
register_criterion("magnitude_increase", lambda wi, wf, e, g: _f(wf).abs() - _f(wi).abs(), "|w_final| - |w_init|")
register_criterion("movement", lambda wi, wf, e, g: (_f(wf) - _f(wi)).abs(), "|w_final - w_init|")
register_criterion("random", _random, "a random ranking (seeded)", needs_generator=True)
register_criterion("large_final_same_sign", lambda wi, wf, e, g: _f(wf).abs() * _same_sign(wi, wf),
                   "|w_final|, 0 where the sign changed")
register_criterion("large_final_diff_sign", lambda wi, wf, e, g: _f(wf).abs() * ~_same_sign(wi, wf),
                   "|w_final|, 0 where the sign stayed")
register_criterion("magnitude_increase_same_sign",
                   lambda wi, wf, e, g: (_f(wf).abs() - _f(wi).abs()) * _same_sign(wi, wf),
                   "|w_final| - |w_init|, 0 where the sign changed")
register_criterion("magnitude_increase_diff_sign",
                   lambda wi, wf, e, g: (_f(wf).abs() - _f(wi).abs()) * ~_same_sign(wi, wf),
                   "|w_final| - |w_init|, 0 where the sign stayed")


def criterion_names() -> tuple[str, ...]:
    """The registered criteria, in registration order."""
    return tuple(CRITERIA)


def criterion_scores(
    criterion: str,
    init: Mapping[str, torch.Tensor],
    final: Mapping[str, torch.Tensor],
    mask: Mask,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The criterion's score of every masked parameter (CPU, float64), layer by layer in mask order."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion {criterion!r} is unknown; choose one of {criterion_names()}")
    c = CRITERIA[criterion]
    if c.needs_generator and generator is None:
        raise ValueError(f"criterion {criterion!r} needs a seeded torch.Generator")
    out = {}
    for name, keep in mask.items():
        for what, state in (("initial", init), ("final", final)):
            if name not in state:
                raise MaskError(f"the {what} weights lack the masked parameter {name!r}")
            if tuple(state[name].shape) != tuple(keep.shape):
                raise MaskError(f"{what} weight {name!r} has shape {tuple(state[name].shape)}, "
                                f"mask {tuple(keep.shape)}")
        out[name] = c.score(init[name], final[name], keep, generator)
    return out


def imp_prune_by(
    criterion: str,
    init: Mapping[str, torch.Tensor],
    final: Mapping[str, torch.Tensor],
    mask: Mask,
    *,
    level: int,
    rate: float,
    scope: str = "global",
    output_name: str | None = None,
    output_rate: float | None = None,
    generator: torch.Generator | None = None,
) -> Mask:
    """The level-``level`` IMP mask by ``criterion``: ``keep_top`` of its scores over IMP's groups
    (exact counts; weights ``mask`` has pruned stay pruned). ``large_final`` is ``imp_prune``."""
    groups = imp_groups(mask, scope=scope, rate=rate, level=level, output_name=output_name, output_rate=output_rate)
    return keep_top(criterion_scores(criterion, init, final, mask, generator), mask, groups)
