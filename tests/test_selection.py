"""Tests for ticketlab.pruning.selection (keep_top, random_mask_like) and pruning.magnitude (IMP)."""

from __future__ import annotations

import pytest
import torch

from ticketlab.masks import Mask, MaskError
from ticketlab.models import build_model
from ticketlab.prunable import output_parameter_name, prunable_parameters
from ticketlab.pruning.magnitude import imp_groups, imp_prune, magnitude_scores
from ticketlab.pruning.selection import SelectionError, keep_top, layer_groups, random_mask_like

SHAPES = {"a": (6, 5), "b": (7,), "c": (3, 2, 2)}


def random_scores(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}


def partial_mask(seed: int, p: float = 0.7) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(s, generator=g) < p for n, s in SHAPES.items()})


def assert_is_top(scores, before: Mask, after: Mask, names) -> None:
    """Every kept weight scores at least as high as every eligible weight that was dropped."""
    kept = torch.cat([scores[n][after[n]] for n in names])
    dropped = torch.cat([scores[n][before[n] & ~after[n]] for n in names])
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()


# --- keep_top ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keep_top_global_exact_count(seed):
    scores, mask = random_scores(seed), partial_mask(seed + 10)
    names = tuple(SHAPES)
    for count in (0, 1, 17, mask.num_kept):
        out = keep_top(scores, mask, {names: count})
        assert out.num_kept == count
        assert (out & ~mask).num_kept == 0  # subset of the old mask
        assert_is_top(scores, mask, out, names)
        assert list(out) == list(mask)
        assert all(out[n].shape == mask[n].shape for n in out)


