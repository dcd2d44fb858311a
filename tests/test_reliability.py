"""Damaged files, OS errors, divergence, devices, concurrent writers, environment records.

Every case checks the outcome a researcher needs: one clear error naming the file or the fix,
nothing lost (the damaged file and every other file untouched), and a rerun that works once the
cause is gone. docs/reliability.md lists these cases with their outcomes.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import ticketlab.atomic as atomic
from ticketlab.cli import main
from ticketlab.config import ConfigError, DataConfig, IMPConfig, ModelConfig, SparseTrainConfig, TrainConfig, \
    config_hash
from ticketlab.experiments.common import MaskViolation, check_pruned_weights
from ticketlab.experiments.imp import run_imp
from ticketlab.experiments.sparse_training import run_sparse_training
from ticketlab.integrity import CorruptFileError, seal_json
from ticketlab.masks import Mask, MaskError
from ticketlab.store import Store, StoreError, load_tensors, save_tensors
from ticketlab.training import DeviceError, DivergenceError, resolve_device

from faults import after_writing, killed_after

DATA = DataConfig(name="synthetic_mlp", val_size=32, options={"n_train": 160, "n_test": 64, "dim": 8})
MODEL = ModelConfig(name="mlp", options={"hidden": [16]})
TRAIN = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="2ep", eval_every="1ep")
IMP = IMPConfig(data=DATA, model=MODEL, train=TRAIN, levels=2, reset="rewind", rewind_step="2it")
CLI_SMALL = ["--dataset", "synthetic_mlp", "--data-option", "n_train=160", "--data-option", "n_test=64",
             "--model", "mlp", "--model-option", "hidden=[16]", "--steps", "2ep", "--batch-size", "32",
             "--levels", "1", "--no-progress"]


def quiet(_: str) -> None:
    pass


def imp(root: Path, cfg: IMPConfig = IMP):
    return run_imp(cfg, Store(root), device="cpu", progress=False, log=quiet)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("index.sqlite", ".lock")}


@pytest.fixture(scope="module")
def complete_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("complete")
    imp(root)
    return root


@pytest.fixture(scope="module")
def interrupted_store(tmp_path_factory):
    """An IMP run killed in the middle of level 1's ticket: holds a checkpoint and a future mask."""
    root = tmp_path_factory.mktemp("interrupted")

    with killed_after(after_writing("checkpoint.safetensors", under="level_01/ticket")):
        imp(root)
    return root


STORED_KINDS = ["config.json", "environment.json", "summary.json", "levels.jsonl", "init.safetensors",
                "rewind.safetensors", "level_01/mask.safetensors", "level_01/random_mask.safetensors",
                "level_00/ticket/final.safetensors", "level_00/ticket/metrics.jsonl", "level_00/ticket/summary.json"]


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) * 2 // 3]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("rel", STORED_KINDS)
def test_a_damaged_file_of_a_complete_run_is_reported_and_nothing_is_lost(complete_store, tmp_path, rel, how):
    root = tmp_path / "store"
    shutil.copytree(complete_store, root)
    run_dir = root / config_hash(IMP)
    _damage(run_dir / rel, how)
    before = files_of(root)
    with pytest.raises(StoreError, match=f"{rel.split('/')[-1]} is corrupt"):
        imp(root)
    assert files_of(root) == before  # the damaged file and everything else untouched
    if rel != "config.json":  # the report reads only what it shows, each file verified
        code = main(["report", run_dir.name, "--runs-dir", str(root), "--out", str(tmp_path / "rep")])
        assert code in (0, 2)
    assert main(["verify", "--runs-dir", str(root)]) == 1
    (run_dir / rel).unlink()  # the user's decision: recompute what the file held
    if rel in ("config.json", "rewind.safetensors"):  # refused: unknown owner; or needs level 0 again
        return
    imp(root)
    assert files_of(root)[f"{run_dir.name}/{rel}"] == files_of(complete_store)[f"{run_dir.name}/{rel}"]


