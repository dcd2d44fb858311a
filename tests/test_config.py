"""Tests for ticketlab.config: validation, dict round trip and the run-naming hash."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace

import pytest

from ticketlab.config import (
    ConfigError,
    DataConfig,
    IMPConfig,
    ModelConfig,
    PruneConfig,
    TrainConfig,
    config_hash,
    imp_config_from_dict,
    to_dict,
)


def custom() -> IMPConfig:
    return IMPConfig(
        data=DataConfig(name="cifar10", root="/data/cifar", val_size=5000, options={"augment": True}),
        model=ModelConfig(name="resnet20", options={"width": 16}),
        train=TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                          batch_size=128, steps="160ep", schedule="multistep", milestones=("80ep", "120ep"),
                          warmup="1ep100it", eval_every="2000it", mask_gradients=True),
        prune=PruneConfig(rate=0.2, scope="layerwise", output_rate=0.1),
        levels=3, reset="rewind", rewind_step="500it", baselines=("random",), seed=7,
    )


# --- validation -------------------------------------------------------------------------------------
def test_defaults_are_valid():
    c = IMPConfig()
    assert c.prune.rate == 0.2 and c.reset == "init" and c.baselines == ("reinit", "random")
    custom()  # and so is a fully specified one


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_prune_rate_out_of_range(rate):
    with pytest.raises(ConfigError, match=r"prune rate must be in \[0, 1\)"):
        PruneConfig(rate=rate)


def test_prune_rate_boundaries_accepted():
    assert PruneConfig(rate=0.0).rate == 0.0
    assert PruneConfig(rate=0.99).rate == 0.99


@pytest.mark.parametrize("rate", [1.0, -0.1])
def test_output_rate_out_of_range(rate):
    with pytest.raises(ConfigError, match="output_rate"):
        PruneConfig(output_rate=rate)


def test_output_rate_without_output_layer():
    with pytest.raises(ConfigError, match="include_output"):
        PruneConfig(output_rate=0.1, include_output=False)


def test_unknown_scope():
    with pytest.raises(ConfigError, match=r"scope 'local'.*global.*layerwise"):
        PruneConfig(scope="local")  # type: ignore[arg-type]


def test_unknown_optimizer_lists_choices():
    with pytest.raises(ConfigError, match=r"optimizer 'sgdd' is unknown.*'sgd'.*'adam'"):
        TrainConfig(optimizer="sgdd")  # type: ignore[arg-type]


def test_unknown_schedule():
    with pytest.raises(ConfigError, match=r"schedule 'step' is unknown"):
        TrainConfig(schedule="step")  # type: ignore[arg-type]


def test_nesterov_needs_sgd_with_momentum():
    with pytest.raises(ConfigError, match="nesterov needs optimizer 'sgd' with momentum > 0"):
        TrainConfig(optimizer="sgd", momentum=0.0, nesterov=True)
    with pytest.raises(ConfigError, match="nesterov"):
        TrainConfig(optimizer="adam", nesterov=True)
    assert TrainConfig(optimizer="sgd", momentum=0.9, nesterov=True).nesterov


def test_momentum_only_for_sgd():
    with pytest.raises(ConfigError, match="momentum applies to sgd only"):
        TrainConfig(optimizer="adam", momentum=0.9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "lr must be > 0"),
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"lr": float("nan")}, "lr must be > 0"),
        ({"optimizer": "sgd", "momentum": 1.0}, "momentum must be in"),
        ({"optimizer": "sgd", "momentum": -0.5}, "momentum must be in"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"batch_size": 0}, "batch_size"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
    ],
)
def test_train_numbers_out_of_range(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_multistep_needs_milestones():
    with pytest.raises(ConfigError, match="multistep.*milestones"):
        TrainConfig(schedule="multistep")
    assert TrainConfig(schedule="multistep", milestones=("80ep",)).milestones == ("80ep",)


def test_milestones_become_a_tuple_of_strings():
    t = TrainConfig(schedule="multistep", milestones=["80ep", 120])  # type: ignore[arg-type]
    assert t.milestones == ("80ep", "120it")  # a Python int means iterations


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", "10 epochs"), ("steps", "-5it"), ("steps", ""), ("warmup", "1.5ep"), ("eval_every", "ep")],
)
def test_bad_step_strings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}: cannot read step"):
        TrainConfig(**{field: value})


def test_bad_milestone():
    with pytest.raises(ConfigError, match=r"milestone: cannot read step '80 epochs'"):
        TrainConfig(schedule="multistep", milestones=("80ep", "80 epochs"))


def test_bad_rewind_step():
    with pytest.raises(ConfigError, match="rewind_step: cannot read step"):
        IMPConfig(reset="rewind", rewind_step="2 epochs")


def test_unknown_baseline():
    with pytest.raises(ConfigError, match=r"baselines \['shuffle'\] are unknown"):
        IMPConfig(baselines=("reinit", "shuffle"))
    assert IMPConfig(baselines=()).baselines == ()
    assert IMPConfig(baselines=["random"]).baselines == ("random",)  # type: ignore[arg-type]


def test_unknown_reset():
    with pytest.raises(ConfigError, match=r"reset 'rewound' is unknown"):
        IMPConfig(reset="rewound")  # type: ignore[arg-type]


def test_rewind_step_with_reset_init():
    with pytest.raises(ConfigError, match=r"rewind_step is only used with reset.*--reset rewind"):
        IMPConfig(reset="init", rewind_step="1000it")
    # zero written any way is fine with reset init
    assert IMPConfig(reset="init", rewind_step="0ep").rewind_step == "0ep"
    for reset in ("rewind", "lr_rewind", "finetune"):
        assert IMPConfig(reset=reset, rewind_step="1000it").reset == reset


def test_negative_levels_and_val_size():
    with pytest.raises(ConfigError, match="levels"):
        IMPConfig(levels=-1)
    with pytest.raises(ConfigError, match="val_size"):
        DataConfig(val_size=-1)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        IMPConfig().levels = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


# --- dicts and hashes -------------------------------------------------------------------------------
def test_to_dict_is_plain_json():
    d = to_dict(custom())
    assert d["train"]["milestones"] == ["80ep", "120ep"]
    assert d["baselines"] == ["random"]
    assert d["data"]["root"] == "/data/cifar"
    assert d["prune"] == {"rate": 0.2, "scope": "layerwise", "output_rate": 0.1,
                          "include_first": True, "include_output": True, "include": [], "exclude": []}
    assert json.loads(json.dumps(d)) == d


def test_to_dict_for_hash_leaves_out_root_and_later_options_at_their_default():
    full = to_dict(custom())
    hashed = to_dict(custom(), for_hash=True)
    assert "root" not in hashed["data"]
    full["data"].pop("root")
    assert full["train"].pop("precision") == "fp32"  # added later: at its default it leaves the hash as it was
    assert full["prune"].pop("include") == full["prune"].pop("exclude") == []  # added later too
    assert hashed == full


def test_option_added_later_changes_hash_only_when_set():
    base = custom()
    bf16 = IMPConfig(data=base.data, model=base.model, train=replace(base.train, precision="bf16"),
                     prune=base.prune, levels=base.levels, reset=base.reset, rewind_step=base.rewind_step,
                     baselines=base.baselines, seed=base.seed)
    assert config_hash(replace(base.train, precision="fp32")) == config_hash(base.train)
    assert config_hash(bf16) != config_hash(base)
    assert to_dict(bf16, for_hash=True)["train"]["precision"] == "bf16"


@pytest.mark.parametrize("config", [IMPConfig(), custom()], ids=["default", "custom"])
def test_dict_round_trip(config):
    assert imp_config_from_dict(to_dict(config)) == config
    assert imp_config_from_dict(json.loads(json.dumps(to_dict(config)))) == config


def test_hash_is_stable_across_identical_configs():
    h = config_hash(custom())
    assert len(h) == 12 and int(h, 16) >= 0
    assert config_hash(custom()) == h
    assert config_hash(imp_config_from_dict(json.loads(json.dumps(to_dict(custom()))))) == h
    assert config_hash(IMPConfig()) == config_hash(IMPConfig())
    assert config_hash(IMPConfig()) != h


def test_hash_changes_with_results_relevant_fields():
    base = IMPConfig()
    h = config_hash(base)
    changed = [
        dataclasses.replace(base, train=dataclasses.replace(base.train, lr=base.train.lr * 2)),
        dataclasses.replace(base, seed=1),
        dataclasses.replace(base, levels=base.levels + 1),
        dataclasses.replace(base, prune=PruneConfig(rate=0.3)),
        dataclasses.replace(base, data=DataConfig(name="fashion_mnist")),
        dataclasses.replace(base, data=DataConfig(val_size=100)),
        dataclasses.replace(base, model=ModelConfig(options={"hidden": [100]})),
    ]
    hashes = [config_hash(c) for c in changed]
    assert h not in hashes
    assert len(set(hashes)) == len(hashes)


def test_hash_ignores_data_root():
    base = IMPConfig()
    assert config_hash(dataclasses.replace(base, data=DataConfig(root="/somewhere/else"))) == config_hash(base)
    assert config_hash(dataclasses.replace(custom(), data=dataclasses.replace(custom().data, root=None))) \
        == config_hash(custom())


def test_hash_ignores_option_order_and_tuple_vs_list():
    a = IMPConfig(model=ModelConfig(options={"hidden": (300, 100), "act": "relu"}))
    b = IMPConfig(model=ModelConfig(options={"act": "relu", "hidden": [300, 100]}))
    assert config_hash(a) == config_hash(b)