@pytest.mark.parametrize("seed", [0, 1])
def test_keep_top_layerwise_exact_counts(seed):
    scores, mask = random_scores(seed), partial_mask(seed + 20)
    counts = {n: k // 2 for n, k in mask.kept_per_layer().items()}
    groups = layer_groups(list(SHAPES), counts)
    assert groups == {("a",): counts["a"], ("b",): counts["b"], ("c",): counts["c"]}
    out = keep_top(scores, mask, groups)
    assert out.kept_per_layer() == counts
    for n in SHAPES:
        assert_is_top(scores, mask, out, [n])
        assert not (out[n] & ~mask[n]).any()


def test_keep_top_hand_computed_global_versus_layerwise():
    scores = {"x": torch.tensor([10.0, 9.0, 8.0, 7.0]), "y": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    mask = Mask.ones(scores)
    glob = keep_top(scores, mask, {("x", "y"): 4})
    assert glob["x"].tolist() == [True, True, True, True]
    assert glob["y"].tolist() == [False, False, False, False]
    lw = keep_top(scores, mask, {("x",): 2, ("y",): 2})
    assert lw["x"].tolist() == [True, True, False, False]
    assert lw["y"].tolist() == [False, False, True, True]


def test_layers_in_no_group_keep_their_mask():
    scores, mask = random_scores(3), partial_mask(4)
    out = keep_top(scores, mask, {("a",): 3})
    assert out["a"].sum() == 3
    assert torch.equal(out["b"], mask["b"]) and torch.equal(out["c"], mask["c"])


def test_ties_keep_earliest_positions():
    scores = {"a": torch.ones(2, 2), "b": torch.ones(3)}
    mask = Mask.ones(scores)
    out = keep_top(scores, mask, {("a", "b"): 3})
    assert out["a"].tolist() == [[True, True], [True, False]]
    assert out["b"].tolist() == [False, False, False]
    out = keep_top(scores, mask, {("a", "b"): 5})
    assert out["a"].all() and out["b"].tolist() == [True, False, False]
    # the same scores always give the same mask
    assert keep_top(scores, mask, {("a", "b"): 3}) == keep_top(scores, mask, {("a", "b"): 3})


def test_ties_skip_pruned_positions():
    scores = {"w": torch.zeros(6)}
    mask = Mask({"w": torch.tensor([False, True, False, True, True, True])})
    assert keep_top(scores, mask, {("w",): 2})["w"].tolist() == [False, True, False, True, False, False]


def test_ties_among_partial_equal_scores():
    scores = {"w": torch.tensor([1.0, 5.0, 2.0, 5.0, 5.0, 0.0])}
    mask = Mask.ones(scores)
    assert keep_top(scores, mask, {("w",): 2})["w"].tolist() == [False, True, False, True, False, False]


@pytest.mark.parametrize("high", [1e9, float("inf")])
def test_pruned_weights_are_never_revived(high):
    scores = {"w": torch.tensor([high, high, 1.0, 2.0, 3.0])}
    mask = Mask({"w": torch.tensor([False, False, True, True, True])})
    out = keep_top(scores, mask, {("w",): 2})
    assert out["w"].tolist() == [False, False, False, True, True]
    out = keep_top(scores, mask, {("w",): 3})
    assert out == mask


def test_pruned_weights_are_not_revived_by_minus_infinite_scores():
    # eligible weights scoring -inf tie with no pruned weight: pruned stays pruned
    scores = {"w": torch.full((5,), float("-inf"))}
    mask = Mask({"w": torch.tensor([False, False, True, True, False])})
    assert keep_top(scores, mask, {("w",): 2}) == mask
    assert keep_top(scores, mask, {("w",): 1})["w"].tolist() == [False, False, True, False, False]


def test_asking_for_more_than_available():
    scores, mask = random_scores(0), partial_mask(1)
    available = mask.num_kept
    with pytest.raises(SelectionError, match=rf"cannot keep {available + 1} weights.*only {available}"):
        keep_top(scores, mask, {tuple(SHAPES): available + 1})
    with pytest.raises(SelectionError):
        keep_top(scores, mask, {("b",): int(mask["b"].sum()) + 1})
    with pytest.raises(SelectionError):
        keep_top(scores, mask, {("a",): -1})


def test_nan_scores_rejected():
    scores = {"w": torch.tensor([1.0, float("nan"), 2.0])}
    with pytest.raises(SelectionError, match="NaN"):
        keep_top(scores, Mask.ones(scores), {("w",): 1})


def test_nan_scores_on_pruned_weights_are_ignored():
    scores = {"w": torch.tensor([1.0, float("nan"), 2.0, 0.5])}
    mask = Mask({"w": torch.tensor([True, False, True, True])})
    assert keep_top(scores, mask, {("w",): 2})["w"].tolist() == [True, False, True, False]


def test_bad_groups_rejected():
    scores, mask = random_scores(0), Mask.ones({n: torch.zeros(s) for n, s in SHAPES.items()})
    with pytest.raises(SelectionError, match="'zzz'"):
        keep_top(scores, mask, {("zzz",): 1})
    with pytest.raises(SelectionError, match="more than one group"):
        keep_top(scores, mask, {("a", "b"): 1, ("b",): 1})
    with pytest.raises(SelectionError, match="no score given for 'c'"):
        keep_top({"a": scores["a"]}, mask, {("a", "c"): 1})
    with pytest.raises(MaskError, match="'a'"):
        keep_top({**scores, "a": torch.zeros(5, 6)}, mask, {("a",): 1})


def test_keep_top_does_not_modify_inputs():
    scores, mask = random_scores(5), partial_mask(6)
    scores_copy = {n: s.clone() for n, s in scores.items()}
    mask_copy = Mask(mask)
    keep_top(scores, mask, {tuple(SHAPES): 5})
    assert mask == mask_copy
    assert all(torch.equal(scores[n], scores_copy[n]) for n in scores)


# --- random_mask_like -------------------------------------------------------------------------------
def test_random_mask_like_keeps_per_layer_counts():
    big = {"a": (40, 30), "b": (100,), "c": (8, 4, 3, 3)}
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(s, generator=g) < p for (n, s), p in zip(big.items(), (0.1, 0.5, 0.9))})
    r1 = random_mask_like(mask, torch.Generator().manual_seed(42))
    assert r1.kept_per_layer() == mask.kept_per_layer()
    assert list(r1) == list(mask) and all(r1[n].shape == mask[n].shape for n in mask)
    assert r1 != mask
    r2 = random_mask_like(mask, torch.Generator().manual_seed(42))
    assert r1 == r2
    r3 = random_mask_like(mask, torch.Generator().manual_seed(43))
    assert r3 != r1
    assert r3.kept_per_layer() == mask.kept_per_layer()


def test_random_mask_like_extremes():
    mask = Mask({"full": torch.ones(5, dtype=torch.bool), "empty": torch.zeros(3, dtype=torch.bool)})
    assert random_mask_like(mask, torch.Generator().manual_seed(0)) == mask


# --- magnitude / IMP --------------------------------------------------------------------------------
def test_magnitude_hand_computed():
    weights = {"w": torch.tensor([[3.0, -1.0], [0.5, -4.0]])}
    mask = Mask.ones(weights)
    assert torch.equal(magnitude_scores(weights, mask)["w"], torch.tensor([[3.0, 1.0], [0.5, 4.0]]))
    out = imp_prune(weights, mask, level=1, rate=0.5, scope="global")
    assert out["w"].tolist() == [[True, False], [False, True]]


