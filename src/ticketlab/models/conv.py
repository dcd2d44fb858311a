"""Conv-2, Conv-4 and Conv-6: the small VGG-like CIFAR nets of the lottery-ticket paper."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .common import check_pools, image_shape, init_weights
from .registry import register_model

__all__ = ["ConvNet", "CONV_PLANS"]

# Channel counts of the 3x3 convs; "M" is a 2x2 max-pool.
CONV_PLANS: dict[str, list[int | str]] = {
    "conv2": [64, 64, "M"],
    "conv4": [64, 64, "M", 128, 128, "M"],
    "conv6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}


class ConvNet(nn.Module):
    """Conv-2/4/6 of Frankle & Carbin 2019 (Figure 2): 3x3 convs (padding 1) with ReLU and
    2x2 max-pools, then FC 256 -> ReLU -> FC 256 -> ReLU -> ``fc`` (the output layer). No BN.

    Parameters on CIFAR-10 (3x32x32, 10 classes), biases included: Conv-2 4,301,642;
    Conv-4 2,425,930; Conv-6 2,262,602 (weights only: 4,300,992 / 2,425,024 / 2,261,184).
    The flatten size is computed from the input shape, so MNIST's 1x28x28 works too.
    """

    def __init__(
        self,
        in_channels: int,
        plan: Sequence[int | str],
        flat_features: int,
        num_classes: int,
        fc_widths: Sequence[int] = (256, 256),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(spec), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(spec)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        hidden: list[nn.Module] = []
        width = flat_features
        for h in fc_widths:
            hidden += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.classifier = nn.Sequential(*hidden)
        self.fc = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.classifier(self.flatten(self.features(x))))


def _build(name: str, input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    plan = CONV_PLANS[name]
    c, _, _ = image_shape(name, input_shape)
    h, w = check_pools(name, input_shape, plan.count("M"))
    last_channels = [s for s in plan if s != "M"][-1]
    return ConvNet(c, plan, int(last_channels) * h * w, num_classes)


@register_model("conv2")
def conv2(input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    """Conv-2: 64, 64, pool; FC 256, 256, classes."""
    return _build("conv2", input_shape, num_classes)


@register_model("conv4")
def conv4(input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    """Conv-4: 64, 64, pool, 128, 128, pool; FC 256, 256, classes."""
    return _build("conv4", input_shape, num_classes)


@register_model("conv6")
def conv6(input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    """Conv-6: 64, 64, pool, 128, 128, pool, 256, 256, pool; FC 256, 256, classes."""
    return _build("conv6", input_shape, num_classes)
