"""Which kept weights of a pruned network can still matter: the *effective* sub-network.

At high sparsity a mask keeps weights that lie on no input->output path: a unit whose incoming
weights are all pruned feeds its outgoing weights nothing but its bias, and a unit whose outgoing
weights are all pruned throws away whatever its incoming weights compute. Such weights count as
"kept" in ``Mask.density`` but cannot carry information from the input, so reporting density alone
overstates what a ticket really uses, and a layer with no effective weight (layer collapse) cuts
the network in two. This module finds the effective weights of any ``nn.Module``.

Method (no knowledge of the layer graph needed; residual adds, concatenations, pooling and
BatchNorm all just work): on a float64 copy of the model in eval mode, every masked weight is set
to its mask (kept = 1, pruned = 0), every other weight-like parameter (unmasked prunable layers,
BatchNorm gamma, ...) to 1 and every bias (BatchNorm beta included) to 0; BatchNorm running statistics
become mean 0 / variance 1, so BatchNorm scales by the positive constant 1/sqrt(1 + eps). With an
all-ones input every activation is then a non-negative sum over input->unit paths of products of
ones, ReLU passes it unchanged, and the output sum R is a polynomial in the weights whose monomials
are exactly the input->output paths, all with positive coefficients. Hence
``dR/dw_ij = (paths from unit j to the output) * (activation of unit i)``, which is non-zero
exactly when w_ij lies on at least one input->output path. One forward and one backward pass of
a single sample give the answer for every weight at once.

Two substitutions on the copy keep that argument exact for common modules:

* max pools (``nn.MaxPool1/2/3d``, ``nn.AdaptiveMaxPool1/2/3d``) become the matching average
  pools, because the backward pass of a max pool feeds only the arg-max of each window and would
  hide a weight that reaches the output through a smaller element of a window;
* saturating or shifting activations and normalisations that centre their input (sigmoid, tanh,
  ReLU6, softplus, softmax, LayerNorm, GroupNorm, BatchNorm without running statistics, ...) become
  ``nn.Identity``: on non-negative inputs they would zero gradients, add a constant (a fake source)
  or subtract a mean, none of which says anything about connectivity.

Operations called functionally inside ``forward`` (``F.max_pool2d``, ``torch.sigmoid``, ...)
cannot be replaced; ``F.relu``, additions, concatenations, flattening and average pooling are exact.
Biases passed to ``F.linear`` / ``F.conv*d`` are zeroed whatever their names (raw parameters of
custom modules included), keeping the gradient of a masked bias.

Inputs. The all-ones input is built from ``input_shape`` (one sample's shape). For a token model
(``nn.Embedding`` first) each embedding lookup returns the sum of all rows of its table (every
token at once, the one-hot analogue of the all-ones input; see :mod:`ticketlab.probe`), so a row
of a pruned table is effective when it is kept and its columns reach the output, whatever
tokens some data contain; the ids are never read, so no example input is needed. A tied table
(the embedding shared with the output layer) is followed through both uses. Models that need a
real input (they index with or one-hot encode it themselves) take ``example_input=`` a batch of
real inputs (first sample used; integer ids as they are, floating inputs replaced by ones).

Numerics: the values are path counts, scaled only by average pools (1/window size) and BatchNorm
(1/sqrt(1 + eps) per layer), so they neither underflow nor overflow for the nets studied here:
VGG-16 at full width has at most about 4608**13 ~ 1e48 paths into a unit, ResNet-56 about 1e150,
far below float64's 1.8e308, and the few divisions (a 32x32 global average pool is 1/1024) are
far above its 2.2e-308. A net deep and wide enough to overflow raises a ConnectivityError instead
of returning a wrong answer.

The caller's model is never touched: everything happens on a deep copy.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..masks import Mask
from ..probe import probe_input, run_probe

__all__ = [
    "ConnectivityError",
    "effective_mask",
    "effective_density",
    "layer_report",
    "is_disconnected",
    "collapsed_layers",
    "format_layer_report",
]


class ConnectivityError(ValueError):
    """The connectivity of a model cannot be computed exactly (e.g. path counts overflow float64)."""


def _optional(*names: str) -> tuple[type[nn.Module], ...]:
    """Module classes that exist in the installed torch (some are newer than our minimum)."""
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


# Elementwise maps that on non-negative inputs either pass them through monotonically (ReLU, GELU)
# or would distort the path count (saturate, shift, add a constant); Identity is exact for all.
_ACTIVATIONS = _optional(
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Mish",
    "Softplus", "Sigmoid", "LogSigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Hardswish", "Softsign",
    "Softshrink", "Hardshrink", "Tanhshrink", "Threshold", "Softmax", "Softmin", "LogSoftmax",
    "Softmax2d",
)
# Normalisations that always use statistics of the input (they centre it) become Identity too.
_CENTRING_NORMS = _optional("LayerNorm", "GroupNorm", "LocalResponseNorm", "RMSNorm")
_MAX_TO_AVG: dict[type[nn.Module], type[nn.Module]] = {
    nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d,
}
_ADAPTIVE_MAX_TO_AVG: dict[type[nn.Module], type[nn.Module]] = {
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d,
}


def _is_bias(name: str) -> bool:
    """Biases (``bias``, ``in_proj_bias``, BatchNorm beta) are additive sources, not path edges."""
    return "bias" in name.rsplit(".", 1)[-1]


def _replacement(module: nn.Module) -> nn.Module | None:
    """The connectivity-preserving stand-in for ``module`` on the copy, or None to keep it."""
    if isinstance(module, _ACTIVATIONS) or isinstance(module, _CENTRING_NORMS):
        return nn.Identity()
    if isinstance(module, nn.modules.batchnorm._NormBase):
        # BatchNorm/InstanceNorm with running statistics is a per-channel affine map in eval mode
        # (handled through its parameters and buffers); without them it normalises the batch.
        return None if module.running_mean is not None else nn.Identity()
    if type(module) in _MAX_TO_AVG and not module.return_indices and _all_ones(module.dilation):
        return _MAX_TO_AVG[type(module)](
            module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode,
            count_include_pad=False,
        )
    if type(module) in _ADAPTIVE_MAX_TO_AVG and not module.return_indices:
        return _ADAPTIVE_MAX_TO_AVG[type(module)](module.output_size)
    return None


def _all_ones(value: int | Sequence[int]) -> bool:
    """Whether an int-or-tuple pooling argument (dilation) is 1 in every dimension."""
    return value == 1 if isinstance(value, int) else all(v == 1 for v in value)


def _swap_modules(model: nn.Module, protected: set[str]) -> None:
    """Replace modules of the copy in place by their stand-ins (see ``_replacement``).

    Modules that own a masked parameter (``protected``) are kept, or the parameter would vanish.
    ``remove_duplicate=False`` reaches a module registered under two names through both.
    """
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not name:
            continue
        if any(p == name or p.startswith(name + ".") for p in protected):
            continue
        new = _replacement(module)
        if new is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)


def _floating_leaves(output: Any) -> list[torch.Tensor]:
    """Every floating tensor in a model output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in _floating_leaves(o)]
    return []


