"""Physically remove pruned channels from ANY model through Torch-Pruning's dependency graph.

A channel of a convolutional network is rarely owned by one layer. Across a residual addition the
channel ``c`` of both branches (and of the 1x1 projection shortcut) is one channel of the residual
stream; a depthwise conv ties its input channel ``c`` to its output channel ``c``; a concatenation
shifts a branch's channels to an offset; a flatten before a Linear turns one channel into ``h*w``
input features. Torch-Pruning's :class:`torch_pruning.DependencyGraph` traces the model once on an
example input and answers, for every conv/linear layer, which slices of which layers are coupled to
its output channels: a *group*. ticketlab uses the graph only to find the groups and to slice the
layers (``DependencyGraph.build_dependency``, ``get_all_groups``, ``get_pruning_group`` and
``Group.prune``); what may be removed is decided here, so that the result is exact:

**A channel of a group is removed only when it is dead in every member of the group** – its value
is exactly zero wherever a later layer reads it. With that, the smaller model computes the same
function as the masked full-size model (up to float rounding). Two descriptions of "pruned":

* a BatchNorm channel mask (Early-Bird / network slimming, :func:`shrink_bn_mask`): the masked
  model has γ = β = 0 on the pruned BN channels, so they output 0. A group channel is dead when
  every BatchNorm of the group is zero there and every conv/linear producing it is either followed
  directly by one of those BatchNorms or itself all zero (weight row and bias);
* an unstructured weight :class:`~ticketlab.masks.Mask` (e.g. a refilled ticket,
  :func:`shrink_weight_mask`): a group channel is removed when the weight-mask row of *every*
  conv/linear producing it is empty (both branches of a residual add, the projection shortcut, ...).
  The channel is then declared dead: the producers' biases, the BatchNorm γ/β and the depthwise
  filters of that channel are zeroed in the masked reference model (a weight-masked conv row
  followed by a BatchNorm still emits the constant β - γ·μ/σ; that constant goes with the channel,
  as it does in every structured-ticket paper; :attr:`ShrinkReport.dropped_shifts` counts them).

Everything else is kept and reported (:class:`ShrinkReport`): channels pruned in one member but
alive in a coupled one (e.g. one branch of a residual add), groups the graph cannot shrink exactly
(their channels are the model's outputs; they pass through an operation that does not map 0 to 0,
such as a sigmoid or ``x + 1``; they contain a GroupNorm/LayerNorm, whose statistics mix channels,
a grouped (non-depthwise) or transposed conv, an embedding or a bare parameter), and, for weight
masks, the one channel kept in a layer whose every channel is empty (the network is cut there).

Every shrink is checked: the small model and the masked reference are run on the example input in
eval mode and must agree (``verify=True``), so a mis-mapped group (Torch-Pruning's index mapping of
``torch.cat`` followed by a flatten into a Linear is one known case, refused up front) can never
give a silently wrong model.

Train mode. With BatchNorm in train mode the kept channels' batch statistics do not depend on the
removed ones, so the outputs stay equal as well; dropout draws different random masks for a
different number of channels, so compare in eval mode (or without dropout).

Torch-Pruning is an optional dependency: ``pip install 'ticketlab[structured]'``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .channels import ChannelPruningError

__all__ = [
    "INSTALL_HINT",
    "GraphShrinkError",
    "ChannelGroup",
    "ShrinkReport",
    "ShrinkResult",
    "available",
    "channel_groups",
    "infer_example_input",
    "shrink_bn_mask",
    "shrink_weight_mask",
]

INSTALL_HINT = "pip install 'ticketlab[structured]'"


class GraphShrinkError(ChannelPruningError):
    """The dependency graph cannot be built, or a shrink would not equal the masked model."""


def _tp():
    try:
        import torch_pruning as tp
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"channel pruning of arbitrary models needs Torch-Pruning's dependency graph: "
            f"{INSTALL_HINT} (installs torch-pruning)"
        ) from exc
    return tp


def available() -> bool:
    """Whether Torch-Pruning can be imported (the ``structured`` extra is installed)."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Example inputs
# ---------------------------------------------------------------------------------------------

_SIDES = (32, 28, 64, 224, 16, 8, 96, 128)


def _first_param(model: nn.Module) -> torch.Tensor | None:
    return next(iter(model.parameters()), None)


