"""Tests for ticketlab.pruning.distributions: ERK and smart ratios by hand, exact counts on
LeNet-300-100 and VGG-16 shapes, caps at 1, bad input."""
from __future__ import annotations

import math

import pytest

from ticketlab.pruning.distributions import (
    DISTRIBUTIONS,
    DistributionError,
    counts_from_densities,
    erk_raw,
    layer_counts,
    layer_densities,
)

LENET = {"hidden.0.weight": (300, 784), "hidden.2.weight": (100, 300), "fc.weight": (10, 100)}


def vgg16_shapes() -> dict[str, tuple[int, ...]]:
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    shapes, c = {}, 3
    for i, spec in enumerate(plan):
        if spec != "M":
            shapes[f"conv{i}.weight"] = (spec, c, 3, 3)
            c = spec
    shapes["fc.weight"] = (10, 512)
    return shapes


VGG16 = vgg16_shapes()


def size(shape) -> int:
    return math.prod(shape)


def test_vgg16_shapes_are_the_published_net():
    assert len(VGG16) == 14
    # 14,728,266 parameters in all, less the BN affine (2 x 4224), conv biases (4224) and fc bias (10).
    assert sum(size(s) for s in VGG16.values()) == 14_728_266 - 3 * 4224 - 10


# --- ERK by hand ----------------------------------------------------------------------------------
def test_erk_raw_dense_and_conv():
    assert erk_raw((10, 20)) == pytest.approx(30 / 200)              # (n_in + n_out) / (n_in n_out)
    assert erk_raw((5, 10)) == pytest.approx(15 / 50)
    assert erk_raw((4, 2, 3, 3)) == pytest.approx((4 + 2 + 3 + 3) / (4 * 2 * 3 * 3))  # 12 / 72
    with pytest.raises(DistributionError):
        erk_raw((7,))


def test_erk_two_dense_layers_by_hand():
    # raw = 30/200 = 0.15 and 15/50 = 0.3; sizes 200 and 50; density 0.4 -> budget 0.4 * 250 = 100
    # eps (0.15 * 200 + 0.3 * 50) = 45 eps = 100 -> eps = 20/9 -> densities 1/3 and 2/3
    shapes = {"a": (10, 20), "b": (5, 10)}
    d = layer_densities("erk", shapes, 0.4)
    assert d["a"] == pytest.approx(1 / 3, rel=1e-12)
    assert d["b"] == pytest.approx(2 / 3, rel=1e-12)
    assert d["a"] * 200 + d["b"] * 50 == pytest.approx(100, rel=1e-12)
    # Counts: 66.67 and 33.33 -> floors 66 + 33 = 99, one more to the larger remainder (a: 0.667).
    assert layer_counts("erk", shapes, 0.4) == {"a": 67, "b": 33}


def test_erk_caps_a_layer_at_one_and_rescales_the_rest():
    # density 0.8 -> budget 200 -> eps = 200/45 -> b would be 0.3 * 200/45 = 1.33 > 1
    # b is made dense (50 weights); the remaining 150 go to a: 150 / 200 = 0.75
    shapes = {"a": (10, 20), "b": (5, 10)}
    d = layer_densities("erk", shapes, 0.8)
    assert d["b"] == 1.0
    assert d["a"] == pytest.approx(0.75, rel=1e-12)
    assert layer_counts("erk", shapes, 0.8) == {"a": 150, "b": 50}


def test_erk_cap_cascades():
    # Three layers: raw (1+2)/2 = 1.5 (size 2), 30/200 = 0.15 (size 200), 110/1000 = 0.11 (size 1000).
    shapes = {"tiny": (1, 2), "a": (10, 20), "big": (10, 100)}
    d = layer_densities("erk", shapes, 0.5)
    # Without caps: eps (1.5*2 + 0.15*200 + 0.11*1000) = 143 eps = 601 -> eps = 4.2 -> tiny = 6.3 > 1.
    # tiny dense: eps (30 + 110) = 599 -> eps = 4.2786 -> a = 0.6418, big = 0.4706 (no further cap).
    assert d["tiny"] == 1.0
    eps = (0.5 * 1202 - 2) / 140
    assert d["a"] == pytest.approx(0.15 * eps, rel=1e-12)
    assert d["big"] == pytest.approx(0.11 * eps, rel=1e-12)
    assert sum(d[n] * size(s) for n, s in shapes.items()) == pytest.approx(601, rel=1e-12)


