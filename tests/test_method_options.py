"""Per-method options (issue 11, part 3): each method declares a frozen options dataclass, validated on
creation, registered under the method's name and nested in the experiment config as ``options``.
Configs hash exactly as when the options were flat fields, config.json keeps the flat layout, and
an option of another method is a clear error on the command line and in the API."""
from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from ticketlab.atomic import atomic_write_text
from ticketlab.cli import build_parser, config_from_args
from ticketlab.config import ConfigError, PruneAtInitConfig, SparseTrainConfig, config_hash, to_dict
from ticketlab.integrity import seal_json
from ticketlab.pruning.dynamic import SPARSE_OPTIONS, DropGrowOptions, GMPOptions
from ticketlab.pruning.scores import SCORE_OPTIONS, SCORES, GraspOptions
from ticketlab.store import Store, StoreError

# (experiment, the flat keywords of the version before the options, config_hash that version gave)
LEGACY = [
    ('sparse', {'method': 'rigl', 'density': 0.2, 'delta_t': 50, 't_end': 0.5, 'alpha': 0.4}, '9d2c8338ed69'),
    ('sparse', {'method': 'set', 'density': 0.1, 'delta_t': 7}, '1697e87409d0'),
    ('sparse', {'method': 'gmp', 'density': 0.05, 'gmp_start': '1ep', 'gmp_end': '5ep', 'gmp_every': '10it',
                'gmp_initial_sparsity': 0.5}, 'b96ffce8691a'),
    ('sparse', {'method': 'static', 'density': 0.3}, 'c23fda7e6c4e'),
    ('sparse', {'method': 'dense', 'density': 1.0}, '66ea7c555844'),
    ('prune', {'method': 'grasp', 'density': 0.05, 'grasp_temperature': 100.0}, 'bb01f4e7984d'),
    ('prune', {'method': 'snip', 'density': 0.1}, '2a9181d8b83b'),
    ('prune', {'method': 'synflow', 'density': 0.01}, '4dc07ca82440'),
]

# to_dict of LEGACY[2] as that version wrote it into config.json (key order included)
LEGACY_GMP_CONFIG = json.loads(
    '{"data": {"name": "mnist", "root": null, "val_size": 0, "options": {}},'
    ' "model": {"name": "lenet_300_100", "options": {}}, "train": {"optimizer": "adam", "lr": 0.0012,'
    ' "momentum": 0.0, "nesterov": false, "weight_decay": 0.0, "batch_size": 60, "steps": "50000it",'
    ' "schedule": "constant", "milestones": [], "gamma": 0.1, "warmup": "0it", "eval_every": "1ep",'
    ' "mask_gradients": false, "fused_optimizer": true, "precision": "fp32"}, "method": "gmp",'
    ' "density": 0.05, "distribution": null, "delta_t": 100, "t_end": 0.75, "alpha": 0.3,'
    ' "gmp_start": "1ep", "gmp_end": "5ep", "gmp_every": "10it", "gmp_initial_sparsity": 0.5,'
    ' "include_first": true, "include_output": true, "seed": 0, "include": [], "exclude": []}')

NEW_SPELLING = {
    "delta_t": ("delta_t", DropGrowOptions), "t_end": ("t_end", DropGrowOptions), "alpha": ("alpha", DropGrowOptions),
    "gmp_start": ("start", GMPOptions), "gmp_end": ("end", GMPOptions), "gmp_every": ("every", GMPOptions),
    "gmp_initial_sparsity": ("initial_sparsity", GMPOptions), "grasp_temperature": ("temperature", GraspOptions),
}


def new_spelling(kind: str, kw: dict) -> object:
    """The config ``kw`` describes, with its method's options as an options object."""
    cls = SparseTrainConfig if kind == "sparse" else PruneAtInitConfig
    plain = {k: v for k, v in kw.items() if k not in NEW_SPELLING}
    given = {NEW_SPELLING[k][0]: v for k, v in kw.items() if k in NEW_SPELLING}
    options = [NEW_SPELLING[k][1] for k in kw if k in NEW_SPELLING]
    return cls(**plain, options=options[0](**given) if options else None)


