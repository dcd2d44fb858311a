"""Channel pruning of any model through Torch-Pruning's dependency graph (pruning/graph_shrink.py).

For ticketlab's VGG and ResNet-20 and for user-written models (a residual CNN with 1x1 conv
shortcuts, a depthwise-separable CNN, concatenations), a BatchNorm channel mask (Early-Bird) and
a weight mask with empty rows (a refilled ticket) must give a physically smaller model whose
outputs equal the masked full-size model's, with the parameter count the widths predict.
"""

from __future__ import annotations

import copy
import sys

import pytest

pytest.importorskip("torch_pruning")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from ticketlab.masks import Mask  # noqa: E402
from ticketlab.models import build_model  # noqa: E402
from ticketlab.pruning import channels as channels_module  # noqa: E402
from ticketlab.pruning.channels import (  # noqa: E402
    ChannelPruningError,
    apply_channel_mask,
    channel_mask_from_bn,
    prunable_bn_layers,
    shrink,
)
from ticketlab.pruning.graph_shrink import (  # noqa: E402
    GraphShrinkError,
    channel_groups,
    expand_bn_mask,
    shrink_bn_mask,
    shrink_weight_mask,
)

SHAPE = (3, 32, 32)


# --- models a user might write ---------------------------------------------------------------


class UserResNet(nn.Module):
    """Stem, a down-sampling block with a 1x1 conv shortcut (+BN), an identity block, head."""

    def __init__(self, shortcut_bn: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.b1_conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.b1_bn1 = nn.BatchNorm2d(16)
        self.b1_conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.b1_bn2 = nn.BatchNorm2d(16)
        short: list[nn.Module] = [nn.Conv2d(8, 16, 1, stride=2, bias=not shortcut_bn)]
        if shortcut_bn:
            short.append(nn.BatchNorm2d(16))
        self.b1_short = nn.Sequential(*short)
        self.b2_conv1 = nn.Conv2d(16, 12, 3, padding=1, bias=False)
        self.b2_bn1 = nn.BatchNorm2d(12)
        self.b2_conv2 = nn.Conv2d(12, 16, 3, padding=1, bias=False)
        self.b2_bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        y = self.b1_bn2(self.b1_conv2(F.relu(self.b1_bn1(self.b1_conv1(x)))))
        y = F.relu(y + self.b1_short(x))
        z = self.b2_bn2(self.b2_conv2(F.relu(self.b2_bn1(self.b2_conv1(y)))))
        z = F.relu(z + y)
        return self.head(F.adaptive_avg_pool2d(z, 1).flatten(1))


def ds_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(),
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
    )  # fmt: skip


class DepthwiseSeparable(nn.Module):
    """MobileNet-style: stem, three (depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU)."""

    WIDTHS = (16, 24, 32, 40)

    def __init__(self):
        super().__init__()
        a, b, c, d = self.WIDTHS
        self.stem = nn.Sequential(nn.Conv2d(3, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU())
        self.blocks = nn.Sequential(ds_block(a, b), nn.MaxPool2d(2), ds_block(b, c), ds_block(c, d))
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))

    @staticmethod
    def params(a: int, b: int, c: int, d: int) -> int:
        stem = 27 * a + 2 * a
        blocks = sum(9 * i + 2 * i + i * o + 2 * o for i, o in ((a, b), (b, c), (c, d)))
        return stem + blocks + 10 * d + 10


class ConcatNet(nn.Module):
    """Two branches concatenated, then (``merge``) a 1x1 conv or (not) straight into pool + fc."""

    def __init__(self, merge: bool = True, pool: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 6, 1, bias=False)
        self.a_bn = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(8, 10, 3, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(10)
        self.merge = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU()) if merge else None
        self.pool = pool
        self.fc = nn.Linear((12 if merge else 16) * pool * pool, 10)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        z = torch.cat([F.relu(self.a_bn(self.a(x))), F.relu(self.b_bn(self.b(x)))], dim=1)
        if self.merge is not None:
            z = self.merge(z)
        return self.fc(F.adaptive_avg_pool2d(z, self.pool).flatten(1))

    @staticmethod
    def params(s: int, a: int, b: int, m: int) -> int:
        return 27 * s + s + 2 * s + s * a + 2 * a + 9 * s * b + 2 * b + (a + b) * m + 2 * m + 10 * m + 10


