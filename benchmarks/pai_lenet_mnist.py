"""Pruning at initialisation on LeNet-300-100 / MNIST: every method and its layer-wise-shuffled mask.

The README's table. Methods: magnitude, random, SNIP, GraSP, SynFlow (100 rounds); sparsities 90%,
98%, 99.5% (densities 0.1, 0.02, 0.005); sanity check: the same mask shuffled within each layer;
3 seeds each. Every run is an ordinary `ticketlab prune` run in the store, so the grid resumes
where it stopped and `ticketlab ls experiment=prune` lists it.

    python benchmarks/pai_lenet_mnist.py --data-root ../shared/data/mnist --workers 2
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

from _grid import grid_arguments, run_grid

from ticketlab.config import DataConfig, ModelConfig, PruneAtInitConfig, TrainConfig
from ticketlab.experiments.prune_at_init import run_prune_at_init

METHODS = ("magnitude", "random", "snip", "grasp", "synflow")
DENSITIES = (0.1, 0.02, 0.005)
SANITY = ("none", "shuffle")


def configs(data_root: str, epochs: int, seeds: int) -> list[PruneAtInitConfig]:
    train = TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, steps=f"{epochs}ep", eval_every="1ep")
    out = []
    for density, method, sanity, seed in itertools.product(DENSITIES, METHODS, SANITY, range(seeds)):
        out.append(PruneAtInitConfig(
            data=DataConfig(name="mnist", root=data_root, val_size=5000), model=ModelConfig(name="lenet_300_100"),
            train=train, method=method, density=density, sanity=sanity, score_batches=1, score_batch_size=256,
            seed=seed))
    return out


def main() -> None:
    args = grid_arguments(__doc__, "runs/reports/pai_lenet_mnist")
    grid = configs(args.data_root, args.epochs, args.seeds)
    started = time.time()
    rows = run_grid(run_prune_at_init, grid, args.runs_dir, args.workers)
    from ticketlab.analysis.report import plot_prune, prune_table
    from ticketlab.atomic import atomic_write_text

    out = Path(args.out)
    table = prune_table(rows)
    atomic_write_text(out / "report.md", table + "\n")
    plot_prune(rows, out / "report.png")
    print(table)
    print(f"\n{len(rows)} runs in {time.time() - started:.0f} s; "
          f"table {out / 'report.md'}, plot {out / 'report.png'}")


if __name__ == "__main__":
    main()
