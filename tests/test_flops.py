"""Tests for ticketlab.analysis.flops: hand-computed multiply-add counts and RigL's training FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ticketlab.analysis.flops import (
    FlopsError,
    dense_forward_flops,
    forward_flops,
    layer_flops,
    rigl_average_step_flops,
    run_training_flops,
    training_step_flops,
)
from ticketlab.masks import Mask, MaskError
from ticketlab.models import build_model


def keep_first(shape: tuple[int, ...], k: int) -> torch.Tensor:
    """Bool tensor of ``shape`` with exactly ``k`` True entries (the first k in flat order)."""
    t = torch.zeros(shape, dtype=torch.bool).flatten()
    t[:k] = True
    return t.reshape(shape)


def random_keep(shape: tuple[int, ...], k: int, gen: torch.Generator) -> torch.Tensor:
    t = torch.zeros(shape, dtype=torch.bool).flatten()
    t[torch.randperm(t.numel(), generator=gen)[:k]] = True
    return t.reshape(shape)


def mlp_4_3_2() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def small_convnet(n: int = 5, groups: int = 1, stride: int = 1) -> nn.Module:
    # (1, 8, 8) -> conv 8x8x2 -> pool 4x4x2 -> conv (stride 1: 2x2x4, stride 2: 1x1x4) -> linear
    spatial = 2 if stride == 1 else 1
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 4, 3, stride=stride, padding=0, groups=groups),
        nn.Flatten(),
        nn.Linear(4 * spatial * spatial, n),
    )


# --- MLP ------------------------------------------------------------------------------------------
def test_mlp_dense_and_masked():
    model = mlp_4_3_2()
    assert dense_forward_flops(model, (4,)) == 4 * 3 + 3 * 2 == 18
    assert forward_flops(model, (4,)) == 18
    mask = Mask({"0.weight": keep_first((3, 4), 5), "2.weight": keep_first((2, 3), 2)})
    assert forward_flops(model, (4,), mask) == 7
    rows = layer_flops(model, (4,), mask)
    assert [(r["name"], r["weight"]) for r in rows] == [("0", "0.weight"), ("2", "2.weight")]
    assert [(r["dense_flops"], r["sparse_flops"]) for r in rows] == [(12, 5), (6, 2)]
    assert [r["output_shape"] for r in rows] == [(1, 3), (1, 2)]
    assert all(r["calls"] == 1 for r in rows)


def test_mask_covering_some_layers_counts_the_rest_dense():
    model = mlp_4_3_2()
    mask = Mask({"2.weight": keep_first((2, 3), 1)})
    assert forward_flops(model, (4,), mask) == 12 + 1
    # a mask on a bias is allowed but changes nothing: biases are not counted
    mask = Mask({"0.bias": keep_first((3,), 0), "0.weight": keep_first((3, 4), 4)})
    assert forward_flops(model, (4,), mask) == 4 + 6


def test_linear_counts_every_position_of_leading_dims():
    # (seq=7, features=4): each token goes through the weights once
    model = mlp_4_3_2()
    assert dense_forward_flops(model, (7, 4)) == 7 * 18
    rows = layer_flops(model, (7, 4))
    assert rows[0]["output_shape"] == (1, 7, 3)


def test_mask_that_does_not_fit_raises():
    model = mlp_4_3_2()
    with pytest.raises(MaskError):
        forward_flops(model, (4,), Mask({"1.weight": keep_first((3, 4), 1)}))
    with pytest.raises(MaskError):
        forward_flops(model, (4,), Mask({"0.weight": keep_first((4, 3), 1)}))


def test_wrong_input_shape_raises_flops_error_and_cleans_up():
    model = mlp_4_3_2()
    with pytest.raises(FlopsError, match="cannot run"):
        layer_flops(model, (5,))
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training
    with pytest.raises(FlopsError):
        layer_flops(model, ())
    with pytest.raises(FlopsError):
        layer_flops(model, (0, 4))


# --- convolutions ---------------------------------------------------------------------------------
def test_conv_net_by_hand():
    n = 5
    model = small_convnet(n)
    rows = layer_flops(model, (1, 8, 8))
    assert [(r["name"], r["weight"]) for r in rows] == [("0", "0.weight"), ("3", "3.weight"), ("5", "5.weight")]
    conv1 = 8 * 8 * (2 * 1 * 3 * 3)  # 1152
    conv2 = 2 * 2 * (4 * 2 * 3 * 3)  # 288
    fc = 16 * n
    assert conv1 == 1152 and conv2 == 288
    assert [r["dense_flops"] for r in rows] == [conv1, conv2, fc]
    assert [r["output_shape"] for r in rows] == [(1, 2, 8, 8), (1, 4, 2, 2), (1, n)]
    assert dense_forward_flops(model, (1, 8, 8)) == 1152 + 288 + 80

    # keep 7 of 18, 30 of 72, 11 of 80 weights: each kept weight runs at every output position
    mask = Mask({
        "0.weight": keep_first((2, 1, 3, 3), 7),
        "3.weight": keep_first((4, 2, 3, 3), 30),
        "5.weight": keep_first((n, 16), 11),
    })
    rows = layer_flops(model, (1, 8, 8), mask)
    assert [r["sparse_flops"] for r in rows] == [64 * 7, 4 * 30, 11]
    assert forward_flops(model, (1, 8, 8), mask) == 448 + 120 + 11


def test_grouped_conv_counts_in_channels_per_group():
    model = small_convnet(groups=2)
    rows = layer_flops(model, (1, 8, 8))
    # groups=2: each of the 4 output channels sees 2/2 = 1 input channel -> weight (4, 1, 3, 3)
    assert rows[1]["dense_flops"] == 2 * 2 * (4 * (2 // 2) * 3 * 3) == 144
    mask = Mask({"3.weight": keep_first((4, 1, 3, 3), 10)})
    assert layer_flops(model, (1, 8, 8), mask)[1]["sparse_flops"] == 4 * 10


def test_strided_conv():
    model = small_convnet(n=3, stride=2)
    rows = layer_flops(model, (1, 8, 8))
    # 4x4 input, 3x3 kernel, stride 2, no padding -> 1x1 output
    assert rows[1]["output_shape"] == (1, 4, 1, 1)
    assert rows[1]["dense_flops"] == 1 * 1 * (4 * 2 * 9) == 72
    assert rows[2]["dense_flops"] == 4 * 3
    # stride 2 with padding 1 on 8x8 -> 4x4 output
    model = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False))
    assert dense_forward_flops(model, (3, 8, 8)) == 4 * 4 * 5 * 3 * 9


def test_conv1d_and_conv3d():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 8, 1))
    assert dense_forward_flops(model, (2, 10)) == 8 * 3 * 2 * 3 + 24
    model = nn.Sequential(nn.Conv3d(1, 2, 2))
    assert dense_forward_flops(model, (1, 3, 3, 3)) == 2 * 2 * 2 * (2 * 1 * 8)


def test_shared_layer_is_counted_per_call():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    rows = layer_flops(Twice(), (3,))
    assert len(rows) == 1 and rows[0]["calls"] == 2 and rows[0]["dense_flops"] == 18


def test_unused_layer_gets_no_row():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Linear(10, 10)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    rows = layer_flops(Unused(), (3,))
    assert [r["name"] for r in rows] == ["fc"]


# --- library models -------------------------------------------------------------------------------
def test_lenet_300_100_dense_and_per_layer_density():
    model = build_model("lenet_300_100", (1, 28, 28), 10)
    assert dense_forward_flops(model, (1, 28, 28)) == 784 * 300 + 300 * 100 + 100 * 10 == 266_200
    gen = torch.Generator().manual_seed(0)
    mask = Mask({n: random_keep(tuple(p.shape), int(0.2 * p.numel()), gen) for n, p in
                 dict(model.named_parameters()).items() if n.endswith("weight")})
    assert forward_flops(model, (1, 28, 28), mask) == mask.num_kept == int(0.2 * 266_200)
    rows = layer_flops(model, (1, 28, 28), mask)
    assert [r["weight"] for r in rows] == list(mask)  # forward order == mask (definition) order
    assert [r["sparse_flops"] for r in rows] == list(mask.kept_per_layer().values())


def test_resnet20_dense_by_hand():
    model = build_model("resnet20", (3, 32, 32), 10, width=16)
    conv3x3 = lambda hw, c_in, c_out: hw * hw * c_out * c_in * 9  # noqa: E731
    conv1x1 = lambda hw, c_in, c_out: hw * hw * c_out * c_in  # noqa: E731
    expected = (
        conv3x3(32, 3, 16)
        + 6 * conv3x3(32, 16, 16)
        + conv3x3(16, 16, 32) + conv1x1(16, 16, 32) + 5 * conv3x3(16, 32, 32)
        + conv3x3(8, 32, 64) + conv1x1(8, 32, 64) + 5 * conv3x3(8, 64, 64)
        + 64 * 10
    )
    assert expected == 40_813_184  # ~40.8M multiply-adds
    rows = layer_flops(model, (3, 32, 32))
    assert sum(r["dense_flops"] for r in rows) == expected
    assert len(rows) == 1 + 18 + 2 + 1
    assert rows[0]["weight"] == "conv.weight" and rows[-1]["weight"] == "fc.weight"
    assert rows[0]["output_shape"] == (1, 16, 32, 32) and rows[-1]["output_shape"] == (1, 10)
    by_name = {r["name"]: r for r in rows}
    assert by_name["stages.1.0.shortcut.0"]["dense_flops"] == conv1x1(16, 16, 32) == 131_072
    assert by_name["stages.2.0.conv1"]["output_shape"] == (1, 64, 8, 8)

    # uniform 10% density on all convs (fc dense): sparse = sum positions * kept
    gen = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    mask = Mask({r["weight"]: random_keep(tuple(params[r["weight"]].shape),
                                          params[r["weight"]].numel() // 10, gen)
                 for r in rows if r["name"] != "fc"})
    positions = {r["weight"]: r["dense_flops"] // params[r["weight"]].numel() for r in rows}
    want = sum(positions[n] * k for n, k in mask.kept_per_layer().items()) + 640
    assert forward_flops(model, (3, 32, 32), mask) == want


def test_model_state_unchanged_and_no_hooks_left():
    model = build_model("resnet20", (3, 32, 32), 10, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}  # includes BN running stats
    model.train()
    layer_flops(model, (3, 32, 32))
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    layer_flops(model, (3, 32, 32))
    assert not any(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for m in model.modules():
        assert not m._forward_hooks
        assert not m._forward_pre_hooks
        assert not m._backward_hooks
        assert not getattr(m, "_backward_pre_hooks", {})
    assert all(p.grad is None for p in model.parameters())


# --- training FLOPs -------------------------------------------------------------------------------
def test_training_step_and_rigl_average_by_hand():
    assert training_step_flops(18) == 54
    assert training_step_flops(0) == 0
    # f_S = 10, f_D = 100, ΔT = 4: (3*10*4 + 2*10 + 100) / 5 = 240 / 5 = 48
    assert rigl_average_step_flops(10, 100, 4) == 48.0
    # f_S = f_D: same as static training
    assert rigl_average_step_flops(7, 7, 100) == pytest.approx(21.0)
    # ΔT = 0: a dense gradient every step
    assert rigl_average_step_flops(10, 100, 0) == 120.0
    with pytest.raises(FlopsError):
        training_step_flops(-1)
    with pytest.raises(FlopsError):
        rigl_average_step_flops(10, 100, -1)


def test_static_sparse_run():
    assert run_training_flops(1000, 64, 7) == 1000 * 64 * 3 * 7
    assert run_training_flops(3, 2, [5, 4, 3]) == 2 * 3 * (5 + 4 + 3)
    assert run_training_flops(0, 64, 7) == 0
    with pytest.raises(FlopsError):
        run_training_flops(3, 2, [5, 4])


def test_rigl_run_matches_the_paper_formula():
    f_s, f_d, batch, delta_t = 1_234, 10_000, 128, 100
    # one period = ΔT ordinary steps + 1 update step (dense gradient): exactly the paper's average
    period = run_training_flops(delta_t + 1, batch, f_s, dense_gradient_steps=1, f_dense=f_d)
    assert period == batch * (3 * f_s * delta_t + 2 * f_s + f_d)
    assert period / ((delta_t + 1) * batch) == pytest.approx(rigl_average_step_flops(f_s, f_d, delta_t))
    # 1000 steps with an update every 100 steps (10 updates): 10 periods of 99 ordinary + 1 update
    total = run_training_flops(1000, batch, f_s, dense_gradient_steps=10, f_dense=f_d)
    assert total == pytest.approx(1000 * batch * rigl_average_step_flops(f_s, f_d, delta_t - 1), abs=1)
    assert total == batch * (1000 * 3 * f_s + 10 * (f_d - f_s))
    # ... which the paper's ΔT = 100 average matches to within 1% of the dense-gradient extra
    approx = 1000 * batch * rigl_average_step_flops(f_s, f_d, delta_t)
    assert abs(total - approx) <= 0.01 * 10 * batch * (f_d - f_s) + 1
    # same run with explicit step indices
    steps = list(range(0, 1000, 100))
    assert run_training_flops(1000, batch, f_s, dense_gradient_steps=steps, f_dense=f_d) == total


def test_run_with_changing_mask_and_indexed_dense_steps():
    f = [10, 8, 6, 4]
    got = run_training_flops(4, 3, f, dense_gradient_steps=[1, 3], f_dense=20)
    assert got == 3 * (3 * sum(f) + (20 - 8) + (20 - 4))
    with pytest.raises(FlopsError, match="step indices"):
        run_training_flops(4, 3, f, dense_gradient_steps=2, f_dense=20)
    with pytest.raises(FlopsError, match="f_dense"):
        run_training_flops(4, 3, 5, dense_gradient_steps=1)
    with pytest.raises(FlopsError):
        run_training_flops(4, 3, 5, dense_gradient_steps=[4], f_dense=20)
    with pytest.raises(FlopsError):
        run_training_flops(4, 3, 5, dense_gradient_steps=[1, 1], f_dense=20)
    with pytest.raises(FlopsError):
        run_training_flops(4, 3, 5, dense_gradient_steps=5, f_dense=20)


def test_end_to_end_mlp_training_flops():
    model = mlp_4_3_2()
    mask = Mask({"0.weight": keep_first((3, 4), 5), "2.weight": keep_first((2, 3), 2)})
    f_s, f_d = forward_flops(model, (4,), mask), dense_forward_flops(model, (4,))
    assert run_training_flops(10, 4, f_s) == 10 * 4 * training_step_flops(7)
    assert run_training_flops(10, 4, f_d) == 10 * 4 * 54
