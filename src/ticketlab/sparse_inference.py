"""Sparse inference for exported tickets: a Linear layer in the form measured fastest, and a flat
runner for models that are a plain chain of layers.

Why a chain runner: at LeNet-300-100's size a 2%-dense ticket's forward at batch 60 took ~100 us as
modules, of which the ``nn.Module`` calls (~1 us each), the ReLUs' fresh outputs and the
``F.embedding_bag`` wrapper's checks were a quarter; as a chain it takes ~75 us. :class:`SparseChain` runs a chain model (``torch.fx`` finds it: each step feeds only the
next, e.g. flatten -> Linear -> ReLU -> ... -> Linear) as one loop over plain functions, with each
ReLU applied in place to the fresh output of the Linear before it.

The forms of a :class:`SparseLinear` (chosen per layer and batch size by measurement, see
:func:`choose_forms`):

- ``dense``: the ordinary matrix product;
- ``csr``: ``torch.sparse_csr`` weight (int32 indices), ``addmm(bias, W_csr, x^T)``;
- ``csr_rows``: the same CSR arrays computed by ``torch.embedding_bag``: output j of every sample is
  the sum of W[j, k] x[:, k] over the kept k of row j, gathered as rows of x^T (one vectorised pass
  over the batch per kept weight).

and of a :class:`SparseConv2d`: ``dense`` or ``unfold`` (the kept weights over ``F.unfold``'s patches).

:func:`eliminate_dead_units` removes, exactly, the hidden units of a chain's Linear layers that cannot
change its output (no outgoing weights; or no incoming ones, their constant folded into the next
bias): at 2% with every layer pruned alike, LeNet-300-100 keeps 96/300 and 18/100 of them.
"""
from __future__ import annotations

import functools
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CONV_FORMS", "SPARSE_FORMS", "FORMS", "SparseChain", "SparseConv2d", "SparseLinear", "Timer",
           "chain_plans", "chain_steps", "choose_form", "choose_forms", "convertible_conv", "eliminate_dead_units",
           "linear_runs", "measure_group", "measure_latency", "timed_rounds"]

SPARSE_FORMS = ("csr", "csr_rows")
FORMS = ("dense", *SPARSE_FORMS)
CONV_FORMS = ("dense", "unfold")
Timer = Callable[[Callable[[], Any]], float]


class FormError(ValueError):
    """A SparseLinear asked for a form that does not exist."""


