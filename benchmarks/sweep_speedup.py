"""Speed-up of `ticketlab sweep`'s local pool over running the same runs one after another.

The same N prune-at-init runs (digits, an MLP 64-300-100-10, SNIP / magnitude at two densities,
seeds) are timed three ways, each into a fresh store:

- one after another: one process, one PyTorch thread, `run_prune_at_init` per run (what a loop over
  the single command does, without its start-up per run: the most favourable serial baseline);
- pool, 1 worker x 1 thread: `run_sweep(workers=1, threads=1)`, the sweep machinery alone;
- pool, W workers x 1 thread: `run_sweep(workers=W, threads=1)` (default W=2).

Each measurement runs in a fresh Python process and is timed from the moment ticketlab is imported,
so every variant pays the same lazy imports of its first run once, and the pools also pay their
start-up (a fork server that imports PyTorch again); the report is not timed. The variants
alternate over repeats; the medians and the ratio serial / pool are printed. Run on a machine with
W free cores for a clean figure; on a shared machine say so with the number.

    python benchmarks/sweep_speedup.py --runs 8 --epochs 200 --workers 2 --repeats 2

Measured 2026-11-26 on 2 cores shared with other agents' work (load average 1.7-2.1): one after
another 68.9 s, 1-worker sweep 66.4 s, 2-worker sweep 45.3 s: 1.52x (docs/sweep.md).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def spec(runs: int, epochs: int):
    from ticketlab.sweep import spec_from_argv

    seeds = [str(s) for s in range(max(1, runs // 4))]
    return spec_from_argv("prune", [
        "--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[300,100]", "--optimizer", "adam",
        "--lr", "0.001", "--batch-size", "32", "--steps", f"{epochs}ep", "--eval-every", "1ep",
        "--method", "snip", "magnitude", "--density", "0.1", "0.02", "--seed", *seeds])


def serial(runs, root: str) -> float:
    import torch

    from ticketlab.experiments.prune_at_init import run_prune_at_init
    from ticketlab.store import Store

    torch.set_num_threads(1)
    store = Store(root)
    started = time.perf_counter()
    for r in runs:
        run_prune_at_init(r.config, store, device="cpu", progress=False, log=lambda _: None)
    return time.perf_counter() - started


def pooled(sweep_spec, runs, root: str, workers: int) -> float:
    from ticketlab.sweep import run_sweep

    started = time.perf_counter()
    result = run_sweep(sweep_spec, root, workers=workers, threads=1, runs=runs, print_fn=None, report=False)
    assert result.complete and result.computed == len(runs)
    return time.perf_counter() - started


def measure(variant: str, runs: int, epochs: int, workers: int) -> float:
    """Wall seconds of one variant in a fresh process (from its import of ticketlab)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, __file__, "--variant", variant, "--runs", str(runs), "--epochs",
                          str(epochs), "--workers", str(workers)], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=8, help="runs per variant (a multiple of 4)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variant", choices=("serial", "pool1", "pool"), help=argparse.SUPPRESS)  # one measurement
    args = p.parse_args()

    if args.variant:
        started = time.perf_counter()
        from ticketlab.sweep import expand

        sweep_spec = spec(args.runs, args.epochs)
        runs = expand(sweep_spec)
        with tempfile.TemporaryDirectory() as root:
            if args.variant == "serial":
                serial(runs, root)
            else:
                pooled(sweep_spec, runs, root, 1 if args.variant == "pool1" else args.workers)
        print(time.perf_counter() - started)
        return

    from ticketlab.sweep import available_cores, expand

    n = len(expand(spec(args.runs, args.epochs)))
    times: dict[str, list[float]] = {"serial": [], "pool1": [], "pool": []}
    for _ in range(args.repeats):
        for key in times:
            times[key].append(measure(key, args.runs, args.epochs, args.workers))
    med = {k: statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{n} prune runs (digits, MLP 64-300-100-10, {args.epochs} epochs each) on "
          f"{available_cores()} cores, load average {load:.1f} at the end")
    print(f"one after another (1 process, 1 thread): {med['serial']:.1f} s   (each repeat: "
          f"{', '.join(f'{t:.1f}' for t in times['serial'])})")
    print(f"sweep, 1 worker x 1 thread:              {med['pool1']:.1f} s   (each repeat: "
          f"{', '.join(f'{t:.1f}' for t in times['pool1'])})")
    print(f"sweep, {args.workers} workers x 1 thread:             {med['pool']:.1f} s   (each repeat: "
          f"{', '.join(f'{t:.1f}' for t in times['pool'])})")
    print(f"speed-up of the pool over one after another: {med['serial'] / med['pool']:.2f}x "
          f"(over the 1-worker sweep: {med['pool1'] / med['pool']:.2f}x)")


if __name__ == "__main__":
    main()
