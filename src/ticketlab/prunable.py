"""Which parameters a pruning method may touch.

One function decides, so that every method, baseline and analysis agrees on what "the weights"
are. Default: the ``weight`` of every Linear and Conv layer; biases and normalisation layers never.

Names. A parameter is always named the way ``model.named_parameters()`` names it. That call
yields a parameter shared by several modules (tied weights, e.g. ``self.out.weight =
self.emb.weight``) once, under the first name it meets (``"emb.weight"``), so a shared parameter
has exactly one name, one entry in a Mask and one mask, which masks it wherever it is used.
``exclude`` and ``include`` may name a shared parameter by any of its names.

Weights outside the default rule. Weights the rule cannot see (a raw ``nn.Parameter`` used
through ``F.linear`` / ``F.conv2d``, ``nn.Embedding`` tables, ``nn.MultiheadAttention``'s
``in_proj_weight``, RNN and transposed-conv weights, ...) are never pruned silently: every
parameter with two or more dimensions that is neither chosen nor excluded on purpose is named in
one :class:`UnprunedWeightsWarning`, which says how to include it (``include=[name]``) or silence
it (``exclude=[name]``).
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable

from torch import nn

PRUNABLE_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class PrunableError(ValueError):
    """Raised when the prunable-parameter options do not fit the model."""


class UnprunedWeightsWarning(UserWarning):
    """Weights with two or more dimensions that the prunable-parameter rule leaves dense.

    ``names`` holds their parameter names (as ``named_parameters()`` gives them).
    """

    def __init__(self, message: str, names: Iterable[str] = ()):
        super().__init__(message)
        self.names = list(names)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module name, module) of every Linear/Conv layer in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_LAYER_TYPES)]


def parameter_names(model: nn.Module) -> dict[int, str]:
    """``id(parameter)`` -> its name: the first name ``named_parameters()`` gives it.

    A parameter shared by several modules (tied weights) has one entry, under its first name.
    """
    return {id(p): n for n, p in model.named_parameters()}


def parameter_aliases(model: nn.Module) -> dict[str, list[str]]:
    """Name of each parameter -> every name it is registered under (one name unless it is shared).

    E.g. ``{"emb.weight": ["emb.weight", "out.weight"], ...}`` for an embedding tied to the output.
    """
    canonical = parameter_names(model)
    aliases: dict[str, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(canonical[id(p)], [])
        if name not in aliases[canonical[id(p)]]:
            aliases[canonical[id(p)]].append(name)
    return aliases


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` is the parameter name itself or a module above it (whole name components)."""
    return name == pattern or name.startswith(pattern + ".")


def _layer_weights(model: nn.Module, canonical: dict[int, str]) -> list[tuple[str, str]]:
    """(name of the layer's weight as registered, its canonical name) for every prunable layer.

    A layer whose ``weight`` is not a parameter of the model (a parametrized weight is computed on
    every access) is left to the raw-parameter rules.
    """
    out = []
    for name, m in prunable_layers(model):
        weight = getattr(m, "weight", None)
        if isinstance(weight, nn.Parameter) and id(weight) in canonical:
            out.append((f"{name}.weight" if name else "weight", canonical[id(weight)]))
    return out