class SigmoidNet(nn.Module):
    """conv -> BN -> sigmoid -> conv: a zeroed BN channel becomes 0.5, so it cannot be removed."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.sigmoid(self.bn1(self.c1(x)))
        x = F.relu(self.bn2(self.c2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# --- helpers ---------------------------------------------------------------------------------


def make(name: str) -> nn.Module:
    if name == "vgg11":
        return build_model("vgg11", SHAPE, 10, width=0.25)
    if name == "resnet20":
        return build_model("resnet20", SHAPE, 10, width=8)
    return {"user_resnet": UserResNet, "depthwise": DepthwiseSeparable, "concat": ConcatNet}[name]()


MODELS = ["vgg11", "resnet20", "user_resnet", "depthwise", "concat"]


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random BN scales/shifts/statistics and biases, so every sliced tensor matters."""
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


def outputs(model: nn.Module, x: torch.Tensor, train: bool = False) -> torch.Tensor:
    if train:  # a train-mode forward updates BatchNorm running statistics: use a copy
        model = copy.deepcopy(model)
    model.train(train)
    with torch.no_grad():
        return model(x)


def assert_same_function(small: nn.Module, masked: nn.Module, x: torch.Tensor) -> None:
    out = outputs(masked, x)
    assert out.abs().max() > 1e-3
    assert torch.allclose(outputs(small, x), out, atol=1e-5, rtol=1e-4)
    # BatchNorm in train mode (batch statistics): the kept channels' statistics do not change.
    assert torch.allclose(outputs(small, x, train=True), outputs(masked, x, train=True), atol=1e-4, rtol=1e-4)


@pytest.fixture(autouse=True)
def graph_path(monkeypatch):
    monkeypatch.setattr(channels_module, "USE_GRAPH", True)


# --- BatchNorm channel masks (Early-Bird tickets) --------------------------------------------


