"""Prune-at-init runs end to end: exact density, sanity checks, resume, CLI and report."""
from __future__ import annotations

import pytest
import torch

from ticketlab.cli import main
from ticketlab.config import ConfigError, DataConfig, ModelConfig, PruneAtInitConfig, TrainConfig, config_hash
from ticketlab.experiments.prune_at_init import run_prune_at_init
from ticketlab.masks import Mask
from ticketlab.store import Store
from ticketlab.training import Trainer

DATA = DataConfig(name="synthetic_mlp", options={"n_train": 256, "n_test": 128, "dim": 16})
MODEL = ModelConfig(name="mlp", options={"hidden": [32, 16]})
TRAIN = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="3ep", eval_every="1ep")


def cfg(**kw) -> PruneAtInitConfig:
    base = dict(data=DATA, model=MODEL, train=TRAIN, method="snip", density=0.1, score_batch_size=64)
    base.update(kw)
    return PruneAtInitConfig(**base)


def run(config: PruneAtInitConfig, root) -> tuple[dict, Store]:
    store = Store(root)
    return run_prune_at_init(config, store, device="cpu", progress=False, log=lambda _: None), store


def files(store: Store, config: PruneAtInitConfig):
    return store.run(config_hash(config))


@pytest.mark.parametrize("method", ["magnitude", "random", "snip", "grasp", "synflow"])
def test_each_method_prunes_to_exact_density_and_trains(tmp_path, method):
    config = cfg(method=method, rounds=3 if method == "synflow" else None)
    summary, store = run(config, tmp_path)
    total = 16 * 32 + 32 * 16 + 16 * 4
    assert summary["kept"] == round(0.1 * total)
    assert summary["method"] == method and summary["rounds"] == (3 if method == "synflow" else 1)
    final = files(store, config).load_tensors("train", "final.safetensors")
    mask = Mask.load(files(store, config).file("mask.safetensors"))
    for name, m in mask.items():
        assert torch.count_nonzero(final[name][~m]) == 0  # pruned weights stayed zero through training
    assert 0 < summary["effective_density"] <= summary["density"]


def test_synflow_defaults_to_100_rounds():
    assert cfg(method="synflow").effective_rounds == 100
    assert cfg(method="snip").effective_rounds == 1


def test_shuffle_keeps_layer_densities_but_moves_weights(tmp_path):
    plain, store = run(cfg(), tmp_path)
    shuffled, _ = run(cfg(sanity="shuffle"), tmp_path)
    assert shuffled["layer_density"] == plain["layer_density"]
    mask_plain = Mask.load(files(store, cfg()).file("mask.safetensors"))
    mask_method = Mask.load(files(store, cfg(sanity="shuffle")).file("mask.safetensors"))
    assert mask_method == mask_plain  # the method's own mask is the same; only the trained one is shuffled
    trained = Mask.from_nonzero({n: t for n, t in files(store, cfg(sanity="shuffle"))
                                 .load_tensors("train", "final.safetensors").items() if n in mask_plain})
    assert trained.kept_per_layer() == mask_plain.kept_per_layer()
    assert trained != mask_plain


def test_reinit_trains_the_same_mask_from_other_weights(tmp_path):
    plain, store = run(cfg(), tmp_path)
    reinit, _ = run(cfg(sanity="reinit"), tmp_path)
    first_plain = files(store, cfg()).read_jsonl("train", "metrics.jsonl")[0]
    first_reinit = files(store, cfg(sanity="reinit")).read_jsonl("train", "metrics.jsonl")[0]
    assert first_plain["test_loss"] != first_reinit["test_loss"]
    assert reinit["layer_density"] == plain["layer_density"]


def test_invert_keeps_the_lowest_scores(tmp_path):
    config = cfg(method="magnitude", sanity="invert", distribution="uniform")
    run(config, tmp_path)
    r = files(Store(tmp_path), config)
    mask = Mask.load(r.file("mask.safetensors"))
    init = r.load_tensors("init.safetensors")
    for name, m in mask.items():
        w = init[name].abs()
        assert w[m].max() <= w[~m].min(), name


def test_rerun_reuses_mask_and_training(tmp_path, monkeypatch):
    first, _ = run(cfg(), tmp_path)
    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("retrained a complete run"))
    second, _ = run(cfg(), tmp_path)
    assert first == second


def test_same_seed_same_mask(tmp_path):
    run(cfg(method="random"), tmp_path / "a")
    run(cfg(method="random"), tmp_path / "b")
    run(cfg(method="random", seed=1), tmp_path / "c")
    load = lambda root, c: Mask.load(files(Store(root), c).file("mask.safetensors"))  # noqa: E731
    assert load(tmp_path / "a", cfg(method="random")) == load(tmp_path / "b", cfg(method="random"))
    assert load(tmp_path / "a", cfg(method="random")) != load(tmp_path / "c", cfg(method="random", seed=1))


def test_bad_density_and_unknown_method():
    with pytest.raises(ConfigError, match="sparsity 0.98 is density 0.02"):
        cfg(density=0.0)
    with pytest.raises(ConfigError, match="synflow"):
        cfg(method="obd")


SMALL = ["--dataset", "synthetic_mlp", "--data-option", "n_train=256", "--data-option", "n_test=128",
         "--model", "mlp", "--model-option", "hidden=[16]", "--steps", "2ep", "--batch-size", "32", "--no-progress"]


def test_cli_prune_sparsity_and_report(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["prune", *SMALL, "--method", "magnitude", "--sparsity", "0.9", "--runs-dir", runs]) == 0
    assert main(["prune", *SMALL, "--method", "magnitude", "--sparsity", "0.9", "--sanity", "shuffle",
                 "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert "pruned with magnitude to density 0.0990" in out  # round(0.1 * 384) = 38 kept
    assert "| mlp | synthetic_mlp | magnitude | global | shuffle | 0.1 | 1 |" in out
    hashes = [p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(hashes) == 2
    for h in hashes:  # one run: its layer densities and training curve (a table only, until issue 21)
        assert (tmp_path / "runs" / h / "report.png").stat().st_size > 10_000
    assert main(["report", *hashes, "--runs-dir", runs, "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| magnitude | global | none | 0.1 |" in text and "| magnitude | global | shuffle | 0.1 |" in text
    assert (tmp_path / "rep" / "report.png").exists()
    capsys.readouterr()
    assert main(["ls", "--runs-dir", runs, "experiment=prune"]) == 0
    assert capsys.readouterr().out.count("magnitude") == 2


def test_cli_rejects_sparsity_out_of_range(tmp_path, capsys):
    assert main(["prune", *SMALL, "--method", "snip", "--sparsity", "1.0", "--runs-dir", str(tmp_path)]) == 2
    assert "sparsity (fraction removed) must be in [0, 1)" in capsys.readouterr().err
