"""One GA generation's fitness evaluation: the whole population in one batched call vs. a loop.

Net [2, 50, 50, 2] (frozen U[-1, 1] weights), 50,000 training points (moons), population 100
(``--widths`` for another net: with other than 2 inputs the points are Gaussian, labels uniform).
The batched call is ``FrozenMLP.correct`` with its default strategy for the device ("fused" on
CUDA with Triton: one kernel launch per generation, each program streaming points through one
genome's whole net; "chunked" on CUDA without Triton: L2-sized point chunks of augmented weight
stacks replayed as one CUDA graph; "loop" on a CPU);
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
_SWEEP = ([("chunked", 1 << e, 1, True) for e in (21, 22, 23)] + [("chunked", None, 2, True)]
          + [("chunked", None, 1, False), ("stacked", 1 << 26, 1, True), ("loop", None, 1, True)])
# the fused kernel's settings (points per block, warps per program, first layer as explicit FMAs)
_FUSED_SWEEP = ([(b, w, True, p) for b in (64, 128, 256) for w in (4, 8) for p in (2, 4, 8)]
                + [(b, w, False, 4) for b, w in ((64, 4), (128, 4), (128, 8), (256, 8))])


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
    p.add_argument("--widths", type=int, nargs="+", default=[2, 50, 50, 2], help="the net's layer widths")
    p.add_argument("--strategy", default="auto",
                   help="the batched call's strategy (auto: chunked on CUDA, loop on CPU)")
    p.add_argument("--budget", type=int, default=None, help="activation budget of the batched call (default: the "
                                                            "library's for the strategy and device)")
    p.add_argument("--sweep", action="store_true", help="also time every strategy and a range of chunk budgets")
    p.add_argument("--generations", type=int, default=0,
                   help="also run the GA itself for this many generations with each batched strategy and check "
                        "that the runs end in the same state")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ticketlab.data import load_dataset
    from ticketlab.pruning import genetic
    from ticketlab.pruning.genetic import FrozenMLP, random_genomes

    dev = torch.device(args.device)
    if args.widths[0] == 2 and args.widths[-1] == 2:
        data = load_dataset("moons", n_train=args.points, n_test=10)
    else:
        from types import SimpleNamespace

        from ticketlab.data import ArrayData

        g = torch.Generator().manual_seed(0)
        data = SimpleNamespace(train=ArrayData(torch.randn(args.points, args.widths[0], generator=g),
                                               torch.randint(0, args.widths[-1], (args.points,), generator=g)))
    x, y = data.train.x.to(dev), data.train.y.to(dev)
    net = FrozenMLP(args.widths, torch.Generator().manual_seed(0)).to(dev)
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
    print(f"net {args.widths}, {args.points} points, population {args.population}")

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
    strategy = genetic._resolve(args.strategy, dev, net)
    if strategy == "fused":
        from ticketlab.pruning import genetic_fused as gf
        block, warps = gf.launch_shape(args.widths)
        print(f"batched strategy {args.strategy} = fused ({block} points per block, {warps} warps, one launch), "
              f"first call {first * 1e3:.1f} ms (with Triton's compile)")
    else:
        print(f"batched strategy {args.strategy} = {strategy} (budget {budget} activations: {points} points per "
              f"chunk, {-(-args.points // points)} chunks, {genetic.CHUNK_STREAMS} branch(es)), first call "
              f"{first * 1e3:.1f} ms ({'warm-up and graph capture' if dev.type == 'cuda' else 'warm-up'})")
    if dev.type == "cuda" and strategy == "chunked" and genetic.CUDA_GRAPHS:
        print(f"graph replay alone: {_replay_ms(net) :.3f} ms (the rest of a call: genomes to the GPU, "
              f"masked weights and points into the static buffers, counts back)")
    print(f"batched: {min(times) * 1e3:.2f} ms (median {statistics.median(times) * 1e3:.2f})   "
          f"loop: {min(loop_times) * 1e3:.1f} ms (median {statistics.median(loop_times) * 1e3:.1f})   "
          f"ratio {ratio:.1f}x   {_diff(out, ref)}")
    failed = not torch.equal(out, ref)
    if args.sweep:
        failed |= _sweep(net, batched, ref, args, sync, min(loop_times))
        if strategy == "fused":
            failed |= _fused_sweep(net, genomes, x, y, ref, args, sync, min(loop_times))
    if args.generations:
        failed |= _whole_runs(net, data, args, sync)
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


def _whole_runs(net, data, args: argparse.Namespace, sync: Callable[[], None]) -> bool:
    """``evolve`` for ``--generations`` generations per strategy (the GA's own calls: offspring
    counts vary per generation); True when the runs' final states differ."""
    import functools

    from ticketlab.pruning.genetic import GAOptions, _resolve, evolve

    dev = net.weights[0].device
    options = GAOptions(population=args.population, min_generations=args.generations,
                        max_generations=args.generations)
    strategies = [s for s in ("fused", "chunked") if dev.type == "cuda"] or ["loop"]
    states = {}
    for strategy in strategies:
        try:
            _resolve(strategy, dev, net)
        except Exception as e:  # e.g. no triton: say so and go on
            print(f"GA run, {strategy}: skipped ({e})")
            continue
        run_net = net.to(dev)
        run_net.correct = functools.partial(type(net).correct, run_net, strategy=strategy)
        sync()
        t = time.perf_counter()
        states[strategy] = state = evolve(run_net, data.train, options, seed=0)
        sync()
        seconds = time.perf_counter() - t
        best = state.history[-1]
        print(f"GA run, {strategy}: {args.generations} generations in {seconds:.2f} s "
              f"({seconds / args.generations * 1e3:.1f} ms per generation, compile/capture included), best "
              f"accuracy {best['best_accuracy']:.4f} with {best['best_kept']} of {net.genome_length} weights")
    if len(states) < 2:
        return False
    a, b = states.values()
    same = torch.equal(a.genomes, b.genomes) and torch.equal(a.correct, b.correct) and a.history == b.history
    print(f"GA runs end in the same state: {same}")
    return not same