def _output_sum(output: Any) -> torch.Tensor:
    """R: the sum of all output entries (every output unit counts as a path end)."""
    leaves = _floating_leaves(output)
    if not leaves:
        raise ConnectivityError(
            f"the model returned {type(output).__name__}; connectivity needs a floating tensor "
            "(or a tuple, list or dict of them) as output"
        )
    return torch.stack([t.sum() for t in leaves]).sum()


def _analyse(model: nn.Module, mask: Mask, input_shape: tuple[int, ...],
             example_input: torch.Tensor | None = None) -> tuple[Mask, float]:
    """(effective mask, R) where R = output sum on the all-ones input of the 0/1 network.

    R counts the input->output paths (scaled by pools and BatchNorm), so R == 0 means disconnected.
    """
    mask.check_fits(model)  # a clear MaskError before any work
    device = next(iter(model.parameters())).device
    if device.type not in ("cpu", "cuda"):  # e.g. MPS has no float64
        device = torch.device("cpu")
    net = copy.deepcopy(model)
    _swap_modules(net, set(mask))
    net = net.to(device=device, dtype=torch.float64).eval()

    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if name in mask:
                # A kept bias would be a source of "signal" not coming from the input: use 0 so that
                # its gradient (the path count from its unit to the output) is all that is measured.
                value = 0.0 if _is_bias(name) else mask[name].to(device=device, dtype=p.dtype)
                p.copy_(torch.as_tensor(value, dtype=p.dtype, device=device).expand_as(p))
            else:
                p.fill_(0.0 if _is_bias(name) else 1.0)
            p.grad = None
            p.requires_grad_(name in mask)
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.running_mean is not None:
                module.running_mean.zero_()
                module.running_var.fill_(1.0)

    x = probe_input(input_shape, example_input, fill=1.0, dtype=torch.float64, device=device)
    with torch.enable_grad():
        r = _output_sum(run_probe(net, x, ConnectivityError, "connectivity",
                                  example_given=example_input is not None, zero_bias=True))
        if not r.requires_grad:  # the output does not depend on any masked parameter
            grads: dict[str, torch.Tensor | None] = {n: None for n in mask}
        else:
            used = [n for n in mask if params[n].requires_grad]
            found = torch.autograd.grad(r, [params[n] for n in used], allow_unused=True)
            grads = dict(zip(used, found))
    total = float(r.detach())
    if total != total or total in (float("inf"), float("-inf")):
        raise ConnectivityError(
            f"the path count of {type(model).__name__} overflows float64 (R = {total}); the net "
            "is too deep and wide for the exact all-ones method"
        )
    if total < 0:
        raise ConnectivityError(
            f"the all-ones network of {type(model).__name__} gave a negative output sum ({total}); "
            "its forward uses an operation that is not monotone on non-negative inputs"
        )

    effective = {}
    for name in mask:
        g = grads.get(name)
        if g is None:
            effective[name] = torch.zeros_like(mask[name])
            continue
        g = g.detach().cpu()
        kept = mask[name]
        if not torch.isfinite(g[kept]).all():
            raise ConnectivityError(
                f"the gradient of {name!r} overflows float64; the net is too deep and wide for the "
                "exact all-ones method"
            )
        effective[name] = kept & (g != 0)
    return Mask(effective), total


