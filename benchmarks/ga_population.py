"""One GA generation's fitness evaluation: the whole population in one batched call vs. a loop.

Net [2, 50, 50, 2] (frozen U[-1, 1] weights), 50,000 training points (moons), population 100.
The batched call is ``FrozenMLP.correct`` with its default strategy for the device ("chunked" on
CUDA: L2-sized point chunks of augmented weight stacks replayed as one CUDA graph; "loop" on a CPU);
the loop is what a per-individual GA does: per genome, mask an ``nn.Module``'s weights, run the
training set through it, count the correct points. Both must give the same counts (checked here,
for every strategy the sweep times too). Prints the ratio of the loop's time to the batched time and
exits 1 (FAIL) when the counts differ, when it is below 10x, or when a sweep entry raised.

    python benchmarks/ga_population.py [--device cuda] [--sweep] [--threads 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import torch

# (strategy, budget, branches, CUDA graph): budget None is the library's default for the device
_SWEEP = ([("chunked", 1 << e, 1, True) for e in range(19, 26)] + [("chunked", None, 1, True)]
          + [("chunked", 1 << e, 2, True) for e in (20, 21, 22, 23)]
          + [("chunked", None, 1, False), ("stacked", 1 << 26, 1, True), ("loop", None, 1, True)])


def _time(fn: Callable[[], torch.Tensor], repeats: int,
          sync: Callable[[], None]) -> tuple[torch.Tensor, float, list[float]]:
    """Result, first-call seconds (warm-up: kernels, allocator, graph capture) and the timed calls."""
    t = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return out, first, times


def _diff(a: torch.Tensor, b: torch.Tensor) -> str:
    if torch.equal(a, b):
        return "same counts: True"
    bad = (a != b).nonzero().flatten()
    return (f"same counts: False ({bad.numel()} genomes differ, largest difference "
            f"{int((a - b).abs().max())} points, first genome {int(bad[0])}: {int(a[bad[0]])} vs {int(b[bad[0]])})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--points", type=int, default=50_000)
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--strategy", default="auto",
                   help="the batched call's strategy (auto: chunked on CUDA, loop on CPU)")
    p.add_argument("--budget", type=int, default=None, help="activation budget of the batched call (default: the "
                                                            "library's for the strategy and device)")
    p.add_argument("--sweep", action="store_true", help="also time every strategy and a range of chunk budgets")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ticketlab.data import load_dataset
    from ticketlab.pruning import genetic
    from ticketlab.pruning.genetic import FrozenMLP, random_genomes

    dev = torch.device(args.device)
    data = load_dataset("moons", n_train=args.points, n_test=10)
    x, y = data.train.x.to(dev), data.train.y.to(dev)
    net = FrozenMLP([2, 50, 50, 2], torch.Generator().manual_seed(0)).to(dev)
    genomes = random_genomes(args.population, net.genome_length, 0.5, torch.Generator().manual_seed(1))
    module = net.to_module().to(dev)
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    originals = [lin.weight.detach().clone() for lin in linears]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def loop() -> torch.Tensor:
        out = []
        for g in genomes:
            for lin, w, m in zip(linears, originals, net.layer_masks(g.to(dev))):
                lin.weight.copy_(w * m[0])
            out.append(int((module(x).argmax(-1) == y).sum()))
        return torch.tensor(out)

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {args.threads} thread(s)"
    extra = ""
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        extra = f", L2 {getattr(props, 'L2_cache_size', 0) / 2**20:.0f} MiB, {props.multi_processor_count} SMs"
    print(f"device {dev} ({name}{extra}), torch {torch.__version__}, "
          f"allow_tf32 {torch.backends.cuda.matmul.allow_tf32} (the library switches it off for its call)")
    print(f"net [2, 50, 50, 2], {args.points} points, population {args.population}")

    def batched(strategy: str = args.strategy, budget: int | None = args.budget) -> torch.Tensor:
        return net.correct(genomes, x, y, strategy=strategy, budget=budget)

    ref, loop_first, loop_times = _time(loop, args.repeats, sync)
    try:
        out, first, times = _time(batched, args.repeats, sync)
    except Exception:  # reported; the sweep still runs so that one device call tells as much as it can
        traceback.print_exc()
        print(f"FAIL: the batched call ({args.strategy}) raised; loop {min(loop_times) * 1e3:.1f} ms")
        if args.sweep:
            _sweep(net, batched, ref, args, sync, min(loop_times))
        return 1
    budget = args.budget or net.default_budget(args.strategy)
    points = net.chunk_points(args.population, budget, args.strategy)
    ratio = min(loop_times) / min(times)
    strategy = args.strategy if args.strategy != "auto" else ("chunked" if dev.type == "cuda" else "loop")
    print(f"batched strategy {args.strategy} = {strategy} (budget {budget} activations: {points} points per "
          f"chunk, {-(-args.points // points)} chunks, {genetic.CHUNK_STREAMS} branch(es)), first call "
          f"{first * 1e3:.1f} ms ({'warm-up and graph capture' if dev.type == 'cuda' else 'warm-up'})")
    if dev.type == "cuda" and strategy == "chunked":
        print(f"graph replay alone: {_replay_ms(net) :.3f} ms (the rest of a call: genomes to the GPU, "
              f"masked weights and points into the static buffers, counts back)")
    print(f"batched: {min(times) * 1e3:.2f} ms (median {statistics.median(times) * 1e3:.2f})   "
          f"loop: {min(loop_times) * 1e3:.1f} ms (median {statistics.median(loop_times) * 1e3:.1f})   "
          f"ratio {ratio:.1f}x   {_diff(out, ref)}")
    failed = not torch.equal(out, ref)
    if args.sweep:
        failed |= _sweep(net, batched, ref, args, sync, min(loop_times))
    if not torch.equal(out, ref):
        print("FAIL: the batched counts differ from the loop's")
        return 1
    if ratio < 10:
        print(f"FAIL: batched evaluation is only {ratio:.1f}x faster than the loop (need >= 10x)")
        return 1
    if failed:
        print("FAIL: a sweep entry differed from the loop or raised (above)")
        return 1
    print("PASS")
    return 0


def _replay_ms(net) -> float:
    """Best of 20 replays of the last captured graph, timed with CUDA events."""
    plan = list(net._plans.values())[-1]
    best = float("inf")
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        plan.graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end))
    return best


def _sweep(net, batched, ref: torch.Tensor, args: argparse.Namespace, sync: Callable[[], None],
           loop_s: float) -> bool:
    """Every strategy and chunk budget once; True when one gave other counts or raised."""
    from ticketlab.pruning import genetic

    failed, defaults = False, (genetic.CHUNK_STREAMS, genetic.CUDA_GRAPHS)
    print("sweep (strategy x branches, budget -> points per chunk: best of repeats; ratio to the loop; counts):")
    for strategy, budget, branches, graph in _SWEEP:
        if strategy == "loop" and args.device.startswith("cuda") and args.points > 10_000:
            continue  # the library's loop strategy on CUDA is the baseline's speed; skip to save time
        genetic.CHUNK_STREAMS, genetic.CUDA_GRAPHS = branches, graph
        label = f"{strategy:8s} x{branches}{'' if graph else ' no graph'}"
        try:
            out, first, times = _time(lambda: batched(strategy, budget), args.repeats, sync)
        except Exception:  # reported, counted as a failure, and the sweep goes on
            print(f"  {label} budget {budget}: ERROR")
            traceback.print_exc()
            failed = True
            continue
        finally:
            genetic.CHUNK_STREAMS, genetic.CUDA_GRAPHS = defaults
        shown = budget or net.default_budget(strategy)
        points = net.chunk_points(args.population, shown, strategy)
        print(f"  {label} budget {shown:>9d} -> {points:6d} points: {min(times) * 1e3:8.2f} ms "
              f"(first {first * 1e3:.0f} ms)  {loop_s / min(times):5.1f}x  {_diff(out, ref)}")
        failed |= not torch.equal(out, ref)
    return failed


if __name__ == "__main__":
    sys.exit(main())
