"""Run many experiment configs in a process pool (each worker single-threaded), resumably.

Every run is an ordinary run in the Store, so a grid stopped half-way continues where it stopped.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _one(job: tuple[Callable[..., dict[str, Any]], Any, str]) -> dict[str, Any]:
    import torch

    from ticketlab.store import Store

    runner, config, runs_dir = job
    torch.set_num_threads(1)
    summary = runner(config, Store(runs_dir), device="cpu", progress=False, log=lambda _: None)
    print(f"{config.method:>9} density {config.density:<6} {getattr(config, 'sanity', ''):<8} seed {config.seed}: "
          f"test acc {summary['final_test_accuracy']:.4f}", flush=True)
    return {"model": config.model.name, "dataset": config.data.name, "seed": config.seed, **summary}


def run_grid(runner: Callable[..., dict[str, Any]], configs: Sequence[Any], runs_dir: str,
             workers: int = 1) -> list[dict[str, Any]]:
    """Summaries of ``runner(config, Store(runs_dir))`` for every config, in order."""
    jobs = [(runner, c, runs_dir) for c in configs]
    if workers <= 1:
        return [_one(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_one, jobs))


def grid_arguments(description: str, out: str) -> argparse.Namespace:
    """The options every result grid takes (data, length, seeds, store, parallelism, output)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--workers", type=int, default=1, help="parallel runs (each single-threaded)")
    p.add_argument("--out", default=out)
    return p.parse_args()