@pytest.mark.parametrize("ratio", [0.3, 0.6])
@pytest.mark.parametrize("name", MODELS)
def test_bn_mask_shrink_equals_masked_model(name, ratio):
    torch.manual_seed(0)
    model = randomize(make(name), seed=MODELS.index(name) * 10 + int(ratio * 10))
    x = torch.randn(4, *SHAPE)
    mask = channel_mask_from_bn(model, ratio, example_input=x[:1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = shrink_bn_mask(model, mask, x[:1])
    masked = apply_channel_mask(copy.deepcopy(model), mask, example_input=x[:1])
    # the original is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert_same_function(result.model, masked, x)
    assert_same_function(result.model, result.reference, x)
    n_pruned = int(sum((~m).sum() for m in mask.values()))
    assert result.report.removed == n_pruned > 0  # prunable layers are independent: all go
    assert result.report.not_removed == 0
    assert n_params(result.model) == result.report.params_after < n_params(model)
    # channels.shrink (what Early-Bird calls) gives the same model
    small = shrink(model, mask, example_input=x[:1])
    assert n_params(small) == n_params(result.model)
    assert torch.allclose(outputs(small, x), outputs(masked, x), atol=1e-5, rtol=1e-4)
    # the shrunk model trains
    small.train()
    loss = F.cross_entropy(small(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in small.parameters())


def test_prunable_layers_of_foreign_models():
    assert prunable_bn_layers(UserResNet()) == ["stem_bn", "b1_bn1", "b2_bn1"]  # not the residual stream
    assert prunable_bn_layers(DepthwiseSeparable()) == ["stem.1", "blocks.0.4", "blocks.2.4", "blocks.3.4"]
    assert prunable_bn_layers(ConcatNet()) == ["stem_bn", "a_bn", "b_bn", "merge.1"]
    groups = {g.root: g for g in channel_groups(UserResNet(), torch.randn(1, *SHAPE))}
    stream = next(g for g in groups.values() if "b1_bn2" in g.bns)
    assert stream.residual and set(stream.bns) == {"b1_bn2", "b1_short.1", "b2_bn2"}
    assert set(stream.producers) == {"b1_conv2", "b1_short.0", "b2_conv2"}


def test_depthwise_parameter_count_by_formula():
    model = randomize(DepthwiseSeparable(), seed=3)
    assert n_params(model) == DepthwiseSeparable.params(*DepthwiseSeparable.WIDTHS)
    x = torch.randn(3, *SHAPE)
    mask = channel_mask_from_bn(model, 0.5, example_input=x[:1])
    result = shrink_bn_mask(model, mask, x[:1])
    kept = [int(mask[n].sum()) for n in ("stem.1", "blocks.0.4", "blocks.2.4", "blocks.3.4")]
    assert n_params(result.model) == DepthwiseSeparable.params(*kept)
    # the depthwise conv and its BN lost the channels of the pointwise conv before them
    dw = result.model.blocks[0][0]
    assert dw.in_channels == dw.out_channels == dw.groups == kept[0]
    assert result.model.blocks[0][1].num_features == kept[0]
    # the coupled BN follows the representative one in the masked model
    full = expand_bn_mask(channel_groups(model, x[:1]), mask)
    assert torch.equal(full["blocks.0.1"], mask["stem.1"])
    masked = apply_channel_mask(copy.deepcopy(model), mask, example_input=x[:1])
    assert not masked.blocks[0][1].weight[~mask["stem.1"]].any()
    assert_same_function(result.model, masked, x)


def test_concat_parameter_count_by_formula():
    model = randomize(ConcatNet(), seed=4)
    assert n_params(model) == ConcatNet.params(8, 6, 10, 12)
    x = torch.randn(3, *SHAPE)
    mask = channel_mask_from_bn(model, 0.5, example_input=x[:1])
    result = shrink_bn_mask(model, mask, x[:1])
    kept = [int(mask[n].sum()) for n in ("stem_bn", "a_bn", "b_bn", "merge.1")]
    assert n_params(result.model) == ConcatNet.params(*kept)
    # the merge conv reads exactly the kept channels of both branches, at their new offsets
    assert result.model.merge[0].in_channels == kept[1] + kept[2]
    assert_same_function(result.model, apply_channel_mask(copy.deepcopy(model), mask, x[:1]), x)


def test_concat_straight_into_the_head():
    model = randomize(ConcatNet(merge=False), seed=5)
    x = torch.randn(3, *SHAPE)
    mask = channel_mask_from_bn(model, 0.5, example_input=x[:1])
    result = shrink_bn_mask(model, mask, x[:1])
    assert result.model.fc.in_features == int(mask["a_bn"].sum() + mask["b_bn"].sum())
    assert_same_function(result.model, apply_channel_mask(copy.deepcopy(model), mask, x[:1]), x)


def test_concat_flatten_with_spatial_features_is_never_wrong():
    """Torch-Pruning mis-maps torch.cat followed by flatten into a Linear (h*w > 1 features per
    channel): those groups are refused, the rest still shrinks, and the function is unchanged."""
    model = randomize(ConcatNet(merge=False, pool=2), seed=6)
    x = torch.randn(3, *SHAPE)
    mask = {"a_bn": torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool), "stem_bn": torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)}
    result = shrink_bn_mask(model, mask, x[:1])
    assert result.report.kept_refused == 2 and "inconsistently" in str(result.report)
    assert result.report.removed == 2  # the stem's channels are unaffected by the concat
    assert result.model.stem.out_channels == 6 and result.model.a.out_channels == 6
    assert_same_function(result.model, apply_channel_mask(copy.deepcopy(model), mask, x[:1]), x)


def test_residual_stream_needs_every_branch():
    """A stream channel goes only when every BN on it is zero; with a bias-carrying 1x1 shortcut
    without BN it is kept, and the report says which layer keeps it alive."""
    x = torch.randn(3, *SHAPE)
    model = randomize(UserResNet(), seed=7)
    pruned = torch.tensor([0, 1] * 8, dtype=torch.bool)
    result = shrink_bn_mask(model, {"b1_bn2": pruned}, x[:1])  # the stream BNs follow b1_bn2
    assert result.report.removed == 8
    assert result.model.b1_short[0].out_channels == 8 and result.model.b2_conv1.in_channels == 8
    assert result.model.head.in_features == 8
    assert_same_function(result.model, apply_channel_mask(copy.deepcopy(model), {"b1_bn2": pruned}, x[:1]), x)
    # Listing two stream BNs that disagree: only the channels pruned in both go; the others stay
    # (zeroed where listed) and are reported as coupled.
    other = torch.tensor([0, 0, 1, 1] * 4, dtype=torch.bool)
    both = {"b1_bn2": pruned, "b2_bn2": other}
    result = shrink_bn_mask(model, both, x[:1])
    assert result.report.removed == int((~pruned & ~other).sum()) == 4
    assert result.report.kept_coupled == int((~pruned ^ ~other).sum()) == 8
    assert_same_function(result.model, apply_channel_mask(copy.deepcopy(model), both, x[:1]), x)

    plain = randomize(UserResNet(shortcut_bn=False), seed=8)
    result = shrink_bn_mask(plain, {"b1_bn2": pruned}, x[:1])
    assert result.report.removed == 0 and result.report.kept_coupled == 8
    assert "b1_short.0" in str(result.report)
    assert n_params(result.model) == n_params(plain)
    assert_same_function(result.model, apply_channel_mask(copy.deepcopy(plain), {"b1_bn2": pruned}, x[:1]), x)


def test_non_zero_preserving_op_refuses_the_group():
    model = randomize(SigmoidNet(), seed=9)
    x = torch.randn(3, *SHAPE)
    mask = {"bn1": torch.tensor([1, 0] * 4, dtype=torch.bool), "bn2": torch.tensor([1, 1, 0, 0] * 2, dtype=torch.bool)}
    result = shrink_bn_mask(model, mask, x[:1])
    assert result.report.kept_refused == 4 and "Sigmoid" in str(result.report)
    assert result.report.removed == 4 and result.model.c2.out_channels == 4 and result.model.c1.out_channels == 8
    assert_same_function(result.model, apply_channel_mask(copy.deepcopy(model), mask, x[:1]), x)
    assert prunable_bn_layers(model, x[:1]) == ["bn2"]


# --- weight masks with empty rows (refilled tickets) -----------------------------------------


def refill_like_mask(model: nn.Module, seed: int, rows: float = 0.4, inner: float = 0.3) -> Mask:
    """A Mask with whole output rows empty in most conv/linear layers and scattered zeros elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight
            keep = torch.rand(w.shape, generator=gen) > inner
            if name != last:
                empty = torch.rand(w.shape[0], generator=gen) < rows
                keep[empty] = False
            tensors[f"{name}.weight"] = keep
    return Mask(tensors)


def empty_rows(mask: Mask, name: str) -> torch.Tensor:
    return ~mask[f"{name}.weight"].flatten(1).any(dim=1)


@pytest.mark.parametrize("name", MODELS)
def test_weight_mask_shrink_equals_reference(name):
    torch.manual_seed(1)
    model = randomize(make(name), seed=20 + MODELS.index(name))
    mask = refill_like_mask(model, seed=MODELS.index(name))
    x = torch.randn(4, *SHAPE)
    result = shrink_weight_mask(model, mask, x[:1])
    assert result.report.removed > 0
    assert_same_function(result.model, result.reference, x)
    # The reference is the weight-masked model (with the removed channels' BN / bias shifts zeroed).
    ref_params = dict(result.reference.named_parameters())
    for n in mask:
        assert not ref_params[n][~mask[n]].any()
    # The remaining mask fits the small model and keeps its zeros.
    small_params = dict(result.model.named_parameters())
    assert set(result.mask) == set(mask)
    for n in result.mask:
        assert result.mask[n].shape == small_params[n].shape
        assert not small_params[n][~result.mask[n]].any()
    removed_weights = mask.num_total - result.mask.num_total
    assert removed_weights > 0 and result.mask.num_kept <= mask.num_kept
    assert n_params(result.model) == result.report.params_after < n_params(model)


def test_weight_mask_vgg_widths_and_dropped_shifts():
    model = randomize(make("vgg11"), seed=30)
    mask = refill_like_mask(model, seed=3)
    x = torch.randn(2, *SHAPE)
    result = shrink_weight_mask(model, mask, x[:1])
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for n in convs:
        empty = empty_rows(mask, n)
        expected = int((~empty).sum()) or 1  # a fully empty layer keeps one channel
        assert result.model.get_submodule(n).out_channels == expected, n
    assert result.report.removed == sum(int(empty_rows(mask, n).sum()) for n in convs) - result.report.kept_last
    # random BN statistics: every removed channel had a nonzero shift beta - gamma * mu / sigma
    assert result.report.dropped_shifts == result.report.removed
    # with zero shifts (fresh BN: beta = 0, mu = 0) the pure weight-masked model is the reference
    fresh = make("vgg11")
    res = shrink_weight_mask(fresh, mask, x[:1])
    assert res.report.dropped_shifts == 0
    weighted = copy.deepcopy(fresh)
    with torch.no_grad():
        for n, p in weighted.named_parameters():
            if n in mask:
                p.mul_(mask[n])
    assert torch.allclose(outputs(res.model, x), outputs(weighted, x), atol=1e-5, rtol=1e-4)


def test_weight_mask_residual_branch_must_be_empty_everywhere():
    model = randomize(UserResNet(), seed=31)
    dense = Mask.dense(model)
    x = torch.randn(3, *SHAPE)

    def with_empty(rows: dict[str, list[int]]) -> Mask:
        t = {n: v.clone() for n, v in dense.items()}
        for layer, idx in rows.items():
            t[f"{layer}.weight"][idx] = False
        return Mask(t)

    # channel 3 empty in the main branch only: kept (the shortcut still writes it)
    one = shrink_weight_mask(model, with_empty({"b1_conv2": [3], "b2_conv2": [3]}), x[:1])
    assert one.report.removed == 0 and one.report.kept_coupled == 1 and "b1_short.0" in str(one.report)
    assert_same_function(one.model, one.reference, x)
    # empty in every producer of the stream channel: removed from all coupled layers
    both = shrink_weight_mask(model, with_empty({"b1_conv2": [3, 5], "b2_conv2": [3, 5], "b1_short.0": [3, 5]}), x[:1])
    assert both.report.removed == 2
    assert both.model.b1_bn2.num_features == both.model.b2_bn2.num_features == 14
    assert both.model.head.in_features == 14 and both.model.b2_conv1.in_channels == 14
    assert_same_function(both.model, both.reference, x)
    # inner channel of a block: independent
    inner = shrink_weight_mask(model, with_empty({"b2_conv1": [0, 1, 2]}), x[:1])
    assert inner.report.removed == 3 and inner.model.b2_conv2.in_channels == 9
    assert inner.mask["b2_conv2.weight"].shape == (16, 9, 3, 3)


# --- errors ------------------------------------------------------------------------------------


def test_clear_errors():
    model = make("user_resnet")
    x = torch.randn(1, *SHAPE)
    with pytest.raises(ChannelPruningError, match="not a BatchNorm"):
        shrink_bn_mask(model, {"stem": torch.ones(8, dtype=torch.bool)}, x)
    with pytest.raises(ChannelPruningError, match="shape"):
        shrink_bn_mask(model, {"stem_bn": torch.ones(3, dtype=torch.bool)}, x)
    with pytest.raises(ChannelPruningError, match="every channel"):
        shrink_bn_mask(model, {"b1_bn1": torch.zeros(16, dtype=torch.bool)}, x)
    with pytest.raises(ChannelPruningError, match="does not have"):
        shrink_weight_mask(model, {"nope.weight": torch.ones(3, dtype=torch.bool)}, x)
    with pytest.raises(GraphShrinkError, match="trace"):
        shrink_bn_mask(model, {"stem_bn": torch.ones(8, dtype=torch.bool)}, torch.randn(1, 5, 32, 32))
    # the example input is guessed when not given
    small = shrink_bn_mask(model, {"b1_bn1": torch.tensor([1, 0] * 8, dtype=torch.bool)}).model
    assert small.b1_conv1.out_channels == 8


def test_missing_torch_pruning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    from ticketlab.pruning import graph_shrink

    assert not graph_shrink.available()
    with pytest.raises(ImportError, match=r"pip install 'ticketlab\[structured\]'"):
        shrink_bn_mask(make("user_resnet"), {"b1_bn1": torch.ones(16, dtype=torch.bool)}, torch.randn(1, *SHAPE))
    # channels.py without the graph: ticketlab's own models still work, others name the extra
    channels_module._GRAPH_CACHE.clear()
    assert prunable_bn_layers(make("vgg11"))[0] == "features.1"
    with pytest.raises(ChannelPruningError, match=r"ticketlab\[structured\]"):
        prunable_bn_layers(make("user_resnet"))


# --- Early-Bird end to end on a user's residual CNN ---------------------------------------------


def test_early_bird_channel_ticket_of_a_user_residual_cnn(tmp_path):
    from ticketlab.config import DataConfig, EarlyBirdConfig, ModelConfig, TrainConfig
    from ticketlab.experiments.early_bird import run_early_bird
    from ticketlab.models import MODELS, register_model
    from ticketlab.store import Store

    name = "test_graph_user_resnet"
    MODELS.pop(name, None)
    register_model(name)(lambda input_shape, num_classes: UserResNet())
    cfg = EarlyBirdConfig(
        data=DataConfig(name="synthetic_images", options={"n_train": 128, "n_test": 32, "shape": [3, 16, 16]}),
        model=ModelConfig(name=name), kind="channel", window=2, epsilon=0.5, seed=0, prune_ratio=0.5,
        train=TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64, steps="5ep", eval_every="1ep"),
    )
    try:
        summary = run_early_bird(cfg, Store(tmp_path), device="cpu", progress=False, log=lambda _: None)
    finally:
        MODELS.pop(name, None)
    dense = summary["dense_parameters"]
    assert summary["ticket_parameters"] < dense and summary["full_ticket_parameters"] < dense
    assert summary["ticket_forward_flops"] < summary["dense_forward_flops"]


class ReluBeforeBN(nn.Module):
    """conv -> ReLU -> BN (BatchNorm after the activation), twice, then head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.bn1(F.relu(self.c1(x)))
        x = self.bn2(F.max_pool2d(F.relu(self.c2(x)), 2))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_batchnorm_after_the_activation_still_covers_the_conv():
    model = randomize(ReluBeforeBN(), seed=12)
    x = torch.randn(3, *SHAPE)
    assert prunable_bn_layers(model, x[:1]) == ["bn1", "bn2"]
    mask = channel_mask_from_bn(model, 0.5, example_input=x[:1])
    result = shrink_bn_mask(model, mask, x[:1])
    assert result.report.removed == 8 and result.report.not_removed == 0
    assert_same_function(result.model, apply_channel_mask(copy.deepcopy(model), mask, x[:1]), x)
