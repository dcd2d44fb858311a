"""Schedules as objects (pruning/schedules.py): hand-computed densities, update-step sets,
invariants, and GMP composed with any distribution (ERK, smart) landing on its exact counts."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ticketlab.cli import main
from ticketlab.config import ConfigError, DataConfig, ModelConfig, SparseTrainConfig, TrainConfig, config_hash
from ticketlab.data import load_dataset
from ticketlab.experiments.sparse_training import run_sparse_training
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.distributions import layer_counts
from ticketlab.pruning.dynamic import DropGrow, GMPOptions, GradualMagnitude
from ticketlab.pruning.magnitude import imp_groups
from ticketlab.pruning.schedules import SCHEDULE_KINDS, Annealing, CosineDrop, Cubic, IMPLevels, Iterative, OneShot, \
    Schedule, ScheduleError, update_steps
from ticketlab.store import Store
from ticketlab.training import Callback, Trainer


# --- hand-computed values --------------------------------------------------------------------------
def test_one_shot():
    s = OneShot(0.2, at=3)
    assert [s.density_at(t) for t in range(6)] == [1.0, 1.0, 1.0, 0.2, 0.2, 0.2]
    assert update_steps(s, range(10)) == [3]
    one = Iterative(0.2, rounds=1)  # a one-round prune is the one-shot prune at round 1
    assert [one.density_at(k) for k in range(3)] == [OneShot(0.2, at=1).density_at(k) for k in range(3)]


def test_iterative_exponential_hand_values():
    s = Iterative(0.001, rounds=3)
    assert s.kind == "exponential"
    assert s.density_at(0) == 1.0
    assert s.density_at(1) == pytest.approx(0.1)  # 0.001^(1/3)
    assert s.density_at(2) == pytest.approx(0.01)
    assert s.density_at(3) == 0.001 and s.density_at(4) == 0.001  # exact from the last round on
    assert update_steps(s, range(-1, 6)) == [1, 2, 3]
    synflow = Iterative(0.01, rounds=100)  # SynFlow's 100 rounds
    assert synflow.density_at(50) == pytest.approx(0.1)
    assert synflow.density_at(25) == pytest.approx(0.01 ** 0.25)
    # bit for bit the expression prune used before schedules were objects
    assert all(synflow.density_at(k) == 0.01 ** (k / 100) for k in range(1, 100))


def test_iterative_linear_hand_values():
    s = Iterative(0.2, rounds=4, kind="linear")
    assert [s.density_at(k) for k in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert s.density_at(4) == 0.2  # 1 - (1 - 0.2) * 4 / 4 would be 0.19999999999999996
    assert 1.0 - (1.0 - 0.2) * 4 / 4 != 0.2
    assert s.with_density(0.6) == Iterative(0.6, rounds=4, kind="linear")
    assert s.with_density(0.6).density_at(2) == pytest.approx(0.8)


def test_imp_levels_hand_values():
    s = IMPLevels(0.2)
    assert s.density_at(0) == 1.0
    assert s.density_at(1) == pytest.approx(0.8)
    assert s.density_at(2) == pytest.approx(0.64)
    assert s.density_at(3) == pytest.approx(0.512)
    for level in range(1, 10):  # each level removes 20% of the *remaining* weights
        assert s.density_at(level) / s.density_at(level - 1) == pytest.approx(0.8)
    assert update_steps(s, range(5)) == [1, 2, 3, 4]
    bounded = IMPLevels(0.2, levels=3)
    assert update_steps(bounded, range(6)) == [1, 2, 3]
    assert bounded.density == bounded.density_at(3) == bounded.density_at(7) == (1.0 - 0.2) ** 3
    with pytest.raises(ScheduleError, match="levels"):
        IMPLevels(0.2).density
    # imp_groups' counts are round(N * density_at(level)): 160 weights at level 2 keep round(102.4)
    mask = Mask({"x": torch.ones(10, 10, dtype=torch.bool), "y": torch.ones(5, 10, dtype=torch.bool),
                 "out": torch.ones(1, 10, dtype=torch.bool)})
    assert imp_groups(mask, scope="global", rate=0.2, level=2) == {("x", "y", "out"): 102}


def test_cubic_hand_values_start_middle_end():
    s = Cubic(0.1, start=0, end=100, every=10)
    assert s.density_at(0) == 1.0
    assert s.density_at(50) == pytest.approx(1 - (0.9 - 0.9 * 0.5**3))  # 0.2125
    assert s.density_at(25) == pytest.approx(1 - (0.9 - 0.9 * 0.75**3))
    assert s.density_at(100) == pytest.approx(0.1, abs=1e-16) == s.density_at(150)
    assert update_steps(s, range(-5, 200)) == list(range(0, 101, 10))
    later = Cubic(0.1, start=10, end=110, every=20, initial_density=0.8)
    assert later.density_at(5) == later.density_at(10) == 0.8  # the initial density until start
    assert later.density_at(60) == pytest.approx(1 - (0.9 - 0.7 * 0.125))
    assert update_steps(later, range(200)) == [10, 30, 50, 70, 90, 110]


def test_cubic_is_evaluated_in_sparsity_as_stored_gmp_runs_were():
    # density_at(end) is 1 - (1 - d): d itself or one ulp off (0.1 -> 0.09999999999999998)
    for d in (0.1, 0.2, 0.3, 0.05, 0.5, 0.25):
        s = Cubic(d, start=0, end=8, every=2)
        assert s.density_at(8) == 1.0 - (1.0 - d)
        assert math.isclose(s.density_at(8), d, rel_tol=0, abs_tol=1e-16)
        for t in range(9):  # bit for bit the old gmp_sparsity(step, 0, 1 - d, 0, 8)
            old = 1 - d if t >= 8 else (1 - d) + (0.0 - (1 - d)) * (1.0 - t / 8) ** 3
            assert s.density_at(t) == 1.0 - (old if t else 0.0)


def test_cosine_drop_fraction_and_update_steps():
    s = CosineDrop(alpha=0.3, every=10, end=60)
    assert s.drop_fraction(0) == 0.3
    assert s.drop_fraction(10) == pytest.approx(0.15 * (1 + math.sqrt(3) / 2))
    assert s.drop_fraction(30) == pytest.approx(0.15)
    assert s.drop_fraction(60) == 0.0 == s.drop_fraction(70)
    assert update_steps(s, range(101)) == [10, 20, 30, 40, 50]  # not at 0, not at or after end
    with pytest.raises(ScheduleError, match="density"):
        s.density_at(10)
    assert CosineDrop(alpha=0.3, every=10, end=60, density=0.2).density_at(35) == 0.2  # constant
    assert DropGrow("gradient", s).update_steps(100) == 5


def test_annealing_hand_values():
    s = Annealing(0.1, epochs=4)
    assert s.density_at(0) == pytest.approx(0.1 ** 0.25)  # 0.5623
    assert s.density_at(1) == pytest.approx(math.sqrt(0.1))
    assert s.density_at(2) == pytest.approx(0.1 ** 0.75)
    assert s.density_at(3) == 0.1 == s.density_at(9)
    assert update_steps(s, range(-2, 8)) == [0, 1, 2, 3]
    # bit for bit edge-popup's formula density ** ((e + 1) / epochs), also its start density d^(1/E)
    for d, epochs in ((0.1, 4), (0.5, 10), (0.05, 3), (0.3, 1)):
        a = Annealing(d, epochs)
        assert a.density_at(0) == d ** (1 / epochs)
        assert all(a.density_at(e) == d ** ((e + 1) / epochs) for e in range(epochs))
    assert Annealing(0.3, 1).density_at(0) == 0.3
    with pytest.raises(ScheduleError):
        Annealing(0.3, 2).density_at(-1)


# --- invariants ------------------------------------------------------------------------------------
PRUNING = {
    "one_shot": (OneShot(0.05, at=2), 2, 0.05),
    "exponential": (Iterative(0.02, rounds=7), 7, 0.02),
    "linear": (Iterative(0.02, rounds=7, kind="linear"), 7, 0.02),
    "imp": (IMPLevels(0.2, levels=10), 10, 0.8**10),
    "cubic": (Cubic(0.125, start=3, end=33, every=5, initial_density=0.75), 33, 0.125),
    "annealing": (Annealing(0.02, epochs=9), 8, 0.02),
}


@pytest.mark.parametrize("name", list(PRUNING))
def test_pruning_schedules_monotone_and_exact_at_the_end(name):
    s, end, final = PRUNING[name]
    assert isinstance(s, Schedule)
    start = 0
    values = [s.density_at(t) for t in range(start, end + 20)]
    assert all(b <= a for a, b in zip(values, values[1:])), values  # never grows
    assert all(final <= v <= 1.0 for v in values)
    assert s.density_at(end) == final  # exactly the final density at the end ...
    assert all(v == final for v in values[end - start:])  # ... and from then on
    assert s.is_update_step(end)


@pytest.mark.parametrize("name", list(PRUNING))
def test_schedules_are_frozen_and_hashable(name):
    s = PRUNING[name][0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.density = 0.5  # type: ignore[misc]
    assert hash(s) == hash(dataclasses.replace(s))


def test_every_kind_is_registered_and_answers_both_questions():
    assert set(SCHEDULE_KINDS.values()) == {OneShot, Iterative, IMPLevels, Cubic, CosineDrop, Annealing}
    for s in (OneShot(0.5), Iterative(0.5, 2), IMPLevels(0.5), Cubic(0.5, 0, 2, 1), CosineDrop(0.3, 1, 5, 0.5),
              Annealing(0.5, 2)):
        assert isinstance(s, Schedule)
        assert isinstance(s.density_at(1), float) and isinstance(s.is_update_step(1), bool)


@pytest.mark.parametrize("make, match", [
    (lambda: Iterative(0.1, 4, kind="cosine"), "unknown iterative schedule"),
    (lambda: Iterative(0.1, 0), "rounds"),
    (lambda: Iterative(1.5, 3), "density"),
    (lambda: OneShot(0.0), "density"),
    (lambda: IMPLevels(1.0), "rate"),
    (lambda: Cubic(0.5, start=0, end=10, every=3), "multiple"),
    (lambda: Cubic(0.5, start=10, end=10, every=1), "end > start"),
    (lambda: Cubic(0.6, start=0, end=10, every=1, initial_density=0.5), "initial_density"),
    (lambda: CosineDrop(alpha=1.0, every=1, end=10), "alpha"),
    (lambda: CosineDrop(alpha=0.3, every=0, end=10), "every"),
    (lambda: Annealing(0.1, 0), "epochs"),
])
def test_bad_schedules_are_one_clear_error(make, match):
    with pytest.raises(ScheduleError, match=match):
        make()


# --- GMP composed with any distribution -----------------------------------------------------------
DATA = load_dataset("synthetic_mlp", n_train=256, n_test=128, dim=16, num_classes=4, seed=0)  # 8 it / epoch
SHAPES = {"hidden.0.weight": (32, 16), "hidden.2.weight": (16, 32), "fc.weight": (4, 16)}
SIZES = {n: a * b for n, (a, b) in SHAPES.items()}


def make_model(seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("mlp", (16,), 4, hidden=(32, 16))


@pytest.mark.parametrize("distribution", ["erk", "smart", "smart_vgg"])
def test_gradual_magnitude_with_a_layerwise_distribution_lands_on_its_counts(distribution):
    schedule = Cubic(0.1, start=0, end=40, every=8)
    gmp = GradualMagnitude(schedule, distribution=distribution)
    masks: dict[int, Mask] = {}
    model = make_model()
    cfg = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="48it", eval_every="48it")
    trainer = Trainer(model, DATA, cfg, Mask.dense(model), device="cpu",
                      callbacks=[Callback(gmp, every=1),
                                 Callback(lambda t, s: masks.__setitem__(s, Mask(dict(t.mask.items()))), every=1)])
    trainer.train()
    final = layer_counts(distribution, SHAPES, 0.1)
    assert trainer.mask.kept_per_layer() == final  # exactly the distribution's counts at the end
    assert trainer.mask.num_kept == round(0.1 * sum(SIZES.values()))
    assert [e["step"] for e in trainer.history.mask_events] == [0, 8, 16, 24, 32, 40]
    for t in range(8, 41, 8):  # in between: the distribution at the schedule's density, never under the end
        now = layer_counts(distribution, SHAPES, schedule.density_at(t))
        expected = {n: max(final[n], min(now[n], masks[t - 8].kept_per_layer()[n])) for n in SHAPES}
        assert masks[t].kept_per_layer() == expected, t
    for t in range(1, 48):
        assert (masks[t] & ~masks[t - 1]).num_kept == 0, t  # never regrows
    params = dict(model.named_parameters())
    for n, m in trainer.mask.items():
        assert torch.count_nonzero(params[n].detach()[~m]) == 0


def test_gradual_magnitude_rejects_unknown_distribution():
    with pytest.raises(ValueError, match="distribution"):
        GradualMagnitude(Cubic(0.1, 0, 10, 1), distribution="layerwise")


def sparse_config(**kw) -> SparseTrainConfig:
    base = dict(
        data=DataConfig(name="synthetic_mlp", options=dict(n_train=256, n_test=128, dim=16, num_classes=4, seed=0)),
        model=ModelConfig(name="mlp", options={"hidden": [32, 16]}),
        train=TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="4ep", eval_every="1ep"),
        method="gmp", density=0.3, options=GMPOptions(every="4it"))
    base.update(kw)
    return SparseTrainConfig(**base)


def test_run_sparse_training_gmp_with_erk_reaches_erk_counts(tmp_path):
    cfg = sparse_config(distribution="erk")
    store = Store(tmp_path)
    summary = run_sparse_training(cfg, store, device="cpu", progress=False, log=lambda _: None)
    events = store.run(config_hash(cfg)).read_jsonl("train", "mask_events.jsonl")
    erk = layer_counts("erk", SHAPES, 0.3)
    assert [e["step"] for e in events] == list(range(0, 25, 4))  # end = 75% of 32 steps
    assert events[-1]["kept"] == erk
    assert {n: round(d * SIZES[n]) for n, d in summary["layer_density"].items()} == erk
    assert summary["distribution"] == "erk" and summary["kept"] == sum(erk.values())


def test_gmp_accepts_every_distribution_and_the_others_keep_their_choices():
    for distribution in ("global", "uniform", "erk", "smart", "smart_vgg"):
        assert sparse_config(distribution=distribution).effective_distribution == distribution
    assert sparse_config().effective_distribution == "uniform"
    with pytest.raises(ConfigError, match="does not apply to rigl"):
        sparse_config(method="rigl", distribution="global")


def test_cli_sparse_gmp_erk(tmp_path, capsys):
    argv = ["sparse", "--method", "gmp", "--distribution", "erk", "--density", "0.3", "--dataset", "synthetic_mlp",
            "--data-option", "n_train=256", "--data-option", "n_test=128", "--data-option", "dim=16",
            "--model", "mlp", "--model-option", "hidden=[32,16]", "--steps", "2ep", "--batch-size", "32",
            "--gmp-every", "4it", "--no-progress", "--runs-dir", str(tmp_path)]
    assert main(argv) == 0
    report = next(p for p in tmp_path.iterdir() if p.is_dir()) / "report.md"
    assert "| gmp | erk |" in report.read_text()
