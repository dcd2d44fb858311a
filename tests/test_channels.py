"""Tests for ticketlab.pruning.channels: BN-scale channel masks, masked models and shrinking."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.analysis.flops import forward_flops
from ticketlab.models import build_model
from ticketlab.pruning import channels as channels_module
from ticketlab.pruning.channels import (
    ChannelPruningError,
    apply_channel_mask,
    channel_mask_distance,
    channel_mask_from_bn,
    prunable_bn_layers,
    shrink,
)

SHAPE = (3, 32, 32)


def _graph_available() -> bool:
    from ticketlab.pruning.graph_shrink import available

    return available()


@pytest.fixture(autouse=True, params=["graph", "builtin"])
def path(request, monkeypatch):
    """Every test runs on both paths: Torch-Pruning's dependency graph (when installed) and the
    built-in VGG/ResNet code used without it; they must agree on VGG and ResNet."""
    if request.param == "graph" and not _graph_available():
        pytest.skip("torch-pruning not installed (pip install 'ticketlab[structured]')")
    monkeypatch.setattr(channels_module, "USE_GRAPH", request.param == "graph")
    return request.param


def make(name: str) -> nn.Module:
    if name.startswith("resnet"):
        return build_model(name, SHAPE, 10, width=8)
    return build_model(name, SHAPE, 10, width=0.25)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random BN scales/shifts/statistics and conv biases, so every sliced tensor matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.randn(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def set_gammas(model: nn.Module, layers: list[str], values: torch.Tensor) -> None:
    start = 0
    with torch.no_grad():
        for name in layers:
            bn = model.get_submodule(name)
            bn.weight.copy_(values[start : start + bn.num_features])
            start += bn.num_features
    assert start == values.numel()


# --- channel_mask_distance ----------------------------------------------------------------------


def test_distance_self_complement_and_hand_case():
    gen = torch.Generator().manual_seed(0)
    a = {"x": torch.rand(8, generator=gen) > 0.5, "y": torch.rand(5, generator=gen) > 0.5}
    assert channel_mask_distance(a, a) == 0.0
    assert channel_mask_distance(a, {k: ~v for k, v in a.items()}) == 1.0
    b = {"x": torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)}
    c = {"x": torch.tensor([1, 1, 1, 0, 1, 0, 0, 0], dtype=torch.bool)}  # 2 of 8 differ
    assert channel_mask_distance(b, c) == pytest.approx(0.25)
    # Over several layers the distance is over all channels, not a mean of per-layer distances.
    d1 = {"p": torch.zeros(2, dtype=torch.bool), "q": torch.zeros(8, dtype=torch.bool)}
    d2 = {"p": torch.ones(2, dtype=torch.bool), "q": torch.zeros(8, dtype=torch.bool)}
    assert channel_mask_distance(d1, d2) == pytest.approx(0.2)


def test_distance_rejects_mismatched_masks():
    a = {"x": torch.ones(4, dtype=torch.bool)}
    with pytest.raises(ValueError):
        channel_mask_distance(a, {"y": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ValueError):
        channel_mask_distance(a, {"x": torch.ones(5, dtype=torch.bool)})


# --- channel_mask_from_bn -----------------------------------------------------------------------


def test_mask_removes_globally_smallest_gammas_exactly():
    model = build_model("vgg11", SHAPE, 10, width=0.0625)  # channels 4, 8, 16, 16, 32 x 4
    layers = prunable_bn_layers(model)
    total = sum(model.get_submodule(n).num_features for n in layers)
    assert total == 172
    gen = torch.Generator().manual_seed(1)
    magnitudes = torch.randperm(total, generator=gen).float() + 1  # distinct |gamma|
    signs = torch.where(torch.rand(total, generator=gen) < 0.5, -1.0, 1.0)
    set_gammas(model, layers, magnitudes * signs)
    for ratio in (0.0, 0.3, 0.5, 0.7):
        mask = channel_mask_from_bn(model, ratio)
        assert list(mask) == layers
        keep = torch.cat([mask[n] for n in layers])
        assert int((~keep).sum()) == round(ratio * total)
        # Exactly the smallest |gamma| went: here they are 1 .. n_removed.
        assert torch.equal(~keep, magnitudes <= round(ratio * total))
        assert all(m.any() for m in mask.values())


def test_mask_ties_keep_earlier_channel_and_at_least_one_per_layer():
    model = build_model("vgg11", SHAPE, 10, width=1 / 64)  # channels 1, 2, 4, 4, 8, 8, 8, 8
    layers = prunable_bn_layers(model)
    sizes = [model.get_submodule(n).num_features for n in layers]
    assert sizes == [1, 2, 4, 4, 8, 8, 8, 8]
    set_gammas(model, layers, torch.ones(43))  # all tied
    mask = channel_mask_from_bn(model, 0.5)  # round(21.5) = 22: the last 22 channels by the tie rule
    expected = [torch.ones(s, dtype=torch.bool) for s in sizes[:5]]
    expected.append(torch.tensor([1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool))
    # The last two layers would be emptied: each keeps its first channel (ties -> earliest).
    expected += [torch.tensor([1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)] * 2
    for name, exp in zip(layers, expected):
        assert torch.equal(mask[name], exp), name
    assert int(sum((~m).sum() for m in mask.values())) == 22 - 2


def test_mask_keeps_largest_gamma_of_an_emptied_layer():
    model = build_model("vgg11", SHAPE, 10, width=0.0625)
    layers = prunable_bn_layers(model)
    total = sum(model.get_submodule(n).num_features for n in layers)
    values = torch.ones(total)
    values[:4] = torch.tensor([0.01, -0.03, 0.02, 0.005])  # first layer: all tiny
    set_gammas(model, layers, values)
    mask = channel_mask_from_bn(model, 4 / total)  # exactly the first layer's 4 would go
    assert torch.equal(mask[layers[0]], torch.tensor([False, True, False, False]))
    assert all(mask[n].all() for n in layers[1:])
    # ratio 1 keeps exactly one channel per layer
    full = channel_mask_from_bn(model, 1.0)
    assert all(int(m.sum()) == 1 for m in full.values())


def test_mask_arguments_are_checked():
    model = make("vgg11")
    with pytest.raises(ValueError):
        channel_mask_from_bn(model, 1.5)
    with pytest.raises(ValueError):
        channel_mask_from_bn(model, -0.1)
    with pytest.raises(ValueError):
        channel_mask_from_bn(model, 0.5, layers=["features.0"])  # a conv, not a BN
    with pytest.raises(ValueError):
        channel_mask_from_bn(model, 0.5, layers=["nope"])
    sub = channel_mask_from_bn(model, 0.5, layers=["features.1"])
    assert list(sub) == ["features.1"] and int((~sub["features.1"]).sum()) == 8


# --- prunable layers ----------------------------------------------------------------------------


def test_vgg_every_features_bn_is_prunable():
    model = make("vgg16")
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert prunable_bn_layers(model) == bns and len(bns) == 13


def test_resnet_only_bn1_is_prunable_and_residual_stream_is_untouched(path):
    model = randomize(make("resnet20"), 3)
    layers = prunable_bn_layers(model)
    assert layers == [f"stages.{s}.{b}.bn1" for s in range(3) for b in range(3)]
    mask = channel_mask_from_bn(model, 0.5)
    assert list(mask) == layers
    before = state_copy(model)
    small = shrink(model, mask)
    masked = apply_channel_mask(copy.deepcopy(model), mask)
    inner = (".bn1.", ".conv1.", ".conv2.")
    small_state, masked_state = small.state_dict(), masked.state_dict()
    residual = [k for k in before if not any(s in k for s in inner)]
    assert any("shortcut.1" in k for k in residual) and any(".bn2." in k for k in residual)
    assert "bn.weight" in residual
    for key in residual:  # stem BN, bn2, shortcut conv + BN, fc: same shape and values
        assert torch.equal(small_state[key], before[key]), key
        assert torch.equal(masked_state[key], before[key]), key
    stream = channel_mask_from_bn(model, 0.5, layers=["stages.0.0.bn2"])
    if path == "builtin":  # shrinking a residual-stream BN is refused
        with pytest.raises(ValueError, match="residual"):
            shrink(model, stream)
        return
    # The graph removes a residual-stream channel from every coupled layer of the stage (stem conv
    # and BN, each block's conv2/bn2, the next stage's conv1 and shortcut inputs).
    small = shrink(model, stream).eval()
    masked = apply_channel_mask(copy.deepcopy(model), stream).eval()
    n_gone = int((~stream["stages.0.0.bn2"]).sum())
    assert n_gone > 0
    for name in ("bn", "stages.0.0.bn2", "stages.0.1.bn2", "stages.0.2.bn2"):
        assert small.get_submodule(name).num_features == 8 - n_gone
        assert not masked.get_submodule(name).weight[~stream["stages.0.0.bn2"]].any()
    assert small.conv.out_channels == 8 - n_gone
    assert small.stages[1][0].shortcut[0].in_channels == 8 - n_gone
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "conv2"])
def test_unsupported_model_raises(name):
    model = build_model(name, (784,) if name == "mlp" else (1, 28, 28), 10)
    with pytest.raises(ValueError, match="channel pruning supports"):
        prunable_bn_layers(model)
    with pytest.raises(ChannelPruningError):
        channel_mask_from_bn(model, 0.5)
    with pytest.raises(ChannelPruningError):
        shrink(model, {"x": torch.ones(3, dtype=torch.bool)})


# --- apply_channel_mask / shrink ----------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("name", ["vgg16", "vgg11", "resnet20"])
def test_shrink_matches_masked_model(name, ratio):
    torch.manual_seed(0)
    seed = {"vgg16": 0, "vgg11": 1, "resnet20": 2}[name] * 10 + int(ratio * 10)
    model = randomize(make(name), seed=seed)
    mask = channel_mask_from_bn(model, ratio)
    before = state_copy(model)
    small = shrink(model, mask)
    masked = apply_channel_mask(copy.deepcopy(model), mask)

    # The original is untouched.
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # Pruned channels of the masked model have gamma = beta = 0; kept ones are unchanged.
    for layer, keep in mask.items():
        bn = masked.get_submodule(layer)
        assert not bn.weight[~keep].any() and not bn.bias[~keep].any()
        assert torch.equal(bn.weight[keep], model.get_submodule(layer).weight[keep])
        assert small.get_submodule(layer).num_features == int(keep.sum())

    x = torch.randn(4, *SHAPE)
    small.eval(), masked.eval()
    with torch.no_grad():
        out_small, out_masked = small(x), masked(x)
    assert out_small.abs().max() > 1e-3  # a non-trivial function
    assert torch.allclose(out_small, out_masked, atol=1e-5)
    # Train mode (batch statistics) too.
    small.train(), masked.train()
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-5)

    assert n_params(small) < n_params(model)
    assert forward_flops(small, SHAPE) < forward_flops(model, SHAPE)

    # One SGD step on the small model.
    small.train()
    opt = torch.optim.SGD(small.parameters(), lr=0.1)
    w0 = small.fc.weight.detach().clone()
    loss = F.cross_entropy(small(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in small.parameters())
    opt.step()
    assert not torch.equal(small.fc.weight, w0)


def test_shrunk_vgg_parameter_and_flops_count_by_formula():
    model = randomize(make("vgg11"), seed=7)  # channels 16, 32, 64, 64, 128 x 4; pools after 1, 2, 4, 6
    mask = channel_mask_from_bn(model, 0.5)
    layers = prunable_bn_layers(model)
    kept = [int(mask[n].sum()) for n in layers]
    widths = [model.get_submodule(n).num_features for n in layers]
    sides = [32, 16, 8, 8, 4, 4, 2, 2]  # spatial size at each conv of VGG-11 on 32x32

    def params(ch: list[int]) -> int:
        prev, total = 3, 0
        for c in ch:
            total += 9 * prev * c + c + 2 * c  # conv weight + bias, BN gamma + beta
            prev = c
        return total + prev * 10 + 10

    def flops(ch: list[int]) -> int:
        prev, total = 3, 0
        for c, s in zip(ch, sides):
            total += s * s * 9 * prev * c
            prev = c
        return total + prev * 10

    assert n_params(model) == params(widths)
    small = shrink(model, mask)
    assert n_params(small) == params(kept) < params(widths)
    assert forward_flops(small, SHAPE) == flops(kept)
    assert forward_flops(model, SHAPE) == flops(widths)


def test_shrink_with_all_channels_kept_is_identical_function():
    model = randomize(make("resnet20"), seed=11).eval()
    mask = channel_mask_from_bn(model, 0.0)
    small = shrink(model, mask).eval()
    assert n_params(small) == n_params(model)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)


def test_shrink_and_apply_reject_bad_masks():
    model = make("vgg11")
    with pytest.raises(ValueError):
        shrink(model, {"features.1": torch.ones(3, dtype=torch.bool)})  # wrong size
    with pytest.raises(ValueError):
        apply_channel_mask(model, {"features.0": torch.ones(16, dtype=torch.bool)})  # a conv
    with pytest.raises(ValueError):
        shrink(model, {"features.1": torch.zeros(16, dtype=torch.bool)})  # empties a layer
