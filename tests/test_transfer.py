"""Ticket transfer (``ticketlab transfer``): the mask and weights carried over, the fresh dense
output layer, the controls, input fitting, training overrides, clear errors, and the data options
(class splits, upsampled digits) the transfer study uses."""
from __future__ import annotations

import pytest
import torch

from ticketlab.config import ConfigError, DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig, config_hash
from ticketlab.data import ArrayData, DataError, DataSplits, load_dataset
from ticketlab.data.base import select_classes
from ticketlab.experiments.imp import run_imp
from ticketlab.experiments.transfer import (TrainOverrides, TransferConfig, input_adapter, resolve_train, run_transfer,
                                            transferred_mask, transferred_state)
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.store import Store, StoreError

SOURCE_DATA = DataConfig(name="synthetic_mlp", options={"n_train": 192, "n_test": 64, "dim": 8, "num_classes": 4})
TARGET_DATA = DataConfig(name="synthetic_mlp", options={"n_train": 192, "n_test": 64, "dim": 8, "num_classes": 3,
                                                        "seed": 5})
MLP = ModelConfig(name="mlp", options={"hidden": [16]})
TRAIN = TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="3ep", eval_every="1ep")
SOURCE = IMPConfig(data=SOURCE_DATA, model=MLP, train=TRAIN, levels=2, baselines=(), prune=PruneConfig(rate=0.5))


def quiet(_: str) -> None:
    pass


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "runs")
    run_imp(SOURCE, s, device="cpu", progress=False, log=quiet)
    return s


def transfer(store, **kwargs):
    config = TransferConfig(source=config_hash(SOURCE), data=kwargs.pop("data", TARGET_DATA), **kwargs)
    rows = run_transfer(config, store, device="cpu", progress=False, log=quiet)
    return config, store.run(config_hash(config)), rows


def test_the_transferred_ticket_keeps_the_source_mask_and_a_fresh_dense_output_layer(store):
    config, run, rows = transfer(store, levels=(2,), controls=())
    source = store.run(config_hash(SOURCE))
    source_mask = Mask.load(source.file("level_02", "mask.safetensors"))
    init = source.load_tensors("init.safetensors")
    final = run.load_tensors("level_02", "ticket", "final.safetensors")
    # every covered layer: pruned weights exactly zero, and every kept one trained away from zero
    for name in ("hidden.0.weight",):
        assert torch.equal(final[name] != 0, source_mask[name])
    # the output layer: 3 classes, no zero, and it started from the target model's own seeded init
    out = "fc.weight"
    assert final[out].shape[0] == 3 and bool((final[out] != 0).all())
    torch.manual_seed(config.seed)
    fresh = build_model("mlp", (8,), 3, hidden=[16])
    start = transferred_state(fresh, init, "reinit")
    assert torch.equal(start[out], fresh.state_dict()[out])
    assert torch.equal(start["hidden.0.weight"], init["hidden.0.weight"])
    assert rows == [{**rows[0], "level": 2, "branch": "ticket"}]
    assert rows[0]["source_density"] == pytest.approx(source_mask.density)


def test_the_controls_random_mask_keeps_layer_counts_and_reinit_starts_elsewhere(store):
    _, run, rows = transfer(store, levels=(1,), controls=("random", "reinit"))
    assert [r["branch"] for r in rows] == ["ticket", "random", "reinit"]
    ticket = run.load_tensors("level_01", "ticket", "final.safetensors")
    random = run.load_tensors("level_01", "random", "final.safetensors")
    name = "hidden.0.weight"
    assert int((ticket[name] != 0).sum()) == int((random[name] != 0).sum())
    assert not torch.equal(ticket[name] != 0, random[name] != 0)
    reinit = run.load_tensors("level_01", "reinit", "final.safetensors")
    assert torch.equal(reinit[name] != 0, ticket[name] != 0)


def test_own_control_is_an_ordinary_imp_run_on_the_target(store):
    config, run, rows = transfer(store, levels=(0, 2), controls=("own",))
    own = run.read_json("summary.json")["own_run"]
    own_run = store.run(own)
    assert own_run.read_json("config.json")["experiment"] == "imp"
    assert own_run.read_json("config.json")["config"]["data"]["options"]["num_classes"] == 3
    assert [(r["level"], r["branch"]) for r in rows] == [(0, "ticket"), (0, "own"), (2, "ticket"), (2, "own")]
    # the own ticket has the source's pruning schedule: the same density at each level
    levels = {r["level"]: r for r in own_run.read_jsonl("levels.jsonl")}
    assert rows[3]["final_test_accuracy"] == levels[2]["final_test_accuracy"]


