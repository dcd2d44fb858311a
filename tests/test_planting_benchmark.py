"""Plant 'n' Seek benchmark cells on a tiny protocol (depth 3; width 30, the Helix target's width)."""
import math

import pytest
import torch
import torch.nn.functional as F

from ticketlab.masks import Mask
from ticketlab.planting import host_network, make_task, plant, target_network
from ticketlab.planting.benchmark import (
    METHODS,
    MULTISHOT,
    REFERENCE_METHODS,
    SINGLESHOT,
    Protocol,
    benchmark_table,
    multishot,
    rescaled_mse,
    run_benchmark,
    run_cell,
)
from ticketlab.pruning.scores import ScoreSource

TINY = Protocol(depth=3, width=30, samples=600, epochs=1, multishot_rounds=2, multishot_epochs=1)
KEYS = {"task", "method", "kept", "density", "weight_density", "seed", "strong", "weak", "strong_raw_mse",
        "weak_raw_mse", "strong_up_to_scale", "recall", "precision", "jaccard", "effective_density", "collapsed",
        "fallbacks", "seconds"}


def _pool_size(task: str, protocol: Protocol = TINY) -> tuple[int, int]:
    """(weights, weights + biases) of the task's host."""
    d = make_task(task, n=10)
    host = host_network(d.input_dim, d.output_dim, depth=protocol.depth, width=protocol.width)
    layers = [m for m in host.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(m.weight.numel() for m in layers)
    return weights, weights + sum(m.bias.numel() for m in layers)


def test_method_lists():
    assert len(METHODS) == 13 and REFERENCE_METHODS == ("dense", "ticket")
    assert [m.removeprefix("multishot_") for m in MULTISHOT] == ["random", "magnitude", "snip", "grasp", "synflow"]
    assert set(SINGLESHOT) >= {"random", "magnitude", "snip", "grasp", "synflow", "synflow100"}


@pytest.mark.parametrize("task", ["relu", "circle", "helix"])
@pytest.mark.parametrize("method", ["magnitude", "synflow", "grasp", "edgepopup", "multishot_snip"])
@pytest.mark.parametrize("kept", ["ticket", 0.5])
def test_cell(task, method, kept):
    row = run_cell(task, method, kept, 0, TINY, return_model=True)
    assert KEYS <= row.keys()
    asked = row["ticket_density"] if kept == "ticket" else kept
    _, pool = _pool_size(task)
    assert abs(row["density"] * pool - round(asked * pool)) <= TINY.depth  # biases are pruned too (the default)
    params = dict(row["model"].named_parameters())
    for name, keep in row["mask"].items():
        assert torch.all(params[name].detach()[~keep] == 0), name  # pruned weights stay zero through training
    for key in ("recall", "precision", "jaccard", "effective_density"):
        assert 0.0 <= row[key] <= 1.0, key
    assert 0 <= row["collapsed"] <= TINY.depth - 1
    assert math.isfinite(row["strong"]) and math.isfinite(row["weak"])
    if task == "circle":
        assert math.isnan(row["strong_raw_mse"]) and 0 <= row["strong_up_to_scale"] <= 1
    else:
        assert row["strong"] <= row["strong_raw_mse"] + 1e-12  # the rescale can only lower the MSE


def test_without_bias_pruning_the_kept_fraction_counts_weights_only():
    protocol = Protocol(**{**TINY.__dict__, "prune_bias": False})
    row = run_cell("relu", "magnitude", 0.1, 0, protocol, return_model=True)
    weights, _ = _pool_size("relu")
    assert row["density"] == row["weight_density"]
    assert abs(row["density"] * weights - round(0.1 * weights)) <= 1
    assert all(b.abs().sum() > 0 for n, b in row["model"].named_parameters() if n.endswith("bias"))


def test_grasp_is_layer_wise_by_default():
    row = run_cell("circle", "grasp", 0.1, 0, TINY, return_model=True)
    for name, keep in row["mask"].items():  # every weight matrix keeps its own 10%
        assert abs(int(keep.sum()) - round(0.1 * keep.numel())) <= 1, name


def test_dense_and_ticket_references():
    dense = run_cell("circle", "dense", 1, 0, TINY)
    assert dense["density"] == 1.0 and dense["recall"] == 1.0
    with pytest.raises(ValueError, match="dense"):
        run_cell("circle", "dense", 0.5, 0, TINY)
    with pytest.raises(ValueError, match="ticket"):
        run_cell("circle", "ticket", 0.5, 0, TINY)
    with pytest.raises(ValueError, match="unknown method"):
        run_cell("relu", "nope", 0.5, 0, TINY)
    with pytest.raises(ValueError, match="kept"):
        run_cell("relu", "magnitude", 1.5, 0, TINY)


@pytest.mark.parametrize("task", ["relu", "circle", "helix"])
def test_ticket_reproduces_target(task):
    """The planted ticket in the raw host: regression MSE after the authors' rescale is the noise
    level; Circle's raw-output accuracy is poor (every output has its own scale lambda_j), its
    accuracy up to scale is the target's (depth 3: 0.961 noise-free)."""
    row = run_cell(task, "ticket", "ticket", 0, Protocol(**{**TINY.__dict__, "samples": 3000}))  # 300 test samples
    assert row["recall"] == 1.0 and row["precision"] == 1.0 and row["jaccard"] == 1.0
    assert row["weight_density"] == pytest.approx(row["ticket_density"])
    if task == "relu":
        assert row["strong"] < 2e-4
    elif task == "helix":
        assert row["strong"] < 1e-3
    else:
        assert row["strong_up_to_scale"] > 0.92  # 0.957 measured


def test_rescaled_mse_by_hand():
    # one batch of 3, two outputs: a_0 = (1*2 + 2*4 + 3*6) / (1 + 4 + 9) = 2 (exact fit, error 0);
    # output 1: out = (1, 0, -1), y = (1, 1, 1): a_1 = (1 - 1) / 2 = 0, errors (1, 1, 1)
    out = torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, -1.0]])
    y = torch.tensor([[2.0, 1.0], [4.0, 1.0], [6.0, 1.0]])
    assert rescaled_mse(out, y, batch_size=256) == pytest.approx(3 / 6)
    # batches of 2 and 1: batch 1 output 1: out (1, 0), y (1, 1): a = 1, errors (0, 1);
    # batch 2 (single row): output 0 exact, output 1: out -1, y 1: a = -1, error 0
    assert rescaled_mse(out, y, batch_size=2) == pytest.approx((1 / 4 * 2 + 0 * 1) / 3)
    # an all-zero output column keeps scale 1
    assert rescaled_mse(torch.zeros(2, 1), torch.ones(2, 1), batch_size=8) == pytest.approx(1.0)
    assert rescaled_mse(out, y, 256) <= F.mse_loss(out, y).item()


