"""What 100 rounds of SynFlow cost next to one training epoch, on VGG-16 and ResNet-20 (CIFAR-10 shapes).

SynFlow (Tanaka et al. 2020) is data-free but iterative: 100 rounds of score (one forward and
backward pass of a float64, or float32, copy of the net on a single all-ones input) and select (keep the top
scores globally). Is that cheap next to training? For each model this script times, on the same
machine and thread count:

1. ``prune("synflow", model, dense mask, source, density, rounds=100)`` (``--synflow-precision``,
   float64 by default; global selection,
   exponential schedule, density 0.01 by default), from the dense mask of a freshly initialised
   net, with the seconds of every round (the rounds get cheaper as the mask thins: selection
   ranks only the weights still kept);
2. a breakdown of one round from the dense mask into scoring (``raw_scores``) and selection
   (``keep_top``), median of ``--breakdown-repeats`` after one warm-up;
3. one CIFAR-10 training epoch of the same model with ticketlab's Trainer under the SynFlow mask
   (SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, random crop + flip). An epoch is
   50,000 images at batch 128 = 391 iterations (ticketlab's Trainer drops the last partial batch,
   so its epoch is 390). Timing 391 VGG-16 iterations on one CPU thread takes the better part of
   half an hour, so the script times ``--iterations`` iterations (default 20, after ``--warmup``
   3 untimed ones) and extrapolates to 391; ``--iterations 391`` measures the whole epoch. The
   batches are synthetic CIFAR-shaped images (real CIFAR-10 is not available offline), which cost
   exactly what real ones do.

and prints seconds for the 100 rounds, seconds per epoch (measured or extrapolated, as labelled)
and the ratio "100 SynFlow rounds / 1 epoch".

    python benchmarks/synflow_cost.py --threads 1
    python benchmarks/synflow_cost.py --threads 1 --models resnet20 --iterations 391   # full epoch
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time

import torch

from ticketlab.config import TrainConfig
from ticketlab.data import DataSplits, RandomCropFlip, load_dataset
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.prune import prune, round_targets
from ticketlab.pruning.schedules import Iterative
from ticketlab.pruning.scores import ScoreSource, raw_scores
from ticketlab.pruning.selection import keep_top
from ticketlab.training import Callback, Trainer

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
EPOCH_IMAGES = 50_000
BATCH_SIZE = 128
EPOCH_ITERATIONS = -(-EPOCH_IMAGES // BATCH_SIZE)  # 391


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log(msg: str) -> None:
    print(msg, flush=True)


def time_synflow(model: torch.nn.Module, density: float, rounds: int,
                 precision: str = "float64") -> tuple[float, list[float], Mask]:
    """Seconds for the whole prune() call, seconds of each round, and the final mask."""
    dense = Mask.dense(model)
    source = ScoreSource(batches=lambda: [], input_shape=INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    stamps: list[float] = []
    t0 = time.perf_counter()
    mask = prune("synflow", model, dense, source, density, rounds=rounds, synflow_precision=precision,
                 progress=lambda k, m: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    per_round = [b - a for a, b in zip([t0, *stamps[:-1]], stamps)]
    return total, per_round, mask


def breakdown(model: torch.nn.Module, density: float, rounds: int, repeats: int,
              precision: str = "float64") -> tuple[float, float]:
    """Median seconds of scoring and of selection for round 1 (from the dense mask)."""
    dense = Mask.dense(model)
    source = ScoreSource(batches=lambda: [], input_shape=INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    targets = round_targets(dense, Iterative(density, rounds), "global", 1)
    score_s, select_s = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        scores = raw_scores("synflow", model, dense, source, precision=precision)
        t1 = time.perf_counter()
        keep_top(scores, dense, targets)
        t2 = time.perf_counter()
        if i:  # the first repeat is a warm-up
            score_s.append(t1 - t0)
            select_s.append(t2 - t1)
    return statistics.median(score_s), statistics.median(select_s)


def time_training(model: torch.nn.Module, mask: Mask | None, iterations: int, warmup: int, seed: int) -> float:
    """Seconds per Trainer iteration (batch gather + augmentation + forward/backward + SGD step +
    mask multiply), averaged over ``iterations`` after ``warmup`` untimed ones."""
    n = BATCH_SIZE * (warmup + iterations + 1)
    data = load_dataset("synthetic_images", n_train=n, n_test=1, shape=INPUT_SHAPE, num_classes=NUM_CLASSES, seed=seed)
    data = DataSplits(data.name, data.train, data.test, data.num_classes, data.input_shape,
                      augment=RandomCropFlip(padding=4))
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=BATCH_SIZE,
                      steps="1ep", eval_every="1000ep")
    stamps: dict[int, float] = {}
    trainer = Trainer(model, data, cfg, mask, device="cpu", seed=seed,
                      callbacks=[Callback(lambda tr, step: stamps.__setitem__(step, time.perf_counter()), every=1)])
    # One extra iteration at the end: the Trainer evaluates after its last step, and that
    # evaluation must not fall inside the timed iterations. resumed=True skips the step-0 evaluation.
    trainer.train(0, warmup + iterations + 1, resumed=True)
    return (stamps[warmup + iterations] - stamps[warmup]) / iterations


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet20"])
    p.add_argument("--density", type=float, default=0.01, help="SynFlow's final density (default 0.01)")
    p.add_argument("--rounds", type=int, default=100, help="SynFlow rounds (default 100)")
    p.add_argument("--iterations", type=int, default=20,
                   help=f"timed training iterations, extrapolated to {EPOCH_ITERATIONS} (default 20; "
                        f"{EPOCH_ITERATIONS} = a measured epoch)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training iterations first (default 3)")
    p.add_argument("--breakdown-repeats", type=int, default=3)
    p.add_argument("--dense-training", action="store_true",
                   help="time training without a mask (default: under the SynFlow mask)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--synflow-precision", choices=("float64", "float32"), default="float64",
                   help="SynFlow's arithmetic (default float64, prune()'s default; float32: docs/pai_speed.md)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.iterations < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--iterations and --rounds must be >= 1, --warmup >= 0")

    log(f"SynFlow cost vs one training epoch, CIFAR-10 shapes {INPUT_SHAPE}; run "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {torch.get_num_threads()} thread(s), {cpu_name()}")
    log(f"SynFlow: {args.rounds} rounds in {args.synflow_precision}, global, exponential schedule, to density "
        f"{args.density:g}. Epoch: "
        f"{EPOCH_IMAGES:,} images / batch {BATCH_SIZE} = {EPOCH_ITERATIONS} SGD iterations, "
        f"{'dense' if args.dense_training else 'under the SynFlow mask'}, random crop + flip, synthetic "
        f"CIFAR-shaped data (real CIFAR-10 not available offline).")
    rows = []
    for name in args.models:
        torch.manual_seed(args.seed)
        model = build_model(name, INPUT_SHAPE, NUM_CLASSES)
        n_weights = Mask.dense(model).num_total
        log(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters, {n_weights:,} prunable")
        score_s, select_s = breakdown(model, args.density, args.rounds, args.breakdown_repeats,
                                      args.synflow_precision)
        log(f"  one round from the dense mask: scoring {score_s:.3f} s + selection {select_s:.3f} s "
            f"= {score_s + select_s:.3f} s (selection {100 * select_s / (score_s + select_s):.0f}%)")
        total, per_round, mask = time_synflow(model, args.density, args.rounds, args.synflow_precision)
        log(f"  {args.rounds} rounds: {total:.1f} s (round 1 {per_round[0]:.3f} s, last {per_round[-1]:.3f} s, "
            f"median {statistics.median(per_round):.3f} s); final density {mask.density:.4g}")
        per_iter = time_training(model, None if args.dense_training else mask, args.iterations, args.warmup, args.seed)
        measured = args.iterations >= EPOCH_ITERATIONS
        epoch_s = per_iter * EPOCH_ITERATIONS
        how = (f"measured over {args.iterations} iterations" if measured else
               f"extrapolated: {args.iterations} timed iterations after {args.warmup} warm-up x {EPOCH_ITERATIONS}/{args.iterations}")
        log(f"  training: {per_iter:.3f} s/iteration -> epoch {epoch_s:.1f} s ({how})")
        ratio = total / epoch_s
        log(f"  {args.rounds} SynFlow rounds / 1 epoch = {ratio:.4f} (1 epoch = {1 / ratio:.1f}x the rounds)")
        rows.append((name, n_weights, score_s, select_s, total, per_iter, epoch_s, measured, ratio))

    log("\n| model | prunable weights | 1 round: scoring / selection (s) | "
        f"{args.rounds} SynFlow rounds (s) | s / iteration | epoch ({EPOCH_ITERATIONS} it.) (s) | "
        f"{args.rounds} rounds / epoch |")
    log("|---|---|---|---|---|---|---|")
    for name, n, sc, se, total, it, ep, measured, ratio in rows:
        log(f"| {name} | {n:,} | {sc:.3f} / {se:.3f} | {total:.1f} | {it:.3f} | {ep:.0f} "
            f"({'measured' if measured else 'extrapolated'}) | {ratio:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