def prunable_parameters(
    model: nn.Module,
    *,
    include_first: bool = True,
    include_output: bool = True,
    exclude: Iterable[str] = (),
    include: Iterable[str] = (),
) -> dict[str, nn.Parameter]:
    """Parameter name -> weight of every prunable layer, plus the parameters ``include`` names.

    Default rule: the ``weight`` of every Linear and Conv (1-D/2-D/3-D, grouped and depthwise
    included) layer, in definition order. Biases, normalisation layers and embeddings are not
    prunable by default; ``include`` adds any parameter by name:

    * ``include=["emb.weight"]`` (a parameter's name) adds that parameter, whatever its shape;
    * ``include=["block"]`` (a module's name) adds every parameter with two or more dimensions
      under that module (its weight matrices and kernels, not its biases or norm scales);
      ``include=[""]`` is not allowed (name the modules).

    ``nn.Embedding`` weights are not pruned by default, as in most of the literature (the rule is
    about the compute-carrying weights of Linear/Conv layers, and an embedding row is a lookup,
    not a multiply-add), but they are named in the warning and can be included by name. An
    embedding tied to a Linear output layer (``self.out.weight = self.emb.weight``) *is* pruned
    by default, because it is that layer's weight; it then appears once, under the name
    ``named_parameters()`` gives it (``"emb.weight"``), and its mask applies to both uses.

    ``include_first`` / ``include_output`` drop the first or last prunable Linear/Conv layer (by
    definition order: the usual input and output layers); ``exclude`` drops named parameters or
    all parameters under a named module, and wins over ``include``. The order is the definition
    order of the layers (of the first layer using a shared weight), included parameters where
    ``named_parameters()`` lists them.

    Every parameter with two or more dimensions that ends up neither chosen nor deliberately left
    out (by ``exclude``, ``include_first`` or ``include_output``) is named in one
    :class:`UnprunedWeightsWarning`: a raw ``nn.Parameter`` used through ``F.linear`` would
    otherwise stay dense while the density table claims the model is sparse.

    Raises PrunableError when nothing would be left, since a method that silently prunes nothing
    is the worst kind of failure, and when ``exclude``/``include`` name nothing in the model.
    """
    canonical = parameter_names(model)
    aliases = parameter_aliases(model)
    by_name = {n: p for n, p in model.named_parameters()}
    position = {}
    for i, (name, p) in enumerate(model.named_parameters(remove_duplicate=False)):
        position.setdefault(name, i)

    layer_weights = _layer_weights(model, canonical)
    include = [include] if isinstance(include, str) else list(include)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    if not layer_weights and not include:
        raise PrunableError(
            f"{type(model).__name__} has no Linear or Conv layers, so there is nothing to prune"
            + _raw_hint(model, set())
        )

    all_names = [n for names in aliases.values() for n in names]
    for option, patterns in (("exclude", exclude), ("include", include)):
        unknown = sorted({e for e in patterns if not e or not any(_matches(n, e) for n in all_names)})
        if unknown:
            raise PrunableError(
                f"{option} names {unknown} match no parameter or module of the model; "
                f"prunable parameters are {[c for _, c in layer_weights]}; "
                f"its parameters are {list(by_name)[:12]}{'...' if len(by_name) > 12 else ''}"
            )

    # canonical name -> sort key (position of the name it was chosen through)
    chosen: dict[str, int] = {}
    left_out: set[str] = set()  # deliberately not pruned: no warning
    for i, (registered, name) in enumerate(layer_weights):
        if (i == 0 and not include_first) or (i == len(layer_weights) - 1 and not include_output):
            left_out.add(name)
            continue
        chosen.setdefault(name, position[registered])
    # A shared weight dropped as the first/output layer is not pruned through another layer either.
    for name in left_out:
        chosen.pop(name, None)
    for pattern in include:
        for name, names in aliases.items():
            if name in chosen:
                continue
            if pattern in names:  # a parameter, by any of its names
                chosen[name] = position[pattern]
            elif by_name[name].dim() >= 2 and any(_matches(n, pattern) for n in names):
                chosen[name] = min(position[n] for n in names if _matches(n, pattern))
    for name, names in aliases.items():
        if any(_matches(n, e) for n in names for e in exclude):
            chosen.pop(name, None)
            left_out.add(name)

    unpruned = [n for n in by_name if by_name[n].dim() >= 2 and n not in chosen and n not in left_out]
    if unpruned:
        _warn_unpruned(model, unpruned, aliases)
    if not chosen:
        raise PrunableError("the options exclude every prunable layer; nothing would be pruned")
    return {n: by_name[n] for n in sorted(chosen, key=lambda n: chosen[n])}


def _describe(model: nn.Module, name: str, aliases: dict[str, list[str]]) -> str:
    p = dict(model.named_parameters())[name]
    module_name = name.rpartition(".")[0]
    module = model.get_submodule(module_name) if module_name else model
    shared = [a for a in aliases.get(name, [name]) if a != name]
    return (f"{name} {tuple(p.shape)} of {type(module).__name__}"
            + (f" (shared as {', '.join(shared)})" if shared else ""))


def _warn_unpruned(model: nn.Module, names: list[str], aliases: dict[str, list[str]]) -> None:
    listed = "; ".join(_describe(model, n, aliases) for n in names)
    warnings.warn(UnprunedWeightsWarning(
        f"{type(model).__name__}: {len(names)} weight tensor(s) with 2+ dimensions are not Linear/Conv "
        f"layer weights and stay DENSE (not pruned, not counted in mask densities): {listed}. "
        f"To prune them pass include={names!r} (parameter or module names) to prunable_parameters / "
        f"Mask.dense; to keep them dense on purpose and silence this warning pass exclude={names!r}.",
        names,
    ), stacklevel=_outside_package())


def _outside_package() -> int:
    """``stacklevel`` of the first caller outside ticketlab (where the user asked for the mask)."""
    package = os.path.dirname(os.path.abspath(__file__))
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _raw_hint(model: nn.Module, chosen: set[str]) -> str:
    raw = [n for n, p in model.named_parameters() if p.dim() >= 2 and n not in chosen]
    return f"; to prune other weights name them with include=..., e.g. include={raw[:4]!r}" if raw else ""


def output_parameter_name(model: nn.Module) -> str:
    """Name of the last prunable weight (the output layer in feed-forward nets).

    For an output layer whose weight is shared (tied to an embedding), the name is the one
    ``named_parameters()`` gives the shared parameter, i.e. the Mask's key for it.
    """
    layers = _layer_weights(model, parameter_names(model))
    if not layers:
        raise PrunableError(f"{type(model).__name__} has no Linear or Conv layers")
    return layers[-1][1]
