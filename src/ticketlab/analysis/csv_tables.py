"""The report's tables as CSV beside ``report.md`` and the plots (``ticketlab report``, and the
report every run command writes at its end).

Per kind of run two kinds of file:

- ``report_<kind>.csv`` (``report_<kind>_2.csv``, ... for a kind whose report holds tables with
  other columns): the markdown tables of the kind's report, one CSV row per table row, the
  header of the table with a first column ``table`` (the heading the table stands under). Cells
  are the table's text, so numbers are rounded as in ``report.md`` (4 decimals for accuracies,
  ``mean ± std`` cells kept as text).
- ``report_<kind>_rows.csv``: the stored rows the tables are computed from, unrounded: one row per
  IMP level and branch (``levels.jsonl``), per row of a summary's ``rows`` (deconstruct, transfer,
  tropical, strong), else the run's summary (``summary.json`` or ``train/summary.json``). Columns:
  ``run`` (the full hash) and every scalar field (lists and mappings as JSON text).
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_RULE = re.compile(r":?-+:?")


def markdown_tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every pipe table of a markdown text: (the last heading above it, header cells, body rows)."""
    found: list[tuple[str, list[str], list[list[str]]]] = []
    heading, block = "", []
    for line in [*text.splitlines(), ""]:
        s = line.strip()
        if s.startswith("|"):
            block.append([c.strip() for c in s.strip("|").split("|")])
            continue
        if block:
            head, body = block[0], block[1:]
            if body and all(_RULE.fullmatch(c) for c in body[0] if c):
                body = body[1:]
            found.append((heading, head, body))
            block = []
        if s.startswith("#"):
            heading = s.lstrip("#").strip()
    return found


def stored_rows(run: Any) -> list[dict[str, Any]]:
    """The unrounded rows a run's tables are computed from (see the module's docstring)."""
    if run.file("levels.jsonl").exists():
        rows = run.read_jsonl("levels.jsonl")
    else:
        summary: Any = None
        for parts in (("summary.json",), ("train", "summary.json")):
            if run.file(*parts).exists():
                summary = run.read_json(*parts)
                break
        if summary is None:
            return []
        summary = {k: v for k, v in summary.items() if k != "files"}  # the store's list of the run's files
        if isinstance(summary.get("rows"), list):  # fields beside the rows (source, method, ...) on every row
            shared = {k: v for k, v in summary.items() if k != "rows" and not isinstance(v, (dict, list))}
            rows = [{**shared, **r} for r in summary["rows"]]
        else:
            rows = [summary]
    return [{"run": run.hash, **r} for r in rows]


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True)
    return repr(v) if isinstance(v, float) else v  # repr: every digit stored


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_csv_tables(kind: str, markdown: str, runs: Sequence[Any], out: Path) -> list[Path]:
    """Write the CSV files of one kind's report in ``out``; their paths (see the module's docstring)."""
    from ..atomic import atomic_write_text

    out = Path(out)
    written: list[Path] = []
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for heading, head, body in markdown_tables(markdown):
        groups.setdefault(tuple(head), []).extend([heading, *row] for row in body)
    for i, (head, rows) in enumerate(groups.items()):
        path = out / (f"report_{kind}.csv" if i == 0 else f"report_{kind}_{i + 1}.csv")
        atomic_write_text(path, _csv_text(["table", *head], rows))
        written.append(path)
    records = [r for run in runs for r in stored_rows(run)]
    if records:
        columns = list(dict.fromkeys(k for r in records for k in r))
        path = out / f"report_{kind}_rows.csv"
        atomic_write_text(path, _csv_text(columns, [[_cell(r.get(c)) for c in columns] for r in records]))
        written.append(path)
    return written


__all__ = ["markdown_tables", "stored_rows", "write_csv_tables"]
