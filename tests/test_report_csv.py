"""CSV tables beside report.md (issue 21): for every kind of stored run, ``report_<kind>.csv`` holds
the report's tables (header, one row per table row, the table's text) and ``report_<kind>_rows.csv``
the stored rows unrounded (the summary's numbers, every digit).

Reuses the tiny run per kind of ``tests/test_reports_per_kind.py``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from test_reports_per_kind import runs, tables  # noqa: F401 (runs: the module fixture, one run per kind)
from ticketlab.analysis.csv_tables import markdown_tables, stored_rows
from ticketlab.cli import _write_report
from ticketlab.experiments.registry import EXPERIMENTS
from ticketlab.store import Store

KINDS = sorted({e.config_cls.experiment: name for name, e in EXPERIMENTS.items()}.items())  # demo is imp's kind


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        head, *rows = list(csv.reader(f))
    return head, rows


def _summary_rows(run) -> list[dict]:
    if run.file("levels.jsonl").exists():
        return run.read_jsonl("levels.jsonl")
    for parts in (("summary.json",), ("train", "summary.json")):
        if run.file(*parts).exists():
            s = {k: v for k, v in run.read_json(*parts).items() if k != "files"}  # the store's, not a result
            return s["rows"] if isinstance(s.get("rows"), list) else [s]
    raise AssertionError(f"{run.path}: no summary")


def test_every_kind_is_covered(runs):  # noqa: F811
    assert {name for _, name in KINDS} <= set(runs) | {"demo"}


@pytest.mark.parametrize("kind,name", KINDS)
def test_report_writes_csv_per_kind(kind, name, runs, tmp_path, capsys):  # noqa: F811
    run = runs["imp" if name == "demo" else name]
    store = Store(run.path.parent)
    _write_report([run.hash], store, tmp_path)
    assert f"csv: {tmp_path / f'report_{kind}.csv'}" in capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()

    # the tables: same header (after the "table" column) and the same cells as report.md, in order
    expected = tables(md)
    groups: dict[tuple, list[list[str]]] = {}
    for head, rows in expected:
        groups.setdefault(tuple(head), []).extend(rows)
    for i, (head, rows) in enumerate(groups.items()):
        path = tmp_path / (f"report_{kind}.csv" if i == 0 else f"report_{kind}_{i + 1}.csv")
        got_head, got_rows = _read(path)
        assert got_head == ["table", *head]
        assert [r[1:] for r in got_rows] == rows
        assert all(r[0] for r in got_rows), "every row names the heading of its table"
    assert not (tmp_path / f"report_{kind}_{len(groups) + 1}.csv").exists()

    # the stored rows: unrounded, one CSV row per stored row
    head, rows = _read(tmp_path / f"report_{kind}_rows.csv")
    stored = _summary_rows(run)
    assert head[0] == "run" and "files" not in head and len(rows) == len(stored) and all(r[0] == run.hash for r in rows)
    numeric = [k for k, v in stored[0].items() if isinstance(v, float)]
    assert numeric, f"{kind}: no numbers in the stored rows"
    for r, s in zip(rows, stored):
        cells = dict(zip(head, r))
        for key in numeric:
            assert float(cells[key]) == s[key] or (s[key] != s[key] and cells[key] == "nan"), (kind, key)
        for key, value in s.items():
            if isinstance(value, (dict, list)):
                assert json.loads(cells[key]) == value


def test_markdown_tables_keeps_headings_and_drops_rules():
    text = "### a\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\nPer seed:\n\n| x | y |\n|---|---|\n| 3 | 4 |\n"
    assert markdown_tables(text) == [("a", ["x", "y"], [["1", "2"]]), ("a", ["x", "y"], [["3", "4"]])]


def test_stored_rows_of_a_summary_without_rows(runs):  # noqa: F811
    run = runs["prune"]
    [row] = stored_rows(run)
    assert row["run"] == run.hash
    assert row["final_test_accuracy"] == run.read_json("train", "summary.json")["final_test_accuracy"]
