"""Sparse training runs end to end (dense, static, SET, RigL, GMP): densities, FLOPs, the CLI.

The model is an MLP 16 -> 32 -> 16 -> 4; its per-sample forward FLOPs are its kept weights
(1 multiply-add per weight, biases not counted), so every FLOPs figure is checkable by hand.
"""
from __future__ import annotations

import pytest

from ticketlab.cli import main
from ticketlab.config import DataConfig, ModelConfig, SparseTrainConfig, TrainConfig, config_hash
from ticketlab.experiments.sparse_training import run_sparse_training
from ticketlab.pruning.distributions import layer_counts
from ticketlab.pruning.dynamic import DropGrowOptions, GMPOptions
from ticketlab.pruning.schedules import Cubic
from ticketlab.store import Store

SHAPES = {"hidden.0.weight": (32, 16), "hidden.2.weight": (16, 32), "fc.weight": (4, 16)}
SIZES = {n: a * b for n, (a, b) in SHAPES.items()}
F_DENSE = sum(SIZES.values())  # 1088 FLOPs per sample
T = 32  # "4ep" of 256 samples at batch 32
DENSITY = 0.3


OPTIONS = {"set": DropGrowOptions(delta_t=5), "rigl": DropGrowOptions(delta_t=5), "gmp": GMPOptions(every="4it")}


def config(method: str, **kw) -> SparseTrainConfig:
    base = dict(
        data=DataConfig(name="synthetic_mlp", options=dict(n_train=256, n_test=128, dim=16, num_classes=4, seed=0)),
        model=ModelConfig(name="mlp", options={"hidden": [32, 16]}),
        train=TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="4ep", eval_every="1ep"),
        method=method, density=1.0 if method == "dense" else DENSITY, options=OPTIONS.get(method))
    base.update(kw)
    return SparseTrainConfig(**base)


def run(cfg: SparseTrainConfig, root) -> tuple[dict, list[dict]]:
    store = Store(root)
    summary = run_sparse_training(cfg, store, device="cpu", progress=False, log=lambda _: None)
    r = store.run(config_hash(cfg))
    events = r.read_jsonl("train", "mask_events.jsonl") if r.file("train", "mask_events.jsonl").exists() else []
    assert r.read_json("summary.json")["status"] == "complete"
    return summary, events


def kept_per_layer(summary: dict) -> dict[str, int]:
    return {n: round(d * SIZES[n]) for n, d in summary["layer_density"].items()}


ERK = layer_counts("erk", SHAPES, DENSITY)
F_SPARSE = sum(ERK.values())  # round(0.3 * 1088) = 326


def test_erk_budget_is_what_we_think():
    assert F_SPARSE == round(DENSITY * F_DENSE) == 326
    assert all(0 < ERK[n] <= SIZES[n] for n in SIZES)


def test_dense(tmp_path):
    summary, events = run(config("dense"), tmp_path)
    assert summary["method"] == "dense"
    assert summary["density"] == 1.0 and summary["kept"] == F_DENSE
    assert summary["training_flops_relative"] == 1.0
    assert summary["forward_flops_dense"] == summary["forward_flops_start"] == summary["forward_flops_end"] == F_DENSE
    assert summary["training_flops"] == 3 * F_DENSE * T * 32
    assert events == [] and summary["mask_updates"] == 0


@pytest.mark.parametrize("method", ["static", "set"])
def test_static_and_set_keep_erk_counts_and_cost_3_fs(tmp_path, method):
    summary, events = run(config(method), tmp_path)
    assert kept_per_layer(summary) == ERK
    assert summary["kept"] == F_SPARSE
    assert summary["forward_flops_start"] == summary["forward_flops_end"] == F_SPARSE
    assert summary["training_flops_relative"] == pytest.approx(F_SPARSE / F_DENSE, rel=1e-12)
    assert summary["training_flops"] == 3 * F_SPARSE * T * 32
    if method == "static":
        assert events == [] and summary["mask_updates"] == 0
    else:
        assert [e["step"] for e in events] == [5, 10, 15, 20]  # every 5 until t_end = int(0.75 * 32) = 24
        assert all(e["kept"] == ERK for e in events)
        assert summary["mask_updates"] == 4


def test_rigl_keeps_erk_counts_and_pays_for_dense_gradients(tmp_path):
    summary, events = run(config("rigl"), tmp_path)
    static, _ = run(config("static"), tmp_path)
    assert kept_per_layer(summary) == ERK
    assert [e["step"] for e in events] == [5, 10, 15, 20] and all(e["kept"] == ERK for e in events)
    n_updates = 4
    expected = (T * 3 * F_SPARSE + n_updates * (F_DENSE - F_SPARSE)) / (3 * F_DENSE * T)
    assert summary["training_flops_relative"] == pytest.approx(expected, rel=1e-12)
    assert summary["training_flops"] == 32 * (T * 3 * F_SPARSE + n_updates * (F_DENSE - F_SPARSE))
    assert static["training_flops_relative"] < summary["training_flops_relative"] < static["training_flops_relative"] + 0.05
    assert summary["final_test_accuracy"] > 0.4  # it learns something (chance 0.25)


