"""``ticketlab strong`` (experiments/strong.py) and its data sets: moons / circles (data/toy.py)
and the digits ``classes`` option."""
from __future__ import annotations

import json

import pytest
import torch

from ticketlab.config import ConfigError, DataConfig
from ticketlab.data import DataError, load_dataset
from ticketlab.experiments.strong import StrongConfig, run_strong, strong_report
from ticketlab.pruning.genetic import GAOptions
from ticketlab.store import Store

torch.set_num_threads(1)

TINY_DATA = DataConfig(name="moons", options={"n_train": 200, "n_test": 60})
TINY_GA = GAOptions(population=10, min_generations=3, patience=2, max_generations=6)


def quiet(_: str) -> None:
    pass


def _tiny(**kw) -> StrongConfig:
    base = dict(data=TINY_DATA, hidden=(8,), seeds=(0, 1), ga=TINY_GA, epochs=1, batch_size=32)
    return StrongConfig(**{**base, **kw})


# --- data sets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["moons", "circles"])
def test_toy_sets_have_their_shapes_scaling_and_seeds(name):
    d = load_dataset(name, n_train=300, n_test=100)
    assert d.train.x.shape == (300, 2) and d.test.x.shape == (100, 2) and d.num_classes == 2
    assert d.train.y.dtype == torch.int64 and set(d.train.y.tolist()) == {0, 1}
    assert torch.allclose(d.train.x.min(0).values, torch.tensor([-0.7, -0.7]))
    assert torch.allclose(d.train.x.max(0).values, torch.tensor([0.7, 0.7]))
    again = load_dataset(name, n_train=300, n_test=100)
    other = load_dataset(name, n_train=300, n_test=100, seed=1)
    assert torch.equal(d.train.x, again.train.x) and torch.equal(d.test.y, again.test.y)
    assert not torch.equal(d.train.x, other.train.x)
    raw = load_dataset(name, n_train=300, n_test=100, scale=0)
    assert raw.train.x.abs().max() > 0.9  # unscaled


@pytest.mark.parametrize("options, message", [
    ({"n_train": 0}, "n_train must be an integer >= 1"),
    ({"noise": -0.1}, "noise must be a number >= 0"),
    ({"scale": "big"}, "scale must be a number"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"factor": 1.5}, "factor must lie strictly between 0 and 1"),
    ({"colour": "red"}, "unknown option"),  # (classes= is the generic class split of any labelled set)
])
def test_toy_sets_refuse_bad_options_clearly(options, message):
    name = "circles" if "factor" in options else "moons"
    with pytest.raises(DataError, match=message):
        load_dataset(name, **{"n_train": 10, "n_test": 10, **options})


def test_digits_classes_keep_those_digits_relabelled_in_the_order_given():
    full = load_dataset("digits")
    two = load_dataset("digits", classes="0,1")
    assert two.num_classes == 2 and two.input_shape == (64,)
    assert len(two.train) + len(two.test) == 360  # 178 zeros and 182 ones
    assert set(two.train.y.tolist()) == {0, 1}
    swapped = load_dataset("digits", classes=[1, 0])
    assert torch.equal(swapped.train.x, two.train.x) and torch.equal(swapped.train.y, 1 - two.train.y)
    assert full.num_classes == 10 and len(full.train) == 1437
    assert torch.equal(load_dataset("digits", classes=None).train.x, full.train.x)  # the default is unchanged


@pytest.mark.parametrize("classes, message", [
    ("0", "fewer than two"), ("1,1", "repeats"), ([0, 10], "not digits 0-9"), ("a,b", "comma-separated"),
    (3, "string or a list"), ([True, 0], "not digits"),
])
def test_digits_bad_classes_are_refused_with_the_fix(classes, message):
    with pytest.raises(DataError, match=message) as err:
        load_dataset("digits", classes=classes)
    assert 'classes="0,1"' in str(err.value)


# --- the config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"method": "gen"}, "unknown"), ({"method": "gem", "epochs": 2, "gem_iter_period": 2}, "gem-iter-period"),
    ({"hidden": (0,)}, "widths"), ({"seeds": (1, 1)}, "distinct"),
    ({"density": 0.0}, "density"), ({"baselines": ("ep",)}, "baselines"), ({"baseline_densities": (2.0,)}, "baseline"),
    ({"epochs": 0}, "positive"),
])
def test_config_refuses_bad_values(kw, message):
    with pytest.raises(ConfigError, match=message):
        StrongConfig(**kw)


# --- the stored run ------------------------------------------------------------------------------------

