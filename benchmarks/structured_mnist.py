"""Structured tickets on MNIST (Chen et al. 2022): IMP vs. Refill vs. Refill+ vs. regroup vs. random
channel pruning, at the conv densities IMP reaches, with the structure metrics of every ticket.

Model: a LeNet-5-like conv net registered here as ``lenet5`` (conv 5x5 1->6, max-pool, conv 5x5 6->16,
max-pool, FC 256->120->84->10, ReLU; no BN). As in the authors' code only the conv weights are
pruned (``--keep-dense classifier fc``): "density" is the conv density. Every method is an ordinary
IMP run (``ticketlab imp``), so the procedure is the same for all of them: train dense, prune
``--rate`` of the remaining conv weights globally by |w|, post-process, rewind to ``--rewind-step``
and retrain, for ``--levels`` levels:

* ``imp``      unstructured IMP (``--structure none``);
* ``refill``   ``--structure refill`` (channels ranked by kept-weight count, the authors' default);
* ``refill+``  ``--structure refill+ --structure-ratio R``;
* ``regroup``  ``--structure regroup --structure-parts 2 --structure-min-rows 2`` (the authors' 8 parts of
  more than 16 rows cannot exist in layers of 6 and 16 channels: see docs/structured.md);
* ``random_ch`` random channel pruning: ``--criterion random --structure refill``, i.e. each level
  keeps a random set of conv weights of IMP's size and refill turns it into whole channels (the
  channel counts of Refill, chosen at random, nested across levels), rewound and retrained alike.

    python benchmarks/structured_mnist.py --data-root ../shared/data/mnist --epochs 1 --seeds 3

(Adam, lr 1.5e-3, batch 128, rewind to iteration 50, prune rate 0.5 per level, 3 levels by default.)

Prints a Markdown table (one line per method and level: conv density, test accuracy mean and
min-max over seeds, empty conv channels, kept weights in dense blocks, shrunk params / FLOPs of
the whole net relative to dense) and writes it to ``--out``/report.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ticketlab.config import DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig, config_hash
from ticketlab.experiments.imp import run_imp
from ticketlab.masks import Mask
from ticketlab.models import register_model
from ticketlab.store import Store


class LeNet5(nn.Module):
    """LeNet-5-like: conv 5x5 (6), pool, conv 5x5 (16), pool, FC 120, 84, ``fc``; ReLU, max-pool."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, side: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        s = ((side - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * s * s, 120), nn.ReLU(), nn.Linear(120, 84),
                                        nn.ReLU())
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.classifier(self.features(x)))


@register_model("lenet5")
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> LeNet5:
    return LeNet5(input_shape[0], num_classes, input_shape[-1])


METHODS = ("imp", "refill", "refill+", "regroup", "random_ch")


def prune_config(method: str, rate: float, ratio: float) -> PruneConfig:
    common = dict(rate=rate, exclude=("classifier", "fc"))
    return {
        "imp": PruneConfig(**common),
        "refill": PruneConfig(**common, structure="refill"),
        "refill+": PruneConfig(**common, structure="refill+", structure_ratio=ratio),
        "regroup": PruneConfig(**common, structure="regroup", structure_parts=2, structure_min_rows=2),
        "random_ch": PruneConfig(**common, criterion="random", structure="refill"),
    }[method]


def fmt_acc(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.2f} ({100 * min(values):.2f}-{100 * max(values):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/data/mnist")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--rate", type=float, default=0.5)
    p.add_argument("--ratio", type=float, default=0.1, help="r of refill+")
    p.add_argument("--rewind-step", default="50it")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--out", default="runs/reports/structured_mnist")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    started = time.time()
    store = Store(args.runs_dir)
    results: dict[tuple[str, int], list[dict]] = {}
    for method in args.methods:
        for seed in range(args.seeds):
            cfg = IMPConfig(data=DataConfig(name="mnist", root=args.data_root),
                            model=ModelConfig(name="lenet5"),
                            train=TrainConfig(optimizer="adam", lr=args.lr, batch_size=args.batch_size,
                                              steps=f"{args.epochs}ep", eval_every=f"{args.epochs}ep"),
                            prune=prune_config(method, args.rate, args.ratio), levels=args.levels, reset="rewind",
                            rewind_step=args.rewind_step, baselines=(), seed=seed)
            t0 = time.time()
            rows = run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
            print(f"{method:>9} seed {seed}: " + ", ".join(
                f"L{r['level']} {r['remaining_percent']:.1f}% {100 * r['final_test_accuracy']:.2f}" for r in rows)
                + f"  ({time.time() - t0:.0f} s)", flush=True)
            run = store.run(config_hash(cfg))
            for r in rows:
                r = dict(r)
                if r["level"] == 0:
                    r["channels"] = (6, 16)
                else:
                    mask = Mask.load(run.file(f"level_{r['level']:02d}", "mask.safetensors"))
                    r["channels"] = tuple(int(mask[n].flatten(1).any(1).sum())
                                          for n in ("features.0.weight", "features.3.weight"))
                results.setdefault((method, r["level"]), []).append(r)

    head = ["method", "level", "conv density %", "test acc % mean (min-max)", "conv channels kept (6, 16)",
            "empty conv channels %",
            "kept in dense blocks %", "shrunk params / dense", "shrunk FLOPs / dense"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mean = statistics.mean
    for level in range(args.levels + 1):
        for method in args.methods:
            rows = results.get((method, level), [])
            if not rows or (level == 0 and method != args.methods[0]):
                continue  # level 0 (dense) is the same training for every method: shown once
            lines.append("| " + " | ".join([
                "dense" if level == 0 else method, str(level), f"{mean(r['remaining_percent'] for r in rows):.1f}",
                fmt_acc([r["final_test_accuracy"] for r in rows]),
                ", ".join(f"{mean(r['channels'][i] for r in rows):.1f}" for i in range(2)),
                f"{100 * mean(r['empty_channel_fraction'] for r in rows):.1f}",
                f"{100 * mean(r['block_nonzero_fraction'] for r in rows):.1f}",
                f"{mean(r['shrunk_params'] / r['params_dense'] for r in rows):.3f}",
                f"{mean(r['shrunk_flops'] / r['flops_dense'] for r in rows):.3f}"]) + " |")
    table = "\n".join(lines)
    wall = time.time() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(table + f"\n\n{args.seeds} seeds, {args.epochs} epoch(s) per training, "
                                           f"wall time {wall:.0f} s\n")
    print(table)
    print(f"\nwall time {wall:.0f} s; table {out / 'report.md'}")


if __name__ == "__main__":
    main()