@pytest.mark.parametrize("score, distribution", [("random", "global"), ("magnitude", "global"), ("snip", "global"),
                                                 ("grasp", "global"), ("grasp", "uniform"), ("synflow", "global")])
def test_multishot_reaches_the_exact_kept_count_every_round(score, distribution):
    data = make_task("circle", n=200, seed=0)
    planted = plant(target_network("circle", 3), host_network(2, 4, depth=3, width=30, seed=0))
    names = [n for n, m in planted.host.named_modules() if isinstance(m, torch.nn.Linear)]
    pool = Mask.dense(planted.host, include=[f"{n}.bias" for n in names])
    source = ScoreSource(batches=lambda: [(data.x_train[:40], data.y_train[:40])], input_shape=(2,),
                         generator=torch.Generator().manual_seed(0), loss=F.cross_entropy)
    seen, trained = [], []

    def fit(model, mask, r):  # one SGD step stands in for training; pruned entries must be zero already
        trained.append(all(torch.all(p.detach()[~mask[n]] == 0) for n, p in model.named_parameters() if n in mask))
        loss = F.cross_entropy(model(data.x_train[:32]), data.y_train[:32])
        loss.backward()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p -= 0.01 * p.grad * (mask[n] if n in mask else 1)

    rounds, density = 4, 0.05
    multishot(score, planted.host, pool, source, density, rounds, fit, distribution=distribution,
              on_round=lambda r, m: seen.append(m))
    assert len(seen) == rounds and all(trained)
    for r, mask in enumerate(seen, start=1):
        assert mask.num_kept == round(density ** (r / rounds) * pool.num_total), (score, r)
        if r > 1:
            assert (mask & ~seen[r - 2]).num_kept == 0  # nested: nothing pruned comes back


def test_fold_ablation_un_hides_the_ticket():
    """Folding lambda into the ticket's output weights makes them the largest of the host:
    magnitude pruning at the ticket's kept fraction then finds far more of the ticket."""
    protocol = Protocol(depth=5, width=30, samples=300, epochs=1)
    folded = Protocol(**{**protocol.__dict__, "fold_output_scale": True})
    raw = [run_cell("circle", "magnitude", "ticket", s, protocol)["recall"] for s in range(2)]
    fold = [run_cell("circle", "magnitude", "ticket", s, folded)["recall"] for s in range(2)]
    assert sum(fold) > sum(raw) + 0.2, (raw, fold)


def test_protocol_is_validated():
    with pytest.raises(ValueError, match="depth"):
        Protocol(depth=2)
    with pytest.raises(ValueError, match="integers >= 1"):
        Protocol(width=0)


def test_methods_and_table():
    rows = run_benchmark(["relu", "circle"], ["magnitude", "ticket"], ["ticket"], [0, 1], TINY)
    rows += run_benchmark(["relu", "circle"], ["magnitude"], [0.5], [0, 1], TINY)
    rows += run_benchmark(["relu", "circle"], ["dense"], [1.0], [0, 1], TINY)
    table = benchmark_table(rows)
    assert "### relu: weak (test MSE after the per-output least-squares rescale" in table
    assert "### circle: strong (test accuracy of the raw output" in table and "recovery" in table
    assert "raw test MSE" in table and "up to scale" in table
    assert "| ticket | - | - | 1.000 [1.000, 1.000] | 1.000 [1.000, 1.000]" not in table  # ticket only at its kept
    assert "| ticket | - | - | " in table and "| dense | " in table