def test_ga_run_stores_tickets_baselines_and_reports(tmp_path):
    store = Store(tmp_path)
    rows = run_strong(_tiny(), store, device="cpu", progress=False, log=quiet)
    labels = [(r["seed"], r["method"], r["role"]) for r in rows]
    assert labels == [(s, m, role) for s in (0, 1) for m, role in (("ga", "ticket"), ("edgepopup", "at ticket density"),
                                                                    ("edgepopup", "at 0.5"), ("backprop", "baseline"))]
    ga = rows[0]
    ep = rows[1]
    assert abs(ep["density"] - ga["density"]) < 0.1  # layer-wise rounding of the same kept fraction
    assert 0 < ga["density"] < 1 and 0 <= ga["test_accuracy"] <= 1
    run = store.runs()[0]
    assert not list(run.path.rglob("checkpoint.safetensors"))
    hist = run.read_jsonl("seed_0", "ga", "history.jsonl")
    assert hist[0]["generation"] == 0 and len(hist) == ga["generations"] + 1
    assert run_strong(_tiny(), store, device="cpu", progress=False, log=quiet) == rows  # complete: from the store
    text, pngs = strong_report([run], tmp_path / "r.png")
    assert "| ga | 2 |" in text and "GA per generation" in text and pngs[0].exists()


def test_edgepopup_method_runs_at_its_density_with_backprop(tmp_path):
    rows = run_strong(_tiny(method="edgepopup", density=0.3, seeds=(0,), baseline_densities=()), Store(tmp_path),
                      device="cpu", progress=False, log=quiet)
    assert [(r["method"], r["role"]) for r in rows] == [("edgepopup", "ticket"), ("backprop", "baseline")]
    assert abs(rows[0]["density"] - 0.3) < 0.05


def test_gem_method_finds_a_flag_mask_of_exactly_its_density_with_baselines(tmp_path):
    rows = run_strong(_tiny(method="gem", density=0.3, seeds=(0,), epochs=3, gem_iter_period=1,
                            baseline_densities=()), Store(tmp_path), device="cpu", progress=False, log=quiet)
    assert [(r["method"], r["role"]) for r in rows] == [("gem", "ticket"), ("edgepopup", "at ticket density"),
                                                        ("backprop", "baseline")]
    gem = rows[0]
    assert gem["kept"] == max(1, round(0.3 * gem["total"]))  # GEM-MINER's global count, exact
    assert 0 <= gem["test_accuracy"] <= 1 and abs(rows[1]["density"] - gem["density"]) < 0.1


class Kill(Exception):
    pass


def test_a_run_killed_mid_ga_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    from ticketlab.pruning.genetic import GAState

    cfg = _tiny(seeds=(3,), baselines=())
    clean = run_strong(cfg, Store(tmp_path / "clean"), device="cpu", progress=False, log=quiet)
    original = GAState.to_tensors
    calls = {"n": 0}

    def dying(self):
        calls["n"] += 1
        if calls["n"] == 3:  # after generation 1 was saved
            raise Kill()
        return original(self)

    monkeypatch.setattr(GAState, "to_tensors", dying)
    with pytest.raises(Kill):
        run_strong(cfg, Store(tmp_path / "killed"), device="cpu", progress=False, log=quiet)
    monkeypatch.setattr(GAState, "to_tensors", original)
    lines: list[str] = []
    resumed = run_strong(cfg, Store(tmp_path / "killed"), device="cpu", progress=False, log=lines.append)
    assert any("resuming after generation 1" in line for line in lines)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(clean)
    a = (tmp_path / "clean").glob("*/seed_3/ga/history.jsonl")
    b = (tmp_path / "killed").glob("*/seed_3/ga/history.jsonl")
    assert [json.loads(x) for x in next(a).read_text().splitlines()[:-1]] == \
        [json.loads(x) for x in next(b).read_text().splitlines()[:-1]]


def test_cli_strong_runs_reports_and_refuses_bad_flags(tmp_path, capsys):
    from ticketlab.cli import main

    argv = ["strong", "--dataset", "digits", "--data-option", "classes=[0,1]", "--hidden", "6", "--seeds", "0",
            "--population", "8", "--min-generations", "2", "--patience", "2", "--max-generations", "3",
            "--epochs", "1", "--batch-size", "32", "--baselines", "backprop", "--runs-dir", str(tmp_path),
            "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ga on digits [64, 6, 2]" in out and "backprop (baseline)" in out
    assert list(tmp_path.glob("*/report.md")) and list(tmp_path.glob("*/report.png"))
    with pytest.raises(SystemExit) as exit_:
        main([*argv[:-2], "--variant", "nsga"])
    assert exit_.value.code == 2
    assert main(["strong", "--dataset", "digits", "--data-option", "classes=[0,0]", "--runs-dir", str(tmp_path),
                 "--no-progress", "--device", "cpu"]) == 2
    assert "classes" in capsys.readouterr().err
