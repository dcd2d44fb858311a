"""Look models up by name, so configs, the CLI and sweeps can refer to them as plain strings.

A factory is any callable ``factory(input_shape, num_classes, *, option=default, ...)`` returning
an ``nn.Module``. Its keyword-only parameters *are* its options: :func:`build_model` reads them
from the signature, so a typo in a config fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["ModelError", "MODELS", "register_model", "build_model"]


class ModelError(ValueError):
    """A model name, option or shape that cannot be built; the message says what would work."""


Factory = Callable[..., nn.Module]

MODELS: dict[str, Factory] = {}


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator adding ``factory`` to :data:`MODELS` under ``name``.

    Registering the same name twice is an error: silently replacing a model would make two runs
    with the same config hash train different networks.
    """
    if not isinstance(name, str) or not name:
        raise ModelError(f"model name must be a non-empty string, got {name!r}")

    def decorator(factory: Factory) -> Factory:
        if name in MODELS and MODELS[name] is not factory:
            raise ModelError(
                f"a model named {name!r} is already registered ({MODELS[name]!r}); "
                "pick another name or delete MODELS[name] first"
            )
        MODELS[name] = factory
        return factory

    return decorator


def _accepted_options(factory: Factory) -> tuple[list[str], bool]:
    """Keyword-only parameter names of ``factory``, and whether it also takes ``**kwargs``."""
    params = inspect.signature(factory).parameters.values()
    names = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return names, var_kw


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    """Normalise ``input_shape`` to a tuple of positive ints (one sample, no batch dimension)."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ModelError(
            f"input_shape must be a tuple of positive ints such as (1, 28, 28), (3, 32, 32) or "
            f"(64,), got {input_shape!r}"
        ) from None
    ok = len(shape) > 0 and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    )
    if not ok:
        raise ModelError(
            f"input_shape must be a non-empty tuple of positive ints for ONE sample (no batch "
            f"dimension), e.g. (1, 28, 28), (3, 32, 32) or (64,); got {input_shape!r}"
        )
    return shape


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any
) -> nn.Module:
    """Build the registered model ``name`` for samples of ``input_shape`` and ``num_classes``.

    Raises :class:`ModelError` for an unknown name (listing the registered ones), an unknown
    option (naming the accepted ones), or a shape/option value the model cannot use.
    """
    if name not in MODELS:
        known = ", ".join(sorted(MODELS)) or "(none registered)"
        close = difflib.get_close_matches(str(name), list(MODELS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelError(
            f"unknown model {name!r}. Registered models: {known}.{hint} "
            "Register your own with @register_model('name')."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
    shape = _check_input_shape(input_shape)

    factory = MODELS[name]
    accepted, var_kw = _accepted_options(factory)
    unknown = [k for k in options if k not in accepted]
    if unknown and not var_kw:
        listed = ", ".join(accepted) if accepted else "none"
        raise ModelError(
            f"model {name!r} got unknown option(s) {', '.join(map(repr, unknown))}. "
            f"Accepted options for {name!r}: {listed}. Remove the option or fix its spelling."
        )
    return factory(shape, num_classes, **options)