def features_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` (batch x features) as a contiguous features x batch matrix, without a copy when ``x`` is
    already the transposed view a sparse layer before returned."""
    if x.stride(0) == 1:  # (0.3 us; x.t().is_contiguous() costs 1.6 us, a tenth of the copy below)
        xt = x.t()
        if xt.is_contiguous():
            return xt
    elif x.dtype == torch.float32:
        try:  # a CPU tensor that needs no grad (x.device makes an object per call, the checks cost 0.5 us)
            return torch.from_numpy(np.ascontiguousarray(x.numpy().T))  # ~1.5x faster than torch's transpose copy
        except (RuntimeError, TypeError):  # numpy() refuses a tensor on a GPU or one that requires grad
            pass
    return x.t().contiguous()


def flat_features_major(x: torch.Tensor) -> torch.Tensor:
    """:func:`features_major` of ``x.flatten(1)`` (samples' features in rows), in one numpy copy."""
    if x.dtype == torch.float32 and x.dim() >= 2 and x.shape[0]:
        try:
            return torch.from_numpy(np.ascontiguousarray(x.numpy().reshape(x.shape[0], -1).T))
        except (RuntimeError, TypeError):  # a tensor on a GPU or one that requires grad
            pass
    return features_major(x.flatten(1))


class SparseLinear(nn.Module):
    """``nn.Linear`` for inference with its weight in the form measured fastest (module docstring).

    The sparse forms work on transposed activations (features x batch) and return a transposed view,
    so a chain of them never copies; a dense layer after them multiplies in that layout too.
    ``forms`` maps a measured batch size to the form chosen there, e.g. ``{1: "dense", 60: "csr_rows"}``;
    a call uses the form of the measured batch nearest its own (in log scale). Weight and bias are
    buffers (no gradients): an exported ticket is for inference.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, forms: Mapping[int, str]):
        super().__init__()
        bad = {b: f for b, f in forms.items() if f not in FORMS}
        if not forms or bad:
            raise FormError(f"SparseLinear forms must map batch sizes to one of {FORMS}, got {dict(forms)}")
        self.out_features, self.in_features = weight.shape
        sizes = sorted(int(b) for b in forms)
        self.small_form, self.large_form = forms[sizes[0]], forms[sizes[-1]]
        self.threshold = math.sqrt(sizes[0] * sizes[-1])
        weight = weight.detach().float().contiguous()
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("bias_column", None if bias is None else self.bias[:, None].clone())
        uses = {self.small_form, self.large_form}
        self.register_buffer("weight", weight if "dense" in uses else None)
        for name in ("crow", "col", "values"):  # the CSR arrays, int32 indices: no conversion per call
            self.register_buffer(name, None)
        if uses & set(SPARSE_FORMS):
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                c = weight.to_sparse_csr()
            self.crow, self.col = c.crow_indices().to(torch.int32), c.col_indices().to(torch.int32)
            self.values = c.values().contiguous()
        self._csr: torch.Tensor | None = None  # the csr form's tensor over those arrays, built on first use
        self._small, self._large = FORMS.index(self.small_form), FORMS.index(self.large_form)

    def _csr_tensor(self) -> torch.Tensor:
        """A ``torch.sparse_csr`` view of the CSR buffers; kept out of copies and pickles (a sparse CSR
        tensor cannot be deep-copied) and rebuilt after ``.to()``."""
        if self._csr is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._csr = torch.sparse_csr_tensor(self.crow, self.col, self.values,
                                                    (self.out_features, self.in_features))
        return self._csr

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_csr": None}

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> SparseLinear:
        self._csr = None
        return super()._apply(fn, *args, **kwargs)

    def form_for(self, batch: int) -> str:
        return self.small_form if batch <= self.threshold else self.large_form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.run(x)
        return self.run(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)

    def run_relu(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(layer(x))`` with the ReLU in place on the fresh output (a chain's fused step)."""
        return self.run(x, True)

    def run(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """The layer on a 2-D ``x`` (batch x features, or the transposed view a sparse layer returned),
        followed by an in-place ReLU when ``relu``: the output is always a fresh tensor. Written for
        few Python operations: at LeNet's size they are a fifth of a 2% ticket's time."""
        if x.dim() != 2:  # a chain step fed another shape: the general path
            y = self.forward(x)
            return y.relu_() if relu else y
        # Buffers are read from ``_buffers``: Module.__getattr__ costs ~0.3 us a name.
        buffers = self._buffers
        form = self._small if x.shape[0] <= self.threshold else self._large
        if form == 2:  # csr_rows
            y = torch.embedding_bag(features_major(x), buffers["col"], buffers["crow"], False, 0, False,
                                    buffers["values"], True)[0]
            if buffers["bias_column"] is not None:
                y.add_(buffers["bias_column"])
            return y.relu_().t() if relu else y.t()
        if form == 1:
            csr = self._csr if self._csr is not None else self._csr_tensor()
            y = torch.mm(csr, x.t()) if buffers["bias_column"] is None else torch.addmm(buffers["bias_column"], csr,
                                                                                        x.t())
            return y.relu_().t() if relu else y.t()  # (W x^T + b)^T as a view: no copy
        if x.shape[0] > 1 and x.stride(0) == 1:  # dense on the transposed activations of a sparse layer before
            y = torch.mm(buffers["weight"], x.t()) if buffers["bias_column"] is None else torch.addmm(
                buffers["bias_column"], buffers["weight"], x.t())
            return y.relu_().t() if relu else y.t()
        y = F.linear(x, buffers["weight"], buffers["bias"])
        return y.relu_() if relu else y

    # Steps of a SparseChain's plan (chain_plans): one form each, the activations' layout known when the plan
    # is made, so no step checks shapes or strides or transposes back and forth. "fm" is features-major: the
    # contiguous features x batch matrix a sparse form returns (its transpose is the batch x features output);
    # "rm" is an ordinary 2-D batch x features input. Each returns a fresh tensor, in fm except dense_rm.
    def rows_fm(self, xt: torch.Tensor, relu: bool = False) -> torch.Tensor:
        buffers = self._buffers
        y = torch.embedding_bag(xt, buffers["col"], buffers["crow"], False, 0, False, buffers["values"], True)[0]
        if buffers["bias_column"] is not None:
            y.add_(buffers["bias_column"])
        return y.relu_() if relu else y

    def rows_rm(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        return self.rows_fm(features_major(x), relu)

    def rows_flat(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """``rows_rm(x.flatten(1))``: the flatten before the layer done by its transposing copy."""
        return self.rows_fm(flat_features_major(x), relu)

    def csr_fm(self, xt: torch.Tensor, relu: bool = False) -> torch.Tensor:
        csr = self._csr if self._csr is not None else self._csr_tensor()
        bias = self._buffers["bias_column"]
        y = torch.mm(csr, xt) if bias is None else torch.addmm(bias, csr, xt)
        return y.relu_() if relu else y

    def csr_rm(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        return self.csr_fm(x.t(), relu)

    def dense_fm(self, xt: torch.Tensor, relu: bool = False) -> torch.Tensor:
        buffers = self._buffers
        bias = buffers["bias_column"]
        y = torch.mm(buffers["weight"], xt) if bias is None else torch.addmm(bias, buffers["weight"], xt)
        return y.relu_() if relu else y

    def dense_rm(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        buffers = self._buffers
        y = F.linear(x, buffers["weight"], buffers["bias"])
        return y.relu_() if relu else y

    def plan_step(self, form: str, fm: bool, relu: bool, flat: bool = False
                  ) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
        """The step computing this layer in ``form`` on activations in fm (``fm``) or rm layout (``flat``:
        the samples still to be flattened, csr_rows only), with the ReLU after it when ``relu``, and
        whether its output is fm."""
        layout = "_flat" if flat else "_fm" if fm else "_rm"
        name = {"csr_rows": "rows", "csr": "csr", "dense": "dense"}[form] + layout
        method = getattr(self, name)
        return (functools.partial(method, relu=True) if relu else method), fm or form != "dense"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"form={self.small_form} up to batch {self.threshold:.1f}, {self.large_form} above")


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` (groups 1, zero padding) for inference in the form measured fastest at each batch size:

    - ``"dense"``: ``F.conv2d`` (oneDNN / MKL on CPU);
    - ``"unfold"``: the kept weights over ``F.unfold``'s patches: for each sample and output channel,
      ``torch.embedding_bag`` sums the kept weights times their patch rows (one vectorised pass over the
      output positions per kept weight). It pays only where the unfold (k*k copies of the input) costs
      less than the dense convolution saves; on an AVX-512 CPU with oneDNN it did not for Conv-2's layers
      (docs/export.md), and the measured choice keeps ``dense`` there.
    """

    def __init__(self, conv: nn.Conv2d, forms: Mapping[int, str]):
        super().__init__()
        if not forms or not set(forms.values()) <= set(CONV_FORMS):
            raise FormError(f"SparseConv2d forms must map batch sizes to one of {CONV_FORMS}, got {dict(forms)}")
        if not convertible_conv(conv):
            raise FormError(f"only a Conv2d with groups 1, zero padding given as numbers is converted, not {conv}")
        sizes = sorted(int(b) for b in forms)
        self.small_form, self.large_form = forms[sizes[0]], forms[sizes[-1]]
        self.threshold = math.sqrt(sizes[0] * sizes[-1])
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.kernel_size, self.out_channels = conv.kernel_size, conv.out_channels
        weight = conv.weight.detach().float().contiguous()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        flat = weight.reshape(weight.shape[0], -1)
        keep = flat != 0
        self.register_buffer("row_counts", keep.sum(1))
        self.register_buffer("kept_columns", keep.nonzero()[:, 1].contiguous())
        self.register_buffer("kept_values", flat[keep].contiguous())
        self.patch = flat.shape[1]
        self._bags: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    def _bags_for(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Indices, offsets and weights of one bag per (sample, output channel) over the unfolded rows
        (cached per batch size, device and dtype: they are the same for every call)."""
        columns = self.kept_columns
        key = (batch, columns.device, self.kept_values.dtype)
        if key not in self._bags:
            index = (columns[None, :] + (torch.arange(batch, device=columns.device) * self.patch)[:, None]).reshape(-1)
            counts = self.row_counts.repeat(batch)
            offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
            self._bags[key] = (index.to(torch.int32), offsets.to(torch.int32), self.kept_values.repeat(batch))
        return self._bags[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if x.dim() != 4 or (self.small_form if batch <= self.threshold else self.large_form) == "dense":
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        out_h, out_w = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(x.shape[-2:], self.padding, self.dilation, self.kernel_size, self.stride))
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # batch x patch x positions
        index, offsets, values = self._bags_for(batch)
        y = torch.embedding_bag(cols.reshape(batch * self.patch, -1), index, offsets, False, 0, False, values, True)[0]
        y = y.view(batch, self.out_channels, -1)
        if self.bias is not None:
            y.add_(self.bias[None, :, None])
        return y.view(batch, self.out_channels, out_h, out_w)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"form={self.small_form} up to batch {self.threshold:.1f}, {self.large_form} above")


