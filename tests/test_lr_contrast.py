"""Rethinking's learning-rate contrast: the same IMP per arm and seed, ticket vs. re-init per level."""
import json

import pytest

from ticketlab.cli import main
from ticketlab.config import ConfigError, DataConfig, IMPConfig, ModelConfig, TrainConfig, config_hash
from ticketlab.experiments.lr_contrast import ARMS, arm_configs, contrast_rows, contrast_table, run_lr_contrast
from ticketlab.store import Store

BASE = IMPConfig(data=DataConfig(name="synthetic_mlp", val_size=32, options={"n_train": 160, "n_test": 64, "dim": 8}),
                 model=ModelConfig(name="mlp", options={"hidden": [16]}),
                 train=TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="2ep", eval_every="1ep"),
                 levels=2, baselines=("random",))
TINY_FLAGS = ["--dataset", "synthetic_mlp", "--data-option", "n_train=160", "--data-option", "n_test=64",
              "--data-option", "dim=8", "--val-size", "32", "--model", "mlp", "--model-option", "hidden=[16]",
              "--batch-size", "32", "--steps", "2ep", "--eval-every", "1ep", "--levels", "2"]


def test_arm_configs_change_only_the_optimiser_and_the_seed():
    configs = arm_configs(BASE, [0, 1])
    assert [(arm, seed) for arm, seed, _ in configs] == [("small", 0), ("small", 1), ("large", 0), ("large", 1)]
    for arm, seed, cfg in configs:
        assert (cfg.train.optimizer, cfg.train.lr, cfg.train.momentum) == tuple(ARMS[arm][k] for k in
                                                                                 ("optimizer", "lr", "momentum"))
        assert cfg.seed == seed and cfg.baselines == ("random", "reinit")  # re-init added, random kept
        assert cfg.train.steps == BASE.train.steps and cfg.levels == BASE.levels and cfg.data == BASE.data
    assert len({config_hash(c) for _, _, c in configs}) == 4
    with pytest.raises(ConfigError, match="at least one seed"):
        arm_configs(BASE, [])
    with pytest.raises(ConfigError, match="not training options"):
        arm_configs(BASE, [0], {"a": {"lr": 1.0}, "b": {"learning_rate": 2.0}})
    with pytest.raises(ConfigError, match="two arms"):
        arm_configs(BASE, [0], {"a": {"lr": 1.0}})


def test_contrast_rows_are_the_stored_ticket_and_reinit_accuracies(tmp_path):
    store = Store(tmp_path)
    runs = run_lr_contrast(BASE, [0, 1], store, log=lambda text: None)
    rows = contrast_rows(store, runs)
    assert [(r["arm"], r["level"]) for r in rows] == [("small", 0), ("small", 1), ("small", 2),
                                                      ("large", 0), ("large", 1), ("large", 2)]
    for arm, seed, run_hash in runs:  # every number is the run's own levels.jsonl value
        stored = {(r["branch"], r["level"]): r["final_test_accuracy"]
                  for r in store.run(run_hash).read_jsonl("levels.jsonl")}
        for r in rows:
            if r["arm"] == arm and r["level"] > 0:
                i = [0, 1].index(seed)
                assert r["ticket"][i] == stored[("ticket", r["level"])]
                assert r["reinit"][i] == stored[("reinit", r["level"])]
                assert r["gap"][i] == pytest.approx(r["ticket"][i] - r["reinit"][i])
    table = contrast_table(rows)
    assert "### arm small (optimizer adam, lr 0.0012, momentum 0)" in table and "### arm large" in table
    assert "Mean ticket - re-init gap" in table
    again = run_lr_contrast(BASE, [0, 1], store, log=lambda text: None)  # stored runs are found, not redone
    assert again == runs


def test_cli_lr_contrast_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["lr-contrast", *TINY_FLAGS, "--seeds", "2", "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
                 "--no-progress", "--large-lr", "0.05"]) == 0
    text = (out / "report.md").read_text()
    assert "### arm large (optimizer sgd, lr 0.05, momentum 0.9)" in text and "| 2 | " in text
    assert (out / "report.png").stat().st_size > 10_000
    assert main(["ls", "--runs-dir", str(tmp_path / "runs"), "experiment=imp"]) == 0
    assert capsys.readouterr().out.count(" imp ") >= 4  # 2 arms x 2 seeds, ordinary imp runs


@pytest.mark.parametrize("flag", [["--lr", "0.1"], ["--optimizer", "sgd"], ["--momentum", "0.5"], ["--seed", "3"]])
def test_options_the_arms_override_are_refused(tmp_path, capsys, flag):
    assert main(["lr-contrast", *TINY_FLAGS, *flag, "--runs-dir", str(tmp_path)]) == 2
    assert "overridden" in capsys.readouterr().err
    assert not any(p.is_dir() and (p / "config.json").exists() for p in tmp_path.iterdir())  # nothing ran


def test_lr_contrast_config_of_a_preset_has_no_demo_model_options():
    from ticketlab.cli import build_parser, config_from_args
    from ticketlab.experiments.registry import EXPERIMENTS

    args = build_parser().parse_args(["lr-contrast", "--preset", "lenet_mnist"])
    assert args.preset == "lenet_mnist"
    cfg = config_from_args(args, EXPERIMENTS["imp"], base={"baselines": ("reinit",)})
    assert cfg.model.name == "lenet_300_100" and cfg.model.options == {}
    assert json.dumps(cfg.baselines) == '["reinit"]'
