"""The transfer study of docs/transfer.md (Morcos et al. 2019 at LeNet-300-100 scale), measured.

Per seed: IMP on MNIST (Adam) and on digits upsampled to 28x28 (Adam), IMP on MNIST with SGD; then
four transfers, each beside the target's own ticket (which is one of those IMP runs: the transfer's
"own" control has exactly their config, so it is found complete, not retrained) and the random-mask
and random re-init controls:

    MNIST (Adam) -> digits (Adam)      digits (Adam) -> MNIST (Adam)     the data-set transfer
    MNIST (Adam) -> MNIST (SGD)        MNIST (SGD) -> MNIST (Adam)       the optimiser transfer

Seeds run in parallel worker processes, one thread each. Prints the report's exact table and the
transferred-minus-own accuracy per level, and writes report.md / report.png to --out.

    python benchmarks/transfer_study.py --data-root ../shared/data/mnist --seeds 0 1 2 --workers 2
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MNIST_STEPS, DIGITS_STEPS = "2ep", "40ep"
LEVELS, RATE = 6, 0.5
ADAM = dict(optimizer="adam", lr=1.2e-3)
SGD = dict(optimizer="sgd", lr=0.05, momentum=0.9)


def configs(seed: int, root: str, reset: str = "init", rewind_step: str = "0it", datasets_only: bool = False):
    from ticketlab.config import DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig, config_hash
    from ticketlab.experiments.transfer import TrainOverrides, TransferConfig

    mnist = DataConfig("mnist", root=root)
    digits = DataConfig("digits", options={"size": 28})
    model = ModelConfig("lenet_300_100")
    prune = PruneConfig(rate=RATE)

    def imp(data, steps, opt):
        return IMPConfig(data=data, model=model, prune=prune, levels=LEVELS, baselines=(), seed=seed, reset=reset,
                         rewind_step=rewind_step, train=TrainConfig(batch_size=60, steps=steps, eval_every="1ep", **opt))

    mnist_adam, digits_adam, mnist_sgd = imp(mnist, MNIST_STEPS, ADAM), imp(digits, DIGITS_STEPS, ADAM), \
        imp(mnist, MNIST_STEPS, SGD)

    def transfer(source, data, **overrides):
        return TransferConfig(source=config_hash(source), data=data, seed=seed, overrides=TrainOverrides(**overrides))

    transfers = [transfer(mnist_adam, digits, steps=DIGITS_STEPS), transfer(digits_adam, mnist, steps=MNIST_STEPS)]
    if datasets_only:
        return [mnist_adam, digits_adam], transfers
    transfers += [transfer(mnist_adam, mnist, **SGD), transfer(mnist_sgd, mnist, **ADAM)]
    return [mnist_adam, digits_adam, mnist_sgd], transfers


def one_seed(seed: int, root: str, runs: str, variant: tuple[str, str, bool] = ("init", "0it", False)
             ) -> tuple[int, float, list[str]]:
    import torch

    torch.set_num_threads(1)
    from ticketlab.config import config_hash
    from ticketlab.experiments.imp import run_imp
    from ticketlab.experiments.transfer import run_transfer
    from ticketlab.store import Store

    store = Store(runs)
    started = time.time()
    imps, transfers = configs(seed, root, *variant)
    for c in imps:
        run_imp(c, store, device="cpu", progress=False, log=lambda _: None)
    hashes = []
    for c in transfers:
        run_transfer(c, store, device="cpu", progress=False, log=lambda _: None)
        hashes.append(config_hash(c))
    return seed, time.time() - started, hashes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--out", default="transfer-study")
    p.add_argument("--reset", default="init", choices=("init", "rewind"),
                   help="the IMP runs' reset: init (the default study) or rewind (late resetting, as the paper)")
    p.add_argument("--rewind-step", default="0it", help="k for --reset rewind, e.g. 100it")
    p.add_argument("--datasets-only", action="store_true", help="only the two data-set transfers (no SGD runs)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    hashes: list[str] = []
    with ProcessPoolExecutor(args.workers) as pool:
        variant = (args.reset, args.rewind_step, args.datasets_only)
        for seed, seconds, hs in pool.map(one_seed, args.seeds, [args.data_root] * len(args.seeds),
                                          [args.runs_dir] * len(args.seeds), [variant] * len(args.seeds)):
            print(f"seed {seed}: {seconds:.0f} s", flush=True)
            hashes += hs
    wall = time.time() - started

    from ticketlab.experiments.transfer import transfer_report
    from ticketlab.store import Store

    store = Store(args.runs_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [store.run(h) for h in hashes]
    text, plots = transfer_report(runs, out / "report.png")
    print(text)
    print(transferred_minus_own(runs))
    (out / "report.md").write_text(text + "\n\n" + transferred_minus_own(runs) + "\n")
    print(f"\n{len(args.seeds)} seeds, {args.workers} workers x 1 thread: {wall:.0f} s wall; plot {plots[0]}")


def transferred_minus_own(runs) -> str:
    """Per transfer and level: ticket - own and ticket - best random control, mean over seeds."""
    from ticketlab.experiments.transfer import _label

    cells: dict[tuple[str, int], dict[str, list[float]]] = {}
    for run in runs:
        s = run.read_json("summary.json")
        for r in s["rows"]:
            cells.setdefault((_label(s), r["level"]), {}).setdefault(r["branch"], []).append(r["final_test_accuracy"])
    lines = ["| transfer | level | ticket - own (pp) | ticket - random mask (pp) | ticket - re-init (pp) |",
             "|---|---|---|---|---|"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for (label, level), b in sorted(cells.items()):
        diff = lambda other: f"{100 * (mean(b['ticket']) - mean(b[other])):+.2f}" if other in b else "-"  # noqa: E731
        lines.append(f"| {label} | {level} | {diff('own')} | {diff('random')} | {diff('reinit')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