def convertible_conv(m: nn.Module) -> bool:
    """A Conv2d SparseConv2d computes exactly: groups 1, zero padding given as numbers."""
    return (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str))


# --- a chain model as one flat function ----------------------------------------------------------------
_SKIPPED_IN_EVAL = (nn.Identity, nn.Dropout)


class _LeafTracer(torch.fx.Tracer):
    """torch.fx's tracer with SparseLinear (and later sparse layers) as leaves, like torch.nn's."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (SparseLinear, SparseConv2d)) or super().is_leaf_module(m, module_qualified_name)


def _chain_names(model: nn.Module) -> list[str] | None:
    """The qualified names of the leaf modules ``model``'s forward calls one after the other, each on
    the output of the one before and on nothing else; ``None`` when the forward is not such a chain
    (a residual add, a call of a function, control flow ``torch.fx`` cannot trace)."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception:  # any untraceable forward simply runs as it is
        return None
    names: list[str] = []
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                return None
            previous = node
        elif node.op == "call_module":
            if node.args != (previous,) or node.kwargs or len(previous.users) != 1:
                return None
            names.append(str(node.target))
            previous = node
        elif node.op == "output":
            return names if node.args == (previous,) and len(previous.users) == 1 else None
        else:
            return None
    return None


def _flatten_samples(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def chain_steps(model: nn.Module) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
    """``model``'s forward as a list of plain functions (eval mode), or ``None`` when it is not a chain
    or holds no :class:`SparseLinear`. A ReLU right after a SparseLinear is done by it, in place."""
    names = _chain_names(model)
    if not names:
        return None
    modules = [model.get_submodule(n) for n in names]
    if not any(isinstance(m, (SparseLinear, SparseConv2d)) for m in modules):
        return None
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    i = 0
    while i < len(modules):
        m = modules[i]
        fused = i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)
        if isinstance(m, SparseLinear):
            steps.append(m.run_relu if fused else m.run)
            i += 2 if fused else 1
            continue
        if isinstance(m, nn.Flatten):
            steps.append(_flatten_samples if (m.start_dim, m.end_dim) == (1, -1) else m)
        elif isinstance(m, nn.ReLU):
            steps.append(torch.relu)
        elif not isinstance(m, _SKIPPED_IN_EVAL):
            steps.append(m)
        i += 1
    return steps


