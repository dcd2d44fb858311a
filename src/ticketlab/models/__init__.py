"""Model registry and the nets of the lottery-ticket literature.

``build_model(name, input_shape, num_classes, **options)`` builds any registered model; the
models are plain ``nn.Module``s made of standard layers (Linear, Conv2d, BatchNorm2d, ReLU,
pooling), so the rest of the library treats them exactly like a user's own network.

Registered: ``mlp`` (option ``hidden``), ``lenet_300_100``, ``conv2``, ``conv4``, ``conv6``,
``vgg11``/``vgg16``/``vgg19`` (option ``width``: channel multiplier) and ``resnet20``/``resnet56``
(option ``width``: first-stage channel count, 16 by default). Every model's output layer is
named ``fc``. Initialisation is described in :mod:`ticketlab.models.common`.
"""

from __future__ import annotations

from .registry import MODELS, ModelError, build_model, register_model

# Importing the model modules registers them.
from . import conv, mlp, resnet, vgg  # noqa: E402,F401  isort: skip
from .conv import ConvNet
from .mlp import MLP
from .resnet import BasicBlock, ResNet
from .vgg import VGG

__all__ = [
    "ModelError",
    "MODELS",
    "register_model",
    "build_model",
    "MLP",
    "ConvNet",
    "VGG",
    "ResNet",
    "BasicBlock",
]
