"""ticketlab: lottery tickets and sparse training on PyTorch.

Every run is stored under --runs-dir (default ./runs) in a folder named by the hash of its settings:
the same command finds its finished results, and an interrupted run continues where it stopped.
Run "ticketlab COMMAND --help" for a command's options and their defaults.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, distributed, flags
from .config import ConfigError, config_hash
from .experiments.registry import DEMO, EXPERIMENTS, PRESETS, Experiment, experiment_of  # noqa: F401 (DEMO re-exported)


def _add_run_options(p: argparse.ArgumentParser, threads: int | None = None) -> None:
    """Where and how a run is executed: not part of its config, so not of its hash."""
    p.add_argument("--runs-dir", default="runs", help="store folder (default: ./runs)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: a GPU if present, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    shown = "PyTorch's choice" if threads is None else threads
    p.add_argument("--threads", type=int, default=threads,
                   help="CPU threads for PyTorch; 1 is often fastest for small models and always on a machine whose "
                        f"cores are busy with other work (default: {shown})")
    p.add_argument("--log", action="append", choices=("tensorboard",), default=None,
                   help="also write each training unit's evaluation metrics as TensorBoard event files under "
                        "RUN/tensorboard/UNIT/ (needs pip install 'ticketlab[tensorboard]'; no part of the run's "
                        "hash or results) (default: none)")


def _add_config_options(p: argparse.ArgumentParser, e: Experiment, base: dict[str, Any]) -> None:
    """The options generated from e's config fields (defaults shown from ``base``) and --preset."""
    groups = {"data and model": p.add_argument_group("data and model")}
    if e.presets:
        groups["data and model"].add_argument("--preset", choices=sorted(PRESETS),
                                              help="paper settings to start from; flags given override them (default: none)")
    flags.add_options(p, flags.options(e.config_cls, e.group), base, groups)


def _add_seeds_options(p: argparse.ArgumentParser) -> None:
    """``--seeds``: the same run for several seeds, trained as one stacked model where that pays."""
    g = p.add_argument_group("several seeds (ticketlab.replicates)")
    g.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="run these seeds instead of --seed; on a plain MLP their training runs as one stacked model "
                        "(runs marked numerics 'stacked': within float tolerance of, not bit-identical to, --seed "
                        "runs; a run's numbers do not depend on the other seeds), other models one seed after "
                        "another; one report over all (default: one run, --seed)")
    g.add_argument("--stack-size", type=int, default=None, metavar="K",
                   help="at most K seeds per stack (default: up to 32, what fits in 2 GiB)")
    g.add_argument("--no-stack", action="store_true",
                   help="run the seeds one after another as ordinary --seed runs (default: stack when the model allows)")


def _add_experiment(sub: Any, e: Experiment) -> None:
    """``ticketlab <e.name>``: the options generated from e's config fields, --preset and the run options."""
    p = sub.add_parser(e.name, help=e.help, description=e.help)
    _add_config_options(p, e, e.base)
    _add_run_options(p, e.threads)
    if e.run_seeds is not None:
        _add_seeds_options(p)
    p.set_defaults(func=_run_experiment, experiment=e)


def config_from_args(args: argparse.Namespace, experiment: Experiment | None = None,
                     base: dict[str, Any] | None = None) -> Any:
    """The config a command line describes: field defaults <- the command's base <- --preset <- flags."""
    e = experiment or args.experiment
    layers = {**(e.base if base is None else base), **(PRESETS[args.preset] if getattr(args, "preset", None) else {})}
    opts = flags.options(e.config_cls, e.group)
    values = flags.values(opts, args, layers)
    if e.finish is not None:
        e.finish(values, frozenset(o.dest for o in opts if getattr(args, o.dest, None) is not None))
    return flags.build(e.config_cls, opts, values)


# The builders of the hand-written CLI, kept for their callers (scripts, tests).
def imp_config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    return config_from_args(args, EXPERIMENTS["imp"], base)


def prune_config_from_args(args: argparse.Namespace) -> Any:
    return config_from_args(args, EXPERIMENTS["prune"])


def sparse_config_from_args(args: argparse.Namespace) -> Any:
    return config_from_args(args, EXPERIMENTS["sparse"])


