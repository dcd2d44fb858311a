"""The contract every registered pruning method keeps, tested over the registries themselves.

For every registered score x every selection (global and each registered distribution) x layer kind
(Linear, Conv, grouped + depthwise Conv) x density: the mask keeps exactly the asked number of
weights (per layer where a distribution fixes the layers), the same seed gives the same mask, and
pruned weights stay exactly zero through training. Every score also runs as a stored prune-at-init
experiment that is killed mid-training and resumed to the uninterrupted result. A method that
registers itself is tested here without a line of new test code.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ticketlab.config import DataConfig, ModelConfig, PruneAtInitConfig, TrainConfig
from ticketlab.data import ArrayData, DataSplits
from ticketlab.experiments.prune_at_init import run_prune_at_init
from ticketlab.masks import Mask
from ticketlab.models.registry import MODELS, register_model
from ticketlab.pruning.distributions import DISTRIBUTIONS, layer_counts, shapes_of
from ticketlab.pruning.prune import prune
from ticketlab.pruning.scores import SCORES, ScoreSource
from ticketlab.store import Store
from ticketlab.training import Trainer

from faults import after_writing, killed_after

SELECTIONS = ["global", *DISTRIBUTIONS]
DENSITIES = [0.5, 0.1, 0.02]


def linear_net(input_shape, num_classes) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 32), nn.ReLU(),
                         nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, num_classes))


def conv_net(input_shape, num_classes) -> nn.Module:
    c = input_shape[0]
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, num_classes))


def grouped_conv_net(input_shape, num_classes) -> nn.Module:
    c = input_shape[0]
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.ReLU(),       # grouped
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),     # depthwise
                         nn.Conv2d(16, 16, 1), nn.ReLU(),                           # pointwise
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


LAYER_KINDS = {"linear": linear_net, "conv": conv_net, "grouped_conv": grouped_conv_net}
for _kind, _factory in LAYER_KINDS.items():
    if f"contract_{_kind}" not in MODELS:
        register_model(f"contract_{_kind}")(_factory)

INPUT_SHAPE, CLASSES = (3, 8, 8), 4


def data(seed: int = 0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(96, *INPUT_SHAPE, generator=g), torch.randint(0, CLASSES, (96,), generator=g)
    return DataSplits(name="contract", train=ArrayData(x[:64], y[:64]), test=ArrayData(x[64:], y[64:]),
                      num_classes=CLASSES,
                      input_shape=INPUT_SHAPE)


def model_of(kind: str, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LAYER_KINDS[kind](INPUT_SHAPE, CLASSES)


def source(seed: int = 0) -> ScoreSource:
    d = data(seed)
    batches = [(d.train.x[:32], d.train.y[:32])]
    return ScoreSource(batches=lambda: batches, input_shape=INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


def pruned(method: str, kind: str, selection: str, density: float) -> tuple[nn.Module, Mask, Mask]:
    model = model_of(kind)
    dense = Mask.dense(model)
    mask = prune(method, model, dense, source(), density, distribution=selection, on_collapse="ignore")
    return model, dense, mask


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("method", sorted(SCORES))
def test_every_score_and_selection_keeps_exact_counts_and_is_deterministic(method, selection, kind, density):
    model, dense, mask = pruned(method, kind, selection, density)
    assert list(mask) == list(dense)
    assert all(mask[n].shape == dense[n].shape for n in dense)
    if selection == "global":
        assert mask.num_kept == round(density * dense.num_total)
    else:
        assert mask.kept_per_layer() == layer_counts(selection, shapes_of(dense), density)
    assert pruned(method, kind, selection, density)[2] == mask  # same seed, same mask


@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
@pytest.mark.parametrize("method", sorted(SCORES))
def test_pruned_weights_stay_zero_through_training(method, kind):
    model, _, mask = pruned(method, kind, "erk", 0.1)
    cfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=16, steps="8it",
                      eval_every="4it")
    trainer = Trainer(model, data(), cfg, mask, device="cpu", seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    params = dict(model.named_parameters())
    for name in mask:
        assert torch.count_nonzero(params[name][~mask[name]]) == 0, name
        assert not torch.equal(params[name][mask[name]], before[name][mask[name]]), f"{name} did not train"


@pytest.mark.parametrize("method", sorted(SCORES))
def test_every_score_as_a_stored_run_resumes_identically_after_a_kill(method, tmp_path):
    cfg = PruneAtInitConfig(
        data=DataConfig(name="synthetic_images", options={"n_train": 64, "n_test": 32, "shape": list(INPUT_SHAPE)}),
        model=ModelConfig(name="contract_grouped_conv"),
        train=TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, steps="3ep", eval_every="1ep"),
        method=method, density=0.1, distribution="erk", rounds=2)

    def run(root):
        return run_prune_at_init(cfg, Store(root), device="cpu", progress=False, log=lambda _: None)

    clean = run(tmp_path / "clean")

    with killed_after(after_writing("checkpoint.safetensors")):
        run(tmp_path / "killed")
    resumed = run(tmp_path / "killed")
    timing = ("prune_seconds",)
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in clean.items() if k not in timing}
    [a], [b] = (list((tmp_path / d).glob("*/train/final.safetensors")) for d in ("clean", "killed"))
    assert a.read_bytes() == b.read_bytes()
    [ma], [mb] = (list((tmp_path / d).glob("*/mask.safetensors")) for d in ("clean", "killed"))
    assert ma.read_bytes() == mb.read_bytes()
    metrics = [json.loads(line) for line in (b.parent / "metrics.jsonl").read_text().splitlines()[:-1]]
    assert [r["step"] for r in metrics] == [0, 4, 8, 12]


# --- sparse training methods --------------------------------------------------------------------------
SPARSE = {m: m for m in __import__("ticketlab.config", fromlist=["SPARSE_METHODS"]).SPARSE_METHODS}


@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
@pytest.mark.parametrize("method", sorted(SPARSE))
def test_every_sparse_method_keeps_its_counts_and_resumes_identically(method, kind, tmp_path):
    from ticketlab.config import SparseTrainConfig
    from ticketlab.experiments.sparse_training import run_sparse_training
    from ticketlab.pruning.dynamic import DropGrowOptions, GMPOptions

    cfg = SparseTrainConfig(
        data=DataConfig(name="synthetic_images", options={"n_train": 64, "n_test": 32, "shape": list(INPUT_SHAPE)}),
        model=ModelConfig(name=f"contract_{kind}"),
        train=TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, steps="3ep", eval_every="1ep"),
        method=method, density=1.0 if method == "dense" else 0.2,
        options={"set": DropGrowOptions(delta_t=2), "rigl": DropGrowOptions(delta_t=2),
                 "gmp": GMPOptions(every="2it", end="8it")}.get(method))

    def run(root):
        return run_sparse_training(cfg, Store(root), device="cpu", progress=False, log=lambda _: None)

    clean = run(tmp_path / "clean")
    [final] = list((tmp_path / "clean").glob("*/train/final.safetensors"))
    from ticketlab.store import load_tensors

    weights = load_tensors(final)
    dense = Mask.ones({n: weights[n] for n in Mask.dense(model_of(kind))})  # the data set's class count
    kept = Mask.from_nonzero({n: weights[n] for n in dense})
    if method == "dense":
        assert kept.num_kept == dense.num_total
    elif method == "gmp":  # dense to sparse, each layer to the final density by the end (uniform)
        for name, k in kept.kept_per_layer().items():
            assert abs(k - 0.2 * dense[name].numel()) <= 1, name
        assert clean["density"] == kept.density
    else:  # static, SET, RigL keep ERK's counts in every layer (grown weights start at exactly 0)
        final_counts = {n: round(d * dense[n].numel()) for n, d in clean["layer_density"].items()}
        assert final_counts == layer_counts("erk", shapes_of(dense), 0.2)
        assert all(kept[n].sum() <= final_counts[n] for n in dense)

    with killed_after(after_writing("checkpoint.safetensors")):
        run(tmp_path / "killed")
    assert run(tmp_path / "killed") == clean
    [again] = list((tmp_path / "killed").glob("*/train/final.safetensors"))
    assert again.read_bytes() == final.read_bytes()


# --- schedules x distributions ------------------------------------------------------------------------------
@pytest.mark.parametrize("selection", DISTRIBUTIONS)
@pytest.mark.parametrize("kind", sorted(__import__("ticketlab.pruning.schedules", fromlist=["x"]).SCHEDULE_KINDS))
def test_every_schedule_with_every_distribution(kind, selection):
    """Any schedule composes with any distribution: at every update step the per-layer counts are
    exact for the schedule's density; densities never rise and end where the schedule says."""
    from ticketlab.pruning.schedules import SCHEDULE_KINDS

    schedule = SCHEDULE_KINDS[kind].example()
    assert hash(schedule) == hash(SCHEDULE_KINDS[kind].example())  # frozen, comparable, hashable
    horizon = 200
    densities = [schedule.density_at(t) for t in range(horizon + 1)]
    assert all(0 < d <= 1 for d in densities)
    assert all(b <= a for a, b in zip(densities, densities[1:])), "a pruning schedule never adds weights back"
    final = getattr(schedule, "density", None)
    if final is None:  # IMP levels: (1 - rate) ** levels after the last level
        final = (1 - schedule.rate) ** schedule.levels
        densities[-1] = schedule.density_at(schedule.levels)
    assert densities[-1] == pytest.approx(final, rel=1e-12)
    updates = [t for t in range(horizon + 1) if schedule.is_update_step(t)]
    assert updates, f"{kind} never updates within {horizon} steps"
    shapes = shapes_of(Mask.dense(model_of("grouped_conv")))
    total = sum(torch.Size(s).numel() for s in shapes.values())
    for t in updates:
        counts = layer_counts(selection, shapes, schedule.density_at(t))
        assert sum(counts.values()) == round(schedule.density_at(t) * total)
        assert all(0 <= counts[n] <= torch.Size(shapes[n]).numel() for n in shapes)


