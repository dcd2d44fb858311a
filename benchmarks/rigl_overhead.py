"""What RigL's (and SET's) mask updates add to a training run, relative to a static mask.

LeNet-300-100 on MNIST, Adam, batch 60, one epoch (1000 iterations) at 10% density (ERK), updates
every 100 steps until 75% of training (RigL's defaults): the same Trainer, data, batches and
initial mask with and without the drop/grow callback. Variants are interleaved over repeats and the
median of per-repeat ratios is reported. Target: rigl / static <= 1.05.

    python benchmarks/rigl_overhead.py --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from ticketlab.config import TrainConfig
from ticketlab.data import load_dataset
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.dynamic import DropGrow
from ticketlab.pruning.schedules import CosineDrop
from ticketlab.experiments.sparse_training import random_sparse_mask
from ticketlab.training import Callback, Trainer

ROOT = Path(__file__).resolve().parents[1]


def one_run(data, mask: Mask, cfg: TrainConfig, steps: int, method: str, delta_t: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = build_model("lenet_300_100", data.input_shape, data.num_classes)
    callbacks = []
    updater = None
    if method != "static":
        updater = DropGrow(grow="gradient" if method == "rigl" else "random",
                           schedule=CosineDrop(alpha=0.3, every=delta_t, end=int(0.75 * steps)))
        callbacks.append(Callback(updater, every=delta_t))
    trainer = Trainer(model, data, cfg, mask, device="cpu", callbacks=callbacks)
    started = time.perf_counter()
    trainer.train(0, steps)
    return time.perf_counter() - started, len(updater.log) if updater else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--delta-t", type=int, default=100)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = load_dataset("mnist", args.data_root)
        source = f"MNIST from {args.data_root}"
    except Exception as exc:  # no MNIST at hand: same shapes, random data
        data = load_dataset("synthetic_images", n_train=60000, n_test=1000, shape=(1, 28, 28), seed=0)
        source = f"synthetic MNIST-shaped data ({exc.__class__.__name__}: MNIST not found)"
    cfg = TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, steps=f"{args.steps}it", eval_every="1000000it")
    torch.manual_seed(0)
    dense = Mask.dense(build_model("lenet_300_100", data.input_shape, data.num_classes))
    mask = random_sparse_mask(dense, "erk", args.density, torch.Generator().manual_seed(0))
    print(f"ticketlab rigl_overhead: lenet_300_100, {source}; density {mask.density:.4f} (ERK), "
          f"{args.steps} steps, updates every {args.delta_t} until 75%; torch threads {torch.get_num_threads()}")
    one_run(data, mask, cfg, 50, "static", args.delta_t)  # warm-up
    times: dict[str, list[float]] = {"static": [], "set": [], "rigl": []}
    updates = {}
    for r in range(args.repeats):
        for method in times:
            t, n = one_run(data, mask, cfg, args.steps, method, args.delta_t)
            times[method].append(t)
            updates[method] = n
        print(f"  repeat {r + 1}: " + "  ".join(f"{m}={v[-1]:.3f}s" for m, v in times.items()), flush=True)
    for method in ("set", "rigl"):
        ratios = [a / b for a, b in zip(times[method], times["static"])]
        per_update = (statistics.median(times[method]) - statistics.median(times["static"])) / max(1, updates[method])
        print(f"{method}: {statistics.median(times[method]):.3f} s vs static {statistics.median(times['static']):.3f} s; "
              f"{updates[method]} updates, ~{1000 * per_update:.1f} ms each; ratio {method}/static = "
              f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    ratio = statistics.median(a / b for a, b in zip(times["rigl"], times["static"]))
    print(f"TARGET rigl/static <= 1.05: {'PASS' if ratio <= 1.05 else 'FAIL'} ({ratio:.3f})")
    return 0 if ratio <= 1.05 else 1  # a FAIL is a non-zero exit


if __name__ == "__main__":
    sys.exit(main())
