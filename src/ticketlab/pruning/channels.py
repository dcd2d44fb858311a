"""Channel (structured) pruning from BatchNorm scales: network slimming and Early-Bird tickets.

Network slimming (Liu et al. 2017) trains with an L1 penalty on the BatchNorm scales γ, so the
size of |γ| says how much a channel matters. Early-Bird tickets (You et al. 2020) draw a channel
mask from |γ| after every epoch, at a *global* threshold over all prunable BatchNorm layers, and
stop searching once consecutive masks stop changing (normalised Hamming distance). The ticket is
then made physically smaller and retrained.

A :data:`ChannelMask` maps a BatchNorm module name to a bool tensor over its channels (True =
kept). This module provides

* :func:`prunable_bn_layers` – which BatchNorm layers can lose channels independently;
* :func:`channel_mask_from_bn` – the global-threshold mask at a pruning ratio;
* :func:`channel_mask_distance` – normalised Hamming distance between two masks;
* :func:`apply_channel_mask` – the "masked full model" (pruned channels output exactly 0);
* :func:`shrink` – a new, physically smaller model computing the same function.

Which channels are prunable. A channel can be removed when it is produced by one conv, normalised
by one BN and read by exactly one next layer. In ticketlab's VGG every ``features`` BN is such a
layer (its channels feed the next conv, or the ``fc`` layer through the average pool and flatten).
In a ResNet only the BN after each block's first conv (``bn1``) is: the channels of ``bn2``, of the
projection shortcut's BN and of the stem BN are summed into the residual stream, so they must
match across every residual addition and are kept. This is what network slimming and Early-Bird
do for ResNets (they prune the inner channels of the residual blocks). The structure is
recognised from ticketlab's :class:`~ticketlab.models.VGG` / :class:`~ticketlab.models.ResNet`
classes (and checked); other models raise :class:`ChannelPruningError`.

Any model, through the dependency graph. When Torch-Pruning is installed
(``pip install 'ticketlab[structured]'``) every function here works on the groups of coupled
channels that its dependency graph finds (:mod:`ticketlab.pruning.graph_shrink`), for any
``nn.Module``: the prunable BatchNorms are, for each group whose channels are produced by one
conv/linear layer (no residual merge), the BatchNorm right after that layer – for VGG and ResNet
exactly the layers listed above; for a depthwise-separable block the BN after the pointwise conv,
which the BN after the depthwise conv follows. A masked BatchNorm stands for its whole group: the
coupled BatchNorms the mask does not list are zeroed with it (:func:`graph_shrink.expand_bn_mask`),
so listing a residual-stream BN prunes that stream channel in every block of the stage, and
:func:`shrink` removes it from every coupled layer. Without Torch-Pruning the VGG/ResNet code below
is used (and other models raise with the install hint). ``example_input`` (one batch the model
accepts) lets the graph be traced; when omitted it is guessed from the first layer.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..models import BasicBlock, ResNet, VGG

__all__ = [
    "ChannelMask",
    "ChannelPruningError",
    "prunable_bn_layers",
    "channel_mask_from_bn",
    "channel_mask_distance",
    "apply_channel_mask",
    "shrink",
]

ChannelMask = dict[str, torch.Tensor]
"""BatchNorm module name -> bool tensor of shape (num_features,), True = channel kept."""


class ChannelPruningError(ValueError):
    """The model's structure is not supported, or a channel mask / argument does not fit it."""


# Modules that act on every channel separately (so a zero channel stays zero and channels keep
# their index) and may therefore sit between a pruned BN and the layer that reads its channels.
_CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class _Group:
    """One prunable channel group: ``producer`` conv -> ``bn`` -> ... -> ``consumer``."""

    bn: str
    producer: str  # Conv2d whose output channels the BN normalises
    consumer: str  # Conv2d (input channels) or Linear (input features) reading the channels
    spatial: int = 1  # Linear consumer only: input features per channel (h*w after the pool)


def _check_conv(model_name: str, name: str, module: nn.Module) -> nn.Conv2d:
    if not isinstance(module, nn.Conv2d) or module.groups != 1:
        raise ChannelPruningError(
            f"{model_name}: expected an ungrouped nn.Conv2d at {name!r}, found {type(module).__name__}"
            + (f" with groups={module.groups}" if isinstance(module, nn.Conv2d) else "")
        )
    return module


