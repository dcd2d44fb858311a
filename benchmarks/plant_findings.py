"""The paper's Plant 'n' Seek findings, one by one, with our numbers from a benchmark's rows.

    python benchmarks/plant_findings.py runs/reports/plant/rows.json

prints, per finding, the cells it rests on as mean [min, max] over seeds (weak = after training,
strong = right after pruning; Circle: accuracy of the raw output, ReLU/Helix: test MSE after the
per-output rescale), beside the dense host and the planted ticket. docs/plant_benchmark.md pastes
this output and adds a verdict to each line ("reproduced" or "differs, because ...").
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence

FINDINGS: list[tuple[str, list[tuple[str, str, object, str]]]] = [
    # (finding, [(task, method, kept, phase), ...])
    ("singleshot: good weak tickets at 50% and 10% kept on Circle and ReLU, every method",
     [(t, m, k, "weak") for t in ("circle", "relu") for m in ("random", "magnitude", "snip", "grasp", "synflow",
                                                               "synflow100") for k in (0.5, 0.1)]),
    ("singleshot: Helix fails for every method",
     [("helix", m, k, "weak") for m in ("random", "magnitude", "snip", "grasp", "synflow", "synflow100")
      for k in (0.5, 0.1)]),
    ("every method fails at 1% kept and at the ticket's kept fraction, with layer collapse",
     [(t, m, k, "weak") for t in ("circle", "relu", "helix")
      for m in ("magnitude", "synflow", "multishot_synflow", "edgepopup") for k in (0.01, "ticket")]),
    ("SynFlow-100 slightly better than SynFlow-1",
     [(t, m, k, "weak") for t in ("circle", "relu", "helix") for m in ("synflow", "synflow100") for k in (0.1, 0.01)]),
    ("no strong ticket from singleshot",
     [(t, m, k, "strong") for t in ("circle", "relu", "helix") for m in ("magnitude", "snip", "synflow")
      for k in (0.5, 0.1)]),
    ("multishot: SynFlow best, recovers a good Circle ticket",
     [("circle", m, k, "weak") for m in ("multishot_random", "multishot_magnitude", "multishot_snip",
                                          "multishot_grasp", "multishot_synflow") for k in (0.1, 0.01, "ticket")]),
    ("multishot: magnitude, SNIP and SynFlow find moderate Helix tickets; GraSP collapses",
     [("helix", m, k, "weak") for m in ("multishot_random", "multishot_magnitude", "multishot_snip",
                                         "multishot_grasp", "multishot_synflow") for k in (0.5, 0.1, 0.01)]),
    ("edge-popup: a strong Circle ticket at 50% kept; annealing helps at 10%",
     [(t, m, k, "strong") for t in ("circle", "relu", "helix") for m in ("edgepopup", "edgepopup_anneal")
      for k in (0.5, 0.1)]),
]


def _fmt(values: Sequence[float], task: str) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    f = (lambda v: f"{v:.3f}") if task == "circle" else (lambda v: f"{v:.2e}")  # noqa: E731
    return f"{f(statistics.fmean(values))} [{f(min(values))}, {f(max(values))}]"


def findings(rows: Sequence[dict]) -> str:
    def cell(task: str, method: str, kept: object, key: str) -> list[float]:
        return [r[key] for r in rows if r["task"] == task and r["method"] == method and r["kept"] == kept]

    out = []
    for title, cells in FINDINGS:
        out += [f"#### {title}", "", "| task | method | kept | phase | ours | collapsed layers | dense | ticket |",
                "|---|---|---|---|---|---|---|---|"]
        for task, method, kept, phase in cells:
            values = cell(task, method, kept, phase)
            if not values:
                continue
            collapsed = cell(task, method, kept, "collapsed")
            out.append(f"| {task} | {method} | {kept} | {phase} | {_fmt(values, task)} | "
                       f"{statistics.fmean(collapsed):.1f} | {_fmt(cell(task, 'dense', 1.0, phase), task)} | "
                       f"{_fmt(cell(task, 'ticket', 'ticket', phase), task)} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(findings(json.loads(open(sys.argv[1]).read())))
