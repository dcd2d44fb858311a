"""The command line: an IMP run with report, ls, report, and one-line errors for bad input."""
from __future__ import annotations

import pytest

from ticketlab.cli import PRESETS, build_parser, imp_config_from_args, main

SMALL = ["--dataset", "synthetic_mlp", "--data-option", "n_train=256", "--data-option", "n_test=128",
         "--model", "mlp", "--model-option", "hidden=[16]", "--steps", "2ep", "--batch-size", "32",
         "--levels", "2", "--no-progress"]


def test_imp_ls_report(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["imp", *SMALL, "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert "level 2: pruned to density 0.6406" in out  # round(384 * 0.64) = 246 kept  # per-layer table shown after every prune
    assert "| 2 | 64.06 |" in out
    run_dirs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(run_dirs) == 1
    assert (run_dirs[0] / "report.png").stat().st_size > 10_000
    assert (run_dirs[0] / "report.md").read_text().count("\n") == 7  # heading, blank, header, rule, 3 levels

    assert main(["ls", "--runs-dir", runs, "dataset=synthetic_mlp"]) == 0
    out = capsys.readouterr().out
    assert run_dirs[0].name in out and "complete" in out
    assert main(["ls", "--runs-dir", runs, "dataset=mnist"]) == 0
    assert "no runs" in capsys.readouterr().out

    out_dir = tmp_path / "rep"
    assert main(["report", run_dirs[0].name[:6], "--runs-dir", runs, "--out", str(out_dir)]) == 0
    assert (out_dir / "report.png").exists() and (out_dir / "report.md").exists()
    # a set of runs chosen by ls filters (issue 21), the same report; a filter matching nothing is an error
    by_filter = tmp_path / "rep2"
    assert main(["report", "experiment=imp", "dataset=synthetic_mlp", "--runs-dir", runs, "--out", str(by_filter)]) == 0
    assert (by_filter / "report.md").read_text() == (out_dir / "report.md").read_text()
    assert main(["report", "dataset=mnist", "--runs-dir", runs]) == 2
    assert "no run in" in capsys.readouterr().err

    # the same command again finds the finished run instead of training again
    assert main(["imp", *SMALL, "--runs-dir", runs]) == 0
    assert "is complete; nothing recomputed" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["imp", "--rate", "1.0"], "prune rate must be in [0, 1)"),
    (["imp", "--dataset", "digits", "--model", "nonet"], "nonet"),
    (["imp", "--dataset", "mnist", "--data-root", "/nonexistent"], "train-images-idx3-ubyte"),
    (["imp", "--steps", "ten epochs"], "cannot read step"),
    (["report", "abc123"], "no run"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ticketlab: error:") and message in err
    assert "Traceback" not in err


def test_preset_and_flags_compose():
    args = build_parser().parse_args(["imp", "--preset", "resnet20_cifar10", "--lr", "0.05"])
    cfg = imp_config_from_args(args)
    assert cfg.model.name == "resnet20" and cfg.train.lr == 0.05
    assert cfg.train.milestones == ("80ep", "120ep") and cfg.reset == "rewind"
    assert set(PRESETS) >= {"lenet_mnist", "resnet20_cifar10", "vgg16_cifar10", "conv2_cifar10"}
