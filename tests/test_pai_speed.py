"""Issue 22: the fast paths of pruning at initialisation give exactly the masks of the plain ones.

(Also: float32 SynFlow ranks as float64 does where float64 is exact enough, rescaled where float32
would overflow; SNIP and GraSP's cheaper passes give bitwise the scores of the plain ones; the
``bn_mode`` / ``synflow_precision`` options.)

* ``keep_top`` selects with one threshold over the eligible scores and elementwise passes (no index
  list of all eligible positions); its masks must equal a stable descending sort cut at the count,
  ties included, for global and layer-wise groups and partly pruned masks;
* iterative SynFlow builds its float64 |theta| copy once (``SynflowScorer``) instead of every round;
  its scores must be bitwise those of ``compute_scores("synflow")`` and the masks of ``prune`` those
  of the round-by-round loop.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.prune import prune, round_targets
from ticketlab.pruning.schedules import Iterative
from ticketlab.pruning.scores import ScoreError, ScoreSource, SynflowScorer, compute_scores, grasp, snip
from ticketlab.pruning.selection import _threshold, keep_top


def sorted_keep_top(scores, mask, groups):
    """The reference: stable descending sort of the eligible scores, cut at the count."""
    new = dict(mask.items())
    for names, count in groups.items():
        flat = torch.cat([scores[n].reshape(-1).double() for n in names])
        elig = torch.cat([mask[n].reshape(-1) for n in names])
        pos = elig.nonzero().reshape(-1)
        order = torch.sort(-flat[pos], stable=True).indices[:count]
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[pos[order]] = True
        off = 0
        for n in names:
            k = mask[n].numel()
            new[n] = keep[off:off + k].reshape(mask[n].shape)
            off += k
    return Mask(new)


def test_keep_top_equals_stable_sort_with_ties_and_partial_masks() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (7, 5), "b": (40,), "c": (3, 3, 4)}
    for trial in range(30):
        # few distinct values: many ties, also at the threshold
        scores = {n: torch.randint(0, 4, s, generator=g).double() for n, s in shapes.items()}
        mask = Mask({n: torch.rand(s, generator=g) < (0.3 + 0.7 * (trial % 2)) for n, s in shapes.items()})
        total = mask.num_kept
        for count in (0, 1, total // 3, total // 2, total - 1, total):
            groups = {tuple(shapes): count}
            assert keep_top(scores, mask, groups) == sorted_keep_top(scores, mask, groups)
        layer = {(n,): int(mask[n].sum()) // 2 for n in shapes}
        assert keep_top(scores, mask, layer) == sorted_keep_top(scores, mask, layer)


def no_data() -> ScoreSource:
    return ScoreSource(batches=lambda: [], input_shape=(3, 32, 32), generator=torch.Generator().manual_seed(0))


def small_vgg() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vgg11", (3, 32, 32), 10, width=0.125)


def test_synflow_scorer_is_bitwise_compute_scores() -> None:
    model = small_vgg()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dense = Mask.dense(model)
    scorer = SynflowScorer(model, no_data())
    g = torch.Generator().manual_seed(1)
    for density in (1.0, 0.5, 0.05):
        mask = dense if density == 1.0 else Mask({n: torch.rand(m.shape, generator=g) < density for n, m in dense.items()})
        fast = scorer(mask)
        slow = compute_scores("synflow", model, mask, no_data())
        for n in mask:
            assert torch.equal(fast[n], slow[n]), n
    for n, p in model.named_parameters():  # the caller's model is untouched
        assert torch.equal(p, before[n])


def test_iterative_synflow_masks_equal_round_by_round_loop() -> None:
    model = small_vgg()
    dense = Mask.dense(model)
    density, rounds = 0.01, 12
    fast = prune("synflow", model, dense, no_data(), density, rounds=rounds, on_collapse="ignore")
    mask, plan = dense, Iterative(density, rounds)
    for k in range(1, rounds + 1):
        mask = sorted_keep_top(compute_scores("synflow", model, mask, no_data()), mask,
                               round_targets(mask, plan, "global", k))
    assert fast == mask
    assert fast.num_kept == round(density * dense.num_total)


# --- selection through a sample (>= 2^18 eligible scores) -------------------------------------------
def test_keep_top_through_the_sample_equals_stable_sort() -> None:
    g = torch.Generator().manual_seed(3)
    shapes = {"a": (300, 700), "b": (90_000,), "c": (64, 3, 3, 3)}
    for trial in range(4):
        # integer-valued float32 scores: ties everywhere, also at the threshold
        scores = {n: torch.randint(0, 50 + 1000 * trial, s, generator=g).float() for n, s in shapes.items()}
        mask = Mask({n: torch.rand(s, generator=g) < (1.0 if trial % 2 else 0.8) for n, s in shapes.items()})
        total = mask.num_kept
        for count in (1, 17, total // 100, total // 2, total - total // 15, total - 3):
            groups = {tuple(shapes): count}
            assert keep_top(scores, mask, groups) == sorted_keep_top(scores, mask, groups), (trial, count)


def test_threshold_when_the_sample_misleads() -> None:
    """Every 64th value (the sample) is huge: the bound misses and the full selection answers."""
    import numpy as np

    rng = np.random.default_rng(0)
    values = rng.random(1 << 19).astype(np.float32)
    values[::64] = 1e6
    for count in (5, 1000, values.size // 2, values.size - 1000, values.size - 5):
        parts = [values[:100_000].copy(), values[100_000:].copy()]
        assert _threshold(parts, count) == np.sort(values)[values.size - count]


# --- float32 SynFlow: the float64 ranking, overflow handled -------------------------------------
def _kaiming(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight)
    return model


def deep_mlp(depth: int = 45, width: int = 64) -> nn.Module:
    """|theta|-network output ~ 9^45 = 1e43: past float32's 3.4e38."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(16, width), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return _kaiming(nn.Sequential(*layers, nn.Linear(width, 10)))


