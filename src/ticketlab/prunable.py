"""Which parameters a pruning method may touch.

One function decides, so that every method, baseline and analysis agrees on what "the weights"
are. Default: the ``weight`` of every Linear and Conv layer; biases and normalisation layers never.
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn

PRUNABLE_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class PrunableError(ValueError):
    """Raised when the prunable-parameter options do not fit the model."""


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module name, module) of every Linear/Conv layer in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_LAYER_TYPES)]


def prunable_parameters(
    model: nn.Module,
    *,
    include_first: bool = True,
    include_output: bool = True,
    exclude: Iterable[str] = (),
) -> dict[str, nn.Parameter]:
    """Parameter name -> weight of every prunable layer, in definition order.

    ``include_first`` / ``include_output`` drop the first or last prunable layer (by definition
    order: the usual input and output layers); ``exclude`` drops named parameters or all
    parameters under a named module. Raises PrunableError when nothing would be left, since a
    method that silently prunes nothing is the worst kind of failure.
    """
    layers = prunable_layers(model)
    if not layers:
        raise PrunableError(
            f"{type(model).__name__} has no Linear or Conv layers, so there is nothing to prune"
        )
    names = [f"{name}.weight" if name else "weight" for name, _ in layers]
    params = dict(model.named_parameters())
    chosen = list(zip(names, (m.weight for _, m in layers)))
    if not include_first:
        chosen = chosen[1:]
    if not include_output and chosen and chosen[-1][0] == names[-1]:
        chosen = chosen[:-1]
    excluded = set(exclude)
    unknown = {e for e in excluded if e not in params and not any(n.startswith(e + ".") for n in params)}
    if unknown:
        raise PrunableError(
            f"exclude names {sorted(unknown)} match no parameter or module of the model; "
            f"prunable parameters are {names}"
        )
    chosen = [
        (n, p) for n, p in chosen
        if n not in excluded and not any(n.startswith(e + ".") for e in excluded)
    ]
    if not chosen:
        raise PrunableError("the options exclude every prunable layer; nothing would be pruned")
    return dict(chosen)


def output_parameter_name(model: nn.Module) -> str:
    """Name of the last prunable weight (the output layer in feed-forward nets)."""
    layers = prunable_layers(model)
    if not layers:
        raise PrunableError(f"{type(model).__name__} has no Linear or Conv layers")
    name = layers[-1][0]
    return f"{name}.weight" if name else "weight"