def infer_example_input(model: nn.Module) -> torch.Tensor:
    """A one-sample input the model accepts, guessed from its first layer (conv: a few square
    sizes are tried; linear: its input features). Pass ``example_input`` to skip the guessing."""
    p = _first_param(model)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    first = next((m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))), None)
    candidates: list[torch.Tensor] = []
    if isinstance(first, nn.modules.conv._ConvNd):
        dims = len(first.kernel_size)
        candidates = [torch.randn(1, first.in_channels, *([s] * dims), device=device, dtype=dtype) for s in _SIDES]
    elif isinstance(first, nn.Linear):
        candidates = [torch.randn(1, first.in_features, device=device, dtype=dtype)]
    was_training = [m.training for m in model.modules()]
    model.eval()
    try:
        for x in candidates:
            try:
                with torch.no_grad():
                    model(x)
                return x
            except Exception:  # noqa: BLE001 - any failure means: try the next size
                continue
    finally:
        for m, t in zip(model.modules(), was_training):
            m.training = t
    raise GraphShrinkError(
        f"could not guess an input for {type(model).__name__}; pass example_input (one batch the "
        f"model accepts, e.g. torch.randn(1, 3, 32, 32)) so the dependency graph can be traced"
    )


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------

# Non-parametric operations that map an all-zero channel to an all-zero channel (autograd names
# without the trailing version digit). Anything else in a group makes it unshrinkable exactly.
_ZERO_PRESERVING = {
    "ReluBackward", "HardtanhBackward", "LeakyReluBackward", "EluBackward", "CeluBackward",
    "SeluBackward", "GeluBackward", "SiluBackward", "MishBackward", "HardswishBackward",
    "TanhBackward", "PreluKernelBackward", "MaxPool1DWithIndicesBackward", "MaxPool2DWithIndicesBackward",
    "MaxPool3DWithIndicesBackward", "AvgPool1DBackward", "AvgPool2DBackward", "AvgPool3DBackward",
    "AdaptiveAvgPool1DBackward", "AdaptiveAvgPool2DBackward", "AdaptiveAvgPool3DBackward",
    "AdaptiveMaxPool1DBackward", "AdaptiveMaxPool2DBackward", "AdaptiveMaxPool3DBackward",
    "MeanBackward", "SumBackward", "CloneBackward", "ViewBackward", "ReshapeAliasBackward",
    "UnsafeViewBackward", "SqueezeBackward", "UnsqueezeBackward", "ExpandBackward", "ToCopyBackward",
    "UpsampleNearest1DBackward", "UpsampleNearest2DBackward", "UpsampleNearest3DBackward",
    "UpsampleBilinear2DBackward", "UpsampleBicubic2DBackward", "ConstantPadNdBackward",
    "NativeDropoutBackward", "MulBackward", "TBackward", "CatBackward", "SplitBackward",
    "SplitWithSizesBackward", "SliceBackward", "IndexBackward", "FlattenBackward", "AliasBackward",
}


def _op_name(grad_fn: Any) -> str:
    name = grad_fn.name() if grad_fn is not None and hasattr(grad_fn, "name") else type(grad_fn).__name__
    return name.rstrip("0123456789")


def _op_refusal(grad_fn: Any) -> str | None:
    """Why a non-parametric node stops a group from being removed exactly (None: it is fine)."""
    name = _op_name(grad_fn)
    if name in ("AddBackward", "SubBackward"):
        inputs = [f for f, _ in getattr(grad_fn, "next_functions", ()) if f is not None]
        traced = [f for f in inputs if type(f).__name__ != "AccumulateGrad"]
        if len(traced) < 2:
            return f"{name[:-8].lower()} of a constant (a zero channel would not stay zero)"
        return None
    if name == "DivBackward":
        fns = getattr(grad_fn, "next_functions", ())
        if len(fns) > 1 and fns[1][0] is not None:
            return "division by a tensor (a zero channel could become 0/0)"
        return None
    if name in _ZERO_PRESERVING:
        return None
    return f"operation {name} does not map a zero channel to zero"


@dataclass(frozen=True)
class Member:
    """One coupled slice of a group: ``module`` (a name) and the channel indices it has there.

    ``kind``: ``producer`` (output channels of a conv/linear), ``consumer`` (input channels of a
    conv/linear), ``bn``, ``depthwise`` (a depthwise conv: input = output channel) or ``op``.
    ``roots[i]`` is the group channel that index ``idxs[i]`` belongs to.
    """

    module: str
    kind: str
    idxs: tuple[int, ...]
    roots: tuple[int, ...]


