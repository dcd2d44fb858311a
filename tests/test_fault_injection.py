"""Fault injection: a kill at every file-write boundary of every procedure, then a rerun.

Each procedure is first run uninterrupted while every write boundary is recorded: the moment a
file's temp copy is complete but not yet renamed into place (a kill there leaves a stray, torn temp
file behind, as a real SIGKILL would), the moment right after the rename, and every update of the
SQLite index. Then, for each boundary, a fresh store is killed exactly there and the same command
is run again; the rerun must end with a run folder identical to the uninterrupted one (timing
fields aside), with no temp file or checkpoint left behind.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ticketlab.atomic as atomic
from ticketlab.config import (DataConfig, EarlyBirdConfig, IMPConfig, ModelConfig, PruneAtInitConfig,
                              SparseTrainConfig, SupermaskConfig, TrainConfig, config_hash)
from ticketlab.experiments.deconstruct import DeconstructConfig, run_deconstruct
from ticketlab.experiments.early_bird import run_early_bird
from ticketlab.experiments.imp import run_imp, run_imp_seeds
from ticketlab.experiments.prune_at_init import run_prune_at_init, run_prune_at_init_seeds
from ticketlab.experiments.stacked import stacked_train
from ticketlab.experiments.sparse_training import run_sparse_training
from ticketlab.experiments.strong import StrongConfig, run_strong
from ticketlab.experiments.supermask import run_supermask
from ticketlab.experiments.transfer import TransferConfig, run_transfer
from ticketlab.experiments.tropical import TropicalConfig, run_tropical
from ticketlab.planting.benchmark import Protocol
from ticketlab.planting.study import run_study
from ticketlab.pruning.dynamic import DropGrowOptions
from ticketlab.pruning.genetic import GAOptions
from ticketlab.store import Store

from faults import Kill, timing_free

MLP_DATA = DataConfig(name="synthetic_mlp", val_size=32, options={"n_train": 160, "n_test": 64, "dim": 8})
MLP = ModelConfig(name="mlp", options={"hidden": [16]})
SHORT = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="2ep", eval_every="1ep")


def quiet(_: str) -> None:
    pass


PLANT_TINY = Protocol(depth=3, width=8, samples=200, epochs=1, multishot_rounds=2, multishot_epochs=1)
DECONSTRUCT_SOURCE = IMPConfig(data=MLP_DATA, model=MLP, train=SHORT, levels=0, baselines=())
TRANSFER_SOURCE = IMPConfig(data=MLP_DATA, model=MLP, train=SHORT, levels=1, baselines=())
PROCEDURES: dict[str, Callable[[Store], Any]] = {
    "imp": lambda store: run_imp(IMPConfig(data=MLP_DATA, model=MLP, train=SHORT, levels=2, reset="rewind",
                                           rewind_step="2it", baselines=("reinit", "random")),
                                 store, device="cpu", progress=False, log=quiet),
    "prune": lambda store: run_prune_at_init(PruneAtInitConfig(data=MLP_DATA, model=MLP, train=SHORT, method="synflow",
                                                               density=0.2, rounds=3, sanity="shuffle"),
                                             store, device="cpu", progress=False, log=quiet),
    # --seeds: two seeds' runs trained as one stacked model (a rerun trains what is left, in smaller stacks)
    "imp-seeds": lambda store: run_imp_seeds(
        [IMPConfig(data=MLP_DATA, model=MLP, train=stacked_train(SHORT), levels=1, reset="rewind", rewind_step="2it",
                   baselines=("random",), seed=seed) for seed in (0, 1)],
        store, device="cpu", progress=False, log=quiet),
    "prune-seeds": lambda store: run_prune_at_init_seeds(
        [PruneAtInitConfig(data=MLP_DATA, model=MLP, train=stacked_train(SHORT), method="snip", density=0.2,
                           seed=seed) for seed in (0, 1)],
        store, device="cpu", progress=False, log=quiet),
    "sparse": lambda store: run_sparse_training(SparseTrainConfig(data=MLP_DATA, model=MLP, train=SHORT, method="rigl",
                                                                  density=0.3, options=DropGrowOptions(delta_t=2)),
                                                store, device="cpu", progress=False, log=quiet),
    "early-bird": lambda store: run_early_bird(
        EarlyBirdConfig(data=DataConfig(name="synthetic_mlp", options={"n_train": 128, "n_test": 32, "dim": 8}),
                        model=MLP, train=TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=32,
                                                     steps="5ep", eval_every="2ep"),
                        kind="unstructured", window=2, epsilon=0.5, prune_ratio=0.5),
        store, device="cpu", progress=False, log=quiet),
    "supermask": lambda store: run_supermask(
        SupermaskConfig(data=DataConfig(name="synthetic_mlp", options={"n_train": 128, "n_test": 32, "dim": 8}),
                        model=MLP, train=TrainConfig(optimizer="sgd", lr=100.0, momentum=0.9, batch_size=32,
                                                     steps="2ep", eval_every="1ep", fused_optimizer=False),
                        eval_samples=3),
        store, device="cpu", progress=False, log=quiet),
    "strong": lambda store: run_strong(
        StrongConfig(data=DataConfig(name="moons", options={"n_train": 128, "n_test": 32}), hidden=(6,), seeds=(0,),
                     ga=GAOptions(population=8, min_generations=2, patience=2, max_generations=4), epochs=1,
                     batch_size=32, baseline_densities=()),
        store, device="cpu", progress=False, log=quiet),
    "plant": lambda store: run_study(["relu"], ["magnitude"], [0.5], [0], PLANT_TINY, store, workers=1, log=quiet),
    "deconstruct": lambda store: (
        run_imp(DECONSTRUCT_SOURCE, store, device="cpu", progress=False, log=quiet),
        run_deconstruct(DeconstructConfig(source=config_hash(DECONSTRUCT_SOURCE), criteria=("large_final", "random"),
                                          mask0=("zero", "frozen_init"), kept=(0.3,)),
                        store, device="cpu", progress=False, log=quiet)),
    "transfer": lambda store: (
        run_imp(TRANSFER_SOURCE, store, device="cpu", progress=False, log=quiet),
        run_transfer(TransferConfig(source=config_hash(TRANSFER_SOURCE), levels=(1,), data=DataConfig(
            name="synthetic_mlp", options={"n_train": 96, "n_test": 32, "dim": 8, "num_classes": 3, "seed": 5})),
                     store, device="cpu", progress=False, log=quiet)),
    "tropical": lambda store: run_tropical(TropicalConfig(samples=64, hidden=6, kept=(0.5,), seeds=(0,), train=SHORT),
                                           store, device="cpu", progress=False, log=quiet),
}


def _boundaries(monkeypatch, kill_at: int | None) -> list[tuple[str, str]]:
    """Install hooks that record every write boundary and raise Kill at boundary ``kill_at``."""
    seen: list[tuple[str, str]] = []

    def reached(event: str, name: str) -> None:
        seen.append((event, name))
        if kill_at is not None and len(seen) - 1 == kill_at:
            raise Kill(f"{event} {name}")

    def hook(event: str, tmp: Path, path: Path) -> None:
        if event == "before_rename" and kill_at is not None and len(seen) == kill_at:
            torn = tmp.with_name(tmp.name[:-len(".tmp")] + "killed.tmp")  # what a kill mid-write leaves
            torn.write_bytes(tmp.read_bytes()[: max(1, tmp.stat().st_size // 2)])
        reached(event, path.name)

    original_update = Store.update

    def update(self, run_hash, **fields):
        reached("index", str(fields.get("status", "summary")))
        return original_update(self, run_hash, **fields)

    monkeypatch.setattr(atomic, "fault_hook", hook)
    monkeypatch.setattr(Store, "update", update)
    return seen


def snapshot(root: Path) -> dict[str, Any]:
    """Every stored file's content, comparable across runs (timing fields and checksums aside)."""
    from safetensors.torch import load

    from ticketlab.integrity import verify_safetensors

    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name in ("index.sqlite", ".lock"):
            continue
        rel = str(path.relative_to(root))
        data = path.read_bytes()
        if path.suffix == ".json":
            out[rel] = timing_free(json.loads(data))
        elif path.suffix == ".jsonl":
            out[rel] = timing_free([json.loads(line) for line in data.splitlines() if line.strip()])
        elif path.suffix == ".safetensors":
            meta = verify_safetensors(data, path)
            out[rel] = ({k: v.numpy().tobytes() for k, v in load(data).items()}, timing_free(meta))
        else:
            out[rel] = data
    return out


