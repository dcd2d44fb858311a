"""GEM-MINER measured both ways (issue 15): our two deviations against the authors' behaviours.

(a) round counts: ours ``exact`` (round r keeps ``round(N * d^(r/K))``) vs the authors' ``ceil``
    (each round unflags ``ceil(p * flagged)`` plus every tie at the threshold);
(b) score-phase LR: ours cosine per ``iteration`` vs the authors' cosine per ``epoch``
    (``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch).

The 2 x 2 variants x densities x seeds on LeNet-300-100 / MNIST, the recipe of
``benchmarks/gem_miner_lenet.py`` (signed constants, scores U[0, 1], SGD 0.1 momentum 0.9, lam
1e-4, batch 128, ``--score-epochs`` with a round every ``--iter-period``; then ``finetune_gem`` of
the flag mask from the signed constants, ``--ft-epochs``). Same seed -> same init, same scores at
the start and the same batches in every variant, so the differences are paired.

Each run is one single-threaded process task; ``--workers`` run in parallel (spawned processes,
each loads MNIST once). Rows are appended to ``--out`` (JSON lines) as they finish; a run already
in ``--out`` is skipped, so a stopped sweep continues. ``--table-only`` prints the table (of the
rows with the recipe the flags give).

    PYTHONPATH=src python benchmarks/gem_miner_both_ways.py --data-root /work/shared/data/mnist --workers 8
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: every worker is single-threaded

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

VARIANTS: dict[str, tuple[str, str]] = {  # name -> (round_counts, lr_step)
    "ours": ("exact", "iteration"),
    "ceil counts": ("ceil", "iteration"),
    "epoch LR": ("exact", "epoch"),
    "authors (both)": ("ceil", "epoch"),
}
_DATA = None  # the worker's MNIST, loaded once by _init_worker


def _init_worker(data_root: str) -> None:
    """Why: each spawned worker loads the data once and runs on one thread, like the serial runs."""
    global _DATA
    from ticketlab.data import load_dataset

    torch.set_num_threads(1)
    _DATA = load_dataset("mnist", root=data_root)


def run_one(variant: str, density: float, seed: int, score_epochs: int, iter_period: int, ft_epochs: int,
            lr: float, lam: float) -> dict:
    """One gem (score phase + fine-tune) under ``variant``; returns its row."""
    from ticketlab.models import build_model
    from ticketlab.pruning.gem_miner import finetune_gem, train_gem_miner

    counts, lr_step = VARIANTS[variant]
    torch.manual_seed(seed)
    model = build_model("lenet_300_100", _DATA.input_shape, _DATA.num_classes)
    t0 = time.time()
    res = train_gem_miner(model, _DATA, density, epochs=score_epochs, iter_period=iter_period, lr=lr, lam=lam,
                          batch_size=128, seed=seed, device="cpu", round_counts=counts, lr_step=lr_step)
    score_s = time.time() - t0
    net = copy.deepcopy(model)  # the signed constants, unmasked
    t1 = time.time()
    ft = finetune_gem(net, _DATA, res["mask"], epochs=ft_epochs, batch_size=128, seed=seed, device="cpu")
    return {"variant": variant, "round_counts": counts, "lr_step": lr_step, "density": density, "seed": seed,
            "score_epochs": score_epochs, "iter_period": iter_period, "ft_epochs": ft_epochs,
            "mask_density": res["mask"].density, "kept": res["mask"].num_kept,
            "forward_density": res["forward_mask"].density, "kept_schedule": res["kept_schedule"],
            "acc_forward": res["test_accuracy"], "acc_flag": res["flag_test_accuracy"],
            "acc_ft": ft["test_accuracy"], "score_s": score_s, "ft_s": time.time() - t1,
            "torch": torch.__version__}


def _key(row: dict) -> tuple:
    return (row["variant"], row["density"], row["seed"], row["score_epochs"], row["iter_period"], row["ft_epochs"])


def _cell(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f} (n=1)"
    mean, std = scale * statistics.mean(values), scale * statistics.stdev(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={len(values)})"


def table(rows: list[dict]) -> str:
    """Mean ± sample std per variant and density; then the paired differences to ours per seed."""
    densities = sorted({r["density"] for r in rows}, reverse=True)
    cols = (("acc_forward", "before FT, 1{s>0.5}&flag"), ("acc_flag", "before FT, flag mask"),
            ("acc_ft", "after FT"), ("mask_density", "flag density (%)"), ("kept", "kept weights"))
    lines = []
    for d in densities:
        lines += [f"\ndensity {d:g}", "| variant (counts, LR step) | " + " | ".join(c[1] for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for v, (counts, step) in VARIANTS.items():
            sel = [r for r in rows if r["variant"] == v and r["density"] == d]
            fmt = {"mask_density": (100.0, 4), "kept": (1.0, 1)}  # (scale, digits); accuracies: (100, 2)
            lines.append(f"| {v} ({counts}, {step}) | "
                         + " | ".join(_cell([r[k] for r in sel], *fmt.get(k, (100.0, 2))) for k, _ in cols) + " |")
    lines += ["\npaired minus ours, percentage points per seed (before FT flag mask; after FT)",
              "| density | variant | before FT, flag | after FT |", "|---|---|---|---|"]
    for d in densities:
        ours = {r["seed"]: r for r in rows if r["variant"] == "ours" and r["density"] == d}
        for v in list(VARIANTS)[1:]:
            pairs = sorted((r for r in rows if r["variant"] == v and r["density"] == d and r["seed"] in ours),
                           key=lambda r: r["seed"])
            if pairs:
                flag = " / ".join(f"{100 * (r['acc_flag'] - ours[r['seed']]['acc_flag']):+.2f}" for r in pairs)
                ft = " / ".join(f"{100 * (r['acc_ft'] - ours[r['seed']]['acc_ft']):+.2f}" for r in pairs)
                lines.append(f"| {d:g} | {v} | {flag} | {ft} |")
    return "\n".join(lines)


def _read(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []


def _tasks(args: argparse.Namespace, done: set[tuple]) -> list[tuple]:
    tasks = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for density in args.densities:
            for v in args.variants:
                t = (v, density, seed, args.score_epochs, args.iter_period, args.ft_epochs, args.lr, args.lam)
                if t[:6] not in done:
                    tasks.append(t)
    return tasks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="/work/shared/data/mnist", help="folder with the four MNIST .gz files")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.01])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--score-epochs", type=int, default=20)
    p.add_argument("--iter-period", type=int, default=2)
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lam", type=float, default=1e-4)
    p.add_argument("--workers", type=int, default=1, help="parallel single-threaded processes")
    p.add_argument("--out", default="runs/reports/gem_miner_both_ways/rows.jsonl")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    if not args.table_only:
        out.parent.mkdir(parents=True, exist_ok=True)
        tasks = _tasks(args, {_key(r) for r in _read(out)})
        started = time.time()
        print(f"{len(tasks)} runs on {args.workers} workers", flush=True)
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(args.data_root,)) as pool:
            for fut in as_completed([pool.submit(run_one, *t) for t in tasks]):
                row = fut.result()
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps({k: row[k] for k in ("variant", "density", "seed", "mask_density", "acc_flag",
                                                      "acc_ft", "score_s", "ft_s")}), flush=True)
        print(f"\nwall time {time.time() - started:.0f} s for {len(tasks)} runs, {args.workers} workers")
    recipe = (args.score_epochs, args.iter_period, args.ft_epochs)
    rows = [r for r in _read(out) if (r["score_epochs"], r["iter_period"], r["ft_epochs"]) == recipe]
    print(f"\nrecipe: {recipe[0]} score epochs, a round every {recipe[1]}, {recipe[2]} fine-tune epochs "
          f"(rows of other recipes in {out} left out)")
    print(table(rows))


if __name__ == "__main__":
    main()