def early_bird_config_from_args(args: argparse.Namespace) -> Any:
    return config_from_args(args, EXPERIMENTS["early-bird"])


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    from . import tensorboard

    tensorboard.enable("tensorboard" in (getattr(args, "log", None) or ()))  # a missing package fails here


def _run_experiment(args: argparse.Namespace) -> int:
    """Run the command's config in the store, then write and print its report."""
    from .store import Store
    from .training import resolve_device

    e: Experiment = args.experiment
    config = config_from_args(args)
    _set_threads(args)
    if e.run_seeds is not None and args.seeds:  # (strong's --seeds is a config field of its own)
        return _run_seeds(args, e, config)
    if e.run_seeds is not None and (args.stack_size is not None or args.no_stack):
        raise ConfigError("--stack-size and --no-stack apply to --seeds runs; give --seeds, or drop them")
    if distributed.init_from_env(args.device):  # launched by torchrun: one run on WORLD_SIZE processes
        return _run_distributed(args, e, config)
    if e.intro:
        print(e.intro)
    if "tensorboard" in (getattr(args, "log", None) or ()) and e.name in NO_TENSORBOARD:
        print(f"ticketlab: warning: --log tensorboard: ticketlab {e.name} trains in a loop of its own and writes no "
              "event files; its curves are in the run's metrics.jsonl / history.jsonl", file=sys.stderr)
    resolve_device(args.device)  # a missing GPU is reported before the store is touched
    store = Store(args.runs_dir)
    started = time.time()
    e.run(config, store, device=args.device, progress=not args.no_progress)
    run = store.run(config_hash(config))
    print(f"\nfinished in {time.time() - started:.1f} s; results in {run.path}")
    _write_report([run.hash], store, run.path)
    return 0


def _run_seeds(args: argparse.Namespace, e: Experiment, config: Any) -> int:
    """``--seeds``: the command's run for every seed, stacked where the model allows, one report."""
    from dataclasses import replace

    from .experiments.stacked import stacked_train
    from .store import Store
    from .training import resolve_device

    seeds = list(args.seeds)
    if getattr(args, "seed", None) is not None:
        raise ConfigError("--seeds replaces --seed: give one of them")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {seeds}")
    if args.stack_size is not None and args.stack_size < 1:
        raise ConfigError(f"--stack-size must be >= 1, got {args.stack_size}")
    if distributed.init_from_env(args.device):
        raise distributed.DistributedError("--seeds runs in one process; under torchrun give one --seed")
    resolve_device(args.device)
    store = Store(args.runs_dir)
    started = time.time()
    why = "--no-stack" if args.no_stack else e.stack_refusal(config)
    if why is None:
        configs = [replace(config, seed=s, train=stacked_train(config.train)) for s in seeds]
        print(f"{len(seeds)} seeds, trained as stacked replicates")
        if "tensorboard" in (getattr(args, "log", None) or ()):
            print("ticketlab: warning: --log tensorboard: stacked runs write no event files (their curves are in each "
                  "unit's metrics.jsonl); --no-stack trains them one by one with event files", file=sys.stderr)
        e.run_seeds(configs, store, device=args.device, progress=not args.no_progress, stack_limit=args.stack_size)
    else:
        configs = [replace(config, seed=s) for s in seeds]
        print(f"{len(seeds)} seeds, one after another ({why})")
        for c in configs:
            e.run(c, store, device=args.device, progress=not args.no_progress)
    hashes = [config_hash(c) for c in configs]
    out = store.root / "reports" / f"{e.name}-{config_hash(replace(configs[0], seed=0))[:12]}-seeds-" \
        f"{'-'.join(map(str, seeds))}"
    print(f"\nfinished in {time.time() - started:.1f} s; runs {', '.join(h[:8] for h in hashes)}; report in {out}")
    _write_report(hashes, store, out)
    return 0


DISTRIBUTED_EXPERIMENTS = ("imp", "prune", "sparse", "demo")
NO_TENSORBOARD = ("supermask", "strong")  # their training is not train_unit's, which writes the event files


