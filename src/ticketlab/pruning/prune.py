"""Prune to a density: score -> select, once or over n rounds (SynFlow's iterative schedule).

Any score composes with any distribution and any number of rounds. The rounds follow an
``Iterative`` schedule (``pruning/schedules.py``): round k of n prunes to density rho^(k/n)
(exponential, the SynFlow schedule) or 1 - (1 - rho) k / n (linear), rescoring with the current mask
each round; the last round lands exactly on the requested count(s). One round is a one-shot prune.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..masks import Mask
from .distributions import DISTRIBUTIONS, DistributionError, layer_counts, layer_densities, shapes_of
from .schedules import ITERATIVE_KINDS, Iterative
from .scores import BN_MODES, SCORES, SYNFLOW_PRECISIONS, ScoreError, ScoreSource, SynflowScorer, raw_scores, synflow
from .selection import keep_top

ON_COLLAPSE = ("warn", "raise", "ignore")


class LayerCollapseWarning(UserWarning):
    """A pruned mask keeps no weight at all in some layers (layer collapse: the net is cut there).

    ``layers`` holds the names of the empty layers.
    """

    def __init__(self, message: str, layers: Sequence[str] = ()):
        super().__init__(message)
        self.layers = list(layers)


class LayerCollapseError(DistributionError):
    """``prune(..., on_collapse="raise")`` left a layer with no kept weight; ``layers`` names them."""

    def __init__(self, message: str, layers: Sequence[str] = ()):
        super().__init__(message)
        self.layers = list(layers)


def method_options(method: str, synflow_precision: str, bn_mode: str) -> dict[str, str]:
    """The score keywords ``prune``'s ``synflow_precision`` / ``bn_mode`` stand for (none at their
    defaults, so a user-registered score is called as before); a non-default value with a method
    that does not read it is an error, not a silent no-op."""
    if synflow_precision not in SYNFLOW_PRECISIONS:
        raise ScoreError(f"synflow_precision must be one of {SYNFLOW_PRECISIONS}, got {synflow_precision!r}")
    if bn_mode not in BN_MODES:
        raise ScoreError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    out = {}
    if synflow_precision != "float64":
        if method != "synflow":
            raise ScoreError(f"synflow_precision={synflow_precision!r} is for SynFlow, not {method!r}")
        out["precision"] = synflow_precision
    if bn_mode != "train":
        if method not in ("snip", "grasp"):
            raise ScoreError(f"bn_mode={bn_mode!r} is for SNIP and GraSP, not {method!r}")
        out["bn_mode"] = bn_mode
    return out


def collapse_message(method: str, mask: Mask, density: float, distribution: str) -> str:
    empty = mask.empty_layers()
    return (f"prune({method!r}, density={density}, distribution={distribution!r}) left {len(empty)} of "
            f"{len(mask)} layers with no kept weight (layer collapse: the network is cut there and "
            f"outputs constants, or the layers are dead): {empty}. Consider distribution='erk' or "
            f"'uniform' (every layer keeps weights), more rounds (SynFlow's iterative pruning), or a "
            f"higher density. Mask.empty_layers() lists them.")


def round_targets(mask: Mask, schedule: Iterative, distribution: str, k: int,
                  kept: int | None = None) -> dict[tuple[str, ...], int]:
    """Kept counts per group after round k of ``schedule``; non-increasing in k and exact at the last
    round (``schedule.rounds``), where they are ``distribution``'s counts at ``schedule.density``.

    'global' keeps round(N d_k) in all; a layer-wise distribution runs the schedule in each layer
    towards that layer's own (fractional) density and never goes below its final count. ``kept``:
    the number ``mask`` keeps, when the caller knows it (saves counting every round).
    """
    names = tuple(mask)
    last = k >= schedule.rounds
    if distribution == "global":
        target = int(round(mask.num_total * schedule.density_at(k)))
        # An already-pruned mask: intermediate rounds never ask for more than it still keeps.
        if kept is None:  # not Mask.num_kept: bool sums are slow
            kept = sum(int(torch.count_nonzero(t)) for _, t in mask.items())
        return {names: target if last else min(target, kept)}
    shapes = shapes_of(mask)
    final = _within_kept(layer_counts(distribution, shapes, schedule.density), mask)
    if last:
        return {(n,): final[n] for n in names}
    fractional = layer_densities(distribution, shapes, schedule.density)
    out = {}
    for n in names:
        size = math.prod(shapes[n])
        layer_target = round(size * schedule.with_density(fractional[n]).density_at(k))
        out[(n,)] = max(final[n], min(int(mask[n].sum()), layer_target))
    return out


def _within_kept(counts: dict[str, int], mask: Mask) -> dict[str, int]:
    """``counts`` with no layer asked for more than ``mask`` still keeps there, the total unchanged.

    A layer-wise distribution's counts at a lower density can exceed what an already-pruned mask
    keeps in a small layer (rounding: a 1-entry bias gets 0 at one density and 1 at a lower one).
    The excess goes, one entry at a time, to the layers with the most unpruned entries to spare
    (ties by layer order), so the kept total stays exact; nothing changes when every count fits.
    """
    kept = {n: int(mask[n].sum()) for n in counts}
    excess = sum(max(0, c - kept[n]) for n, c in counts.items())
    if not excess:
        return counts
    out = {n: min(c, kept[n]) for n, c in counts.items()}
    spare = sum(kept[n] - out[n] for n in out)
    if spare < excess:
        return counts  # not enough left anywhere: keep_top reports it
    while excess:
        n = max(out, key=lambda name: kept[name] - out[name])
        out[n] += 1
        excess -= 1
    return out


def prune(
    method: str,
    model: nn.Module,
    mask: Mask,
    source: ScoreSource,
    density: float,
    *,
    distribution: str = "global",
    rounds: int = 1,
    schedule: str = "exponential",
    invert: bool = False,
    progress: Callable[[int, Mask], None] | None = None,
    on_collapse: str = "warn",
    synflow_precision: str = "float64",
    bn_mode: str = "train",
    **score_options,
) -> Mask:
    """Prune ``mask`` down to ``density`` (fraction of all masked weights kept) with ``method``.

    ``distribution`` 'global' ranks all layers together; 'uniform', 'erk', 'smart', 'smart_vgg' fix
    each layer's count first. ``invert`` keeps the *lowest* scores (a sanity check). The model is
    not modified. ``rounds`` > 1 prunes iteratively, rescoring each round, along the ``Iterative``
    schedule ``schedule`` ('exponential', SynFlow's, or 'linear').

    Layer collapse: when the result keeps no weight at all in some layers, ``on_collapse``
    'warn' (default) emits a :class:`LayerCollapseWarning` naming them (its ``layers`` attribute
    lists them), 'raise' raises a :class:`LayerCollapseError` instead and 'ignore' says nothing.
    Either way ``mask.empty_layers()`` of the result names them. (A layer whose kept weights lie on
    no input-output path is collapsed too; ``analysis.connectivity.collapsed_layers`` finds those.)

    ``synflow_precision`` (SynFlow only): 'float64' (default, the masks of every stored run) or
    'float32' (about 2x faster; power-of-two rescaling where float32's range needs it; may rank
    near-ties differently, see docs/pai_speed.md). ``bn_mode`` (SNIP and GraSP only): score with the
    model in 'train' mode (default: BatchNorm batch statistics) or 'eval' mode (running statistics,
    as the Synaptic-Flow code does). A non-default value with another method is an error.
    """
    if on_collapse not in ON_COLLAPSE:
        raise DistributionError(f"on_collapse must be one of {ON_COLLAPSE}, got {on_collapse!r}")
    if not 0.0 < density <= 1.0:
        raise DistributionError(f"density (fraction kept) must be in (0, 1], got {density}")
    if distribution != "global" and distribution not in DISTRIBUTIONS:
        raise DistributionError(f"unknown distribution {distribution!r}; choose 'global' or one of {DISTRIBUTIONS}")
    if rounds < 1:
        raise DistributionError(f"rounds must be >= 1, got {rounds}")
    if schedule not in ITERATIVE_KINDS:
        raise DistributionError(f"unknown schedule {schedule!r}; choose one of {ITERATIVE_KINDS}")
    if round(density * mask.num_total) > mask.num_kept:
        raise DistributionError(
            f"density {density} keeps {round(density * mask.num_total)} weights but the mask keeps only {mask.num_kept}"
        )
    score_options = {**score_options, **method_options(method, synflow_precision, bn_mode)}
    plan = Iterative(density, rounds, schedule)
    kept: int | None = None  # the mask's kept count, once known
    # SynFlow (any number of rounds) rescores the same model: build its |theta| copy once, not every round.
    scorer = None
    if method == "synflow" and SCORES.get("synflow") is synflow and set(score_options) <= {"precision"}:
        mask.check_fits(model)
        scorer = SynflowScorer(model, source, reuse=rounds > 1, precision=score_options.get("precision", "float64"))
    for k in range(1, rounds + 1):
        if scorer is not None:  # its dtype kept (float32 rounds rank in float32); a common 2^e factor
            scores = {n: s.detach().to("cpu") for n, s in scorer(mask).items()}
        else:
            scores = raw_scores(method, model, mask, source, **score_options)
        if invert:
            scores = {n: -(s if s.dtype == torch.float32 else s.to(torch.float64)) for n, s in scores.items()}
        targets = round_targets(mask, plan, distribution, k, kept)
        mask = keep_top(scores, mask, targets)
        kept = sum(targets.values())  # keep_top keeps exactly the counts asked
        if progress is not None:
            progress(k, mask)
    empty = mask.empty_layers()
    if empty and on_collapse != "ignore":
        message = collapse_message(method, mask, density, distribution)
        if on_collapse == "raise":
            raise LayerCollapseError(message, empty)
        warnings.warn(LayerCollapseWarning(message, empty), stacklevel=2)
    return mask