def _vgg_groups(model: VGG) -> list[_Group]:
    """Each ``features`` BN: conv before it produces its channels, the next conv (or fc) reads them."""
    features = model.features
    if not isinstance(features, nn.Sequential):
        raise ChannelPruningError("VGG: expected model.features to be an nn.Sequential")
    layers = list(features)
    groups: list[_Group] = []
    for i, module in enumerate(layers):
        if not isinstance(module, nn.BatchNorm2d):
            continue
        if i == 0:
            raise ChannelPruningError("VGG: a features BatchNorm must follow a Conv2d")
        conv = _check_conv("VGG", f"features.{i - 1}", layers[i - 1])
        if conv.out_channels != module.num_features:
            raise ChannelPruningError(f"VGG: features.{i - 1} and features.{i} disagree on channels")
        consumer: str | None = None
        for j in range(i + 1, len(layers)):
            nxt = layers[j]
            if isinstance(nxt, nn.Conv2d):
                _check_conv("VGG", f"features.{j}", nxt)
                consumer = f"features.{j}"
                break
            if not isinstance(nxt, _CHANNELWISE):
                raise ChannelPruningError(
                    f"VGG: features.{j} ({type(nxt).__name__}) between features.{i} and the next "
                    "conv is not a channel-wise layer; cannot prune its channels"
                )
        spatial = 1
        if consumer is None:
            # Last BN: read by fc through pool + flatten, which lays out channel c as the
            # features c*h*w ... (c+1)*h*w - 1.
            fc = model.fc
            if not isinstance(fc, nn.Linear) or fc.in_features % module.num_features:
                raise ChannelPruningError(
                    "VGG: model.fc must be an nn.Linear whose in_features is a multiple of the last "
                    "BatchNorm's channels"
                )
            pools = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool2d)
            if not isinstance(model.pool, pools):
                raise ChannelPruningError("VGG: model.pool must be a (channel-wise) pooling layer")
            consumer, spatial = "fc", fc.in_features // module.num_features
        groups.append(_Group(f"features.{i}", f"features.{i - 1}", consumer, spatial))
    return groups


def _resnet_groups(model: ResNet) -> list[_Group]:
    """Only each BasicBlock's ``bn1``: conv1 produces its channels, conv2 alone reads them."""
    groups: list[_Group] = []
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            for attr in ("conv1", "conv2"):
                _check_conv("ResNet", f"{name}.{attr}", getattr(module, attr))
            bn1 = module.bn1
            if not isinstance(bn1, nn.BatchNorm2d) or bn1.num_features != module.conv1.out_channels:
                raise ChannelPruningError(f"ResNet: {name}.bn1 must be a BatchNorm2d over conv1's channels")
            groups.append(_Group(f"{name}.bn1", f"{name}.conv1", f"{name}.conv2"))
    if not groups:
        raise ChannelPruningError("ResNet: found no BasicBlock to prune")
    return groups


def _groups(model: nn.Module) -> list[_Group]:
    if isinstance(model, VGG):
        return _vgg_groups(model)
    if isinstance(model, ResNet):
        return _resnet_groups(model)
    raise ChannelPruningError(
        f"channel pruning supports ticketlab's VGG and ResNet models (whose conv/BN structure is "
        f"known), not {type(model).__name__}, unless Torch-Pruning's dependency graph is installed "
        f"for any model: pip install 'ticketlab[structured]'"
    )


# --- the dependency-graph path ------------------------------------------------------------------

USE_GRAPH = True
"""Use Torch-Pruning's dependency graph when it is installed (set False to force the VGG/ResNet code)."""

_GRAPH_CACHE: dict[tuple, tuple[tuple, list]] = {}
_GRAPH_CACHE_SIZE = 16


def _graph() -> bool:
    if not USE_GRAPH:
        return False
    from . import graph_shrink

    return graph_shrink.available()


def _signature(model: nn.Module) -> tuple:
    return (
        type(model).__qualname__,
        tuple((n, type(m).__name__) for n, m in model.named_modules()),
        tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
    )