@pytest.mark.parametrize("rel", ["level_01/ticket/checkpoint.safetensors", "level_01/mask.safetensors",
                                 "level_00/ticket/final.safetensors", "levels.jsonl"])
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_file_of_an_interrupted_run_is_never_resumed_from(interrupted_store, tmp_path, rel, how):
    root = tmp_path / "store"
    shutil.copytree(interrupted_store, root)
    run_dir = root / config_hash(IMP)
    assert (run_dir / rel).exists()
    _damage(run_dir / rel, how)
    before = files_of(root)
    with pytest.raises(StoreError, match="is corrupt"):
        imp(root)
    assert files_of(root) == before


def test_verify_command_reports_every_damaged_file(complete_store, tmp_path, capsys):
    root = tmp_path / "store"
    shutil.copytree(complete_store, root)
    assert main(["verify", "--runs-dir", str(root)]) == 0
    assert "all files intact" in capsys.readouterr().out
    run_dir = root / config_hash(IMP)
    _damage(run_dir / "level_02" / "ticket" / "final.safetensors", "flip")
    _damage(run_dir / "levels.jsonl", "truncate")
    assert main(["verify", "--runs-dir", str(root)]) == 1
    out = capsys.readouterr().out
    assert "level_02/ticket/final.safetensors" in out and "levels.jsonl" in out and "2 damaged" in out


def test_a_foreign_safetensors_file_is_refused():
    from safetensors.torch import save

    data = save({"w": torch.ones(3)})  # written by someone else: no checksum
    with pytest.raises(CorruptFileError, match="no checksum"):
        from ticketlab.integrity import verify_safetensors

        verify_safetensors(data, "x.safetensors")
    mask_bytes = Mask({"w": torch.tensor([True, False])}).to_bytes()
    damaged = bytearray(mask_bytes)
    damaged[-1] ^= 1
    with pytest.raises(MaskError, match="does not match its checksum"):
        Mask.from_bytes(bytes(damaged))


