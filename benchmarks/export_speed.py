#!/usr/bin/env python
"""Does an exported ticket really run faster? LeNet-300-100 tickets at density 10%, 2% and 0.5%, and a
Conv-2 ticket (CIFAR-sized input) at 2%.

For each density one IMP run (``ticketlab.experiments.imp``: LeNet-300-100 on generated 1x28x28
images, layer-wise magnitude pruning, one level at rate 1 - density, a few training iterations: the
speed depends on the mask's density and shape, not on the accuracy) is exported twice with
``ticketlab.export.export_run``: ``standalone`` (the dense model, pruned entries 0) and ``sparse``
(each Linear in the form measured fastest at export time, at batch 1 and batch 60). Both exports
are loaded back with ``load_ticket`` (the sparse one with its dead hidden units removed, exactly: a
model's second line gives the units each Linear layer keeps of its outputs) and timed interleaved
(dense, sparse, dense, ...) at batch 1 and 60; a ratio is the median over repeats of dense / sparse time
within the same repeat (the targets' measure; the fastest rounds' ratio is printed beside it, for reading
a run on a loaded machine). The Conv-2 row
(3x32x32 input, the same IMP at 2%) shows whether a conv layer's ``unfold`` form was measured to pay
(forms u) or dense was kept (d); its Linear layers take the sparse forms as LeNet's do.

Targets (FAIL and exit code 1 when missed):
  - at 2% and batch 60 the sparse export is >= 5x faster than the dense model;
  - the sparse export is never slower than dense, LeNet or Conv-2 (ratio >= 0.95: 5% is the noise we tolerate);
  - at 2% the sparse weights file is >= 10x smaller than the standalone (dense) one.

    python benchmarks/export_speed.py --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def interleaved(fns: dict[str, object], repeats: int, seconds: float) -> dict[str, list[float]]:
    """Seconds per call of each fn, measured in alternation ``repeats`` times (at least 3 calls a round:
    a 0.1 s conv net too)."""
    from ticketlab.sparse_inference import timed_rounds

    return timed_rounds(fns, seconds=seconds, rounds=repeats, warmup=5, min_calls=3, max_calls=10**9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (default: 1)")
    ap.add_argument("--batch", type=int, default=60, help="the large batch size (default: 60)")
    ap.add_argument("--repeats", type=int, default=11, help="interleaved repeats per measurement (default: 11)")
    ap.add_argument("--seconds", type=float, default=0.05, help="length of one timed round (default: 0.05)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ticketlab.config import DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig, config_hash
    from ticketlab.experiments.imp import run_imp
    from ticketlab.export import export_run, load_ticket
    from ticketlab.store import Store

    started = time.time()
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "runs")
        for model, shape, density in [("lenet_300_100", (1, 28, 28), 0.1), ("lenet_300_100", (1, 28, 28), 0.02),
                                      ("lenet_300_100", (1, 28, 28), 0.005), ("conv2", (3, 32, 32), 0.02)]:
            data = DataConfig(name="synthetic_images", options={"n_train": 240, "n_test": 60, "shape": list(shape)})
            cfg = IMPConfig(data=data, model=ModelConfig(name=model),
                            train=TrainConfig(batch_size=60, steps="8it", eval_every="8it"),
                            prune=PruneConfig(rate=1 - density, scope="layerwise"), levels=1, baselines=(), seed=0)
            run_imp(cfg, store, device="cpu", progress=False, log=lambda _: None)
            h = config_hash(cfg)
            out = {fmt: Path(tmp) / f"{model}-{density}-{fmt}" for fmt in ("standalone", "sparse")}
            reports = {fmt: export_run(store, h, out[fmt], fmt=fmt, batch=args.batch, log=lambda _: None)
                       for fmt in out}
            dense, sparse = load_ticket(out["standalone"]), load_ticket(out["sparse"])
            size = {fmt: r["bytes"]["weights.safetensors"] for fmt, r in reports.items()}
            size_ratio = size["standalone"] / size["sparse"]
            for batch in (1, args.batch):
                x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
                with torch.no_grad():
                    assert torch.allclose(dense(x), sparse(x), atol=1e-4, rtol=1e-4), "sparse export differs from dense"
                t = interleaved({"dense": lambda: dense(x), "sparse": lambda: sparse(x)}, args.repeats, args.seconds)
                ratio = statistics.median(d / s for d, s in zip(t["dense"], t["sparse"]))
                best = min(t["dense"]) / min(t["sparse"])  # load only adds time: the best rounds, for reading
                rows.append((model, density, batch, statistics.median(t["dense"]), statistics.median(t["sparse"]),
                             ratio, best, size_ratio, reports["sparse"]["layer_forms"], type(sparse).__name__,
                             reports["sparse"].get("dead_units", {})))
                if ratio < 0.95:
                    failures.append(f"{model} density {density:g} batch {batch}: sparse export slower than dense "
                                    f"({ratio:.2f}x)")
                if model == "lenet_300_100" and density == 0.02 and batch == args.batch and ratio < 5:
                    failures.append(f"LeNet density 2% batch {batch}: {ratio:.2f}x faster, target >= 5x")
            if model == "lenet_300_100" and density == 0.02 and size_ratio < 10:
                failures.append(f"LeNet density 2%: sparse file only {size_ratio:.1f}x smaller, target >= 10x")

    print(f"Exported tickets, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved repeats")
    print(f"{'model':>14} {'density':>8} {'batch':>6} {'dense us':>10} {'sparse us':>10} {'speedup':>8} {'best':>7} "
          f"{'file x smaller':>15}  runs as, forms (batch 1 / {args.batch})")
    short = {"dense": "d", "csr": "c", "csr_rows": "r", "unfold": "u"}
    for model, density, batch, td, ts, ratio, best, size, forms, runs_as, dead in rows:
        f = ", ".join(f"{n}:{short[v['1']]}/{short[v[str(args.batch)]]}" for n, v in forms.items())
        # the second line of a model: the units each Linear keeps after dead-unit elimination (of its outputs)
        kept = "units kept " + ", ".join(f"{n} {e['outputs'][0]}/{e['outputs'][1]}" for n, e in dead.items()
                                         if e["outputs"][0] < e["outputs"][1]) if dead else ""
        print(f"{model:>14} {density:>8.3f} {batch:>6} {td * 1e6:>10.1f} {ts * 1e6:>10.1f} {ratio:>7.2f}x {best:>6.2f}x "
              f"{size:>14.1f}x  " + (f"{runs_as}: {f}" if batch == 1 else kept))
    print(f"({time.time() - started:.0f} s; speedup: median over repeats of dense / sparse in one repeat, the "
          f"targets' measure; best: fastest dense / fastest sparse round, for a loaded machine; forms: c = csr, "
          f"r = csr_rows, u = unfold (conv), d = dense)")
    for text in failures:
        print(f"FAIL: {text}")
    if not failures:
        print("PASS: LeNet >= 5x faster at 2% / batch 60, never slower than dense, file >= 10x smaller at 2%")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
