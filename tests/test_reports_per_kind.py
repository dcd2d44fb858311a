"""The report of every kind of stored run (issue 21): its record's ``report(runs, plot)`` gives a
markdown table with the expected columns, whose numbers are the stored summary's, and a PNG plot.

One tiny run per kind in ``EXPERIMENTS`` (all together a few seconds); a kind added to the registry
without a check here fails ``test_report_of_every_kind``.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ticketlab.cli import build_parser, config_from_args
from ticketlab.config import config_hash
from ticketlab.experiments.registry import EXPERIMENTS
from ticketlab.store import Run, Store

QUIET = dict(device="cpu", progress=False, log=lambda _: None)
MLP = ["--dataset", "synthetic_mlp", "--data-option", "n_train=128", "--data-option", "n_test=32",
       "--data-option", "dim=8", "--model", "mlp", "--model-option", "hidden=[16]", "--batch-size", "32"]
ARGV: dict[str, list[str]] = {
    "imp": ["imp", *MLP, "--steps", "2ep", "--levels", "1"],
    "prune": ["prune", *MLP, "--steps", "2ep", "--method", "snip", "--density", "0.2"],
    "sparse": ["sparse", *MLP, "--steps", "2ep", "--method", "rigl", "--density", "0.2", "--delta-t", "2"],
    "early-bird": ["early-bird", *MLP, "--steps", "4ep", "--eval-every", "1ep", "--kind", "unstructured",
                   "--window", "2", "--epsilon", "0.5"],
    "supermask": ["supermask", *MLP, "--steps", "2ep", "--eval-samples", "2"],
    "tropical": ["tropical", "--toy", "circles", "--samples", "60", "--hidden", "6", "--kept", "0.5", "--seeds", "0",
                 "--steps", "2ep", "--eval-every", "1ep", "--batch-size", "20"],
    "strong": ["strong", "--dataset", "moons", "--data-option", "n_train=100", "--data-option", "n_test=40",
               "--hidden", "6", "--seeds", "0", "--population", "8", "--min-generations", "2", "--patience", "2",
               "--max-generations", "3", "--epochs", "1", "--batch-size", "32", "--baselines", "backprop"],
}


def _run(store: Store, argv: list[str]) -> Run:
    cfg = config_from_args(build_parser().parse_args(argv))
    EXPERIMENTS[argv[0]].run(cfg, store, **QUIET)
    return store.run(config_hash(cfg))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    store = Store(tmp_path_factory.mktemp("kinds") / "runs")
    out = {name: _run(store, argv) for name, argv in ARGV.items()}
    out["deconstruct"] = _run(store, ["deconstruct", "--source", out["imp"].hash, "--kept", "0.25", "--criteria",
                                      "large_final", "random"])
    out["transfer"] = _run(store, ["transfer", "--from", out["imp"].hash, "--dataset", "synthetic_mlp", "--data-option",
                                   "n_train=96", "--data-option", "n_test=32", "--data-option", "dim=8",
                                   "--data-option", "seed=5", "--level", "1", "--controls", "random"])
    return out


def tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table of a markdown text: (header cells, rows of cells), the rule line dropped."""
    found, block = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            assert len(block) >= 2 and all(set(c) <= set("-:") for c in block[1]), block
            assert all(len(r) == len(block[0]) for r in block), f"ragged table {block}"
            found.append((block[0], block[2:]))
            block = []
    return found


def pick(head: list[str], rows: list[list[str]], columns: list[str]) -> list[list[str]]:
    """The rows' cells under ``columns``, which the header must hold in this order (columns added
    between or after them by later versions do not matter)."""
    at = [head.index(c) if c in head else -1 for c in columns]
    assert -1 not in at and at == sorted(at), f"expected columns {columns} in this order, got {head}"
    return [[row[i] for i in at] for row in rows]


