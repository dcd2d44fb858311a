"""SynFlow's layer-collapse claim (Tanaka et al. 2020) on ticketlab's VGG-16 at initialisation.

Iterative SynFlow (100 rounds) keeps every layer of VGG-16 connected at 99.9% sparsity, where
one-shot magnitude pruning cuts the network. The full-size check (VGG-16, 14.7M weights, about
a minute on one CPU thread) is marked slow; the fast test checks the same property on
VGG-16 at 1/8 width (230,680 weights), where magnitude pruning at density 10^-3 leaves conv9 to
conv13 empty and so disconnects the net, while SynFlow keeps every layer connected.
See benchmarks/layer_collapse.py for the full sweep (magnitude, SNIP, GraSP, SynFlow).
"""
from __future__ import annotations

import pytest
import torch

from ticketlab.analysis.connectivity import collapsed_layers, is_disconnected, layer_report
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.prune import prune
from ticketlab.pruning.scores import ScoreSource

CIFAR = (3, 32, 32)
DENSITY = 1e-3  # 99.9% sparsity


def vgg16(width: float, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("vgg16", CIFAR, 10, width=width)


def data_free_source() -> ScoreSource:
    """Magnitude and SynFlow never read the batches."""
    return ScoreSource(batches=lambda: [], input_shape=CIFAR, generator=torch.Generator().manual_seed(0))


def test_small_vgg16_magnitude_collapses_but_synflow_does_not():
    model = vgg16(width=0.125)
    dense = Mask.dense(model)
    assert dense.num_total == 230_680
    source = data_free_source()

    magnitude = prune("magnitude", model, dense, source, DENSITY)
    assert magnitude.num_kept == round(DENSITY * dense.num_total)
    kept = magnitude.kept_per_layer()
    # The wide late layers (fan-in 576, smallest init std) lose every weight: layer collapse.
    empty = [n for n, k in kept.items() if k == 0]
    assert {"features.34.weight", "features.37.weight", "features.40.weight"} <= set(empty)
    assert is_disconnected(model, magnitude, CIFAR)
    assert collapsed_layers(model, magnitude, CIFAR) == list(dense)  # no layer has an effective weight

    synflow = prune("synflow", model, dense, source, DENSITY, rounds=100)
    assert synflow.num_kept == magnitude.num_kept
    assert collapsed_layers(model, synflow, CIFAR) == []
    assert not is_disconnected(model, synflow, CIFAR)
    assert all(k > 0 for k in synflow.kept_per_layer().values())


@pytest.mark.slow
def test_vgg16_synflow_100_rounds_keeps_every_layer_at_99_9_percent_sparsity():
    """VGG-16 (CIFAR shapes, untrained) at 99.9% sparsity: SynFlow with 100 rounds leaves every
    layer connected (no collapsed layer, not disconnected)."""
    model = vgg16(width=1.0)
    dense = Mask.dense(model)
    assert dense.num_total == 14_715_584
    mask = prune("synflow", model, dense, data_free_source(), DENSITY, rounds=100)
    assert mask.num_kept == round(DENSITY * dense.num_total)
    rows = layer_report(model, mask, CIFAR)
    assert [r["name"] for r in rows if r["collapsed"]] == []
    assert all(r["effective"] > 0 for r in rows)
    assert not is_disconnected(model, mask, CIFAR)


@pytest.mark.slow
def test_vgg16_magnitude_disconnects_at_99_9_percent_sparsity():
    """The contrast: one-shot global magnitude pruning at the same density empties conv9, conv11
    and conv12 (seed 0) and so cuts every input->output path."""
    model = vgg16(width=1.0)
    dense = Mask.dense(model)
    mask = prune("magnitude", model, dense, data_free_source(), DENSITY)
    assert any(k == 0 for k in mask.kept_per_layer().values())
    assert is_disconnected(model, mask, CIFAR)
