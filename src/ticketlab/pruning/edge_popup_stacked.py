"""Edge-popup for K replicates at once: ``train_edge_popup`` on a stack (``ticketlab.replicates``).

Each replicate keeps what a solo ``train_edge_popup(model, data, density, ..., seed=seed,
weight_init="keep", bias_init="keep")`` has: its own frozen weights, its own initial scores (drawn by
the same ``EdgePopup`` code from the same seeded generator), its own batches (the Trainer's order
for its seed), its own kept fraction and annealing, its own SGD momentum. Per step, as the solo
version:

1. every masked tensor of every replicate keeps its ``round(density * numel)`` entries of largest
   ``|score|`` (``topk_mask``'s rule, ties to the lowest flat index), all tensors and replicates at
   once by ``_SegmentTopk``: the threshold ranked within a band around last step's, exactly;
2. the stack's weights become ``w * mask`` and the bmm engine runs the forward and backward pass;
3. the scores receive the straight-through gradient ``dL/d(w * mask) * w * sign(score)``;
4. SGD (momentum, weight decay on the scores) with the per-iteration cosine schedule steps the
   scores of all replicates as one flat buffer (element-wise, so a replicate does not depend on its
   neighbours).

No evaluation runs inside (the caller evaluates the returned pruned models). A replicate whose
training loss becomes NaN or infinite is dropped and reported; the others go on unchanged.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data import DataSplits
from ..masks import Mask
from ..replicates import (BatchOrder, StackError, _batch, _stack_data, _stacked_loss, _train_size, stack,
                          stack_optimizer, stacked_loss_and_grad, state_rows)
from ..steps import to_iterations
from ..training import default_device, lr_factor
from .edge_popup import EdgePopup, _kept_count
from .schedules import Annealing, OneShot

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PopupRecord:
    """One replicate's result: its mask (masked parameters' names), the model with weights ``w * mask``
    (parameters trainable again), and None or why it was dropped."""

    mask: Mask | None
    model: nn.Module
    diverged: str | None = None


def _kth_largest(x: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Each row's ``ks[r]``-th largest entry of ``x`` (R, n) as (R, 1); -inf where ``ks[r] >= n``
    (every entry kept), +inf where ``ks[r] <= 0`` (none). One ``kthvalue`` per distinct k."""
    n = x.shape[1]
    out = torch.full((x.shape[0], 1), float("-inf"), dtype=x.dtype, device=x.device)
    for k in torch.unique(ks).tolist():
        if k <= 0:
            out[ks == k] = float("inf")
        elif k < n:
            rows = (ks == k).nonzero().flatten()
            out[rows] = x.index_select(0, rows).kthvalue(n - k + 1, dim=1, keepdim=True).values
    return out


