"""Selection: turn scores into a Mask that keeps an exact number of weights.

Scoring (how much each weight matters) and selection (how many to keep, where) are separate, so
every score composes with every way of spreading the budget over layers. Counts are exact and ties
are broken deterministically (a stable sort: among equal scores the earlier position wins), so the
same scores always give the same mask.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..masks import Mask, MaskError


class SelectionError(ValueError):
    """Asked to keep more weights than are eligible, or groups that do not fit the mask."""


def keep_top(
    scores: Mapping[str, torch.Tensor],
    mask: Mask,
    groups: Mapping[tuple[str, ...], int],
) -> Mask:
    """Keep, within each group of layers, the ``count`` highest-scoring weights still in ``mask``.

    ``groups`` maps a tuple of parameter names (one name for layer-wise selection, all names for
    global selection) to the number of weights to keep there. Weights already pruned in ``mask``
    are never revived. Layers of the mask that are in no group keep their current mask.
    """
    seen: set[str] = set()
    for names in groups:
        for n in names:
            if n not in mask:
                raise SelectionError(f"group names {n!r}, which the mask does not cover")
            if n in seen:
                raise SelectionError(f"{n!r} appears in more than one group")
            if n not in scores:
                raise SelectionError(f"no score given for {n!r}")
            if scores[n].shape != mask[n].shape:
                raise MaskError(f"score of {n!r} has shape {tuple(scores[n].shape)}, mask {tuple(mask[n].shape)}")
            seen.add(n)
    new = dict(mask.items())
    for names, count in groups.items():
        eligible = [mask[n].reshape(-1) for n in names]
        available = sum(int(e.sum()) for e in eligible)
        if not 0 <= count <= available:
            raise SelectionError(
                f"cannot keep {count} weights in {list(names)}: only {available} are still unpruned"
            )
        flat = torch.cat([scores[n].detach().reshape(-1).to("cpu", torch.float64) for n in names])
        # Rank only the eligible positions (a -inf sentinel for pruned ones would tie with -inf scores).
        positions = torch.cat(eligible).nonzero().reshape(-1)
        ranked = flat[positions]
        if torch.isnan(ranked).any():
            raise SelectionError(f"scores of {list(names)} contain NaN; cannot rank them")
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[positions[_top_indices(ranked, count)]] = True
        offset = 0
        for n in names:
            numel = mask[n].numel()
            new[n] = keep[offset:offset + numel].reshape(mask[n].shape)
            offset += numel
    return Mask(new)


def _top_indices(values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest values; among equal values the earlier index wins.

    Same result as a stable descending sort cut at ``count``, in linear time: find the count-th
    largest value, keep everything above it, then the earliest of the values equal to it.
    """
    n = values.numel()
    if count <= 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    if count >= n:
        return torch.arange(n, device=values.device)
    if values.device.type == "cpu":  # the count-th largest value; numpy's introselect is ~3x torch.topk on CPU
        threshold = torch.tensor(np.partition(values.numpy(), n - count)[n - count], dtype=values.dtype)
    elif count <= n - count:  # from the smaller side
        threshold = torch.topk(values, count, sorted=False).values.min()
    else:
        threshold = -torch.topk(-values, n - count + 1, sorted=False).values.min()
    above = (values > threshold).nonzero().reshape(-1)
    ties = (values == threshold).nonzero().reshape(-1)[: count - above.numel()]
    return torch.cat([above, ties])


def layer_groups(names: Sequence[str], counts: Mapping[str, int]) -> dict[tuple[str, ...], int]:
    """One group per layer (layer-wise selection)."""
    return {(n,): counts[n] for n in names}


def random_mask_like(mask: Mask, generator: torch.Generator) -> Mask:
    """A random mask with exactly the same number kept in every layer as ``mask``."""
    out = {}
    for name, m in mask.items():
        kept = int(m.sum())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=generator)[:kept]] = True
        out[name] = flat.reshape(m.shape)
    return Mask(out)
