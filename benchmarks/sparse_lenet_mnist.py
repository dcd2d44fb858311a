"""Sparse training on LeNet-300-100 / MNIST: static (ERK) vs SET vs RigL vs GMP vs dense.

The README's table: 90% and 98% sparsity, the same number of epochs for every method, 3 seeds;
test accuracy (mean, min-max) and training FLOPs relative to dense training (RigL's accounting).

    python benchmarks/sparse_lenet_mnist.py --data-root ../shared/data/mnist --workers 2
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

from _grid import grid_arguments, run_grid

from ticketlab.config import DataConfig, ModelConfig, SparseTrainConfig, TrainConfig
from ticketlab.experiments.sparse_training import run_sparse_training
from ticketlab.pruning.dynamic import DropGrowOptions, GMPOptions

DENSITIES = (0.1, 0.02)
METHODS = ("static", "set", "rigl", "gmp")


def configs(data_root: str, epochs: int, seeds: int) -> list[SparseTrainConfig]:
    common = dict(data=DataConfig(name="mnist", root=data_root, val_size=5000),
                  model=ModelConfig(name="lenet_300_100"),
                  train=TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, steps=f"{epochs}ep",
                                    eval_every="1ep"))
    # each method's own options (before they were per method, every config also carried GMP's
    # gmp_start="1ep", so the non-GMP runs of this grid stored before have other hashes)
    options = {"set": DropGrowOptions(delta_t=100, t_end=0.75, alpha=0.3),
               "rigl": DropGrowOptions(delta_t=100, t_end=0.75, alpha=0.3),
               "gmp": GMPOptions(start="1ep", every="100it")}
    out = [SparseTrainConfig(**common, method="dense", density=1.0, seed=s) for s in range(seeds)]
    for density, method, seed in itertools.product(DENSITIES, METHODS, range(seeds)):
        out.append(SparseTrainConfig(**common, method=method, density=density, seed=seed,
                                     options=options.get(method)))
    return out


def main() -> None:
    args = grid_arguments(__doc__, "runs/reports/sparse_lenet_mnist")
    started = time.time()
    rows = run_grid(run_sparse_training, configs(args.data_root, args.epochs, args.seeds), args.runs_dir,
                    args.workers)
    from ticketlab.analysis.report import sparse_table
    from ticketlab.atomic import atomic_write_text

    table = sparse_table(rows)
    atomic_write_text(Path(args.out) / "report.md", table + "\n")
    print(table)
    print(f"\n{len(rows)} runs in {time.time() - started:.0f} s; table {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
