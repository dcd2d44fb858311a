"""Layer collapse of pruning at initialisation on an untrained VGG-16 (CIFAR-10 shapes).

SynFlow's claim (Tanaka et al. 2020; ../shared/METHODS.md, "Pruning at initialisation"):
magnitude, SNIP and GraSP collapse a layer of VGG-16 (prune it entirely or cut every path through
it, so the network is disconnected) at around 10^-2.5 - 10^-3 density, while SynFlow with 100
rounds does not. This script checks it on ticketlab's VGG-16 (BatchNorm, 14.7M parameters,
Kaiming-normal init, seed 0), untrained, with global selection over all conv and linear weights.

For every method and density it computes the mask and runs ``ticketlab.analysis.connectivity``
on it: the layers with no weight kept ("empty"), the layers with no *effective* weight (no kept
weight on an input->output path: ``layer_report``'s ``collapsed``; once the net is disconnected
this is every layer), whether the net is disconnected and its effective density.

* magnitude, SNIP and GraSP run one round: each is scored once on the dense net and the mask at
  every density is the top of those scores. That is exactly ``prune(method, ..., rounds=1)`` at
  each density (the script checks it for magnitude at the first density), only cheaper.
* SynFlow runs ``prune("synflow", ..., rounds=R)`` from the dense mask separately for every
  density (R = 100 by default, exponential schedule). One round is timed first and the total
  estimated; if it exceeds ``--synflow-budget-min`` the densities are run lowest first (the
  claim's 10^-3 always runs) and the rest are skipped once the budget would be exceeded. The
  output says exactly which densities ran with how many rounds.

Score data for SNIP and GraSP: real CIFAR-10 is not available offline, so they see synthetic
CIFAR-shaped images (``synthetic_images``: 10 class prototypes plus noise, 3x32x32, seed 0),
one batch of 256 by default. The network is untrained; nothing is trained here.

    python benchmarks/layer_collapse.py --threads 1                      # the full sweep
    python benchmarks/layer_collapse.py --threads 1 --extra-low          # also 10^-3.5
    python benchmarks/layer_collapse.py --width 0.125 --synflow-rounds 20  # quick look

Prints a table and one summary line per method and writes them as markdown to ``--out``
(default runs/reports/layer_collapse.md), with the per-layer kept/effective counts at the
lowest density.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.analysis.connectivity import is_disconnected, layer_report
from ticketlab.data import load_dataset
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.prunable import prunable_layers
from ticketlab.pruning.prune import prune, round_targets
from ticketlab.pruning.schedules import Iterative
from ticketlab.pruning.scores import ScoreSource, compute_scores
from ticketlab.pruning.selection import keep_top

ONE_ROUND = ("magnitude", "random", "snip", "grasp")
METHODS = ("magnitude", "snip", "grasp", "synflow")
EXPONENTS = (1.0, 1.5, 2.0, 2.5, 3.0)
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10


def fmt_exp(e: float) -> str:
    """10^-2.5 style label of density 10^-e."""
    return f"10^-{e:g}"


def fmt_density(e: float) -> str:
    d = 10.0 ** -e
    return f"{fmt_exp(e)} = {d:.3g} (sparsity {100 * (1 - d):.2f}%)"


def layer_labels(model: nn.Module, mask: Mask) -> dict[str, str]:
    """Short names: conv1..convN for the conv layers in order, the module name for linear layers."""
    labels, conv = {}, 0
    for name, module in prunable_layers(model):
        pname = f"{name}.weight" if name else "weight"
        if pname not in mask:
            continue
        if isinstance(module, nn.Conv2d):
            conv += 1
            labels[pname] = f"conv{conv}"
        else:
            labels[pname] = name or "weight"
    return labels


def compress(labels: list[str]) -> str:
    """'conv9, conv10, conv11' -> 'conv9-conv11' (runs of consecutive convs), else a comma list."""
    if not labels:
        return "-"
    out: list[str] = []
    run: list[tuple[int, str]] = []

    def flush() -> None:
        if not run:
            return
        out.append(run[0][1] if len(run) == 1 else f"{run[0][1]}-{run[-1][1]}")
        run.clear()

    for lab in labels:
        num = int(lab[4:]) if lab.startswith("conv") and lab[4:].isdigit() else None
        if num is not None and run and num == run[-1][0] + 1:
            run.append((num, lab))
            continue
        flush()
        if num is not None:
            run.append((num, lab))
        else:
            out.append(lab)
    flush()
    return ", ".join(out)


@torch.no_grad()
def signal_dies_at(model: nn.Module, mask: Mask, labels: dict[str, str]) -> str | None:
    """The first layer whose output is identically zero when the 0/1 network (kept weights 1,
    pruned 0, biases 0, BatchNorm the identity up to a positive scale) sees an all-ones input:
    where the input's signal stops. None when it reaches the output (the net is connected).

    Exact for feed-forward nets of convs, BatchNorm, ReLU and pooling such as VGG: on
    non-negative inputs every unit's value is a positive multiple of its number of input paths.
    """
    net = copy.deepcopy(model).to(torch.float64).eval()
    for name, p in net.named_parameters():
        if name in mask:
            p.copy_(mask[name].to(torch.float64))
        else:
            p.fill_(0.0 if name.rsplit(".", 1)[-1] == "bias" else 1.0)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
    dead: list[str] = []
    hooks = [module.register_forward_hook(
        lambda mod, inp, out, pname=f"{name}.weight": dead.append(pname) if not dead and not out.any() else None)
        for name, module in prunable_layers(net) if f"{name}.weight" in labels]
    try:
        net(torch.ones((1, *INPUT_SHAPE), dtype=torch.float64))
    finally:
        for h in hooks:
            h.remove()
    return labels[dead[0]] if dead else None


def analyse(model: nn.Module, mask: Mask, labels: dict[str, str]) -> dict[str, Any]:
    t = time.perf_counter()
    rows = layer_report(model, mask, INPUT_SHAPE)
    disconnected = is_disconnected(model, mask, INPUT_SHAPE)
    total = sum(r["total"] for r in rows)
    return {
        "rows": rows,
        "kept": sum(r["kept"] for r in rows),
        "effective_density": sum(r["effective"] for r in rows) / total,
        "empty": [labels[r["name"]] for r in rows if r["kept"] == 0],
        "collapsed": [labels[r["name"]] for r in rows if r["collapsed"]],
        "disconnected": disconnected,
        "dies_at": signal_dies_at(model, mask, labels),
        "analysis_s": time.perf_counter() - t,
    }


def score_source(args: argparse.Namespace) -> ScoreSource:
    n = args.score_batches * args.score_batch_size
    data = load_dataset("synthetic_images", n_train=n, n_test=1, shape=INPUT_SHAPE,
                        num_classes=NUM_CLASSES, seed=args.seed).train
    b = args.score_batch_size
    batches = [(data.x[i:i + b], data.y[i:i + b]) for i in range(0, n, b)]
    return ScoreSource(batches=lambda: batches, input_shape=INPUT_SHAPE,
                       generator=torch.Generator().manual_seed(args.seed), device=torch.device("cpu"))


def log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg16", help="vgg11 | vgg16 | vgg19 (default vgg16)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = the published net)")
    p.add_argument("--seed", type=int, default=0, help="model init and score data seed")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*ONE_ROUND, "synflow"])
    p.add_argument("--exponents", nargs="+", type=float, default=list(EXPONENTS),
                   help="densities 10^-e (default 1 1.5 2 2.5 3)")
    p.add_argument("--extra-low", action="store_true", help="also density 10^-3.5")
    p.add_argument("--score-batches", type=int, default=1, help="SNIP/GraSP batches (default 1)")
    p.add_argument("--score-batch-size", type=int, default=256)
    p.add_argument("--synflow-rounds", type=int, default=100)
    p.add_argument("--synflow-budget-min", type=float, default=15.0,
                   help="time budget for all SynFlow runs in minutes (estimated from one round); "
                        "densities beyond it are skipped, the lowest density always runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="runs/reports/layer_collapse.md")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    exponents = sorted(set(args.exponents) | ({3.5} if args.extra_low else set()))
    started = time.perf_counter()
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    torch.manual_seed(args.seed)
    model = build_model(args.model, INPUT_SHAPE, NUM_CLASSES, width=args.width)
    dense = Mask.dense(model)
    labels = layer_labels(model, dense)
    source = score_source(args)
    header = [
        f"Layer collapse at initialisation: {args.model} width {args.width:g} (CIFAR-10 shapes "
        f"{INPUT_SHAPE}, {NUM_CLASSES} classes), untrained, seed {args.seed}, {dense.num_total:,} prunable weights "
        f"in {len(dense)} layers; global selection.",
        f"Score data for SNIP/GraSP: synthetic CIFAR-shaped images (real CIFAR-10 not available offline), "
        f"{args.score_batches} batch(es) of {args.score_batch_size}. Magnitude/SNIP/GraSP: 1 round; "
        f"SynFlow: {args.synflow_rounds} rounds, exponential schedule.",
        f"Run {when}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} thread(s).",
    ]
    for line in header:
        log(line)
    log("Layers: " + ", ".join(f"{lab}={name}" for name, lab in labels.items()))

    results: dict[tuple[str, float], dict[str, Any]] = {}
    notes: list[str] = []
    timings: list[str] = []

    for method in [m for m in args.methods if m != "synflow"]:
        t = time.perf_counter()
        scores = compute_scores(method, model, dense, source)
        score_s = time.perf_counter() - t
        timings.append(f"{method}: scoring {score_s:.1f} s (once)")
        log(f"\n{method}: scored in {score_s:.1f} s")
        for i, e in enumerate(exponents):
            t = time.perf_counter()
            mask = keep_top(scores, dense, round_targets(dense, Iterative(10.0 ** -e, 1), "global", 1))
            select_s = time.perf_counter() - t
            if method == "magnitude" and i == 0:  # one-shot selection from one scoring == prune(rounds=1)
                assert mask == prune(method, model, dense, source, 10.0 ** -e), "selection differs from prune()"
            res = analyse(model, mask, labels)
            res.update(rounds=1, time_s=select_s, score_s=score_s)
            results[(method, e)] = res
            log(f"  {fmt_exp(e):>9}: select {select_s:.2f} s, analysis {res['analysis_s']:.1f} s, "
                f"empty {compress(res['empty'])}, collapsed {len(res['collapsed'])}, "
                f"disconnected {res['disconnected']}")

    if "synflow" in args.methods:
        rounds = args.synflow_rounds
        per_round = []
        for _ in range(2):  # the first call also warms up allocators and caches
            t = time.perf_counter()
            s = compute_scores("synflow", model, dense, source)
            keep_top(s, dense, round_targets(dense, Iterative(10.0 ** -exponents[-1], rounds), "global", 1))
            per_round.append(time.perf_counter() - t)
        estimate = per_round[-1] * rounds * len(exponents)
        budget = args.synflow_budget_min * 60
        log(f"\nsynflow: one round from the dense mask {per_round[-1]:.2f} s (first call {per_round[0]:.2f} s); "
            f"estimate {rounds} rounds x {len(exponents)} densities = {estimate / 60:.1f} min "
            f"(budget {args.synflow_budget_min:g} min)")
        order = sorted(exponents, reverse=True)  # lowest density (the claim) first
        spent, done = 0.0, 0
        for e in order:
            est_one = spent / done if done else per_round[-1] * rounds
            if done and spent + est_one > budget:
                notes.append(f"synflow at {fmt_exp(e)} skipped: {spent / 60:.1f} min spent, next run "
                             f"estimated {est_one / 60:.1f} min, budget {args.synflow_budget_min:g} min")
                log("  " + notes[-1])
                continue
            t = time.perf_counter()
            mask = prune("synflow", model, dense, source, 10.0 ** -e, rounds=rounds)
            run_s = time.perf_counter() - t
            spent += run_s
            done += 1
            res = analyse(model, mask, labels)
            res.update(rounds=rounds, time_s=run_s)
            results[("synflow", e)] = res
            log(f"  {fmt_exp(e):>9}: {rounds} rounds {run_s:.1f} s ({run_s / rounds:.2f} s/round), "
                f"analysis {res['analysis_s']:.1f} s, empty {compress(res['empty'])}, "
                f"collapsed {len(res['collapsed'])}, disconnected {res['disconnected']}, dies at {res['dies_at']}")
        ran = [fmt_exp(e) for e in exponents if ("synflow", e) in results]
        timings.append(f"synflow: one round {per_round[-1]:.2f} s; {rounds} rounds at each of "
                       f"{', '.join(ran)}: {spent:.0f} s in all")

    # ---- report ---------------------------------------------------------------------------------
    table = [
        "| method | rounds | density | sparsity | kept | effective density | empty layers (kept = 0) "
        "| collapsed layers (no effective weight) | disconnected | input signal dies at | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summaries = []
    for method in args.methods:
        first = None
        for e in exponents:
            r = results.get((method, e))
            if r is None:
                table.append(f"| {method} | - | {fmt_exp(e)} | {100 * (1 - 10.0 ** -e):.2f}% | not run "
                             f"| | | | | | |")
                continue
            coll = f"{len(r['collapsed'])}" + (f" ({compress(r['collapsed'])})" if r["collapsed"] else "")
            time_note = f"{r['time_s']:.1f}" if method == "synflow" else f"{r['time_s']:.2f} (+ scoring {r['score_s']:.1f})"
            table.append(
                f"| {method} | {r['rounds']} | {fmt_exp(e)} | {100 * (1 - 10.0 ** -e):.2f}% | {r['kept']:,} "
                f"| {r['effective_density']:.3g} | {compress(r['empty'])} | {coll} "
                f"| {'yes' if r['disconnected'] else 'no'} | {r['dies_at'] or '-'} | {time_note} |"
            )
            if first is None and r["collapsed"]:
                first = (e, r)
        run = [e for e in exponents if (method, e) in results]
        rounds_note = f"{results[(method, run[0])]['rounds']} round(s)" if run else ""
        if not run:
            summaries.append(f"{method}: not run")
        elif first is not None:
            e, r = first
            where = (f"layers {compress(r['empty'])} empty (no weight kept)" if r["empty"]
                     else f"no layer empty, but layers {compress(r['collapsed'])} have no effective weight")
            if r["disconnected"]:
                where += (f"; disconnected (the input's signal dies at {r['dies_at']}), so all "
                          f"{len(r['collapsed'])} layers have no effective weight")
            else:
                where += f"; still connected, collapsed (no effective weight): {compress(r['collapsed'])}"
            summaries.append(f"{method} ({rounds_note}): first collapses at density {fmt_density(e)}: {where}")
        else:
            low = min(10.0 ** -e for e in run)
            e_low = next(e for e in run if 10.0 ** -e == low)
            missing = [fmt_exp(e) for e in exponents if e not in run]
            summaries.append(f"{method} ({rounds_note}): no layer collapse down to density {fmt_density(e_low)}"
                             + (f" (not run at {', '.join(missing)})" if missing else ""))

    e_low = exponents[-1]
    per_layer = [f"Per-layer kept / effective weights at density {fmt_density(e_low)}:", ""]
    present = [m for m in args.methods if (m, e_low) in results]
    per_layer.append("| layer | parameter | weights | " + " | ".join(f"{m} kept / eff." for m in present) + " |")
    per_layer.append("|---|---|---|" + "---|" * len(present))
    for i, (name, lab) in enumerate(labels.items()):
        cells = []
        for m in present:
            row = results[(m, e_low)]["rows"][i]
            cells.append(f"{row['kept']:,} / {row['effective']:,}")
        per_layer.append(f"| {lab} | {name} | {dense[name].numel():,} | " + " | ".join(cells) + " |")

    total_s = time.perf_counter() - started
    timings.append(f"total {total_s / 60:.1f} min")
    log("\n" + "\n".join(table))
    log("\n" + "\n".join(summaries))
    if notes:
        log("\n" + "\n".join(notes))
    log("\n" + "\n".join(per_layer))
    log("\nTimings: " + "; ".join(timings))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = ["# Layer collapse at initialisation", "", *[f"{h}  " for h in header], "",
          "Layers: " + ", ".join(f"{lab} = `{name}`" for name, lab in labels.items()), "",
          *table, "", *[f"- {s}" for s in summaries], ""]
    if notes:
        md += [*[f"- {n}" for n in notes], ""]
    md += [*per_layer, "", "Timings: " + "; ".join(timings), "",
           f"Command: `python {' '.join(sys.argv)}`", ""]
    out.write_text("\n".join(md))
    log(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
