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
        masks = [mask[n] for n in names]
        kept = [int(torch.count_nonzero(m)) for m in masks]  # count_nonzero: ~10x a bool sum
        available = sum(kept)
        if not 0 <= count <= available:
            raise SelectionError(
                f"cannot keep {count} weights in {list(names)}: only {available} are still unpruned"
            )
        group_scores = [scores[n].detach().to("cpu", torch.float64) for n in names]
        new.update(zip(names, _keep_group(group_scores, masks, kept, count, names)))
    return Mask(new)


def _keep_group(scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], kept: Sequence[int],
                count: int, names: Sequence[str]) -> list[torch.Tensor]:
    """Per layer of a group, the boolean mask of the ``count`` highest scores among the positions
    still kept in ``masks``; among equal scores the earlier position (layer order, then flat index)
    wins: exactly what a stable descending sort of the concatenated eligible scores cut at
    ``count`` keeps (``_top_indices``).

    One selection of the threshold on the eligible scores only, then elementwise passes per layer:
    no concatenation of all scores or masks, no index list of all eligible positions, no sort.
    """
    # Rank only the eligible positions (a -inf sentinel for pruned ones would tie with -inf scores).
    parts = [s.reshape(-1) if k == s.numel() else s[m] for s, m, k in zip(scores, masks, kept)]
    owned = len(parts) > 1 or kept[0] != scores[0].numel()  # ranked is a fresh tensor we may reorder
    ranked = torch.cat(parts) if len(parts) > 1 else parts[0]
    if torch.isnan(ranked).any():
        raise SelectionError(f"scores of {list(names)} contain NaN; cannot rank them")
    n = ranked.numel()
    if count <= 0:
        return [torch.zeros(m.shape, dtype=torch.bool) for m in masks]
    if count >= n:
        return [m.clone() for m in masks]
    threshold = _kth_largest(ranked, count, in_place=owned)
    del ranked, parts
    out, above = [], 0
    for s, m in zip(scores, masks):
        keep = torch.gt(s, threshold)
        keep &= m
        above += int(torch.count_nonzero(keep))
        out.append(keep)
    need = count - above
    for s, m, keep in zip(scores, masks, out):  # ties at the threshold: the earliest eligible ones
        if need <= 0:
            break
        ties = (torch.eq(s, threshold) & m).reshape(-1).nonzero().reshape(-1)[:need]
        keep.view(-1)[ties] = True
        need -= ties.numel()
    return out


def _kth_largest(values: torch.Tensor, count: int, in_place: bool = False) -> torch.Tensor:
    """The ``count``-th largest of ``values`` (1 <= count < numel), as a 0-d tensor of their dtype.
    ``in_place``: ``values`` may be reordered (saves a copy)."""
    n = values.numel()
    if values.device.type == "cpu":  # numpy's introselect is ~3x torch.topk on CPU
        if in_place and values.is_contiguous():
            arr = values.numpy()
            arr.partition(n - count)
            return torch.tensor(arr[n - count], dtype=values.dtype)
        return torch.tensor(np.partition(values.numpy(), n - count)[n - count], dtype=values.dtype)
    if count <= n - count:  # from the smaller side
        return torch.topk(values, count, sorted=False).values.min()
    return -torch.topk(-values, n - count + 1, sorted=False).values.min()


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
    threshold = _kth_largest(values, count)
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
