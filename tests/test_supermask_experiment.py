"""``ticketlab supermask``: the learned Bernoulli supermask as a stored, resumable, reported run."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from ticketlab.cli import build_parser, config_from_args, main
from ticketlab.config import ConfigError, DataConfig, ModelConfig, SupermaskConfig, TrainConfig, config_hash
from ticketlab.masks import Mask
from ticketlab.store import Store

TINY = ["--dataset", "synthetic_mlp", "--data-option", "n_train=128", "--data-option", "n_test=32",
        "--data-option", "dim=8", "--model", "mlp", "--model-option", "hidden=[16]", "--steps", "2ep",
        "--batch-size", "32", "--eval-samples", "3"]
RUN = ["--device", "cpu", "--threads", "1", "--no-progress"]


def _files(root: Path) -> dict[Path, int]:
    """Every file of the run folders with its mtime, the report (rewritten by every command) aside."""
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and p.name not in ("index.sqlite", ".lock") and not p.name.startswith("report")}


def _config(argv: list[str]) -> SupermaskConfig:
    return config_from_args(build_parser().parse_args(["supermask", *argv]))


def test_cli_runs_stores_reports_and_a_rerun_recomputes_nothing(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["supermask", *TINY, "--runs-dir", runs, *RUN]) == 0
    out = capsys.readouterr().out
    assert "learned Bernoulli supermask" in out
    run = Store(runs).run(config_hash(_config(TINY)))
    for name in ("init.safetensors", "mask.safetensors", "logits.safetensors", "metrics.jsonl", "summary.json",
                 "report.md", "report.png"):
        assert run.file(name).is_file(), name
    report = run.file("report.md").read_text()
    assert "| run | dataset | model | weight init |" in report and "synthetic_mlp" in report
    summary = run.read_json("summary.json")
    assert summary["status"] == "complete" and summary["eval_samples"] == 3
    assert len(summary["test_accuracies"]) == 3
    assert summary["test_accuracy"] == pytest.approx(sum(summary["test_accuracies"]) / 3)
    assert summary["test_accuracy_min"] <= summary["test_accuracy"] <= summary["test_accuracy_max"]
    assert [r["epoch"] for r in run.read_jsonl("metrics.jsonl")] == [1, 2]

    # the stored deterministic mask is sigmoid(s) > 0.5 of the stored logits
    mask = Mask.load(run.file("mask.safetensors"), require_checksum=True)
    logits = run.load_tensors("logits.safetensors")
    assert sorted(mask) == sorted(logits)
    for name, keep in mask.items():
        assert torch.equal(keep, torch.sigmoid(logits[name]) > 0.5), name
    assert summary["density"] == mask.density and summary["kept"] == mask.num_kept

    before = _files(tmp_path)
    assert main(["supermask", *TINY, "--runs-dir", runs, *RUN]) == 0
    assert "nothing recomputed" in capsys.readouterr().out
    assert _files(tmp_path) == before

    rows = Store(runs).list(experiment="supermask")
    assert len(rows) == 1 and rows[0]["status"] == "complete"
    assert rows[0]["summary"]["test_accuracy"] == summary["test_accuracy"]


def test_signed_constant_and_dynamic_scaling_runs_report_together(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["supermask", *TINY, "--runs-dir", runs, *RUN]) == 0
    assert main(["supermask", *TINY, "--weight-init", "signed_constant", "--dynamic-scaling", "--runs-dir", runs,
                 *RUN]) == 0
    hashes = [config_hash(_config(TINY)),
              config_hash(_config([*TINY, "--weight-init", "signed_constant", "--dynamic-scaling"]))]
    assert hashes[0] != hashes[1]
    capsys.readouterr()
    out = tmp_path / "both"
    assert main(["report", *hashes, "--runs-dir", runs, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| keep | no |" in text and "| signed_constant | yes |" in text
    assert (out / "report.png").is_file()


def test_the_same_config_gives_the_same_files(tmp_path):
    from ticketlab.experiments.supermask import run_supermask

    cfg = SupermaskConfig(data=DataConfig(name="synthetic_mlp", options={"n_train": 128, "n_test": 32, "dim": 8}),
                          model=ModelConfig(name="mlp", options={"hidden": [16]}),
                          train=TrainConfig(optimizer="sgd", lr=100.0, momentum=0.9, batch_size=32, steps="2ep",
                                            fused_optimizer=False), eval_samples=2)
    a = run_supermask(cfg, Store(tmp_path / "a"), device="cpu", progress=False, log=lambda _: None)
    b = run_supermask(cfg, Store(tmp_path / "b"), device="cpu", progress=False, log=lambda _: None)
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    h = config_hash(cfg)
    for name in ("mask.safetensors", "logits.safetensors", "metrics.jsonl"):
        assert (tmp_path / "a" / h / name).read_bytes() == (tmp_path / "b" / h / name).read_bytes(), name


def test_defaults_are_the_authors_and_the_command_line_builds_the_same_config():
    cfg = _config([])
    assert cfg == SupermaskConfig()
    t = cfg.train
    assert (t.optimizer, t.lr, t.momentum, t.batch_size, t.steps, t.eval_every, t.schedule) == \
        ("sgd", 100.0, 0.9, 250, "10ep", "1ep", "constant")
    assert (cfg.weight_init, cfg.dynamic_scaling, cfg.eval_samples, cfg.seed) == ("keep", False, 10, 0)
    assert _config(["--optimizer", "adam", "--lr", "1e-4"]).train.momentum == 0.0  # momentum is SGD's


@pytest.mark.parametrize("argv, message", [
    (["--steps", "100it"], "cannot honour steps '100it': it trains whole epochs"),
    (["--eval-every", "2ep"], "cannot honour eval_every '2ep'"),
    (["--schedule", "multistep", "--milestones", "1ep"], "cannot honour a multistep schedule"),
    (["--gamma", "0.5"], "cannot honour a multistep schedule"),
    (["--warmup", "10it"], "cannot honour warmup '10it'"),
    (["--nesterov"], "cannot honour nesterov"),
    (["--mask-gradients"], "cannot honour mask_gradients"),
    (["--optimizer", "adamw"], "cannot honour optimizer 'adamw'"),
    (["--val-size", "16"], "uses no validation split"),
    (["--eval-samples", "0"], "eval_samples must be an integer >= 1"),
    (["--batch-size", "1000"], "exceeds the 128 training samples"),
])
def test_options_it_cannot_honour_are_refused_with_exit_code_2(tmp_path, capsys, argv, message):
    runs = tmp_path / "runs"
    assert main(["supermask", *TINY, *argv, "--runs-dir", str(runs), *RUN]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not any(p.is_dir() for p in runs.glob("*")) if runs.exists() else True  # no run folder was made


def test_config_refuses_the_fused_optimiser_and_bf16():
    with pytest.raises(ConfigError, match="fused optimiser"):
        SupermaskConfig(train=TrainConfig(optimizer="sgd", lr=100.0, momentum=0.9, steps="1ep"))
    with pytest.raises(ConfigError, match="precision 'bf16'"):
        SupermaskConfig(train=TrainConfig(optimizer="sgd", lr=100.0, steps="1ep", fused_optimizer=False,
                                          precision="bf16"))
    with pytest.raises(ConfigError, match="weight_init 'zeros'"):
        SupermaskConfig(weight_init="zeros")


def test_every_option_has_help_and_shows_its_default():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    p = sub["supermask"]
    for action in p._actions:
        if not action.option_strings or action.dest in ("help", "preset"):
            continue
        assert action.help, action.option_strings
        if action.nargs != 0:  # a switch is off unless given
            shown = " ".join(p._get_formatter()._expand_help(action).split())
            assert "(default: " in shown, f"{action.option_strings[0]}: {shown}"
    lr = next(a for a in p._actions if "--lr" in a.option_strings)
    assert "(default: 100.0)" in p._get_formatter()._expand_help(lr)