def test_tied_weights_save_and_load(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight

    model = Tied()
    save_tensors(tmp_path / "w.safetensors", model.state_dict())
    other = Tied()
    other.load_state_dict(load_tensors(tmp_path / "w.safetensors"))
    assert torch.equal(other.emb.weight, model.emb.weight) and other.out.weight is other.emb.weight


# --- transactions -----------------------------------------------------------------------------------
def test_killed_run_shows_interrupted_and_live_one_running(tmp_path):
    """`ls` tells a run a live process is writing from one whose process was killed (SIGKILL)."""
    root = tmp_path / "store"
    holder = textwrap.dedent(f"""
        import sys, time
        from ticketlab.config import *
        from ticketlab.store import Store
        cfg = IMPConfig(data=DataConfig(name="synthetic_mlp", val_size=32,
                                        options={{"n_train": 160, "n_test": 64, "dim": 8}}),
                        model=ModelConfig(name="mlp", options={{"hidden": [16]}}),
                        train=TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="2ep", eval_every="1ep"),
                        levels=2, reset="rewind", rewind_step="2it")
        store = Store({str(root)!r})
        run = store.open_run(cfg)
        with store.lock(run):
            store.index_run(run, cfg)
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        [row] = Store(root).list()
        assert row["status"] == "running"
        with pytest.raises(StoreError, match="being written by another process"):
            imp(root)  # a second writer on the same run is refused, nothing touched
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [row] = Store(root).list()
    assert row["status"] == "interrupted"
    imp(root)  # the rerun takes over: the dead process's lock is gone with it
    assert Store(root).list()[0]["status"] == "complete"


def test_two_processes_running_different_runs_on_one_store(tmp_path):
    root = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-m", "ticketlab.cli", "imp", *CLI_SMALL, "--seed", str(seed),
                               "--runs-dir", str(root), "--threads", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    rows = Store(root).list()
    assert sorted(r["status"] for r in rows) == ["complete", "complete"]
    assert main(["verify", "--runs-dir", str(root)]) == 0


def test_stale_temp_files_and_finished_checkpoints_are_removed_on_open(complete_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(complete_store, root)
    run_dir = root / config_hash(IMP)
    (run_dir / "level_01" / ".mask.safetensors.abc123.tmp").write_bytes(b"torn")
    shutil.copy(run_dir / "level_01" / "ticket" / "final.safetensors",
                run_dir / "level_01" / "ticket" / "checkpoint.safetensors")
    imp(root)
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob("checkpoint.safetensors"))


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic._FILE_MODE = 0o666 & ~0o027
        atomic.atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
        atomic._FILE_MODE = 0o666 & ~old
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    atomic.atomic_write_text(tmp_path / "b.json", "{}")
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o666 & ~old


# --- OS errors ----------------------------------------------------------------------------------------
def test_read_only_store_lists_but_refuses_to_run(complete_store, tmp_path, monkeypatch, capsys):
    root = tmp_path / "store"
    shutil.copytree(complete_store, root)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK and str(p).startswith(str(root))
                        else real_access(p, mode, **kw))
    assert main(["ls", "--runs-dir", str(root)]) == 0
    assert "complete" in capsys.readouterr().out
    assert main(["verify", "--runs-dir", str(root)]) == 0
    capsys.readouterr()
    assert main(["imp", *CLI_SMALL, "--runs-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert "read-only" in err and "writable --runs-dir" in err and "corrupt" not in err
    assert "Traceback" not in err


def test_full_disk_is_one_message_and_the_rerun_continues(tmp_path, monkeypatch, capsys):
    root = tmp_path / "store"
    original = atomic.atomic_write_bytes
    calls = {"n": 0}

    def full_after_five(path, data):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, data)

    with monkeypatch.context() as mp:
        for module in ("ticketlab.atomic", "ticketlab.store", "ticketlab.masks"):
            mp.setattr(f"{module}.atomic_write_bytes", full_after_five)
        mp.setattr("ticketlab.atomic.atomic_write_text", lambda p, t: full_after_five(p, t.encode()))
        mp.setattr("ticketlab.store.atomic_write_text", lambda p, t: full_after_five(p, t.encode()))
        assert main(["imp", *CLI_SMALL, "--runs-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and "run the same command again" in err
    assert "Traceback" not in err
    assert main(["imp", *CLI_SMALL, "--runs-dir", str(root)]) == 0
    assert main(["verify", "--runs-dir", str(root)]) == 0


def test_unwritable_store_folder_is_one_message(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["imp", *CLI_SMALL, "--runs-dir", str(blocker)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["imp", *CLI_SMALL, "--runs-dir", str(blocker / "sub")]) == 2
    assert "cannot create the store folder" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_without_a_gpu_is_refused_before_the_store_is_touched(tmp_path, capsys):
    assert main(["imp", *CLI_SMALL, "--runs-dir", str(tmp_path / "runs"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible" in err and "--device cpu" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_device_names():
    with pytest.raises(DeviceError, match="not a device name"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("device", ["gpu", "cuda"])
def test_plant_with_a_bad_or_absent_device_says_so_before_the_store_is_touched(device, capsys, tmp_path):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    argv = ["plant", "--tasks", "relu", "--methods", "magnitude", "--kept", "0.5", "--seeds", "1", "--device", device,
            "--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("not a device name" if device == "gpu" else "no CUDA GPU is visible") in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_zero_eval_period_is_a_config_error(capsys, tmp_path):
    with pytest.raises(ConfigError, match="eval_every '0it' is zero"):
        TrainConfig(eval_every="0it")
    assert main(["imp", *CLI_SMALL, "--eval-every", "0it", "--runs-dir", str(tmp_path)]) == 2
    assert "eval_every '0it' is zero" in capsys.readouterr().err


# --- divergence -----------------------------------------------------------------------------------------
def test_a_nan_loss_stops_the_run_loudly_and_nothing_is_complete(tmp_path, capsys):
    root = tmp_path / "store"
    cfg = SparseTrainConfig(data=DATA, model=MODEL, method="static", density=0.5,
                            train=TrainConfig(optimizer="sgd", lr=1e30, batch_size=32, steps="2ep", eval_every="1ep"))
    with pytest.raises(DivergenceError, match=r"training diverged .* of train: .*lower learning rate \(now 1e\+30\)"):
        run_sparse_training(cfg, Store(root), device="cpu", progress=False, log=quiet)
    run_dir = root / config_hash(cfg)
    assert not (run_dir / "summary.json").exists() and not (run_dir / "train" / "summary.json").exists()
    assert Store(root).list()[0]["status"] == "diverged"
    code = main(["sparse", "--dataset", "synthetic_mlp", "--data-option", "n_train=160", "--data-option",
                 "n_test=64", "--model", "mlp", "--model-option", "hidden=[16]", "--steps", "2ep", "--batch-size",
                 "32", "--method", "static", "--density", "0.5", "--optimizer", "sgd", "--lr", "1e30",
                 "--runs-dir", str(root), "--no-progress"])
    assert code == 3
    assert "training diverged" in capsys.readouterr().err


def test_guard_finds_pruned_weights_that_are_not_zero():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    mask = Mask({"0.weight": torch.rand(3, 4) > 0.5, "2.weight": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(MaskViolation, match="not zero after training"):
        check_pruned_weights(model, mask, "unit")
    mask.apply_(model)
    check_pruned_weights(model, mask, "unit")
    with pytest.raises(MaskViolation, match="density 0.1 was asked"):
        check_pruned_weights(model, mask, "unit", expected_density=0.1)


# --- environment ---------------------------------------------------------------------------------------
def test_threads_and_versions_are_recorded_and_a_different_resume_warns(complete_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(complete_store, root)
    run_dir = root / config_hash(IMP)
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["first_session"]["threads"] == torch.get_num_threads()
    assert env["first_session"]["torch"] == torch.__version__
    first = {k: v for k, v in env.items() if k != "_sha256"}
    first["first_session"] = {**first["first_session"], "threads": 7}
    (run_dir / "environment.json").write_text(seal_json(first))
    with pytest.warns(RuntimeWarning, match="threads 7 -> 1"):
        imp(root)
    later = json.loads((run_dir / "environment.json").read_text())["later_sessions"]
    assert later and later[0]["threads"] == torch.get_num_threads()


def test_early_bird_search_counts_the_steps_it_trained(tmp_path):
    """The search stops at the draw: its training FLOPs count the steps trained, not the schedule."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_fault_injection import PROCEDURES

    store = Store(tmp_path)
    summary = PROCEDURES["early-bird"](store)
    [run] = store.runs()
    search = run.read_json("search", "summary.json")
    assert search["final_step"] == summary["drawn_epoch"] * 4 < 5 * 4  # 128 samples / batch 32 = 4 it per epoch
    assert search["unit_training_flops"] == 3 * search["forward_flops"] * search["final_step"] * 32
    assert search["dense_run_training_flops"] == 3 * search["forward_flops_dense"] * 5 * 4 * 32


def _strip_checksums(root: Path) -> None:
    """Turn a store into one written before checksums existed (as ticketlab 0.1 wrote it)."""
    from ticketlab.integrity import CHECKSUM_KEY, _join_safetensors, _split_safetensors

    for path in root.rglob("*"):
        if path.suffix == ".json":
            obj = json.loads(path.read_text())
            obj.pop(CHECKSUM_KEY)
            path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        elif path.suffix == ".jsonl":
            path.write_bytes(b"".join(line + b"\n" for line in path.read_bytes().splitlines()[:-1]))
        elif path.suffix == ".safetensors":
            header, body = _split_safetensors(path.read_bytes(), path)
            header["__metadata__"].pop(CHECKSUM_KEY)
            if not header["__metadata__"]:
                header.pop("__metadata__")
            path.write_bytes(_join_safetensors(header, body))


def test_a_store_from_before_checksums_is_refused_then_upgraded_and_reused(complete_store, tmp_path, capsys):
    root = tmp_path / "store"
    shutil.copytree(complete_store, root)
    _strip_checksums(root)
    with pytest.raises(StoreError, match="ticketlab migrate"):
        imp(root)
    assert main(["migrate", "--runs-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{config_hash(IMP)}  " in out and "file(s) sealed, 0 already sealed" in out and "all files sealed" in out
    assert files_of(root) == files_of(complete_store)  # the very bytes ticketlab writes today
    [entry] = Store(root).upgrade().values()
    assert entry["sealed"] == [] and entry["problems"] == [] and entry["intact"] == len(files_of(root))
    imp(root)  # complete: nothing recomputed


def test_upgrade_reports_a_legacy_file_that_does_not_parse(complete_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(complete_store, root)
    _strip_checksums(root)
    bad = root / config_hash(IMP) / "level_01" / "ticket" / "metrics.jsonl"
    bad.write_bytes(bad.read_bytes()[:-7])
    [entry] = Store(root).upgrade().values()
    assert len(entry["problems"]) == 1 and "metrics.jsonl" in entry["problems"][0]
    assert bad.read_bytes().endswith(b"\n") is False  # left as it was
