"""What the store's integrity costs: checksummed, atomic writes and verified reads vs. plain safetensors.

A VGG-16 (CIFAR) checkpoint: model state plus SGD momentum, ~118 MB. "plain" is what a training
script would do with safetensors alone (save_file, and load_file with every tensor read, as loading into a model does; no fsync,
no checksum); "store" is
ticketlab's `save_tensors` (serialise, SHA-256 sealed into the header, temp file, fsync, rename) and
`load_tensors` (read, verify, load). Variants alternate over repeats; medians of per-repeat ratios.
Also the time `ticketlab` spends verifying a whole run folder when a command opens it, per GB.

    python benchmarks/store_overhead.py --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from safetensors.torch import load_file, save_file

    from ticketlab.models import build_model
    from ticketlab.store import Run, Store, load_tensors, save_tensors

    model = build_model("vgg16", (3, 32, 32), 10)
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"optim.{i}.momentum_buffer": torch.randn_like(p) for i, p in enumerate(model.parameters())})
    megabytes = sum(t.numel() * t.element_size() for t in state.values()) / 1e6

    ratios: dict[str, list[float]] = {"write": [], "read": []}
    times: dict[str, list[float]] = {"plain write": [], "store write": [], "plain read": [], "store read": []}
    with tempfile.TemporaryDirectory() as tmp:
        plain, store = Path(tmp) / "plain.safetensors", Path(tmp) / "store.safetensors"
        for _ in range(args.repeats):
            t0 = time.perf_counter(); save_file(state, str(plain)); t1 = time.perf_counter()
            save_tensors(store, state); t2 = time.perf_counter()
            {k: v.clone() for k, v in load_file(str(plain)).items()}; t3 = time.perf_counter()  # read it all
            load_tensors(store); t4 = time.perf_counter()
            times["plain write"].append(t1 - t0); times["store write"].append(t2 - t1)
            times["plain read"].append(t3 - t2); times["store read"].append(t4 - t3)
            ratios["write"].append((t2 - t1) / (t1 - t0)); ratios["read"].append((t4 - t3) / (t3 - t2))

        run_dir = Path(tmp) / "runs" / "abc"
        run_dir.mkdir(parents=True)
        for i in range(4):
            save_tensors(run_dir / f"unit_{i}" / "final.safetensors", state)
        run = Run(run_dir, "abc", Store(Path(tmp) / "runs"))
        started = time.perf_counter()
        assert run.verify() == []
        verify_seconds = time.perf_counter() - started

    print(f"VGG-16 checkpoint, {megabytes:.0f} MB, {args.threads} thread(s), {args.repeats} repeats (median)")
    for k, v in times.items():
        print(f"  {k:<12} {statistics.median(v):.3f} s")
    print(f"store write / plain write: {statistics.median(ratios['write']):.2f}  (checksum + fsync + rename)")
    print(f"store read / plain read:   {statistics.median(ratios['read']):.2f}  (read + SHA-256 verify)")
    print(f"verifying a run folder on open: {verify_seconds / (4 * megabytes / 1e3):.2f} s per GB")


if __name__ == "__main__":
    main()