def test_imp_groups_hand_computed():
    mask = Mask({"x": torch.ones(10, 10), "y": torch.ones(50), "out": torch.ones(10)})
    assert imp_groups(mask, scope="global", rate=0.2, level=1) == {("x", "y", "out"): 128}
    assert imp_groups(mask, scope="layerwise", rate=0.2, level=2) == {("x",): 64, ("y",): 32, ("out",): 6}
    assert imp_groups(mask, scope="global", rate=0.2, level=1, output_name="out", output_rate=0.1) == {
        ("x", "y"): 120, ("out",): 9,
    }
    assert imp_groups(mask, scope="layerwise", rate=0.2, level=1, output_name="out", output_rate=0.5) == {
        ("x",): 80, ("y",): 40, ("out",): 5,
    }
    # level 0 keeps everything
    assert imp_groups(mask, scope="global", rate=0.2, level=0) == {("x", "y", "out"): 160}


def test_imp_groups_rejects_unknown_scope():
    mask = Mask({"x": torch.ones(4)})
    with pytest.raises(ValueError, match="scope"):
        imp_groups(mask, scope="Global", rate=0.2, level=1)


def test_imp_targets_do_not_drift():
    # targets come from the original size, not the previous level: chained rounding would give 14 at level 9
    g = torch.Generator().manual_seed(0)
    mask = Mask({"w": torch.ones(100, dtype=torch.bool)})
    counts = []
    for level in range(1, 11):
        mask = imp_prune({"w": torch.randn(100, generator=g)}, mask, level=level, rate=0.2)
        counts.append(mask.num_kept)
    assert counts == [80, 64, 51, 41, 33, 26, 21, 17, 13, 11]


LENET = {"hidden.0.weight": 235_200, "hidden.2.weight": 30_000, "fc.weight": 1_000}


def run_imp(levels: int, **options) -> list[Mask]:
    """IMP on lenet_300_100 with fresh random weights each level (standing in for training)."""
    torch.manual_seed(0)
    model = build_model("lenet_300_100", (1, 28, 28), 10)
    params = prunable_parameters(model)
    assert {n: p.numel() for n, p in params.items()} == LENET
    mask = Mask.ones(params)
    g = torch.Generator().manual_seed(1)
    masks = [mask]
    for level in range(1, levels + 1):
        weights = {n: torch.randn(p.shape, generator=g) * mask[n] for n, p in params.items()}
        mask = imp_prune(weights, mask, level=level, rate=0.2, output_name=output_parameter_name(model), **options)
        masks.append(mask)
    return masks


def test_imp_global_lenet():
    masks = run_imp(3)
    # hand-computed: round(266200 * 0.8**L)
    assert [m.num_kept for m in masks] == [266_200, 212_960, 170_368, 136_294]
    for prev, cur in zip(masks, masks[1:]):
        assert (cur & ~prev).num_kept == 0  # nothing revived
    for level, m in enumerate(masks):
        assert abs(m.density - 0.8**level) <= 1 / 266_200


def test_imp_global_prunes_by_magnitude():
    torch.manual_seed(0)
    model = build_model("lenet_300_100", (1, 28, 28), 10)
    params = prunable_parameters(model)
    weights = {n: p.detach() for n, p in params.items()}
    mask = imp_prune(weights, Mask.ones(params), level=1, rate=0.2)
    kept = torch.cat([weights[n][mask[n]].abs() for n in mask])
    pruned = torch.cat([weights[n][~mask[n]].abs() for n in mask])
    assert kept.min() >= pruned.max()
    # global scope spreads unevenly: default init gives the layers different scales
    assert len(set(round(d, 3) for d in mask.densities().values())) > 1


def test_imp_layerwise_lenet():
    masks = run_imp(3, scope="layerwise")
    for level, m in enumerate(masks):
        expected = {n: round(size * 0.8**level) for n, size in LENET.items()}
        assert m.kept_per_layer() == expected
        for n, size in LENET.items():
            assert abs(m.densities()[n] - 0.8**level) <= 1 / size
    assert masks[3].kept_per_layer() == {"hidden.0.weight": 120_422, "hidden.2.weight": 15_360, "fc.weight": 512}


def test_imp_output_rate_lenet():
    masks = run_imp(5, output_rate=0.1)
    # hand-computed: 1000 * 0.9**L -> 900, 810, 729, 656.1, 590.49
    assert [m["fc.weight"].sum().item() for m in masks] == [1000, 900, 810, 729, 656, 590]
    for level, m in enumerate(masks):
        main = m.kept_per_layer()["hidden.0.weight"] + m.kept_per_layer()["hidden.2.weight"]
        assert main == round(265_200 * 0.8**level)
