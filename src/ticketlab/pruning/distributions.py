"""Layer-wise density distributions: how a global budget of kept weights is spread over layers.

- ``uniform``: every layer keeps the same fraction.
- ``erk`` (Evci et al. 2020): density of layer l proportional to (sum of its dims) / (product of
  its dims), i.e. (n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w) for convolutions and
  (n_in + n_out) / (n_in n_out) for dense layers; a layer that would exceed density 1 is made dense
  and the factor is solved again over the rest.
- ``smart`` / ``smart_vgg`` (Su et al. 2020, "Sanity-checking pruning methods"): layer l of L
  (counting from the input) keeps a fraction proportional to (L - l + 1)^2 + (L - l + 1), divided
  by l^2 in the VGG variant; the last layer keeps 30% (less if the whole budget is smaller);
  ratios above 1 are clipped and the excess spread over the others.

All return exact kept *counts* per layer that sum to round(density * total), no layer above its
size, using largest-remainder rounding so the budget is met to the weight.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

DISTRIBUTIONS = ("uniform", "erk", "smart", "smart_vgg")


class DistributionError(ValueError):
    """A distribution that is unknown or cannot meet the budget."""


def erk_raw(shape: Sequence[int]) -> float:
    """Unnormalised ERK density of a weight of this shape (out, in[, k_h, k_w, ...])."""
    if len(shape) < 2:
        raise DistributionError(f"ERK needs weights with at least 2 dims, got shape {tuple(shape)}")
    return sum(shape) / math.prod(shape)


def _fill_with_caps(sizes: Sequence[int], raw: Sequence[float], budget: float) -> list[float]:
    """Densities d_l = min(1, c * raw_l) with c chosen so that sum d_l * size_l = budget.

    Layers whose density would exceed 1 are made dense and c is solved again over the rest.
    """
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(sizes)) if i not in dense]
        remaining = budget - sum(sizes[i] for i in dense)
        weight = sum(raw[i] * sizes[i] for i in free)
        if not free or weight <= 0:
            return [1.0 if i in dense else 0.0 for i in range(len(sizes))]
        c = remaining / weight
        over = [i for i in free if c * raw[i] > 1.0]
        if not over:
            return [1.0 if i in dense else c * raw[i] for i in range(len(sizes))]
        dense.update(over)


def counts_from_densities(sizes: Mapping[str, int], densities: Mapping[str, float], total_keep: int) -> dict[str, int]:
    """Round fractional per-layer counts to integers summing to ``total_keep`` (largest remainder)."""
    ideal = {n: min(1.0, max(0.0, densities[n])) * sizes[n] for n in sizes}
    counts = {n: min(sizes[n], math.floor(v)) for n, v in ideal.items()}
    short = total_keep - sum(counts.values())
    order = sorted(sizes, key=lambda n: (-(ideal[n] - counts[n]), list(sizes).index(n)))
    i = 0
    while short > 0:
        n = order[i % len(order)]
        if counts[n] < sizes[n]:
            counts[n] += 1
            short -= 1
        i += 1
        if i > 10 * len(order) + total_keep:
            raise DistributionError(f"cannot place {total_keep} weights in layers of sizes {dict(sizes)}")
    while short < 0:  # only from floating error in ideal; remove from the largest remainders' opposite
        n = max(counts, key=lambda k: (counts[k] - ideal[k], k))
        counts[n] -= 1
        short += 1
    return counts


def layer_densities(kind: str, shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """Fractional per-layer densities of a distribution for a global ``density`` (fraction kept)."""
    if not 0.0 <= density <= 1.0:
        raise DistributionError(f"density must be in [0, 1], got {density}")
    names = list(shapes)
    sizes = [math.prod(shapes[n]) for n in names]
    budget = density * sum(sizes)
    if kind == "uniform":
        return {n: density for n in names}
    if kind == "erk":
        return dict(zip(names, _fill_with_caps(sizes, [erk_raw(shapes[n]) for n in names], budget)))
    if kind in ("smart", "smart_vgg"):
        L = len(names)
        if L == 1:
            return {names[0]: density}
        last = min(0.3, budget / sizes[-1])
        raw = []
        for l in range(1, L):
            r = (L - l + 1) ** 2 + (L - l + 1)
            raw.append(r / l**2 if kind == "smart_vgg" else float(r))
        rest = _fill_with_caps(sizes[:-1], raw, budget - last * sizes[-1])
        return dict(zip(names, [*rest, last]))
    raise DistributionError(f"unknown distribution {kind!r}; choose one of {DISTRIBUTIONS} (or 'global')")


def layer_counts(kind: str, shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, int]:
    """Exact kept counts per layer, summing to round(density * total weights)."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total_keep = int(round(density * sum(sizes.values())))
    return counts_from_densities(sizes, layer_densities(kind, shapes, density), total_keep)


def shapes_of(mask_or_params: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in mask_or_params.items()}