_Plans = tuple[float, list[Callable[[torch.Tensor], torch.Tensor]], list[Callable[[torch.Tensor], torch.Tensor]]]


def chain_plans(model: nn.Module) -> _Plans | None:
    """``model``'s chain (:func:`chain_steps`) as two lists of steps, one for the batch sizes up to the
    SparseLinear layers' common threshold (their small forms) and one above it (their large forms), each
    step one form on activations whose layout is known when the plan is made (``SparseLinear.rows_fm``
    etc.): no step checks shapes, strides or the batch size, and a sparse layer's features-major output
    goes to the next sparse layer without transposing it twice. ``(threshold, small, large)``, or ``None``
    (use :func:`chain_steps`) when the layers' thresholds differ or a SparseLinear's input is not
    certainly 2-D (each must follow a flatten of the samples, another SparseLinear or a ReLU)."""
    names = _chain_names(model)
    if not names:
        return None
    modules = [model.get_submodule(n) for n in names]
    linears = [m for m in modules if isinstance(m, SparseLinear)]
    if not linears or len({m.threshold for m in linears}) != 1:
        return None
    plans = []
    for large in (False, True):
        plan: list[Callable[[torch.Tensor], torch.Tensor]] = []
        fm = two_d = False  # the activations' layout so far (fm: features x batch), and whether surely 2-D
        i = 0
        while i < len(modules):
            m = modules[i]
            fused = i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)
            if isinstance(m, SparseLinear):
                if not two_d:
                    return None
                form = m.large_form if large else m.small_form
                flat = form == "csr_rows" and bool(plan) and plan[-1] is _flatten_samples
                if flat:  # the flatten is done by the layer's transposing copy
                    plan.pop()
                step, fm = m.plan_step(form, fm, fused, flat)
                plan.append(step)
                i += 2 if fused else 1
                continue
            if isinstance(m, nn.ReLU):
                plan.append(torch.relu)  # any layout
            elif not isinstance(m, _SKIPPED_IN_EVAL):
                if fm:
                    plan.append(torch.t)  # back to batch x features for a module
                    fm = False
                flat = isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) == (1, -1)
                plan.append(_flatten_samples if flat else m)
                two_d = flat
            i += 1
        if fm:
            plan.append(torch.t)  # the output as the transposed view of the last layer's result (no copy)
        plans.append(plan)
    return linears[0].threshold, plans[0], plans[1]