def _kth_largest_near(x: torch.Tensor, ks: torch.Tensor, guess: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``_kth_largest(x, ks)``, ranking only the entries within ``guess`` +- ``delta`` of each row.

    After an optimiser step that moved every score by at most d, each k-th largest |score| moved by
    at most d too (order statistics are 1-Lipschitz in the max norm), so last step's value +- d
    brackets it and only the few entries in that band need sorting. The counts decide exactly
    whether it does: fewer than k entries above the band and at least k at or above its lower end;
    a row where that fails (k changed, rounding) is computed in full."""
    n = x.shape[1]
    full = ks >= n
    above = (x > guess + delta).sum(1)
    band = (x >= guess - delta) & (x <= guess + delta) & ~full.unsqueeze(1)
    count = band.sum(1)
    rank = ks - above  # rank of the k-th largest among the band's entries, 1 = the band's largest
    if not bool((full | ((rank >= 1) & (rank <= count))).all()):
        return _kth_largest(x, ks)
    out = torch.full((x.shape[0], 1), float("-inf"), dtype=x.dtype, device=x.device)
    if bool(full.all()):
        return out
    values = x[band]  # row-major: grouped by row
    rows = band.nonzero()[:, 0]
    order = torch.sort(values, descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]  # by row, descending within a row
    starts = torch.cumsum(count, 0) - count
    live = ~full
    out[live] = values[order[(starts + rank - 1)[live]]].unsqueeze(1)
    return out


def _keep(x: torch.Tensor, ks: torch.Tensor, kth: torch.Tensor) -> torch.Tensor:
    """Exactly ``ks[r]`` entries of each row: those above its k-th largest ``kth``, and of the entries
    equal to it the lowest-indexed ones (``topk_mask``'s rule)."""
    above = x > kth
    tied = x == kth
    room = ks.unsqueeze(1) - above.sum(1, keepdim=True)
    if bool((tied.sum(1, keepdim=True) <= room).all()):  # the usual case: no tie beyond the count
        return above | tied
    return above | (tied & (tied.cumsum(1) <= room))


def _rows_topk(magnitude: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Per row r of ``magnitude`` (R, n): keep exactly ``ks[r]`` largest entries, ties to the lowest
    index (``topk_mask``'s rule, row by row)."""
    return _keep(magnitude, ks, _kth_largest(magnitude, ks))


_WIDEN = 4.0  # a band's next half-width: at least this many times its threshold's last move ...
_BAND = 16.0  # ... and scaled (by at most 2x a step) towards this many entries in the band
_BLOCK = 16  # the band's entries are found by one nonzero over sums of _BLOCK entries
_EXACT_COUNT = 2 ** 24  # a float32 sum of 0/1 entries is an exact count below this many entries


class _SegmentTopk:
    """``_rows_topk`` of every masked tensor of every replicate at once, on the (R, P) |score| buffer.

    ``segments`` are the masked tensors' column ranges ``(offset, numel)`` (increasing, not
    overlapping); the other columns (unmasked tensors, padding) keep mask 1. A (row, segment) pair is
    a group, ``ks[r, j]`` its kept count. Called with last step's k-th largest values (``guess``) and
    a band half-width (``delta``), it is ``_kth_largest_near``'s band test for all groups at once: per
    segment one comparison with each end of the band (the one with the upper end is the mask's first
    draft: the entries above the band are kept) and one sum (the count above the band); the band's
    entries gathered by one ``nonzero`` (over sums of blocks of entries), counted per group by one
    ``bincount`` and ranked by one sort by (group, value); the band's entries >= the k-th largest
    join the mask. A group whose band test fails (first step, k changed, a band too narrow) gets
    ``_kth_largest_near`` within ``guess`` +- ``bound`` if given, else ``_kth_largest``, and its mask
    row in full. The kept entries are ``_keep``'s: those >= the k-th largest, and ``_keep``'s
    lowest-index rule in a segment where a row has more ties than room. The result is exact whatever
    the guess and the band: they decide only the work."""

    def __init__(self, segments: Sequence[tuple[int, int]], width: int):
        self.segments = [(int(o), int(n)) for o, n in segments]
        self.width = width
        self.gaps: list[tuple[int, int]] = []  # the columns outside every segment
        at = 0
        for offset, n in self.segments:
            if offset < at or n < 1 or offset + n > width:
                raise ValueError(f"segments must be increasing, non-empty and inside {width} columns: {segments}")
            if offset > at:
                self.gaps.append((at, offset))
            at = offset + n
        if at < width:
            self.gaps.append((at, width))
        self._key: tuple | None = None
        self.count: torch.Tensor | None = None  # after a call with a band: each group's entries in it

    def _setup(self, x: torch.Tensor) -> None:
        key = (x.shape[0], x.dtype, x.device)
        if self._key == key:
            return
        if x.dim() != 2 or x.shape[1] != self.width:
            raise ValueError(f"expected (rows, {self.width}), got {tuple(x.shape)}")
        self._key = key
        rows, dev = x.shape[0], x.device
        self.sizes = torch.tensor([n for _, n in self.segments], device=dev)
        column = torch.full((self.width,), len(self.segments), dtype=torch.long)
        for j, (offset, n) in enumerate(self.segments):
            column[offset:offset + n] = j
        self.column = column.to(dev)  # each column's segment (len(segments) outside them)
        padded = -(-rows * self.width // _BLOCK) * _BLOCK
        self._band = torch.zeros(padded, dtype=x.dtype, device=dev)  # 0 outside the segments and beyond
        self._band2d = self._band[:rows * self.width].view(rows, self.width)
        self._blocks = torch.arange(_BLOCK, device=dev).unsqueeze(1) * (padded // _BLOCK)
        self._mask = torch.ones(rows, self.width, dtype=x.dtype, device=dev)  # 1 outside the segments
        self._x = torch.empty(rows, self.width, dtype=x.dtype, device=dev)  # ``magnitude``'s buffer
        self._mask_views, self._band_views, self._x_views = (
            [t[:, offset:offset + n] for offset, n in self.segments] for t in (self._mask, self._band2d, self._x))
        self._sum_dtypes = [x.dtype if n < _EXACT_COUNT else torch.float64 for _, n in self.segments]

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each segment's columns of ``x``."""
        if x is self._x:
            return self._x_views
        return [x[:, offset:offset + n] for offset, n in self.segments]

    def magnitude(self, scores: torch.Tensor) -> torch.Tensor:
        """|scores| in this object's buffer (overwritten by the next call), for ``__call__``."""
        self._setup(scores)
        return torch.abs(scores, out=self._x)

    def _counts(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Per group, the number of 1s of a 0/1 float buffer given by its segments' ``views``, (R, S) long."""
        return torch.stack([v.sum(1, dtype=d) for v, d in zip(views, self._sum_dtypes)], 1).to(torch.long)

    def _kth_of(self, x: torch.Tensor, ks: torch.Tensor, kth: torch.Tensor, need: torch.Tensor,
                guess: torch.Tensor | None, bound: torch.Tensor | None) -> list[tuple[int, torch.Tensor]]:
        """``kth`` of the groups in ``need``, segment by segment; returns (segment, rows) computed."""
        done = []
        for j in need.any(0).nonzero().flatten().tolist():
            offset, n = self.segments[j]
            idx = need[:, j].nonzero().squeeze(1)
            xj, kj = x[:, offset:offset + n].index_select(0, idx), ks[:, j].index_select(0, idx)
            if guess is not None and bound is not None:
                kth[idx, j:j + 1] = _kth_largest_near(xj, kj, guess[idx, j:j + 1], bound.index_select(0, idx))
            else:
                kth[idx, j:j + 1] = _kth_largest(xj, kj)
            done.append((j, idx))
        return done

    def keep(self, x: torch.Tensor, ks: torch.Tensor, kth: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
        """``_keep(x_j, ks[:, j], kth[:, j])`` in every segment j and 1 elsewhere, as the 0/1 (R, P) buffer
        of x's dtype (overwritten by the next call). ``kept``: each group's count of entries >= its k-th
        largest if known (then the mask must already be in the buffer)."""
        self._setup(x)
        mask = self._mask
        if kept is None:
            for xj, kj, mj in zip(self._views(x), kth.unsqueeze(2).unbind(1), self._mask_views):
                torch.ge(xj, kj, out=mj)
            kept = self._counts(self._mask_views)
        excess = kept > ks  # never where every entry is kept: at most n >= k entries
        for j in excess.any(0).nonzero().flatten().tolist():  # more ties than room: lowest indices (rare)
            offset, n = self.segments[j]
            mask[:, offset:offset + n] = _keep(x[:, offset:offset + n], ks[:, j], kth[:, j:j + 1])
        return mask

    def __call__(self, x: torch.Tensor, ks: torch.Tensor, guess: torch.Tensor | None = None,
                 delta: torch.Tensor | None = None, bound: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask (``keep``'s buffer) and each group's ``ks[r, j]``-th largest entry (R, S; -inf where
        every entry is kept, as ``_kth_largest``) of ``x`` (R, P; contiguous, >= 0 or NaN). ``guess``
        (R, S), ``delta`` ((R, S) or (R, 1); >= 0 or NaN) and ``bound`` (R, 1): see the class."""
        self._setup(x)
        self.count = None
        rows, n_seg = ks.shape
        full = ks >= self.sizes
        kth = torch.full((rows, n_seg), float("-inf"), dtype=x.dtype, device=x.device)
        if guess is None or delta is None:
            self._kth_of(x, ks, kth, ~full, None, None)
            return self.keep(x, ks, kth), kth
        hi = torch.add(guess, delta).masked_fill_(full, float("-inf"))  # full: all above, none in the band
        lo = torch.sub(guess, delta).masked_fill_(full, float("-inf"))
        mask = self._mask
        for xj, hj, lj, mj, bj in zip(self._views(x), hi.unsqueeze(2).unbind(1), lo.unsqueeze(2).unbind(1),
                                      self._mask_views, self._band_views):
            torch.gt(xj, hj, out=mj)
            torch.ge(xj, lj, out=bj)
            bj.sub_(mj)  # 1 in [lo, hi]: x > hi implies x >= lo (with NaN bounds, both are 0)
        n_above = self._counts(self._mask_views)
        blocks = self._band.view(_BLOCK, -1).sum(0).nonzero().squeeze(1)
        flat = (blocks.unsqueeze(0) + self._blocks).view(-1)
        flat = flat.index_select(0, (self._band.index_select(0, flat) != 0).nonzero().squeeze(1))  # in no order
        values = x.view(-1).index_select(0, flat)  # never NaN: a NaN is in no band
        group = (torch.div(flat, self.width, rounding_mode="floor") * n_seg
                 + self.column.index_select(0, flat % self.width))
        count = torch.bincount(group, minlength=rows * n_seg)
        if values.dtype == torch.float32:  # one sort by (group, value descending)
            bits = values.view(torch.int32).to(torch.long)  # ordered as the values (>= 0)
            order = torch.sort(group * 2 ** 31 + (2 ** 31 - 1 - bits)).indices
        else:
            order = torch.sort(values, descending=True, stable=True).indices
            order = order.index_select(0, torch.sort(group.index_select(0, order), stable=True).indices)
        rank = (ks - n_above).view(-1)  # the k-th largest's rank among the band's entries, 1 = largest
        ok = ~full.view(-1) & (rank >= 1) & (rank <= count)
        pick = ok.nonzero().squeeze(1)
        at = (torch.cumsum(count, 0) - count).index_select(0, pick) + rank.index_select(0, pick) - 1
        kth.view(-1).index_copy_(0, pick, values.index_select(0, order.index_select(0, at)))
        # the band's entries >= the k-th largest join the mask (those above it are in already)
        join = ok.index_select(0, group) & (values >= kth.view(-1).index_select(0, group))
        mask.view(-1).index_fill_(0, flat[join], 1)
        kept = n_above + torch.bincount(group[join], minlength=rows * n_seg).view(rows, n_seg)
        kept.masked_fill_(full, 0)
        need = ~full & ~ok.view(rows, n_seg)
        if bool(need.any()):
            for j, idx in self._kth_of(x, ks, kth, need, guess, bound):
                offset, n = self.segments[j]
                rows_j = torch.ge(x[:, offset:offset + n].index_select(0, idx), kth[idx, j:j + 1]).to(x.dtype)
                mask[idx, offset:offset + n] = rows_j
                kept[idx, j] = rows_j.sum(1, dtype=torch.float64).to(torch.long)
        self.count = count.view(rows, n_seg)
        return self.keep(x, ks, kth, kept), kth


def train_edge_popup_stacked(
    models: Sequence[nn.Module],
    data: DataSplits | Sequence[DataSplits],
    densities: Sequence[float],
    seeds: Sequence[int],
    *,
    epochs: int = 10,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 32,
    anneal: Sequence[bool] | bool = False,
    include_bias: bool = True,
    loss: Loss = F.cross_entropy,
    device: torch.device | str | None = None,
) -> list[PopupRecord]:
    """Edge-popup scores of every model (ReLU MLPs; one architecture) trained together on their own
    frozen weights (``weight_init="keep"``), replicate k at ``densities[k]`` with ``seeds[k]`` (its
    score init and its batch order), annealed where ``anneal[k]``. Returns one record per model, in
    order; the given models are not changed."""
    models = list(models)
    n_models = len(models)
    seeds = [int(s) for s in seeds]
    anneals = [bool(anneal)] * n_models if isinstance(anneal, bool) else [bool(a) for a in anneal]
    if not (len(densities) == len(seeds) == len(anneals) == n_models) or n_models == 0:
        raise StackError(f"one density, seed and anneal flag per model: got {n_models} models, {len(densities)} "
                         f"densities, {len(seeds)} seeds, {len(anneals)} anneal flags")
    if epochs < 1:
        raise StackError(f"epochs must be >= 1, got {epochs}")
    dev = torch.device(device) if device is not None else default_device()
    schedules = [(Annealing(d, epochs) if a else OneShot(d)).density_at for d, a in zip(densities, anneals)]

    # each replicate's initial scores, drawn by EdgePopup itself from its seeded generator
    scored: dict[str, list[torch.Tensor]] = {}
    for k, model in enumerate(models):
        ep = EdgePopup(copy.deepcopy(model).cpu(), schedules[k](0), include_bias=include_bias, weight_init="keep",
                       bias_init="keep", generator=torch.Generator().manual_seed(seeds[k]))
        for name, s in ep.named_scores().items():
            scored.setdefault(name, []).append(s.detach().clone())
    st = stack(models, "bmm").to(dev)
    weights = st.flat.detach().clone()  # frozen
    scores = torch.zeros_like(weights)
    segments = []  # (offset, numel) of every masked tensor
    for name, shape, offset in st.layout:
        if name in scored:
            n = math.prod(shape)
            scores[:, offset:offset + n] = torch.stack([s.reshape(-1) for s in scored[name]]).to(scores)
            segments.append((offset, n))
    masked = torch.zeros(weights.shape[1], dtype=weights.dtype, device=dev)
    for offset, n in segments:
        masked[offset:offset + n] = 1

    train, _, augment = _stack_data(data, n_models, dev)
    if augment is not None:
        raise StackError("stacked edge-popup does not run data augmentation")
    n_train = _train_size(train, n_models)
    ipe = n_train // batch_size
    if ipe == 0:
        raise StackError(f"batch_size {batch_size} is larger than the training set ({n_train} samples)")
    cfg = TrainConfig(optimizer="sgd", lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                      steps=f"{epochs}ep", schedule="cosine", eval_every="1ep", fused_optimizer=False)
    total = to_iterations(cfg.steps, ipe)
    scores.grad = torch.zeros_like(scores)
    optimizer = stack_optimizer([scores], cfg)
    batches = BatchOrder(seeds, n_train, batch_size, dev)
    step_loss = _stacked_loss(loss)
    loss_and_grad = stacked_loss_and_grad(loss)  # autograd's gradient, bit for bit, without its graph
    records: list[PopupRecord | None] = [None] * n_models
    active = list(range(n_models))

    def kept_counts(epoch: int) -> torch.Tensor:  # (active, segments)
        return torch.tensor([[_kept_count(schedules[k](epoch), n) for _, n in segments] for k in active],
                            dtype=torch.long, device=dev).view(len(active), len(segments))

    topk = _SegmentTopk(segments, weights.shape[1])
    kth: torch.Tensor | None = None  # (active, segments): each tensor's k-th largest |score| per replicate
    moved: torch.Tensor | None = None  # (active, 1): the largest |score change| of the last step per replicate
    buffers: dict[str, torch.Tensor] = {}

    def buffer(name: str) -> torch.Tensor:  # reused across steps (same shape until a replicate is dropped)
        b = buffers.get(name)
        if b is None or b.shape != weights.shape:
            b = buffers[name] = torch.empty_like(weights)
        return b

    width: torch.Tensor | None = None  # (active, segments): the half-width of the next step's band

    def current_mask(ks: torch.Tensor) -> torch.Tensor:
        """The stack's 0/1 mask (topk's buffer, overwritten by the next call)."""
        nonlocal kth, width
        magnitude = topk.magnitude(scores.detach())
        if kth is None or moved is None:
            mask, kth = topk(magnitude, ks)
            width = None
            return mask
        # the guaranteed band is last threshold +- moved; a narrower one is tried first, from how far
        # each threshold moved last step and how many entries its band held (the result is the same)
        delta = moved if width is None else torch.minimum(width, moved)  # NaN where a score is NaN
        mask, new = topk(magnitude, ks, kth, delta, moved)
        factor = (_BAND / topk.count.clamp(min=1)).clamp_(0.5, 2.0)
        width = torch.maximum((new - kth).abs_().mul_(_WIDEN), delta * factor).nan_to_num_(nan=float("inf"))
        kth = new
        return mask

    def drop(positions: list[int], reason: Callable[[int], str], ks: torch.Tensor) -> torch.Tensor:
        """Remove the replicates at ``positions`` of ``active`` (weights, scores, momentum); return their ks."""
        nonlocal weights, scores, masked_st, optimizer, moved, kth
        for pos in positions:
            model = copy.deepcopy(models[active[pos]])
            records[active[pos]] = PopupRecord(None, model, reason(pos))
        keep = [i for i in range(len(active)) if i not in set(positions)]
        idx = torch.as_tensor(keep, dtype=torch.long, device=dev)
        state = state_rows(optimizer.state.get(scores, {}), idx, len(active))
        weights = weights.index_select(0, idx)
        scores = scores.detach().index_select(0, idx)
        scores.grad = torch.zeros_like(scores)
        optimizer = stack_optimizer([scores], cfg)
        if state:
            optimizer.state[scores] = state
        masked_st = masked_st.select(keep)
        active[:] = [active[i] for i in keep]
        kth = None
        moved = None
        return ks.index_select(0, idx)

    masked_st = st
    ks = kept_counts(0)
    for step in range(total):
        if not active:
            break
        epoch = step // ipe
        if step % ipe == 0 and step > 0:
            ks = kept_counts(epoch)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg, total, ipe)
        while active:
            with torch.no_grad():
                torch.mul(weights, current_mask(ks), out=masked_st.flat)
            x, y = _batch(train, batches, step, active, n_models, n_train, batch_size)
            out = masked_st.train_forward(x)
            pair = loss_and_grad(out, y) if loss_and_grad is not None else None
            losses, grad_out = pair if pair is not None else (step_loss(out, y), None)
            finite = torch.isfinite(losses)
            if bool(finite.all()):
                break
            bad = [int(i) for i in torch.nonzero(~finite).flatten()]
            values = losses.detach().tolist()
            masked_st._saved = None
            ks = drop(bad, lambda pos: f"edge-popup training loss {values[pos]} at step {step}", ks)
        if not active:
            break
        masked_st.train_backward(out, None if grad_out is not None else losses.sum(), grad_out)
        with torch.no_grad():
            torch.mul(masked_st.grad, weights, out=scores.grad)  # straight through: dL/d(w*m) * w
            # ... * sign(s); unmasked tensors: no score
            scores.grad.mul_(torch.sign(scores.detach(), out=buffer("sign"))).mul_(masked)
            before = buffer("before").copy_(scores.detach())
        optimizer.step()
        with torch.no_grad():
            moved = before.sub_(scores.detach()).abs_().amax(1, keepdim=True).mul_(1.01)

    final = current_mask(kept_counts(epochs - 1)) if active else None
    names = {name: (offset, shape) for name, shape, offset in st.layout if name in scored}
    for pos, k in enumerate(active):
        model = copy.deepcopy(models[k]).to(dev)
        row = final[pos].bool().cpu()
        mask = Mask({name: row[offset:offset + math.prod(shape)].view(shape) for name, (offset, shape) in names.items()})
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in mask:
                    p.mul_(mask[name].to(device=p.device, dtype=p.dtype))
        records[k] = PopupRecord(mask, model)
    return [r for r in records if r is not None]


__all__ = ["PopupRecord", "train_edge_popup_stacked"]
