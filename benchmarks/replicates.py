#!/usr/bin/env python
"""Throughput of K replicates trained as one stacked model vs. one at a time (the solo Trainer).

Throughput = training steps x replicates per second, evaluation included (once at the start and
once at the end of each run, on a 1,000-sample test split, in both variants). Models:

  planted   the planted-ticket MLP (depth 5, width 100, Helix task: 1 -> 3, MSE), each replicate
            a host planted with its own seed and trained under its own ticket mask, Adam 1e-3,
            batch 32 (the planted benchmark's protocol)
  lenet     LeNet-300-100 (784-300-100-10) on MNIST (synthetic MNIST-shaped data if MNIST is not
            found), each replicate with its own init and a random 20% mask, Adam 1.2e-3, batch 60
  conv2     Conv-2 on CIFAR-10-shaped synthetic images, random 20% mask, Adam 2e-4, batch 60; vmap
            engine only (bmm is for MLPs); slow on a CPU: ``--models planted,lenet`` skips it

for K = 1, 8, 32, 64, under 1 thread and under torch's default thread count (both in one run).
"solo" runs ``Trainer(...).train()`` for the replicates one after another; its throughput does not
depend on K, so it is measured over min(K, --solo-runs) replicates. "bmm" is ``train_stacked``
with the baddbmm engine (the default for MLPs; with more than one thread a large enough stack trains
as sub-stacks, one per thread, as ``train_stacked`` does by default), "vmap" the torch.func engine. Variants are
interleaved within each of --repeats repeats; the table shows the best throughput and the median
over repeats of the per-repeat ratio. ``--device cuda`` runs both variants on the GPU.

Targets (issue 13): >= 6x on the planted MLP; never slower than one at a time. Prints FAIL and
exits non-zero if the stacked (bmm) training is slower than solo at K >= 8 on the planted MLP, or
below 6x at K >= 32 under any thread count measured.

    python benchmarks/replicates.py --models planted,lenet   # the MLP tables, ~5 minutes on 2 cores
    python benchmarks/replicates.py --models conv2 --threads 1 --repeats 1 --conv2-steps 3   # Conv-2, slow
    python benchmarks/replicates.py --threads 1 --ks 8 --models planted   # a quick look
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ticketlab.config import TrainConfig
from ticketlab.data import ArrayData, DataSplits, load_dataset
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.planting.plant import host_network, plant
from ticketlab.planting.targets import target_network
from ticketlab.planting.tasks import make_task
from ticketlab.replicates import train_stacked
from ticketlab.training import Trainer

ROOT = Path(__file__).resolve().parents[1]


def planted_setup(kmax: int, steps: int):
    d = make_task("helix", n=10_000, seed=0)
    test = slice(0, 1000)
    data = DataSplits("helix", ArrayData(d.x_train, d.y_train), ArrayData(d.x_test[test], d.y_test[test]),
                      d.output_dim, (d.input_dim,))
    target = target_network("helix", 5)
    planted = [plant(target, host_network(d.input_dim, d.output_dim, depth=5, width=100, seed=s)) for s in range(kmax)]
    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=32, steps=f"{steps}it", eval_every="1000000it")
    return data, [p.host for p in planted], [p.mask for p in planted], cfg, F.mse_loss, "Helix, 9,000 training samples"


def lenet_setup(kmax: int, steps: int, data_root: str):
    try:
        data = load_dataset("mnist", data_root)
        source = f"MNIST from {data_root}"
    except Exception as exc:  # no MNIST at hand: same shapes, random data
        data = load_dataset("synthetic_images", n_train=60000, n_test=1000, shape=(1, 28, 28), seed=0)
        source = f"synthetic MNIST-shaped data ({exc.__class__.__name__}: MNIST not found)"
    data = DataSplits(data.name, data.train, ArrayData(data.test.x[:1000], data.test.y[:1000]), data.num_classes,
                      data.input_shape)
    models, masks = [], []
    for s in range(kmax):
        torch.manual_seed(s)
        m = build_model("lenet_300_100", data.input_shape, data.num_classes)
        g = torch.Generator().manual_seed(s)
        masks.append(Mask({n: torch.rand(t.shape, generator=g) < 0.2 for n, t in Mask.dense(m).items()}))
        models.append(m)
    cfg = TrainConfig(optimizer="adam", lr=1.2e-3, batch_size=60, steps=f"{steps}it", eval_every="1000000it")
    return data, models, masks, cfg, F.cross_entropy, source


def conv2_setup(kmax: int, steps: int):
    """Conv-2 (Frankle & Carbin) on CIFAR-10-shaped synthetic data, random 20% mask per replicate."""
    data = load_dataset("synthetic_images", n_train=6000, n_test=200, shape=(3, 32, 32), seed=0)
    models, masks = [], []
    for s in range(kmax):
        torch.manual_seed(s)
        m = build_model("conv2", data.input_shape, data.num_classes)
        g = torch.Generator().manual_seed(s)
        masks.append(Mask({n: torch.rand(t.shape, generator=g) < 0.2 for n, t in Mask.dense(m).items()}))
        models.append(m)
    cfg = TrainConfig(optimizer="adam", lr=2e-4, batch_size=60, steps=f"{steps}it", eval_every="1000000it")
    return data, models, masks, cfg, F.cross_entropy, "synthetic CIFAR-10-shaped images (3x32x32), 6,000 training, 200 test"


DEVICE = "cpu"


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def time_solo(data, models, masks, cfg, loss) -> float:
    _sync()
    started = time.perf_counter()
    for k, (m, mask) in enumerate(zip(models, masks)):
        Trainer(copy.deepcopy(m), data, cfg, mask, seed=k, device=DEVICE, loss=loss).train()
    _sync()
    return time.perf_counter() - started


def time_stacked(data, models, masks, cfg, loss, engine) -> float:
    _sync()
    started = time.perf_counter()
    records = train_stacked(models, masks, data, cfg, list(range(len(models))), loss=loss, device=DEVICE,
                            engine=engine)
    _sync()
    elapsed = time.perf_counter() - started
    assert all(r.diverged is None for r in records), [r.diverged for r in records if r.diverged]
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="planted,lenet,conv2")
    p.add_argument("--ks", default="1,8,32,64")
    p.add_argument("--threads", default="1,default", help="comma-separated thread counts; 'default' = torch's")
    p.add_argument("--engines", default="bmm,vmap")
    p.add_argument("--planted-steps", type=int, default=300)
    p.add_argument("--lenet-steps", type=int, default=50)
    p.add_argument("--conv2-steps", type=int, default=10)
    p.add_argument("--device", default="cpu", help="cpu or cuda (both variants run there)")
    p.add_argument("--solo-runs", type=int, default=8, help="solo throughput measured over min(K, this) runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    default_threads = torch.get_num_threads()
    threads = [default_threads if t == "default" else int(t) for t in args.threads.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    all_engines = args.engines.split(",")
    print(f"ticketlab replicates benchmark: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} default threads; device {DEVICE}"
          + (f" ({torch.cuda.get_device_name()})" if DEVICE.startswith("cuda") else "") + "; throughput = steps x replicates / s "
          f"(best of {args.repeats}); ratio = median over repeats of stacked / solo within a repeat; "
          f"1-min load average before {os.getloadavg()[0]:.2f} (above ~0.3: other work on the cores)")
    failed = False
    ratios: dict[tuple[str, int, int], float] = {}
    for name in args.models.split(","):
        if name == "planted":
            data, models, masks, cfg, loss, source = planted_setup(max(ks), args.planted_steps)
        elif name == "lenet":
            data, models, masks, cfg, loss, source = lenet_setup(max(ks), args.lenet_steps, args.data_root)
        else:
            data, models, masks, cfg, loss, source = conv2_setup(max(ks), args.conv2_steps)
        steps = {"planted": args.planted_steps, "lenet": args.lenet_steps, "conv2": args.conv2_steps}[name]
        engines = [e for e in all_engines if name != "conv2" or e != "bmm"]  # bmm is for MLPs
        print(f"\n{name}: {source}; batch {cfg.batch_size}, {steps} steps per run, "
              f"mask density {masks[0].density:.3f} (replicate 0)")
        header = "| threads | K | solo | " + " | ".join(f"stacked {e} | {e}/solo" for e in engines) + " |"
        print(header)
        print("|" + "---|" * (3 + 2 * len(engines)))
        for t in threads:
            torch.set_num_threads(t)
            time_solo(data, models[:1], masks[:1], cfg, loss)  # warm-up
            for e in engines:
                time_stacked(data, models[:2], masks[:2], cfg, loss, e)
            for k in ks:
                solo_n = min(k, args.solo_runs)
                runs: dict[str, list[float]] = {"solo": [], **{e: [] for e in engines}}
                for _ in range(args.repeats):  # variants interleaved: a busy spell hits them alike
                    runs["solo"].append(solo_n * steps / time_solo(data, models[:solo_n], masks[:solo_n], cfg, loss))
                    for e in engines:
                        runs[e].append(k * steps / time_stacked(data, models[:k], masks[:k], cfg, loss, e))
                cells = [f"{max(runs['solo']):,.0f}"]
                for e in engines:
                    ratio = statistics.median(a / b for a, b in zip(runs[e], runs["solo"]))
                    ratios[(name, t, k, e)] = ratio
                    cells += [f"{max(runs[e]):,.0f}", f"{ratio:.2f}x"]
                print(f"| {t} | {k} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n1-min load average at the end {os.getloadavg()[0]:.2f} (this benchmark's own threads count in it)")
    for (name, t, k, e), r in ratios.items():
        if name == "planted" and e == "bmm" and k >= 8 and r < 1.0:
            print(f"FAIL: stacked slower than one at a time: planted MLP, K={k}, {t} threads, ratio {r:.2f}")
            failed = True
    planted = [r for (name, _, k, e), r in ratios.items() if name == "planted" and e == "bmm" and k >= 32]
    if planted:  # the target, at every thread count measured
        print(f"target >= 6x on the planted MLP (bmm, K >= 32): {'PASS' if min(planted) >= 6 else 'FAIL'} "
              f"(min {min(planted):.2f}x, max {max(planted):.2f}x)")
        failed = failed or min(planted) < 6
    slower = [(key, r) for key, r in ratios.items() if r < 1.0 and key[3] == "bmm"]
    print("never slower than one at a time (bmm, every MLP, K, threads): "
          + ("PASS" if not slower else "NO: " + ", ".join(f"{k[0]} K={k[2]} t={k[1]}: {r:.2f}x" for k, r in slower)))
    conv = [(key, r) for key, r in ratios.items() if key[0] == "conv2" and key[2] > 1]
    if conv:
        print("conv2 through vmap: " + ", ".join(f"K={k[2]} t={k[1]}: {r:.2f}x" for k, r in conv)
              + (" -- slower than one at a time: conv nets are trained one at a time (no stacking)"
                 if any(r < 1.0 for _, r in conv) else ""))
    if failed:
        print("FAIL")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