# --- IMP reset actions ------------------------------------------------------------------------------
from ticketlab.experiments.resets import RESETS  # noqa: E402


@pytest.mark.parametrize("reset", sorted(RESETS))
def test_every_registered_reset_runs_an_imp_level_and_keeps_the_imp_count(reset, tmp_path):
    """Each registered reset (``experiments/resets.py``) trains one IMP level with both baselines; the
    stored level mask keeps IMP's count, and the pruned weights of every trained unit stay zero."""
    from ticketlab.config import IMPConfig, config_hash
    from ticketlab.experiments.imp import run_imp
    from ticketlab.pruning.magnitude import imp_groups
    from ticketlab.store import load_tensors

    r = RESETS[reset]
    cfg = IMPConfig(
        data=DataConfig(name="synthetic_images", options={"n_train": 64, "n_test": 32, "shape": list(INPUT_SHAPE)}),
        model=ModelConfig(name="contract_conv"),
        train=TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, steps="2ep", eval_every="1ep"),
        levels=1, reset=reset, rewind_step="2it" if r.needs_rewind_point or r.starts_at_rewind_step else "0it",
        baselines=("reinit", "random"))
    store = Store(tmp_path)
    rows = run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    assert [(row["level"], row["branch"]) for row in rows] == [(0, "ticket"), (1, "ticket"), (1, "reinit"),
                                                               (1, "random")]
    run = store.run(config_hash(cfg))
    mask = Mask.load(run.file("level_01", "mask.safetensors"), require_checksum=True)
    dense = Mask.ones(dict(mask))  # the layout of the run's model (the data set sets its class count)
    assert mask.num_kept == sum(imp_groups(dense, scope="global", rate=0.2, level=1).values())
    for branch in ("ticket", "reinit"):
        final = load_tensors(run.file("level_01", branch, "final.safetensors"))
        assert all(int((final[n][~keep] != 0).sum()) == 0 for n, keep in mask.items()), branch


