"""GEM-MINER (Rare Gems) on LeNet-300-100 / MNIST at 5% and 1% density, against its baselines.

Per density and seed (the model's own init from ``torch.manual_seed(seed)``: ticketlab's
Kaiming-normal weights, zero biases):

* gem: ``train_gem_miner`` (signed-constant weights, scores U[0, 1], SGD 0.1 momentum 0.9 cosine,
  lam 1e-4, batch 128, ``--score-epochs`` epochs, a pruning round every ``--iter-period``), then
  ``finetune_gem`` of the flag mask from the signed constants (SGD 0.01, momentum 0.9, wd 1e-4,
  x0.1 at 1/2 and 2/3 of the run, ``--ft-epochs`` epochs, batch 128);
* random: a random mask with the gem's per-layer kept counts on the model's own init, trained
  with the same fine-tuning recipe;
* shuffle (sanity check): the gem's mask shuffled within each layer, on the signed constants,
  fine-tuned the same way;
* reinit (sanity check): the gem's mask on freshly drawn Kaiming-normal weights (fan_in, ReLU;
  the authors' ``redraw(reinit=True)``), fine-tuned the same way;
* IMP: global magnitude pruning with rewinding to the model's own init, every level trained with
  the same recipe; levels 47.3%, 22.4%, 10.6%, 5% (x0.473 per level), then 2.24%, 1% (x0.447).

``--round-counts ceil`` / ``--lr-step epoch`` switch the score phase to the authors' behaviours
(see ``benchmarks/gem_miner_both_ways.py`` for the paired 2 x 2 comparison). Everything
single-threaded on the CPU. Rows are appended to ``--out`` (JSON lines) as they
finish, so a stopped run keeps what it measured; ``--table-only`` prints the table from that file.

    python benchmarks/gem_miner_lenet.py --data-root /work/shared/data/mnist --seeds 3
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ticketlab.data import load_dataset
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.gem_miner import LR_STEPS, ROUND_COUNTS, finetune_gem, train_gem_miner
from ticketlab.pruning.selection import keep_top, random_mask_like

DENSITIES = (0.05, 0.01)
IMP_LEVELS = (0.473, 0.224, 0.106, 0.05, 0.0224, 0.01)
METHODS = ("gem_forward", "gem_flag", "gem_ft", "random_ft", "shuffle_ft", "reinit_ft", "imp")
LABELS = {
    "gem_forward": "gem before FT, mask 1{s>0.5}&flag",
    "gem_flag": "gem before FT, flag mask",
    "gem_ft": "gem after FT",
    "random_ft": "random (same layer densities), FT",
    "shuffle_ft": "gem mask shuffled per layer, FT",
    "reinit_ft": "gem mask, weights re-init, FT",
    "imp": "IMP (global, rewind to init)",
}


def lenet(data, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet_300_100", data.input_shape, data.num_classes)


def log_row(out: Path, row: dict) -> None:
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def run_gem(data, density: float, seed: int, args, out: Path) -> None:
    t0 = time.time()
    model = lenet(data, seed)
    own_init = copy.deepcopy(model.state_dict())
    res = train_gem_miner(model, data, density, epochs=args.score_epochs, iter_period=args.iter_period,
                          lr=args.lr, lam=args.lam, batch_size=128, seed=seed, device="cpu",
                          round_counts=args.round_counts, lr_step=args.lr_step)
    mask = res["mask"]
    score_s = time.time() - t0
    signed = copy.deepcopy(model.state_dict())  # the frozen signed constants, unmasked
    base = dict(density=density, seed=seed, mask_density=mask.density, layer_density=mask.densities(),
                round_counts=args.round_counts, lr_step=args.lr_step)
    log_row(out, {**base, "method": "gem_forward", "acc": res["test_accuracy"],
                  "forward_density": res["forward_mask"].density, "wall_s": score_s})
    log_row(out, {**base, "method": "gem_flag", "acc": res["flag_test_accuracy"]})

    def finetune(method: str, state: dict, m: Mask) -> None:
        t = time.time()
        net = lenet(data, seed)
        net.load_state_dict(state)
        ft = finetune_gem(net, data, m, epochs=args.ft_epochs, batch_size=128, seed=seed, device="cpu")
        log_row(out, {**base, "method": method, "acc": ft["test_accuracy"], "start_acc": ft["start_test_accuracy"],
                      "wall_s": time.time() - t})

    g = torch.Generator().manual_seed(10_000 + seed)
    finetune("gem_ft", signed, mask)
    finetune("random_ft", own_init, random_mask_like(mask, g))
    finetune("shuffle_ft", signed, random_mask_like(mask, g))
    torch.manual_seed(20_000 + seed)
    reinit = lenet(data, seed)
    for name in mask:
        nn.init.kaiming_normal_(reinit.get_parameter(name), mode="fan_in", nonlinearity="relu")
    finetune("reinit_ft", reinit.state_dict(), mask)


def run_imp(data, seed: int, args, out: Path) -> None:
    model = lenet(data, seed)
    init = copy.deepcopy(model.state_dict())
    mask = Mask.dense(model)
    t = time.time()
    ft = finetune_gem(model, data, mask, epochs=args.ft_epochs, batch_size=128, seed=seed, device="cpu")
    log_row(out, {"density": 1.0, "seed": seed, "method": "dense", "acc": ft["test_accuracy"],
                  "wall_s": time.time() - t})
    for level, density in enumerate(IMP_LEVELS, start=1):
        weights = {n: p.detach().abs() for n, p in model.named_parameters() if n in mask}
        keep = round(density * mask.num_total)
        mask = keep_top(weights, mask, {tuple(mask): keep})
        model.load_state_dict(init)  # rewind to init
        t = time.time()
        ft = finetune_gem(model, data, mask, epochs=args.ft_epochs, batch_size=128, seed=seed, device="cpu")
        if density in DENSITIES:
            log_row(out, {"density": density, "seed": seed, "method": "imp", "acc": ft["test_accuracy"],
                          "mask_density": mask.density, "layer_density": mask.densities(), "level": level,
                          "wall_s": time.time() - t})


def table(rows: list[dict]) -> str:
    lines = ["| method | " + " | ".join(f"density {d:g}" for d in DENSITIES) + " |",
             "|---|" + "---|" * len(DENSITIES)]
    for method in ("dense",) + METHODS:
        cells = []
        for d in DENSITIES if method != "dense" else (1.0,) * len(DENSITIES):
            accs = [r["acc"] for r in rows if r["method"] == method and r["density"] == d]
            if not accs:
                cells.append("—")
            elif len(accs) == 1:
                cells.append(f"{100 * accs[0]:.2f} (n=1)")
            else:
                cells.append(f"{100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f} (n={len(accs)})")
        lines.append(f"| {LABELS.get(method, 'dense, same recipe')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Bar chart: mean test accuracy per method and density, one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(DENSITIES), figsize=(6 * len(DENSITIES), 4), sharey=False)
    for ax, d in zip(axes, DENSITIES):
        for i, m in enumerate(methods):
            accs = [100 * r["acc"] for r in rows if r["method"] == m and r["density"] == d]
            if accs:
                ax.bar(i, statistics.mean(accs), color="C0" if m.startswith("gem") else "C1")
                ax.plot([i] * len(accs), accs, "k.", ms=4)
        dense = [100 * r["acc"] for r in rows if r["method"] == "dense"]
        if dense:
            ax.axhline(statistics.mean(dense), color="gray", ls="--", lw=1, label="dense")
            ax.legend(loc="lower right")
        ax.set_xticks(range(len(methods)), [LABELS[m] for m in methods], rotation=35, ha="right", fontsize=7)
        ax.set_title(f"LeNet-300-100 / MNIST, density {d:g}")
        ax.set_ylabel("test accuracy (%)")
        low = min((100 * r["acc"] for r in rows if r["density"] == d), default=0)
        ax.set_ylim(max(0, low - 5), 100)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="/work/shared/data/mnist")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--score-epochs", type=int, default=20)
    p.add_argument("--iter-period", type=int, default=2)
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lam", type=float, default=1e-4)
    p.add_argument("--round-counts", choices=ROUND_COUNTS, default="exact",
                   help="per-round counts: exact (ours) or ceil (the authors': ceil(p * flagged) + ties)")
    p.add_argument("--lr-step", choices=LR_STEPS, default="iteration",
                   help="score-phase cosine LR stepped per iteration (ours) or per epoch (the authors')")
    p.add_argument("--no-imp", action="store_true")
    p.add_argument("--out", default="runs/reports/gem_miner_lenet/rows.jsonl")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--plot", default=None, help="also write a bar chart (PNG) to this path")
    args = p.parse_args()
    out = Path(args.out)
    if not args.table_only:
        torch.set_num_threads(1)
        out.parent.mkdir(parents=True, exist_ok=True)
        data = load_dataset("mnist", root=args.data_root)
        started = time.time()
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for density in DENSITIES:
                run_gem(data, density, seed, args, out)
            if not args.no_imp:
                run_imp(data, seed, args, out)
        print(f"\nwall time {time.time() - started:.0f} s, torch threads {torch.get_num_threads()}")
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    print(table(rows))
    if args.plot:
        plot(rows, Path(args.plot))


if __name__ == "__main__":
    main()