def deep_conv(depth: int = 40, ch: int = 8) -> nn.Module:
    """A VGG-like chain of conv + BatchNorm + ReLU deep enough to overflow float32."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU()]
    return _kaiming(nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 10)))


class DeepResidual(nn.Module):
    """Residual blocks (the rescaling cannot be verified across the adds) that overflow float32."""

    def __init__(self, blocks: int = 40, width: int = 32):
        super().__init__()
        self.inp = nn.Linear(16, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.out = nn.Linear(width, 10)
        _kaiming(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(x.flatten(1)))
        for b in self.blocks:
            h = h + F.relu(b(h))
        return self.out(h)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", (1, 8, 8), 10)


SYNFLOW_CASES = {  # name: (model, input shape, plain float32 overflows)
    "mlp": (mlp, (1, 8, 8), False),
    "small_vgg": (small_vgg, (3, 32, 32), False),
    "deep_mlp": (deep_mlp, (1, 4, 4), True),
    "deep_conv_bn": (deep_conv, (3, 8, 8), True),
}


def shape_source(shape) -> ScoreSource:
    return ScoreSource(batches=lambda: [], input_shape=shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("case", sorted(SYNFLOW_CASES))
def test_float32_synflow_masks_equal_float64(case: str) -> None:
    make, shape, overflows = SYNFLOW_CASES[case]
    model = make()
    dense = Mask.dense(model)
    plain = SynflowScorer(model, shape_source(shape), precision="float32").net(dense)[0]
    assert math.isinf(plain) == overflows  # without rescaling, float32 overflows exactly where said
    masks, float32_rounds = {}, 0
    for precision in ("float64", "float32"):
        scorer = SynflowScorer(model, shape_source(shape), precision=precision)
        mask, plan = dense, Iterative(0.01, 40)
        for k in range(1, 41):
            scores = scorer(mask)
            if precision == "float32":
                float32_rounds += all(s.dtype == torch.float32 for s in scores.values())
                assert (scorer.last_exponent != 0) == overflows or scorer.last_exponent != 0
            mask = keep_top(scores, mask, round_targets(mask, plan, "global", k))
        masks[precision] = mask
    assert masks["float32"] == masks["float64"]
    assert float32_rounds == 40  # every round in float32: rescaled, not a float64 fallback
    # prune() gives the same masks with either precision
    p32 = prune("synflow", model, dense, shape_source(shape), 0.01, rounds=40, synflow_precision="float32",
                on_collapse="ignore")
    assert p32 == masks["float64"]


def test_float32_synflow_true_scores_after_rescaling() -> None:
    """compute_scores undoes the 2^e factor exactly: float32 scores ~ float64 scores, no inf."""
    model = deep_mlp()
    dense = Mask.dense(model)
    s64 = compute_scores("synflow", model, dense, shape_source((1, 4, 4)))
    s32 = compute_scores("synflow", model, dense, shape_source((1, 4, 4)), precision="float32")
    for n in dense:
        assert torch.isfinite(s32[n]).all()
        torch.testing.assert_close(s32[n], s64[n], rtol=1e-3, atol=0.0)


def test_float32_synflow_falls_back_to_float64_where_it_cannot_rescale() -> None:
    """Residual adds: the layer scales do not verify, so each round is float64: float64's masks."""
    model = DeepResidual()
    dense = Mask.dense(model)
    scorer = SynflowScorer(model, shape_source((1, 4, 4)), precision="float32")
    assert scorer.net(dense)[0] > 2.0 ** 100  # too close to float32's limit to score in it
    scores = scorer(dense)
    assert all(s.dtype == torch.float64 for s in scores.values()) and scorer.last_exponent == 0
    want = compute_scores("synflow", model, dense, shape_source((1, 4, 4)))
    assert all(torch.equal(scores[n], want[n]) for n in dense)
    masks = [prune("synflow", model, dense, shape_source((1, 4, 4)), 0.05, rounds=5, synflow_precision=p,
                   on_collapse="ignore") for p in ("float64", "float32")]
    assert masks[0] == masks[1]


