"""Planting: the host with the ticket mask computes the target (times its output scale)."""
from __future__ import annotations

import math

import pytest
import torch

from ticketlab.planting.network import TargetNetwork
from ticketlab.planting.plant import PlantingError, host_network, plant


def random_target(widths, density=0.6, seed=0) -> TargetNetwork:
    g = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for fan_in, fan_out in zip(widths, widths[1:]):
        w = torch.randn(fan_out, fan_in, generator=g, dtype=torch.float64)
        w = w * (torch.rand(fan_out, fan_in, generator=g) < density)
        weights.append(w)
        biases.append(0.1 * torch.randn(fan_out, generator=g, dtype=torch.float64))
    return TargetNetwork(weights, biases)


@pytest.mark.parametrize("widths, host_width, seed", [
    ([2, 4, 2, 20, 4], 100, 0),   # the paper's Circle shape, depth 5
    ([1, 30, 3], 100, 1),         # Helix at depth 3
    ([3, 5, 5, 2], 12, 2),        # a narrow host: fallbacks likely
])
def test_masked_host_computes_the_target(widths, host_width, seed):
    target = random_target(widths, seed=seed)
    host = host_network(widths[0], widths[-1], depth=len(widths), width=host_width, seed=seed)
    result = plant(target, host)
    x = torch.rand(500, widths[0], generator=torch.Generator().manual_seed(9)) * 2 - 1
    expected = target(x)
    got = result.ticket_forward(x.float()).double()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    assert result.mask.num_kept == target.num_weights()  # the ticket is exactly the target's weights
    assert (result.output_scale > 0).all()


def test_planting_leaves_the_given_host_untouched_and_is_deterministic():
    target = random_target([2, 4, 3])
    host = host_network(2, 3, depth=3, width=50, seed=4)
    before = {k: v.clone() for k, v in host.state_dict().items()}
    a, b = plant(target, host), plant(target, host)
    assert all(torch.equal(before[k], v) for k, v in host.state_dict().items())
    assert a.mask == b.mask and a.neuron_map == b.neuron_map
    assert all(torch.equal(x, y) for x, y in zip(a.host.state_dict().values(), b.host.state_dict().values()))


def test_admissible_matches_keep_the_host_signs_and_a_positive_scale():
    target = random_target([2, 6, 2], density=1.0, seed=3)
    host = host_network(2, 2, depth=3, width=200, seed=3)  # wide host: an admissible neuron exists
    result = plant(target, host)
    assert result.fallbacks[0] == 0  # 200 candidates: an admissible one exists for every hidden neuron
    first = [m for m in host.modules() if isinstance(m, torch.nn.Linear)][0]
    for j, i in enumerate(result.neuron_map[0]):
        planted = result.host.state_dict()["hidden.0.weight"][i]
        original = first.weight[i]
        assert torch.equal(torch.sign(planted), torch.sign(original))  # same signs as before planting
        assert result.scales[0][j] > 0


def test_narrow_host_uses_and_counts_fallbacks():
    # a 1-wide target neuron with a positive and a negative input weight and a big bias: among few
    # host neurons none may agree in all signs; the plant must still be exact
    target = TargetNetwork([torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)],
                           [torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)])
    fallbacks = []
    for seed in range(20):
        result = plant(target, host_network(2, 1, depth=3, width=2, seed=seed))
        x = torch.rand(50, 2) * 2 - 1
        assert torch.allclose(result.ticket_forward(x).double(), target(x), atol=1e-5)
        fallbacks.append(sum(result.fallbacks))
    assert max(fallbacks) >= 1  # some hosts had no admissible neuron, yet every plant is exact


def test_host_initialisation_follows_the_paper():
    host = host_network(2, 4, depth=5, width=400, seed=0)
    layers = [m for m in host.modules() if isinstance(m, torch.nn.Linear)]
    s = 1.0
    for layer in layers:
        std = math.sqrt(2.0 / layer.in_features)
        s *= std
        assert layer.weight.std().item() == pytest.approx(std, rel=0.1)
        if layer.bias.numel() >= 100:
            assert layer.bias.std().item() == pytest.approx(s, rel=0.2)


