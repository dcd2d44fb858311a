"""GEM-MINER (Rare Gems): scores in [0, 1] over frozen weights, flags unflagged on a schedule."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ticketlab.data import ArrayData, DataSplits
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.gem_miner import (
    GemMiner, GemMinerError, ceil_schedule, epoch_cosine_lr, finetune_gem, kept_schedule, prune_epochs, prune_rate,
    pruning_rounds, train_gem_miner,
)

torch.set_num_threads(1)


def _data(n: int = 256, shape: tuple[int, ...] = (12,), classes: int = 3, seed: int = 0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g)
    w = torch.randn(int(torch.tensor(shape).prod()), classes, generator=g)
    y = (x.reshape(n, -1) @ w).argmax(1)
    cut = n * 3 // 4
    return DataSplits("toy", ArrayData(x[:cut], y[:cut]), ArrayData(x[cut:], y[cut:]), classes, shape)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", (12,), 3, hidden=(24, 16))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.fc = nn.Linear(6 * 6 * 6, 3)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


# --- the schedule -------------------------------------------------------------------------------
def test_rounds_and_rate_follow_the_authors_formula():
    assert pruning_rounds(150, 5) == 29 and pruning_rounds(10, 3) == 3 and pruning_rounds(5, 5) == 0
    assert prune_epochs(10, 3) == [4, 7, 10]  # after 0-based epochs 3, 6, 9
    assert prune_rate(0.05, 29) == pytest.approx(1 - 0.05 ** (1 / 29))


@pytest.mark.parametrize("total", [1, 7, 1000, 266200])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.05, 0.01, 0.0014])
@pytest.mark.parametrize("rounds", [1, 3, 29])
def test_kept_schedule_ends_exactly_and_never_grows(total, density, rounds):
    kept = kept_schedule(total, density, rounds)
    assert len(kept) == rounds
    assert kept[-1] == max(1, round(density * total))
    assert all(b <= a for a, b in zip([total] + kept, kept))
    # each round removes the fraction p of the flagged weights, up to rounding
    p = prune_rate(density, rounds)
    for r, k in enumerate(kept, start=1):
        assert abs(k - total * (1 - p) ** r) <= 1 or k == 1


@pytest.mark.parametrize("density,epochs,period", [(0.3, 4, 1), (0.05, 7, 2), (0.1, 10, 3), (0.5, 3, 2)])
def test_training_reaches_the_target_count_exactly(density, epochs, period):
    model = _mlp()
    res = train_gem_miner(model, _data(), density, epochs=epochs, iter_period=period, batch_size=32, device="cpu")
    total = res["mask"].num_total
    assert res["mask"].num_kept == max(1, round(density * total))
    assert res["rounds"] == pruning_rounds(epochs, period)
    pruned_at = [h["epoch"] for h in res["history"] if h["pruned"]]
    assert pruned_at == prune_epochs(epochs, period)
    densities = [h["flag_density"] for h in res["history"]]
    assert densities == sorted(densities, reverse=True)
    assert res["forward_mask"].num_kept <= res["mask"].num_kept


# --- the parametrization ------------------------------------------------------------------------
def test_straight_through_gradient_by_hand():
    layer = nn.Linear(3, 2, bias=False)
    gm = GemMiner(layer, weight_init="keep", generator=torch.Generator().manual_seed(0))
    pm = layer.parametrizations.weight[0]
    w = layer.parametrizations.weight.original.detach().clone()
    with torch.no_grad():
        pm.scores.copy_(torch.tensor([[0.9, 0.2, 0.6], [0.4, 0.7, 0.51]]))
        pm.flag.copy_(torch.tensor([[True, True, False], [True, True, True]]))
    x = torch.tensor([[1.0, -2.0, 3.0]])
    out = layer(x)
    m = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])  # 1{s > 0.5} & flag
    assert torch.allclose(out, x @ (w * m).T)
    out.sum().backward()
    # dL/dw_eff[i, j] = x[j] for L = sum(out); dL/ds = dL/dw_eff * w * flag (straight through)
    expected = x.expand(2, 3) * w * pm.flag.float()
    assert torch.allclose(pm.scores.grad, expected)
    assert pm.scores.grad[0, 2] == 0  # unflagged: no gradient
    assert pm.scores.grad[0, 1] != 0  # rounded to 0 but flagged: still a gradient
    gm.remove()


def test_signed_constant_init_and_bias_untouched():
    model = _mlp()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gm = GemMiner(model)
    frozen = gm.frozen_weights()
    for name, w in frozen.items():
        std = math.sqrt(2.0) / math.sqrt(w.shape[1])
        assert torch.allclose(w.abs(), torch.full_like(w, std))
        assert torch.equal(torch.where(before[name] < 0, -1.0, 1.0), w.sign())
    gm.remove()
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, before[name])
        assert p.requires_grad


def test_scores_stay_in_unit_interval_and_weights_stay_frozen():
    model = _mlp()
    res = train_gem_miner(model, _data(), 0.2, epochs=4, iter_period=1, lr=5.0, batch_size=16,
                          device="cpu", keep_parametrized=True)
    gm = res["gem_miner"]
    for s in gm.scores():  # the live scores, and the returned copies
        assert s.min() >= 0 and s.max() <= 1
    for s in res["scores"].values():
        assert s.min() >= 0 and s.max() <= 1
    assert any(((s == 0) | (s == 1)).any() for s in res["scores"].values())  # lr 5 hits the walls
    for w in gm.frozen_weights().values():  # still exactly the signed constants
        assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2.0 / w.shape[1])))


def test_frozen_weights_and_biases_do_not_change_during_training():
    model = _mlp()
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.bias)
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    ref = _mlp()
    GemMiner(ref)  # the same signed constants (signs of the same init)
    expected = {n: p.detach().clone() for n, p in ref.named_parameters()}
    train_gem_miner(model, _data(), 0.2, epochs=3, iter_period=1, lr=1.0, batch_size=16, device="cpu")
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, biases[name])
        else:
            key = name.replace(".weight", ".parametrizations.weight.original")
            assert torch.equal(p, expected[key])


def test_flags_never_come_back():
    model = _mlp()
    gm = GemMiner(model, generator=torch.Generator().manual_seed(3))
    previous = gm.flag_mask()
    for keep in kept_schedule(gm.total, 0.05, 5):
        with torch.no_grad():  # scramble the scores: unflagged weights could now rank high
            for s in gm.scores():
                s.copy_(torch.rand(s.shape))
        gm.prune_to(keep)
        now = gm.flag_mask()
        assert now.num_kept == keep
        assert not any((now[n] & ~previous[n]).any() for n in now)  # nothing flagged again
        previous = now
    with pytest.raises(GemMinerError, match="keep"):
        gm.prune_to(gm.num_flagged() + 1)


def test_prune_to_unflags_the_smallest_scores_globally():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    gm = GemMiner(model, weight_init="keep")
    with torch.no_grad():
        gm.scores()[0].copy_(torch.tensor([[0.1, 0.9], [0.5, 0.3]]))
        gm.scores()[1].copy_(torch.tensor([[0.2, 0.8]]))
    gm.prune_to(3)
    mask = gm.flag_mask()
    assert mask["0.weight"].tolist() == [[False, True], [True, False]]
    assert mask["1.weight"].tolist() == [[False, True]]


def test_result_holds_both_masks_and_both_accuracies():
    model = _mlp()
    res = train_gem_miner(model, _data(), 0.3, epochs=5, iter_period=2, batch_size=32, device="cpu")
    mask, forward = res["mask"], res["forward_mask"]
    for name, s in res["scores"].items():
        assert torch.equal(forward[name], (s > 0.5) & mask[name])
    assert 0.0 <= res["test_accuracy"] <= 1.0 and res["flag_test_accuracy"] is not None


# --- fine-tuning --------------------------------------------------------------------------------
def test_finetune_keeps_unflagged_weights_exactly_zero_and_starts_from_frozen_weights():
    model = _mlp()
    data = _data()
    res = train_gem_miner(model, data, 0.2, epochs=3, iter_period=1, batch_size=32, device="cpu")
    mask = res["mask"]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name in mask:  # the model holds the signed constants, unmasked
        assert torch.allclose(start[name].abs(), torch.full_like(start[name], math.sqrt(2.0 / start[name].shape[1])))
    ft = finetune_gem(model, data, mask, epochs=2, batch_size=32, device="cpu")
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.all(params[name][~keep] == 0)
        assert not torch.equal(params[name][keep], start[name][keep])  # kept weights trained
    assert ft["start_test_accuracy"] == pytest.approx(res["flag_test_accuracy"])
    assert len(ft["history"]) == 3


def test_finetune_refuses_a_parametrized_model_and_bad_options():
    model = _mlp()
    data = _data()
    res = train_gem_miner(model, data, 0.5, epochs=2, iter_period=1, batch_size=32, device="cpu",
                          keep_parametrized=True)
    with pytest.raises(GemMinerError, match="remove"):
        finetune_gem(model, data, res["mask"], epochs=1, device="cpu")
    res["gem_miner"].remove()
    with pytest.raises(GemMinerError, match="milestones"):
        finetune_gem(model, data, res["mask"], epochs=1, milestones=(1.5,), device="cpu")
    with pytest.raises(GemMinerError, match="optimizer"):
        finetune_gem(model, data, res["mask"], epochs=1, optimizer="lbfgs", device="cpu")


# --- determinism and model kinds ----------------------------------------------------------------
def test_same_seed_same_result_other_seed_other_mask():
    def run(seed):
        model = _mlp()
        res = train_gem_miner(model, _data(), 0.1, epochs=3, iter_period=1, batch_size=32, seed=seed, device="cpu")
        return res["mask"], res["scores"], res["history"]

    m1, s1, h1 = run(0)
    m2, s2, h2 = run(0)
    m3, _, _ = run(1)
    assert m1 == m2 and h1 == h2
    assert all(torch.equal(s1[n], s2[n]) for n in s1)
    assert m1 != m3


def test_small_cnn_with_conv2d():
    torch.manual_seed(0)
    model = SmallCNN()
    data = _data(n=128, shape=(1, 6, 6))
    res = train_gem_miner(model, data, 0.1, epochs=3, iter_period=1, batch_size=16, device="cpu")
    mask = res["mask"]
    assert set(mask) == {"conv1.weight", "conv2.weight", "fc.weight"}
    assert mask.num_kept == round(0.1 * mask.num_total)
    w = dict(model.named_parameters())["conv1.weight"]
    assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2.0 / 9)))  # fan_in = 1 * 3 * 3
    ft = finetune_gem(model, data, mask, epochs=1, batch_size=16, device="cpu")
    assert ft["test_accuracy"] is not None
    assert all(torch.all(dict(model.named_parameters())[n][~k] == 0) for n, k in mask.items())


def test_keep_init_keeps_the_model_weights():
    model = _mlp()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = train_gem_miner(model, _data(), 0.3, epochs=2, iter_period=1, batch_size=32, weight_init="keep",
                          device="cpu")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert isinstance(res["mask"], Mask)


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(density=0.0), "density"),
    (dict(density=1.5), "density"),
    (dict(density=True), "density"),
    (dict(epochs=0), "epochs"),
    (dict(epochs=2.5), "epochs"),
    (dict(iter_period=0), "iter_period"),
    (dict(epochs=3, iter_period=3), "no pruning round"),
    (dict(lr=-1.0), "lr"),
    (dict(lam=-1e-4), "lam"),
    (dict(momentum=1.0), "momentum"),
    (dict(optimizer="rmsprop"), "optimizer"),
    (dict(weight_init="kaiming"), "weight_init"),
    (dict(batch_size=10_000), "batch_size"),
    (dict(round_counts="floor"), "round_counts"),
    (dict(lr_step="batch"), "lr_step"),
])
def test_bad_arguments_get_clear_errors(kwargs, match):
    args = dict(density=0.1, epochs=3, iter_period=1, batch_size=32, device="cpu") | kwargs
    density = args.pop("density")
    with pytest.raises(GemMinerError, match=match):
        train_gem_miner(_mlp(), _data(), density, **args)


def test_refuses_a_model_that_is_already_parametrized_and_use_after_remove():
    model = _mlp()
    gm = GemMiner(model)
    with pytest.raises(GemMinerError, match="parametrizations"):
        GemMiner(model)
    gm.remove()
    with pytest.raises(GemMinerError, match="removed"):
        gm.flag_mask()


def test_density_one_needs_no_round():
    model = _mlp()
    res = train_gem_miner(model, _data(), 1.0, epochs=1, iter_period=5, batch_size=32, device="cpu")
    assert res["mask"].density == 1.0 and res["rounds"] == 0


# --- the authors' behaviours as options (issue 15: measured both ways in docs/gem_miner.md) -------
def _tiny_gem(scores: list[float]) -> GemMiner:
    """One 1 x n layer whose scores are ``scores`` (flat order)."""
    layer = nn.Linear(len(scores), 1, bias=False)
    gm = GemMiner(layer, weight_init="keep")
    with torch.no_grad():
        gm.scores()[0].copy_(torch.tensor([scores]))
    return gm


def test_ceil_round_by_hand_on_a_tiny_layer():
    # 10 distinct scores, d = 0.5, K = 2: p = 1 - sqrt(0.5) = 0.2929
    gm = _tiny_gem([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05])
    rate = prune_rate(0.5, 2)
    assert gm.prune_fraction(rate) == 3  # ceil(2.93): the scores 0.05, 0.1, 0.2
    assert gm.flag_mask()["weight"].tolist() == [[True, False, True, True, True, False, True, True, True, False]]
    assert gm.prune_fraction(rate) == 3  # ceil(0.2929 * 7 = 2.05): 0.3, 0.4, 0.5
    assert gm.num_flagged() == 4 == ceil_schedule(10, 0.5, 2)[-1]  # exact counts would keep 5
    assert kept_schedule(10, 0.5, 2)[-1] == 5


def test_ceil_round_unflags_every_tie_at_the_threshold():
    # scores clamped to 0 tie: ceil(0.1 * 8) = 1 asks for one, the threshold 0 takes all three
    gm = _tiny_gem([0.0, 0.6, 0.0, 0.3, 0.0, 0.9, 0.2, 0.5])
    assert gm.prune_fraction(0.1) == 3
    assert gm.flag_mask()["weight"].tolist() == [[False, True, False, True, False, True, True, True]]
    assert gm.prune_fraction(0.0) == 0  # ceil(0) = 0: nothing (the authors' code would index [-1])


def test_ceil_round_ranks_only_flagged_weights_globally():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    gm = GemMiner(model, weight_init="keep")
    with torch.no_grad():
        gm.scores()[0].copy_(torch.tensor([[0.1, 0.9], [0.5, 0.3]]))
        gm.scores()[1].copy_(torch.tensor([[0.2, 0.8]]))
        model[0].parametrizations.weight[0].flag[0, 0] = False  # 0.1 already unflagged
    assert gm.prune_fraction(0.3) == 2  # ceil(0.3 * 5) = 2 of the flagged: 0.2 and 0.3
    mask = gm.flag_mask()
    assert mask["0.weight"].tolist() == [[False, True], [True, False]]
    assert mask["1.weight"].tolist() == [[False, True]]


def test_ceil_schedule_lands_at_or_below_the_exact_counts():
    assert ceil_schedule(10, 0.5, 2) == [7, 4]
    for total, d, k in [(266200, 0.05, 9), (266200, 0.01, 9), (1000, 0.1, 3)]:
        ceil, exact = ceil_schedule(total, d, k), kept_schedule(total, d, k)
        assert all(c <= e for c, e in zip(ceil, exact)) and ceil[-1] < exact[-1]


def test_training_with_ceil_counts_ends_at_or_below_target():
    res = train_gem_miner(_mlp(), _data(), 0.1, epochs=7, iter_period=2, batch_size=32, device="cpu",
                          round_counts="ceil")
    total = res["mask"].num_total
    assert res["round_counts"] == "ceil" and len(res["kept_schedule"]) == 3
    assert res["mask"].num_kept == res["kept_schedule"][-1] <= ceil_schedule(total, 0.1, 3)[-1]
    assert [h["epoch"] for h in res["history"] if h["pruned"]] == prune_epochs(7, 2)


def _lrs_per_step(monkeypatch, **kwargs) -> list[float]:
    """The LR each optimiser step used, in order (SGD.step wrapped to record it)."""
    seen: list[float] = []
    step = torch.optim.SGD.step

    def recording(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    train_gem_miner(_mlp(), _data(), 0.5, epochs=4, iter_period=1, lr=0.1, batch_size=32, device="cpu", **kwargs)
    monkeypatch.undo()
    return seen


def test_lr_per_epoch_matches_cosine_annealing_stepped_per_epoch(monkeypatch):
    seen = _lrs_per_step(monkeypatch, lr_step="epoch")
    per_epoch = 192 // 32
    assert len(seen) == 4 * per_epoch
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    expected = []
    for _ in range(4):  # the authors' loop: one epoch at the current LR, then scheduler.step()
        expected += [opt.param_groups[0]["lr"]] * per_epoch
        opt.step()
        sched.step()
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert seen[:per_epoch] == [0.1] * per_epoch and seen[-1] == pytest.approx(0.1 * (1 - math.cos(math.pi / 4)) / 2)
    assert [epoch_cosine_lr(0.1, e, 4) for e in range(4)] == pytest.approx([0.1, 0.0853553, 0.05, 0.0146447], rel=1e-5)


def test_lr_per_iteration_is_ours_by_default(monkeypatch):
    seen = _lrs_per_step(monkeypatch)
    total = 4 * (192 // 32)
    assert seen == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)], rel=1e-12)


def test_lr_per_epoch_keeps_batches_rounds_and_evaluations():
    res = train_gem_miner(_mlp(), _data(), 0.1, epochs=5, iter_period=2, batch_size=32, device="cpu", lr_step="epoch")
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3, 4, 5]
    assert [h["epoch"] for h in res["history"] if h["pruned"]] == prune_epochs(5, 2)
    assert res["mask"].num_kept == round(0.1 * res["mask"].num_total)
    assert [h["lr"] for h in res["history"]] == pytest.approx([epoch_cosine_lr(0.1, e, 5) for e in range(5)])
