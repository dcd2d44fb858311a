"""--log tensorboard (issue 21): every training unit's evaluation records as TensorBoard event files
under RUN/tensorboard/UNIT/, with the run's hash and results unchanged, ``ticketlab verify``
passing, a resumed unit appending from its resume step, and a clear error without the package."""
from __future__ import annotations

import shutil
import sys

import pytest

from faults import after_writing, killed_after
from ticketlab import tensorboard
from ticketlab.cli import main
from ticketlab.store import Store

ARGV = ["prune", "--dataset", "synthetic_mlp", "--data-option", "n_train=128", "--data-option", "n_test=32",
        "--data-option", "dim=8", "--model", "mlp", "--model-option", "hidden=[16]", "--batch-size", "32",
        "--val-size", "32", "--steps", "4ep", "--eval-every", "1ep", "--method", "snip", "--density", "0.3", "--no-progress",
        "--threads", "1"]
STEPS = [0, 3, 6, 9, 12]  # 96 training examples: 3 iterations per epoch, an evaluation per epoch


@pytest.fixture(autouse=True)
def _off():
    yield
    tensorboard.enable(False)  # the CLI's switch is per process: leave it off for the other tests


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _only_run(store: Store):
    [run] = store.runs()
    return run


def test_event_files_hold_every_evaluation_and_change_nothing(tmp_path):
    pytest.importorskip("tensorboard")
    assert main([*ARGV, "--runs-dir", str(tmp_path / "plain")]) == 0
    assert main([*ARGV, "--runs-dir", str(tmp_path / "logged"), "--log", "tensorboard"]) == 0
    plain, logged = _only_run(Store(tmp_path / "plain")), _only_run(Store(tmp_path / "logged"))
    assert plain.hash == logged.hash
    assert not (plain.path / "tensorboard").exists()
    for parts in (("train", "summary.json"), ("summary.json",)):  # summary.json also lists the run's files
        untimed = [{k: v for k, v in r.read_json(*parts).items() if not k.endswith("seconds")}  # wall-clock times
                   for r in (plain, logged)]
        assert untimed[0] == untimed[1]
    assert plain.read_jsonl("train", "metrics.jsonl") == logged.read_jsonl("train", "metrics.jsonl")

    folder = logged.path / "tensorboard" / "train"
    assert any(p.name.startswith("events.out.tfevents") for p in folder.iterdir())
    scalars = _scalars(folder)
    records = logged.read_jsonl("train", "metrics.jsonl")
    assert [s for s, _ in scalars["test_accuracy"]] == [r["step"] for r in records] == STEPS
    assert [v for _, v in scalars["test_accuracy"]] == pytest.approx([r["test_accuracy"] for r in records], abs=1e-6)
    for tag in ("test_loss", "val_loss", "val_accuracy", "density", "train_loss", "lr"):
        assert tag in scalars, tag
    assert [s for s, _ in scalars["train_loss"]] == STEPS[1:]

    assert main(["verify", "--runs-dir", str(tmp_path / "logged")]) == 0
    assert logged.verify() == []
    shutil.rmtree(logged.path / "tensorboard")  # optional files: deleting them leaves the run complete
    assert logged.complete_summary() is not None


def test_a_resumed_unit_appends_from_its_resume_step(tmp_path):
    pytest.importorskip("tensorboard")
    runs = str(tmp_path / "runs")
    with killed_after(after_writing("checkpoint.safetensors", under="train")):  # killed after step 3's checkpoint
        main([*ARGV, "--runs-dir", runs, "--log", "tensorboard"])
    run = _only_run(Store(runs))
    assert [s for s, _ in _scalars(run.path / "tensorboard" / "train")["test_accuracy"]] == STEPS[:2]
    assert main([*ARGV, "--runs-dir", runs, "--log", "tensorboard"]) == 0
    scalars = _scalars(run.path / "tensorboard" / "train")
    assert [s for s, _ in scalars["test_accuracy"]] == STEPS  # 0 and 3 from the first session, 6.. from the second
    records = run.read_jsonl("train", "metrics.jsonl")
    assert [v for _, v in scalars["test_accuracy"]] == pytest.approx([r["test_accuracy"] for r in records], abs=1e-6)
    assert main(["verify", "--runs-dir", runs]) == 0


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    with pytest.raises(tensorboard.TensorBoardMissing, match=r"pip install 'ticketlab\[tensorboard\]'"):
        tensorboard.enable(True)
    code = main([*ARGV, "--runs-dir", str(tmp_path / "runs"), "--log", "tensorboard"])
    assert code != 0
    err = capsys.readouterr().err
    assert "pip install 'ticketlab[tensorboard]'" in err
    assert not list((tmp_path / "runs").glob("*/config.json"))  # refused before anything ran


def test_every_unit_of_an_imp_run_gets_its_folder(tmp_path):
    pytest.importorskip("tensorboard")
    argv = ["imp", *ARGV[1:ARGV.index("--method")], "--levels", "1", "--baselines", "reinit", "--no-progress",
            "--threads", "1", "--runs-dir", str(tmp_path), "--log", "tensorboard"]
    assert main(argv) == 0
    run = _only_run(Store(tmp_path))
    units = sorted(str(p.parent.relative_to(run.path)) for p in run.path.rglob("metrics.jsonl"))
    assert len(units) == 3  # the dense level, the level-1 ticket and its re-init
    for unit in units:
        records = run.read_jsonl(unit, "metrics.jsonl")
        got = _scalars(run.path / "tensorboard" / unit)["test_accuracy"]
        assert [s for s, _ in got] == [r["step"] for r in records], unit
    assert main(["verify", "--runs-dir", str(tmp_path)]) == 0


def test_a_command_without_event_files_says_so(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    argv = ["supermask", "--dataset", "synthetic_mlp", "--data-option", "n_train=64", "--data-option", "n_test=32",
            "--data-option", "dim=8", "--model", "mlp", "--model-option", "hidden=[8]", "--batch-size", "32",
            "--steps", "1ep", "--eval-samples", "1", "--no-progress", "--runs-dir", str(tmp_path), "--log", "tensorboard"]
    assert main(argv) == 0
    assert "--log tensorboard: ticketlab supermask trains in a loop of its own" in capsys.readouterr().err
