"""VGG-11/16/19 for CIFAR as in OpenLTH and Frankle et al. 2020 ("Linear mode connectivity and
the lottery ticket hypothesis"): conv3x3 + BatchNorm + ReLU blocks, four max-pools, an average
pool to 1x1 and a single linear output layer."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .common import channel_multiplier, check_pools, image_shape, init_weights, scaled
from .registry import register_model

__all__ = ["VGG", "VGG_PLANS"]

# Channel counts of the 3x3 convs (Simonyan & Zisserman 2015, configs A, D, E); "M" = max-pool.
VGG_PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512],
}  # fmt: skip


class VGG(nn.Module):
    """CIFAR VGG (Simonyan & Zisserman 2015, as adapted by OpenLTH / Frankle et al. 2020).

    ``features``: per plan entry Conv2d(3x3, padding 1, with bias) -> BatchNorm2d -> ReLU, or a
    2x2 max-pool; then ``pool`` (adaptive average pool to 1x1) and ``fc`` (channels -> classes).
    On 32x32 inputs the last feature map is 2x2, so the pool equals OpenLTH's AvgPool2d(2); the
    adaptive pool also lets 28x28 (MNIST) inputs through. Parameters on CIFAR-10 at width 1:
    VGG-11 9,231,114; VGG-16 14,728,266; VGG-19 20,040,522 (BN affine parameters included).
    """

    def __init__(self, in_channels: int, plan: Sequence[int | str], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = int(spec)
                layers += [
                    nn.Conv2d(channels, out, kernel_size=3, padding=1),
                    nn.BatchNorm2d(out),
                    nn.ReLU(),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def _build(name: str, input_shape: tuple[int, ...], num_classes: int, width: float) -> VGG:
    mult = channel_multiplier(name, width)
    c, _, _ = image_shape(name, input_shape)
    plan = VGG_PLANS[name]
    check_pools(name, input_shape, plan.count("M"))
    scaled_plan = [s if s == "M" else scaled(int(s), mult) for s in plan]
    return VGG(c, scaled_plan, num_classes)


@register_model("vgg11")
def vgg11(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> VGG:
    """VGG-11; ``width`` multiplies every channel count (rounded, at least 1)."""
    return _build("vgg11", input_shape, num_classes, width)


@register_model("vgg16")
def vgg16(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> VGG:
    """VGG-16; ``width`` multiplies every channel count (rounded, at least 1)."""
    return _build("vgg16", input_shape, num_classes, width)


@register_model("vgg19")
def vgg19(input_shape: tuple[int, ...], num_classes: int, *, width: float = 1.0) -> VGG:
    """VGG-19; ``width`` multiplies every channel count (rounded, at least 1)."""
    return _build("vgg19", input_shape, num_classes, width)
