"""Replicates: K trainings of one architecture run as one batched model.

Small networks (the planted-ticket MLPs, LeNet-300-100) spend most of a training step in Python and
kernel launches, not in arithmetic. Training K of them at once, as one model whose weights carry a
leading replicate axis (K, out, in), pays that overhead once per step instead of K times
(``benchmarks/replicates.py``, ``docs/replicates.md``).

Each replicate keeps everything a solo ``Trainer`` run would have:

- its own initial weights (``stack(models)`` stacks K modules of one architecture);
- its own ``Mask`` (pruned entries exactly 0 after every step: one in-place multiply of the stack's
  buffer by the stacked masks, the Trainer's fused multiply for all replicates at once);
- its own data order: replicate k draws, at every step, exactly the batch indices a solo
  ``Trainer(seed=seeds[k])`` draws (the same per-epoch seeded permutation, the same slices), from
  one data set shared by all replicates or from its own (``data`` as a list, one per replicate);
- its own optimiser state: Adam and SGD (momentum, Nesterov, weight decay) are element-wise, so one
  optimiser over the stack's flat (K, P) buffer keeps each replicate's moments in its own row. The
  LR and its schedule (``TrainConfig``) are shared by all replicates.

The loss minimised is the sum over replicates of each replicate's mean loss, so the gradient of
replicate k's slice is exactly the gradient of its own loss. Each replicate's result does not
depend on what else is in the stack: its final weights are bit-identical in a stack of 1, 4 or 8
(``tests/test_replicates.py``; MLPs, both engines). Against a solo ``Trainer`` they agree to
rounding only (fused optimiser kernels treat a tensor's last elements apart, and a batched matmul
may sum in another order than ``mm``; see ``docs/replicates.md``).

A replicate whose training loss (checked every step) or evaluation loss becomes NaN or infinite is
removed from the stack with its optimiser state, and reported in its record (``diverged``); the
others go on, with exactly the weights they would have had without it.

Two engines compute the stacked forward pass:

- ``"bmm"`` (the default for MLPs: stacks of ``nn.Linear`` with ReLU between and a linear output, what
  ``build_model("mlp", ...)`` and ``planting.host_network`` build): ``torch.baddbmm`` per layer;
- ``"vmap"``: ``torch.func.vmap`` over ``torch.func.functional_call`` of the original module, which
  works for any architecture without buffers (conv nets too; there a replicate is independent of
  its neighbours only to rounding: K convolutions become one grouped convolution) but costs more
  per step on small networks (measured in ``docs/replicates.md``).

Example::

    records = train_stacked(models, masks, data, TrainConfig(optimizer="adam", lr=1e-3, batch_size=32,
                            steps="10ep"), seeds=range(len(models)), loss=F.mse_loss)
    records[3].model           # replicate 3's trained model (an nn.Module like the one given)
    records[3].history.records  # its evaluations, as a Trainer's History
    records[3].diverged        # None, or why it was dropped
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import ArrayData, DataSplits
from .masks import Mask, MaskError
from .models.mlp import MLP
from .steps import to_iterations
from .threads import torch_threads
from .training import (Callback, History, Loss, Metric, OptimizerFactory, _batch_generator, _finite,
                       default_device, default_metrics, lr_factor, make_optimizer)

__all__ = ["ALIGN", "ENGINES", "BatchOrder", "ReplicateRecord", "Stack", "StackError", "stack", "stack_optimizer",
           "train_stacked"]

ENGINES = ("auto", "bmm", "vmap")


class StackError(ValueError):
    """Models that cannot be stacked (different architectures, buffers) or arguments that do not fit."""


# --- the stacked model ------------------------------------------------------------------------------
def _mlp_layers(model: nn.Module) -> list[tuple[str, str | None]] | None:
    """(weight name, bias name or None) of each Linear of an MLP in forward order, or None when the
    model is not a plain ReLU MLP (Linear, ReLU, ..., Linear; a leading Flatten allowed)."""
    if isinstance(model, MLP):
        seq, prefix, tail = list(model.hidden.named_children()), "hidden.", [("fc", model.fc)]
    elif isinstance(model, nn.Sequential):
        seq, prefix, tail = list(model.named_children()), "", []
        if seq and isinstance(seq[0][1], nn.Flatten):
            seq = seq[1:]
    else:
        return None
    mods = [(prefix + n, m) for n, m in seq] + tail
    linears = mods[0::2]
    relus = mods[1::2]
    if not linears or not all(isinstance(m, nn.Linear) for _, m in linears):
        return None
    if len(relus) != len(linears) - 1 or not all(type(m) is nn.ReLU for _, m in relus):
        return None
    return [(f"{n}.weight", f"{n}.bias" if m.bias is not None else None) for n, m in linears]


ALIGN = 64  # elements: every replicate's row of the flat buffer is a multiple of this long


# A batch of one is not always computed like one of a batch of many. PyTorch's CPU bmm takes a
# matrix-vector path for a product with one output column, which rounds differently from the batched
# gemm (a planted MLP's 100 -> 1 layer differs in the last bit between a stack of 1 and of 2 or more),
# and with more than one intra-op thread it splits a batch of one's product itself, which rounds
# differently for many shapes. A one-off script compared a batch of 1 with the first of 2 for 10,800
# products (every m, k, n in 1..784 up to LeNet's sizes, the four layouts the engine uses): on one
# thread only those with n = 1 differed; on two, 840 others too. Batches of 2 and 5 agreed everywhere,
# on one thread and on two. So a stack of one computes those products as a stack of two copies and
# keeps the first (``_as_two``), and ``train_stacked`` trains every stack on one intra-op thread,
# so that a replicate's numbers do not depend on the stack's size at the cost of a second copy only
# where it is needed. On a GPU (not checked shape by shape) every product of a stack of one is doubled.
def _as_two(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the product a @ b of a stack of one must run as a stack of two (see above)."""
    return a.shape[0] == 1 and (a.device.type != "cpu" or b.shape[2] == 1 or torch.get_num_threads() > 1)


def _twice(t: torch.Tensor) -> torch.Tensor:
    """(1, m, n) -> (2, m, n), each matrix laid out in memory as ``t``'s (a transposed view stays one)."""
    if t.stride(1) == 1 and t.stride(2) != 1:
        u = t.transpose(1, 2)
        return u.expand(2, *u.shape[1:]).contiguous().transpose(1, 2)
    return t.expand(2, *t.shape[1:]).contiguous()