@dataclass
class ChannelGroup:
    """Channels coupled by the dependency graph: removing group channel ``r`` removes index ``i`` of
    every member with ``roots[i] == r``."""

    root: str
    channels: int
    members: list[Member]
    refusal: str | None = None
    # producer module -> the group's BatchNorm its output goes straight into (if any)
    covered_by: dict[str, str] = field(default_factory=dict)

    @property
    def bns(self) -> list[str]:
        return [m.module for m in self.members if m.kind == "bn"]

    @property
    def producers(self) -> list[str]:
        return list(dict.fromkeys(m.module for m in self.members if m.kind == "producer"))

    @property
    def residual(self) -> bool:
        """More than one layer produces these channels (a residual add or similar merge)."""
        return len(self.producers) > 1

    @property
    def representative_bn(self) -> str | None:
        """The BatchNorm right after the group's (first) producer; else its first BatchNorm."""
        for p in self.producers:
            if p in self.covered_by:
                return self.covered_by[p]
        return self.bns[0] if self.bns else None

    def per_root(self, member: Member, values: torch.Tensor, reduce: str = "all") -> torch.Tensor:
        """Reduce ``values`` (one per ``member.idxs`` entry) to one bool per group channel."""
        out = torch.ones(self.channels, dtype=torch.bool) if reduce == "all" else torch.zeros(self.channels, dtype=torch.bool)
        roots = torch.tensor(member.roots, dtype=torch.long)
        vals = values.bool().cpu()
        for r, v in zip(roots.tolist(), vals.tolist()):
            out[r] = (out[r] and v) if reduce == "all" else (out[r] or v)
        return out


def _module_refusal(module: nn.Module, kind: str) -> str | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            return f"transposed conv ({type(module).__name__}) is not supported"
        if module.groups > 1 and kind != "depthwise":
            return f"grouped conv (groups={module.groups}) that is not depthwise"
    return None


def _build_groups(model: nn.Module, example_input: Any) -> tuple[Any, list[tuple[ChannelGroup, Any]]]:
    """Trace ``model`` (in eval mode) and return the graph and ``(ChannelGroup, tp group)`` pairs."""
    tp = _tp()
    names = {m: n for n, m in model.named_modules()}
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
            raw = list(dg.get_all_groups())
    except GraphShrinkError:
        raise
    except Exception as exc:  # noqa: BLE001 - tracing failures come in every type
        raise GraphShrinkError(
            f"Torch-Pruning could not trace {type(model).__name__} on the example input: {exc}"
        ) from exc
    finally:
        for m, t in zip(model.modules(), modes):
            m.training = t
    OPT = tp.ops.OPTYPE
    out: list[tuple[ChannelGroup, Any]] = []
    for g in raw:
        root_dep = g[0].dep
        root_module = root_dep.target.module
        members: list[Member] = []
        refusal: str | None = None
        channels = 0
        bn_nodes: dict[Any, str] = {}
        producer_nodes: dict[str, Any] = {}
        for item in g:
            dep, idxs, roots = item.dep, list(item.idxs), list(item.root_idxs)
            node = dep.target
            module = node.module
            if roots:
                channels = max(channels, max(roots) + 1)
            t = node.type
            if t == OPT.BN:
                kind = "bn"
            elif t == OPT.DEPTHWISE_CONV:
                kind = "depthwise"
            elif t in (OPT.CONV, OPT.LINEAR):
                kind = "producer" if dg.is_out_channel_pruning_fn(dep.handler) else "consumer"
            elif t in (OPT.ELEMENTWISE, OPT.CONCAT, OPT.SPLIT, OPT.RESHAPE, OPT.SLICE, OPT.EXPAND):
                kind = "op"
                reason = _op_refusal(node.grad_fn) if t == OPT.ELEMENTWISE else None
                refusal = refusal or reason
            elif t == OPT.PRELU:
                kind = "op"  # prelu(0) = 0; its per-channel weight is sliced by the graph
            elif t == OPT.OUTPUT:
                kind = "op"
                refusal = refusal or "its channels are outputs of the model"
            else:
                kind = "op"
                refusal = refusal or f"it contains a {t.name} layer ({type(module).__name__}), which cannot be shrunk exactly"
            if kind == "op":
                members.append(Member(f"<{_op_name(node.grad_fn)}>", kind, tuple(idxs), tuple(roots)))
                continue
            name = names.get(module)
            if name is None:
                refusal = refusal or f"a {type(module).__name__} that is not a submodule of the model"
                continue
            refusal = refusal or (f"{name}: " + r if (r := _module_refusal(module, kind)) else None)
            # Channels that are the model's outputs must stay.
            if kind in ("producer", "bn", "depthwise") and not node.outputs:
                refusal = refusal or f"its channels are outputs of the model ({name})"
            # Index sanity: in range and every group channel equally often (guards against
            # index-mapping slips of the graph, e.g. torch.cat followed by flatten -> Linear).
            size = _dim_size(module, kind)
            if size is not None and (any(i < 0 or i >= size for i in idxs) or len(set(idxs)) != len(idxs)):
                refusal = refusal or (
                    f"the dependency graph maps its channels inconsistently at {name} (a known "
                    f"Torch-Pruning limitation, e.g. torch.cat followed by flatten into a Linear)"
                )
            members.append(Member(name, kind, tuple(idxs), tuple(roots)))
            if kind == "bn":
                bn_nodes[node] = name
            elif kind in ("producer", "depthwise"):
                producer_nodes[name] = node
        group = ChannelGroup(names.get(root_module, "?"), channels, members, refusal)
        for name, node in producer_nodes.items():
            bn = _normalised_by(node, bn_nodes, OPT)
            if bn is not None:
                group.covered_by[name] = bn
        if group.refusal is None:
            for m in members:
                if m.kind != "op" and m.roots:
                    c = torch.bincount(torch.tensor(m.roots, dtype=torch.long), minlength=channels)
                    if c.min() != c.max():  # every group channel must appear equally often
                        group.refusal = (
                            f"the dependency graph maps its channels inconsistently at {m.module} (a known "
                            f"Torch-Pruning limitation, e.g. torch.cat followed by flatten into a Linear)"
                        )
                        break
        out.append((group, g))
    return dg, out


