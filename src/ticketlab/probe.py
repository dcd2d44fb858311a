"""Synthetic inputs for the analyses that run a network on a made-up sample.

SynFlow (``pruning/scores.py``), the connectivity analysis (``analysis/connectivity.py``) and the
FLOPs count (``analysis/flops.py``) run the network once on an input they build themselves: an
all-ones sample (SynFlow, connectivity: every input unit active with the same value) or zeros
(FLOPs: only the shapes matter). This module builds that input and runs the forward pass so
that it also means something for models whose input is not a float tensor.

Token models (``nn.Embedding`` first). An embedding lookup ``F.embedding(ids, W)`` is a Linear
layer applied to one-hot vectors: ``W^T onehot(id)``. The all-ones *input* of SynFlow and of the
connectivity argument is, for such a layer, the all-ones vector instead of a one-hot one, i.e.
every token at once: ``W^T 1 = W.sum(0)``. Inside :func:`probing` every embedding lookup
(``nn.Embedding`` or a functional ``F.embedding`` on a raw parameter) therefore returns the sum
of all rows of its table at every position of ``ids``, whatever the ids are. Every row of the
table then lies on the paths SynFlow counts and the connectivity analysis follows, exactly as
every input column of a Linear first layer does on the all-ones input, and the result does not
depend on which tokens some data happen to contain. Feeding real token ids instead would give
every row no token of the sample uses a score of zero and mark it disconnected. The ids are
never read, so the default probe (float ones of ``input_shape``) works for a token model with
no example input at all. ``nn.EmbeddingBag`` lookups return the same row sum once per bag.

``example_input``. When a forward pass needs a real input (it indexes with the input, one-hot
encodes it, branches on its values, ...), pass a batch of real inputs (batch dimension first);
its first sample is used: integer inputs as they are (valid token ids), floating inputs replaced
by the probe's fill value with the same shape. A forward pass that fails on the probe raises the
caller's error type with a message saying so.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["probe_input", "probing", "ProbeMode", "run_probe"]


class ProbeMode(TorchFunctionMode):
    """Replaces every embedding lookup by the sum of all rows of its table (see module docstring).

    ``zero_bias`` calls ``F.linear`` / ``F.conv1d/2d/3d`` with their bias at value zero but its
    gradient kept (``b - b.detach()``): the connectivity analysis needs every bias at zero, also
    a raw parameter whatever its name, and still the gradient of a masked bias. ``on_call``
    sees every other ``F.linear`` / conv call as ``on_call(func, args, kwargs, output)`` (the
    FLOPs count uses it for weights used functionally).
    """

    _WEIGHT_OPS = (F.linear, F.conv1d, F.conv2d, F.conv3d)

    def __init__(self, *, zero_bias: bool = False,
                 on_call: Callable[[Any, tuple, dict, Any], None] | None = None):
        super().__init__()
        self.zero_bias = zero_bias
        self.on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.embedding:
            ids = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            return weight.sum(0).expand(*ids.shape, weight.shape[-1]).contiguous()
        if func is F.embedding_bag:
            ids = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            offsets = args[2] if len(args) > 2 else kwargs.get("offsets")
            if ids.dim() == 2:
                bags = ids.shape[0]
            else:
                bags = offsets.numel() - (1 if kwargs.get("include_last_offset", False) else 0)
            return weight.sum(0).expand(bags, weight.shape[-1]).contiguous()
        if func in self._WEIGHT_OPS:
            if self.zero_bias:
                if len(args) > 2:
                    args = (*args[:2], _zeroed(args[2]), *args[3:])
                elif "bias" in kwargs:
                    kwargs["bias"] = _zeroed(kwargs["bias"])
            out = func(*args, **kwargs)
            if self.on_call is not None:
                self.on_call(func, args, kwargs, out)
            return out
        return func(*args, **kwargs)


def _zeroed(bias: Any) -> Any:
    if not isinstance(bias, torch.Tensor):
        return bias
    return bias - bias.detach() if bias.requires_grad else torch.zeros_like(bias)


def probing(*, zero_bias: bool = False, on_call=None) -> ProbeMode:
    """Context manager: run forward passes with embedding lookups as all-tokens sums."""
    return ProbeMode(zero_bias=zero_bias, on_call=on_call)


def probe_input(input_shape: Sequence[int] | None, example_input: torch.Tensor | None = None, *,
                fill: float = 1.0, dtype: torch.dtype = torch.float64,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """One probe sample with a batch dimension of 1.

    Without ``example_input``: ``fill`` everywhere, shape ``(1, *input_shape)``, ``dtype``. With
    a batch ``example_input``: its first sample, kept as it is when it holds integers (token ids)
    and filled with ``fill`` (same shape, ``dtype``) when it is floating point.
    """
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
            raise ValueError("example_input must be a batch of inputs (a tensor with the batch dimension first)")
        x = example_input[:1].to(device)
        if x.is_floating_point() or x.is_complex():
            return torch.full_like(x, fill, dtype=dtype)
        return x
    if input_shape is None:
        raise ValueError("a probe needs input_shape (one sample's shape) or an example_input")
    return torch.full((1, *(int(d) for d in input_shape)), fill, dtype=dtype, device=device)


def run_probe(model: nn.Module, x: torch.Tensor, error: type[Exception], purpose: str,
              *, example_given: bool, zero_bias: bool = False, on_call=None) -> Any:
    """``model(x)`` inside :func:`probing`; a failure becomes ``error`` saying what to do."""
    try:
        with probing(zero_bias=zero_bias, on_call=on_call):
            return model(x)
    except error:
        raise
    except Exception as exc:
        what = "the given example_input" if example_given else f"a synthetic {x.dtype} input"
        hint = ("" if example_given else
                " If the model needs a real input (token ids it indexes with, one-hot encodes or "
                "branches on), pass example_input= a batch of real inputs, e.g. data.train.x[:1].")
        raise error(
            f"{purpose}: {type(model).__name__} cannot run on {what} of shape {tuple(x.shape)} "
            f"({type(exc).__name__}: {exc}).{hint}"
        ) from exc
