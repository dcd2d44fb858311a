"""IMP end to end on a small generated task: densities, determinism, resume, reset modes, bad input."""
from __future__ import annotations

import pytest
import torch

import ticketlab.experiments.common as common_module
import ticketlab.experiments.imp as imp_module
from ticketlab.training import Trainer
from ticketlab.config import ConfigError, DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig, config_hash
from ticketlab.data import DataError
from ticketlab.experiments.imp import run_imp
from ticketlab.masks import Mask
from ticketlab.models import ModelError
from ticketlab.store import Store, StoreError

DATA = DataConfig(name="synthetic_mlp", val_size=64, options={"n_train": 448, "n_test": 128, "dim": 16})
MODEL = ModelConfig(name="mlp", options={"hidden": [32, 16]})
TRAIN = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="4ep", eval_every="1ep")


def config(**kw) -> IMPConfig:
    base = dict(data=DATA, model=MODEL, train=TRAIN, levels=3, baselines=("reinit", "random"), seed=0)
    base.update(kw)
    return IMPConfig(**base)


def quiet(_: str) -> None:
    pass


def run(cfg: IMPConfig, root) -> tuple[list[dict], Store]:
    store = Store(root)
    return run_imp(cfg, store, device="cpu", progress=False, log=quiet), store


def masks_of(store: Store, cfg: IMPConfig) -> list[Mask]:
    r = store.run(config_hash(cfg))
    return [Mask.load(r.file(f"level_{lvl:02d}", "mask.safetensors")) for lvl in range(1, cfg.levels + 1)]


def test_density_after_levels_is_0_8_power(tmp_path):
    cfg = config(levels=4, baselines=())
    rows, store = run(cfg, tmp_path)
    masks = masks_of(store, cfg)
    for level, mask in enumerate(masks, 1):
        expected = mask.num_total * 0.8**level
        assert abs(mask.num_kept - expected) <= len(mask), (level, mask.num_kept, expected)
    # each level prunes only among weights the previous level kept
    for a, b in zip(masks, masks[1:]):
        assert (b & ~a).num_kept == 0
    assert [r["level"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[-1]["remaining_percent"] == pytest.approx(100 * masks[-1].density)


def test_layerwise_scope_and_output_rate(tmp_path):
    cfg = config(levels=2, baselines=(), prune=PruneConfig(rate=0.2, scope="layerwise", output_rate=0.1))
    _, store = run(cfg, tmp_path)
    mask = masks_of(store, cfg)[-1]
    for name, t in mask.items():
        rate = 0.1 if name == "fc.weight" else 0.2
        assert int(t.sum()) == round(t.numel() * (1 - rate) ** 2), name


def test_same_seed_same_masks_and_metrics(tmp_path):
    cfg = config(levels=2, baselines=("random",))
    rows_a, store_a = run(cfg, tmp_path / "a")
    rows_b, store_b = run(cfg, tmp_path / "b")
    assert masks_of(store_a, cfg) == masks_of(store_b, cfg)
    assert rows_a == rows_b
    other = config(levels=2, baselines=("random",), seed=1)
    _, store_c = run(other, tmp_path / "c")
    assert masks_of(store_c, other) != masks_of(store_a, cfg)


def test_baselines_use_ticket_mask_and_matched_random_mask(tmp_path):
    cfg = config(levels=2)
    rows, store = run(cfg, tmp_path)
    r = store.run(config_hash(cfg))
    ticket = Mask.load(r.file("level_02", "mask.safetensors"))
    random = Mask.load(r.file("level_02", "random_mask.safetensors"))
    assert random.kept_per_layer() == ticket.kept_per_layer()
    assert random != ticket
    by = {(row["level"], row["branch"]): row for row in rows}
    assert by[(2, "reinit")]["layer_density"] == by[(2, "ticket")]["layer_density"]
    reinit_final = r.load_tensors("level_02/reinit/final.safetensors")
    for name, m in ticket.items():
        assert torch.count_nonzero(reinit_final[name][~m]) == 0
    assert by[(0, "ticket")]["final_test_accuracy"] > 0.8  # chance is 0.25


def test_rerun_after_kill_between_levels_matches_uninterrupted(tmp_path, monkeypatch):
    cfg = config(train=TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="2ep", eval_every="1ep"))
    rows_full, store_full = run(cfg, tmp_path / "full")

    original = imp_module.train_unit

    def dies_at_level_2(s, unit, *a, **kw):
        if unit == "level_02/ticket":
            raise KeyboardInterrupt
        return original(s, unit, *a, **kw)

    monkeypatch.setattr(imp_module, "train_unit", dies_at_level_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "killed")
    monkeypatch.setattr(imp_module, "train_unit", original)
    store = Store(tmp_path / "killed")
    assert store.list()[0]["status"] == "interrupted"
    rows_resumed, store_resumed = run(cfg, tmp_path / "killed")
    assert rows_resumed == rows_full
    assert masks_of(store_resumed, cfg) == masks_of(store_full, cfg)
    assert store_resumed.list()[0]["status"] == "complete"


def test_rerun_after_kill_mid_training_resumes_from_checkpoint(tmp_path, monkeypatch):
    cfg = config(levels=1, baselines=())
    rows_full, _ = run(cfg, tmp_path / "full")

    original = common_module.save_checkpoint
    calls = {"n": 0}

    def dies_after_second_checkpoint(trainer, step, path):
        original(trainer, step, path)
        if "level_01" in str(path):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(common_module, "save_checkpoint", dies_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "killed")
    monkeypatch.setattr(common_module, "save_checkpoint", original)
    ckpt = tmp_path / "killed" / config_hash(cfg) / "level_01" / "ticket" / "checkpoint.safetensors"
    assert ckpt.exists()
    logs = []
    rows_resumed = run_imp(cfg, Store(tmp_path / "killed"), device="cpu", progress=False, log=logs.append)
    assert any("resuming from step 24" in line for line in logs), logs
    assert rows_resumed == rows_full
    assert not ckpt.exists()


def test_complete_run_is_not_retrained(tmp_path, monkeypatch):
    cfg = config(levels=1, baselines=())
    rows, _ = run(cfg, tmp_path)
    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("retrained a complete unit"))
    assert run(cfg, tmp_path)[0] == rows