class SparseChain(nn.Module):
    """A model whose forward is a chain of layers, run in eval mode as one loop over plain functions
    (:func:`chain_steps`): no module call per layer, ReLUs in place; with ``plans`` (:func:`chain_plans`),
    the plan for the input's batch size instead, each step one form on a known layout. ``model`` is the
    model itself, with its SparseLinear layers (``chain.model.hidden[0]``); in training mode the chain
    calls it."""

    def __init__(self, model: nn.Module, steps: list[Callable[[torch.Tensor], torch.Tensor]],
                 plans: _Plans | None = None):
        super().__init__()
        self.model = model
        self._steps = steps
        self._plans = plans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.model(x)
        plans = self._plans
        steps = self._steps if plans is None else plans[1] if x.shape[0] <= plans[0] else plans[2]
        for step in steps:
            x = step(x)
        return x


# --- exact dead-unit elimination ------------------------------------------------------------------------
# Between two Linear layers of a chain only these may stand: a hidden unit is then one row of the Linear
# before and one column of the Linear after, and one with no incoming weights is relu(bias) or its bias.
# (Not Dropout: exact in eval mode, but in training mode it would drop a folded constant's share.)
_BETWEEN_LINEARS = (nn.ReLU, nn.Identity)


def linear_runs(model: nn.Module) -> list[list[tuple[str, bool]]]:
    """The runs of Linear layers in ``model``'s chain (:func:`_chain_names`) that feed each other directly:
    between two of a run stand only ReLU / Identity modules. Each run lists ``(name, relu)``, where
    ``relu`` says whether a ReLU stands between that layer and the one before (False for the first). A
    model that is not a chain has no runs; runs of one layer are left out (they have no hidden units)."""
    names = _chain_names(model)
    if not names:
        return []
    runs: list[list[tuple[str, bool]]] = []
    current: list[tuple[str, bool]] = []
    between: list[nn.Module] | None = None  # the modules since the last Linear of ``current``
    for name in names:
        m = model.get_submodule(name)
        if type(m) is nn.Linear:  # (a subclass may compute something else)
            if current and between is not None and all(isinstance(b, _BETWEEN_LINEARS) for b in between):
                current.append((name, any(isinstance(b, nn.ReLU) for b in between)))
            else:
                if len(current) > 1:
                    runs.append(current)
                current = [(name, False)]
            between = []
        elif between is not None:
            between.append(m)
    if len(current) > 1:
        runs.append(current)
    return runs


