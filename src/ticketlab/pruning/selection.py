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
        dtype = _rank_dtype([scores[n] for n in names])
        group_scores = [scores[n].detach().to("cpu", dtype) for n in names]
        new.update(zip(names, _keep_group(group_scores, masks, kept, count, names)))
    return Mask(new)


def _rank_dtype(scores: Sequence[torch.Tensor]) -> torch.dtype:
    """float32 when every score of a group is float32 (SynFlow's float32 rounds: no widened copy),
    else float64. Either converts exactly, so the ranking and the mask are the same."""
    return torch.float32 if all(s.dtype == torch.float32 for s in scores) else torch.float64


def _keep_group(scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], kept: Sequence[int],
                count: int, names: Sequence[str]) -> list[torch.Tensor]:
    """Per layer of a group, the boolean mask of the ``count`` highest scores among the positions
    still kept in ``masks``; among equal scores the earlier position (layer order, then flat index)
    wins: exactly what a stable descending sort of the concatenated eligible scores cut at
    ``count`` keeps (``_top_indices``).

    In numpy on the CPU tensors (its elementwise passes and index gathers are 2-5x torch's on one
    thread, and write into fresh arrays only as large as the eligible part): the eligible scores of
    a partly pruned layer are gathered through their flat indices, one selection of the threshold
    runs on them, and every later pass (compare, count, scatter, ties) touches only eligible
    positions. No sort, no pass over the pruned positions besides finding them.
    """
    if count <= 0:
        return [torch.zeros(m.shape, dtype=torch.bool) for m in masks]
    if count >= sum(kept):
        return [m.clone() for m in masks]
    parts, where = [], []  # per layer: eligible scores (flat), their flat indices (None: all of them)
    for s, m, k in zip(scores, masks, kept):
        flat = s.contiguous().reshape(-1).numpy()
        idx = None if k == flat.size else np.flatnonzero(m.reshape(-1).numpy())
        parts.append(flat if idx is None else flat[idx])
        where.append(idx)
    if any(np.isnan(p.max()) for p in parts if p.size):  # max propagates NaN: one pass, no temporary
        raise SelectionError(f"scores of {list(names)} contain NaN; cannot rank them")
    threshold = _threshold(parts, count)
    out, above = [], 0
    for part, idx, m in zip(parts, where, masks):
        flags = np.greater(part, threshold)
        above += int(np.count_nonzero(flags))
        if idx is None:
            keep = flags
        else:
            keep = np.zeros(m.numel(), dtype=bool)
            keep[idx[flags]] = True
        out.append(keep)
    need = count - above
    for part, idx, keep in zip(parts, where, out):  # ties at the threshold: the earliest eligible ones
        if need <= 0:
            break
        ties = np.flatnonzero(part == threshold)[:need]
        keep[ties if idx is None else idx[ties]] = True
        need -= ties.size
    return [torch.from_numpy(keep).reshape(m.shape) for keep, m in zip(out, masks)]


_SAMPLE_FROM = 1 << 18  # eligible scores from which the threshold is found through a sample
_STRIDE = 64  # every 64th eligible score is in the sample


def _threshold(parts: Sequence[np.ndarray], count: int) -> np.generic:
    """The ``count``-th largest value of the concatenated ``parts`` (1 <= count < their size).

    Exact whatever the data: a strided sample's quantile only *bounds* the threshold, the values
    on the threshold's side of that bound are gathered (a prefix or suffix of the sorted order), and
    the selection runs on them; when the bound misses (too few gathered), the selection runs on
    everything. Pruning rounds drop or keep a small fraction, so the selection sees a few percent
    of the scores and the whole concatenation is never copied.
    """
    n = sum(p.size for p in parts)
    if n >= _SAMPLE_FROM:
        found = _threshold_by_sample(parts, n, count)
        if found is not None:
            return found
    ranked = np.concatenate(parts)  # a fresh array: the partition may reorder it
    ranked.partition(n - count)
    return ranked[n - count]


def _threshold_by_sample(parts: Sequence[np.ndarray], n: int, count: int) -> np.generic | None:
    """``_threshold`` through a bound from a sample; None when the bound does not hold the threshold."""
    sample = np.concatenate([p[::_STRIDE] for p in parts])
    size = sample.size
    drop = n - count  # the threshold is the drop-th smallest (0-based)
    margin = 6.0 * np.sqrt(size * min(drop, count) / n) + 8  # ~6 standard deviations of the sample's quantile
    if drop <= count:  # bound it from above: gather the values <= bound, a prefix of the sorted order
        j = min(size - 1, int(size * drop / n + margin))
        bound = np.partition(sample, j)[j]
        gathered = np.concatenate([p[p <= bound] for p in parts])
        if gathered.size <= drop:
            return None
        gathered.partition(drop)
        return gathered[drop]
    j = max(0, int(size * drop / n - margin))  # bound it from below: the values >= bound, a suffix
    bound = np.partition(sample, j)[j]
    gathered = np.concatenate([p[p >= bound] for p in parts])
    if gathered.size < count:
        return None
    gathered.partition(gathered.size - count)
    return gathered[gathered.size - count]


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