# --- the options classes -----------------------------------------------------------------------------

def test_defaults_are_the_old_field_defaults():
    assert GraspOptions() == GraspOptions(temperature=200.0)
    assert DropGrowOptions() == DropGrowOptions(delta_t=100, t_end=0.75, alpha=0.3)
    assert GMPOptions() == GMPOptions(start="0it", end=None, every="100it", initial_sparsity=0.0)


@pytest.mark.parametrize("make, message", [
    (lambda: GraspOptions(temperature=0), "GraSP temperature (--grasp-temperature) must be > 0"),
    (lambda: GraspOptions(temperature=-1.0), "must be > 0"),
    (lambda: DropGrowOptions(delta_t=0), "delta_t must be >= 1"),
    (lambda: DropGrowOptions(t_end=0.0), "t_end is a fraction of training in (0, 1]"),
    (lambda: DropGrowOptions(t_end=1.5), "t_end is a fraction"),
    (lambda: DropGrowOptions(alpha=1.0), "alpha (initial drop fraction) must be in (0, 1)"),
    (lambda: DropGrowOptions(alpha=0.0), "alpha"),
    (lambda: GMPOptions(start="soon"), "gmp_start"),
    (lambda: GMPOptions(end="5 epochs"), "gmp_end"),
    (lambda: GMPOptions(every="x"), "gmp_every"),
    (lambda: GMPOptions(initial_sparsity=1.0), "gmp_initial_sparsity must be in [0, 1)"),
    (lambda: GMPOptions(initial_sparsity=-0.1), "gmp_initial_sparsity"),
])
def test_options_are_validated_on_creation(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        make()


def test_options_are_frozen_and_hashable():
    o = DropGrowOptions(delta_t=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.delta_t = 6  # type: ignore[misc]
    assert hash(o) == hash(DropGrowOptions(delta_t=5))


def test_registries_name_each_methods_options():
    assert SCORE_OPTIONS == {"grasp": GraspOptions} and set(SCORE_OPTIONS) <= set(SCORES)
    assert SPARSE_OPTIONS == {"set": DropGrowOptions, "rigl": DropGrowOptions, "gmp": GMPOptions}


@pytest.mark.parametrize("method, expected", [("rigl", DropGrowOptions()), ("set", DropGrowOptions()),
                                              ("gmp", GMPOptions()), ("static", None), ("dense", None)])
def test_sparse_config_takes_its_methods_default_options(method, expected):
    assert SparseTrainConfig(method=method, density=1.0 if method == "dense" else 0.1).options == expected


@pytest.mark.parametrize("method, expected", [("grasp", GraspOptions()), ("snip", None), ("synflow", None),
                                              ("magnitude", None), ("random", None)])
def test_prune_config_takes_its_methods_default_options(method, expected):
    assert PruneAtInitConfig(method=method).options == expected


def test_options_of_another_method_are_refused():
    with pytest.raises(ConfigError, match="DropGrowOptions applies to set/rigl, not gmp; use GMPOptions"):
        SparseTrainConfig(method="gmp", options=DropGrowOptions())
    with pytest.raises(ConfigError, match=r"GMPOptions applies to gmp, not static \(static takes no options\)"):
        SparseTrainConfig(method="static", options=GMPOptions())
    with pytest.raises(ConfigError, match="GraspOptions applies to grasp, not snip"):
        PruneAtInitConfig(method="snip", options=GraspOptions(temperature=100))
    with pytest.raises(ConfigError, match="belong to no method"):
        SparseTrainConfig(method="rigl", options=GraspOptions())


def test_options_may_be_a_dict_of_the_methods_keywords():
    assert SparseTrainConfig(method="rigl", options={"delta_t": 50}) == \
        SparseTrainConfig(method="rigl", options=DropGrowOptions(delta_t=50))
    with pytest.raises(ConfigError, match="options of rigl"):
        SparseTrainConfig(method="rigl", options={"gmp_every": "4it"})
    with pytest.raises(ConfigError, match="takes no options"):
        SparseTrainConfig(method="static", options={"delta_t": 5})


def test_gmp_initial_sparsity_stays_below_the_final_sparsity():
    with pytest.raises(ConfigError, match="gmp_initial_sparsity must be in \\[0, final sparsity 0.9\\]"):
        SparseTrainConfig(method="gmp", density=0.1, options=GMPOptions(initial_sparsity=0.95))
    assert SparseTrainConfig(method="gmp", density=0.1, options=GMPOptions(initial_sparsity=0.5))


# --- hashes and config.json: as when the options were flat fields ----------------------------------------

@pytest.mark.parametrize("kind, kw, expected", LEGACY, ids=[f"{k}-{kw['method']}" for k, kw, _ in LEGACY])
def test_nested_options_hash_as_the_flat_fields_did(kind, kw, expected):
    assert config_hash(new_spelling(kind, kw)) == expected


def test_to_dict_writes_the_flat_legacy_layout():
    config = new_spelling(*LEGACY[2][:2])
    assert config.options == GMPOptions(start="1ep", end="5ep", every="10it", initial_sparsity=0.5)
    d = to_dict(config)
    assert d == LEGACY_GMP_CONFIG and list(d) == list(LEGACY_GMP_CONFIG)  # same keys, same order
    assert "options" not in d and d["delta_t"] == 100  # other methods' options at their defaults
    assert to_dict(PruneAtInitConfig(method="snip"))["grasp_temperature"] == 200.0


def test_a_run_stored_by_the_flat_version_is_the_same_run(tmp_path):
    config = new_spelling(*LEGACY[2][:2])
    run_hash = LEGACY[2][2]
    folder = tmp_path / run_hash
    folder.mkdir()
    # config.json exactly as the version with flat fields wrote it (written here by hand)
    atomic_write_text(folder / "config.json", seal_json({"experiment": "sparse", "hash": run_hash,
                                                         "config": LEGACY_GMP_CONFIG}))
    store = Store(tmp_path)
    run = store.open_run(config)
    assert run.hash == run_hash and run.path == folder


def test_a_stored_run_whose_flat_option_differs_is_refused(tmp_path):
    config = new_spelling(*LEGACY[2][:2])
    run_hash = LEGACY[2][2]
    (tmp_path / run_hash).mkdir()
    tampered = {**LEGACY_GMP_CONFIG, "gmp_every": "20it"}
    atomic_write_text(tmp_path / run_hash / "config.json", seal_json({"experiment": "sparse", "hash": run_hash,
                                                                     "config": tampered}))
    with pytest.raises(StoreError, match="holds a different experiment"):
        Store(tmp_path).open_run(config)


def test_a_new_run_reopens(tmp_path):
    config = SparseTrainConfig(method="rigl", density=0.2, options=DropGrowOptions(delta_t=50, t_end=0.5, alpha=0.4))
    store = Store(tmp_path)
    first = store.open_run(config)
    assert store.open_run(config).path == first.path
    assert json.loads((first.path / "config.json").read_text())["config"]["delta_t"] == 50


# --- the deprecated flat keywords -----------------------------------------------------------------

@pytest.mark.parametrize("kind, kw, expected", LEGACY, ids=[f"{k}-{kw['method']}" for k, kw, _ in LEGACY])
def test_flat_keywords_still_build_the_same_config_with_a_warning(kind, kw, expected):
    cls = SparseTrainConfig if kind == "sparse" else PruneAtInitConfig
    flat = any(k in NEW_SPELLING for k in kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = cls(**kw)
    assert config == new_spelling(kind, kw) and config_hash(config) == expected
    assert [w.category for w in caught] == ([DeprecationWarning] if flat else [])
    if flat:
        assert "options=" in str(caught[0].message)


@pytest.mark.parametrize("make, message", [
    (lambda: SparseTrainConfig(method="gmp", delta_t=50), "delta_t applies to set/rigl, not gmp"),
    (lambda: SparseTrainConfig(method="rigl", density=0.1, gmp_every="4it"), "gmp_every applies to gmp, not rigl"),
    (lambda: SparseTrainConfig(method="static", alpha=0.4), "alpha applies to set/rigl, not static"),
    (lambda: PruneAtInitConfig(method="snip", grasp_temperature=100.0), "grasp_temperature applies to grasp, not snip"),
    (lambda: SparseTrainConfig(method="rigl", delta_t=5, options=DropGrowOptions()), "not both"),
])
def test_flat_keywords_of_another_method_are_refused(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


# --- the command line -------------------------------------------------------------------------------

def _build(argv):
    return config_from_args(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv, message", [
    (["sparse", "--method", "gmp", "--density", "0.1", "--delta-t", "50"], "--delta-t applies to set/rigl, not gmp"),
    (["sparse", "--method", "static", "--density", "0.1", "--alpha", "0.4"], "--alpha applies to set/rigl, not static"),
    (["sparse", "--method", "dense", "--t-end", "0.5"], "--t-end applies to set/rigl, not dense"),
    (["sparse", "--method", "rigl", "--density", "0.1", "--gmp-start", "1ep"], "--gmp-start applies to gmp, not rigl"),
    (["sparse", "--method", "set", "--density", "0.1", "--gmp-initial-sparsity", "0.2"],
     "--gmp-initial-sparsity applies to gmp, not set"),
    (["prune", "--method", "snip", "--density", "0.1", "--grasp-temperature", "100"],
     "--grasp-temperature applies to grasp, not snip"),
])
def test_a_flag_of_another_method_is_one_clear_error(argv, message):
    with pytest.raises(ConfigError) as exc:
        _build(argv)
    assert str(exc.value) == message


def test_flags_build_the_methods_options():
    config = _build(["sparse", "--method", "gmp", "--density", "0.1", "--gmp-every", "4it", "--gmp-end", "2ep"])
    assert config.options == GMPOptions(every="4it", end="2ep")
    assert _build(["sparse", "--method", "rigl", "--density", "0.1"]).options == DropGrowOptions()
    assert _build(["prune", "--method", "grasp", "--density", "0.1", "--grasp-temperature", "50"]).options == \
        GraspOptions(temperature=50.0)
    with pytest.raises(ConfigError, match="delta_t must be >= 1"):
        _build(["sparse", "--method", "rigl", "--density", "0.1", "--delta-t", "0"])


def test_flags_help_and_defaults_come_from_the_options_fields():
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices
    text = " ".join(sub["sparse"].format_help().split())
    for flag, default in [("--delta-t", "100"), ("--t-end", "0.75"), ("--alpha", "0.3"), ("--gmp-start", "0it"),
                          ("--gmp-end", "75% of training"), ("--gmp-every", "100it"),
                          ("--gmp-initial-sparsity", "0.0")]:
        assert flag in text and f"(default: {default})" in text, flag
    assert "--grasp-temperature" in " ".join(sub["prune"].format_help().split())
    assert "(default: 200.0)" in " ".join(sub["prune"].format_help().split())


def test_prune_at_init_passes_the_methods_options_to_its_score(monkeypatch):
    import torch

    import ticketlab.experiments.prune_at_init as pai
    from ticketlab.masks import Mask

    seen = []
    monkeypatch.setattr(pai, "prune", lambda method, model, dense, source, density, **kw: seen.append((method, kw))
                        or dense)
    monkeypatch.setattr(pai, "scoring_source", lambda data, cfg, device: None)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    for config in (PruneAtInitConfig(method="grasp", density=0.5, options=GraspOptions(temperature=50.0)),
                   PruneAtInitConfig(method="snip", density=0.5)):
        pai.compute_mask(config, model, None, torch.device("cpu"), dense=Mask.dense(model))
    assert seen[0][0] == "grasp" and seen[0][1]["temperature"] == 50.0
    assert seen[1][0] == "snip" and "temperature" not in seen[1][1]
