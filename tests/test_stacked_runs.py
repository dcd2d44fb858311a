"""``--seeds``: IMP and prune-at-init runs of several seeds trained as one stacked model (issue 13).

What must hold: a stacked run's numbers do not depend on the other runs of its stack (bit for bit);
stacked and solo runs agree within float tolerance; pruned weights are exactly zero; a diverged run
is reported while the others are stored; models that do not stack fall back to ordinary runs.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ticketlab.cli import main
from ticketlab.config import ConfigError, DataConfig, IMPConfig, ModelConfig, PruneAtInitConfig, PruneConfig, \
    SparseTrainConfig, TrainConfig, config_hash
from ticketlab.experiments import stacked
from ticketlab.experiments.imp import imp_stack_refusal, run_imp, run_imp_seeds
from ticketlab.experiments.prune_at_init import run_prune_at_init, run_prune_at_init_seeds
from ticketlab.experiments.sparse_training import run_sparse_training, run_sparse_training_seeds, \
    sparse_stack_refusal
from ticketlab.experiments.stacked import stack_refusal, stack_size, stacked_train
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.store import Store
from ticketlab.training import DivergenceError

DATA = DataConfig(name="digits", val_size=200)
MLP = ModelConfig(name="mlp", options={"hidden": [32, 16]})
ADAM = TrainConfig(optimizer="adam", lr=2e-3, batch_size=32, steps="2ep", eval_every="1ep")
SGD = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=32, steps="2ep",
                  eval_every="1ep")


def quiet(_: str) -> None:
    pass


def _stacked(config, seeds):
    return [dataclasses.replace(config, seed=s, train=stacked_train(config.train)) for s in seeds]


def _weights(store: Store, config, unit: str) -> dict[str, torch.Tensor]:
    return store.run(config_hash(config)).load_tensors(f"{unit}/final.safetensors")


def _imp(train: TrainConfig = ADAM, **kw) -> IMPConfig:
    return IMPConfig(data=DATA, model=MLP, train=train, levels=2, **kw)


def test_a_stacked_run_is_bit_identical_whatever_else_is_in_its_stack(tmp_path):
    config = _imp(reset="rewind", rewind_step="5it")
    four = _stacked(config, [0, 1, 2, 3])
    together = run_imp_seeds(four, Store(tmp_path / "a"), device="cpu", progress=False, log=quiet)
    alone = run_imp(four[2], Store(tmp_path / "b"), device="cpu", progress=False, log=quiet)  # a stack of one
    pair = run_imp_seeds([four[3], four[2]], Store(tmp_path / "c"), device="cpu", progress=False, log=quiet)
    assert together[2] == alone == pair[1]
    for unit in ("level_00/ticket", "level_02/ticket", "level_02/reinit", "level_02/random"):
        a, b = _weights(Store(tmp_path / "a"), four[2], unit), _weights(Store(tmp_path / "b"), four[2], unit)
        assert all(torch.equal(a[n], b[n]) for n in a), unit
    for name in ("rewind.safetensors", "level_02/mask.safetensors", "level_02/random_mask.safetensors"):
        a = Store(tmp_path / "a").run(config_hash(four[2])).file(*name.split("/")).read_bytes()
        b = Store(tmp_path / "c").run(config_hash(four[2])).file(*name.split("/")).read_bytes()
        assert a == b, name


@pytest.mark.parametrize("train", [ADAM, SGD], ids=["adam", "sgd-momentum-wd"])
def test_stacked_and_solo_imp_agree_within_float_tolerance(tmp_path, train):
    """The stated tolerance (docs/replicates.md): weights within 1e-4, accuracies within one test sample;
    the masks keep the same counts and (on these short runs) the same weights."""
    config = _imp(train)
    store = Store(tmp_path)
    got = run_imp_seeds(_stacked(config, [0, 1]), store, device="cpu", progress=False, log=quiet)
    for seed, rows in zip((0, 1), got):
        solo_config = dataclasses.replace(config, seed=seed)
        solo = run_imp(solo_config, store, device="cpu", progress=False, log=quiet)
        assert [(r["level"], r["branch"], r["kept"]) for r in rows] == [(r["level"], r["branch"], r["kept"])
                                                                       for r in solo]
        for a, b in zip(rows, solo):
            assert abs(a["final_test_accuracy"] - b["final_test_accuracy"]) <= 1 / 360 + 1e-9
        stacked_config = _stacked(config, [seed])[0]
        for unit in ("level_00/ticket", "level_01/ticket", "level_02/reinit"):
            a, b = _weights(store, stacked_config, unit), _weights(store, solo_config, unit)
            assert max(float((a[n] - b[n]).abs().max()) for n in a) < 1e-4, unit
        masks = [Mask.load(store.run(config_hash(c)).file("level_02", "mask.safetensors"))
                 for c in (stacked_config, solo_config)]
        assert masks[0].hamming(masks[1]) <= 2


@pytest.mark.parametrize("train", [ADAM, SGD], ids=["adam", "sgd-momentum-wd"])
def test_pruned_weights_are_exactly_zero_in_every_stacked_run(tmp_path, train):
    config = PruneAtInitConfig(data=DATA, model=MLP, train=train, method="snip", density=0.1)
    configs = _stacked(config, [0, 1, 2])
    store = Store(tmp_path)
    summaries = run_prune_at_init_seeds(configs, store, device="cpu", progress=False, log=quiet)
    for c, summary in zip(configs, summaries):
        run = store.run(config_hash(c))
        mask = Mask.load(run.file("mask.safetensors"))
        weights = run.load_tensors("train/final.safetensors")
        for name, keep in mask.items():
            assert int((weights[name][~keep] != 0).sum()) == 0, name
        assert summary["kept"] == mask.num_kept == round(0.1 * mask.num_total)
        assert json.loads(run.file("config.json").read_text())["config"]["train"]["numerics"] == "stacked"


def test_prune_seeds_alone_equal_in_stack_and_close_to_solo(tmp_path):
    config = PruneAtInitConfig(data=DATA, model=MLP, train=ADAM, method="synflow", density=0.2, rounds=5)
    configs = _stacked(config, [0, 1, 2])
    together = run_prune_at_init_seeds(configs, Store(tmp_path / "a"), device="cpu", progress=False, log=quiet)
    alone = run_prune_at_init(configs[1], Store(tmp_path / "b"), device="cpu", progress=False, log=quiet)
    drop = {"prune_seconds"}
    assert {k: v for k, v in together[1].items() if k not in drop} == {k: v for k, v in alone.items() if k not in drop}
    solo = run_prune_at_init(dataclasses.replace(config, seed=1), Store(tmp_path / "c"), device="cpu", progress=False,
                             log=quiet)
    assert solo["kept"] == alone["kept"]
    assert abs(solo["final_test_accuracy"] - alone["final_test_accuracy"]) <= 1 / 360 + 1e-9


def test_a_diverged_run_is_reported_and_the_others_are_stored(tmp_path, monkeypatch):
    real = stacked.train_stacked

    def one_diverges(*args, **kwargs):
        records = real(*args, **kwargs)
        records[1].diverged = "training loss nan at step 3 (injected)"
        return records

    monkeypatch.setattr(stacked, "train_stacked", one_diverges)
    config = PruneAtInitConfig(data=DATA, model=MLP, train=ADAM, method="magnitude", density=0.3)
    configs = _stacked(config, [0, 1, 2])
    store = Store(tmp_path)
    order = sorted(range(3), key=lambda i: config_hash(configs[i]))  # runs are stacked in hash order
    with pytest.raises(DivergenceError, match="1 of 3 runs diverged"):
        run_prune_at_init_seeds(configs, store, device="cpu", progress=False, log=quiet)
    status = {r["hash"]: r["status"] for r in store.list()}
    for pos, i in enumerate(order):
        assert status[config_hash(configs[i])] == ("diverged" if pos == 1 else "complete")


def test_what_does_not_stack_says_why():
    data = torch.zeros(1, 1, 8, 8)
    conv = build_model("conv2", (1, 8, 8), 10)
    assert "not a plain ReLU MLP" in stack_refusal(conv, ADAM)
    mlp = build_model("mlp", (1, 8, 8), 10, hidden=[16])
    assert stack_refusal(mlp, ADAM) is None
    assert "precision" in stack_refusal(mlp, dataclasses.replace(ADAM, precision="bf16"))
    assert "structured" in imp_stack_refusal(_imp(prune=PruneConfig(structure="refill")))
    assert "mask-0" in imp_stack_refusal(_imp(mask0="frozen_init"))
    assert stack_size(mlp, ADAM, 100) == stacked.MAX_STACK and stack_size(mlp, ADAM, 5) == 5
    assert stack_size(mlp, ADAM, 100, limit=3) == 3
    assert data.shape  # the probe shape above is the models' input


def test_stack_size_on_a_gpu_follows_its_free_memory(monkeypatch):
    """On a GPU: up to MAX_STACK_CUDA = 16 runs (the largest stack checked to keep a replicate's bits
    there), within a quarter of the free memory (probed by a stand-in for torch.cuda.mem_get_info, so
    this runs without a GPU); a larger --stack-size is given, with a StackSizeWarning."""
    import warnings

    mlp = build_model("mlp", (1, 8, 8), 10, hidden=[16])
    params = sum(p.numel() for p in mlp.parameters())  # 64*16+16 + 16*10+10 = 1,210
    per_run = 4 * (4 * params + 3 * ADAM.batch_size * (16 + 10))
    free = {"bytes": 80 << 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 << 30))
    assert stack_size(mlp, ADAM, 10_000, device="cuda") == stacked.MAX_STACK_CUDA == 16
    assert stack_size(mlp, ADAM, 10, device="cuda") == 10 and stack_size(mlp, ADAM, 100) == stacked.MAX_STACK
    with pytest.warns(stacked.StackSizeWarning, match="stack of 64 on a GPU"):
        assert stack_size(mlp, ADAM, 100, limit=64, device="cuda") == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stack_size(mlp, ADAM, 100, limit=64) == 64  # on a CPU a stack's size never changes the bits
    free["bytes"] = stacked.CUDA_MEMORY_SHARE * per_run * 7 + 1  # room for 7 runs
    assert stack_size(mlp, ADAM, 100, device="cuda") == 7
    assert stack_size(mlp, ADAM, 100, limit=3, device=torch.device("cuda:0")) == 3
    free["bytes"] = 0
    assert stack_size(mlp, ADAM, 100, device="cuda") == 1  # one run at a time, never none


def test_cli_seeds_stack_mlps_and_run_conv_nets_one_by_one(tmp_path, capsys):
    common = ["--dataset", "digits", "--steps", "1ep", "--batch-size", "64", "--method", "magnitude",
              "--density", "0.5", "--runs-dir", str(tmp_path), "--no-progress", "--threads", "1"]
    assert main(["prune", *common, "--model", "mlp", "--model-option", "hidden=[16]", "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "trained as stacked replicates" in out and "| 2 |" in out  # one report row over the 2 seeds
    assert main(["prune", *common, "--model", "conv2", "--data-option", "flatten=false", "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "one after another (the model (ConvNet) is not a plain ReLU MLP" in out
    # the fallback's runs are the ordinary --seed runs: a --seed 1 run finds its run complete
    assert main(["prune", *common, "--model", "conv2", "--data-option", "flatten=false", "--seed", "1"]) == 0
    assert "is complete; nothing recomputed" in capsys.readouterr().out
    for bad, message in ((["--seeds", "0", "0"], "lists a seed twice"), (["--seeds", "0", "--seed", "1"], "replaces --seed"),
                         (["--seeds", "0", "--stack-size", "0"], "--stack-size must be >= 1"),
                         (["--stack-size", "4"], "apply to --seeds runs"), (["--no-stack"], "apply to --seeds runs")):
        assert main(["prune", *common, "--model", "mlp", *bad]) == 2
        assert message in capsys.readouterr().err


def test_stacked_configs_must_share_what_the_stack_shares(tmp_path):
    config = PruneAtInitConfig(data=DATA, model=MLP, train=ADAM, method="magnitude", density=0.3)
    a, b = _stacked(config, [0, 1])
    other_lr = dataclasses.replace(b, train=dataclasses.replace(b.train, lr=b.train.lr / 2))
    with pytest.raises(ConfigError, match="must share their data set, model and training settings"):
        run_prune_at_init_seeds([a, other_lr], Store(tmp_path), device="cpu", progress=False, log=quiet)
    imp = _stacked(_imp(), [0, 1])
    with pytest.raises(ConfigError, match="must share their data set, model and training settings"):
        run_imp_seeds([imp[0], dataclasses.replace(imp[1], model=ModelConfig(name="mlp", options={"hidden": [8]}))],
                      Store(tmp_path), device="cpu", progress=False, log=quiet)
    with pytest.raises(ValueError, match="numerics 'stacked'"):
        run_imp_seeds([_imp()], Store(tmp_path), device="cpu", progress=False, log=quiet)


def test_prune_runs_of_other_methods_and_densities_share_a_stack(tmp_path):
    base = PruneAtInitConfig(data=DATA, model=MLP, train=ADAM, method="magnitude", density=0.3)
    configs = [c for method, density in (("magnitude", 0.3), ("snip", 0.1), ("random", 0.05))
               for c in _stacked(dataclasses.replace(base, method=method, density=density), [0, 1])]
    together = run_prune_at_init_seeds(configs, Store(tmp_path / "a"), device="cpu", progress=False, log=quiet)
    for i in (1, 2, 5):  # each run as in a stack of its own
        alone = run_prune_at_init(configs[i], Store(tmp_path / f"b{i}"), device="cpu", progress=False, log=quiet)
        untimed = [{k: v for k, v in summary.items() if not k.endswith("seconds")} for summary in (together[i], alone)]
        assert untimed[0] == untimed[1]
        a, b = _weights(Store(tmp_path / "a"), configs[i], "train"), _weights(Store(tmp_path / f"b{i}"), configs[i], "train")
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_sparse_static_seeds_stack(tmp_path):
    config = SparseTrainConfig(data=DATA, model=MLP, train=ADAM, method="static", density=0.2)
    configs = _stacked(config, [0, 1, 2])
    together = run_sparse_training_seeds(configs, Store(tmp_path / "a"), device="cpu", progress=False, log=quiet)
    alone = run_sparse_training(configs[0], Store(tmp_path / "b"), device="cpu", progress=False, log=quiet)
    assert together[0] == alone
    solo = run_sparse_training(config, Store(tmp_path / "c"), device="cpu", progress=False, log=quiet)
    assert solo["kept"] == alone["kept"] and solo["training_flops"] == alone["training_flops"]
    assert abs(solo["final_test_accuracy"] - alone["final_test_accuracy"]) <= 1 / 360 + 1e-9


@pytest.mark.parametrize("method,options", [("rigl", {"delta_t": 10}), ("set", {"delta_t": 10}),
                                            ("gmp", {"every": "10it", "start": "10it"})])
def test_mask_changing_sparse_methods_stack_their_seeds(tmp_path, capsys, method, options):
    from ticketlab.pruning.dynamic import SPARSE_OPTIONS

    config = SparseTrainConfig(data=DATA, model=MLP, train=ADAM, method=method, density=0.2,
                               options=SPARSE_OPTIONS[method](**options))
    assert sparse_stack_refusal(config) is None
    configs = _stacked(config, [0, 1, 2])
    together = run_sparse_training_seeds(configs, Store(tmp_path / "a"), device="cpu", progress=False, log=quiet)
    alone = run_sparse_training(configs[1], Store(tmp_path / "b"), device="cpu", progress=False, log=quiet)
    assert together[1] == alone  # a run's numbers do not depend on its stack
    run = Store(tmp_path / "b").run(config_hash(configs[1]))
    assert alone["mask_updates"] >= 2 and run.file("train", "mask_events.jsonl").exists()
    solo = run_sparse_training(dataclasses.replace(config, seed=1), Store(tmp_path / "c"), device="cpu",
                               progress=False, log=quiet)
    assert solo["kept"] == alone["kept"] and solo["mask_updates"] == alone["mask_updates"]
    assert solo["training_flops"] == pytest.approx(alone["training_flops"], rel=1e-3)
    assert abs(solo["final_test_accuracy"] - alone["final_test_accuracy"]) <= 2 / 360 + 1e-9
    common = ["--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[16]", "--steps", "1ep",
              "--density", "0.5", "--runs-dir", str(tmp_path / "cli"), "--no-progress", "--threads", "1"]
    flags = ["--gmp-every", "5it"] if method == "gmp" else ["--delta-t", "5"]
    assert main(["sparse", *common, "--method", method, *flags, "--seeds", "0", "1"]) == 0
    assert "one after another" not in capsys.readouterr().out


def test_the_imp_report_of_several_seeds_has_a_table_over_them():
    from ticketlab.analysis.report import imp_seeds_table

    rows = [[{"level": 0, "branch": "ticket", "remaining_percent": 100.0, "final_test_accuracy": a},
             {"level": 1, "branch": "ticket", "remaining_percent": 80.0, "final_test_accuracy": b},
             {"level": 1, "branch": "random", "remaining_percent": 80.0, "final_test_accuracy": c}]
            for a, b, c in ((0.9, 0.8, 0.5), (0.7, 0.6, 0.7))]
    lines = imp_seeds_table(rows).splitlines()
    assert lines[0] == ("| level | remaining % | seeds | ticket final acc mean [min, max] | random final acc mean "
                        "[min, max] |")
    assert lines[2] == "| 0 | 100.00 | 2 | 0.8000 [0.7000, 0.9000] |  |"
    assert lines[3] == "| 1 | 80.00 | 2 | 0.7000 [0.6000, 0.8000] | 0.6000 [0.5000, 0.7000] |"


def test_imp_runs_of_other_settings_share_a_stack(tmp_path):
    """IMP runs of other rates, levels and resets train their shared segments together; each ends as alone."""
    configs = [c for config in (_imp(), _imp(reset="rewind", rewind_step="5it", prune=PruneConfig(rate=0.5)),
                                dataclasses.replace(_imp(), levels=1))
               for c in _stacked(config, [0, 1])]
    together = run_imp_seeds(configs, Store(tmp_path / "a"), device="cpu", progress=False, log=quiet)
    for i in (1, 2, 4):
        alone = run_imp(configs[i], Store(tmp_path / f"b{i}"), device="cpu", progress=False, log=quiet)
        assert together[i] == alone
        levels = configs[i].levels
        a = _weights(Store(tmp_path / "a"), configs[i], f"level_{levels:02d}/ticket")
        b = _weights(Store(tmp_path / f"b{i}"), configs[i], f"level_{levels:02d}/ticket")
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