def _graph_groups(model: nn.Module, example_input=None) -> list:
    """The model's channel groups (cached per architecture: the search calls this every epoch)."""
    from .graph_shrink import channel_groups

    key = _signature(model)
    shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else None
    hit = _GRAPH_CACHE.get(key)
    if hit is not None and (shape is None or hit[0] == shape):
        return hit[1]
    groups = channel_groups(model, example_input)
    if len(_GRAPH_CACHE) >= _GRAPH_CACHE_SIZE:
        _GRAPH_CACHE.pop(next(iter(_GRAPH_CACHE)))
    _GRAPH_CACHE[key] = (shape, groups)
    return groups


def _graph_prunable(model: nn.Module, example_input=None) -> list[str]:
    groups = _graph_groups(model, example_input)
    reps = {
        g.representative_bn
        for g in groups
        if g.refusal is None and not g.residual and g.representative_bn is not None
    }
    names = [n for n, m in model.named_modules() if n in reps]
    if not names:
        raise ChannelPruningError(
            f"channel pruning supports models whose conv/linear channels are normalised by a "
            f"BatchNorm (network slimming ranks channels by the BatchNorm scale); the dependency "
            f"graph of {type(model).__name__} has no such channel group that can be removed"
        )
    return names


def prunable_bn_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> list[str]:
    """Names of the BatchNorm layers whose channels can be removed independently, in forward order.

    VGG: every ``features`` BN. ResNet: only each block's ``bn1`` – the residual-stream BNs
    (``bn2``, shortcut BN, stem ``bn``) must keep matching channel counts across the residual
    additions (as in network slimming / Early-Bird for ResNets). With Torch-Pruning installed, any
    model: the BN after the producing layer of each non-residual dependency group (see the module
    docstring). Otherwise other models raise ChannelPruningError.
    """
    if _graph():
        return _graph_prunable(model, example_input)
    return [g.bn for g in _groups(model)]


def _bn(model: nn.Module, name: str) -> nn.BatchNorm2d:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ChannelPruningError(f"model has no module {name!r}") from None
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise ChannelPruningError(f"{name!r} is a {type(module).__name__}, not a BatchNorm layer")
    return module  # type: ignore[return-value]


def channel_mask_from_bn(
    model: nn.Module,
    prune_ratio: float,
    layers: Sequence[str] | None = None,
    example_input: torch.Tensor | None = None,
) -> ChannelMask:
    """Channel mask at a global |γ| threshold: the ``round(prune_ratio * total)`` smallest go.

    ``layers`` defaults to :func:`prunable_bn_layers`; ``total`` is the number of channels of those
    layers together (one threshold for all, as in network slimming: layers whose scales are
    small lose more channels). ``round`` is Python's (halves to even).

    Order and ties: channels are removed in order of increasing |γ|; among equal |γ| the later
    channel (later layer, then higher index) goes first, so the earlier channel is kept. The mask
    is therefore a deterministic function of the scales.

    At least one channel per layer: a layer left with no channel would cut the network, so in any
    layer the threshold would empty, its channel of largest |γ| (the earliest among ties) is kept
    anyway. The number removed is then smaller than ``round(prune_ratio * total)`` by the number
    of such layers (this can only happen at high ratios or with very unequal scales).
    """
    if (
        isinstance(prune_ratio, bool)
        or not isinstance(prune_ratio, (int, float))
        or not 0 <= prune_ratio <= 1
    ):
        raise ChannelPruningError(f"prune_ratio must be a number in [0, 1], got {prune_ratio!r}")
    names = prunable_bn_layers(model, example_input) if layers is None else list(layers)
    if not names:
        raise ChannelPruningError("no BatchNorm layers given")
    if len(set(names)) != len(names):
        raise ChannelPruningError("a BatchNorm layer is listed twice")
    scores = []
    for name in names:
        bn = _bn(model, name)
        if bn.weight is None:
            raise ChannelPruningError(f"{name!r} has no affine scale (affine=False); nothing to rank")
        scores.append(bn.weight.detach().abs().float().cpu().flatten())
    flat = torch.cat(scores)
    total = flat.numel()
    n_remove = round(prune_ratio * total)
    # Stable ascending sort of the reversed scores: among ties the later channel comes first.
    order = total - 1 - torch.argsort(flat.flip(0), stable=True)
    keep = torch.ones(total, dtype=torch.bool)
    keep[order[:n_remove]] = False
    mask: ChannelMask = {}
    start = 0
    for name, s in zip(names, scores):
        layer_keep = keep[start : start + s.numel()].clone()
        if not layer_keep.any():
            # argmax returns the first maximal index: the earliest channel among ties.
            layer_keep[int(torch.argmax(s))] = True
        mask[name] = layer_keep
        start += s.numel()
    return mask