@torch.no_grad()
def eliminate_dead_units(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Remove, in place, the hidden units of ``model``'s Linear runs (:func:`linear_runs`) that cannot change
    its output, exactly (up to float rounding of a folded bias):

    - a unit whose outgoing weights (its column in the next Linear) are all zero contributes nothing: its
      row (weights and bias) in the Linear before and its column go;
    - a unit whose incoming weights (its row) are all zero outputs the constant ``act(bias)`` (``act`` the
      ReLU between, or none): ``W_next[:, u] * act(b_u)`` is added to the next Linear's bias (made when it
      had none) and the unit goes.

    Repeated until nothing changes (a removed row can leave a unit of the layer before without outgoing
    weights, a folded unit can leave one of the layer after without incoming ones). The model's inputs
    and outputs are never removed. Each changed Linear gets new, smaller ``weight`` / ``bias`` parameters.
    Returns per Linear of the runs: ``outputs`` and ``inputs`` as ``[kept, total]``, ``weights`` (nonzero
    weights) as ``[kept, before]``, and ``folded``: how many of its input units were constants folded
    into its bias."""
    report: dict[str, dict[str, Any]] = {}
    for run in linear_runs(model):
        layers = [model.get_submodule(name) for name, _ in run]
        relu = [r for _, r in run]
        w = [m.weight.detach().clone() for m in layers]
        b = [None if m.bias is None else m.bias.detach().clone() for m in layers]
        folded = [0] * len(layers)
        out_total = [m.out_features for m in layers]
        nnz_before = [int((m.weight != 0).sum()) for m in layers]
        changed = True
        while changed:
            changed = False
            for i in range(len(layers) - 1, 0, -1):  # hidden units between layer i-1 and i, output side first
                keep = (w[i] != 0).any(0)
                if not bool(keep.all()):
                    _keep_units(w, b, i, keep)
                    changed = True
            for i in range(1, len(layers)):
                const = ~(w[i - 1] != 0).any(1)
                if not bool(const.any()):
                    continue
                if b[i - 1] is not None:
                    value = b[i - 1][const].relu() if relu[i] else b[i - 1][const]
                    shift = w[i][:, const] @ value
                    if bool((shift != 0).any()):
                        b[i] = shift if b[i] is None else b[i] + shift
                _keep_units(w, b, i, ~const)
                folded[i] += int(const.sum())
                changed = True
        for i, (m, (name, _)) in enumerate(zip(layers, run)):
            if w[i].shape != m.weight.shape or (b[i] is None) != (m.bias is None) or (
                    b[i] is not None and not torch.equal(b[i], m.bias)):
                m.weight = nn.Parameter(w[i].contiguous(), requires_grad=m.weight.requires_grad)
                m.bias = None if b[i] is None else nn.Parameter(b[i].contiguous())
                m.out_features, m.in_features = w[i].shape
            report[name] = {"outputs": [int(w[i].shape[0]), out_total[i]],
                            "inputs": [int(w[i].shape[1]), out_total[i - 1] if i else int(w[i].shape[1])],
                            "weights": [int((w[i] != 0).sum()), nnz_before[i]], "folded": folded[i]}
    return report


def _keep_units(w: list[torch.Tensor], b: list[torch.Tensor | None], i: int, keep: torch.Tensor) -> None:
    """Keep only the hidden units ``keep`` between Linear ``i - 1`` and ``i``: their rows (and biases)
    in the one before, their columns in the one after."""
    w[i], w[i - 1] = w[i][:, keep], w[i - 1][keep]
    b[i - 1] = None if b[i - 1] is None else b[i - 1][keep]


# --- the choice of forms -----------------------------------------------------------------------------------
def choose_form(timings: Mapping[str, float], margin: float = 0.9) -> str:
    """The form to use given measured seconds per call of each form: the fastest sparse form only
    when it takes less than ``margin`` x the dense time (so noise never picks a form that is
    slower), else ``"dense"``."""
    dense = timings.get("dense")
    sparse = {f: t for f, t in timings.items() if f != "dense"}
    if dense is None or not sparse:
        return "dense"
    best = min(sparse, key=lambda f: (sparse[f], f))
    return best if sparse[best] < margin * dense else "dense"


@torch.no_grad()
def measure_latency(fn: Callable[[], Any], *, seconds: float = 0.05, rounds: int = 5) -> float:
    """Seconds per call of ``fn``: the median over ``rounds`` rounds, each about ``seconds`` long,
    after a warm-up."""
    return measure_group({"fn": fn}, seconds=seconds, rounds=rounds)["fn"]


@torch.no_grad()
def measure_group(fns: Mapping[str, Callable[[], Any]], *, seconds: float = 0.05, rounds: int = 5) -> dict[str, float]:
    """Seconds per call of each of ``fns``, timed in alternation (a round of each, ``rounds`` times)
    so that a change in the machine's load hits all alike; the median round of each."""
    return {name: statistics.median(r) for name, r in timed_rounds(fns, seconds=seconds, rounds=rounds).items()}


