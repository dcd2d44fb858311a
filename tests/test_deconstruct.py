"""Zhou et al.'s ablation grid on one stored IMP run (ticketlab deconstruct)."""
import pytest
import torch

from ticketlab.analysis.supermask import supermask
from ticketlab.cli import main
from ticketlab.config import ConfigError, DataConfig, IMPConfig, ModelConfig, TrainConfig, config_hash
from ticketlab.experiments.deconstruct import DeconstructConfig, run_deconstruct, unit_of
from ticketlab.experiments.imp import derived_seed, run_imp
from ticketlab.experiments.mask0 import pruned_values
from ticketlab.masks import Mask
from ticketlab.store import Store, StoreError

QUIET = dict(progress=False, log=lambda text: None)
SOURCE = IMPConfig(data=DataConfig(name="synthetic_mlp", val_size=16, options={"n_train": 128, "n_test": 32, "dim": 6}),
                   model=ModelConfig(name="mlp", options={"hidden": [12]}),
                   train=TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="2ep", eval_every="1ep"),
                   levels=0, baselines=())


@pytest.fixture()
def grid(tmp_path):
    store = Store(tmp_path)
    run_imp(SOURCE, store, **QUIET)
    cfg = DeconstructConfig(source=config_hash(SOURCE), criteria=("large_final", "random"),
                            resets=("init", "signed_constant"), mask0=("zero", "frozen_init"), kept=(0.3,))
    rows = run_deconstruct(cfg, store, **QUIET)
    return store, cfg, rows


def test_every_combination_is_a_ticket_with_its_mask_start_and_held_weights(grid):
    store, cfg, rows = grid
    assert [(r["criterion"], r["reset"], r["mask0"]) for r in rows] == [
        (c, r, m) for c in ("large_final", "random") for r in ("init", "signed_constant") for m in ("zero", "frozen_init")]
    source = store.run(cfg.source)
    init, final = source.load_tensors("init.safetensors"), source.load_tensors("level_00", "ticket", "final.safetensors")
    dense = Mask({n: torch.ones_like(init[n], dtype=torch.bool) for n in ("hidden.0.weight", "fc.weight")})
    run = store.run(config_hash(cfg))
    for r in rows:
        g = torch.Generator().manual_seed(derived_seed(SOURCE.seed, "criterion", 0))
        mask = supermask(r["criterion"], init, final, dense, 0.3, generator=g)
        for name in mask:  # per layer, exactly the kept fraction
            assert int(mask[name].sum()) == round(0.3 * mask[name].numel())
        trained = run.load_tensors(unit_of(0.3, r["criterion"], r["reset"], r["mask0"]), "final.safetensors")
        held = pruned_values(r["mask0"], init, final, mask)
        for name in mask:
            expected = torch.zeros(()) if held is None else held[name][~mask[name]]
            assert torch.equal(trained[name][~mask[name]], expected.expand_as(trained[name][~mask[name]])), r
        if r["reset"] == "signed_constant":  # kept weights started at +-std with the init's signs, then trained
            assert r["density"] == pytest.approx(mask.density)


def test_a_rerun_recomputes_nothing(grid):
    store, cfg, rows = grid
    before = {p: p.stat().st_mtime_ns for p in store.root.rglob("*") if p.is_file() and p.name not in ("index.sqlite", ".lock")}
    assert run_deconstruct(cfg, store, **QUIET) == rows
    after = {p: p.stat().st_mtime_ns for p in store.root.rglob("*") if p.is_file() and p.name not in ("index.sqlite", ".lock")}
    assert after == before


def test_bad_sources_are_clear_errors(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ConfigError, match="full 12-character hash"):
        DeconstructConfig(source="abc")
    with pytest.raises(ConfigError, match="kept fractions"):
        DeconstructConfig(source="0" * 12, kept=(1.0,))
    with pytest.raises(ConfigError, match="resets"):
        DeconstructConfig(source="0" * 12, resets=("rewind",))  # no rewind point in a one-shot grid
    with pytest.raises(StoreError, match="no run"):
        run_deconstruct(DeconstructConfig(source="0" * 12), store, **QUIET)


def test_cli_runs_reports_and_lists_the_grid(tmp_path, capsys):
    store = Store(tmp_path)
    run_imp(SOURCE, store, **QUIET)
    argv = ["deconstruct", "--source", config_hash(SOURCE), "--criteria", "large_final", "small_final",
            "--mask0", "zero", "variant1", "--kept", "0.25", "--runs-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| 25.00 | small_final | init | variant1 |" in out
    run = store.run(next(r["hash"] for r in store.list(experiment="deconstruct")))
    assert (run.path / "report.md").exists() and (run.path / "report.png").stat().st_size > 10_000
    assert main(["deconstruct", "--source", "abc", "--runs-dir", str(tmp_path)]) == 2
    assert "full 12-character hash" in capsys.readouterr().err