def _normalised_by(node: Any, bn_nodes: Mapping[Any, str], OPT: Any) -> str | None:
    """The group BatchNorm that every path from ``node`` passes through before anything reads it
    (through non-parametric operations such as ReLU, pooling, adds, concatenations), or None.

    Such a producer needs no zero weights of its own: when those BatchNorms are zero on a channel,
    nothing downstream sees the producer's values there."""
    first: str | None = None
    stack, seen = list(node.outputs), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in bn_nodes:
            first = first or bn_nodes[n]
            continue
        if n.type not in (OPT.ELEMENTWISE, OPT.CONCAT, OPT.RESHAPE, OPT.SPLIT, OPT.SLICE, OPT.EXPAND) or not n.outputs:
            return None  # read by a layer (or the model's output) before any BatchNorm
        stack.extend(n.outputs)
    return first if node.outputs else None


def _dim_size(module: nn.Module, kind: str) -> int | None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels if kind == "consumer" else module.out_channels
    if isinstance(module, nn.Linear):
        return module.in_features if kind == "consumer" else module.out_features
    return None


def channel_groups(model: nn.Module, example_input: Any = None) -> list[ChannelGroup]:
    """The model's channel groups as the dependency graph sees them (the model is not modified:
    the graph is traced on a copy in eval mode)."""
    work = copy.deepcopy(model)
    x = infer_example_input(work) if example_input is None else example_input
    _, groups = _build_groups(work, x)
    return [g for g, _ in groups]


# ---------------------------------------------------------------------------------------------
# Dead channels
# ---------------------------------------------------------------------------------------------


def _rows_zero(weight: torch.Tensor, idxs: Sequence[int], dim: int) -> torch.Tensor:
    w = weight.detach().movedim(dim, 0)[torch.tensor(list(idxs), dtype=torch.long, device=weight.device)]
    return (w.reshape(len(idxs), -1) == 0).all(dim=1).cpu()


def _bias_zero(module: nn.Module, idxs: Sequence[int]) -> torch.Tensor:
    bias = getattr(module, "bias", None)
    if bias is None:
        return torch.ones(len(idxs), dtype=torch.bool)
    return (bias.detach()[torch.tensor(list(idxs), dtype=torch.long, device=bias.device)] == 0).cpu()


def _bn_zero(bn: nn.Module, idxs: Sequence[int]) -> torch.Tensor:
    if not getattr(bn, "affine", False):
        return torch.zeros(len(idxs), dtype=torch.bool)
    ix = torch.tensor(list(idxs), dtype=torch.long, device=bn.weight.device)
    return ((bn.weight.detach()[ix] == 0) & (bn.bias.detach()[ix] == 0)).cpu()