def index_of(root: Path) -> list[tuple]:
    """The index's rows by hash: ``Store.list`` orders by creation time (to the second), which a kill
    and a rerun change (a batch of plant cells opens its runs within one second)."""
    return sorted((r["hash"], r["status"], timing_free(r["summary"])) for r in Store(root).list())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each procedure run once without faults: its snapshot, index rows and write boundaries."""
    results = {}
    mp = pytest.MonkeyPatch()
    try:
        for name, procedure in PROCEDURES.items():
            root = tmp_path_factory.mktemp(f"clean-{name}")
            seen = _boundaries(mp, None)
            procedure(Store(root))
            results[name] = (snapshot(root), list(seen), index_of(root))
    finally:
        mp.undo()
    return results


@pytest.mark.parametrize("name", list(PROCEDURES))
def test_kill_at_every_write_boundary_then_rerun_gives_the_uninterrupted_result(name, uninterrupted, tmp_path,
                                                                                monkeypatch):
    expected, boundaries, index_rows = uninterrupted[name]
    assert len(boundaries) > 10, boundaries  # the procedure really writes through the hooked paths
    for k, (event, file) in enumerate(boundaries):
        root = tmp_path / f"kill-{k}"
        with monkeypatch.context() as mp:
            _boundaries(mp, k)
            with pytest.raises(Kill):
                PROCEDURES[name](Store(root))
        PROCEDURES[name](Store(root))  # the rerun, no faults
        assert not list(root.rglob("*.tmp")), f"kill at {event} {file}: temp files left"
        assert not list(root.rglob("checkpoint.safetensors")), f"kill at {event} {file}: checkpoints left"
        got = snapshot(root)
        assert sorted(got) == sorted(expected), f"kill at {event} {file}: files differ"
        for rel in expected:
            assert got[rel] == expected[rel], f"kill at boundary {k} ({event} {file}): {rel} differs"
        assert index_of(root) == index_rows, f"kill at boundary {k} ({event} {file}): index differs"


def test_a_rerun_of_a_complete_run_rewrites_nothing(tmp_path):
    PROCEDURES["imp"](Store(tmp_path))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*")
              if p.is_file() and p.name not in ("index.sqlite", ".lock")}
    PROCEDURES["imp"](Store(tmp_path))
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*")
             if p.is_file() and p.name not in ("index.sqlite", ".lock")}
    assert after == before


def test_plant_killed_at_each_output_write_reruns_to_the_same_outputs(tmp_path, monkeypatch):
    """``ticketlab plant``: a kill at any of its writes (cells in the store, the report), then the
    same command, gives the same rows and tables as an uninterrupted run in a store of its own."""
    from ticketlab.cli import main

    argv = ["plant", "--tasks", "relu", "--methods", "magnitude", "--kept", "0.5", "--seeds", "1", "--depth", "3",
            "--width", "8", "--epochs", "1", "--workers", "1", "--no-progress"]
    clean = tmp_path / "clean"
    seen = _boundaries(monkeypatch, None)
    assert main([*argv, "--out", str(clean), "--runs-dir", str(tmp_path / "runs-clean")]) == 0
    writes = [b for b in seen if b[0] != "index"]
    assert len(writes) >= 4
    for k in range(len(seen)):
        out = tmp_path / f"kill-{k}"
        with monkeypatch.context() as mp:
            _boundaries(mp, k)
            with pytest.raises(Kill):
                main([*argv, "--out", str(out), "--runs-dir", str(tmp_path / f"runs-{k}")])
        assert main([*argv, "--out", str(out), "--runs-dir", str(tmp_path / f"runs-{k}")]) == 0
        rows = lambda folder: timing_free(json.loads((folder / "rows.json").read_text()))  # noqa: E731
        assert rows(out) == rows(clean)
        strip = lambda text: "\n".join(line for line in text.splitlines() if " cells in " not in line)  # noqa: E731
        assert strip((out / "report.md").read_text()) == strip((clean / "report.md").read_text())
        assert not list(out.rglob("*.tmp"))
        shutil.rmtree(out)