def test_a_rerun_recomputes_nothing_and_a_changed_override_is_a_new_run(store):
    config, run, rows = transfer(store, levels=(1,), controls=("random",))
    again = run_transfer(TransferConfig(source=config.source, data=TARGET_DATA, levels=(1,), controls=("random",)),
                         store, device="cpu", progress=False, log=quiet)
    assert again == rows
    # an override equal to the source's setting is the same run; another value is another run
    same = TransferConfig(source=config.source, data=TARGET_DATA, levels=(1,), controls=("random",),
                          overrides=TrainOverrides(lr=3e-3))
    run_transfer(same, store, device="cpu", progress=False, log=quiet)
    assert config_hash(same) == config_hash(config)
    sgd = TransferConfig(source=config.source, data=TARGET_DATA, levels=(1,), controls=(),
                         overrides=TrainOverrides(optimizer="sgd", lr=0.1, momentum=0.9))
    run_transfer(sgd, store, device="cpu", progress=False, log=quiet)
    assert config_hash(sgd) != config_hash(config)
    assert sgd.train.optimizer == "sgd" and sgd.train.momentum == 0.9 and sgd.train.steps == TRAIN.steps


def test_resolve_train_inherits_and_drops_momentum_across_optimisers():
    sgd = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, steps="7ep")
    assert resolve_train(sgd, TrainOverrides()) == sgd
    adam = resolve_train(sgd, TrainOverrides(optimizer="adam", lr=1e-3))
    assert (adam.optimizer, adam.lr, adam.momentum, adam.steps) == ("adam", 1e-3, 0.0, "7ep")


def test_a_ticket_whose_shapes_do_not_fit_gets_one_clear_error(store):
    wide = DataConfig(name="synthetic_mlp", options={"n_train": 64, "n_test": 32, "dim": 12})
    with pytest.raises(DataError, match=r"inputs of shape \(12,\).*\(8,\).*--input-adapt"):
        transfer(store, data=wide)
    assert [p.name for p in store.root.iterdir() if p.is_dir()] == [config_hash(SOURCE)]  # nothing written
    # the output layer transferred to a target with another number of classes
    with pytest.raises(ConfigError, match="fc.weight: source \\(4, 16\\), target \\(3, 16\\).*--output reinit"):
        transfer(store, output="transfer")


def test_output_transfer_keeps_the_source_output_weights_and_mask(store):
    same_classes = DataConfig(name="synthetic_mlp", options={"n_train": 192, "n_test": 64, "dim": 8, "seed": 5})
    _, run, _ = transfer(store, data=same_classes, levels=(2,), controls=(), output="transfer")
    source = store.run(config_hash(SOURCE))
    mask = Mask.load(source.file("level_02", "mask.safetensors"))
    final = run.load_tensors("level_02", "ticket", "final.safetensors")
    assert "fc.weight" in mask and torch.equal(final["fc.weight"] != 0, mask["fc.weight"])


def test_dense_layers_and_masks_covering_nothing():
    model = build_model("mlp", (8,), 3, hidden=[16])
    mask = Mask.dense(model)
    assert list(transferred_mask(mask, model, "reinit", ())) == ["hidden.0.weight"]
    with pytest.raises(ConfigError, match="covers no layer"):
        transferred_mask(mask, model, "reinit", ("hidden.0.weight",))
    with pytest.raises(ConfigError, match="not weights the source masks"):
        transferred_mask(mask, model, "reinit", ("nope.weight",))


def test_source_checks(store, tmp_path):
    with pytest.raises(ConfigError, match="12-character hash"):
        TransferConfig(source="abc")
    lr_rewind = IMPConfig(data=SOURCE_DATA, model=MLP, train=TRAIN, levels=1, baselines=(), reset="lr_rewind",
                          rewind_step="1it")
    run_imp(lr_rewind, store, device="cpu", progress=False, log=quiet)
    with pytest.raises(ConfigError, match="only init and rewind"):
        run_transfer(TransferConfig(source=config_hash(lr_rewind), data=TARGET_DATA), store, device="cpu",
                     progress=False, log=quiet)
    with pytest.raises(StoreError, match=r"no level \[5\]"):
        transfer(store, levels=(5,))


