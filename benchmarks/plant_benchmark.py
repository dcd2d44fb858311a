"""The Plant 'n' Seek benchmark: every task x method x kept fraction x seed, in parallel processes.

    python benchmarks/plant_benchmark.py --workers 2            # the paper's protocol, 3 seeds

Depth 5, width 100 hosts; Adam lr 1e-3, batch 32, 10 epochs; scores from 40 samples; multishot IMP
10 rounds of 5 epochs; edge-popup SGD 0.1 / momentum 0.9 / wd 5e-4 / cosine, 10 epochs. Prints the
tables of ``ticketlab.planting.benchmark.benchmark_table`` and the wall time.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ticketlab.planting.benchmark import METHODS, benchmark_table, run_cell

KEPT = (1.0, 0.5, 0.1, 0.01, "ticket")


def _cell(args: tuple) -> dict:
    import torch

    torch.set_num_threads(1)
    task, method, kept, seed, epochs = args
    row = run_cell(task, method, kept, seed, epochs=epochs)
    print(f"{task:>6} {method:>16} kept {str(kept):>6} seed {seed}: strong {row['strong']:.4g} weak {row['weak']:.4g}",
          flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["relu", "circle", "helix"])
    p.add_argument("--methods", nargs="+", default=[m for m in METHODS])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="runs/reports/plant_benchmark")
    args = p.parse_args()
    cells = list(itertools.product(args.tasks, args.methods, KEPT, range(args.seeds), [args.epochs]))
    started = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(_cell, cells))
    seconds = time.time() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, default=str))
    table = benchmark_table(rows)
    (out / "report.md").write_text(table + f"\n\n{len(rows)} cells in {seconds:.0f} s with {args.workers} workers\n")
    print(table)
    print(f"\n{len(rows)} cells in {seconds:.0f} s with {args.workers} workers; {out / 'report.md'}")


if __name__ == "__main__":
    main()
