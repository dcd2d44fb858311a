#!/usr/bin/env python
"""Does a structured (channel) ticket really run faster? Shrunk vs. dense inference time.

For each model a BatchNorm channel mask keeping ~25% of the prunable channels is drawn the way
Early-Bird draws it (``channel_mask_from_bn`` at prune ratio 0.75 over |γ|; γ random here: the
speed depends on the widths, not on which channels go) and the model is made physically smaller
through Torch-Pruning's dependency graph (``ticketlab.pruning.graph_shrink.shrink_bn_mask``; the
shrink checks that the small model reproduces the masked one). Models (CIFAR-shaped input 3x32x32):

* ``vgg11``  – ticketlab's VGG-11 (``--vgg-width``, default 0.5): every conv's channels are
  prunable, so a conv keeps ~25% of its inputs and outputs (~1/16 of its FLOPs);
* ``resnet20`` – ticketlab's ResNet-20 (width 16, the published net): as in network slimming only
  the inner channel of each block (``bn1``) is prunable; the residual stream keeps its width;
* ``resnet20s`` – the same ResNet-20 with the residual stream pruned too: one more prunable BN per
  stage (the graph couples the stem/shortcut BN with every block's ``bn2`` and removes a stream
  channel from all of them), ranked together with the ``bn1`` layers;
* ``mobilenet`` – a user-written depthwise-separable CNN (stem + 6 depthwise/pointwise blocks):
  the pointwise BN is prunable and the depthwise conv + BN after it follow (coupled channels).

Dense and shrunk model (eval mode, ``torch.no_grad``) are timed interleaved (dense, shrunk, dense,
...) at batch 1 and batch 64; a ratio is the median over repeats of dense / shrunk time within the
same repeat. FLOP ratios (``ticketlab.analysis.flops.forward_flops``) are printed alongside.

Targets (FAIL and exit code 1 when missed; see docs/structured_shrink.md for why these):
  - batch 64 on the CPU: a shrunk model with <= 25% of the dense FLOPs runs >= 2x faster; one with
    more (ResNet-20 with only the inner channels pruned keeps ~28%: the residual stream keeps its
    width) must reach 40% of the FLOP-ideal speed-up, min(2, 0.4 / FLOP ratio);
  - batch 1: the shrunk model is never slower (ratio >= 0.95; 5% is the noise we tolerate).
On a GPU (``--device cuda``) the ratios are printed, not checked: at these sizes a GPU is bound
by kernel launches, not FLOPs.

    python benchmarks/structured_speed.py --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


def interleaved(fns: dict[str, object], repeats: int, seconds: float, sync) -> dict[str, list[float]]:
    """Seconds per call of each fn, measured in alternation ``repeats`` times."""
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(3):
                fn()
        sync()
        calls = {}
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            calls[name] = max(1, int(seconds / max(time.perf_counter() - start, 1e-7)))
        out: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                sync()
                start = time.perf_counter()
                for _ in range(calls[name]):
                    fn()
                sync()
                out[name].append((time.perf_counter() - start) / calls[name])
    return out


def ds_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(),
        nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
    )  # fmt: skip


class MobileNetLike(nn.Module):
    """A user's depthwise-separable CNN for 32x32 inputs."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        plan = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
        self.blocks = nn.Sequential(*(ds_block(i, o, s) for i, o, s in plan))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def build(name: str, vgg_width: float) -> nn.Module:
    from ticketlab.models import build_model

    if name == "vgg11":
        return build_model("vgg11", (3, 32, 32), 10, width=vgg_width)
    if name in ("resnet20", "resnet20s"):
        return build_model("resnet20", (3, 32, 32), 10, width=16)
    if name == "mobilenet":
        return MobileNetLike()
    raise SystemExit(f"unknown model {name!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (default: 1)")
    ap.add_argument("--models", default="vgg11,resnet20,resnet20s,mobilenet", help="comma-separated (default: all four)")
    ap.add_argument("--keep", type=float, default=0.25, help="fraction of prunable channels kept (default: 0.25)")
    ap.add_argument("--vgg-width", type=float, default=0.5, help="VGG-11 width multiplier (default: 0.5)")
    ap.add_argument("--batches", default="1,64", help="batch sizes (default: 1,64)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved repeats per measurement (default: 7)")
    ap.add_argument("--seconds", type=float, default=0.3, help="length of one timed round (default: 0.3)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda (when available)")
    ap.add_argument("--target", type=float, default=2.0, help="speed-up required at the largest batch (default: 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu")
        return 2
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":  # full fp32 on both sides: TF32 convs would fail the shrunk == masked check
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    from ticketlab.analysis.flops import forward_flops
    from ticketlab.pruning.channels import channel_mask_from_bn, prunable_bn_layers
    from ticketlab.pruning.graph_shrink import channel_groups, shrink_bn_mask

    batches = [int(b) for b in args.batches.split(",")]
    big = max(batches)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                f", {torch.get_num_threads()} thread(s)")
          + f"; torch {torch.__version__}; keep {args.keep:.0%} of prunable channels; "
          f"median of {args.repeats} interleaved repeats")
    print(f"{'model':<10} {'params':>9} {'shrunk':>9} {'FLOPs':>6} | " + " | ".join(
        f"b={b:<3} dense ms  shrunk ms  ratio" for b in batches))
    failures = []
    for name in [m for m in args.models.split(",") if m]:
        model = build(name, args.vgg_width)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.1)
        x1 = torch.randn(1, 3, 32, 32)
        layers = prunable_bn_layers(model, x1)
        if name == "resnet20s":  # add the residual streams: one representative BN per stage
            layers += [g.representative_bn for g in channel_groups(model, x1) if g.residual and g.refusal is None]
        mask = channel_mask_from_bn(model, 1.0 - args.keep, layers=layers, example_input=x1)
        result = shrink_bn_mask(model, mask, x1)
        dense, small = result.reference.eval(), result.model.eval()  # the masked model has dense cost
        p_dense = sum(p.numel() for p in dense.parameters())
        p_small = sum(p.numel() for p in small.parameters())
        flops = forward_flops(small, (3, 32, 32)) / forward_flops(dense, (3, 32, 32))
        dense, small = dense.to(device), small.to(device)
        cells, ratios = [], {}
        for b in batches:
            x = torch.randn(b, 3, 32, 32, device=device)
            with torch.no_grad():
                assert torch.allclose(small(x), dense(x), atol=1e-4, rtol=1e-3), "shrunk != masked"
            t = interleaved({"dense": lambda: dense(x), "shrunk": lambda: small(x)}, args.repeats, args.seconds, sync)
            ratio = statistics.median(d / s for d, s in zip(t["dense"], t["shrunk"]))
            ratios[b] = ratio
            cells.append(f"{1e3 * statistics.median(t['dense']):>12.2f} {1e3 * statistics.median(t['shrunk']):>10.2f} "
                         f"{ratio:>6.2f}x")
        print(f"{name:<10} {p_dense:>9} {p_small:>9} {flops:>6.3f} | " + " | ".join(cells), flush=True)
        if device.type == "cpu":
            required = args.target if flops <= 0.25 else min(args.target, 0.4 / flops)
            if ratios[big] < required:
                failures.append(f"{name}: batch {big} speed-up {ratios[big]:.2f}x < {required:.2f}x")
            for b, r in ratios.items():
                if r < 0.95:
                    failures.append(f"{name}: batch {b} shrunk model slower than dense ({r:.2f}x)")
    for f in failures:
        print(f"FAIL {f}")
    if not failures and device.type == "cpu":
        print(f"PASS: every shrunk model met its batch-{big} target (>= {args.target}x at <= 25% FLOPs), "
              f"none slower at any batch")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