def effective_mask(model: nn.Module, mask: Mask, input_shape: tuple[int, ...],
                   example_input: torch.Tensor | None = None) -> Mask:
    """The kept weights that lie on at least one input->output path of the pruned network.

    Same parameters and shapes as ``mask``; always a subset of it. ``input_shape`` is one sample's
    shape without the batch dimension, e.g. (3, 32, 32); ``example_input`` (optional) a batch of
    real inputs for models that cannot run on the all-ones probe (see the module docstring). The
    model is not modified.
    """
    return _analyse(model, mask, tuple(input_shape), example_input)[0]


def effective_density(model: nn.Module, mask: Mask, input_shape: tuple[int, ...],
                      example_input: torch.Tensor | None = None) -> float:
    """Effective kept weights / all masked weights: the density the ticket really uses."""
    return effective_mask(model, mask, input_shape, example_input).density


def is_disconnected(model: nn.Module, mask: Mask, input_shape: tuple[int, ...],
                    example_input: torch.Tensor | None = None) -> bool:
    """True when no path at all leads from the input to the output (the net outputs constants)."""
    return _analyse(model, mask, tuple(input_shape), example_input)[1] == 0.0


def _rows(mask: Mask, effective: Mask) -> list[dict[str, Any]]:
    rows = []
    for name in mask:
        total = mask[name].numel()
        kept = int(mask[name].sum())
        eff = int(effective[name].sum())
        rows.append({
            "name": name,
            "shape": tuple(mask[name].shape),
            "total": total,
            "kept": kept,
            "density": kept / total,
            "effective": eff,
            "effective_density": eff / total,
            "collapsed": kept == 0 or eff == 0,
        })
    return rows


def layer_report(model: nn.Module, mask: Mask, input_shape: tuple[int, ...],
                 example_input: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """One row per masked parameter: name, shape, total, kept, density, effective,
    effective_density (effective / total) and collapsed (kept == 0 or effective == 0).

    Shows where the kept-but-useless weights are and which layers cut the network.
    """
    return _rows(mask, effective_mask(model, mask, input_shape, example_input))


def collapsed_layers(model: nn.Module, mask: Mask, input_shape: tuple[int, ...],
                     example_input: torch.Tensor | None = None) -> list[str]:
    """Masked parameters with no kept or no effective weight, in mask order (layer collapse)."""
    return [r["name"] for r in layer_report(model, mask, input_shape, example_input) if r["collapsed"]]


def format_layer_report(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned text table of ``layer_report`` rows with a total line; collapsed layers are flagged."""
    head = ("parameter", "shape", "kept", "total", "density", "effective", "eff.density", "")
    body = [
        (
            r["name"], "x".join(map(str, r["shape"])), str(r["kept"]), str(r["total"]),
            f"{r['density']:.4f}", str(r["effective"]), f"{r['effective_density']:.4f}",
            "COLLAPSED" if r["collapsed"] else "",
        )
        for r in rows
    ]
    total = sum(r["total"] for r in rows)
    kept = sum(r["kept"] for r in rows)
    eff = sum(r["effective"] for r in rows)
    ratio = (lambda n: f"{n / total:.4f}") if total else (lambda n: "-")
    body.append(("total", "", str(kept), str(total), ratio(kept), str(eff), ratio(eff), ""))
    table = [head, *body]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    left = {0, 1, 7}

    def fmt(line: Sequence[str]) -> str:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join(fmt(line) for line in table)