@torch.no_grad()
def timed_rounds(fns: Mapping[str, Callable[[], Any]], *, seconds: float, rounds: int, warmup: int = 3,
                 min_calls: int = 1, max_calls: int = 10_000) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns`` in each of ``rounds`` rounds, the fns alternating within a
    round; a round of a fn is as many calls as take about ``seconds`` (within [min_calls, max_calls])."""
    calls = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        fn()
        calls[name] = max(min_calls, min(max_calls, int(seconds / max(time.perf_counter() - start, 1e-7))))
    results: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            results[name].append((time.perf_counter() - start) / calls[name])
    return results


def time_group(fns: Mapping[str, Callable[[], Any]], timer: Timer | None, seconds: float) -> dict[str, float]:
    """:func:`measure_group`, or the injected ``timer`` on each (tests)."""
    if timer is None:
        return measure_group(fns, seconds=seconds)
    return {name: timer(fn) for name, fn in fns.items()}


def choose_forms(model: nn.Module, batches: list[int], timer: Timer | None = None, seconds: float = 0.05,
                 input_shape: tuple[int, ...] | None = None) -> dict[str, dict[str, Any]]:
    """Per Linear layer of ``model`` (and, given ``input_shape``, per convertible Conv2d): the form chosen
    at each batch size and the timings that chose it. ``timer`` gets each candidate as
    ``functools.partial(layer_in_that_form, x)``.

    Each form is timed on the layer alone, with a random input in the layout the layer will get: for a
    Linear, transposed (features x batch) when the Linear before it (in module order) chose a sparse form
    at that batch size, row-major otherwise; for a conv, the shape it gets in the model's forward."""
    out = _choose_linear_forms(model, batches, timer, seconds)
    if input_shape is not None:
        out.update(_choose_conv_forms(model, batches, timer, seconds, input_shape))
    return out


def _layer_entry(weight: torch.Tensor) -> dict[str, Any]:
    nnz = int((weight != 0).sum())
    return {"forms": {}, "timings_s": {}, "density": nnz / weight.numel() if weight.numel() else 0.0,
            "shape": list(weight.shape)}


def _choose_linear_forms(model: nn.Module, batches: list[int], timer: Timer | None, seconds: float
                         ) -> dict[str, dict[str, Any]]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    out = {name: _layer_entry(m.weight) for name, m in layers.items()}
    candidates = {name: {f: SparseLinear(m.weight, m.bias, {1: f}) for f in FORMS} for name, m in layers.items()}
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        for batch in batches:
            transposed = False
            for name, m in layers.items():
                x = torch.randn(m.in_features, batch, generator=gen)
                x = x.t() if transposed else x.t().contiguous()
                t = time_group({f: functools.partial(c, x) for f, c in candidates[name].items()}, timer, seconds)
                form = choose_form(t)
                out[name]["timings_s"][str(batch)] = t
                out[name]["forms"][str(batch)] = form
                transposed = form in SPARSE_FORMS or (transposed and form == "dense" and batch > 1)
    return out


@torch.no_grad()
def conv_input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The input shape (one sample) each convertible Conv2d of ``model`` gets in its forward."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        shapes.setdefault(name, tuple(args[0].shape[1:]))

    hooks = [m.register_forward_pre_hook(functools.partial(record, name))
             for name, m in model.named_modules() if convertible_conv(m)]
    try:
        was_training = model.training
        model.eval()(torch.zeros(1, *input_shape))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _choose_conv_forms(model: nn.Module, batches: list[int], timer: Timer | None, seconds: float,
                       input_shape: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    if not any(convertible_conv(m) for m in model.modules()):
        return {}
    try:
        shapes = conv_input_shapes(model, input_shape)
    except Exception:  # a forward a float probe cannot run (token ids, say): its convs stay dense
        return {}
    out: dict[str, dict[str, Any]] = {}
    gen = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        conv = model.get_submodule(name)
        out[name] = {"kind": "conv2d", **_layer_entry(conv.weight), "input_shape": list(shape)}
        candidates = {f: SparseConv2d(conv, {1: f}) for f in CONV_FORMS}
        for batch in batches:
            x = torch.randn(batch, *shape, generator=gen)
            fns = {f: functools.partial(c, x) for f, c in candidates.items()}
            t = _first_call_cut(fns) if timer is None else None  # a form 3x slower at once is not timed at length
            t = t or time_group(fns, timer, seconds)
            out[name]["timings_s"][str(batch)] = t
            out[name]["forms"][str(batch)] = choose_form(t)
    return out


@torch.no_grad()
def _first_call_cut(fns: Mapping[str, Callable[[], Any]]) -> dict[str, float] | None:
    """One warm call of each form; when every non-dense form took over 3x the dense time, those
    single-call times (the choice is dense anyway), else ``None`` (time them properly)."""
    once = {}
    for name, fn in fns.items():
        fn()
        start = time.perf_counter()
        fn()
        once[name] = time.perf_counter() - start
    return once if all(t > 3 * once["dense"] for f, t in once.items() if f != "dense") else None
