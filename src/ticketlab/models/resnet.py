"""ResNet-20 and ResNet-56 for CIFAR (He et al. 2016, section 4.2), as built by OpenLTH."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .common import image_shape, init_weights
from .registry import ModelError, register_model

__all__ = ["BasicBlock", "ResNet"]


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU.

    Shortcut: identity when the shape is unchanged; otherwise a 1x1 conv (stride 2) + BN
    (He et al.'s option B, as in OpenLTH). He et al. used parameter-free zero-padding (option A)
    for their CIFAR nets; the projection adds 2,560 + 192 parameters to ResNet-20 at width 16 and
    gives the pruner two more (small) prunable conv layers.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2) of He et al. 2016 ("Deep residual learning for image recognition").

    ``conv`` (3x3, ``width`` channels) + ``bn`` + ReLU, then ``stages``: three stages of ``n``
    BasicBlocks with width, 2*width, 4*width channels (the 2nd and 3rd start with stride 2),
    global average pool and ``fc``. Convs have no bias (BN follows). Parameters on CIFAR-10 at
    width 16: ResNet-20 (n=3) 272,474 (270,896 conv/linear weights); ResNet-56 (n=9) 855,770.
    """

    def __init__(
        self, in_channels: int, blocks_per_stage: int, width: int, num_classes: int
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        channels = width
        for i, out_channels in enumerate((width, 2 * width, 4 * width)):
            blocks: list[nn.Module] = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(self.relu(self.bn(self.conv(x))))
        return self.fc(self.flatten(self.pool(out)))


def _check_width(model: str, width: Any) -> int:
    """ResNet ``width`` is a channel count (OpenLTH's ``cifar_resnet_20_W``), not a multiplier."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ModelError(
            f"{model}: width is the number of channels of the first stage (an int; 16 = the "
            f"published net, stages get width, 2*width, 4*width). For a narrow net pass e.g. "
            f"width=4 (a quarter of the channels); got {width!r}"
        )
    return width


def _build(
    name: str, n: int, input_shape: tuple[int, ...], num_classes: int, width: Any
) -> ResNet:
    c, _, _ = image_shape(name, input_shape)
    return ResNet(c, n, _check_width(name, width), num_classes)


@register_model("resnet20")
def resnet20(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16) -> ResNet:
    """ResNet-20: 3 stages of 3 blocks; ``width`` = channels of the first stage (16)."""
    return _build("resnet20", 3, input_shape, num_classes, width)


@register_model("resnet56")
def resnet56(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16) -> ResNet:
    """ResNet-56: 3 stages of 9 blocks; ``width`` = channels of the first stage (16)."""
    return _build("resnet56", 9, input_shape, num_classes, width)
