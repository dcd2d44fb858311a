"""Helpers shared by the model files: one initialisation scheme and checks on shapes and options.

Initialisation (all built-in models, following OpenLTH's ``kaiming_normal`` initializer):

* ``nn.Linear`` / ``nn.Conv2d`` weights: ``nn.init.kaiming_normal_`` with PyTorch's defaults
  (fan_in, gain sqrt(2)), output layer included;
* their biases: zero (OpenLTH leaves PyTorch's default uniform biases; zero biases make the
  "reset to init" of IMP and the ablations easier to reason about);
* ``nn.BatchNorm2d``: weight 1, bias 0 (OpenLTH's ``fixed`` BN init; its default for CIFAR
  models, ``uniform``, draws the BN weight from U(0, 1) instead).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .registry import ModelError

__all__ = ["init_weights", "image_shape", "check_pools", "channel_multiplier", "scaled"]


def init_weights(model: nn.Module) -> nn.Module:
    """Apply the library's initialisation (see module docstring) in place; returns ``model``."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return ``(C, H, W)`` or explain why a conv net cannot take ``input_shape``."""
    if len(input_shape) != 3:
        raise ModelError(
            f"{model} is a convolutional net and needs input_shape (C, H, W), e.g. (1, 28, 28) "
            f"for MNIST or (3, 32, 32) for CIFAR; got {input_shape}. For flat inputs use 'mlp'."
        )
    c, h, w = input_shape
    return c, h, w


def check_pools(model: str, input_shape: tuple[int, ...], pools: int) -> tuple[int, int]:
    """Spatial size after ``pools`` 2x2 max-pools; a ModelError if the image would vanish."""
    _, h, w = image_shape(model, input_shape)
    need = 2**pools
    if h < need or w < need:
        raise ModelError(
            f"input_shape {input_shape} is too small for {model}: it halves the image {pools} "
            f"times, so H and W must be at least {need}"
        )
    return h // need, w // need


def channel_multiplier(model: str, width: Any) -> float:
    """Validate a ``width`` multiplier (a positive number; 1.0 is the published net)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ModelError(
            f"{model}: width must be a positive number multiplying every channel count "
            f"(1.0 = the published net, 0.25 = a quarter as many channels); got {width!r}"
        )
    return float(width)


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest int, at least 1."""
    return max(1, int(round(channels * width)))