def _run_distributed(args: argparse.Namespace, e: Experiment, config: Any) -> int:
    """The run on every rank of the process group; rank 0 alone prints, writes and reports."""
    import contextlib
    import io

    from .store import Store
    from .training import resolve_device

    if e.name not in DISTRIBUTED_EXPERIMENTS:
        raise distributed.DistributedError(f"ticketlab {e.name} runs in one process; under torchrun: "
                                           f"{', '.join(DISTRIBUTED_EXPERIMENTS)}")
    device = distributed.rank_device(args.device)
    resolve_device(device)
    world = distributed.world_size()
    writer = distributed.is_writer()
    started = time.time()
    try:
        with contextlib.redirect_stdout(sys.stdout if writer else io.StringIO()):
            e.run(config, Store(args.runs_dir), device=device, progress=writer and not args.no_progress)
        distributed.barrier()  # every rank done with the run before any leaves the group
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()
    if writer:  # the report after the group is gone: its writes are plain ones
        store = Store(args.runs_dir)
        run = store.run(config_hash(config))
        print(f"\nfinished in {time.time() - started:.1f} s on {world} processes; results in {run.path}")
        _write_report([run.hash], store, run.path)
    return 0


def _write_report(hashes: Sequence[str], store, out: Path) -> None:
    """report.md, plots and CSV tables for the given runs: one section per kind of run, by its record's report.

    The first kind's main plot is report.png, a later kind's report_<kind>.png; each kind's tables are
    also report_<kind>.csv (and its unrounded stored rows report_<kind>_rows.csv, see
    ``analysis.csv_tables``).
    """
    from .analysis.csv_tables import write_csv_tables
    from .atomic import atomic_write_text

    by_kind: dict[str, list[Any]] = {}
    for h in hashes:
        run = store.run(h)
        by_kind.setdefault(run.read_json("config.json")["experiment"], []).append(run)
    records = {kind: experiment_of(kind) for kind in by_kind}  # an unknown kind fails before anything is written
    known = [e.config_cls.experiment for e in EXPERIMENTS.values()]
    out = Path(out)
    parts, plots = [], []
    tables = []
    for i, kind in enumerate(sorted(by_kind, key=known.index)):
        text, pngs = records[kind].report(by_kind[kind], out / ("report.png" if i == 0 else f"report_{kind}.png"))
        parts.append(text)
        plots += pngs
        tables += write_csv_tables(kind, text, by_kind[kind], out)
    text = "\n\n".join(parts)
    atomic_write_text(out / "report.md", text + "\n")
    print(text)
    for png in plots:
        print(f"\nplot: {png}")
    print(f"table: {out / 'report.md'}")
    for path in tables:
        print(f"csv: {path}")


def _plant_protocol_options() -> list[Any]:
    from .planting.benchmark import Protocol

    return flags.options(Protocol, "protocol (hashed with each cell: a change makes new cells)")


def _plant_command(args: argparse.Namespace, protocol: Any) -> str:
    """The command line that reproduces this study (protocol flags that differ from the defaults)."""
    import shlex

    from .planting.benchmark import Protocol

    parts = ["ticketlab", "plant", "--tasks", *args.tasks, "--methods", *args.methods, "--kept", *args.kept,
             "--seeds", str(args.seeds)]
    default = Protocol()
    for o in _plant_protocol_options():
        value = getattr(protocol, o.path[-1])
        if value == getattr(default, o.path[-1]):
            continue
        parts += [o.flag] if o.kind is bool else [o.flag, str(value)]
    parts += ["--workers", str(args.workers), "--stack-size", str(args.stack_size)]
    return shlex.join(parts)  # where the store and the report are (--runs-dir, --out) is no part of the study