def _bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    if _as_two(a, b):
        r = torch.bmm(_twice(a), _twice(b))[:1]
        return r if out is None else out.copy_(r)
    return torch.bmm(a, b) if out is None else torch.bmm(a, b, out=out)


def _baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if _as_two(a, b):
        return torch.baddbmm(bias.expand(2, *bias.shape[1:]), _twice(a), _twice(b))[:1]
    return torch.baddbmm(bias, a, b)


def _weight_grad(g: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
    """A layer's weight gradient g^T x (K x out x in) into ``out``. A layer of 1 to 3 inputs (the
    planted tasks' input layers) computes it as (x^T g)^T instead: PyTorch's CPU bmm takes ~98 us
    for (32, 100, 32) @ (32, 32, 1) and ~13 us for (32, 1, 32) @ (32, 32, 100) (2 inputs: 112 vs 26
    us with the copy, 3: 198 vs 61), with the same bits: the sums over the batch run in the same
    order (checked for K = 1..64 and batches 17, 32, 60 in test_replicates; from 4 inputs on they
    do not, and the plain form stays). With one input the transposed view is the same memory. On a
    GPU (launch-bound, other kernels, not checked there) the plain form stays."""
    if x.device.type != "cpu" or x.shape[-1] > 3:
        _bmm(g.transpose(1, 2), x, out=out)
    elif x.shape[-1] == 1:
        _bmm(x.transpose(1, 2), g, out=out.transpose(1, 2))
    else:
        out.copy_(_bmm(x.transpose(1, 2), g).transpose(1, 2))


class Stack:
    """K replicates of one architecture in one flat buffer ``flat`` of shape (K, P).

    Row k holds replicate k's parameters one after the other, padded with zeros to a multiple of
    ``ALIGN`` elements; ``params[name]`` is a (K, *shape) view into it (a leaf that requires grad,
    used by the forward pass). One buffer lets the optimiser step and the mask multiply run as one
    kernel each over all parameters of all replicates, and the padding keeps every element away
    from the scalar tail of a vectorised kernel, so an element's update does not depend on where
    its replicate lies (``stack_optimizer``).

    ``stack(models)`` builds one; ``forward(x)`` maps inputs (K, B, *sample) to outputs (K, B, out)
    (``shared=True``: one input (B, *sample) for all replicates); ``unstack()`` gives the K models
    back.
    """

    def __init__(self, template: nn.Module, flat: torch.Tensor, layout: list[tuple[str, tuple[int, ...], int]],
                 engine: str):
        self.template = template
        self.flat = flat
        self.layout = layout  # (name, shape, offset in the row)
        self.engine = engine
        self.grad = torch.zeros_like(flat)
        self.params: dict[str, torch.Tensor] = {}
        self._grad_views: list[torch.Tensor] = []
        k = flat.shape[0]
        for name, shape, offset in layout:
            n = math.prod(shape)
            self.params[name] = flat.detach()[:, offset:offset + n].view(k, *shape).requires_grad_(True)
            self._grad_views.append(self.grad[:, offset:offset + n].view(k, *shape))
        self._saved: tuple | None = None  # train_forward's activations, for train_backward
        self._layers = _mlp_layers(template) if engine == "bmm" else None
        if engine == "bmm" and self._layers is None:
            raise StackError(f"engine 'bmm' needs a ReLU MLP (Linear, ReLU, ..., Linear); "
                             f"{type(template).__name__} is not one: use engine='vmap'")

    def __len__(self) -> int:
        return self.flat.shape[0]

    def parameters(self) -> list[torch.Tensor]:
        """The per-parameter views (leaves of the forward pass)."""
        return list(self.params.values())

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def to(self, device: torch.device | str) -> "Stack":
        """This stack on ``device`` (a new buffer; the optimiser must be built afterwards)."""
        return Stack(self.template, self.flat.detach().to(device), self.layout, self.engine)

    def select(self, indices: Sequence[int]) -> "Stack":
        """A new stack of the replicates at ``indices`` (a copy)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        return Stack(self.template, self.flat.detach().index_select(0, idx), self.layout, self.engine)

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of ``loss`` (built by ``forward``) into ``self.grad``, the flat buffer's gradient."""
        grads = torch.autograd.grad(loss, self.parameters(), allow_unused=True)
        present = [(view, g) for view, g in zip(self._grad_views, grads) if g is not None]
        if len(present) < len(self._grad_views):
            self.grad.zero_()
        if present:
            torch._foreach_copy_([v for v, _ in present], [g for _, g in present])

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The outputs (K, B, out) for a training step, as a leaf that requires grad; then
        ``train_backward(out, loss)`` writes the parameters' gradients into ``self.grad``.

        The bmm engine runs the MLP's backward pass by hand: each weight gradient is one
        ``torch.bmm(g^T, h, out=<its place in self.grad>)``, in the weight's own (out, in) layout.
        (Autograd through ``baddbmm(b, h, W^T)`` computes the transposed gradient and copies it back,
        plus one more copy into the flat buffer: measured 2x slower for the planted MLP at K=32.)
        """
        if self.engine != "bmm":
            self._saved = None
            return self.forward(x)
        weights = [self.params[w].detach() for w, _ in self._layers]
        biases = [self.params[b].detach() if b is not None else None for _, b in self._layers]
        inputs = []
        h = x.flatten(2)
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(zip(weights, biases)):
            inputs.append(h)
            h = _bmm(h, w.transpose(1, 2)) if b is None else _baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < last:
                h = h.relu_()
        self._saved = (weights, inputs)
        return h.requires_grad_(True)

    def train_backward(self, out: torch.Tensor, loss: torch.Tensor | None, grad_out: torch.Tensor | None = None) -> None:
        """Gradients of ``loss`` (a scalar computed from ``out = train_forward(x)``) into ``self.grad``.

        ``grad_out``: d loss / d out when the caller has it already (``stacked_loss_and_grad``: the
        very values autograd would give); then ``loss`` is not needed (bmm engine only)."""
        if self._saved is None:
            if loss is None:
                raise StackError("train_backward needs the loss on the vmap engine")
            self.backward(loss)
            return
        weights, inputs = self._saved
        self._saved = None
        (g,) = (grad_out,) if grad_out is not None else torch.autograd.grad(loss, out)
        index = {name: i for i, (name, _, _) in enumerate(self.layout)}
        for i in reversed(range(len(self._layers))):
            w_name, b_name = self._layers[i]
            _weight_grad(g, inputs[i], self._grad_views[index[w_name]])
            if b_name is not None:
                torch.sum(g, 1, out=self._grad_views[index[b_name]])
            if i > 0:  # the input of layer i is the ReLU output of layer i - 1
                g = torch.ops.aten.threshold_backward(_bmm(g, weights[i]), inputs[i], 0)  # ReLU's backward

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        if self.engine == "vmap":
            from torch.func import functional_call, vmap

            def call(params: dict[str, torch.Tensor], inp: torch.Tensor) -> torch.Tensor:
                return functional_call(self.template, params, (inp,))

            return vmap(call, in_dims=(0, None if shared else 0))(self.params, x)
        k = len(self)
        h = x.flatten(1) if shared else x.flatten(2)
        if shared:
            h = h.unsqueeze(0).expand(k, *h.shape)
        last = len(self._layers) - 1
        for i, (w_name, b_name) in enumerate(self._layers):
            w = self.params[w_name].transpose(1, 2)
            h = _bmm(h, w) if b_name is None else _baddbmm(self.params[b_name].unsqueeze(1), h, w)
            if i < last:
                h = torch.relu(h)
        return h

    __call__ = forward

    @torch.no_grad()
    def unstack(self) -> list[nn.Module]:
        """The K replicates as separate modules (copies of the template carrying each one's weights)."""
        models = []
        for k in range(len(self)):
            model = copy.deepcopy(self.template).to(self.device)
            model.load_state_dict({n: p[k].detach().clone() for n, p in self.params.items()})
            models.append(model)
        return models


def stack(models: Sequence[nn.Module], engine: str = "auto") -> Stack:
    """Stack modules of one architecture (same type, parameter names, shapes and dtypes).

    ``engine``: "bmm" (ReLU MLPs only), "vmap" (any module without buffers) or "auto" (bmm where it
    applies, else vmap). The models themselves are not changed (their weights are copied).
    """
    models = list(models)
    if not models:
        raise StackError("stack needs at least one model")
    if engine not in ENGINES:
        raise StackError(f"engine {engine!r} is unknown; choose one of {ENGINES}")
    first = models[0]
    named = list(first.named_parameters())
    layout_key = [(n, p.shape, p.dtype) for n, p in named]
    for i, m in enumerate(models[1:], 1):
        if type(m) is not type(first) or [(n, p.shape, p.dtype) for n, p in m.named_parameters()] != layout_key:
            raise StackError(f"model {i} ({type(m).__name__}) differs from model 0 ({type(first).__name__}) in type, "
                             "parameter names, shapes or dtypes: only one architecture can be stacked")
        if any(p.device != named[0][1].device for p in m.parameters()):
            raise StackError(f"model {i} lives on another device than model 0")
    if len({p.dtype for _, p in named}) != 1:
        raise StackError(f"{type(first).__name__} mixes parameter dtypes: they must share one to be stacked")
    if any(True for _ in first.buffers()):
        raise StackError(f"{type(first).__name__} has buffers (e.g. BatchNorm statistics): stacking such models "
                         "is not supported yet")
    if engine == "auto":
        engine = "bmm" if _mlp_layers(first) is not None else "vmap"
    layout, offset = [], 0
    for n, p in named:
        layout.append((n, tuple(p.shape), offset))
        offset += p.numel()
    width = -(-offset // ALIGN) * ALIGN
    flat = torch.zeros(len(models), width, dtype=named[0][1].dtype, device=named[0][1].device)
    with torch.no_grad():
        for k, m in enumerate(models):
            for (n, shape, off), (_, p) in zip(layout, m.named_parameters()):
                flat[k, off:off + p.numel()] = p.detach().reshape(-1)
    return Stack(copy.deepcopy(first), flat, layout, engine)


# --- per-replicate losses -------------------------------------------------------------------------
def _stacked_loss(loss: Loss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(out (K, B, ...), y (K, B, ...)) -> each replicate's mean loss (K,)."""
    if loss is F.cross_entropy:
        def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            k, b = y.shape[:2]
            return F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none").view(k, -1).mean(1)
        return ce
    if loss is F.mse_loss:
        def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if out.shape != y.shape:
                return torch.func.vmap(F.mse_loss)(out, y)
            return (out - y).pow(2).flatten(1).mean(1)
        return mse
    return torch.func.vmap(loss)


LossAndGrad = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor] | None"]


def stacked_loss_and_grad(loss: Loss) -> LossAndGrad | None:
    """(out (K, B, ...), y) -> (each replicate's mean loss (K,), d sum(losses) / d out); None instead
    of the function for a loss without a hand-written gradient, and None instead of the pair for
    inputs it does not cover (then autograd gives it).

    Autograd through ``_stacked_loss`` costs ~8 % of a planted-MLP step at K = 32 (its graph of
    small nodes, run once per step); these are the same kernels in the same order, so the losses and
    gradients are bit for bit autograd's (tested): MSE's gradient is ``(out - y) * (2 / n)``
    (autograd: ``fl(1/n) * (2 (out - y))``, equal because a factor 2 is exact), cross-entropy's
    ``nll_loss_backward`` then ``_log_softmax_backward_data`` with ``fl(1/B)`` per sample."""
    if loss is F.mse_loss:
        def mse(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
            if out.shape != y.shape or out.dtype != torch.float32 or y.dtype != torch.float32:
                return None
            diff = out.detach() - y
            losses = diff.pow(2).flatten(1).mean(1)
            return losses, diff.mul_(2.0 / diff[0].numel())
        return mse
    if loss is F.cross_entropy:
        def ce(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
            if out.dim() != 3 or y.dim() != 2 or out.dtype != torch.float32 or y.dtype != torch.long:
                return None
            k, b = y.shape
            logits, target = out.detach().flatten(0, 1), y.flatten(0, 1)
            logp = torch.log_softmax(logits, 1)
            per_sample, total_weight = torch.ops.aten.nll_loss_forward(logp, target, None, 0, -100)
            losses = per_sample.view(k, b).mean(1)
            upstream = torch.full((k * b,), 1.0 / b, dtype=logits.dtype, device=logits.device)
            g = torch.ops.aten.nll_loss_backward(upstream, logp, target, None, 0, -100, total_weight)
            g = torch.ops.aten._log_softmax_backward_data(g, logp, 1, logits.dtype)
            return losses, g.view_as(out)
        return ce
    return None


@dataclass(frozen=True)
class _Split:
    """One split's data for the stack: shared by all replicates (x (N, ...)), or one per replicate
    (x (K, N, ...) over the replicates given, in order)."""

    x: torch.Tensor
    y: torch.Tensor
    shared: bool

    def __len__(self) -> int:
        return self.x.shape[0] if self.shared else self.x.shape[1]

    def rows(self, active: Sequence[int], total: int) -> "_Split":
        if self.shared or len(active) == total:
            return self
        idx = torch.as_tensor(list(active), dtype=torch.long, device=self.x.device)
        return _Split(self.x.index_select(0, idx), self.y.index_select(0, idx), False)


@torch.no_grad()
def _evaluate(st: Stack, data: _Split, loss: Loss, metrics: Mapping[str, Metric],
              batch_size: int = 1000) -> list[dict[str, float]]:
    """``training.evaluate`` for every replicate of ``st``: mean loss and mean metrics per replicate."""
    k = len(st)
    loss_sum = torch.zeros(k, dtype=torch.float64, device=st.device)
    sums = {name: torch.zeros(k, dtype=torch.float64, device=st.device) for name in metrics}
    for i in range(0, len(data), batch_size):
        if data.shared:
            x, y = data.x[i:i + batch_size], data.y[i:i + batch_size]
            ys = y.unsqueeze(0).expand(k, *y.shape)
        else:
            x, ys = data.x[:, i:i + batch_size], data.y[:, i:i + batch_size]
        out = st.forward(x, shared=data.shared)
        if loss is F.cross_entropy:
            ce = F.cross_entropy(out.flatten(0, 1), ys.flatten(0, 1), reduction="none")
            loss_sum += ce.view(k, -1).sum(1).double()
        else:
            loss_sum += _stacked_loss(loss)(out, ys).double() * ys.shape[1]
        for name, metric in metrics.items():
            sums[name] += torch.stack([torch.as_tensor(metric(out[r], ys[r])) for r in range(k)]).double()
    n = max(1, len(data))
    losses = (loss_sum / n).tolist()
    means = {name: (s / n).tolist() for name, s in sums.items()}
    return [{"loss": losses[r], **{name: means[name][r] for name in metrics}} for r in range(k)]


def _per_replicate(splits: Sequence[ArrayData], what: str, device: torch.device) -> _Split:
    first = splits[0]
    for k, d in enumerate(splits[1:], 1):
        if len(d) != len(first) or d.x.shape[1:] != first.x.shape[1:] or d.y.shape[1:] != first.y.shape[1:] \
                or d.x.dtype != first.x.dtype or d.y.dtype != first.y.dtype:
            raise StackError(f"per-replicate data: the {what} split of replicate {k} differs from replicate 0's in "
                             "size, sample shape or dtype; every replicate needs data of the same shapes")
    return _Split(torch.stack([d.x for d in splits]).to(device), torch.stack([d.y for d in splits]).to(device), False)


def _stack_data(data: DataSplits | Sequence[DataSplits], n_models: int,
                dev: torch.device) -> tuple[_Split, _Split, Callable | None]:
    """(train, test, augment) on ``dev``: one data set for all replicates, or one per replicate (the
    training splits concatenated to (K * N, ...), so a step gathers every replicate's batch at once)."""
    if isinstance(data, DataSplits):
        return (_Split(data.train.x.to(dev), data.train.y.to(dev), True),
                _Split(data.test.x.to(dev), data.test.y.to(dev), True), data.augment)
    data = list(data)
    if len(data) != n_models:
        raise StackError(f"per-replicate data: {len(data)} data sets for {n_models} models")
    if any(d.augment is not data[0].augment for d in data):
        raise StackError("per-replicate data: every replicate's data must use the same augmentation")
    train = _per_replicate([d.train for d in data], "train", dev)
    test = _per_replicate([d.test for d in data], "test", dev)
    return _Split(train.x.flatten(0, 1), train.y.flatten(0, 1), False), test, data[0].augment


def _train_size(train: _Split, n_models: int) -> int:
    """Training samples per replicate (``_stack_data``'s per-replicate split holds K * N rows)."""
    return len(train) if train.shared else train.x.shape[0] // n_models


def _train_rows(train_rows: Sequence[torch.Tensor], train: _Split, n_models: int, dev: torch.device) -> torch.Tensor:
    """``train_rows`` as one (K, n) int64 tensor on ``dev``, checked against the shared split."""
    if not train.shared:
        raise StackError("train_rows selects rows of one shared data set; give one DataSplits, not one per replicate")
    if len(train_rows) != n_models or len({len(r) for r in train_rows}) != 1:
        raise StackError(f"train_rows: one row list per model, all of one length; got {len(train_rows)} lists of "
                         f"lengths {sorted({len(r) for r in train_rows})} for {n_models} models")
    rows = torch.stack([torch.as_tensor(r, dtype=torch.long) for r in train_rows]).to(dev)
    if rows.numel() and not (0 <= int(rows.min()) and int(rows.max()) < len(train)):
        raise StackError(f"train_rows: row numbers must lie in [0, {len(train)})")
    return rows


def _batch(train: _Split, batches: "BatchOrder", step: int, active: Sequence[int], n_models: int, n_train: int,
           batch_size: int, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The active replicates' training batches at ``step``: x (k, B, ...), y (k, B, ...). ``rows``
    (K, n_train): replicate k's i-th training sample is row ``rows[k, i]`` of the shared split."""
    k = len(active)
    idx = batches.indices(step, active)
    if rows is not None:
        mine = rows if k == n_models else rows.index_select(
            0, torch.as_tensor(list(active), dtype=torch.long, device=rows.device))
        idx = mine.gather(1, idx)
    elif not train.shared:
        offsets = torch.as_tensor(list(active), dtype=torch.long, device=idx.device) * n_train
        idx = idx + offsets.unsqueeze(1)
    idx = idx.reshape(-1)
    return (train.x.index_select(0, idx).view(k, batch_size, *train.x.shape[1:]),
            train.y.index_select(0, idx).view(k, batch_size, *train.y.shape[1:]))


# --- training -------------------------------------------------------------------------------------
@dataclass
class ReplicateRecord:
    """What one replicate of ``train_stacked`` produced.

    ``model``: the trained module (like the one given; for a dropped replicate: its weights when it
    was dropped). ``history``: its evaluations (the keys of a ``Trainer``'s records). ``diverged``:
    None, or the reason it was dropped; ``steps``: iterations it completed.
    """

    index: int
    seed: int
    model: nn.Module
    history: History = field(default_factory=History)
    diverged: str | None = None
    steps: int = 0
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # step -> weights (snapshot_steps)
    mask: Mask | None = None  # its mask at the end (callbacks may change it: RigL, SET, GMP)

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()


def _stacked_mask(st: Stack, models: Sequence[nn.Module], masks: Sequence[Mask | None]) -> torch.Tensor | None:
    """The masks as one 0/1 tensor shaped like ``st.flat`` (1 where a replicate's mask keeps an entry
    or does not cover the parameter, 0 where it prunes and in the padding), or None: no mask at all."""
    if all(mask is None for mask in masks):
        return None
    out = torch.zeros_like(st.flat)
    for k, (model, mask) in enumerate(zip(models, masks)):
        if mask is not None:
            try:
                mask.check_fits(model)
            except MaskError as exc:
                raise MaskError(f"mask of replicate {k}: {exc}") from None
        _mask_row(st, mask, out[k])
    return out


def _mask_row(st: Stack, mask: Mask | None, out: torch.Tensor) -> torch.Tensor:
    """One replicate's row of the stacked mask into ``out`` (zeros: its padding stays 0): 1 where
    ``mask`` keeps an entry or does not cover the parameter, 0 where it prunes."""
    for name, shape, offset in st.layout:
        n = math.prod(shape)
        kept = mask[name] if mask is not None and name in mask else None
        out[offset:offset + n] = 1 if kept is None else kept.reshape(-1).to(device=out.device, dtype=out.dtype)
    return out


def stack_optimizer(params: Sequence[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over a stack's flat buffer (``[stack.flat]``); fused where
    ``cfg.fused_optimizer`` and PyTorch has a fused kernel, as ``training.make_optimizer``.

    A fused CPU kernel rounds the last (size mod vector width) elements of a tensor differently from
    the others, so over per-parameter stacked tensors a replicate's update would depend on where its
    slice lies (measured: after 20 Adam steps its weights differed in the last bits between a stack
    of 1 and of 4). Over the flat buffer, whose rows are multiples of ``ALIGN`` elements, no element
    falls in such a tail, whatever the number of replicates.
    """
    return make_optimizer(params, cfg, foreach=True)


class BatchOrder:
    """The batch indices of each replicate: at step s, replicate k gets exactly the indices a solo
    ``Trainer(seed=seeds[k])`` uses (a slice of the permutation drawn from (seed, epoch))."""

    def __init__(self, seeds: Sequence[int], n: int, batch_size: int, device: torch.device | str = "cpu"):
        self.seeds, self.n, self.batch_size, self.device = list(seeds), n, batch_size, torch.device(device)
        self.iterations_per_epoch = n // batch_size
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def indices(self, step: int, replicates: Sequence[int] | None = None) -> torch.Tensor:
        """(len(replicates), batch_size) sample indices at ``step`` (default: all replicates)."""
        epoch, offset = divmod(step, self.iterations_per_epoch)
        if epoch != self._epoch:
            self._perm = torch.stack([torch.randperm(self.n, generator=_batch_generator(s, 1, epoch))
                                      for s in self.seeds]).to(self.device)
            self._epoch = epoch
        rows = self._perm
        if replicates is not None and len(replicates) != len(self.seeds):
            rows = rows.index_select(0, torch.as_tensor(list(replicates), dtype=torch.long, device=self.device))
        return rows[:, offset * self.batch_size:(offset + 1) * self.batch_size]


def state_rows(state: Mapping[str, Any], idx: torch.Tensor, k: int) -> dict[str, Any]:
    """An element-wise optimiser's state over a (k, P) buffer, keeping the replicates' rows ``idx``
    (moments, momentum); scalars such as the step count stay as they are."""
    return {key: (v.index_select(0, idx) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == k else v)
            for key, v in state.items()}


class _ReplicateTrainer:
    """What a Trainer callback (``Callback.fn(trainer, step)``) sees of one replicate of a stack: its
    ``model`` (parameters and gradients are views into its rows of the stack's buffers, so what the
    callback writes is trained on), ``mask`` and ``set_mask`` (zeroes the pruned weights now, logs the
    change in ``history.mask_events`` as the Trainer does), ``optimizer.state`` (per parameter, views
    into its rows of the stack's optimiser state), ``history`` and ``step``. RigL, SET and GMP
    (``pruning/dynamic.py``) run on it unchanged."""

    def __init__(self, run: "_Run", k: int, record: "ReplicateRecord", masks: list[Mask | None]):
        self._run, self._k, self._masks = run, k, masks
        self.history, self.step = record.history, None
        self.stop_requested = False
        self._built_for: object = None

    def _build(self) -> None:
        """(Re)make the views; the stack's buffers are new ones after a replicate was dropped."""
        run = self._run
        if self._built_for is run.stack:
            return
        pos = run.active.index(self._k)
        st = run.stack
        model = copy.deepcopy(st.template)
        state = run.optimizer.state.get(st.flat, {})
        self._state: dict[torch.Tensor, dict[str, Any]] = {}
        for name, shape, offset in st.layout:
            n = math.prod(shape)
            module_name, _, attr = name.rpartition(".")
            param = nn.Parameter(st.flat.detach()[pos, offset:offset + n].view(shape))
            param.grad = st.grad[pos, offset:offset + n].view(shape)
            setattr(model.get_submodule(module_name) if module_name else model, attr, param)
            self._state[param] = {key: (v[pos, offset:offset + n].view(shape) if torch.is_tensor(v) and v.dim() == 2
                                        else v) for key, v in state.items()}
        self._model, self._pos = model, pos
        self._built_for = st if state else None  # no optimiser state yet (before the first step): rebuild later

    @property
    def model(self) -> nn.Module:
        self._build()
        return self._model

    @property
    def optimizer(self) -> Any:
        self._build()
        return SimpleNamespace(state=self._state)

    @property
    def mask(self) -> Mask | None:
        return self._masks[self._k]

    def set_mask(self, mask: Mask | None) -> None:
        if mask is None:
            raise StackError("a callback of a stacked training cannot remove a replicate's mask")
        self._build()
        run, pos = self._run, self._pos
        self._masks[self._k] = mask
        if self.step is not None:
            self.history.mask_events.append({"step": self.step, "kept": mask.kept_per_layer()})
        if run.mask is None:  # no replicate had a mask: 1 everywhere but the padding
            run.mask = torch.zeros_like(run.stack.flat)
            for r in range(run.mask.shape[0]):
                _mask_row(run.stack, None, run.mask[r])
        row = _mask_row(run.stack, mask, torch.zeros_like(run.mask[pos]))
        run.mask[pos] = row
        with torch.no_grad():
            run.stack.flat[pos].mul_(row)

    def request_stop(self) -> None:
        """End this replicate's training after the current step (as ``Trainer.request_stop``); the
        others go on."""
        self.stop_requested = True


class _Run:
    """The mutable state of one stacked training (the active replicates shrink when one diverges)."""

    def __init__(self, st: Stack, mask: torch.Tensor | None, active: list[int], seeds: list[int],
                 optimizer: OptimizerFactory):
        self.make_optimizer = optimizer
        self.active = active
        self.seeds = seeds
        self.set(st, mask, None)

    def set(self, st: Stack, mask: torch.Tensor | None, state: dict | None) -> None:
        self.stack = st
        self.mask = mask
        st.flat.grad = st.grad
        self.optimizer = self.make_optimizer([st.flat])
        if state:
            self.optimizer.state[st.flat] = state

    @torch.no_grad()
    def reapply_mask(self) -> None:
        if self.mask is not None:
            self.stack.flat.mul_(self.mask)

    def drop(self, positions: Sequence[int]) -> None:
        """Remove the replicates at ``positions`` (of the active list), optimiser state included."""
        keep = [i for i in range(len(self.active)) if i not in set(positions)]
        idx = torch.as_tensor(keep, dtype=torch.long, device=self.stack.device)
        state = state_rows(self.optimizer.state.get(self.stack.flat, {}), idx, len(self.active))
        self.active = [self.active[i] for i in keep]
        self.seeds = [self.seeds[i] for i in keep]
        self.set(self.stack.select(keep), None if self.mask is None else self.mask.index_select(0, idx), state)


def train_stacked(
    models: Sequence[nn.Module],
    masks: Sequence[Mask | None] | Mask | None,
    data: DataSplits | Sequence[DataSplits],
    cfg: TrainConfig,
    seeds: Sequence[int],
    *,
    loss: Loss = F.cross_entropy,
    metrics: Mapping[str, Metric] | None = None,
    validation: ArrayData | Sequence[ArrayData] | None = None,
    device: torch.device | str | None = None,
    engine: str = "auto",
    start_step: int = 0,
    end_step: int | None = None,
    optimizer: OptimizerFactory | None = None,
    train_rows: Sequence[torch.Tensor] | None = None,
    lr_override: float | None = None,
    snapshot_steps: Sequence[int] = (),
    callbacks: Sequence[Sequence[Callback]] | None = None,
    sub_stacks: int | None = None,
) -> list[ReplicateRecord]:
    """Train ``models`` (one architecture) together, replicate k under ``masks[k]`` with ``seeds[k]``.

    Does for every replicate what ``Trainer(models[k], data, cfg, masks[k], seed=seeds[k], loss=loss,
    metrics=metrics, validation=validation, callbacks=callbacks[k]).train(start_step, end_step)`` does
    (same batches, same LR schedule, same evaluations, callbacks at the same points, each seeing its
    own replicate through ``_ReplicateTrainer``), except regularizers and parameter selection (all
    parameters are trained). A callback's ``trainer.request_stop()`` ends its own replicate after
    that step, evaluated there as the Trainer does (``record.steps``); the others go on, with the
    numbers they would have had without it. ``masks``: one per model, or one Mask (or None) for all. ``data`` (and
    ``validation``): one data set for all replicates, or one per replicate (same sizes, sample
    shapes and dtypes; e.g. the planted tasks, drawn per seed). The given
    models are not changed; the trained ones are in the records, in the order given.
    ``optimizer([flat])`` builds the optimiser over the stack's flat buffer (default
    ``stack_optimizer``: the one ``cfg`` names); it must be element-wise for replicates to stay
    independent.
    A replicate whose training loss (every step) or evaluation loss becomes non-finite is dropped
    (``record.diverged`` says where); the others finish as if it had never been there.
    ``train_rows``: with one shared ``data``, replicate k trains on the rows ``train_rows[k]`` of
    ``data.train`` only (all of one length), exactly as a Trainer given ``data.train.subset(rows)``:
    each seed's training part after its own validation split, without K copies of the data set.
    ``lr_override``: a constant LR instead of the schedule's (the Trainer's ``train(lr_override=)``).
    ``snapshot_steps``: after that many iterations each replicate's weights are kept in
    ``record.snapshots[step]`` (what a Trainer callback at that step sees, e.g. a rewind point).
    ``sub_stacks`` (CPU only): train the replicates as this many sub-stacks at once, one thread each.
    Default: as many as ``torch.get_num_threads()`` where each sub-stack keeps at least 2 replicates
    and ``SPLIT_MIN_WORK`` weight x sample products per step, else one stack. On a CPU every
    (sub-)stack runs on one intra-op thread, whatever ``torch.get_num_threads()`` says: several
    intra-op threads made a replicate's bits depend on its stack's size. A replicate's numbers do
    not depend on its neighbours, so they are the same bits in any split; and the sub-stacks use
    the cores better than intra-op threads did (planted MLP, K = 32, 2 threads: 1.22x the
    replicate-steps per second), while small sub-stacks lose more to the threads' turns at the
    interpreter than they gain (``docs/replicates.md``).
    """
    models = list(models)
    seeds = [int(s) for s in seeds]
    if isinstance(masks, Mask) or masks is None:
        masks = [masks] * len(models)
    masks = list(masks)  # each replicate's current mask (a callback may change it)
    callbacks = [list(c) for c in callbacks] if callbacks is not None else [[] for _ in models]
    if not (len(models) == len(masks) == len(seeds) == len(callbacks)):
        raise StackError(f"one mask, seed and callback list per model: got {len(models)} models, {len(masks)} masks, "
                         f"{len(seeds)} seeds, {len(callbacks)} callback lists")
    if sub_stacks is not None and sub_stacks < 1:
        raise ValueError(f"sub_stacks must be >= 1, got {sub_stacks}")
    dev = torch.device(device) if device is not None else default_device()
    if dev.type != "cpu":
        parts = 1
    elif sub_stacks is not None:
        parts = min(len(models), sub_stacks)
    else:
        parts = _auto_sub_stacks(len(models), sum(p.numel() for p in models[0].parameters()) * cfg.batch_size)
    args = dict(loss=loss, metrics=metrics, dev=dev, engine=engine, start_step=start_step, end_step=end_step,
                optimizer=optimizer, lr_override=lr_override, snapshot_steps=snapshot_steps)
    # A stack on a CPU trains on one intra-op thread (several threads: as sub-stacks, one thread each).
    # With 2 intra-op threads, stacks of 2 and 3 LeNet-300-100-shaped MLPs gave other bits than stacks
    # of 1 and 8 and than 1 thread (some kernel of the step splits its work by the thread count); on
    # one thread every stack size gives the same bits, and a stack of one needs no second copy of its
    # products (``_as_two``).
    if parts <= 1:
        with torch_threads(1) if dev.type == "cpu" else contextlib.nullcontext():
            return _train_stack(models, masks, data, cfg, seeds, validation=validation, train_rows=train_rows,
                                callbacks=callbacks, **args)
    groups = [list(g) for g in _split(len(models), parts)]
    cancel = threading.Event()

    def pick(value: Any, group: list[int]) -> Any:  # a per-replicate argument's part for one group
        return value if value is None or isinstance(value, (DataSplits, ArrayData)) else [value[i] for i in group]

    def train_group(group: list[int]) -> list[ReplicateRecord]:
        torch.set_num_threads(1)  # this thread's intra-op threads (OpenMP's setting is per thread)
        records = _train_stack([models[i] for i in group], [masks[i] for i in group],
                               pick(data, group), cfg, [seeds[i] for i in group],
                               validation=pick(validation, group),
                               train_rows=None if train_rows is None else [train_rows[i] for i in group],
                               callbacks=[callbacks[i] for i in group], cancel=cancel, **args)
        for rec, i in zip(records, group):
            rec.index = i
        return records

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=parts, thread_name_prefix="ticketlab-stack")
    with torch_threads(1), pool:
        futures = [pool.submit(train_group, g) for g in groups]
        try:
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            failed = [f.exception() for f in futures if f.done() and f.exception() is not None]
            if failed:
                raise failed[0]
            done = [f.result() for f in futures]
        except BaseException:  # a group failed or the user interrupted: stop the others at their next step
            cancel.set()
            raise
    records: list[ReplicateRecord] = [None] * len(models)  # type: ignore[list-item]
    for group, part in zip(groups, done):
        for i, rec in zip(group, part):
            records[i] = rec
    return records


# Measured on this project's 2-core machine (planted MLP, ~660k weight x sample products per replicate
# and step; LeNet-300-100 at batch 60, ~16M), two sub-stacks against one stack on 2 intra-op threads:
# planted K = 8 0.57x, 16 0.98x, 32 1.22x, 64 1.39x; LeNet 1.0-1.4x from K = 4 on. Below this much
# work per sub-stack and step, its kernels are too short for two threads to gain.
SPLIT_MIN_WORK = 10_000_000


def _auto_sub_stacks(k: int, work_per_replicate: int) -> int:
    """How many sub-stacks ``train_stacked`` trains at once by default (1: one stack)."""
    threads = torch.get_num_threads()
    return max(1, min(threads, k // 2, (k * work_per_replicate) // SPLIT_MIN_WORK))


def _split(n: int, parts: int) -> list[range]:
    """0..n-1 in ``parts`` contiguous runs whose lengths differ by at most one."""
    size, extra = divmod(n, parts)
    starts = [i * size + min(i, extra) for i in range(parts + 1)]
    return [range(a, b) for a, b in zip(starts, starts[1:])]


class _Cancelled(Exception):
    """Another sub-stack of the same ``train_stacked`` call failed: this one stops too."""


def _train_stack(
    models: list[nn.Module],
    masks: list[Mask | None],
    data: DataSplits | Sequence[DataSplits],
    cfg: TrainConfig,
    seeds: list[int],
    *,
    loss: Loss,
    metrics: Mapping[str, Metric] | None,
    validation: ArrayData | Sequence[ArrayData] | None,
    dev: torch.device,
    engine: str,
    start_step: int,
    end_step: int | None,
    optimizer: OptimizerFactory | None,
    train_rows: Sequence[torch.Tensor] | None,
    lr_override: float | None,
    snapshot_steps: Sequence[int],
    callbacks: list[list[Callback]],
    cancel: threading.Event | None = None,
) -> list[ReplicateRecord]:
    """``train_stacked`` for one stack (in the calling thread)."""
    st = stack(models, engine).to(dev)
    n_models = len(models)
    train, test, augment = _stack_data(data, n_models, dev)
    val: _Split | None = None
    if isinstance(validation, ArrayData):
        val = _Split(validation.x.to(dev), validation.y.to(dev), True) if len(validation) else None
    elif validation is not None:
        val = _per_replicate(list(validation), "validation", dev)
        if len(val) == 0:
            val = None
    metrics = default_metrics(ArrayData(test.x[:1] if test.shared else test.x[0, :1],
                                        test.y[:1] if test.shared else test.y[0, :1])) if metrics is None \
        else dict(metrics)
    n_train = _train_size(train, n_models)
    rows: torch.Tensor | None = None
    if train_rows is not None:
        rows = _train_rows(train_rows, train, n_models, dev)
        n_train = rows.shape[1]
    ipe = n_train // cfg.batch_size
    if ipe == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({n_train} samples)")
    total = to_iterations(cfg.steps, ipe)
    eval_every = to_iterations(cfg.eval_every, ipe)
    end = total if end_step is None else end_step
    if not 0 <= start_step <= end:
        raise ValueError(f"start step {start_step} must lie in [0, {end}]")
    factory = optimizer or (lambda params: stack_optimizer(params, cfg))
    run = _Run(st, _stacked_mask(st, models, masks), list(range(len(models))), seeds, factory)
    records = [ReplicateRecord(k, s, models[k]) for k, s in enumerate(seeds)]
    views = {k: _ReplicateTrainer(run, k, records[k], masks) for k in range(len(models)) if callbacks[k]}

    def run_callbacks(step: int) -> None:
        for k in list(run.active):
            for cb in callbacks[k]:
                if cb.due(step):
                    views[k].step = step
                    cb.fn(views[k], step)
    step_loss = _stacked_loss(loss)
    loss_and_grad = stacked_loss_and_grad(loss)
    autocast_off = cfg.precision != "bf16"
    autocast = contextlib.nullcontext() if autocast_off else torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    batches = BatchOrder(seeds, n_train, cfg.batch_size, dev)

    def finish(positions: Sequence[int], reason: Callable[[int], str | None], step: int) -> None:
        """Record and drop the replicates at ``positions`` of the active list (``reason``: why it
        diverged, None for a requested stop)."""
        dropped = run.stack.select(positions).unstack()
        for pos, model in zip(positions, dropped):
            rec = records[run.active[pos]]
            rec.model, rec.diverged, rec.steps = model, reason(pos), step
        run.drop(positions)

    def evaluate_now(step: int, train_losses: list[float] | None, since: int,
                     positions: Sequence[int] | None = None) -> None:
        """Evaluate the active replicates at ``positions`` (default: all) and drop those whose loss is
        not finite."""
        positions = list(range(len(run.active))) if positions is None else list(positions)
        chosen = [run.active[pos] for pos in positions]
        part = run.stack if len(chosen) == len(run.active) else run.stack.select(positions)
        rows = [{"step": step} for _ in chosen]
        if train_losses is not None:
            for row, value in zip(rows, train_losses):
                row["train_loss"] = value
        for split, split_data in (("val", val), ("test", test)):
            if split_data is not None:
                subset = split_data.rows(chosen, n_models)
                for row, values in zip(rows, _evaluate(part, subset, loss, metrics)):
                    row.update({f"{split}_{key}": value for key, value in values.items()})
        bad = []
        for pos, k, row in zip(positions, chosen, rows):
            if masks[k] is not None:
                row["density"] = masks[k].density
                row["layer_density"] = masks[k].densities()
            records[k].history.records.append(row)
            if any(key.endswith("loss") and not _finite(v) for key, v in row.items()):
                bad.append(pos)
        if bad:
            rows_at = dict(zip(positions, rows))
            def reason(pos: int) -> str:
                row = rows_at[pos]
                losses = ", ".join(f"{key} = {v}" for key, v in row.items() if key.endswith("loss") and not _finite(v))
                return f"evaluation at step {step} (training since step {since}): {losses}"
            finish(bad, reason, step)

    snapshots = frozenset(snapshot_steps)

    def snapshot(step: int) -> None:
        if step in snapshots:
            for model, k in zip(run.stack.unstack(), run.active):
                records[k].snapshots[step] = {n: t.clone() for n, t in model.state_dict().items()}

    run.reapply_mask()
    for view in views.values():
        view.step = start_step
    evaluate_now(start_step, None, start_step)
    run_callbacks(start_step)
    snapshot(start_step)
    loss_sum = torch.zeros(len(run.active), device=dev)  # float32 sums, as the Trainer's
    loss_count = 0
    since = start_step
    for step in range(start_step, end):
        if not run.active:
            break
        if cancel is not None and cancel.is_set():
            raise _Cancelled("stopped: another sub-stack of this training failed")
        lr = lr_override if lr_override is not None else cfg.lr * lr_factor(step, cfg, total, ipe)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        while True:
            k = len(run.active)
            x, y = _batch(train, batches, step, run.active, n_models, n_train, cfg.batch_size, rows)
            if augment is not None:
                x = torch.stack([augment(x[i], _batch_generator(run.seeds[i], 2, step)) for i in range(k)])
            grad_out = None
            with autocast:
                out = run.stack.train_forward(x) if autocast_off else run.stack(x)
                pair = loss_and_grad(out, y) if loss_and_grad is not None and run.stack.engine == "bmm" \
                    and autocast_off else None
                losses, grad_out = pair if pair is not None else (step_loss(out, y), None)
            finite = torch.isfinite(losses)
            if bool(finite.all()):
                break
            bad = [int(i) for i in torch.nonzero(~finite).flatten()]
            values = losses.detach().tolist()
            finish(bad, lambda pos: f"training loss {values[pos]} at step {step} (after {step} updates; "
                                    f"lr {lr:g})", step)
            keep = [i for i in range(k) if i not in bad]
            loss_sum = loss_sum[keep]
            if not run.active:
                break
        if not run.active:
            break
        if autocast_off:
            run.stack.train_backward(out, None if grad_out is not None else losses.sum(), grad_out)
        else:
            run.stack.backward(losses.sum())
        if cfg.mask_gradients and run.mask is not None:
            run.stack.grad.mul_(run.mask)
        run.optimizer.step()
        run.reapply_mask()
        loss_sum += losses.detach()
        loss_count += 1
        done = step + 1
        if done % eval_every == 0 or done == end:
            evaluate_now(done, [v / loss_count for v in loss_sum.tolist()], since)
            keep = len(run.active)
            loss_sum = torch.zeros(keep, device=dev)
            loss_count = 0
            since = done
        if views:
            run_callbacks(done)
        snapshot(done)
        stopping = [k for k in run.active if k in views and views[k].stop_requested]
        if stopping:  # as the Trainer: evaluated at this step (unless it just was), then ended
            before = list(run.active)
            pending = [before.index(k) for k in stopping if records[k].history.records[-1]["step"] != done]
            if pending:
                sums = loss_sum.tolist()
                evaluate_now(done, [sums[pos] / max(1, loss_count) for pos in pending], since, pending)
            ending = [run.active.index(k) for k in stopping if k in run.active]  # not dropped as diverged just now
            if ending:
                finish(ending, lambda pos: None, done)
            loss_sum = loss_sum[[before.index(k) for k in run.active]]
    for model, k in zip(run.stack.unstack(), run.active):
        records[k].model, records[k].steps = model, end
    for record, mask in zip(records, masks):
        record.mask = mask
    return records