def report(name: str, runs_: list[Run], tmp_path: Path) -> tuple[str, list[Path]]:
    """The kind's report; its plots exist and are PNG pictures of some size."""
    text, pngs = EXPERIMENTS[name].report(runs_, tmp_path / "report.png")
    assert pngs, f"{name}: no plot"
    for png in pngs:
        data = Path(png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, png
    return text, pngs


def _check_imp(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["imp"]
    text, _ = report("imp", [run], tmp_path)
    [(head, rows)] = tables(text)
    rows = pick(head, rows, ["level", "remaining %", "ticket final acc", "ticket acc @ early stop", "early-stop it",
                             "ticket max acc", "reinit final acc", "random final acc", "reinit early-stop it",
                             "random early-stop it", "inference FLOPs / dense",
                             "training FLOPs to here / one dense run", "ticket effective density", "collapsed layers"])
    assert f"### {run.hash[:8]} mlp/synthetic_mlp reset=init" in text
    levels = run.read_jsonl("levels.jsonl")
    assert [r[0] for r in rows] == ["0", "1"]
    for row in rows:
        by_branch = {r["branch"]: r for r in levels if r["level"] == int(row[0])}
        t = by_branch["ticket"]
        assert row[1:6] == [f"{t['remaining_percent']:.2f}", f"{t['final_test_accuracy']:.4f}",
                            f"{t['test_accuracy_at_early_stop']:.4f}", str(t["early_stop_step"]),
                            f"{t['max_test_accuracy']:.4f}"]
        assert row[10] == f"{t['forward_flops'] / t['forward_flops_dense']:.3f}"
        assert row[12:] == [f"{t['effective_density']:.4f}", "none"]
        if row[0] == "1":
            assert row[6:10] == [f"{by_branch['reinit']['final_test_accuracy']:.4f}",
                                 f"{by_branch['random']['final_test_accuracy']:.4f}",
                                 str(by_branch["reinit"]["early_stop_step"]),
                                 str(by_branch["random"]["early_stop_step"])]
        else:
            assert row[6:10] == ["", "", "", ""]  # the dense level has no baselines


def _check_demo(runs: dict[str, Run], tmp_path: Path) -> None:
    """The demo is an IMP run with the demo's defaults: reported by IMP's report (checked above)."""
    assert EXPERIMENTS["demo"].report is EXPERIMENTS["imp"].report
    assert EXPERIMENTS["demo"].config_cls is EXPERIMENTS["imp"].config_cls


def _check_prune(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["prune"]
    text, _ = report("prune", [run], tmp_path)
    [(head, rows)] = tables(text)
    rows = pick(head, rows, ["model", "data", "method", "distribution", "sanity", "density", "seeds", "test acc mean",
                             "test acc [min, max]", "effective density", "collapsed layers", "FLOPs / dense"])
    s = run.read_json("train", "summary.json")
    acc = f"{s['final_test_accuracy']:.4f}"
    assert rows == [["mlp", "synthetic_mlp", "snip", "global", "none", "0.2", "1", acc, f"[{acc}, {acc}]",
                     f"{s['effective_density']:.4g}", "none", f"{s['forward_flops'] / s['forward_flops_dense']:.4f}"]]


def _check_sparse(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["sparse"]
    text, _ = report("sparse", [run], tmp_path)
    [(head, rows)] = tables(text)
    rows = pick(head, rows, ["model", "data", "density", "method", "distribution", "seeds", "test acc mean",
                             "test acc [min, max]", "training FLOPs / dense", "inference FLOPs / dense",
                             "effective density (end)", "collapsed layers (end)"])
    s = run.read_json("train", "summary.json")
    acc = f"{s['final_test_accuracy']:.4f}"
    assert rows == [["mlp", "synthetic_mlp", f"{round(s['density'], 4):g}", "rigl", "erk", "1", acc, f"[{acc}, {acc}]",
                     f"{s['training_flops_relative']:.3f}", f"{s['forward_flops_end'] / s['forward_flops_dense']:.3f}",
                     f"{s['effective_density']:.4g}", "none"]]


def _check_early_bird(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["early-bird"]
    text, pngs = report("early-bird", [run], tmp_path)
    [(head, rows)] = tables(text)
    rows = pick(head, rows, ["run", "kind", "sparsity (removed)", "drawn at epoch", "of epochs", "dense acc",
                             "early-bird ticket acc", "full-training ticket acc", "params ticket / dense",
                             "training FLOPs saved"])
    s = run.read_json("summary.json")
    assert rows == [[run.hash[:8], "unstructured", "0.5", str(s["drawn_epoch"]), "4",
                     f"{s['dense_test_accuracy']:.4f}", f"{s['ticket_test_accuracy']:.4f}",
                     f"{s['full_ticket_test_accuracy']:.4f}", f"{s['ticket_parameters'] / s['dense_parameters']:.3f}",
                     f"{100 * s['training_flops_saved']:.1f}%"]]
    assert [p.name for p in pngs] == [f"distances_{run.hash[:8]}.png"]


def _check_supermask(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["supermask"]
    text, _ = report("supermask", [run], tmp_path)
    [(head, rows)] = tables(text)
    rows = pick(head, rows, ["run", "dataset", "model", "weight init", "dynamic scaling",
                             "density (deterministic mask)", "expected density",
                             "test acc, mean of N samples [min, max]", "deterministic test acc"])
    s = run.read_json("summary.json")
    assert rows == [[run.hash[:8], "synthetic_mlp", "mlp", "keep", "no", f"{s['density']:.4f}",
                     f"{s['expected_density']:.4f}",
                     f"{s['test_accuracy']:.4f} (N=2) [{s['test_accuracy_min']:.4f}, {s['test_accuracy_max']:.4f}]",
                     f"{s['deterministic_test_accuracy']:.4f}"]]


def _check_deconstruct(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["deconstruct"]
    text, _ = report("deconstruct", [run], tmp_path)
    [(head, rows)] = tables(text)
    rows = pick(head, rows, ["kept %", "criterion", "reset (mask-1)", "mask-0", "final test acc", "max test acc",
                             "early-stop acc"])
    assert f"tickets from IMP run {runs['imp'].hash}" in text
    stored = run.read_json("summary.json")["rows"]
    assert rows == [[f"{100 * r['density']:.2f}", r["criterion"], "init", "zero", f"{r['final_test_accuracy']:.4f}",
                     f"{r['max_test_accuracy']:.4f}", f"{r['test_accuracy_at_early_stop']:.4f}"] for r in stored]
    assert [r[1] for r in rows] == ["large_final", "random"]


def _check_tropical(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["tropical"]
    text, pngs = report("tropical", [run], tmp_path)
    (head, rows), (paired_head, _), (seed_head, seed_rows) = tables(text)
    rows = pick(head, rows, ["kept %", "variant", "IoU", "Hausdorff", "region agreement", "test acc"])
    assert [r[:2] for r in rows] == [["100", "dense"], ["50", "ticket"], ["50", "reinit"], ["50", "pruned"]]
    assert paired_head[0] == "kept %" and "IoU: ticket closer" in paired_head
    seed_rows = pick(seed_head, seed_rows, ["seed", "kept %", "variant", "IoU", "Hausdorff", "agreement", "test acc",
                                            "hull vertices"])
    stored = run.read_json("summary.json")["rows"]
    assert seed_rows == [[str(r["seed"]), f"{100 * r['kept']:g}", r["variant"], f"{r['iou']:.4f}",
                          f"{r['hausdorff']:.4f}", f"{r['agreement']:.4f}", f"{r['test_accuracy']:.4f}",
                          str(r["hull_vertices"])] for r in stored]
    for row, r in zip(rows, stored):  # one seed: the mean is the seed's number, at 3 decimals
        assert row[5] == f"{r['test_accuracy']:.3f}"
    assert [p.name for p in pngs] == ["report.png", "report_shape.png"]


def _check_strong(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["strong"]
    text, _ = report("strong", [run], tmp_path)
    (head, rows), (seed_head, seed_rows), (ga_head, ga_rows) = tables(text)
    rows = pick(head, rows, ["method", "seeds", "test accuracy", "kept fraction", "train accuracy"])
    seed_rows = pick(seed_head, seed_rows, ["seed", "method", "test accuracy", "kept fraction", "train accuracy",
                                            "seconds"])
    assert ga_head[:3] == ["generation", "best train acc", "mean train acc"]
    stored = run.read_json("summary.json")["rows"]
    assert [r[:3] for r in rows] == [["ga", "1", f"{stored[0]['test_accuracy']:.4f}"],
                                     ["backprop (baseline)", "1", f"{stored[1]['test_accuracy']:.4f}"]]
    assert [r[:5] for r in seed_rows] == [["0", m, f"{r['test_accuracy']:.4f}", f"{r['density']:.4f}",
                                           f"{r['train_accuracy']:.4f}"]
                                          for m, r in zip(("ga", "backprop (baseline)"), stored)]
    assert ga_rows[0][0] == "0"


def _check_transfer(runs: dict[str, Run], tmp_path: Path) -> None:
    run = runs["transfer"]
    text, _ = report("transfer", [run], tmp_path)
    [(head, rows)] = tables(text)
    rows = pick(head, rows, ["level", "remaining % (source ticket)", "branch", "final test acc (mean ± std)", "n"])
    assert f"sources: {runs['imp'].hash[:8]}" in text
    stored = run.read_json("summary.json")["rows"]
    assert sorted(r[2] for r in rows) == sorted(r["branch"] for r in stored) and "random" in [r[2] for r in rows]
    for r in stored:  # one run: the mean is its number, the std 0
        assert [str(r["level"]), f"{100 * r['source_density']:.2f}", r["branch"],
                f"{r['final_test_accuracy']:.4f} ± 0.0000", "1"] in rows


CHECKS: dict[str, Callable[[dict[str, Run], Path], Any]] = {
    "imp": _check_imp, "demo": _check_demo, "prune": _check_prune, "sparse": _check_sparse,
    "early-bird": _check_early_bird, "supermask": _check_supermask, "deconstruct": _check_deconstruct,
    "tropical": _check_tropical, "strong": _check_strong, "transfer": _check_transfer,
}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_report_of_every_kind(name, runs, tmp_path):
    assert name in CHECKS, f"experiment {name!r} has no report test: add a tiny run and a check to {__file__}"
    CHECKS[name](runs, tmp_path)


def test_several_runs_of_one_kind_share_one_table(runs, tmp_path):
    """Two prune runs (another seed): one table line with seeds 2 and the mean, min and max."""
    store = Store(runs["prune"].path.parent)
    other = _run(store, [*ARGV["prune"], "--seed", "1"])
    text, _ = report("prune", [runs["prune"], other], tmp_path)
    [(_, rows)] = tables(text)
    accs = [r.read_json("train", "summary.json")["final_test_accuracy"] for r in (runs["prune"], other)]
    assert len(rows) == 1 and rows[0][6] == "2"
    assert rows[0][7:9] == [f"{sum(accs) / 2:.4f}", f"[{min(accs):.4f}, {max(accs):.4f}]"]
