"""Tests for ticketlab.models: registry behaviour, shapes, exact parameter counts, init, seeding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ticketlab.models import MODELS, BasicBlock, ModelError, build_model, register_model

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
EXPECTED = {
    "mlp", "lenet_300_100", "conv2", "conv4", "conv6",
    "vgg11", "vgg16", "vgg19", "resnet20", "resnet56",
}  # fmt: skip
# Narrow variants keep the CPU tests fast; the full-width counts are checked on the meta device.
SMALL = {
    "vgg11": {"width": 0.125},
    "vgg16": {"width": 0.125},
    "vgg19": {"width": 0.125},
    "resnet20": {"width": 4},
    "resnet56": {"width": 4},
}


def small(name: str, shape: tuple[int, ...] = CIFAR, classes: int = 10) -> nn.Module:
    return build_model(name, shape, classes, **SMALL.get(name, {}))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def n_weights(model: nn.Module) -> int:
    """Weights of Linear/Conv layers: what the pruner counts."""
    return sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    )


def on_meta(name: str, shape: tuple[int, ...], classes: int = 10, **options) -> nn.Module:
    """Build without allocating memory: full-width VGG-19 has 20M parameters."""
    with torch.device("meta"):
        return build_model(name, shape, classes, **options)


def test_registry_lists_all_models():
    assert EXPECTED <= set(MODELS)


@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["mnist", "cifar"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_backward_shapes(name, shape):
    torch.manual_seed(0)
    model = small(name, shape, classes=10)
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_other_class_counts(name):
    model = small(name, CIFAR, classes=100)
    assert model.fc.out_features == 100
    assert model(torch.randn(2, *CIFAR)).shape == (2, 100)


def test_mlp_flattens_any_input():
    model = build_model("mlp", (64,), 10, hidden=(32,))
    assert model(torch.randn(5, 64)).shape == (5, 10)
    model = build_model("mlp", (2, 3, 4), 3, hidden=[8, 8, 8])
    assert model(torch.randn(5, 2, 3, 4)).shape == (5, 3)
    linear = build_model("mlp", (64,), 10, hidden=())
    assert [type(m) for m in linear.modules() if isinstance(m, nn.Linear)] == [nn.Linear]


# ----- exact parameter counts (hand-computed; weights + biases) -----


def test_lenet_300_100_count_mnist():
    model = build_model("lenet_300_100", MNIST, 10)
    assert n_params(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    assert n_weights(model) == 784 * 300 + 300 * 100 + 100 * 10 == 266_200


def test_conv2_count_cifar():
    model = build_model("conv2", CIFAR, 10)
    convs = (3 * 64 * 9 + 64) + (64 * 64 * 9 + 64)  # two 3x3 convs with bias
    flat = 64 * 16 * 16  # one 2x2 max-pool: 32x32 -> 16x16
    fcs = (flat * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    assert convs + fcs == 4_301_642
    assert n_params(model) == 4_301_642


def test_conv2_count_mnist_uses_flatten_from_shape():
    model = build_model("conv2", MNIST, 10)
    convs = (1 * 64 * 9 + 64) + (64 * 64 * 9 + 64)
    fcs = (64 * 14 * 14 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    assert n_params(model) == convs + fcs == 3_317_450


def test_conv4_conv6_counts_cifar():
    conv4 = on_meta("conv4", CIFAR)
    c4 = 3 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 128 * 128 * 9
    f4 = 128 * 8 * 8 * 256 + 256 * 256 + 256 * 10
    assert n_weights(conv4) == c4 + f4 == 2_425_024
    conv6 = on_meta("conv6", CIFAR)
    c6 = c4 + 128 * 256 * 9 + 256 * 256 * 9
    f6 = 256 * 4 * 4 * 256 + 256 * 256 + 256 * 10
    assert n_weights(conv6) == c6 + f6 == 2_261_184


def test_resnet20_count_cifar():
    model = build_model("resnet20", CIFAR, 10)
    stem = 3 * 16 * 9
    stage1 = 6 * 16 * 16 * 9  # 3 blocks x 2 convs
    stage2 = 16 * 32 * 9 + 5 * 32 * 32 * 9 + 16 * 32  # + 1x1 projection shortcut
    stage3 = 32 * 64 * 9 + 5 * 64 * 64 * 9 + 32 * 64
    fc_w = 64 * 10
    weights = stem + stage1 + stage2 + stage3 + fc_w
    assert weights == 270_896
    assert n_weights(model) == weights
    # BN: stem 16, 6 x 16, 6 x 32 + 32 (shortcut), 6 x 64 + 64 -> 784 channels x (gamma, beta)
    bn = 2 * (16 + 6 * 16 + 7 * 32 + 7 * 64)
    assert n_params(model) == weights + bn + 10 == 272_474


def test_resnet56_count_and_blocks():
    model = build_model("resnet56", CIFAR, 10)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3 * 9
    assert [len(stage) for stage in model.stages] == [9, 9, 9]
    assert n_params(model) == 855_770
    assert len([m for m in build_model("resnet20", CIFAR, 10).modules()
                if isinstance(m, BasicBlock)]) == 3 * 3  # fmt: skip


def test_vgg16_count_cifar():
    model = on_meta("vgg16", CIFAR)
    chans = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    ins = [3] + chans[:-1]
    conv_w = sum(i * o * 9 for i, o in zip(ins, chans))
    per_channel = 3 * sum(chans)  # conv bias + BN gamma + BN beta
    assert n_params(model) == conv_w + per_channel + 512 * 10 + 10 == 14_728_266


@pytest.mark.parametrize(
    ("name", "count"), [("vgg11", 9_231_114), ("vgg19", 20_040_522), ("conv4", 2_425_930),
                        ("conv6", 2_262_602)],
)  # fmt: skip
def test_documented_counts(name, count):
    assert n_params(on_meta(name, CIFAR)) == count


def test_widths_scale_channels():
    vgg = build_model("vgg11", CIFAR, 10, width=0.5)
    assert vgg.features[0].out_channels == 32 and vgg.fc.in_features == 256
    res = build_model("resnet20", CIFAR, 10, width=8)
    assert res.conv.out_channels == 8 and res.fc.in_features == 32


# ----- equality, seeding, initialisation -----


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lenet_equals_mlp_300_100():
    torch.manual_seed(3)
    lenet = build_model("lenet_300_100", MNIST, 10)
    torch.manual_seed(3)
    mlp = build_model("mlp", MNIST, 10, hidden=(300, 100))
    assert _same_weights(lenet, mlp)
    assert str(lenet) == str(mlp)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_same_seed_same_weights(name):
    torch.manual_seed(1)
    a = small(name)
    torch.manual_seed(1)
    b = small(name)
    torch.manual_seed(2)
    c = small(name)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_init_and_standard_layers(name):
    model = small(name)
    allowed = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, allowed), type(module)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
            assert torch.all(module.bias == 0)
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert isinstance(model.fc, nn.Linear)


def test_kaiming_normal_fan_in_scale():
    torch.manual_seed(0)
    w = build_model("lenet_300_100", MNIST, 10).hidden[0].weight
    expected = math.sqrt(2 / 784)
    assert abs(w.std().item() / expected - 1) < 0.02
    assert abs(w.mean().item()) < 0.05 * expected


# ----- errors -----


def test_unknown_name_lists_models():
    with pytest.raises(ModelError) as info:
        build_model("resnet18", CIFAR, 10)
    msg = str(info.value)
    assert "resnet18" in msg and "resnet20" in msg and "lenet_300_100" in msg
    assert "Did you mean" in msg
    assert isinstance(info.value, ValueError)


def test_unknown_option_names_it_and_accepted():
    with pytest.raises(ModelError) as info:
        build_model("vgg16", CIFAR, 10, widht=0.5)
    assert "'widht'" in str(info.value) and "width" in str(info.value)
    with pytest.raises(ModelError) as info:
        build_model("lenet_300_100", MNIST, 10, hidden=(10,))
    assert "'hidden'" in str(info.value) and "none" in str(info.value)
    with pytest.raises(ModelError, match="hidden"):
        build_model("mlp", MNIST, 10, width=2)


@pytest.mark.parametrize(
    ("name", "shape", "options", "needle"),
    [
        ("vgg16", CIFAR, {"width": 0}, "width"),
        ("vgg16", CIFAR, {"width": "wide"}, "width"),
        ("resnet20", CIFAR, {"width": 0.5}, "channels"),
        ("resnet20", CIFAR, {"width": True}, "width"),
        ("mlp", MNIST, {"hidden": "300"}, "hidden"),
        ("mlp", MNIST, {"hidden": (300, 0)}, "hidden"),
        ("vgg11", (1, 8, 8), {}, "at least 16"),
        ("conv6", (3, 4, 4), {}, "at least 8"),
        ("conv2", (64,), {}, "(C, H, W)"),
        ("resnet20", (32, 32), {}, "(C, H, W)"),
        ("mlp", (1, 0, 28), {}, "input_shape"),
        ("mlp", 784, {}, "input_shape"),
    ],
)
def test_bad_values_raise_model_error(name, shape, options, needle):
    with pytest.raises(ModelError) as info:
        build_model(name, shape, 10, **options)
    assert needle in str(info.value)


@pytest.mark.parametrize("classes", [0, -1, 2.5, True])
def test_bad_num_classes(classes):
    with pytest.raises(ModelError, match="num_classes"):
        build_model("mlp", MNIST, classes)


def test_register_custom_model():
    name = "_test_tiny"

    def tiny(input_shape, num_classes, *, hidden: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))

    try:
        assert register_model(name)(tiny) is tiny
        assert build_model(name, (3,), 2)(torch.randn(1, 3)).shape == (1, 2)
        with pytest.raises(ModelError, match="already registered"):
            register_model(name)(lambda input_shape, num_classes: nn.Identity())
        with pytest.raises(ModelError, match="hidden"):
            build_model(name, (3,), 2, depth=3)
    finally:
        MODELS.pop(name, None)