@pytest.mark.parametrize("reset", ["rewind", "lr_rewind", "finetune"])
def test_reset_modes_train_from_step_k(tmp_path, reset):
    cfg = config(levels=1, baselines=("reinit",), reset=reset, rewind_step="20it")
    rows, store = run(cfg, tmp_path)
    r = store.run(config_hash(cfg))
    assert r.file("rewind.safetensors").exists()
    history = r.read_jsonl("level_01", "ticket", "metrics.jsonl")
    assert history[0]["step"] == 20 and history[-1]["step"] == 48  # 384 // 32 = 12 it/epoch, 4 epochs
    reinit_history = r.read_jsonl("level_01", "reinit", "metrics.jsonl")
    assert reinit_history[0]["step"] == (20 if reset == "rewind" else 0)
    if reset == "rewind":
        # the ticket starts from theta_k masked: its first evaluation matches theta_k under the mask
        rewind = r.load_tensors("rewind.safetensors")
        assert not torch.equal(rewind["fc.weight"], r.load_tensors("init.safetensors")["fc.weight"])


def test_corrupt_checkpoint_is_reported_and_left_untouched(tmp_path):
    cfg = config(levels=1, baselines=())
    run(cfg, tmp_path)
    final = tmp_path / config_hash(cfg) / "level_01" / "ticket" / "final.safetensors"
    final.write_bytes(b"\x00garbage")
    with pytest.raises(StoreError, match="corrupt"):
        run(cfg, tmp_path)
    assert final.read_bytes() == b"\x00garbage"


def test_bad_inputs_fail_clearly_and_leave_store_intact(tmp_path):
    good = config(levels=1, baselines=())
    run(good, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name != "index.sqlite")
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        PruneConfig(rate=1.0)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        PruneConfig(rate=-0.2)
    with pytest.raises(ModelError, match="lenet_300_100"):
        run(config(model=ModelConfig(name="resnet999")), tmp_path)
    with pytest.raises(DataError, match="cifar10"):
        run(config(data=DataConfig(name="imagenet-1k")), tmp_path)
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        run(config(data=DataConfig(name="mnist", root=str(tmp_path / "nowhere"))), tmp_path)
    with pytest.raises(ValueError, match="rewind step"):
        run(config(reset="rewind", rewind_step="100ep"), tmp_path)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name != "index.sqlite")
    assert after == before
    assert len(Store(tmp_path).list()) == 1


def test_store_refuses_folder_of_another_config(tmp_path):
    cfg = config(levels=1, baselines=())
    run(cfg, tmp_path)
    cfg_file = tmp_path / config_hash(cfg) / "config.json"
    edited = cfg_file.read_text().replace('"lr": 0.003', '"lr": 0.5')
    cfg_file.write_text(edited)
    with pytest.raises(StoreError, match="config.json is corrupt: its content does not match its checksum"):
        run(cfg, tmp_path)
    # a well-formed config of another experiment (checksum intact) is refused as foreign
    import json

    from ticketlab.integrity import CHECKSUM_KEY, seal_json

    cfg_file.write_text(seal_json({k: v for k, v in json.loads(edited).items() if k != CHECKSUM_KEY}))
    with pytest.raises(StoreError, match="different experiment"):
        run(cfg, tmp_path)


def test_early_stop_panel_marks_minima_at_the_last_evaluation(tmp_path):
    """Issue 21: the demo's right panel made 722 vs 760 iterations look like a jump and showed an
    "early-stop iteration" where the minimum was simply the last evaluation."""
    from ticketlab.analysis.report import early_stop_points, plot_imp

    rows = [{"level": 0, "branch": "ticket", "remaining_percent": 100.0, "final_test_accuracy": 0.9,
             "early_stop_step": 722, "final_step": 760},
            {"level": 1, "branch": "ticket", "remaining_percent": 50.0, "final_test_accuracy": 0.9,
             "early_stop_step": 760, "final_step": 760}]
    assert early_stop_points(rows) == [(100.0, 722, True), (50.0, 760, False)]
    assert plot_imp([("run", rows)], tmp_path / "p.png").stat().st_size > 0