def test_shape_mismatches_are_refused():
    target = random_target([2, 4, 2, 20, 4])
    with pytest.raises(PlantingError, match="depth"):
        plant(target, host_network(2, 4, depth=4, width=100))
    with pytest.raises(PlantingError, match="wider"):
        plant(target, host_network(2, 4, depth=5, width=10))
    with pytest.raises(PlantingError, match="maps"):
        plant(target, host_network(3, 4, depth=5, width=100))


def test_recovery_metrics_by_hand():
    from ticketlab.masks import Mask
    from ticketlab.planting.recovery import recovery_metrics

    ticket = Mask({"a": torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool), "b": torch.tensor([1, 0], dtype=torch.bool)})
    found = Mask({"a": torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool), "b": torch.tensor([1, 1], dtype=torch.bool)})
    m = recovery_metrics(found, ticket)
    assert m["recall"] == pytest.approx(2 / 3)      # a[0] and b[0] of the 3 ticket edges
    assert m["precision"] == pytest.approx(2 / 5)   # of the 5 kept edges
    assert m["jaccard"] == pytest.approx(2 / 6)     # union: a0 a1 a2 a3 b0 b1
    assert [r["ticket_kept_fraction"] for r in m["layers"]] == [0.5, 1.0]
    assert m["layers"][0]["kept_fraction"] == pytest.approx(3 / 6)


def test_the_planted_ticket_recovers_itself_and_is_connected():
    from ticketlab.planting.recovery import recovery_metrics

    target = random_target([2, 4, 2, 20, 4], density=1.0)
    result = plant(target, host_network(2, 4, depth=5, width=100, seed=1))
    m = recovery_metrics(result.mask, result.mask, result.host, (2,))
    assert m["recall"] == m["precision"] == m["jaccard"] == 1.0
    assert not m["disconnected"] and m["collapsed_layers"] == []
    assert m["effective_density"] == pytest.approx(result.mask.density)


@pytest.mark.parametrize("task, depth, expected_ticket, host_weights", [
    ("circle", 3, 100, 600), ("relu", 3, 2, 200), ("helix", 3, 91, 400),
    ("circle", 5, 108, 20_600), ("relu", 5, 4, 20_200), ("helix", 5, 95, 20_400),
])
def test_paper_targets_planted_in_width_100_hosts(task, depth, expected_ticket, host_weights):
    """The planted ticket alone computes the task (after dividing by the output scale): the paper
    reports, at depth 5, ReLU MSE ~1e-4 (the noise), Helix ~3.2e-4, Circle accuracy ~98.1%; the
    authors' depth-3 Circle target is less exact (0.961 noise-free, see targets.py).
    Helix tickets count 91 / 95 weights where the paper counts 115 / 120: we zero exactly the slope
    differences of the linear third output, the paper keeps ~25 float-noise weights there."""
    from ticketlab.planting.targets import target_network
    from ticketlab.planting.tasks import make_task

    data = make_task(task, seed=0)
    target = target_network(task, depth)
    host = host_network(data.input_dim, target.widths[-1], depth=depth, width=100, seed=0)
    result = plant(target, host)
    assert result.mask.num_kept == expected_ticket
    assert result.mask.num_total == host_weights
    out = result.ticket_forward(data.x_test).double()
    if data.kind == "classification":
        accuracy = (out.argmax(1) == data.y_test).double().mean().item()
        assert accuracy > (0.94 if depth == 3 else 0.975), accuracy  # depth 3: 0.961 noise-free (targets.py)
    else:
        mse = ((out - data.y_test.double()) ** 2).mean().item()
        assert mse < (1.5e-4 if task == "relu" else 4e-4), mse


