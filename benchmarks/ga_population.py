"""One GA generation's fitness evaluation: the whole population in one batched pass vs. a loop.

Net [2, 50, 50, 2] (frozen U[-1, 1] weights), 50,000 training points (moons), population 100.
The batched pass is ``FrozenMLP.correct`` (K masked weight stacks, one matmul per layer); the loop
is what a per-individual GA does: per genome, mask an ``nn.Module``'s weights, run the training
set through it, count the correct points. Both give the same counts (checked here). Prints the
ratio of the loop's time to the batched time and exits 1 (FAIL) when it is below 10x.

    python benchmarks/ga_population.py [--device cuda] [--threads 1] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--points", type=int, default=50_000)
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--sweep", action="store_true", help="also time other chunk budgets of the batched pass")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ticketlab.data import load_dataset
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

    def batched(budget: int | None = None) -> torch.Tensor:
        return net.correct(genomes, x, y, budget=budget)

    @torch.no_grad()
    def loop() -> torch.Tensor:
        out = []
        for g in genomes:
            for lin, w, m in zip(linears, originals, net.layer_masks(g.to(dev))):
                lin.weight.copy_(w * m[0])
            out.append(int((module(x).argmax(-1) == y).sum()))
        return torch.tensor(out)

    results = {}
    for name, fn in (("batched", batched), ("loop", loop)):
        fn()  # warm-up (kernels, allocator)
        sync()
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            results[name] = fn()
            sync()
            times.append(time.perf_counter() - t)
        results[name + "_s"] = min(times)
    if args.sweep:  # how big a chunk should be (the library's default is what "batched" used)
        sweep = {}
        for exp in (20, 22, 23, 24, 25, 26, 28):
            batched(1 << exp)
            sync()
            t = time.perf_counter()
            for _ in range(args.repeats):
                batched(1 << exp)
            sync()
            sweep[exp] = (time.perf_counter() - t) / args.repeats
            print(f"  budget 2^{exp}: {sweep[exp] * 1e3:.1f} ms")
        print(f"best budget 2^{min(sweep, key=sweep.get)}")
    same = torch.equal(results["batched"], results["loop"])
    ratio = results["loop_s"] / results["batched_s"]
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{args.threads} thread(s)'}), "
          f"net [2, 50, 50, 2], {args.points} points, population {args.population}")
    print(f"batched: {results['batched_s'] * 1e3:.1f} ms   loop: {results['loop_s'] * 1e3:.1f} ms   "
          f"ratio {ratio:.1f}x   same counts: {same}")
    if not same:
        print("FAIL: the batched counts differ from the loop's")
        return 1
    if ratio < 10:
        print(f"FAIL: batched evaluation is only {ratio:.1f}x faster than the loop (need >= 10x)")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