def test_float64_synflow_is_the_default_and_unchanged() -> None:
    model = small_vgg()
    dense = Mask.dense(model)
    default = prune("synflow", model, dense, no_data(), 0.05, rounds=3, on_collapse="ignore")
    explicit = prune("synflow", model, dense, no_data(), 0.05, rounds=3, synflow_precision="float64",
                     on_collapse="ignore")
    assert default == explicit


# --- SNIP and GraSP: the cheaper passes give bitwise the plain scores ----------------------------
def plain_snip(model, mask, source, train: bool):
    """SNIP as before issue 22: zero accumulators, out-of-place products."""
    net = copy_masked(model, mask).train(train)
    weights = {n: dict(net.named_parameters())[n] for n in mask}
    grads = {n: torch.zeros_like(w) for n, w in weights.items()}
    for x, y in source.batches():
        for n, g in zip(weights, torch.autograd.grad(source.loss(net(x), y), list(weights.values()))):
            grads[n] += g
    return {n: (grads[n] * weights[n].detach()).abs() for n in weights}


def plain_grasp(model, mask, source, train: bool, temperature: float = 200.0):
    """GraSP as before issue 22: one pass for g, a second for Hg."""
    net = copy_masked(model, mask).train(train)
    params = [dict(net.named_parameters())[n] for n in mask]
    batches = list(source.batches())
    g_fixed = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        for acc, g in zip(g_fixed, torch.autograd.grad(source.loss(net(x) / temperature, y), params)):
            acc += g
    hg = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        g = torch.autograd.grad(source.loss(net(x) / temperature, y), params, create_graph=True)
        z = sum((gi * gf).sum() for gi, gf in zip(g, g_fixed))
        for acc, h in zip(hg, torch.autograd.grad(z, params)):
            acc += h
    return {n: p.detach() * h for n, p, h in zip(mask, params, hg)}


def copy_masked(model, mask):
    import copy

    net = copy.deepcopy(model)
    mask.apply_(net)
    return net


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", (3, 16, 16), 10, width=4)


def with_dropout() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(32, 10))


def data_source(batches: int) -> ScoreSource:
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(batches)]
    return ScoreSource(batches=lambda: iter(data), input_shape=(3, 16, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("make", [small_resnet, with_dropout])
@pytest.mark.parametrize("batches", [1, 3])
@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_snip_and_grasp_bitwise_as_before(make, batches: int, bn_mode: str) -> None:
    model = make()
    g = torch.Generator().manual_seed(1)
    mask = Mask({n: torch.rand(m.shape, generator=g) < 0.7 for n, m in Mask.dense(model).items()})
    train = bn_mode == "train"
    for fast, plain in ((snip, plain_snip), (grasp, plain_grasp)):
        torch.manual_seed(11)  # dropout draws: the same sequence for both
        got = fast(model, mask, data_source(batches), bn_mode=bn_mode)
        torch.manual_seed(11)
        want = plain(model, mask, data_source(batches), train)
        for n in mask:
            assert torch.equal(got[n], want[n]), (fast.__name__, n)


def test_bn_mode_eval_scores_with_running_statistics() -> None:
    model = small_resnet()
    dense = Mask.dense(model)
    ev = compute_scores("snip", model, dense, data_source(1), bn_mode="eval")
    want = plain_snip(model.eval(), dense, data_source(1), train=False)
    model.train()
    assert all(torch.equal(ev[n].float(), want[n]) for n in dense)
    tr = compute_scores("snip", model, dense, data_source(1))
    assert not all(torch.equal(ev[n], tr[n]) for n in dense)
    assert model.training  # the caller's mode is left alone


def test_method_options_refused_with_other_methods() -> None:
    model = small_vgg()
    dense = Mask.dense(model)
    with pytest.raises(ScoreError, match="SynFlow"):
        prune("snip", model, dense, no_data(), 0.5, synflow_precision="float32")
    with pytest.raises(ScoreError, match="SNIP and GraSP"):
        prune("synflow", model, dense, no_data(), 0.5, bn_mode="eval")
    with pytest.raises(ScoreError, match="bn_mode"):
        prune("snip", model, dense, no_data(), 0.5, bn_mode="test")


def test_config_fields_leave_stored_hashes_alone() -> None:
    from ticketlab.config import ConfigError, PruneAtInitConfig, config_hash, to_dict

    base = PruneAtInitConfig(method="synflow", density=0.01)
    assert config_hash(PruneAtInitConfig(method="synflow", density=0.01, synflow_precision="float64")) == config_hash(base)
    assert "synflow_precision" not in to_dict(base) and "bn_mode" not in to_dict(base)
    fast = PruneAtInitConfig(method="synflow", density=0.01, synflow_precision="float32")
    assert config_hash(fast) != config_hash(base)  # another mask: another run
    snip_cfg = PruneAtInitConfig(method="snip", density=0.01)
    assert config_hash(PruneAtInitConfig(method="snip", density=0.01, bn_mode="eval")) != config_hash(snip_cfg)
    with pytest.raises(ConfigError, match="synflow"):
        PruneAtInitConfig(method="snip", density=0.01, synflow_precision="float32")
    with pytest.raises(ConfigError, match="snip and grasp"):
        PruneAtInitConfig(method="magnitude", density=0.01, bn_mode="eval")