def test_rewind_source_transfers_theta_k_or_theta_0(tmp_path):
    store = Store(tmp_path / "runs")
    late = IMPConfig(data=SOURCE_DATA, model=MLP, train=TRAIN, levels=1, baselines=(), reset="rewind",
                     rewind_step="2it")
    run_imp(late, store, device="cpu", progress=False, log=quiet)
    source = store.run(config_hash(late))
    for weights, file in (("reset", "rewind.safetensors"), ("init", "init.safetensors")):
        config = TransferConfig(source=config_hash(late), data=TARGET_DATA, levels=(1,), controls=(), weights=weights,
                                overrides=TrainOverrides(steps="0ep1it"))
        run_transfer(config, store, device="cpu", progress=False, log=quiet)
        run = store.run(config_hash(config))
        start = source.load_tensors(file)["hidden.0.weight"]
        final = run.load_tensors("level_01", "ticket", "final.safetensors")["hidden.0.weight"]
        kept = final != 0
        # one Adam step of lr 3e-3 moves each kept weight by about lr: the start is recognisable
        assert (final[kept] - start[kept]).abs().max() < 0.01


def test_input_adapter_resizes_replicates_averages_and_reshapes():
    images = ArrayData(torch.arange(2 * 64, dtype=torch.float32).reshape(2, 1, 8, 8), torch.tensor([0, 1]))
    fit = input_adapter("t", (1, 8, 8), (3, 16, 16), "resize")
    out = fit(images)
    assert out.x.shape == (2, 3, 16, 16) and torch.equal(out.x[:, 0], out.x[:, 2])
    back = input_adapter("t", (3, 16, 16), (1, 8, 8), "resize")(out)
    assert back.x.shape == (2, 1, 8, 8)
    flat = input_adapter("t", (1, 8, 8), (64,), "none")(images)
    assert torch.equal(flat.x, images.x.reshape(2, 64))
    with pytest.raises(DataError, match="--input-adapt resize"):
        input_adapter("t", (1, 8, 8), (3, 16, 16), "none")
    with pytest.raises(DataError, match="fits images"):
        input_adapter("t", (64,), (3, 16, 16), "resize")


def test_class_split_option_relabels_in_the_order_given():
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    y = torch.tensor([0, 1, 2, 3, 4, 2])
    splits = DataSplits("toy", ArrayData(x, y), ArrayData(x[:3], y[:3]), num_classes=5, input_shape=(2,))
    part = select_classes(splits, [4, 2])
    assert part.num_classes == 2
    assert part.train.y.tolist() == [1, 0, 1] and part.train.x[:, 0].tolist() == [4.0, 8.0, 10.0]
    assert part.test.y.tolist() == [1]
    assert select_classes(splits, "2,4").train.y.tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="do not exist"):
        select_classes(splits, [1, 7])
    with pytest.raises(DataError, match="at least two"):
        select_classes(splits, [1])
    # any registered labelled data set takes it: here one without a classes option of its own
    moons = load_dataset("synthetic_mlp", classes=[3, 1], n_train=64, n_test=32)
    assert moons.num_classes == 2 and set(moons.train.y.tolist()) == {0, 1}


def test_digits_upsampled_to_mnist_resolution():
    d = load_dataset("digits", size=28)
    assert d.input_shape == (784,) and len(d.train) + len(d.test) == 1797
    assert abs(float(d.train.x.mean())) < 1e-5 and abs(float(d.train.x.std()) - 1) < 1e-4
    image = load_dataset("digits", size=28, flatten=False)
    assert image.input_shape == (1, 28, 28)
    with pytest.raises(DataError, match="positive integer"):
        load_dataset("digits", size=0)


def test_cli_transfer_with_an_optimiser_override(store, capsys):
    from ticketlab.cli import main

    argv = ["transfer", "--from", config_hash(SOURCE), "--dataset", "synthetic_mlp", "--data-option", "n_train=96",
            "--data-option", "n_test=32", "--data-option", "dim=8", "--level", "1", "--controls", "random",
            "--optimizer", "sgd", "--lr", "0.05", "--runs-dir", str(store.root), "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "synthetic_mlp (adam) -> synthetic_mlp (sgd)" in out and "| 1 |" in out
    stored = [p for p in store.root.iterdir() if p.is_dir() and (p / "config.json").exists()
              and '"transfer"' in (p / "config.json").read_text()]
    assert len(stored) == 1
    import json
    config = json.loads((stored[0] / "config.json").read_text())["config"]
    assert config["train"]["optimizer"] == "sgd" and config["train"]["lr"] == 0.05
    assert config["train"]["steps"] == TRAIN.steps  # inherited from the source
    assert main(argv) == 0 and "complete; nothing recomputed" in capsys.readouterr().out
