#!/usr/bin/env python
"""On a GPU: are stacked replicates independent of their neighbours there, and how close to the CPU?

Trains the planted MLP (Helix, depth 5, width 100, ticket masks, Adam 1e-3, batch 32, 300 steps) as
a stack of 1, 4, 16, 128 and 512 replicates on the device (beyond 16, the 16 planted hosts and their
data repeat as neighbours) and once on the CPU, and prints, for replicate 0:
whether its weights are bit-identical across stack sizes on the device, and the largest weight
difference device vs. CPU. Also the stacked edge-popup (10 steps x 4 replicates) device vs. CPU masks.

    python benchmarks/replicates_device_check.py --device cuda
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from ticketlab.config import TrainConfig
from ticketlab.planting.benchmark import _splits
from ticketlab.planting.plant import host_network, plant
from ticketlab.planting.targets import target_network
from ticketlab.planting.tasks import make_task
from ticketlab.pruning.edge_popup_stacked import train_edge_popup_stacked
from ticketlab.replicates import train_stacked


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here")
        return 1
    seeds = list(range(16))
    tasks = [make_task("helix", n=2000, seed=s) for s in seeds]
    planted = [plant(target_network("helix", 5), host_network(1, 3, depth=5, width=100, seed=s)) for s in seeds]
    data = [_splits(t, torch.device("cpu")) for t in tasks]
    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=32, steps="300it", eval_every="300it")
    runs = {}
    sizes = (1, 4, 16, 128, 512)
    for k in sizes:
        idx = [i % len(seeds) for i in range(k)]
        recs = train_stacked([planted[i].host for i in idx], [planted[i].mask for i in idx], [data[i] for i in idx],
                             cfg, idx, loss=F.mse_loss, device=args.device)
        runs[k] = [t.detach().cpu() for t in recs[0].model.state_dict().values()]
    cpu = train_stacked([planted[0].host], [planted[0].mask], data[:1], cfg, [0], loss=F.mse_loss, device="cpu")[0]
    cpu_w = [t.detach() for t in cpu.model.state_dict().values()]
    same = {k: all(torch.equal(a, b) for a, b in zip(runs[1], runs[k])) for k in sizes[1:]}
    diff = {k: max(float((a - b).abs().max()) for a, b in zip(runs[1], runs[k])) for k in sizes[1:]}
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
          f"torch {torch.__version__}")
    print("train_stacked, replicate 0 after 300 Adam steps, bit-identical to its stack of 1 in a stack of "
          + ", ".join(f"{k}: {same[k]} (max |diff| {diff[k]:.3g})" for k in sizes[1:]))
    print(f"  device vs. CPU: max |weight diff| {max(float((a - b).abs().max()) for a, b in zip(runs[1], cpu_w)):.3g}")
    ep_dev = train_edge_popup_stacked([pl.host for pl in planted[:4]], data[:4], [0.1] * 4, seeds[:4], epochs=1,
                                      loss=F.mse_loss, device=args.device)
    ep_cpu = train_edge_popup_stacked([pl.host for pl in planted[:4]], data[:4], [0.1] * 4, seeds[:4], epochs=1,
                                      loss=F.mse_loss, device="cpu")
    differ = [sum(int((a.mask[n] != b.mask[n]).sum()) for n in a.mask) for a, b in zip(ep_dev, ep_cpu)]
    print(f"stacked edge-popup (1 epoch, 4 replicates): mask entries differing device vs. CPU per replicate: {differ} "
          f"of {ep_cpu[0].mask.num_total}")
    if not all(same.values()):
        print("FAIL: a replicate's weights depend on its stack's size on this device")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
