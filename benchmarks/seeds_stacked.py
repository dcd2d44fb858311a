#!/usr/bin/env python
"""``--seeds`` stacked vs. one seed after another: wall time of the same IMP / prune-at-init study.

The study is run twice into fresh stores, in alternation over repeats: once as ``run_imp_seeds`` /
``run_prune_at_init_seeds`` (the seeds' training units as one stacked model, what ``ticketlab imp
--seeds ...`` does on an MLP) and once as one ``run_imp`` / ``run_prune_at_init`` per seed (what
``--no-stack`` and every earlier version do). Everything else (masks, connectivity, FLOPs, the
Store's writes) is in both timings. Prints the wall times, their ratio (median over repeats of
solo / stacked within a repeat) and the largest difference of the two ways' final test accuracies.

    python benchmarks/seeds_stacked.py --threads 1                       # both procedures, 8 seeds
    python benchmarks/seeds_stacked.py --procedure imp --seeds 16 --model-hidden 300 100

Exit status 1 (FAIL) when the stacked study is slower than one seed after another by more than 5%
(the issue's "never slower than one at a time").
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ticketlab.config import DataConfig, IMPConfig, ModelConfig, PruneAtInitConfig, PruneConfig, TrainConfig  # noqa: E402
from ticketlab.experiments.imp import run_imp, run_imp_seeds  # noqa: E402
from ticketlab.experiments.prune_at_init import run_prune_at_init, run_prune_at_init_seeds  # noqa: E402
from ticketlab.experiments.stacked import stacked_train  # noqa: E402
from ticketlab.store import Store  # noqa: E402


def quiet(_: str) -> None:
    pass


def configs(args: argparse.Namespace) -> tuple[object, list[object]]:
    data = DataConfig(name=args.dataset, root=args.data_root, val_size=args.val_size)
    model = ModelConfig(name="mlp", options={"hidden": list(args.model_hidden)})
    train = TrainConfig(optimizer="adam", lr=1e-3, batch_size=args.batch_size, steps=args.steps, eval_every="1ep")
    if args.procedure == "imp":
        base = IMPConfig(data=data, model=model, train=train, levels=args.levels, prune=PruneConfig(rate=0.5))
    else:
        base = PruneAtInitConfig(data=data, model=model, train=train, method="snip", density=0.05)
    return base, list(range(args.seeds))


def timed_study(args: argparse.Namespace, stacked: bool) -> tuple[float, list[float]]:
    base, seeds = configs(args)
    store = Store(tempfile.mkdtemp(prefix="seeds-bench-"))
    started = time.perf_counter()
    if stacked:
        runs = [dataclasses.replace(base, seed=s, train=stacked_train(base.train)) for s in seeds]
        fn = run_imp_seeds if args.procedure == "imp" else run_prune_at_init_seeds
        out = fn(runs, store, device="cpu", progress=False, log=quiet)
    else:
        fn = run_imp if args.procedure == "imp" else run_prune_at_init
        out = [fn(dataclasses.replace(base, seed=s), store, device="cpu", progress=False, log=quiet) for s in seeds]
    seconds = time.perf_counter() - started
    accs = [r["final_test_accuracy"] for rows in out for r in (rows if isinstance(rows, list) else [rows])]
    return seconds, accs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procedure", choices=("imp", "prune", "both"), default="both")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--val-size", type=int, default=200)
    p.add_argument("--model-hidden", type=int, nargs="+", default=[300, 100])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", default="10ep")
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    failed = False
    for procedure in (("imp", "prune") if args.procedure == "both" else (args.procedure,)):
        args.procedure = procedure
        ratios, rows = [], []
        for r in range(args.repeats):
            order = (True, False) if r % 2 == 0 else (False, True)
            got = {stacked: timed_study(args, stacked) for stacked in order}
            ratios.append(got[False][0] / got[True][0])
            diff = max(abs(a - b) for a, b in zip(got[True][1], got[False][1]))
            rows.append((got[True][0], got[False][0], diff))
        ratio = statistics.median(ratios)
        print(f"{procedure}: {args.seeds} seeds, mlp {args.model_hidden} on {args.dataset}, batch {args.batch_size}, "
              f"{args.steps}{f' x {args.levels + 1} levels' if procedure == 'imp' else ''}, {args.threads} thread(s), "
              f"torch {torch.__version__}")
        for i, (st, so, diff) in enumerate(rows):
            print(f"  repeat {i}: stacked {st:.1f} s, one by one {so:.1f} s, largest accuracy difference {diff:.4f}")
        verdict = "PASS" if ratio >= 0.95 else "FAIL"
        failed |= verdict == "FAIL"
        print(f"  one by one / stacked (median): {ratio:.2f}x  TARGET never slower (>= 0.95): {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
