"""Masks that change during training (pruning/dynamic.py): RigL / SET drop-and-grow and GMP.

Every check is recomputed by hand from what the Trainer holds at the update step: a callback placed
before the updater saves mask, weights, gradients and optimiser state; one placed after it compares.
"""
from __future__ import annotations

import math

import pytest
import torch

import ticketlab.experiments.common as common_module
from ticketlab.config import DataConfig, ModelConfig, SparseTrainConfig, TrainConfig, config_hash
from ticketlab.data import load_dataset
from ticketlab.experiments.sparse_training import random_sparse_mask, run_sparse_training
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.dynamic import DropGrow, DropGrowOptions, GMPOptions, GradualMagnitude
from ticketlab.pruning.schedules import CosineDrop, Cubic
from ticketlab.store import Store
from ticketlab.training import Callback, Trainer

DATA = load_dataset("synthetic_mlp", n_train=256, n_test=128, dim=16, num_classes=4, seed=0)  # 8 it / epoch
LAYERS = {"hidden.0.weight": 32 * 16, "hidden.2.weight": 16 * 32, "fc.weight": 4 * 16}
N = sum(LAYERS.values())  # 1088


def make_model(seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("mlp", (16,), 4, hidden=(32, 16))


def sparse_start(model: torch.nn.Module, density: float = 0.3, seed: int = 0) -> Mask:
    return random_sparse_mask(Mask.dense(model), "erk", density, torch.Generator().manual_seed(seed))


def train_cfg(steps: int, optimizer: str = "adam", fused: bool = True) -> TrainConfig:
    extra = dict(momentum=0.9, lr=0.05) if optimizer == "sgd" else dict(lr=3e-3)
    return TrainConfig(optimizer=optimizer, batch_size=32, steps=f"{steps}it", eval_every=f"{steps}it",
                       fused_optimizer=fused, **extra)


def flat_params(trainer: Trainer) -> dict[str, torch.nn.Parameter]:
    params = dict(trainer.model.named_parameters())
    return {n: params[n] for n in trainer.mask}


def smallest(values: torch.Tensor, positions: torch.Tensor, k: int) -> set[int]:
    """The k positions with the smallest values (stable: among equal values the earlier wins)."""
    order = torch.sort(values[positions], stable=True).indices
    return set(positions[order[:k]].tolist())


def largest(values: torch.Tensor, positions: torch.Tensor, k: int) -> set[int]:
    order = torch.sort(values[positions], descending=True, stable=True).indices
    return set(positions[order[:k]].tolist())


class Snapshot:
    """A callback that saves mask, weights, gradients and optimiser state at the update steps."""

    def __init__(self, updater: DropGrow):
        self.updater = updater
        self.saved: dict[int, dict] = {}

    def __call__(self, trainer: Trainer, step: int) -> None:
        if not self.updater.is_update_step(step):
            return
        snap = {}
        for n, p in flat_params(trainer).items():
            state = {k: v.detach().clone().reshape(-1) for k, v in trainer.optimizer.state[p].items()
                     if torch.is_tensor(v) and v.shape == p.shape}
            snap[n] = dict(mask=trainer.mask[n].clone().reshape(-1), w=p.detach().clone().reshape(-1),
                           grad=p.grad.detach().clone().reshape(-1), state=state)
        self.saved[step] = snap


def run_with_checks(updater: DropGrow, steps: int, check, *, optimizer="adam", fused=True, seed=0):
    """Train under a sparse start mask with ``updater``; ``check(trainer, step, before)`` after each update."""
    before = Snapshot(updater)

    def after(trainer: Trainer, step: int) -> None:
        if updater.is_update_step(step):
            check(trainer, step, before.saved[step])

    model = make_model(seed)
    trainer = Trainer(model, DATA, train_cfg(steps, optimizer, fused), sparse_start(model), device="cpu",
                      callbacks=[Callback(before, every=updater.schedule.every), Callback(updater, every=updater.schedule.every),
                                 Callback(after, every=updater.schedule.every)])
    trainer.train()
    return trainer


@pytest.mark.parametrize("grow", ["gradient", "random"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("fused", [True, False])
def test_update_keeps_counts_and_grows_at_zero_with_fresh_optimizer_state(grow, optimizer, fused):
    updater = DropGrow(grow=grow, schedule=CosineDrop(alpha=0.3, every=5, end=30), seed=0)
    checked = []
    state_keys = {"sgd": {"momentum_buffer"}, "adam": {"exp_avg", "exp_avg_sq"}}[optimizer]

    def check(trainer, step, before):
        f = CosineDrop(alpha=0.3, every=1, end=30).drop_fraction(step)
        changed_total, stale_state = 0, 0
        for n, p in flat_params(trainer).items():
            old, new = before[n]["mask"], trainer.mask[n].reshape(-1)
            assert int(new.sum()) == int(old.sum()), (step, n)
            k = round(f * int(old.sum()))
            grown, gone = (new & ~old).nonzero().reshape(-1), (old & ~new).nonzero().reshape(-1)
            # a just-dropped weight may be grown back (RigL's Algorithm 1); then fewer than k positions move
            assert grown.numel() == gone.numel() <= k, (step, n)
            changed_total += grown.numel()
            w = p.detach().reshape(-1)
            assert torch.equal(w[grown], torch.zeros_like(w[grown])), (step, n)
            state = trainer.optimizer.state[p]
            assert state_keys <= set(state), set(state)
            for key in state_keys:
                buf = state[key].reshape(-1)
                assert torch.equal(buf[grown], torch.zeros_like(buf[grown])), (step, n, key)
                stale_state += int((before[n]["state"][key][grown] != 0).sum())
            # dropped weights are zero from now on
            assert torch.equal(w[gone], torch.zeros_like(w[gone]))
        if step == 5:
            assert changed_total > 0
            assert stale_state > 0  # pruned weights had momentum / moments: the reset did something
        assert updater.log[-1]["step"] == step
        checked.append(step)

    trainer = run_with_checks(updater, 40, check, optimizer=optimizer, fused=fused)
    assert checked == [5, 10, 15, 20, 25]
    assert [e["step"] for e in trainer.history.mask_events] == checked


def test_rigl_drops_smallest_weights_and_grows_largest_gradients():
    updater = DropGrow(grow="gradient", schedule=CosineDrop(alpha=0.4, every=4, end=32))
    seen = []

    def check(trainer, step, before):
        f = CosineDrop(alpha=0.4, every=1, end=32).drop_fraction(step)
        logged_changed = 0
        for n, p in flat_params(trainer).items():
            b = before[n]
            old = b["mask"]
            active = old.nonzero().reshape(-1)
            k = round(f * active.numel())
            logged_changed += k
            drop = smallest(b["w"].abs(), active, k)
            after_drop = old.clone()
            after_drop[list(drop)] = False
            grow = largest(b["grad"].abs(), (~after_drop).nonzero().reshape(-1), k)
            expected = after_drop.clone()
            expected[list(grow)] = True
            new = trainer.mask[n].reshape(-1)
            assert torch.equal(new, expected), (step, n)
            w = p.detach().reshape(-1)
            idx = torch.tensor(sorted(grow))
            assert torch.equal(w[idx], torch.zeros(len(grow))), (step, n)  # regrown dropped ones too
            kept = (after_drop).nonzero().reshape(-1)
            assert torch.equal(w[kept], b["w"][kept])  # survivors untouched
            if step == 4:
                assert len(grow - drop) > 0
        assert updater.log[-1] == {"step": step, "drop_fraction": f, "changed": logged_changed}
        seen.append(step)

    run_with_checks(updater, 36, check)
    assert seen == [4, 8, 12, 16, 20, 24, 28]


def test_no_update_after_t_end_and_cosine_drop_fractions():
    updater = DropGrow(grow="gradient", schedule=CosineDrop(alpha=0.3, every=10, end=60))
    masks: dict[int, Mask] = {}
    model = make_model()
    trainer = Trainer(model, DATA, train_cfg(100), sparse_start(model), device="cpu",
                      callbacks=[Callback(updater, every=10),
                                 Callback(lambda t, s: masks.__setitem__(s, Mask(dict(t.mask.items()))), every=1)])
    trainer.train()
    assert [r["step"] for r in updater.log] == [10, 20, 30, 40, 50]
    assert updater.update_steps(100) == 5
    changed_at = [s for s in range(1, 101) if masks[s] != masks[s - 1]]
    assert changed_at == [10, 20, 30, 40, 50]
    assert [e["step"] for e in trainer.history.mask_events] == [10, 20, 30, 40, 50]
    for r in updater.log:
        assert r["drop_fraction"] == 0.3 / 2 * (1 + math.cos(math.pi * r["step"] / 60))
    assert updater.log[0]["drop_fraction"] == pytest.approx(0.15 * (1 + math.sqrt(3) / 2))
    assert CosineDrop(alpha=0.3, every=1, end=60).drop_fraction(60) == 0.0 == CosineDrop(alpha=0.3, every=1, end=60).drop_fraction(70)
    assert CosineDrop(alpha=0.3, every=1, end=60).drop_fraction(0) == 0.3
    assert CosineDrop(alpha=0.3, every=1, end=60).drop_fraction(30) == pytest.approx(0.15)


def set_run(seed: int, steps: int = 24):
    updater = DropGrow(grow="random", schedule=CosineDrop(alpha=0.3, every=4, end=steps), seed=seed)
    masks: dict[int, Mask] = {}
    grown_ok = []

    def check(trainer, step, before):
        f = CosineDrop(alpha=0.3, every=1, end=steps).drop_fraction(step)
        for n in trainer.mask:
            old, new = before[n]["mask"], trainer.mask[n].reshape(-1)
            active = old.nonzero().reshape(-1)
            k = round(f * active.numel())
            after_drop = old.clone()
            after_drop[list(smallest(before[n]["w"].abs(), active, k))] = False
            assert torch.equal(new & after_drop, after_drop)  # the survivors of the drop stay
            grown = new & ~after_drop  # so every grown position was inactive after the drop
            assert int(grown.sum()) == k
        masks[step] = Mask(dict(trainer.mask.items()))
        grown_ok.append(step)

    trainer = run_with_checks(updater, steps, check)
    assert grown_ok == [4, 8, 12, 16, 20]
    return masks, trainer


def test_set_is_seeded_and_grows_among_inactive_after_drop():
    masks_a, trainer_a = set_run(0)
    masks_b, _ = set_run(0)
    masks_c, trainer_c = set_run(1)
    assert masks_a == masks_b
    assert masks_a[4] != masks_c[4]
    assert trainer_a.mask != trainer_c.mask


def test_pruned_weights_stay_zero_through_rigl_training():
    updater = DropGrow(grow="gradient", schedule=CosineDrop(alpha=0.5, every=3, end=45))
    model = make_model(3)
    start = sparse_start(model, density=0.2, seed=3)
    trainer = Trainer(model, DATA, train_cfg(48, "sgd"), start, device="cpu", callbacks=[Callback(updater, every=3)])
    trainer.train()
    assert len(updater.log) == 14
    assert trainer.mask != start
    assert trainer.mask.kept_per_layer() == start.kept_per_layer()
    params = dict(model.named_parameters())
    for n, m in trainer.mask.items():
        assert torch.count_nonzero(params[n].detach()[~m]) == 0, n
        assert torch.count_nonzero(params[n].detach()[m]) > 0.9 * int(m.sum())


# --- gradual magnitude pruning ------------------------------------------------------------------

def cubic(initial_sparsity: float, final_sparsity: float, start: int, end: int) -> Cubic:
    return Cubic(density=1 - final_sparsity, start=start, end=end, every=1, initial_density=1 - initial_sparsity)


def test_gmp_sparsity_hand_values():
    assert cubic(0.0, 0.9, 0, 100).sparsity_at(0) == 0.0
    assert cubic(0.0, 0.9, 0, 100).sparsity_at(50) == pytest.approx(0.7875)  # 0.9 - 0.9 * 0.5^3
    assert cubic(0.0, 0.9, 0, 100).sparsity_at(25) == pytest.approx(0.9 - 0.9 * 0.75**3)
    assert cubic(0.0, 0.9, 0, 100).sparsity_at(100) == 0.9
    assert cubic(0.0, 0.9, 0, 100).sparsity_at(150) == 0.9
    assert cubic(0.2, 0.9, 10, 110).sparsity_at(5) == pytest.approx(0.2, abs=1e-15)  # before start: the initial
    assert cubic(0.2, 0.9, 10, 110).sparsity_at(60) == pytest.approx(0.9 - 0.7 * 0.125)
    values = [cubic(0.0, 0.9, 0, 100).sparsity_at(t) for t in range(0, 101, 10)]
    assert values == sorted(values)  # monotone, and the steps shrink (cubic)
    gaps = [b - a for a, b in zip(values, values[1:])]
    assert gaps == sorted(gaps, reverse=True)


@pytest.mark.parametrize("scope", ["global", "uniform"])
def test_gmp_counts_nested_and_frozen_after_end(scope):
    gmp = GradualMagnitude(Cubic(density=0.1, start=0, end=100, every=10), distribution=scope)
    masks: dict[int, Mask] = {}
    model = make_model()
    trainer = Trainer(model, DATA, train_cfg(120), Mask.dense(model), device="cpu",
                      callbacks=[Callback(gmp, every=1),
                                 Callback(lambda t, s: masks.__setitem__(s, Mask(dict(t.mask.items()))), every=1)])
    trainer.train()
    for t in range(0, 101, 10):
        density = gmp.schedule.density_at(t)
        if scope == "global":
            assert masks[t].num_kept == round(N * density), t
        else:
            assert masks[t].kept_per_layer() == {n: round(size * density) for n, size in LAYERS.items()}, t
    assert masks[100].num_kept == pytest.approx(0.1 * N, abs=len(LAYERS))
    for t in range(1, 121):
        assert (masks[t] & ~masks[t - 1]).num_kept == 0, t  # never regrows
        if t % 10 or t > 100:
            assert masks[t] == masks[t - 1], t
    assert [e["step"] for e in trainer.history.mask_events] == list(range(0, 101, 10))
    params = dict(model.named_parameters())
    for n, m in trainer.mask.items():
        assert torch.count_nonzero(params[n].detach()[~m]) == 0


def test_gmp_prunes_smallest_magnitudes_globally():
    gmp = GradualMagnitude(Cubic(density=0.5, start=2, end=4, every=2), distribution="global")
    seen = []

    def before(trainer, step):
        if gmp.is_update_step(step):
            seen.append((step, torch.cat([p.detach().abs().reshape(-1).clone() for p in flat_params(trainer).values()]),
                         torch.cat([trainer.mask[n].reshape(-1).clone() for n in trainer.mask])))

    def after(trainer, step):
        if gmp.is_update_step(step):
            s, w, old = seen[-1]
            keep = round(N * gmp.schedule.density_at(step))
            expected = torch.zeros(N, dtype=torch.bool)
            expected[list(largest(w, old.nonzero().reshape(-1), keep))] = True
            got = torch.cat([trainer.mask[n].reshape(-1) for n in trainer.mask])
            assert torch.equal(got, expected), step

    model = make_model()
    trainer = Trainer(model, DATA, train_cfg(6), Mask.dense(model), device="cpu",
                      callbacks=[Callback(before, every=1), Callback(gmp, every=1), Callback(after, every=1)])
    trainer.train()
    assert [s for s, _, _ in seen] == [2, 4]
    assert trainer.mask.num_kept == N // 2


# --- resume -------------------------------------------------------------------------------------

def sparse_config(**kw) -> SparseTrainConfig:
    base = dict(
        data=DataConfig(name="synthetic_mlp", options=dict(n_train=256, n_test=128, dim=16, num_classes=4, seed=0)),
        model=ModelConfig(name="mlp", options={"hidden": [32, 16]}),
        train=TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="4ep", eval_every="1ep"),
        method="rigl", density=0.3, options=DropGrowOptions(delta_t=5))
    base.update(kw)
    return SparseTrainConfig(**base)


def run_killed_and_resumed(cfg: SparseTrainConfig, root, monkeypatch):
    original = common_module.save_checkpoint
    calls = {"n": 0}

    def dies_after_second_checkpoint(trainer, step, path):
        original(trainer, step, path)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(common_module, "save_checkpoint", dies_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_sparse_training(cfg, Store(root), device="cpu", progress=False, log=lambda _: None)
    monkeypatch.setattr(common_module, "save_checkpoint", original)
    ckpt = root / config_hash(cfg) / "train" / "checkpoint.safetensors"
    assert ckpt.exists()
    assert Store(root).list()[0]["status"] == "interrupted"
    logs: list[str] = []
    summary = run_sparse_training(cfg, Store(root), device="cpu", progress=False, log=logs.append)
    assert any("resuming from step 16" in line for line in logs), logs
    assert not ckpt.exists()
    return summary


def final_state(root, cfg):
    run = Store(root).run(config_hash(cfg))
    return run.load_tensors("train/final.safetensors"), run.read_jsonl("train", "mask_events.jsonl")


def assert_resume_matches(cfg, tmp_path, monkeypatch):
    full = run_sparse_training(cfg, Store(tmp_path / "full"), device="cpu", progress=False, log=lambda _: None)
    resumed = run_killed_and_resumed(cfg, tmp_path / "killed", monkeypatch)
    assert resumed == full
    weights_full, events_full = final_state(tmp_path / "full", cfg)
    weights_resumed, events_resumed = final_state(tmp_path / "killed", cfg)
    assert events_resumed == events_full
    assert weights_full.keys() == weights_resumed.keys()
    for k in weights_full:
        assert torch.equal(weights_full[k], weights_resumed[k]), k
    assert full["mask_updates"] == 4  # steps 5, 10, 15, 20 (t_end = 24)


def test_rigl_killed_mid_training_resumes_to_identical_result(tmp_path, monkeypatch):
    assert_resume_matches(sparse_config(), tmp_path, monkeypatch)


# A checkpoint at a step that is also a mask-update step must hold the updated mask (the checkpoint
# callback runs last), else a resume, which skips that step's callbacks, would lose the update.
@pytest.mark.parametrize("method, extra, updates", [
    ("rigl", dict(options=DropGrowOptions(delta_t=8, alpha=0.4)), 2),  # updates at 8 and 16 = checkpoints (eval every 8 it)
    ("gmp", dict(options=GMPOptions(every="8it")), 3),  # prunes at 0, 8, 16, 24
])
def test_killed_at_a_checkpoint_that_is_also_a_mask_update(tmp_path, monkeypatch, method, extra, updates):
    cfg = sparse_config(method=method, **extra)
    full = run_sparse_training(cfg, Store(tmp_path / "full"), device="cpu", progress=False, log=lambda _: None)
    assert full["mask_updates"] == updates
    resumed = run_killed_and_resumed(cfg, tmp_path / "killed", monkeypatch)  # killed after the checkpoint at 16
    assert resumed == full
    weights_full, events_full = final_state(tmp_path / "full", cfg)
    weights_resumed, events_resumed = final_state(tmp_path / "killed", cfg)
    assert events_resumed == events_full
    for k in weights_full:
        assert torch.equal(weights_full[k], weights_resumed[k]), k