def channel_mask_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Normalised Hamming distance: fraction of all channels whose kept/pruned state differs.

    0 for equal masks, 1 for complementary ones. Early-Bird stops the search once the distance
    between consecutive epochs' masks stays small. Both masks must cover the same layers.
    """
    if set(a) != set(b):
        raise ChannelPruningError(
            f"channel masks cover different layers: {sorted(set(a) ^ set(b))}"
        )
    differ = total = 0
    for name in a:
        ta, tb = torch.as_tensor(a[name]).bool().cpu(), torch.as_tensor(b[name]).bool().cpu()
        if ta.shape != tb.shape:
            raise ChannelPruningError(f"layer {name!r}: mask shapes {tuple(ta.shape)} != {tuple(tb.shape)}")
        differ += int((ta ^ tb).sum())
        total += ta.numel()
    if total == 0:
        raise ChannelPruningError("channel masks have no channels")
    return differ / total


def _check_mask(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mask tensors as CPU bool vectors, checked against the BN layers they name."""
    if not mask:
        raise ChannelPruningError("empty channel mask")
    checked = {}
    for name, t in mask.items():
        bn = _bn(model, name)
        t = torch.as_tensor(t).detach().cpu()
        if t.dtype != torch.bool or t.shape != (bn.num_features,):
            raise ChannelPruningError(
                f"mask for {name!r} must be a bool tensor of shape ({bn.num_features},), got "
                f"{t.dtype} {tuple(t.shape)}"
            )
        checked[name] = t
    return checked


def apply_channel_mask(
    model: nn.Module, mask: Mapping[str, torch.Tensor], example_input: torch.Tensor | None = None
) -> nn.Module:
    """Zero γ and β of the pruned channels in place (the "masked full model"); returns ``model``.

    With γ = β = 0 the BN outputs exactly 0 for those channels (in train and eval mode), and
    ReLU(0) = 0, so every later layer sees zeros, as if the channel were gone; :func:`shrink`
    computes the same function with smaller layers. This is a one-off edit: training the masked
    model further lets γ, β move away from 0 unless the mask is applied again after each step.
    With the dependency graph, the BatchNorms coupled to a masked one (same group) follow it.
    """
    checked = _check_mask(model, mask)
    if _graph():
        from .graph_shrink import expand_bn_mask

        for name in checked:
            if not _bn(model, name).affine:
                raise ChannelPruningError(f"{name!r} has no affine parameters to zero")
        checked = expand_bn_mask(_graph_groups(model, example_input), checked)
    with torch.no_grad():
        for name, keep in checked.items():
            bn = _bn(model, name)
            if not bn.affine:
                raise ChannelPruningError(f"{name!r} has no affine parameters to zero")
            pruned = (~keep).to(bn.weight.device)
            bn.weight[pruned] = 0
            bn.bias[pruned] = 0
    return model


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=like.requires_grad)


def _slice_conv(
    conv: nn.Conv2d, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None
) -> nn.Conv2d:
    """A new Conv2d with only the given output channels and/or input channels of ``conv``."""
    weight = conv.weight
    if out_idx is not None:
        weight = weight[out_idx.to(weight.device)]
    if in_idx is not None:
        weight = weight[:, in_idx.to(weight.device)]
    new = nn.Conv2d(
        weight.shape[1], weight.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=1, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=weight.device, dtype=weight.dtype,
    )  # fmt: skip
    new.weight = _param(weight, conv.weight)
    if conv.bias is not None:
        bias = conv.bias if out_idx is None else conv.bias[out_idx.to(weight.device)]
        new.bias = _param(bias, conv.bias)
    new.train(conv.training)
    return new