def _fused_sweep(net, genomes: torch.Tensor, x: torch.Tensor, y: torch.Tensor, ref: torch.Tensor,
                 args: argparse.Namespace, sync: Callable[[], None], loop_s: float) -> bool:
    """The fused kernel's settings, each timed alone (the kernel call only: masks prepared
    outside); True when one gave other counts or raised."""
    from ticketlab.pruning import genetic_fused as gf

    failed = False
    masks = net.layer_masks(genomes.to(x.device))
    plan = gf.make_plan(net.weights, net.biases, genomes.shape[0])
    xc, yc = x.contiguous(), y.to(torch.int64).contiguous()
    print("fused sweep (points per block, warps, first layer, programs per SM; the kernel call with its "
          "weight fill):")
    for block, warps, fma, per_sm in _FUSED_SWEEP:
        label = f"  block {block:3d} warps {warps} first {'fma' if fma else 'dot'} programs/SM {per_sm}"
        try:
            out, first, times = _time(lambda: gf.count(plan, net.weights, masks, xc, yc, block=block,
                                                       num_warps=warps, fma_first=fma,
                                                       programs_per_sm=per_sm).cpu(), args.repeats, sync)
        except Exception:
            print(f"{label}: ERROR")
            traceback.print_exc()
            failed = True
            continue
        print(f"{label}: {min(times) * 1e3:7.3f} ms (median {statistics.median(times) * 1e3:.3f}, first "
              f"{first * 1e3:.0f} ms)  {loop_s / min(times):6.1f}x  {_diff(out, ref)}")
        failed |= not torch.equal(out, ref)
    return failed


if __name__ == "__main__":
    sys.exit(main())
