"""Fully connected nets: LeNet-300-100 of the lottery-ticket paper and any other MLP."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .common import init_weights
from .registry import ModelError, register_model

__all__ = ["MLP"]


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] per hidden width -> Linear (``fc``, the output layer).

    With ``hidden=(300, 100)`` this is LeNet-300-100 (LeCun et al. 1998) as used by Frankle &
    Carbin 2019 ("The Lottery Ticket Hypothesis"). Parameters: 266,610 on MNIST (784 inputs),
    953,010 on CIFAR-10 (3x32x32 = 3072 inputs), biases included.
    Hidden layers are ``hidden.0``, ``hidden.2``, ...; the output layer is always ``fc``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.hidden(self.flatten(x)))


def _check_hidden(hidden: Any) -> tuple[int, ...]:
    """Hidden widths as a tuple of positive ints (an empty tuple gives a linear classifier)."""
    ok = isinstance(hidden, Sequence) and not isinstance(hidden, str)
    ok = ok and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden)
    if not ok:
        raise ModelError(
            f"mlp: hidden must be a tuple of positive ints, one per hidden layer, e.g. "
            f"(300, 100); got {hidden!r}"
        )
    return tuple(hidden)


@register_model("mlp")
def mlp(
    input_shape: tuple[int, ...], num_classes: int, *, hidden: Sequence[int] = (300, 100)
) -> MLP:
    """An MLP on the flattened input; ``hidden`` lists the hidden widths."""
    return MLP(math.prod(input_shape), _check_hidden(hidden), num_classes)


@register_model("lenet_300_100")
def lenet_300_100(input_shape: tuple[int, ...], num_classes: int) -> MLP:
    """LeNet-300-100: exactly ``mlp`` with ``hidden=(300, 100)``."""
    return mlp(input_shape, num_classes, hidden=(300, 100))
