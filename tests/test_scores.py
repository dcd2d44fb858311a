"""Tests for ticketlab.pruning.scores: hand-computed SNIP / SynFlow / GraSP / magnitude on tiny nets,
masking, data-freeness of SynFlow, the caller's model left alone, random scores, unknown methods."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.scores import SCORES, ScoreError, ScoreSource, compute_scores

W1 = [[1.0, -2.0], [3.0, 0.5]]
W2 = [[2.0, -1.0], [0.5, 3.0]]
NAMES = ("0.weight", "2.weight")


def two_layer(w1=W1, w2=W2, dtype=torch.float32) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w1))
        net[2].weight.copy_(torch.tensor(w2))
    return net.to(dtype)


def source(batches, input_shape=(2,), seed=0) -> ScoreSource:
    return ScoreSource(batches=lambda: list(batches), input_shape=input_shape,
                       generator=torch.Generator().manual_seed(seed))


def no_data_source(input_shape=(2,)) -> ScoreSource:
    def boom():
        raise RuntimeError("data must not be read")
    return ScoreSource(batches=boom, input_shape=input_shape, generator=torch.Generator().manual_seed(0))


def close(actual, expected, rtol=1e-6, atol=1e-9):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol)


def one_batch(x, y, dtype=torch.float32):
    return (torch.tensor([x], dtype=dtype), torch.tensor([y]))


# --- magnitude ------------------------------------------------------------------------------------
def test_magnitude_is_abs_weight_and_zero_where_pruned():
    net = two_layer()
    mask = Mask({"0.weight": torch.tensor([[True, False], [True, True]]),
                 "2.weight": torch.tensor([[True, True], [False, True]])})
    s = compute_scores("magnitude", net, mask, no_data_source())
    close(s["0.weight"], [[1.0, 0.0], [3.0, 0.5]])
    close(s["2.weight"], [[2.0, 1.0], [0.0, 3.0]])


# --- SNIP -----------------------------------------------------------------------------------------
def test_snip_by_hand_single_input():
    # x = [1, 2], y = 0.
    # pre = W1 x = [1 - 4, 3 + 1] = [-3, 4];  h = relu(pre) = [0, 4]
    # z = W2 h = [2*0 - 1*4, 0.5*0 + 3*4] = [-4, 12];  p = softmax(z);  q := p_1 = 1 - p_0 = 1/(1 + e^-16)
    # dz = p - e_0 = [-q, q]
    # dW2 = dz h^T = [[0, -4q], [0, 4q]]                 -> |dW2 * W2| = [[0, 4q], [0, 12q]]
    # W2^T dz = [2(-q) + 0.5q, (-1)(-q) + 3q] = [-1.5q, 4q];  * (pre > 0) = [0, 4q]
    # dW1 = [0, 4q]^T x^T = [[0, 0], [4q, 8q]]          -> |dW1 * W1| = [[0, 0], [12q, 4q]]
    q = 1.0 / (1.0 + math.exp(-16.0))
    net = two_layer()
    s = compute_scores("snip", net, Mask.dense(net), source([one_batch([1.0, 2.0], 0)]))
    close(s["0.weight"], [[0.0, 0.0], [12 * q, 4 * q]], rtol=1e-5)
    close(s["2.weight"], [[0.0, 4 * q], [0.0, 12 * q]], rtol=1e-5)


def test_snip_by_hand_on_masked_network():
    # Mask prunes W1[1,1] and W2[1,0]: the network scored is W1' = [[1, -2], [3, 0]], W2' = [[2, -1], [0, 3]].
    # x = [1, 2], y = 0: pre = [-3, 3], h = [0, 3], z = [-3, 9], q = p_1 = 1/(1 + e^-12), dz = [-q, q]
    # dW2 = [[0, -3q], [0, 3q]] -> scores [[0, 3q], [0 (pruned), 9q]]
    # W2'^T dz = [-2q + 0, q + 3q] = [-2q, 4q] * [0, 1] -> dW1 = [[0, 0], [4q, 8q]] -> [[0, 0], [12q, 0 (pruned)]]
    q = 1.0 / (1.0 + math.exp(-12.0))
    net = two_layer()
    mask = Mask({"0.weight": torch.tensor([[True, True], [True, False]]),
                 "2.weight": torch.tensor([[True, True], [False, True]])})
    s = compute_scores("snip", net, mask, source([one_batch([1.0, 2.0], 0)]))
    close(s["0.weight"], [[0.0, 0.0], [12 * q, 0.0]], rtol=1e-5)
    close(s["2.weight"], [[0.0, 3 * q], [0.0, 9 * q]], rtol=1e-5)


def hand_ce_grads(w1, w2, x, y):
    """dL/dW1, dL/dW2 of mean cross-entropy for the 2-layer ReLU net, by the backprop formulas."""
    pre = x @ w1.T                          # (B, hidden)
    h = pre.clamp(min=0)
    z = h @ w2.T                            # (B, classes)
    p = torch.softmax(z, dim=1)
    dz = (p - F.one_hot(y, z.shape[1]).to(p.dtype)) / x.shape[0]
    dw2 = dz.T @ h                          # sum_b dz_b h_b^T
    dh = (dz @ w2) * (pre > 0).to(p.dtype)  # W2^T dz, gated by the ReLU
    dw1 = dh.T @ x
    return dw1, dw2


def test_snip_sums_gradients_over_batches_and_averages_within_one():
    w1, w2 = torch.tensor(W1, dtype=torch.float64), torch.tensor(W2, dtype=torch.float64)
    xa, ya = torch.tensor([[0.5, 0.1]], dtype=torch.float64), torch.tensor([1])
    xb, yb = torch.tensor([[0.2, -0.4]], dtype=torch.float64), torch.tensor([0])
    ga, gb = hand_ce_grads(w1, w2, xa, ya), hand_ce_grads(w1, w2, xb, yb)
    net = two_layer(dtype=torch.float64)
    # Two batches: gradients are summed.
    s = compute_scores("snip", net, Mask.dense(net), source([(xa, ya), (xb, yb)]))
    close(s["0.weight"], ((ga[0] + gb[0]) * w1).abs(), rtol=1e-10)
    close(s["2.weight"], ((ga[1] + gb[1]) * w2).abs(), rtol=1e-10)
    # One batch of both: cross-entropy is a mean, so exactly half of the above.
    s1 = compute_scores("snip", net, Mask.dense(net), source([(torch.cat([xa, xb]), torch.cat([ya, yb]))]))
    close(s1["0.weight"], s["0.weight"] / 2, rtol=1e-10)
    close(s1["2.weight"], s["2.weight"] / 2, rtol=1e-10)
    assert s["0.weight"].abs().sum() > 0.01 and s["2.weight"].abs().sum() > 0.01


def test_snip_scores_in_train_mode():
    import copy
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([3.0, -2.0, 1.0, 0.5]))
        net[1].running_var.copy_(torch.tensor([0.1, 4.0, 2.0, 9.0]))
    net.eval()
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    s = compute_scores("snip", net, Mask.dense(net), source([(x, y)]))

    def reference(train):
        ref = copy.deepcopy(net).train(train)
        loss = F.cross_entropy(ref(x), y)
        ws = [ref[0].weight, ref[3].weight]
        return [(g * w).abs().double() for g, w in zip(torch.autograd.grad(loss, ws), ws)]

    train_ref, eval_ref = reference(True), reference(False)
    torch.testing.assert_close(s["0.weight"], train_ref[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s["3.weight"], train_ref[1], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(s["3.weight"], eval_ref[1], rtol=1e-3)
    assert not net.training


# --- SynFlow --------------------------------------------------------------------------------------
def test_synflow_by_hand():
    # R = 1^T |W2| |W1| 1;  |W1| 1 = [1 + 2, 3 + 0.5] = [3, 3.5];  1^T |W2| = [2 + 0.5, 1 + 3] = [2.5, 4]
    # dR/dW2_ij = (|W1| 1)_j -> |W2 * dR/dW2| = [[2*3, 1*3.5], [0.5*3, 3*3.5]] = [[6, 3.5], [1.5, 10.5]]
    # dR/dW1_jk = (1^T |W2|)_j -> |W1 * dR/dW1| = [[1*2.5, 2*2.5], [3*4, 0.5*4]] = [[2.5, 5], [12, 2]]
    net = two_layer()
    s = compute_scores("synflow", net, Mask.dense(net), no_data_source())
    close(s["0.weight"], [[2.5, 5.0], [12.0, 2.0]], rtol=0, atol=0)
    close(s["2.weight"], [[6.0, 3.5], [1.5, 10.5]], rtol=0, atol=0)


def test_synflow_by_hand_on_masked_network():
    # Mask prunes W1[1,0] = 3: |W1'| 1 = [3, 0.5]; 1^T |W2| = [2.5, 4]
    # W2 scores = [[2*3, 1*0.5], [0.5*3, 3*0.5]] = [[6, 0.5], [1.5, 1.5]]
    # W1 scores = [[1*2.5, 2*2.5], [0 (pruned), 0.5*4]] = [[2.5, 5], [0, 2]]
    net = two_layer()
    mask = Mask({"0.weight": torch.tensor([[True, True], [False, True]]),
                 "2.weight": torch.ones(2, 2, dtype=torch.bool)})
    s = compute_scores("synflow", net, mask, no_data_source())
    close(s["0.weight"], [[2.5, 5.0], [0.0, 2.0]], rtol=0, atol=0)
    close(s["2.weight"], [[6.0, 0.5], [1.5, 1.5]], rtol=0, atol=0)


def test_synflow_with_bias_by_hand():
    # Biases are parameters too, so they are replaced by |b|: with b1 = [-1, 2], b2 = [0.5, -3]
    # h = |W1| 1 + |b1| = [3 + 1, 3.5 + 2] = [4, 5.5]; dR/dW2_ij = h_j
    # W2 scores = [[2*4, 1*5.5], [0.5*4, 3*5.5]] = [[8, 5.5], [2, 16.5]]; W1 scores unchanged [[2.5, 5], [12, 2]]
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(W1))
        net[0].bias.copy_(torch.tensor([-1.0, 2.0]))
        net[2].weight.copy_(torch.tensor(W2))
        net[2].bias.copy_(torch.tensor([0.5, -3.0]))
    s = compute_scores("synflow", net, Mask.dense(net), no_data_source())
    close(s["0.weight"], [[2.5, 5.0], [12.0, 2.0]], rtol=0, atol=0)
    close(s["2.weight"], [[8.0, 5.5], [2.0, 16.5]], rtol=0, atol=0)


def test_synflow_never_reads_data_but_snip_and_grasp_do():
    net = two_layer()
    s = compute_scores("synflow", net, Mask.dense(net), no_data_source())
    assert s["0.weight"].sum() > 0
    for method in ("snip", "grasp"):
        with pytest.raises(RuntimeError, match="data must not be read"):
            compute_scores(method, net, Mask.dense(net), no_data_source())


def test_empty_data_source_is_an_error_for_data_methods():
    net = two_layer()
    for method in ("snip", "grasp"):
        with pytest.raises(ScoreError, match="no batches"):
            compute_scores(method, net, Mask.dense(net), source([]))


def vgg_tiny() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("vgg11", (3, 32, 32), 10, width=0.125)
    with torch.no_grad():  # non-default running stats, so that any change or reset shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return model


def test_synflow_leaves_batchnorm_stats_and_train_mode_alone():
    model = vgg_tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = Mask.dense(model)
    s1 = compute_scores("synflow", model, mask, no_data_source((3, 32, 32)))
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
        assert before[k].dtype == after[k].dtype
    # BatchNorm is scored in eval mode: the caller's mode does not matter, the running stats do.
    model.eval()
    s2 = compute_scores("synflow", model, mask, no_data_source((3, 32, 32)))
    for n in mask:
        torch.testing.assert_close(s1[n], s2[n], rtol=1e-12, atol=0)
    with torch.no_grad():
        model.features[1].running_var.mul_(4.0)
    s3 = compute_scores("synflow", model, mask, no_data_source((3, 32, 32)))
    assert not torch.allclose(s3["features.0.weight"], s1["features.0.weight"])


def test_snip_leaves_batchnorm_stats_alone():
    model = vgg_tiny().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))
    s = compute_scores("snip", model, Mask.dense(model), source([batch], (3, 32, 32)))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(v.sum() > 0 for v in s.values())


def small_mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 3))


def partial_mask(model, seed=4, p=0.6) -> Mask:
    g = torch.Generator().manual_seed(seed)
    dense = Mask.dense(model)
    return Mask({n: torch.rand(t.shape, generator=g) < p for n, t in dense.items()})


def mlp_source(seed=5, input_shape=(5,)) -> ScoreSource:
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(6, *input_shape, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(2)]
    return source(batches, input_shape, seed=seed)


@pytest.mark.parametrize("method", sorted(SCORES))
@pytest.mark.parametrize("train", [True, False])
def test_callers_model_is_unchanged(method, train):
    model = small_mlp().train(train)
    mask = partial_mask(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = compute_scores(method, model, mask, mlp_source())
    assert model.training is train
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype == torch.float32
        assert torch.equal(v, before[k]), k  # pruned entries are not zeroed, signs not flipped
    assert all(p.grad is None for p in model.parameters())
    assert list(s) == list(mask)
    for n in mask:
        assert s[n].dtype == torch.float64 and s[n].device.type == "cpu" and s[n].shape == mask[n].shape


@pytest.mark.parametrize("method", ["magnitude", "snip", "synflow", "grasp"])
def test_pruned_entries_score_zero(method):
    model = small_mlp()
    mask = partial_mask(model)
    s = compute_scores(method, model, mask, mlp_source())
    for n in mask:
        assert torch.all(s[n][~mask[n]] == 0), n
    assert any(bool((s[n][mask[n]] != 0).any()) for n in mask)


# --- GraSP ----------------------------------------------------------------------------------------
def grasp_linear_by_hand(w, batches, T):
    """Analytic w * Hg for z = W x / T, cross-entropy, one sample per batch.

    g = sum_b (1/T)(p_b - e_yb) x_b^T;  H_b[V] = (1/T^2) J_b (V x_b) x_b^T with J_b = diag(p_b) - p_b p_b^T.
    """
    g = torch.zeros_like(w)
    parts = []
    for x, y in batches:
        x = x[0]
        p = torch.softmax(w @ x / T, dim=0)
        e = torch.zeros_like(p)
        e[y] = 1.0
        g += torch.outer(p - e, x) / T
        parts.append((x, torch.diag(p) - torch.outer(p, p)))
    hg = sum(torch.outer(J @ (g @ x), x) for x, J in parts) / T**2
    return w * hg


W_LIN = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-2.0, 1.0, 1.0]]


@pytest.mark.parametrize("T", [200.0, 1.0])
def test_grasp_linear_classifier_analytic(T):
    w = torch.tensor(W_LIN, dtype=torch.float64)
    net = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(w)
    batches = [one_batch([1.0, -2.0, 0.5], 2, torch.float64), one_batch([0.3, 0.8, -1.0], 0, torch.float64)]
    options = {} if T == 200.0 else {"temperature": T}  # the default is T = 200
    s = compute_scores("grasp", net, Mask.dense(net), source(batches, (3,)), **options)
    expected = grasp_linear_by_hand(w, batches, T)
    assert expected.abs().max() > (1e-3 if T == 1.0 else 1e-9)
    close(s["weight"], expected, rtol=1e-9, atol=1e-15)
    # Sign convention: w * Hg (not the paper's -w * Hg); the two ranks are opposite.
    assert not torch.allclose(s["weight"], -expected)


def test_grasp_default_temperature_is_200():
    net = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor(W_LIN))
    src = source([one_batch([1.0, -2.0, 0.5], 2, torch.float64)], (3,))
    default = compute_scores("grasp", net, Mask.dense(net), src)["weight"]
    close(default, compute_scores("grasp", net, Mask.dense(net), src, temperature=200.0)["weight"], rtol=0, atol=0)
    assert not torch.allclose(default, compute_scores("grasp", net, Mask.dense(net), src, temperature=1.0)["weight"])


@pytest.mark.parametrize("T", [0.0, -1.0])
def test_grasp_rejects_bad_temperature(T):
    net = two_layer()
    with pytest.raises(ScoreError, match="temperature"):
        compute_scores("grasp", net, Mask.dense(net), source([one_batch([1.0, 2.0], 0)]), temperature=T)


@pytest.mark.parametrize("T", [1.0, 200.0])
def test_grasp_two_layer_matches_finite_difference_of_gradient(T):
    batches = [one_batch([0.5, 0.1], 1, torch.float64), one_batch([0.2, -0.4], 0, torch.float64)]
    net = two_layer(dtype=torch.float64)
    s = compute_scores("grasp", net, Mask.dense(net), source(batches), temperature=T)

    ref = two_layer(dtype=torch.float64)  # a separate float64 copy for the finite difference
    params = [ref[0].weight, ref[2].weight]

    def grad_at(values):
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)
        total = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            loss = F.cross_entropy(ref(x) / T, y)
            for acc, gi in zip(total, torch.autograd.grad(loss, params)):
                acc += gi
        return total

    w = [p.detach().clone() for p in params]
    g = grad_at(w)
    eps = 1e-4 / max(float(gi.abs().max()) for gi in g)
    plus = grad_at([wi + eps * gi for wi, gi in zip(w, g)])
    minus = grad_at([wi - eps * gi for wi, gi in zip(w, g)])
    for name, wi, gp, gm in zip(NAMES, w, plus, minus):
        hg = (gp - gm) / (2 * eps)
        expected = wi * hg
        assert expected.abs().max() > 0
        torch.testing.assert_close(s[name], expected, rtol=1e-5, atol=1e-7 * float(expected.abs().max()))


# --- random and unknown ---------------------------------------------------------------------------
def test_random_scores_follow_the_generator():
    model = small_mlp()
    mask = Mask.dense(model)
    a = compute_scores("random", model, mask, mlp_source(seed=11))
    b = compute_scores("random", model, mask, mlp_source(seed=11))
    c = compute_scores("random", model, mask, mlp_source(seed=12))
    for n in mask:
        assert torch.equal(a[n], b[n])
        assert not torch.equal(a[n], c[n])
        assert a[n].min() >= 0 and a[n].max() < 1
    # Independent of the weights: a different model with the same seed gives the same scores.
    torch.manual_seed(99)
    other_model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 3))
    other = compute_scores("random", other_model, mask, mlp_source(seed=11))
    assert all(torch.equal(a[n], other[n]) for n in mask)


def test_unknown_method_lists_names():
    net = two_layer()
    with pytest.raises(ScoreError) as info:
        compute_scores("snipp", net, Mask.dense(net), no_data_source())
    for name in ("magnitude", "random", "snip", "grasp", "synflow"):
        assert name in str(info.value)
    assert set(SCORES) >= {"magnitude", "random", "snip", "grasp", "synflow"}
