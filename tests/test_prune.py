"""Tests for ticketlab.pruning.prune: exact counts for every method x distribution, the iterative
schedules, round_targets, invert, determinism and bad input."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ticketlab.masks import Mask
from ticketlab.pruning.distributions import DistributionError, layer_counts, shapes_of
from ticketlab.pruning.prune import prune, round_targets
from ticketlab.pruning.schedules import Iterative, ScheduleError
from ticketlab.pruning.scores import SCORES, ScoreSource, compute_scores

METHODS = sorted(SCORES)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))


def make_source(seed: int = 0) -> ScoreSource:
    g = torch.Generator().manual_seed(1000 + seed)
    batches = [(torch.randn(10, 8, generator=g), torch.randint(0, 3, (10,), generator=g)) for _ in range(2)]
    return ScoreSource(batches=lambda: batches, input_shape=(8,), generator=torch.Generator().manual_seed(seed))


N = 12 * 8 + 6 * 12 + 3 * 6  # 186 prunable weights


def is_subset(small: Mask, big: Mask) -> bool:
    return all(bool((small[n] & ~big[n]).sum() == 0) for n in small)


# --- exact counts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("distribution", ["global", "uniform", "erk"])
def test_prune_keeps_exact_count(method, distribution):
    model = mlp()
    mask = Mask.dense(model)
    assert mask.num_total == N
    density = 0.3
    out = prune(method, model, mask, make_source(), density, distribution=distribution)
    assert out.num_kept == round(density * N) == 56
    if distribution != "global":
        assert out.kept_per_layer() == layer_counts(distribution, shapes_of(mask), density)
    # The kept weights are the top scores (globally, or within each layer).
    scores = compute_scores(method, model, mask, make_source())
    groups = [list(mask)] if distribution == "global" else [[n] for n in mask]
    for names in groups:
        kept = torch.cat([scores[n][out[n]] for n in names])
        dropped = torch.cat([scores[n][~out[n]] for n in names])
        assert kept.min() >= dropped.max()


@pytest.mark.parametrize("method", METHODS)
def test_prune_never_revives_pruned_weights(method):
    model = mlp()
    g = torch.Generator().manual_seed(7)
    start = Mask({n: torch.rand(t.shape, generator=g) < 0.5 for n, t in Mask.dense(model).items()})
    density = 0.4  # the schedule's first rounds (e.g. 186 * 0.4^(1/3) = 137) ask for more than start keeps
    assert start.num_kept >= round(density * N)
    for rounds in (1, 3):
        out = prune(method, model, start, make_source(), density, rounds=rounds)
        assert is_subset(out, start)
        assert out.num_kept == round(density * N)
        out = prune(method, model, start, make_source(), density, distribution="uniform", rounds=rounds)
        assert is_subset(out, start)
        assert out.kept_per_layer() == layer_counts("uniform", shapes_of(start), density)


def test_prune_too_dense_for_partial_mask_is_an_error():
    model = mlp()
    start = prune("magnitude", model, Mask.dense(model), make_source(), 0.2)
    with pytest.raises(DistributionError, match="keeps only"):
        prune("magnitude", model, start, make_source(), 0.5)


# --- iterative ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["magnitude", "synflow", "snip"])
@pytest.mark.parametrize("schedule", ["exponential", "linear"])
def test_iterative_schedule_counts_and_nesting(method, schedule):
    model = mlp()
    density, rounds = 0.05, 5
    seen: list[tuple[int, Mask]] = []
    out = prune(method, model, Mask.dense(model), make_source(), density, rounds=rounds, schedule=schedule,
                progress=lambda k, m: seen.append((k, m)))
    assert [k for k, _ in seen] == [1, 2, 3, 4, 5]
    previous = Mask.dense(model)
    for k, m in seen:
        target = density ** (k / rounds) if schedule == "exponential" else 1 - (1 - density) * k / rounds
        expected = round(N * density) if k == rounds else round(N * target)
        assert m.num_kept == expected, (k, m.num_kept, expected)
        assert is_subset(m, previous)
        previous = m
    assert out == seen[-1][1]
    assert out.num_kept == round(N * density) == 9
    if schedule == "exponential":  # 186 * 0.05^(k/5): 102.0, 56.0, 30.7, 16.9, 9.3
        assert [m.num_kept for _, m in seen] == [102, 56, 31, 17, 9]
    else:  # 186 (1 - 0.95 k / 5): 150.7, 115.3, 80.0, 44.6, 9.3
        assert [m.num_kept for _, m in seen] == [151, 115, 80, 45, 9]


def test_iterative_layerwise_follows_round_targets():
    model = mlp()
    mask = Mask.dense(model)
    seen = []
    out = prune("synflow", model, mask, make_source(), 0.1, distribution="erk", rounds=4,
                progress=lambda k, m: seen.append(m))
    previous = mask
    for k, m in enumerate(seen, start=1):
        targets = round_targets(mask, Iterative(0.1, 4, "exponential"), "erk", k)
        assert m.kept_per_layer() == {names[0]: c for names, c in targets.items()}
        assert is_subset(m, previous)
        previous = m
    assert out.kept_per_layer() == layer_counts("erk", shapes_of(mask), 0.1)


def test_linear_schedule_last_round_is_exact():
    # 1 - (1 - d) is not always d in floating point; the last round must land on round(d * N) anyway.
    for total in (10, 15, 20, 186, 1000):
        mask = Mask({"w": torch.ones(total, 1, dtype=torch.bool)})
        for i in range(1, 200):
            d = i / 200
            for rounds in (1, 3, 5):
                got = round_targets(mask, Iterative(d, rounds, "linear"), "global", rounds)
                assert got == {("w",): round(d * total)}, (total, d, rounds)
    # End to end: 15 weights at density 0.1 keep round(1.5) = 2.
    net = nn.Linear(5, 3, bias=False)
    src = ScoreSource(batches=lambda: [], input_shape=(5,), generator=torch.Generator().manual_seed(0))
    out = prune("magnitude", net, Mask.dense(net), src, 0.1, rounds=5, schedule="linear")
    assert out.num_kept == 2


def test_round_density():
    assert Iterative(0.01, 2, "exponential").density_at(1) == pytest.approx(0.1)
    assert Iterative(0.01, 2, "exponential").density_at(2) == 0.01
    assert Iterative(0.2, 4, "linear").density_at(1) == pytest.approx(0.8)
    with pytest.raises(ScheduleError, match="schedule"):
        Iterative(0.2, 4, "cosine")
    with pytest.raises(DistributionError, match="schedule"):
        prune("magnitude", nn.Linear(3, 2), Mask.dense(nn.Linear(3, 2)), None, 0.5, rounds=2, schedule="cosine")


LENET_MASK = Mask({"a": torch.ones(300, 784, dtype=torch.bool), "b": torch.ones(100, 300, dtype=torch.bool),
                   "c": torch.ones(10, 100, dtype=torch.bool)})


@pytest.mark.parametrize("distribution", ["uniform", "erk", "smart", "smart_vgg"])
@pytest.mark.parametrize("schedule", ["exponential", "linear"])
@pytest.mark.parametrize("density", [0.1, 0.003])
def test_round_targets_layerwise_monotone_and_exact(distribution, schedule, density):
    rounds = 7
    sizes = {n: t.numel() for n, t in LENET_MASK.items()}
    final = layer_counts(distribution, shapes_of(LENET_MASK), density)
    plan = Iterative(density, rounds, schedule)
    history = [round_targets(LENET_MASK, plan, distribution, k) for k in range(1, rounds + 1)]
    assert history[-1] == {(n,): final[n] for n in LENET_MASK}
    previous = {(n,): sizes[n] for n in LENET_MASK}
    for targets in history:
        assert set(targets) == {(n,) for n in LENET_MASK}
        for key, count in targets.items():
            assert final[key[0]] <= count <= previous[key] <= sizes[key[0]]
        previous = targets
    # The schedule actually moves: the first round keeps more than the last.
    assert sum(history[0].values()) > sum(history[-1].values())


def test_round_targets_global():
    for k in range(1, 6):
        got = round_targets(LENET_MASK, Iterative(0.02, 5), "global", k)
        assert got == {tuple(LENET_MASK): round(LENET_MASK.num_total * 0.02 ** (k / 5))}


# --- invert ---------------------------------------------------------------------------------------
def test_invert_magnitude_keeps_smallest():
    net = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5, -0.1, 2.0], [-3.0, 0.2, 1.0]]))
    src = ScoreSource(batches=lambda: [], input_shape=(3,), generator=torch.Generator().manual_seed(0))
    # |w| sorted: 0.1 (0,1), 0.2 (1,1), 0.5 (0,0) | 1.0 (1,2), 2.0 (0,2), 3.0 (1,0); keep 3 of 6.
    low = prune("magnitude", net, Mask.dense(net), src, 0.5, invert=True)
    assert torch.equal(low["weight"], torch.tensor([[True, True, False], [False, True, False]]))
    high = prune("magnitude", net, Mask.dense(net), src, 0.5)
    assert torch.equal(high["weight"], torch.tensor([[False, False, True], [True, False, True]]))
    # density 1/3 -> 2 weights: 0.1 and 0.2
    low2 = prune("magnitude", net, Mask.dense(net), src, 2 / 6, invert=True)
    assert torch.equal(low2["weight"], torch.tensor([[False, True, False], [False, True, False]]))


def test_invert_on_partial_mask_keeps_smallest_unpruned():
    net = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5, -0.1, 2.0], [-3.0, 0.2, 1.0]]))
    src = ScoreSource(batches=lambda: [], input_shape=(3,), generator=torch.Generator().manual_seed(0))
    # 0.1 is already pruned (its score is 0, i.e. the smallest) but must not come back.
    start = Mask({"weight": torch.tensor([[True, False, True], [True, True, True]])})
    out = prune("magnitude", net, start, src, 0.5, invert=True)
    assert torch.equal(out["weight"], torch.tensor([[True, False, False], [False, True, True]]))


# --- determinism and bad input --------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_deterministic(method):
    rounds = 10 if method == "synflow" else 2
    masks = [prune(method, mlp(), Mask.dense(mlp()), make_source(), 0.02, rounds=rounds) for _ in range(2)]
    assert masks[0] == masks[1]
    assert masks[0].num_kept == round(0.02 * N)


def test_random_method_depends_on_seed():
    a = prune("random", mlp(), Mask.dense(mlp()), make_source(0), 0.3)
    b = prune("random", mlp(), Mask.dense(mlp()), make_source(1), 0.3)
    assert a.num_kept == b.num_kept and a != b


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("distribution", ["global", "uniform", "erk", "smart"])
def test_density_one_keeps_everything(method, distribution):
    model = mlp()
    out = prune(method, model, Mask.dense(model), make_source(), 1.0, distribution=distribution, rounds=2)
    assert out == Mask.dense(model)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_bad_density(density):
    model = mlp()
    with pytest.raises(DistributionError):
        prune("magnitude", model, Mask.dense(model), make_source(), density)


def test_bad_distribution_rounds_schedule():
    model = mlp()
    with pytest.raises(DistributionError, match="unknown distribution"):
        prune("magnitude", model, Mask.dense(model), make_source(), 0.5, distribution="ERK-ish")
    with pytest.raises(DistributionError, match="rounds"):
        prune("magnitude", model, Mask.dense(model), make_source(), 0.5, rounds=0)
    with pytest.raises(DistributionError, match="schedule"):
        prune("magnitude", model, Mask.dense(model), make_source(), 0.5, rounds=2, schedule="cosine")


def test_prune_does_not_modify_model():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in METHODS:
        prune(method, model, Mask.dense(model), make_source(), 0.1, rounds=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert math.isclose(Mask.from_nonzero(dict(model.named_parameters())).density, 1.0)


def test_layer_wise_counts_never_exceed_what_a_pruned_mask_still_keeps():
    """Uniform at 0.6 keeps a=0, b=2 of a (1,) and a (3,) layer; at 0.5 it would ask a=1, b=1.
    Pruning the 0.6 mask further to 0.5 keeps the total exact (2) without reviving a."""
    shapes = {"a": (1,), "b": (3,)}
    assert layer_counts("uniform", shapes, 0.6) == {"a": 0, "b": 2}
    assert layer_counts("uniform", shapes, 0.5) == {"a": 1, "b": 1}
    pruned = Mask({"a": torch.tensor([False]), "b": torch.tensor([True, True, False])})
    assert round_targets(pruned, Iterative(0.5, 1), "uniform", 1) == {("a",): 0, ("b",): 2}
    dense = Mask({"a": torch.tensor([True]), "b": torch.tensor([True, True, True])})
    assert round_targets(dense, Iterative(0.5, 1), "uniform", 1) == {("a",): 1, ("b",): 1}  # unchanged when it fits