def _dead(model: nn.Module, group: ChannelGroup, want: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Group channels that are exactly zero wherever they are read, and the members that keep
    some channel of ``want`` alive."""
    dead = torch.ones(group.channels, dtype=torch.bool)
    blockers: list[str] = []
    for m in group.members:
        if m.kind == "bn":
            z = group.per_root(m, _bn_zero(model.get_submodule(m.module), m.idxs))
        elif m.kind in ("producer", "depthwise"):
            if m.module in group.covered_by:
                continue  # its output only reaches the group through that BatchNorm
            mod = model.get_submodule(m.module)
            z = group.per_root(m, _rows_zero(mod.weight, m.idxs, 0) & _bias_zero(mod, m.idxs))
        else:
            continue
        if bool((want & ~z).any()) and m.module not in blockers:
            blockers.append(m.module)
        dead &= z
    if not group.bns and not any(m.kind in ("producer", "depthwise") for m in group.members):
        dead[:] = False
    return dead, blockers


# ---------------------------------------------------------------------------------------------
# Reports and results
# ---------------------------------------------------------------------------------------------


@dataclass
class ShrinkReport:
    """What a shrink removed and what it kept, and why.

    ``removed``: channels physically removed (summed over groups). ``kept_coupled``: channels
    pruned/empty in some member of their group but alive in a coupled one (e.g. one branch of a
    residual add; or a conv not followed by a BatchNorm). ``kept_refused``: such channels in groups
    that cannot be shrunk exactly (see ``reasons``). ``kept_last``: channels kept so that a layer
    whose every channel is empty keeps one (weight masks only). ``dropped_shifts``: removed
    channels whose bias or BatchNorm shift was not zero (weight masks only; the masked reference
    zeroes them). ``groups``: one row per group that had a pruned channel.
    """

    removed: int = 0
    kept_coupled: int = 0
    kept_refused: int = 0
    kept_last: int = 0
    dropped_shifts: int = 0
    params_before: int = 0
    params_after: int = 0
    reasons: list[str] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)

    @property
    def not_removed(self) -> int:
        return self.kept_coupled + self.kept_refused + self.kept_last

    def __str__(self) -> str:
        lines = [
            f"removed {self.removed} channels; parameters {self.params_before} -> {self.params_after}"
            + (f" ({self.params_after / self.params_before:.3f})" if self.params_before else ""),
        ]
        if self.not_removed:
            lines.append(
                f"kept {self.not_removed} pruned channels: {self.kept_coupled} coupled to a kept channel, "
                f"{self.kept_refused} in groups that cannot be shrunk exactly, {self.kept_last} so no layer is empty"
            )
        if self.dropped_shifts:
            lines.append(f"{self.dropped_shifts} removed channels carried a nonzero bias / BatchNorm shift")
        lines += [f"  {r}" for r in self.reasons]
        return "\n".join(lines)


@dataclass
class ShrinkResult:
    """``model``: the physically smaller copy. ``reference``: the masked full-size model it equals.
    ``mask``: the weight mask left for ``model`` (kept zeros inside kept channels; weight-mask
    shrinks only, else None). ``report``: see :class:`ShrinkReport`."""

    model: nn.Module
    reference: nn.Module
    report: ShrinkReport
    mask: Any = None


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _zero_declared(model: nn.Module, group: ChannelGroup, channels: torch.Tensor) -> int:
    """Zero biases, BatchNorm γ/β and depthwise filters of ``channels`` (group channel ids) in
    ``model``; returns how many of them carried a nonzero shift (eval-mode constant)."""
    shifted = torch.zeros(group.channels, dtype=torch.bool)
    with torch.no_grad():
        for m in group.members:
            if m.kind not in ("producer", "bn", "depthwise"):
                continue
            sel = [(i, r) for i, r in zip(m.idxs, m.roots) if channels[r]]
            if not sel:
                continue
            mod = model.get_submodule(m.module)
            ix = torch.tensor([i for i, _ in sel], dtype=torch.long)
            rs = torch.tensor([r for _, r in sel], dtype=torch.long)
            if m.kind == "bn":
                if getattr(mod, "affine", False):
                    const = mod.bias.detach()[ix.to(mod.bias.device)].clone()
                    if getattr(mod, "running_mean", None) is not None:
                        rm = mod.running_mean[ix.to(mod.running_mean.device)]
                        rv = mod.running_var[ix.to(mod.running_var.device)]
                        const = const - mod.weight.detach()[ix.to(mod.weight.device)] * rm / torch.sqrt(rv + mod.eps)
                    shifted[rs[(const != 0).cpu()]] = True
                    mod.weight[ix.to(mod.weight.device)] = 0
                    mod.bias[ix.to(mod.bias.device)] = 0
                else:
                    raise GraphShrinkError(f"{m.module} has no affine parameters; cannot zero its channels")
            else:
                if mod.bias is not None:
                    shifted[rs[(mod.bias.detach()[ix.to(mod.bias.device)] != 0).cpu()]] = True
                    mod.bias[ix.to(mod.bias.device)] = 0
                if m.kind == "depthwise":
                    mod.weight[ix.to(mod.weight.device)] = 0
    return int((shifted & channels).sum())


def _verify(small: nn.Module, reference: nn.Module, example_input: Any, what: str) -> None:
    modes = [(m, m.training) for m in (*small.modules(), *reference.modules())]
    small.eval(), reference.eval()
    try:
        with torch.no_grad():
            a, b = small(example_input), reference(example_input)
    finally:
        for m, t in modes:
            m.training = t
    flat_a = [t for t in _tensors(a)]
    flat_b = [t for t in _tensors(b)]
    ok = len(flat_a) == len(flat_b) and all(
        x.shape == y.shape and torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5 * (1 + float(y.abs().max()) if y.numel() else 1))
        for x, y in zip(flat_a, flat_b)
    )
    if not ok:
        raise GraphShrinkError(
            f"{what}: the shrunk model does not reproduce the masked model on the example input; the "
            f"dependency graph mis-mapped a group of this architecture. Nothing was changed; please "
            f"report the model structure"
        )


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


def _prune(dg: Any, tp_group: Any, group: ChannelGroup, remove: torch.Tensor) -> None:
    idxs = torch.nonzero(remove).flatten().tolist()
    if not idxs:
        return
    root = tp_group[0].dep
    sub = dg.get_pruning_group(root.target.module, root.handler, idxs)
    sub.prune(record_history=False)


def _shrink(
    model: nn.Module,
    example_input: Any,
    prepare,  # (reference, groups) -> (interest per group, declared per group, dropped) ; edits reference
    on_empty: str,
    verify: bool,
    what: str,
) -> tuple[nn.Module, nn.Module, ShrinkReport, list[tuple[ChannelGroup, torch.Tensor]]]:
    if on_empty not in ("keep", "error"):
        raise ValueError(f"on_empty must be 'keep' or 'error', got {on_empty!r}")
    reference = copy.deepcopy(model)
    x = infer_example_input(reference) if example_input is None else example_input
    p = _first_param(reference)
    if isinstance(x, torch.Tensor) and p is not None:
        x = x.to(p.device)
    _, groups = _build_groups(reference, x)  # on the reference: only for names, it is not pruned
    plain = [g for g, _ in groups]
    interest, dropped = prepare(reference, plain)
    report = ShrinkReport(params_before=_n_params(model), dropped_shifts=dropped)
    decisions: list[torch.Tensor] = []
    for group, want in zip(plain, interest):
        if group.refusal is not None:
            n = int(want.sum())
            if n:
                report.kept_refused += n
                report.reasons.append(f"group of {group.root}: kept {n} pruned channels: {group.refusal}")
                report.groups.append({"root": group.root, "channels": group.channels, "pruned": n,
                                      "removed": 0, "reason": group.refusal})
            decisions.append(torch.zeros(group.channels, dtype=torch.bool))
            continue
        dead, blockers = _dead(reference, group, want)
        remove = dead & want if want.any() else torch.zeros_like(dead)
        coupled = int((want & ~dead).sum())
        if coupled:
            report.kept_coupled += coupled
            report.reasons.append(
                f"group of {group.root}: kept {coupled} channels pruned in some but not all of "
                f"{sorted(set(group.bns) | set(group.producers))} (alive in {blockers})"
            )
        if remove.any() and bool(remove.all()):
            if on_empty == "error":
                raise ChannelPruningError(
                    f"the mask removes every channel of the group of {group.root} "
                    f"({sorted(set(group.bns) | set(group.producers))}); keep at least one"
                )
            remove = remove.clone()
            remove[0] = False
            report.kept_last += 1
            report.reasons.append(f"group of {group.root}: every channel is empty; kept channel 0 (the network is cut here)")
        report.removed += int(remove.sum())
        if want.any():
            report.groups.append({"root": group.root, "channels": group.channels, "pruned": int(want.sum()),
                                  "removed": int(remove.sum()), "reason": None if not coupled else "coupled"})
        decisions.append(remove)
    small = copy.deepcopy(reference)
    dg, small_groups = _build_groups(small, x)
    if [g.root for g, _ in small_groups] != [g.root for g in plain]:  # pragma: no cover - deterministic tracing
        raise GraphShrinkError("the dependency graph of the copy differs from the original's")
    with torch.no_grad():
        for (group, tp_group), remove in zip(small_groups, decisions):
            _prune(dg, tp_group, group, remove)
    originals = dict(model.named_parameters())
    for name, param in small.named_parameters():
        if name in originals:
            param.requires_grad_(originals[name].requires_grad)
    for m_small, m_ref in zip(small.modules(), reference.modules()):
        m_small.training = m_ref.training
    if verify:
        _verify(small, reference, x, what)
    report.params_after = _n_params(small)
    return small, reference, report, list(zip(plain, decisions))


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def _check_bn_mask(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not mask:
        raise ChannelPruningError("empty channel mask")
    checked = {}
    for name, t in mask.items():
        try:
            bn = model.get_submodule(name)
        except AttributeError:
            raise ChannelPruningError(f"model has no module {name!r}") from None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            raise ChannelPruningError(f"{name!r} is a {type(bn).__name__}, not a BatchNorm layer")
        t = torch.as_tensor(t).detach().cpu()
        if t.dtype != torch.bool or t.shape != (bn.num_features,):
            raise ChannelPruningError(
                f"mask for {name!r} must be a bool tensor of shape ({bn.num_features},), got {t.dtype} {tuple(t.shape)}"
            )
        if not bn.affine:
            raise ChannelPruningError(f"{name!r} has no affine parameters to zero")
        checked[name] = t
    return checked


def expand_bn_mask(groups: Sequence[ChannelGroup], mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mask over every BatchNorm coupled to a masked one: in a group where some BatchNorms are
    masked, the unmasked ones follow – their channel goes when it goes in every masked one. A BN
    listed in the mask keeps exactly its own pattern. Groups the graph cannot shrink exactly
    (``refusal``) are left as listed."""
    out = {k: v.clone() for k, v in mask.items()}
    for group in groups:
        if group.refusal is not None:
            continue
        listed = [m for m in group.members if m.kind == "bn" and m.module in mask]
        if not listed:
            continue
        pruned = torch.ones(group.channels, dtype=torch.bool)
        for m in listed:
            pruned &= group.per_root(m, ~mask[m.module][list(m.idxs)])
        for m in group.members:
            if m.kind == "bn" and m.module not in mask:
                keep = out.setdefault(m.module, torch.ones(max(m.idxs) + 1, dtype=torch.bool))
                for i, r in zip(m.idxs, m.roots):
                    if pruned[r]:
                        keep[i] = False
    return out


def _refused_interest(group: ChannelGroup, pruned: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """For a group that is not shrunk (its index mapping may be unusable): a vector whose count is
    the most channels any one member has pruned, for the report."""
    n = max((int(t.sum()) for t in pruned.values()), default=0)
    out = torch.zeros(max(group.channels, n), dtype=torch.bool)
    out[:n] = True
    return out


def shrink_bn_mask(
    model: nn.Module,
    mask: Mapping[str, torch.Tensor],
    example_input: Any = None,
    *,
    on_empty: str = "error",
    verify: bool = True,
) -> ShrinkResult:
    """Remove the BatchNorm-masked channels (Early-Bird / network slimming) from a copy of ``model``.

    ``mask``: BatchNorm name -> bool per channel (True = kept). A masked BN stands for its whole
    dependency group: coupled BatchNorms it does not list follow it (:func:`expand_bn_mask`; e.g. the
    second BN of a depthwise-separable block, or every BN of a residual stream). The reference is
    ``model`` with γ = β = 0 on the (expanded) pruned channels; a channel is removed where the graph
    proves it dead there, otherwise it stays (zeroed) and the report says why. ``example_input``:
    one batch the model accepts (guessed from the first layer when None). ``on_empty``: ``error``
    (default) or ``keep`` one channel when a group would lose all of them.
    """
    checked = _check_bn_mask(model, mask)

    def prepare(reference: nn.Module, groups: list[ChannelGroup]):
        full = expand_bn_mask(groups, checked)
        with torch.no_grad():
            for name, keep in full.items():
                bn = reference.get_submodule(name)
                pruned = (~keep).to(bn.weight.device)
                bn.weight[pruned] = 0
                bn.bias[pruned] = 0
        interest = []
        for g in groups:
            if g.refusal is not None:
                interest.append(_refused_interest(g, {n: ~full[n] for n in g.bns if n in full}))
                continue
            want = torch.zeros(g.channels, dtype=torch.bool)
            for m in g.members:
                if m.kind == "bn" and m.module in full:
                    want |= g.per_root(m, ~full[m.module][list(m.idxs)], reduce="any")
            interest.append(want)
        return interest, 0

    small, reference, report, _ = _shrink(model, example_input, prepare, on_empty, verify, "shrink_bn_mask")
    return ShrinkResult(small, reference, report)


def shrink_weight_mask(
    model: nn.Module,
    mask: Mapping[str, torch.Tensor],
    example_input: Any = None,
    *,
    on_empty: str = "keep",
    verify: bool = True,
) -> ShrinkResult:
    """Remove the channels a weight mask empties (a refilled / regrouped ticket) from a copy of ``model``.

    ``mask``: parameter name -> bool tensor (a :class:`~ticketlab.masks.Mask`). A group channel
    goes when the mask row of every conv/linear producing it is empty; its biases, BatchNorm γ/β
    and depthwise filters go with it (they are zeroed in ``result.reference``, the weight-masked
    model it equals). ``result.mask`` is the mask left for the small model (the zeros inside kept
    channels), a :class:`~ticketlab.masks.Mask` over the same parameter names.
    """
    from ..masks import Mask

    params = dict(model.named_parameters())
    unknown = [n for n in mask if n not in params]
    if unknown:
        raise ChannelPruningError(f"the mask names parameters the model does not have: {unknown[:5]}")
    for n, t in mask.items():
        if tuple(t.shape) != tuple(params[n].shape):
            raise ChannelPruningError(f"mask for {n!r} has shape {tuple(t.shape)}, the parameter {tuple(params[n].shape)}")

    def prepare(reference: nn.Module, groups: list[ChannelGroup]):
        ref_params = dict(reference.named_parameters())
        with torch.no_grad():
            for n, t in mask.items():
                ref_params[n].mul_(t.to(device=ref_params[n].device, dtype=ref_params[n].dtype))
        interest, dropped = [], 0
        for g in groups:
            if g.refusal is not None:
                rows = {m.module: _rows_zero(mask[f"{m.module}.weight"], range(mask[f"{m.module}.weight"].shape[0]), 0)
                        for m in g.members if m.kind == "producer" and f"{m.module}.weight" in mask}
                interest.append(_refused_interest(g, rows))
                continue
            empty_all = torch.ones(g.channels, dtype=torch.bool)
            empty_any = torch.zeros(g.channels, dtype=torch.bool)
            producers = [m for m in g.members if m.kind == "producer"]
            for m in producers:
                w = f"{m.module}.weight"
                if w in mask:
                    rows = _rows_zero(mask[w], m.idxs, 0)
                else:
                    rows = torch.zeros(len(m.idxs), dtype=torch.bool)
                empty_all &= g.per_root(m, rows)
                empty_any |= g.per_root(m, rows, reduce="any")
            if not producers:
                empty_all[:] = False
            declared = empty_all if g.refusal is None else torch.zeros_like(empty_all)
            if declared.any():
                dropped += _zero_declared(reference, g, declared)
            interest.append(empty_any)
        return interest, dropped

    small, reference, report, decisions = _shrink(model, example_input, prepare, on_empty, verify, "shrink_weight_mask")
    remaining = _remaining_mask(mask, decisions, dict(small.named_parameters()))
    return ShrinkResult(small, reference, report, Mask(remaining))


def _remaining_mask(
    mask: Mapping[str, torch.Tensor],
    decisions: list[tuple[ChannelGroup, torch.Tensor]],
    small_params: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Slice every masked weight like the graph sliced its parameter."""
    drop: dict[str, dict[int, set[int]]] = {}
    for group, remove in decisions:
        if not remove.any():
            continue
        for m in group.members:
            if m.kind == "op":
                continue
            dim = 1 if m.kind == "consumer" else 0
            gone = {i for i, r in zip(m.idxs, m.roots) if remove[r]}
            if gone:
                drop.setdefault(m.module, {}).setdefault(dim, set()).update(gone)
    out: dict[str, torch.Tensor] = {}
    for name, t in mask.items():
        module, _, attr = name.rpartition(".")
        t = torch.as_tensor(t).bool().cpu()
        for dim, gone in drop.get(module, {}).items():
            if attr == "bias" and dim == 1:
                continue
            if t.dim() <= dim:
                continue
            keep = [i for i in range(t.shape[dim]) if i not in gone]
            t = t.index_select(dim, torch.tensor(keep, dtype=torch.long))
        if name not in small_params or tuple(t.shape) != tuple(small_params[name].shape):
            raise GraphShrinkError(
                f"could not carry the mask of {name!r} over to the shrunk model "
                f"({tuple(t.shape)} vs {tuple(small_params[name].shape) if name in small_params else 'missing'})"
            )
        out[name] = t
    return out