def cmd_plant(args: argparse.Namespace) -> int:
    """The Plant 'n' Seek benchmark: each cell a run in the store (a rerun computes only the missing
    ones), the tables and plots in --out, replaced as a whole."""
    from .experiments.stacked import MAX_STACK_CUDA, warn_if_inexact_gpu_stack
    from .planting.benchmark import Protocol
    from .planting.cells import STACK_SIZE
    from .planting.study import normalize_kept, run_study, write_report
    from .store import Store
    from .training import resolve_device

    opts = _plant_protocol_options()
    protocol = flags.build(Protocol, opts, flags.values(opts, args, {}))
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    kept = [normalize_kept(k) for k in args.kept]
    on_gpu = resolve_device(args.device).type == "cuda"  # a bad or absent device: a message, before the store
    store = Store(args.runs_dir)
    out = Path(args.out) if args.out else store.root / "reports" / "plant"
    started = time.time()

    def progress(r: dict[str, Any], k: int, n: int) -> None:
        print(f"[{k}/{n}] {r['task']:>6} {r['method']:>19} kept {r['kept']!s:>6} seed {r['seed']}: "
              f"strong {r['strong']:.4g} weak {r['weak']:.4g} ({r['seconds']:.1f} s)", flush=True)

    if args.stack_size is None:
        args.stack_size = MAX_STACK_CUDA if on_gpu else STACK_SIZE
    if args.stack_size < 1:
        raise ConfigError(f"--stack-size must be >= 1, got {args.stack_size}")
    warn_if_inexact_gpu_stack(args.stack_size, args.device)
    rows = run_study(args.tasks, args.methods, kept, range(args.seeds), protocol, store, workers=args.workers,
                     device=args.device, progress=None if args.no_progress else progress,
                     log=lambda text: print(text, flush=True), stack_size=args.stack_size)
    wall = time.time() - started
    note = (f"`{_plant_command(args, protocol)}`\n\n{len(rows)} cells in {wall:.0f} s ({rows.reused} reused, "
            f"{rows.computed} computed); study {rows.study} (`ticketlab report {rows.study}` redraws this report)")
    files = write_report(rows, out, note)
    print((out / "report.md").read_text())
    print(f"{len(rows)} cells in {wall:.0f} s ({rows.reused} reused, {rows.computed} computed); "
          f"report {files['report.md']}, plots {files['weak.png']}, {files['strong.png']}")
    return 0


_ARM_FIELDS = ("optimizer", "lr", "momentum")
LR_CONTRAST_BASE = {**DEMO, "baselines": ("reinit",)}  # the demo's digits MLP; only the re-init baseline is compared


