"""``ticketlab`` command line: imp, prune, sparse, early-bird, plant, ls, report, demo."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import BASELINES, DISTRIBUTION_CHOICES, OPTIMIZERS, PRUNE_SCHEDULES, \
    SANITY_CHECKS, SCHEDULES, SCOPES, SPARSE_METHODS, ConfigError, DataConfig, EarlyBirdConfig, IMPConfig, ModelConfig, \
    PruneAtInitConfig, PruneConfig, SparseTrainConfig, TrainConfig, config_hash, pai_methods, reset_modes

# Standard settings from the papers (see METHODS.md); any flag given on the command line wins.
PRESETS: dict[str, dict[str, Any]] = {
    "lenet_mnist": dict(dataset="mnist", model="lenet_300_100", optimizer="adam", lr=1.2e-3, batch_size=60,
                        steps="50000it", val_size=5000, eval_every="1000it", output_rate=0.1),
    "conv2_cifar10": dict(dataset="cifar10", model="conv2", optimizer="adam", lr=2e-4, batch_size=60,
                          steps="20000it", val_size=5000, eval_every="1000it"),
    "conv4_cifar10": dict(dataset="cifar10", model="conv4", optimizer="adam", lr=3e-4, batch_size=60,
                          steps="25000it", val_size=5000, eval_every="1000it"),
    "conv6_cifar10": dict(dataset="cifar10", model="conv6", optimizer="adam", lr=3e-4, batch_size=60,
                          steps="30000it", val_size=5000, eval_every="1000it"),
    "resnet20_cifar10": dict(dataset="cifar10", model="resnet20", optimizer="sgd", lr=0.1, momentum=0.9,
                             weight_decay=1e-4, batch_size=128, steps="160ep", schedule="multistep",
                             milestones=["80ep", "120ep"], reset="rewind", rewind_step="2000it", eval_every="1ep"),
    "vgg16_cifar10": dict(dataset="cifar10", model="vgg16", optimizer="sgd", lr=0.1, momentum=0.9,
                          weight_decay=1e-4, batch_size=128, steps="160ep", schedule="multistep",
                          milestones=["80ep", "120ep"], reset="rewind", rewind_step="2000it", eval_every="1ep"),
}

# Offline demo: scikit-learn's digits, an MLP, IMP down to 1% of the weights with both baselines
# (about 20 seconds on 2 cores). Below ~3% the random re-init falls behind the ticket.
DEMO = dict(dataset="digits", model="mlp", model_options={"hidden": [300, 100]}, optimizer="adam", lr=1e-3,
            batch_size=32, steps="20ep", val_size=200, eval_every="1ep", levels=9, rate=0.4)


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_data_model_training(p: argparse.ArgumentParser) -> None:
    """Flags every training experiment shares."""
    g = p.add_argument_group("data and model")
    g.add_argument("--preset", choices=sorted(PRESETS), help="paper settings to start from; flags override them")
    g.add_argument("--dataset", help="mnist, fashion_mnist, cifar10, cifar100, digits, ... (default mnist)")
    g.add_argument("--data-root", help="folder holding the data set's files")
    g.add_argument("--val-size", type=int, help="training samples held out for validation / early stopping")
    g.add_argument("--data-option", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--model", help="registered model name (default lenet_300_100)")
    g.add_argument("--model-option", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. hidden=[300,100] or width=0.25 (values are JSON)")
    g = p.add_argument_group("training")
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--nesterov", action="store_true", default=None)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--steps", help="training length (per level for IMP): '50000it', '160ep' or '2ep100it'")
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--milestones", nargs="+", help="multistep LR drops, e.g. 80ep 120ep")
    g.add_argument("--gamma", type=float, help="LR factor at each milestone")
    g.add_argument("--warmup", help="linear LR warm-up length, e.g. 500it")
    g.add_argument("--eval-every", help="evaluation (and checkpoint) period, e.g. 1000it or 1ep")
    g.add_argument("--mask-gradients", action="store_true", default=None,
                   help="also zero pruned weights' gradients (for optimisers whose update couples entries)")
    g.add_argument("--no-fused-optimizer", dest="fused_optimizer", action="store_false", default=None,
                   help="use PyTorch's default (non-fused) optimiser implementation")
    g.add_argument("--seed", type=int)
    _add_common(p)


def _add_prunable_names(g: Any) -> None:
    """--prune-param / --keep-dense: the weights a procedure prunes besides, or instead of, the default."""
    g.add_argument("--prune-param", dest="include", action="append", default=[], metavar="NAME",
                   help="also prune this parameter, or the >=2-D weights under this module, e.g. a raw "
                        "nn.Parameter used through F.linear or an embedding (by default only Linear/Conv "
                        "weights are pruned); repeatable")
    g.add_argument("--keep-dense", dest="exclude", action="append", default=[], metavar="NAME",
                   help="never prune this parameter, or anything under this module (wins over --prune-param); "
                        "repeatable")


def _add_imp_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_model_training(p)
    g = p.add_argument_group("pruning")
    g.add_argument("--levels", type=int, help="pruning levels after the dense run (default 10)")
    g.add_argument("--rate", type=float, help="fraction of remaining weights removed per level (default 0.2)")
    g.add_argument("--scope", choices=SCOPES, help="rank weights globally or within each layer")
    g.add_argument("--output-rate", type=float, help="prune the output layer separately at this rate")
    g.add_argument("--no-prune-first", action="store_true", help="keep the first layer dense")
    g.add_argument("--no-prune-output", action="store_true", help="keep the output layer dense")
    g.add_argument("--reset", choices=reset_modes(), help="init (LTH), rewind (to step k), lr_rewind, finetune")
    g.add_argument("--rewind-step", help="k for rewind / lr_rewind / finetune, e.g. 2000it")
    g.add_argument("--baselines", nargs="*", choices=BASELINES, help="baselines per level (default: both)")
    _add_prunable_names(g)


def _add_sparse_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_model_training(p)
    g = p.add_argument_group("sparse training")
    g.add_argument("--method", choices=SPARSE_METHODS, required=True,
                   help="dense, static (fixed random mask), set, rigl, gmp (gradual magnitude pruning)")
    amount = g.add_mutually_exclusive_group()
    amount.add_argument("--density", type=float, help="fraction of prunable weights kept (final, for gmp)")
    amount.add_argument("--sparsity", type=float, help="fraction removed (1 - density)")
    g.add_argument("--distribution", help="sparse init for static/set/rigl: uniform, erk (default), smart, "
                                          "smart_vgg; gmp: global, uniform (default), erk, smart, smart_vgg")
    g.add_argument("--delta-t", type=int, default=100, help="RigL/SET: iterations between mask updates")
    g.add_argument("--t-end", type=float, default=0.75, help="RigL/SET: last update, as a fraction of training")
    g.add_argument("--alpha", type=float, default=0.3, help="RigL/SET: initial drop fraction (cosine-decayed)")
    g.add_argument("--gmp-start", default="0it", help="GMP: first pruning step")
    g.add_argument("--gmp-end", help="GMP: last pruning step (default 75%% of training)")
    g.add_argument("--gmp-every", default="100it", help="GMP: pruning period")
    g.add_argument("--gmp-initial-sparsity", type=float, default=0.0)
    g.add_argument("--no-prune-first", action="store_true", help="keep the first layer dense")
    g.add_argument("--no-prune-output", action="store_true", help="keep the output layer dense")
    _add_prunable_names(g)


def _add_early_bird_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_model_training(p)
    g = p.add_argument_group("early-bird tickets")
    g.add_argument("--kind", choices=("channel", "unstructured"), default="channel",
                   help="channel: network slimming on BN scales, physically smaller ticket; unstructured: |w| masks")
    g.add_argument("--prune-ratio", type=float, default=0.5, help="fraction of channels (or weights) removed")
    g.add_argument("--epsilon", type=float, default=0.1, help="draw when the last --window distances are below this")
    g.add_argument("--window", type=int, default=5)
    g.add_argument("--slimming", type=float, default=1e-4, help="L1 strength on BN scales (channel kind)")
    g.add_argument("--search-lr", type=float, help="a larger LR for the cheap search phase")
    g.add_argument("--search-precision", choices=("fp32", "bf16"), default="fp32")
    g.add_argument("--retrain-from", choices=("ticket", "reinit"), default="ticket")
    _add_prunable_names(g)  # unstructured kind only


def early_bird_config_from_args(args: argparse.Namespace) -> EarlyBirdConfig:
    opts = _options(args, None, ())
    return EarlyBirdConfig(**_data_model_train(opts, args), kind=args.kind, prune_ratio=args.prune_ratio,
                           epsilon=args.epsilon, window=args.window, slimming=args.slimming,
                           search_lr=args.search_lr, search_precision=args.search_precision,
                           retrain_from=args.retrain_from, seed=opts.get("seed", 0), **_names(args))


def _add_prune_arguments(p: argparse.ArgumentParser) -> None:
    _add_data_model_training(p)
    g = p.add_argument_group("pruning at initialisation")
    g.add_argument("--method", choices=pai_methods(), required=True)
    amount = g.add_mutually_exclusive_group(required=True)
    amount.add_argument("--density", type=float, help="fraction of prunable weights kept, e.g. 0.02")
    amount.add_argument("--sparsity", type=float, help="fraction removed (1 - density), e.g. 0.98")
    g.add_argument("--distribution", choices=DISTRIBUTION_CHOICES, default="global",
                   help="global ranking, or fixed layer-wise densities (uniform, ERK, smart ratios)")
    g.add_argument("--rounds", type=int, help="iterative pruning rounds (default: 100 for synflow, else 1)")
    g.add_argument("--prune-schedule", choices=PRUNE_SCHEDULES, default="exponential",
                   help="density after round k of n: d^(k/n) (exponential) or linear")
    g.add_argument("--score-batches", type=int, default=1, help="mini-batches the data-driven scores read")
    g.add_argument("--score-batch-size", type=int, default=256)
    g.add_argument("--grasp-temperature", type=float, default=200.0)
    g.add_argument("--sanity", choices=SANITY_CHECKS, default="none",
                   help="shuffle the mask within layers, re-initialise kept weights, or invert the scores")
    g.add_argument("--no-prune-first", action="store_true", help="keep the first layer dense")
    g.add_argument("--no-prune-output", action="store_true", help="keep the output layer dense")
    _add_prunable_names(g)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default="runs", help="store folder (default ./runs)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: a GPU if present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int,
                   help="CPU threads for PyTorch (default: PyTorch's choice); 1 is often fastest for small "
                        "models and always on a machine whose cores are busy with other work")


_SHARED_KEYS = ("dataset", "data_root", "val_size", "model", "optimizer", "lr", "momentum", "nesterov",
                "weight_decay", "batch_size", "steps", "schedule", "milestones", "gamma", "warmup", "eval_every",
                "mask_gradients", "fused_optimizer", "seed")
_TRAIN_KEYS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "batch_size", "steps", "schedule",
               "milestones", "gamma", "warmup", "eval_every", "mask_gradients", "fused_optimizer")


def _options(args: argparse.Namespace, base: dict[str, Any] | None, keys: Sequence[str]) -> dict[str, Any]:
    """Defaults <- preset (or ``base``) <- explicit flags."""
    opts: dict[str, Any] = dict(base or {})
    if getattr(args, "preset", None):
        opts.update(PRESETS[args.preset])
    for key in (*_SHARED_KEYS, *keys):
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    return opts


def _names(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """include / exclude from --prune-param / --keep-dense."""
    return {"include": tuple(getattr(args, "include", None) or ()),
            "exclude": tuple(getattr(args, "exclude", None) or ())}


def _data_model_train(opts: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        data=DataConfig(name=opts.get("dataset", "mnist"), root=opts.get("data_root"),
                        val_size=opts.get("val_size", 0),
                        options=dict(opts.get("data_options", {}), **dict(args.data_option))),
        model=ModelConfig(name=opts.get("model", "lenet_300_100"),
                          options=dict(opts.get("model_options", {}), **dict(args.model_option))),
        train=TrainConfig(**{k: (tuple(opts[k]) if k == "milestones" else opts[k]) for k in _TRAIN_KEYS if k in opts}),
    )


def imp_config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> IMPConfig:
    opts = _options(args, base, ("levels", "rate", "scope", "output_rate", "reset", "rewind_step", "baselines"))
    prune = PruneConfig(rate=opts.get("rate", 0.2), scope=opts.get("scope", "global"),
                        output_rate=None if args.no_prune_output else opts.get("output_rate"),
                        include_first=not args.no_prune_first, include_output=not args.no_prune_output,
                        **_names(args))
    return IMPConfig(
        **_data_model_train(opts, args), prune=prune, levels=opts.get("levels", 10), reset=opts.get("reset", "init"),
        rewind_step=opts.get("rewind_step", "0it"), baselines=tuple(opts.get("baselines", BASELINES)),
        seed=opts.get("seed", 0),
    )


def prune_config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> PruneAtInitConfig:
    opts = _options(args, base, ())
    if args.sparsity is not None and not 0 <= args.sparsity < 1:
        raise ConfigError(f"sparsity (fraction removed) must be in [0, 1), got {args.sparsity}")
    density = args.density if args.density is not None else 1.0 - args.sparsity
    return PruneAtInitConfig(
        **_data_model_train(opts, args), method=args.method, density=round(density, 12),
        distribution=args.distribution, rounds=args.rounds, schedule=args.prune_schedule,
        score_batches=args.score_batches, score_batch_size=args.score_batch_size,
        grasp_temperature=args.grasp_temperature, sanity=args.sanity,
        include_first=not args.no_prune_first, include_output=not args.no_prune_output, seed=opts.get("seed", 0),
        **_names(args),
    )


def sparse_config_from_args(args: argparse.Namespace) -> SparseTrainConfig:
    opts = _options(args, None, ())
    if args.sparsity is not None and not 0 <= args.sparsity < 1:
        raise ConfigError(f"sparsity (fraction removed) must be in [0, 1), got {args.sparsity}")
    if args.density is None and args.sparsity is None and args.method != "dense":
        raise ConfigError(f"--method {args.method} needs --density or --sparsity")
    density = args.density if args.density is not None else (1.0 - args.sparsity if args.sparsity is not None else 1.0)
    return SparseTrainConfig(
        **_data_model_train(opts, args), method=args.method, density=round(density, 12),
        distribution=args.distribution, delta_t=args.delta_t, t_end=args.t_end, alpha=args.alpha,
        gmp_start=args.gmp_start, gmp_end=args.gmp_end, gmp_every=args.gmp_every,
        gmp_initial_sparsity=args.gmp_initial_sparsity, include_first=not args.no_prune_first,
        include_output=not args.no_prune_output, seed=opts.get("seed", 0), **_names(args),
    )


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def _run_and_report(args: argparse.Namespace, config: Any, runner) -> int:
    """Run an experiment config in the store, then write and print its report."""
    from .store import Store

    from .training import resolve_device

    _set_threads(args)
    resolve_device(args.device)  # a missing GPU is reported before the store is touched
    store = Store(args.runs_dir)
    started = time.time()
    runner(config, store, device=args.device, progress=not args.no_progress)
    run = store.run(config_hash(config))
    print(f"\nfinished in {time.time() - started:.1f} s; results in {run.path}")
    _write_report([run.hash], store, run.path)
    return 0


def cmd_imp(args: argparse.Namespace, base: dict[str, Any] | None = None) -> int:
    from .experiments.imp import run_imp

    return _run_and_report(args, imp_config_from_args(args, base), run_imp)


def cmd_prune(args: argparse.Namespace) -> int:
    from .experiments.prune_at_init import run_prune_at_init

    return _run_and_report(args, prune_config_from_args(args), run_prune_at_init)


def cmd_sparse(args: argparse.Namespace) -> int:
    from .experiments.sparse_training import run_sparse_training

    return _run_and_report(args, sparse_config_from_args(args), run_sparse_training)


def cmd_early_bird(args: argparse.Namespace) -> int:
    from .experiments.early_bird import run_early_bird

    return _run_and_report(args, early_bird_config_from_args(args), run_early_bird)


def _write_report(hashes: Sequence[str], store, out: Path) -> None:
    """report.md (+ report.png) for IMP runs and prune-at-init runs, whichever were given."""
    from .analysis.report import imp_table, plot_imp, plot_prune, prune_table
    from .atomic import atomic_write_text

    imp_runs, prune_rows, sparse_runs, eb_runs = [], [], [], []
    for h in hashes:
        run = store.run(h)
        described = run.read_json("config.json")
        cfg = described["config"]
        if described["experiment"] == "imp":
            label = f"{run.hash[:8]} {cfg['model']['name']}/{cfg['data']['name']} reset={cfg['reset']}"
            imp_runs.append((label, run.read_jsonl("levels.jsonl")))
        elif described["experiment"] == "early_bird":
            eb_runs.append((run, run.read_json("summary.json"), run.read_json("distance_matrix.json")))
        elif described["experiment"] == "sparse":
            sparse_runs.append((run, cfg, run.read_json("train", "summary.json"), run.read_jsonl("train", "metrics.jsonl")))
        else:
            summary = run.read_json("train", "summary.json")
            prune_rows.append({"run": run.hash[:8], "model": cfg["model"]["name"], "dataset": cfg["data"]["name"],
                               "seed": cfg["seed"], **summary})
    out = Path(out)
    parts, plots = [], []
    if imp_runs:
        plots.append(plot_imp(imp_runs, out / "report.png"))
        parts += [f"### {label}\n\n{imp_table(rows)}" for label, rows in imp_runs]
    if prune_rows:
        parts.append(f"### pruning at initialisation\n\n{prune_table(prune_rows)}")
        if len(prune_rows) > 1:
            plots.append(plot_prune(prune_rows, out / ("report_prune.png" if imp_runs else "report.png")))
    if sparse_runs:
        from .analysis.report import plot_sparse, sparse_table

        rows = [{"run": r.hash[:8], "model": c["model"]["name"], "dataset": c["data"]["name"], "seed": c["seed"],
                 **summary} for r, c, summary, _ in sparse_runs]
        parts.append(f"### sparse training\n\n{sparse_table(rows)}")
        name = "report.png" if not (imp_runs or prune_rows) else "report_sparse.png"
        plots.append(plot_sparse([(f"{r.hash[:8]} {s['method']}", h) for r, _, s, h in sparse_runs], out / name))
    if eb_runs:
        from .analysis.report import early_bird_table, plot_distance_matrix

        parts.append("### early-bird tickets\n\n" + early_bird_table([{"run": r.hash[:8], **s} for r, s, _ in eb_runs]))
        for r, s, dm in eb_runs:
            plots.append(plot_distance_matrix(dm["epochs"], dm["distances"], out / f"distances_{r.hash[:8]}.png",
                                              drawn=s["drawn_epoch"]))
    text = "\n\n".join(parts)
    atomic_write_text(out / "report.md", text + "\n")
    print(text)
    for png in plots:
        print(f"\nplot: {png}")
    print(f"table: {out / 'report.md'}")


def cmd_plant(args: argparse.Namespace) -> int:
    """The Plant 'n' Seek benchmark: tables and plots in --out (no store: cells are cheap)."""
    from .atomic import atomic_write_text
    from .planting.benchmark import benchmark_table, plot_benchmark, run_benchmark

    from .atomic import remove_stale_temp_files

    kept = [k if k == "ticket" else float(k) for k in args.kept]
    out = Path(args.out)
    if out.is_dir():
        remove_stale_temp_files(out)  # torn temp files of a killed earlier call
    started = time.time()
    rows = run_benchmark(args.tasks, args.methods, kept, range(args.seeds), workers=args.workers,
                         depth=args.depth, width=args.width, epochs=args.epochs,
                         progress=None if args.no_progress else
                         lambda r: print(f"{r['task']:>6} {r['method']:>16} kept {r['kept']!s:>6} seed {r['seed']}: "
                                         f"strong {r['strong']:.4g} weak {r['weak']:.4g}", flush=True))
    table = benchmark_table(rows)
    atomic_write_text(out / "report.md", table + f"\n\n{len(rows)} cells in {time.time() - started:.0f} s\n")
    atomic_write_text(out / "rows.json", json.dumps(rows, default=str))
    weak, strong = plot_benchmark(rows, out / "weak.png"), plot_benchmark(rows, out / "strong.png", metric="strong")
    print(table)
    print(f"\n{len(rows)} cells in {time.time() - started:.0f} s; {out / 'report.md'}, plots {weak}, {strong}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .store import Store

    store = Store(args.runs_dir)
    hashes = [store.run(h).hash for h in args.runs]
    out = Path(args.out) if args.out else (store.run(hashes[0]).path if len(hashes) == 1
                                           else store.root / "reports" / "_".join(h[:8] for h in hashes))
    _write_report(hashes, store, out)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from .store import Store

    store = Store(args.runs_dir)
    if args.reindex:
        print(f"re-indexed {store.reindex()} runs")
    filters = dict(f.split("=", 1) for f in args.filters)
    rows = store.list(**filters)
    if not rows:
        print(f"no runs under {store.root}" + (f" matching {filters}" if filters else ""))
        return 0
    print(f"{'hash':<13} {'experiment':<10} {'status':<11} {'dataset':<13} {'model':<15} {'method':<9} "
          f"{'levels':>6} {'density':>8} {'test acc':>8}  updated")
    for r in rows:
        s, c = r["summary"], r["config"]
        print(f"{r['hash']:<13} {r['experiment'] or '':<10} {r['status'] or '':<11} {r['dataset'] or '':<13} "
              f"{r['model'] or '':<15} {c.get('reset') or c.get('method') or c.get('kind', ''):<9} "
              f"{s.get('levels_done', ''):>6} {s.get('density', s.get('ticket_density', float('nan'))):>8.4f} "
              f"{s.get('final_test_accuracy', s.get('ticket_test_accuracy', float('nan'))):>8.4f}  {r['updated']}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every stored file of the given runs (default: all) against its checksum."""
    from .store import Store

    store = Store(args.runs_dir)
    runs = [store.run(h) for h in args.runs] if args.runs else store.runs()
    damaged, files = [], 0
    for run in runs:
        files += sum(1 for p in run.path.rglob("*") if p.is_file() and not p.name.startswith("."))
        for problem in run.verify():
            damaged.append(problem)
            print(f"{run.hash}  {problem.path.relative_to(run.path)}: {problem.problem}")
    if damaged:
        print(f"\n{len(damaged)} damaged file(s) in {len({p.path.parts[len(store.root.parts)] for p in damaged})} "
              f"run(s) of {len(runs)}. Nothing was changed. Move a damaged file aside or delete it, and rerun its "
              "command to recompute what it held.")
        return 1
    print(f"all files intact: {files} files in {len(runs)} run(s) under {store.root}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    print("ticketlab demo: lottery tickets by IMP on scikit-learn's digits (offline, about 20 seconds).\n"
          "Watch the winning ticket hold its accuracy as weights are removed while the same mask\n"
          "with a fresh random init falls behind.\n")
    if args.threads is None:
        args.threads = 1  # the model is tiny: one thread is as fast, and never stalls on a busy machine
    return cmd_imp(args, base=DEMO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    experiments = [
        ("imp", "iterative magnitude pruning (lottery tickets) with baselines", _add_imp_arguments, cmd_imp),
        ("prune", "prune at initialisation (SNIP, GraSP, SynFlow, magnitude, random), then train",
         _add_prune_arguments, cmd_prune),
        ("sparse", "sparse training: dense, static, SET, RigL, gradual magnitude pruning",
         _add_sparse_arguments, cmd_sparse),
        ("early-bird", "early-bird tickets: draw the ticket when its mask stops changing",
         _add_early_bird_arguments, cmd_early_bird),
    ]
    for name, help_text, add_arguments, command in experiments:
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(func=command)
    p = sub.add_parser("plant", help="the Plant 'n' Seek benchmark: find planted tickets with every method")
    from .planting.benchmark import METHODS as PLANT_METHODS

    p.add_argument("--tasks", nargs="+", default=["relu", "circle", "helix"], choices=("relu", "circle", "helix"))
    p.add_argument("--methods", nargs="+", default=list(PLANT_METHODS), choices=(*PLANT_METHODS, "ticket"))
    p.add_argument("--kept", nargs="+", default=["1", "0.5", "0.1", "0.01", "ticket"],
                   help="fractions of host weights kept, or 'ticket' (the planted ticket's own)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--width", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="parallel single-threaded processes")
    p.add_argument("--out", default="runs/reports/plant")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_plant)
    p = sub.add_parser("demo", help="a small offline IMP experiment (digits) with report")
    _add_imp_arguments(p)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("ls", help="list runs in the store")
    p.add_argument("filters", nargs="*", metavar="KEY=VALUE", help="e.g. dataset=mnist reset=rewind status=complete")
    p.add_argument("--reindex", action="store_true", help="rebuild the index from the run folders")
    p.add_argument("--runs-dir", default="runs")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("verify", help="check every stored file against its checksum (nothing is changed)")
    p.add_argument("runs", nargs="*", help="run hashes or prefixes (default: every run)")
    p.add_argument("--runs-dir", default="runs")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("report", help="table and plot of accuracy vs. remaining weights for runs")
    p.add_argument("runs", nargs="+", help="run hashes (or unique prefixes)")
    p.add_argument("--out", help="folder for report.png and report.md (default: the run's folder)")
    p.add_argument("--runs-dir", default="runs")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import USER_ERRORS, describe_os_error
    from .experiments.common import MaskViolation
    from .training import DivergenceError

    try:
        return args.func(args)
    except DivergenceError as exc:
        print(f"ticketlab: error: {exc}", file=sys.stderr)
        return 3
    except MaskViolation as exc:
        print(f"ticketlab: internal error: {exc}", file=sys.stderr)
        return 4
    except USER_ERRORS as exc:
        print(f"ticketlab: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ticketlab: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nticketlab: interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser", "imp_config_from_args", "prune_config_from_args"]