def test_fold_ablation_makes_the_raw_output_the_target_and_leaves_the_rest_alone():
    target = random_target([2, 4, 2, 20, 4], seed=5)
    host = host_network(2, 4, depth=5, width=100, seed=5)
    folded, raw = plant(target, host, fold_output_scale=True), plant(target, host)
    assert torch.equal(folded.output_scale, torch.ones(4))
    assert (raw.output_scale < 1e-2).all()  # the compounded scales the fold removes
    x = torch.rand(200, 2) * 2 - 1
    assert torch.allclose(folded.ticket_forward(x).double(), target(x), atol=1e-4, rtol=1e-4)
    w_f, w_d = folded.host.fc.weight, raw.host.fc.weight
    off_ticket = ~folded.mask["fc.weight"]
    assert torch.equal(w_f[off_ticket], w_d[off_ticket])  # non-ticket output weights keep their scale
    assert torch.equal(folded.scales[-1], raw.scales[-1])


def _ticket_to_host_ratios(result) -> list[float]:
    """Per layer: the ticket's largest |weight| over the largest |weight| outside the ticket."""
    ratios = []
    for name, w in result.host.named_parameters():
        if name.endswith("weight"):
            keep = result.mask[name]
            ratios.append(float(w.detach()[keep].abs().max() / w.detach()[~keep].abs().max()))
    return ratios


@pytest.mark.parametrize("task", ["relu", "circle", "helix"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_ticket_stays_hidden_on_the_hosts_scale(task, seed):
    """Without the fold (the authors' planting) no ticket weight stands out of its layer, and the
    isolated ticket divided by the output scale is the target; the fold ablation makes the ticket's
    output weights orders of magnitude larger than anything else (it un-hides the ticket)."""
    from ticketlab.planting.targets import target_network
    from ticketlab.planting.tasks import task_dims

    d_in, d_out = task_dims(task)
    target = target_network(task, 5)
    host = host_network(d_in, d_out, depth=5, width=100, seed=seed)
    result = plant(target, host)
    assert max(_ticket_to_host_ratios(result)) < 2.0
    assert (result.output_scale < 1e-1).all()
    x = torch.rand(300, d_in, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    expected = target(x)
    got = result.ticket_forward(x).double()
    assert torch.allclose(got, expected, atol=1e-4 * float(expected.abs().max()), rtol=0), (got - expected).abs().max()
    folded = plant(target, host, fold_output_scale=True)
    assert _ticket_to_host_ratios(folded)[-1] > 100


def test_only_the_ticket_weights_of_a_planted_neuron_are_overwritten():
    """As in the authors' code: the fit and the overwrite use the target neuron's nonzero incoming
    weights (and its bias); every other weight of the planted host neuron stays as drawn."""
    w1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, -2.0, 0.5]], dtype=torch.float64)
    w2 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    target = TargetNetwork([w1, w2], [torch.tensor([0.0, 0.3], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)])
    host = host_network(3, 1, depth=3, width=40, seed=7)
    result = plant(target, host)
    before, after = host.hidden[0].weight, result.host.hidden[0].weight
    for j, i in enumerate(result.neuron_map[0]):
        ticket_cols = w1[j] != 0
        assert torch.equal(after[i, ~ticket_cols], before[i, ~ticket_cols])  # left as drawn
        assert torch.equal(result.mask["hidden.0.weight"][i], ticket_cols)
    untouched = [i for i in range(40) if i not in result.neuron_map[0]]
    assert torch.equal(after[untouched], before[untouched])
    # bias mask: planted neurons with a nonzero target bias (neuron 1 here, bias 0.3)
    assert result.bias_mask["hidden.0.bias"].nonzero().flatten().tolist() == [result.neuron_map[0][1]]
    assert result.bias_mask["fc.bias"].sum() == 0


def test_l1_is_the_default_distance_and_l2_is_available():
    target = random_target([2, 6, 2], seed=4)
    host = host_network(2, 2, depth=3, width=60, seed=4)
    l1, l2 = plant(target, host), plant(target, host, distance="l2")
    assert plant(target, host, distance="l1").neuron_map == l1.neuron_map
    x = torch.rand(100, 2) * 2 - 1
    for r in (l1, l2):
        assert torch.allclose(r.ticket_forward(x).double(), target(x), atol=1e-4)
    with pytest.raises(PlantingError, match="distance"):
        plant(target, host, distance="cosine")