@pytest.mark.parametrize("distribution", ["uniform", "global"])
def test_gmp_reaches_final_density_and_costs_between_it_and_dense(tmp_path, distribution):
    summary, events = run(config("gmp", distribution=distribution), tmp_path)
    # prunes at 0, 4, ..., 24 (end = 75% of 32 steps)
    assert [e["step"] for e in events] == list(range(0, 25, 4))
    if distribution == "uniform":
        assert kept_per_layer(summary) == {n: round(s * DENSITY) for n, s in SIZES.items()}
    else:
        assert summary["kept"] == round(F_DENSE * DENSITY)
    for e in events:
        density = Cubic(density=DENSITY, start=0, end=24, every=4).density_at(e["step"])
        if distribution == "uniform":
            assert e["kept"] == {n: round(s * density) for n, s in SIZES.items()}
        else:
            assert sum(e["kept"].values()) == round(F_DENSE * density)
    assert summary["forward_flops_end"] == summary["kept"]
    assert summary["forward_flops_start"] == F_DENSE
    # step t runs with the mask of the last prune at or before t
    per_step = []
    f = F_DENSE
    by_step = {e["step"]: sum(e["kept"].values()) for e in events}
    for t in range(T):
        f = by_step.get(t, f)
        per_step.append(f)
    assert summary["training_flops"] == 32 * 3 * sum(per_step)
    assert summary["density"] < summary["training_flops_relative"] < 1.0


def test_gmp_ending_with_training_reports_the_final_inference_flops(tmp_path):
    # the last prune happens after the last step (t = 32): the final mask is what inference costs
    summary, events = run(config("gmp", options=GMPOptions(end="4ep", every="8it")), tmp_path)
    assert [e["step"] for e in events] == [0, 8, 16, 24, 32]
    assert summary["kept"] == sum(round(s * DENSITY) for s in SIZES.values())
    assert summary["forward_flops_end"] == summary["kept"]
    per_step = [F_DENSE] * 8 + [sum(events[i]["kept"].values()) for i in (1, 2, 3) for _ in range(8)]
    assert summary["training_flops"] == 32 * 3 * sum(per_step)


# --- command line -------------------------------------------------------------------------------

SMALL = ["--dataset", "synthetic_mlp", "--data-option", "n_train=256", "--data-option", "n_test=128",
         "--data-option", "dim=16", "--model", "mlp", "--model-option", "hidden=[32,16]", "--steps", "2ep",
         "--batch-size", "32", "--delta-t", "4", "--no-progress"]


def test_cli_sparse_rigl_writes_report(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["sparse", "--method", "rigl", "--sparsity", "0.9", *SMALL, "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    run_dirs = [p for p in runs.iterdir() if p.is_dir()]
    assert len(run_dirs) == 1
    report = (run_dirs[0] / "report.md").read_text()
    rows = [line for line in report.splitlines() if "| rigl |" in line]
    assert len(rows) == 1, report
    assert f"| {109 / 1088:.4f} | rigl | erk |" in rows[0]  # round(0.1 * 1088) = 109 kept
    assert "training FLOPs" in report and "rigl" in out


@pytest.mark.parametrize("argv, message", [
    (["--method", "static"], "--method static needs --density or --sparsity"),
    (["--method", "rigl", "--density", "0.2", "--distribution", "global"], "does not apply to rigl"),
    (["--method", "gmp", "--density", "0.2", "--delta-t", "4"], "--delta-t applies to set/rigl, not gmp"),
    (["--method", "static", "--density", "0.2", "--gmp-every", "4it"], "--gmp-every applies to gmp, not static"),
])
def test_cli_sparse_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    small = [a for i, a in enumerate(SMALL) if "--delta-t" not in SMALL[max(i - 1, 0):i + 1]]  # rigl's option
    assert main(["sparse", *argv, *small, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ticketlab: error:") and message in err, err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing was trained or stored


def test_cli_sparse_distribution_is_one_of_fixed_choices_like_prunes(tmp_path, capsys):
    """Free text until issue 21 (a typo reached the config's check); now argparse's choices, as in prune."""
    with pytest.raises(SystemExit) as exc:
        main(["sparse", "--method", "gmp", "--density", "0.2", "--distribution", "erks", "--runs-dir", str(tmp_path)])
    assert exc.value.code == 2 and "invalid choice: 'erks'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