# --- IMP mask criteria -------------------------------------------------------------------------------
from ticketlab.pruning.criteria import CRITERIA  # noqa: E402


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_registered_criterion_runs_imp_with_exact_nested_counts(criterion, tmp_path):
    """Each registered mask criterion (``pruning/criteria.py``) prunes two IMP levels: every level keeps
    IMP's exact count in each group (layer-wise, output layer at its own rate), its mask is within the
    previous level's (nothing revived), rebuilding it from the stored weights gives the same mask, and the
    pruned weights of the trained ticket stay zero."""
    from ticketlab.config import IMPConfig, PruneConfig, config_hash
    from ticketlab.experiments.imp import derived_seed, run_imp
    from ticketlab.pruning.criteria import imp_prune_by
    from ticketlab.pruning.magnitude import imp_groups
    from ticketlab.store import load_tensors

    prune = PruneConfig(rate=0.3, scope="layerwise", output_rate=0.15, criterion=criterion)
    cfg = IMPConfig(
        data=DataConfig(name="synthetic_images", options={"n_train": 64, "n_test": 32, "shape": list(INPUT_SHAPE)}),
        model=ModelConfig(name="contract_conv"),
        train=TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, steps="1ep", eval_every="1ep"),
        prune=prune, levels=2, baselines=())
    store = Store(tmp_path)
    run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
    run = store.run(config_hash(cfg))
    init = load_tensors(run.file("init.safetensors"))
    previous = None
    for level in (1, 2):
        mask = Mask.load(run.file(f"level_{level:02d}", "mask.safetensors"), require_checksum=True)
        dense = Mask.ones(dict(mask))
        output = list(mask)[-1]
        previous = dense if previous is None else previous
        for names, count in imp_groups(dense, scope="layerwise", rate=0.3, level=level, output_name=output,
                                       output_rate=0.15).items():
            assert sum(int(mask[n].sum()) for n in names) == count, (names, level)
        assert (mask & ~previous).num_kept == 0
        final = load_tensors(run.file(f"level_{level - 1:02d}", "ticket", "final.safetensors"))
        again = imp_prune_by(criterion, init, final, previous, level=level, rate=0.3, scope="layerwise",
                             output_name=output, output_rate=0.15,
                             generator=torch.Generator().manual_seed(derived_seed(cfg.seed, "criterion", level)))
        assert again == mask
        trained = load_tensors(run.file(f"level_{level:02d}", "ticket", "final.safetensors"))
        assert all(int((trained[n][~keep] != 0).sum()) == 0 for n, keep in mask.items())
        previous = mask


def test_every_stored_procedure_is_in_the_fault_injection_suite():
    """Each command that writes runs into the store is killed at every write boundary and rerun in
    tests/test_fault_injection.py: a new procedure cannot land without that coverage."""
    import argparse
    import sys
    from pathlib import Path

    from ticketlab.cli import build_parser

    sys.path.insert(0, str(Path(__file__).parent))
    from test_fault_injection import PROCEDURES

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    storing = {name for name, p in sub.choices.items()
               if any("--runs-dir" in a.option_strings for a in p._actions)
               and name not in ("ls", "report", "verify", "migrate", "demo",
                                "lr-contrast",  # stores nothing but ordinary imp runs
                                "sweep",  # ordinary runs of the other commands (killed workers: test_sweep)
                                "export")}  # reads a run; writes a folder of its own, replaced whole (test_export)
    assert storing and storing <= set(PROCEDURES), storing - set(PROCEDURES)
