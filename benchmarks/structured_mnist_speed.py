"""CPU inference time of the structured tickets of `structured_mnist.py`, shrunk, relative to dense.

For every stored run of that study (a store given by --runs-dir) and the chosen level: the level's
ticket (its trained weights under its mask) is shrunk through the dependency graph
(`pruning/graph_shrink.shrink_weight_mask`: empty conv output channels removed, with their biases
and the next layer's inputs) and timed against the same ticket as a dense, masked full-size model,
interleaved, at batch 1 and 64, one thread, in eval mode. The shrunk model equals the masked model
with the removed channels' biases zeroed (`result.reference`, checked); the difference to the masked
model itself (whose empty channels still emit their bias) is printed too.

    python benchmarks/structured_mnist_speed.py --runs-dir /tmp/structured_study/runs --level 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import structured_mnist  # noqa: E402,F401  (registers the study's lenet5)

from ticketlab.masks import Mask  # noqa: E402
from ticketlab.models import build_model  # noqa: E402
from ticketlab.pruning.graph_shrink import shrink_weight_mask  # noqa: E402
from ticketlab.store import Store  # noqa: E402


def method_of(prune: dict) -> str:
    structure = prune.get("structure", "none")
    if prune.get("criterion") == "random":
        return "random_ch"
    return "imp" if structure == "none" else structure


@torch.no_grad()
def timed(models: dict, x: torch.Tensor, repeats: int, seconds: float = 0.2) -> dict[str, float]:
    """Median seconds per call of each model, rounds interleaved."""
    calls = {}
    for name, m in models.items():
        start = time.perf_counter()
        m(x)
        calls[name] = max(1, int(seconds / max(time.perf_counter() - start, 1e-7)))
    out: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(repeats):
        for name, m in models.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                m(x)
            out[name].append((time.perf_counter() - start) / calls[name])
    return {n: statistics.median(v) for n, v in out.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", required=True)
    p.add_argument("--level", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default="../shared/data/mnist", help="MNIST, for the test accuracy of both models")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    store = Store(args.runs_dir)
    from ticketlab.data import load_dataset
    from ticketlab.training import evaluate

    test = load_dataset("mnist", args.data_root).test
    rows: dict[str, list[dict]] = {}
    for run in store.runs():
        desc = run.read_json("config.json")
        cfg = desc["config"]
        if desc["experiment"] != "imp" or cfg["model"]["name"] != "lenet5":
            continue
        unit = f"level_{args.level:02d}"
        if not run.is_complete(f"{unit}/ticket"):
            continue
        model = build_model("lenet5", (1, 28, 28), 10).eval()
        model.load_state_dict(run.load_tensors(unit, "ticket", "final.safetensors"))
        mask = Mask.load(run.file(unit, "mask.safetensors"))
        mask.apply_(model)
        x1 = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        result = shrink_weight_mask(model, mask, x1)
        small = result.model.eval()
        x64 = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            to_reference = float((small(x64) - result.reference(x64)).abs().max())
            to_masked = float((small(x64) - model(x64)).abs().max())
        acc_masked = evaluate(model, test)["accuracy"]
        acc_small = evaluate(small, test)["accuracy"]
        t1 = timed({"dense": model, "shrunk": small}, x1, args.repeats)
        t64 = timed({"dense": model, "shrunk": small}, x64, args.repeats)
        rows.setdefault(method_of(cfg["prune"]), []).append({
            "params": sum(q.numel() for q in small.parameters()) / sum(q.numel() for q in model.parameters()),
            "b1": t1["dense"] / t1["shrunk"], "b64": t64["dense"] / t64["shrunk"],
            "dense_us": (t1["dense"] * 1e6, t64["dense"] * 1e6), "ref": to_reference, "masked": to_masked,
            "acc": (acc_masked, acc_small)})
    print(f"level {args.level}, {args.threads} thread(s), median of {args.repeats} interleaved rounds per run; "
          f"ratios = dense masked time / shrunk time, mean over the runs (seeds)")
    print("| method | runs | shrunk params / dense | batch 1 speed-up | batch 64 speed-up | dense us (b1, b64) "
          "| max diff to reference / to masked | test acc masked / shrunk % |")
    print("|---|---|---|---|---|---|---|---|")
    for method in structured_mnist.METHODS:
        rs = rows.get(method)
        if not rs:
            continue
        mean = lambda key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
        print(f"| {method} | {len(rs)} | {mean('params'):.3f} | {mean('b1'):.2f}x | {mean('b64'):.2f}x | "
              f"{sum(r['dense_us'][0] for r in rs) / len(rs):.0f}, {sum(r['dense_us'][1] for r in rs) / len(rs):.0f} | "
              f"{max(r['ref'] for r in rs):.1e} / {max(r['masked'] for r in rs):.1e} | "
              f"{100 * sum(r['acc'][0] for r in rs) / len(rs):.2f} / {100 * sum(r['acc'][1] for r in rs) / len(rs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
