"""Tests for ticketlab.analysis.connectivity: effective (input->output path) weights of a mask."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from ticketlab.analysis.connectivity import (
    collapsed_layers,
    effective_density,
    effective_mask,
    format_layer_report,
    is_disconnected,
    layer_report,
)
from ticketlab.masks import Mask, MaskError
from ticketlab.models import build_model

CIFAR = (3, 32, 32)


def B(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def small_mlp() -> nn.Module:
    """4 -> 3 -> 3 -> 2 with random weights and large (partly negative) biases."""
    torch.manual_seed(0)
    model = build_model("mlp", (4,), 2, hidden=(3, 3))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape) * 10)
    return model


# Hand-made mask (rows = output units, columns = input units):
#   h1_0 <- x0, x1                 reaches out0/out1 through h2_0      -> effective
#   h1_1 <- x2, but no outgoing    (dead end)                          -> not effective
#   h1_2 has no incoming, but feeds h2_0                               -> h2_0 <- h1_2 not effective
#   h2_1 <- h1_0, but no outgoing  (dead end)                          -> not effective
#   h2_2 has no incoming, but feeds out1                               -> out1 <- h2_2 not effective
HAND_MASK = {
    "hidden.0.weight": [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]],
    "hidden.2.weight": [[1, 0, 1], [1, 0, 0], [0, 0, 0]],
    "fc.weight": [[1, 0, 0], [1, 0, 1]],
}
HAND_EFFECTIVE = {
    "hidden.0.weight": [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    "hidden.2.weight": [[1, 0, 0], [0, 0, 0], [0, 0, 0]],
    "fc.weight": [[1, 0, 0], [1, 0, 0]],
}


def hand_mask() -> Mask:
    return Mask({n: B(v) for n, v in HAND_MASK.items()})


# --- hand-checked MLP --------------------------------------------------------------------------------
def test_hand_made_mlp_mask_entry_by_entry():
    model, mask = small_mlp(), hand_mask()
    eff = effective_mask(model, mask, (4,))
    assert list(eff) == list(mask)
    for name, expected in HAND_EFFECTIVE.items():
        assert torch.equal(eff[name], B(expected)), name
    assert eff == Mask({n: B(v) for n, v in HAND_EFFECTIVE.items()})


def test_hand_made_mlp_counts_and_report():
    model, mask = small_mlp(), hand_mask()
    # kept 3 + 3 + 3 = 9 of 12 + 9 + 6 = 27; effective 2 + 1 + 2 = 5
    assert effective_density(model, mask, (4,)) == pytest.approx(5 / 27)
    assert not is_disconnected(model, mask, (4,))
    assert collapsed_layers(model, mask, (4,)) == []
    rows = layer_report(model, mask, (4,))
    assert [(r["name"], r["shape"], r["total"], r["kept"], r["effective"]) for r in rows] == [
        ("hidden.0.weight", (3, 4), 12, 3, 2),
        ("hidden.2.weight", (3, 3), 9, 3, 1),
        ("fc.weight", (2, 3), 6, 3, 2),
    ]
    assert rows[0]["density"] == pytest.approx(3 / 12)
    assert rows[1]["effective_density"] == pytest.approx(1 / 9)
    assert not any(r["collapsed"] for r in rows)


def test_unmasked_layers_count_as_fully_kept():
    # Only the middle layer is masked: the first and output layers count as dense, so every hidden
    # unit has inputs and reaches the output, and every kept middle weight is effective.
    model = small_mlp()
    mask = Mask({"hidden.2.weight": B(HAND_MASK["hidden.2.weight"])})
    assert effective_mask(model, mask, (4,)) == mask


def _reachability_oracle(mask: Mask, names: list[str]) -> Mask:
    """Boolean forward/backward reachability through a chain of Linear masks (independent check)."""
    ws = [mask[n] for n in names]
    forward = [torch.ones(ws[0].shape[1], dtype=torch.bool)]  # units reachable from the input
    for w in ws:
        forward.append((w & forward[-1][None, :]).any(dim=1))
    backward = [torch.ones(ws[-1].shape[0], dtype=torch.bool)]  # units that reach the output
    for w in reversed(ws):
        backward.insert(0, (w & backward[0][:, None]).any(dim=0))
    return Mask({
        n: w & forward[i][None, :] & backward[i + 1][:, None] for i, (n, w) in enumerate(zip(names, ws))
    })


@pytest.mark.parametrize("density", [0.05, 0.1, 0.2, 0.4])
def test_random_sparse_mlp_masks_match_reachability_oracle(density):
    model = build_model("mlp", (12,), 5, hidden=(10, 8, 6))
    names = ["hidden.0.weight", "hidden.2.weight", "hidden.4.weight", "fc.weight"]
    gen = torch.Generator().manual_seed(int(density * 100))
    for _ in range(10):
        params = dict(model.named_parameters())
        mask = Mask({n: torch.rand(params[n].shape, generator=gen) < density for n in names})
        expected = _reachability_oracle(mask, names)
        assert effective_mask(model, mask, (12,)) == expected
        assert is_disconnected(model, mask, (12,)) == (expected.num_kept == 0)


# --- disconnection and collapse ----------------------------------------------------------------------
def test_removing_a_middle_layer_disconnects_everything():
    model = small_mlp()
    mask = Mask({
        "hidden.0.weight": torch.ones(3, 4, dtype=torch.bool),
        "hidden.2.weight": torch.zeros(3, 3, dtype=torch.bool),
        "fc.weight": torch.ones(2, 3, dtype=torch.bool),
    })
    assert is_disconnected(model, mask, (4,))
    eff = effective_mask(model, mask, (4,))
    assert eff.num_kept == 0
    assert effective_density(model, mask, (4,)) == 0.0
    rows = layer_report(model, mask, (4,))
    assert [r["effective"] for r in rows] == [0, 0, 0]
    assert [r["kept"] for r in rows] == [12, 0, 6]
    assert all(r["collapsed"] for r in rows)
    assert collapsed_layers(model, mask, (4,)) == ["hidden.0.weight", "hidden.2.weight", "fc.weight"]


# --- dense masks on the real models ------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, shape, options",
    [
        ("conv2", (1, 28, 28), {}),
        ("vgg16", CIFAR, {"width": 0.125}),
        ("resnet20", CIFAR, {"width": 4}),
    ],
)
def test_dense_mask_is_fully_effective(name, shape, options):
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **options)
    for mask in (Mask.dense(model), Mask.dense(model, include_first=False, include_output=False)):
        assert effective_mask(model, mask, shape) == mask
        rows = layer_report(model, mask, shape)
        assert all(r["effective"] == r["kept"] == r["total"] for r in rows)
        assert collapsed_layers(model, mask, shape) == []
        assert not is_disconnected(model, mask, shape)
        assert effective_density(model, mask, shape) == 1.0


# --- residual connections ----------------------------------------------------------------------------
def _with(mask: Mask, **zeroed: None) -> Mask:
    """``mask`` with the named parameters (dots written as __) fully pruned."""
    names = {k.replace("__", ".") for k in zeroed}
    return Mask({n: torch.zeros_like(t) if n in names else t for n, t in mask.items()})


def test_pruned_residual_block_stays_connected_through_the_skip():
    torch.manual_seed(0)
    model = build_model("resnet20", CIFAR, 10, width=4)
    dense = Mask.dense(model)
    block = ["stages.0.1.conv1.weight", "stages.0.1.conv2.weight"]
    mask = _with(dense, **{n.replace(".", "__"): None for n in block})
    assert not is_disconnected(model, mask, CIFAR)
    eff = effective_mask(model, mask, CIFAR)
    assert eff == mask  # every other weight still reaches the output through the identity shortcut
    assert collapsed_layers(model, mask, CIFAR) == block


def test_pruned_projection_block_stays_connected_through_its_shortcut_conv():
    torch.manual_seed(0)
    model = build_model("resnet20", CIFAR, 10, width=4)
    mask = _with(Mask.dense(model), stages__1__0__conv1__weight=None, stages__1__0__conv2__weight=None)
    assert not is_disconnected(model, mask, CIFAR)
    assert effective_mask(model, mask, CIFAR) == mask


def test_block_whose_second_conv_is_pruned_makes_its_first_conv_ineffective():
    torch.manual_seed(0)
    model = build_model("resnet20", CIFAR, 10, width=4)
    mask = _with(Mask.dense(model), stages__2__1__conv2__weight=None)
    eff = effective_mask(model, mask, CIFAR)
    assert eff["stages.2.1.conv1.weight"].sum() == 0  # kept, but its only reader is gone
    assert eff == _with(mask, stages__2__1__conv1__weight=None)
    assert collapsed_layers(model, mask, CIFAR) == ["stages.2.1.conv1.weight", "stages.2.1.conv2.weight"]
    rows = {r["name"]: r for r in layer_report(model, mask, CIFAR)}
    assert rows["stages.2.1.conv1.weight"]["kept"] == rows["stages.2.1.conv1.weight"]["total"] > 0
    assert rows["stages.2.1.conv1.weight"]["effective"] == 0


def test_severing_the_shortcut_and_the_branch_of_a_block_disconnects_resnet():
    torch.manual_seed(0)
    model = build_model("resnet20", CIFAR, 10, width=4)
    mask = _with(Mask.dense(model), stages__1__0__conv2__weight=None, stages__1__0__shortcut__0__weight=None)
    assert is_disconnected(model, mask, CIFAR)
    assert effective_mask(model, mask, CIFAR).num_kept == 0


# --- channels nobody reads ---------------------------------------------------------------------------
def test_conv_channel_not_read_downstream_is_not_effective_on_conv2():
    torch.manual_seed(0)
    model = build_model("conv2", (1, 28, 28), 10)
    dense = Mask.dense(model)
    second = dense["features.2.weight"].clone()  # (64, 64, 3, 3): out, in, kh, kw
    second[:, 5] = False  # no filter of the second conv reads channel 5 of the first
    mask = Mask({**dense, "features.2.weight": second})
    eff = effective_mask(model, mask, (1, 28, 28))
    expected_first = torch.ones_like(dense["features.0.weight"])
    expected_first[5] = False
    assert torch.equal(eff["features.0.weight"], expected_first)
    assert eff == Mask({**mask, "features.0.weight": expected_first})


def tiny_convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * 4 * 4, 2),
    )


def test_flattened_channel_not_read_by_linear_is_not_effective():
    model = tiny_convnet()
    dense = Mask.dense(model)
    fc = dense["5.weight"].clone()
    fc[:, :16] = False  # the linear layer ignores channel 0 of the second conv (features 0..15)
    conv1 = dense["0.weight"].clone()
    conv1[1, :, 0, 0] = False  # some pruning inside a filter: the rest of it stays effective
    mask = Mask({"0.weight": conv1, "2.weight": dense["2.weight"], "5.weight": fc})
    eff = effective_mask(model, mask, (1, 4, 4))
    expected_conv2 = torch.ones(2, 3, 3, 3, dtype=torch.bool)
    expected_conv2[0] = False
    assert torch.equal(eff["2.weight"], expected_conv2)
    assert torch.equal(eff["0.weight"], conv1)
    assert torch.equal(eff["5.weight"], fc)


def test_max_pool_does_not_hide_paths_through_non_maximal_positions():
    # Input 1x1x2. Conv1 makes three channels: a1, a2 keep only the right tap (read x[p+1]) and are
    # [1, 0]; b keeps only the left tap (reads x[p-1]) and is [0, 1]. A 1x1 conv sums them to [2, 1],
    # so a max pool over the row only ever routes gradient to position 0, where b is 0. Yet b's
    # weights lie on an input->output path (and matter for other inputs): they must be effective.
    model = nn.Sequential(
        nn.Conv2d(1, 3, (1, 3), padding=(0, 1), bias=False), nn.ReLU(),
        nn.Conv2d(3, 1, 1, bias=False), nn.ReLU(),
        nn.MaxPool2d((1, 2)), nn.Flatten(), nn.Linear(1, 1),
    )
    first = torch.zeros(3, 1, 1, 3, dtype=torch.bool)
    first[0, 0, 0, 2] = first[1, 0, 0, 2] = first[2, 0, 0, 0] = True
    mask = Mask({"0.weight": first, "2.weight": torch.ones(1, 3, 1, 1, dtype=torch.bool)})
    assert effective_mask(model, mask, (1, 1, 2)) == mask
    assert isinstance(model[4], nn.MaxPool2d)  # the caller's model keeps its max pool


@pytest.mark.parametrize("activation", [nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.GELU])
def test_activations_neither_hide_paths_nor_invent_sources(activation):
    # 32 ones into 32 units: ReLU6 and Tanh saturate at 32 (float64 derivative exactly 0) and would
    # hide the first layer; Sigmoid(0) = 0.5 and Softplus(0) = log 2 would make a unit with no input
    # look like a source. The copy replaces them by Identity, so neither happens.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), activation(), nn.Linear(32, 1))
    dense = Mask.dense(model)
    assert effective_mask(model, dense, (32,)) == dense
    cut = Mask({**dense, "0.weight": torch.zeros(32, 32, dtype=torch.bool)})
    assert is_disconnected(model, cut, (32,))
    assert effective_mask(model, cut, (32,)).num_kept == 0


# --- the caller's model is untouched -----------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
def test_model_parameters_buffers_and_mode_are_unchanged(training):
    torch.manual_seed(0)
    model = build_model("resnet20", CIFAR, 10, width=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
    model.train(training)
    before = copy.deepcopy(model.state_dict())
    flags = {n: m.training for n, m in model.named_modules()}
    mask = Mask({n: torch.rand(t.shape) < 0.3 for n, t in Mask.dense(model).items()})

    effective_mask(model, mask, CIFAR)
    layer_report(model, mask, CIFAR)
    is_disconnected(model, mask, CIFAR)

    after = model.state_dict()
    assert list(after) == list(before)
    for name, value in before.items():
        assert after[name].dtype == value.dtype and torch.equal(after[name], value), name
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_works_inside_no_grad_and_for_frozen_parameters():
    model = small_mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        eff = effective_mask(model, hand_mask(), (4,))
    assert eff == Mask({n: B(v) for n, v in HAND_EFFECTIVE.items()})
    assert not any(p.requires_grad for p in model.parameters())


# --- BatchNorm parameters do not matter --------------------------------------------------------------
def test_result_is_independent_of_batchnorm_gamma_beta_and_statistics():
    torch.manual_seed(0)
    model = build_model("resnet20", CIFAR, 10, width=4)
    gen = torch.Generator().manual_seed(1)
    mask = Mask({n: torch.rand(t.shape, generator=gen) < 0.08 for n, t in Mask.dense(model).items()})
    reference = effective_mask(model, mask, CIFAR)
    assert reference != mask  # sparse enough that some kept weights are on no path

    scrambled = copy.deepcopy(model)
    with torch.no_grad():
        for module in scrambled.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.normal_()  # random signs
                module.weight[0] = 0.0  # and a dead channel
                module.weight[1] = -5.0
                module.bias.normal_(std=10.0)
                module.running_mean.normal_(std=3.0)
                module.running_var.uniform_(0.01, 10.0)
    assert effective_mask(scrambled, mask, CIFAR) == reference
    assert effective_mask(scrambled.train(), mask, CIFAR) == reference


# --- errors and formatting ---------------------------------------------------------------------------
def test_mask_that_does_not_fit_the_model_is_rejected():
    with pytest.raises(MaskError):
        effective_mask(small_mlp(), Mask({"nope.weight": torch.ones(3, dtype=torch.bool)}), (4,))


def test_format_layer_report_is_aligned_with_a_total_line():
    model, mask = small_mlp(), hand_mask()
    text = format_layer_report(layer_report(model, mask, (4,)))
    lines = text.splitlines()
    assert len(lines) == 1 + 3 + 1
    assert lines[0].split()[:3] == ["parameter", "shape", "kept"]
    assert lines[-1].split() == ["total", "9", "27", "0.3333", "5", "0.1852"]
    assert lines[1].split() == ["hidden.0.weight", "3x4", "3", "12", "0.2500", "2", "0.1667"]
    # right-aligned numeric columns: the densities end in the same column on every line
    end = lines[0].index("density") + len("density")
    assert all(re.fullmatch(r"\d\.\d{4}", line[end - 6 : end]) for line in lines[1:])

    cut = Mask({**mask, "hidden.2.weight": torch.zeros(3, 3, dtype=torch.bool)})
    flagged = format_layer_report(layer_report(model, cut, (4,))).splitlines()
    assert sum("COLLAPSED" in line for line in flagged) == 3