def cmd_lr_contrast(args: argparse.Namespace) -> int:
    """Rethinking's contrast: the same IMP with a small and a large learning rate, over seeds."""
    from .atomic import atomic_write_text
    from .experiments.lr_contrast import contrast_rows, contrast_table, plot_contrast, run_lr_contrast
    from .store import Store
    from .training import resolve_device

    given = [f"--{name}" for name in _ARM_FIELDS if getattr(args, name, None) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} would be overridden by the arms; set them per arm with "
                          "--small-optimizer/--small-lr/--small-momentum and --large-optimizer/--large-lr/--large-momentum")
    if getattr(args, "seed", None) is not None:
        raise ConfigError("--seed would be overridden: the contrast runs seeds 0 .. N-1 of --seeds N")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    arms = {arm: {"optimizer": getattr(args, f"{arm}_optimizer"), "lr": getattr(args, f"{arm}_lr"),
                  "momentum": getattr(args, f"{arm}_momentum")} for arm in ("small", "large")}
    # the demo's digits MLP is the default only without a preset: a preset names its own data and model
    layers = {"baselines": ("reinit",)} if args.preset else dict(LR_CONTRAST_BASE)
    base = config_from_args(args, EXPERIMENTS["imp"], base=layers)
    _set_threads(args)
    resolve_device(args.device)
    store = Store(args.runs_dir)
    started = time.time()
    runs = run_lr_contrast(base, range(args.seeds), store, arms=arms, device=args.device,
                           progress=not args.no_progress)
    rows = contrast_rows(store, runs)
    digest = config_hash(base)[:8]
    out = Path(args.out) if args.out else store.root / "reports" / f"lr-contrast-{digest}-{args.seeds}seeds"
    plot = plot_contrast(rows, out / "report.png")
    runs_text = ", ".join(f"{arm}/seed {seed}: {h[:12]}" for arm, seed, h in runs)
    text = (f"## learning-rate contrast (Rethinking the value of network pruning)\n\n{contrast_table(rows, arms)}\n\n"
            f"IMP runs: {runs_text}.\n")
    atomic_write_text(out / "report.md", text)
    print(text)
    print(f"finished in {time.time() - started:.1f} s; plot {plot}; table {out / 'report.md'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .store import Store

    store = Store(args.runs_dir)
    hashes = _report_hashes(store, args.runs)
    if _report_plant(store, hashes, args.out):
        if args.html:
            print("ticketlab: warning: --html does not cover plant studies yet; their report is the report.md, "
                  "weak.png and strong.png above", file=sys.stderr)
        return 0
    if args.out:
        out = Path(args.out)
    elif len(hashes) == 1:
        out = store.run(hashes[0]).path
    elif len(hashes) <= 4:
        out = store.root / "reports" / "_".join(h[:8] for h in hashes)
    else:  # a set chosen by filters: named by its size and a digest of its members
        import hashlib

        out = store.root / "reports" / f"{len(hashes)}-runs-{hashlib.sha1(' '.join(hashes).encode()).hexdigest()[:8]}"
    if not args.html:
        _write_report(hashes, store, out)
        return 0
    import shlex

    from .analysis.html_report import write_html_report

    # the same tables and plots as without --html (report.md beside the page); a run whose report
    # cannot be computed yet is left out of its kind's tables with a warning instead of failing
    command = ["ticketlab", "report", *args.runs, *(["--out", args.out] if args.out else []),
               "--runs-dir", args.runs_dir, "--html"]
    page = write_html_report(store, hashes, out, command=shlex.join(command))
    print((out / "report.md").read_text().rstrip("\n"))
    print(f"table: {out / 'report.md'}")
    print(f"html: {page}")
    return 0


def _report_hashes(store: Any, texts: Sequence[str]) -> list[str]:
    """The runs ``report`` was given: hashes (or unique prefixes) and ``ls`` filters (KEY=VALUE,
    KEY>NUMBER, ...; a set of runs), in that order, each run once."""
    plain = [t for t in texts if not any(c in t for c in "=<>")]
    conditions = _ls_filters([t for t in texts if t not in plain])
    hashes = [store.run(h).hash for h in plain]
    if conditions:
        matched = [r["hash"] for r in store.list(*conditions)]
        if not matched:
            raise ConfigError(f"no run in {store.root} matches {' '.join(t for t in texts if t not in plain)}; "
                              "ticketlab ls with the same filters lists what there is")
        hashes += matched
    return list(dict.fromkeys(hashes))


def _report_plant(store: Any, hashes: Sequence[str], out: str | None) -> bool:
    """``ticketlab report`` of plant studies / cells: their tables and plots in a folder of their own
    (default RUNS_DIR/reports/plant-<hashes>), replaced as a whole. False when none is a plant run."""
    from .planting.study import study_rows, write_report

    kinds = {h: store.run(h).read_json("config.json").get("experiment") for h in hashes}
    plant = [h for h in hashes if kinds[h] in ("plant", "plant-study")]
    if not plant:
        return False
    if len(plant) < len(hashes):
        raise ConfigError(f"plant runs ({', '.join(plant)}) are reported on their own, not with runs of "
                          f"{sorted({kinds[h] for h in hashes if h not in plant})}")
    rows = [row for h in hashes for row in study_rows(store, store.run(h))]
    folder = Path(out) if out else store.root / "reports" / ("plant-" + "_".join(h[:8] for h in hashes))
    files = write_report(rows, folder, f"{len(rows)} cells of {', '.join(hashes)} (`ticketlab report "
                                       f"{' '.join(hashes)}`)")
    print(files["report.md"].read_text())
    print(f"plots: {files['weak.png']}, {files['strong.png']}")
    print(f"table: {files['report.md']}")
    return True


_LS_FILTER = re.compile(r"^([A-Za-z_][\w.]*)(>=|<=|=|>|<)(.*)$")


def _ls_filters(texts: Sequence[str]) -> list[tuple[str, str, str]]:
    """``ls`` filters KEY=VALUE, KEY>NUMBER, KEY<NUMBER, KEY>=NUMBER, KEY<=NUMBER; anything else is
    one clear error."""
    out = []
    for text in texts:
        m = _LS_FILTER.match(text)
        if not m:
            raise ConfigError(f"ls filters are KEY=VALUE or KEY>NUMBER (also <, >=, <=), got {text!r}; e.g. ticketlab "
                              "ls status=complete dataset=mnist 'final_test_accuracy>0.9'")
        out.append((m.group(1), m.group(2), m.group(3)))
    return out


def cmd_ls(args: argparse.Namespace) -> int:
    from .store import Store

    filters = _ls_filters(args.filters)
    store = Store(args.runs_dir)
    if args.reindex:
        print(f"re-indexed {store.reindex()} runs")
    rows = store.list(*filters)
    if not rows:
        print(f"no runs under {store.root}" + (f" matching {' '.join(args.filters)}" if filters else ""))
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


def cmd_export(args: argparse.Namespace) -> int:
    """A stored ticket as a model that runs without the Store (``ticketlab.export``)."""
    from .export import completed_levels, export_run
    from .store import Store

    _set_threads(args)
    store = Store(args.runs_dir)
    run = store.run(args.run)
    shape = tuple(args.input_shape) if args.input_shape else None
    level = args.level
    if args.unit is None and level is None and completed_levels(run):
        level = completed_levels(run)[-1]
    what = (args.unit.replace("/", "-") if args.unit else f"level_{level}" if level is not None else "ticket") + (
        f"-{args.branch}" if args.branch != "ticket" else "")
    out = Path(args.out) if args.out else store.root / "exports" / f"{run.hash[:12]}-{what}-{args.format}"
    export_run(store, run.hash, out, level=level, fmt=args.format, batch=args.batch, branch=args.branch,
               unit=args.unit, input_shape=shape, num_classes=args.num_classes, onnx=args.onnx)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade a store written before checksums: seal every file that parses, in place."""
    from .store import Store

    store = Store(args.runs_dir)
    report = store.upgrade()
    problems = 0
    for run_hash, entry in report.items():
        print(f"{run_hash}  {len(entry['sealed'])} file(s) sealed, {entry['intact']} already sealed and intact"
              + (f", {len(entry['problems'])} problem(s)" if entry["problems"] else ""))
        for text in entry["problems"]:
            print(f"    {text}")
        problems += len(entry["problems"])
    if store.runs():
        store.reindex()
    print(f"{len(report)} run(s) under {store.root}; "
          + (f"{problems} file(s) could not be upgraded and were left as they were" if problems else "all files sealed"))
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticketlab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ticketlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for e in EXPERIMENTS.values():
        _add_experiment(sub, e)
    from .sweep import add_sweep_parser

    add_sweep_parser(sub)  # ticketlab sweep: a grid of any of the commands above, on a pool or Ray

    from .planting.benchmark import EXTRA_METHODS as PLANT_EXTRAS, METHODS as PLANT_METHODS
    from .planting.benchmark import REFERENCE_METHODS as PLANT_REFERENCES
    from .planting.tasks import TASKS as PLANT_TASKS

    p = sub.add_parser("plant", help="the Plant 'n' Seek benchmark: find planted tickets with every method",
                       description="The Plant 'n' Seek benchmark. Every cell (task, method, kept fraction, seed, "
                                   "protocol) is a run in the store: a rerun computes only the cells not complete, "
                                   "and the report in --out is replaced as a whole. The unpruned host (dense, kept 1) "
                                   "and the planted ticket are computed once per task and seed.")
    g = p.add_argument_group("study")
    g.add_argument("--tasks", nargs="+", default=list(PLANT_TASKS), choices=PLANT_TASKS,
                   help="planted-ticket tasks: relu and helix (regression), circle (classification) "
                        f"(default: {' '.join(PLANT_TASKS)})")
    g.add_argument("--methods", nargs="+", default=list(PLANT_METHODS),
                   choices=(*PLANT_METHODS, *PLANT_EXTRAS, *PLANT_REFERENCES), metavar="METHOD",
                   help=f"pruning methods to compare, of the paper's: {' '.join(PLANT_METHODS)}; and ticketlab's "
                        f"additions: {' '.join(PLANT_EXTRAS)} (GEM-MINER); the references "
                        f"{' and '.join(PLANT_REFERENCES)} are always computed (default: the paper's)")
    g.add_argument("--kept", nargs="+", default=["1", "0.5", "0.1", "0.01", "ticket"], metavar="KEPT",
                   help="fractions of host weights kept, or 'ticket' (the planted ticket's own); kept 1 is the "
                        "dense host, one cell per task and seed (default: 1 0.5 0.1 0.01 ticket)")
    g.add_argument("--seeds", type=int, default=5, help="repetitions, seeds 0 .. N-1 (default: 5)")
    groups = {"protocol (hashed with each cell: a change makes new cells)":
              p.add_argument_group("protocol (hashed with each cell: a change makes new cells)")}
    opts = _plant_protocol_options()
    flags.add_options(p, opts, {}, groups)
    switches = {o.dest: o.default for o in opts if o.kind is bool}
    for action in p._actions:  # a switch's help says which way it is by default
        if action.dest in switches:
            action.help += f" (default: {'on' if switches[action.dest] else 'off'})"
    g = p.add_argument_group("execution (not hashed)")
    g.add_argument("--workers", type=int, default=2, help="parallel single-threaded processes (default: 2)")
    g.add_argument("--stack-size", type=int, default=None,
                   help="cells of one task trained together as one stacked model (ticketlab.replicates); 1 = one "
                        "at a time; a cell's numbers do not depend on it (on a GPU: up to 16, larger stacks may "
                        "change the last bits) (default: 32 on a CPU, 16 on a GPU)")
    g.add_argument("--device", default="cpu", help="device the cells run on (default: cpu)")
    g.add_argument("--runs-dir", default="runs", help="store folder (default: ./runs)")
    g.add_argument("--out", help="folder for report.md, rows.json, weak.png and strong.png, replaced as a whole "
                                 "(default: RUNS_DIR/reports/plant, i.e. runs/reports/plant)")
    g.add_argument("--no-progress", action="store_true", help="no line per finished cell (default: one line each)")
    p.set_defaults(func=cmd_plant)

    p = sub.add_parser("lr-contrast", help="Rethinking's contrast: IMP at a small and a large learning rate, ticket vs. "
                                           "random re-init at every level, over seeds",
                       description="The same IMP run with two optimiser settings (arms), each over --seeds seeds, with "
                                   "the random re-init baseline at every level; the report gives ticket minus re-init "
                                   "accuracy per arm and level. Each (arm, seed) is an ordinary imp run in the store. "
                                   "Defaults: the demo's digits MLP (without --preset); --preset lenet_mnist for the paper's LeNet.")
    _add_config_options(p, EXPERIMENTS["imp"], LR_CONTRAST_BASE)
    g = p.add_argument_group("arms (each replaces --optimizer, --lr and --momentum)")
    from .experiments.lr_contrast import ARMS

    for arm, settings in ARMS.items():
        opt, lr, momentum = settings["optimizer"], settings["lr"], settings["momentum"]
        g.add_argument(f"--{arm}-optimizer", default=opt, choices=("sgd", "adam", "adamw"),
                       help=f"optimiser of the {arm}-learning-rate arm (default: {opt})")
        g.add_argument(f"--{arm}-lr", type=float, default=lr, help=f"its learning rate (default: {lr:g})")
        g.add_argument(f"--{arm}-momentum", type=float, default=momentum, help=f"its SGD momentum (default: {momentum:g})")
    g.add_argument("--seeds", type=int, default=3, help="repetitions per arm, seeds 0 .. N-1 (default: 3)")
    g.add_argument("--out", help="folder for report.md and report.png (default: RUNS_DIR/reports/lr-contrast-<config "
                                 "digest>-<N>seeds)")
    _add_run_options(p, threads=1)
    p.set_defaults(func=cmd_lr_contrast)

    p = sub.add_parser("ls", help="list runs in the store")
    p.add_argument("filters", nargs="*", metavar="KEY=VALUE", help="e.g. dataset=mnist reset=rewind status=complete")
    p.add_argument("--reindex", action="store_true", help="rebuild the index from the run folders")
    p.add_argument("--runs-dir", default="runs", help="store folder (default: ./runs)")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("verify", help="check every stored file against its checksum (nothing is changed)")
    p.add_argument("runs", nargs="*", help="run hashes or prefixes (default: every run)")
    p.add_argument("--runs-dir", default="runs", help="store folder (default: ./runs)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("migrate", help="upgrade a store written before checksums (seals every file that parses)")
    p.add_argument("--runs-dir", default="runs", help="store folder (default: ./runs)")
    p.set_defaults(func=cmd_migrate)
    p = sub.add_parser("export", help="a stored ticket as a standalone model (plain or sparse), with measured latency",
                       description="Export a stored ticket (an IMP level, a prune / sparse / early-bird run's "
                                   "training, a transfer level, any unit): its mask applied to the weights it "
                                   "trained to, as a folder (ticket.json, weights.safetensors, export.json) that "
                                   "ticketlab.load_ticket(folder) turns into a ready nn.Module without the store. "
                                   "'sparse' stores kept weights only and runs each Linear layer in the form "
                                   "(csr, csr_rows or dense) measured fastest here at batch 1 and --batch. "
                                   "See docs/export.md.")
    p.add_argument("run", help="run hash (or unique prefix)")
    p.add_argument("--level", type=int, help="IMP (or transfer) level to export (default: the last completed one)")
    p.add_argument("--branch", default="ticket", choices=("ticket", "reinit", "random"),
                   help="which of the level's trainings: the ticket or a baseline / control (default: ticket)")
    p.add_argument("--unit", help="any completed unit of the run, e.g. train (prune, sparse), ticket_retrain "
                                  "(early-bird), level_03/random, a deconstruct grid's ticket (default: the run's "
                                  "ticket)")
    p.add_argument("--format", default="standalone", choices=("standalone", "sparse", "shrunk", "onnx"),
                   help="standalone: dense weights, pruned entries 0; sparse: kept weights, CSR where measured faster; "
                        "shrunk: the physically smaller model without the channels the mask empties (structured "
                        "tickets; the [structured] extra); onnx: needs the optional onnx and onnxruntime packages "
                        "(default: standalone)")
    p.add_argument("--onnx", action="store_true",
                   help="also write model.onnx of the exported model, checked under onnxruntime within 1e-5; with "
                        "--format shrunk: the physically smaller model (the [onnx] and [structured] extras) "
                        "(default: no)")
    p.add_argument("--batch", type=int, default=60, help="batch size measured besides batch 1 (default: 60)")
    p.add_argument("--out", help="export folder (default: RUNS_DIR/exports/<hash>-level_<L>-<format>)")
    p.add_argument("--input-shape", type=int, nargs="+", metavar="N",
                   help="one sample's shape, e.g. 1 28 28 (default: read from the run's data set)")
    p.add_argument("--num-classes", type=int, help="number of classes (default: read from the run's data set)")
    p.add_argument("--runs-dir", default="runs", help="store folder (default: ./runs)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch while measuring; the choice of "
                                                          "forms holds for this thread count (default: 1)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("report", help="tables and plots of stored runs (any kinds, one section per kind)")
    p.add_argument("runs", nargs="+", metavar="RUN_OR_FILTER",
                   help="run hashes (or unique prefixes), and/or ls filters that choose a set of runs "
                        "(experiment=imp dataset=mnist 'final_test_accuracy>0.9')")
    p.add_argument("--out", help="folder for report.md and the plots (default: the run's folder; for several runs "
                                 "RUNS_DIR/reports/<their hashes>; for plant studies and cells "
                                 "RUNS_DIR/reports/plant-<their hashes>, replaced as a whole)")
    p.add_argument("--html", action="store_true",
                   help="also write report.html beside report.md: one self-contained page (plots embedded, no "
                        "network) with every run's status, config, warnings and its kind's tables (default: off)")
    p.add_argument("--runs-dir", default="runs", help="store folder (default: ./runs)")
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


__all__ = ["main", "build_parser", "config_from_args", "imp_config_from_args", "prune_config_from_args",
           "sparse_config_from_args", "early_bird_config_from_args", "PRESETS", "DEMO"]
