"""Edge-popup for K replicates at once: ``train_edge_popup`` on a stack (``ticketlab.replicates``).

Each replicate keeps what a solo ``train_edge_popup(model, data, density, ..., seed=seed,
weight_init="keep", bias_init="keep")`` has: its own frozen weights, its own initial scores (drawn by
the same ``EdgePopup`` code from the same seeded generator), its own batches (the Trainer's order
for its seed), its own kept fraction and annealing, its own SGD momentum. Per step, as the solo
version:

1. every masked tensor of every replicate keeps its ``round(density * numel)`` entries of largest
   ``|score|`` (``topk_mask``'s rule, ties to the lowest flat index, one ``kthvalue`` per tensor
   over all replicates' rows);
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
                          stack_optimizer, state_rows)
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
    (every entry kept). One ``kthvalue`` per distinct k."""
    n = x.shape[1]
    out = torch.full((x.shape[0], 1), float("-inf"), dtype=x.dtype, device=x.device)
    for k in torch.unique(ks).tolist():
        if k < n:
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
    records: list[PopupRecord | None] = [None] * n_models
    active = list(range(n_models))

    def kept_counts(epoch: int) -> list[torch.Tensor]:
        return [torch.tensor([_kept_count(schedules[k](epoch), n) for k in active], device=dev)
                for _, n in segments]

    kth: list[torch.Tensor | None] = [None] * len(segments)  # each tensor's k-th largest |score| per replicate
    moved: torch.Tensor | None = None  # (active, 1): the largest |score change| of the last step per replicate

    def current_mask(ks: list[torch.Tensor]) -> torch.Tensor:
        mask = torch.ones_like(weights)
        magnitude = scores.detach().abs()
        for j, ((offset, n), k) in enumerate(zip(segments, ks)):
            x = magnitude[:, offset:offset + n]
            kth[j] = _kth_largest(x, k) if kth[j] is None or moved is None else _kth_largest_near(x, k, kth[j], moved)
            mask[:, offset:offset + n] = _keep(x, k, kth[j])
        return mask

    def drop(positions: list[int], reason: Callable[[int], str], ks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Remove the replicates at ``positions`` of ``active`` (weights, scores, momentum); return their ks."""
        nonlocal weights, scores, masked_st, optimizer, moved
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
        kth[:] = [None] * len(segments)
        moved = None
        return [k.index_select(0, idx) for k in ks]

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
            losses = step_loss(out, y)
            finite = torch.isfinite(losses)
            if bool(finite.all()):
                break
            bad = [int(i) for i in torch.nonzero(~finite).flatten()]
            values = losses.detach().tolist()
            masked_st._saved = None
            ks = drop(bad, lambda pos: f"edge-popup training loss {values[pos]} at step {step}", ks)
        if not active:
            break
        masked_st.train_backward(out, losses.sum())
        with torch.no_grad():
            torch.mul(masked_st.grad, weights, out=scores.grad)  # straight through: dL/d(w*m) * w
            scores.grad.mul_(scores.detach().sign()).mul_(masked)  # ... * sign(s); unmasked tensors: no score
            before = scores.detach().clone()
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