def _slice_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    """A new BatchNorm2d with only channels ``idx`` (affine parameters and running statistics)."""
    ref = bn.weight if bn.weight is not None else bn.running_mean
    device = ref.device if ref is not None else None
    dtype = ref.dtype if ref is not None else None
    new = nn.BatchNorm2d(
        len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
        track_running_stats=bn.track_running_stats, device=device, dtype=dtype,
    )  # fmt: skip
    if bn.affine:
        new.weight = _param(bn.weight[idx.to(bn.weight.device)], bn.weight)
        new.bias = _param(bn.bias[idx.to(bn.bias.device)], bn.bias)
    if bn.track_running_stats and bn.running_mean is not None:
        new.running_mean = bn.running_mean[idx.to(bn.running_mean.device)].clone()
        new.running_var = bn.running_var[idx.to(bn.running_var.device)].clone()
        new.num_batches_tracked = bn.num_batches_tracked.clone()
    new.train(bn.training)
    return new


def _slice_linear_in(fc: nn.Linear, cols: torch.Tensor) -> nn.Linear:
    """A new Linear with only input features ``cols`` of ``fc``."""
    weight = fc.weight[:, cols.to(fc.weight.device)]
    new = nn.Linear(
        weight.shape[1], weight.shape[0], bias=fc.bias is not None,
        device=weight.device, dtype=weight.dtype,
    )  # fmt: skip
    new.weight = _param(weight, fc.weight)
    if fc.bias is not None:
        new.bias = _param(fc.bias, fc.bias)
    new.train(fc.training)
    return new


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def shrink(
    model: nn.Module, mask: Mapping[str, torch.Tensor], example_input: torch.Tensor | None = None
) -> nn.Module:
    """A new, physically smaller copy of ``model`` without the pruned channels (``model`` untouched).

    For each masked BN: the conv before it loses those output channels (weight rows, bias), the BN
    loses them (γ, β, running mean and variance), and the layer reading them loses the matching
    inputs: input channels of the next conv, or for VGG's last BN the ``fc`` input features of
    those channels (``h*w`` per channel after the pool and flatten). The result computes the same
    function as :func:`apply_channel_mask` on a copy (exactly up to float rounding, in train and
    eval mode), with fewer parameters and FLOPs; it is what Early-Bird retrains. ``mask`` may cover
    a subset of :func:`prunable_bn_layers` (other layers keep all channels) but no other layer.

    With Torch-Pruning installed this goes through the dependency graph
    (:func:`graph_shrink.shrink_bn_mask`) for any model: any BatchNorm may be masked, coupled
    layers (residual adds, 1x1 shortcuts, depthwise convs, concatenations) are sliced together,
    and the result is checked against the masked model on ``example_input``. A channel that stays
    alive in a coupled layer is kept (zeroed); :func:`graph_shrink.shrink_bn_mask` returns the
    report of what was kept and why.
    """
    checked = _check_mask(model, mask)
    for name, keep in checked.items():
        if not keep.any():
            raise ChannelPruningError(f"mask removes every channel of {name!r}; keep at least one")
    if _graph():
        from .graph_shrink import shrink_bn_mask

        result = shrink_bn_mask(model, checked, example_input, on_empty="error")
        if result.report.not_removed:
            warnings.warn(f"shrink kept pruned channels (they stay zeroed):\n{result.report}", stacklevel=2)
        return result.model
    groups = {g.bn: g for g in _groups(model)}
    extra = [name for name in checked if name not in groups]
    if extra:
        raise ChannelPruningError(
            f"cannot shrink {extra}: not prunable BN layers of this model (prunable: "
            f"{list(groups)}); residual-stream channels must match across residual additions"
        )
    small = copy.deepcopy(model)
    with torch.no_grad():
        for name, keep in checked.items():
            group = groups[name]
            idx = torch.nonzero(keep).flatten()
            if idx.numel() == 0:
                raise ChannelPruningError(f"mask removes every channel of {name!r}; keep at least one")
            producer = small.get_submodule(group.producer)
            _replace(small, group.producer, _slice_conv(producer, out_idx=idx))  # type: ignore[arg-type]
            _replace(small, name, _slice_bn(small.get_submodule(name), idx))  # type: ignore[arg-type]
            consumer = small.get_submodule(group.consumer)
            if isinstance(consumer, nn.Linear):
                s = group.spatial
                cols = (idx[:, None] * s + torch.arange(s)[None, :]).flatten()
                _replace(small, group.consumer, _slice_linear_in(consumer, cols))
            else:
                _replace(small, group.consumer, _slice_conv(consumer, in_idx=idx))  # type: ignore[arg-type]
    return small