def test_erk_conv_and_dense_mix():
    # conv (4, 2, 3, 3): raw 12/72 = 1/6, size 72; dense (10, 36): raw 46/360, size 360; density 0.25 -> 108
    shapes = {"conv": (4, 2, 3, 3), "fc": (10, 36)}
    d = layer_densities("erk", shapes, 0.25)
    eps = 108 / (72 / 6 + 46)  # = 108 / 58
    assert d["conv"] == pytest.approx(eps / 6, rel=1e-12)
    assert d["fc"] == pytest.approx(eps * 46 / 360, rel=1e-12)
    assert d["conv"] / d["fc"] == pytest.approx((1 / 6) / (46 / 360), rel=1e-12)


# --- smart ratios by hand -------------------------------------------------------------------------
THREE = {"l1": (1000, 1000), "l2": (1000, 1000), "l3": (1000, 1000)}


def test_smart_three_layers_by_hand():
    # L = 3: raw_1 = (3-1+1)^2 + 3 = 12, raw_2 = (3-2+1)^2 + 2 = 6, last = 0.3.
    # density 0.2 -> budget 600k; last keeps 300k; 300k = c (12 + 6) * 1e6 -> c = 1/60 -> 0.2 and 0.1
    d = layer_densities("smart", THREE, 0.2)
    assert d["l1"] == pytest.approx(0.2, rel=1e-12)
    assert d["l2"] == pytest.approx(0.1, rel=1e-12)
    assert d["l3"] == pytest.approx(0.3, rel=1e-12)
    assert d["l1"] / d["l2"] == pytest.approx(12 / 6, rel=1e-12)
    assert layer_counts("smart", THREE, 0.2) == {"l1": 200_000, "l2": 100_000, "l3": 300_000}


def test_smart_vgg_three_layers_by_hand():
    # smart_vgg divides by l^2: 12/1 = 12 and 6/4 = 1.5; 300k = c * 13.5e6 -> c = 1/45
    d = layer_densities("smart_vgg", THREE, 0.2)
    assert d["l1"] == pytest.approx(12 / 45, rel=1e-12)
    assert d["l2"] == pytest.approx(1.5 / 45, rel=1e-12)
    assert d["l3"] == pytest.approx(0.3, rel=1e-12)
    counts = layer_counts("smart_vgg", THREE, 0.2)
    assert sum(counts.values()) == 600_000
    assert counts["l3"] == 300_000


@pytest.mark.parametrize("kind", ["smart", "smart_vgg"])
def test_smart_last_layer_takes_whole_small_budget(kind):
    # density 0.05 -> budget 150k < 0.3 * 1e6: the last layer keeps all of it (0.15), the rest nothing.
    d = layer_densities(kind, THREE, 0.05)
    assert d["l3"] == pytest.approx(0.15, rel=1e-12)
    assert d["l1"] == 0.0 and d["l2"] == 0.0
    assert layer_counts(kind, THREE, 0.05) == {"l1": 0, "l2": 0, "l3": 150_000}


def test_smart_clips_at_one_and_redistributes():
    # Small first layer. density 0.6 -> budget 0.6 * 1,010,100 = 606,060; last keeps 0.3 * 10,000 = 3,000.
    # c (12 * 100 + 6 * 1e6) = 603,060 -> c = 0.1005 -> l1 would be 12c = 1.206 > 1: clipped to 1,
    # and l2 takes the rest: (603,060 - 100) / 1e6 = 0.60296.
    shapes = {"l1": (10, 10), "l2": (1000, 1000), "l3": (100, 100)}
    d = layer_densities("smart", shapes, 0.6)
    assert d["l1"] == 1.0
    assert d["l3"] == pytest.approx(0.3, rel=1e-12)
    assert d["l2"] == pytest.approx(0.60296, rel=1e-12)
    assert layer_counts("smart", shapes, 0.6) == {"l1": 100, "l2": 602_960, "l3": 3000}


# --- exact counts on real shapes ------------------------------------------------------------------
@pytest.mark.parametrize("kind", DISTRIBUTIONS)
@pytest.mark.parametrize("shapes", [LENET, VGG16], ids=["lenet_300_100", "vgg16"])
@pytest.mark.parametrize("density", [0.5, 0.1, 0.01, 0.001])
def test_counts_exact_and_in_range(kind, shapes, density):
    sizes = {n: size(s) for n, s in shapes.items()}
    counts = layer_counts(kind, shapes, density)
    densities = layer_densities(kind, shapes, density)
    assert list(counts) == list(shapes)
    assert sum(counts.values()) == round(density * sum(sizes.values()))
    for n in shapes:
        assert isinstance(counts[n], int)
        assert 0 <= counts[n] <= sizes[n]
        assert 0.0 <= densities[n] <= 1.0
        # Largest-remainder rounding never moves a layer by a whole weight or more.
        assert abs(counts[n] - densities[n] * sizes[n]) < 1.0
    assert sum(densities[n] * sizes[n] for n in shapes) == pytest.approx(density * sum(sizes.values()), rel=1e-9)
    if kind == "uniform":
        assert all(densities[n] == density for n in shapes)
    if kind in ("smart", "smart_vgg"):
        assert densities["fc.weight"] == pytest.approx(min(0.3, density * sum(sizes.values()) / sizes["fc.weight"]))


def test_erk_on_vgg16_keeps_small_layers_denser():
    d = layer_densities("erk", VGG16, 0.05)
    names = list(VGG16)
    assert d[names[0]] == 1.0  # the 3->64 conv (1728 weights) is capped dense
    # Among uncapped layers density follows the raw ERK ratio exactly.
    free = [n for n in names if d[n] < 1.0]
    ref = free[0]
    for n in free:
        assert d[n] / d[ref] == pytest.approx(erk_raw(VGG16[n]) / erk_raw(VGG16[ref]), rel=1e-9)


@pytest.mark.parametrize("kind", DISTRIBUTIONS)
def test_density_one_and_zero(kind):
    sizes = {n: size(s) for n, s in LENET.items()}
    assert layer_counts(kind, LENET, 1.0) == sizes
    assert layer_counts(kind, LENET, 0.0) == {n: 0 for n in LENET}


def test_counts_from_densities_largest_remainder():
    sizes = {"a": 10, "b": 10, "c": 10}
    # ideal 3.4, 3.35, 3.25 -> floors 3, 3, 3 -> 1 more to the largest remainder (a)
    assert counts_from_densities(sizes, {"a": 0.34, "b": 0.335, "c": 0.325}, 10) == {"a": 4, "b": 3, "c": 3}
    # equal remainders: earlier layer first
    assert counts_from_densities(sizes, {"a": 0.25, "b": 0.25, "c": 0.25}, 8) == {"a": 3, "b": 3, "c": 2}
    # a layer at its size takes no more
    assert counts_from_densities({"a": 2, "b": 10}, {"a": 1.0, "b": 0.3}, 6) == {"a": 2, "b": 4}


def test_unknown_distribution_and_bad_density():
    with pytest.raises(DistributionError, match="unknown distribution"):
        layer_densities("erk2", LENET, 0.1)
    with pytest.raises(DistributionError):
        layer_counts("global", LENET, 0.1)
    for bad in (-0.1, 1.5):
        with pytest.raises(DistributionError):
            layer_densities("uniform", LENET, bad)
