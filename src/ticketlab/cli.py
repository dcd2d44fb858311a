"""ticketlab: lottery tickets and sparse training on PyTorch.

Every run is stored under --runs-dir (default ./runs) in a folder named by the hash of its settings:
the same command finds its finished results, and an interrupted run continues where it stopped.
Run "ticketlab COMMAND --help" for a command's options and their defaults.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, flags
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


def _add_experiment(sub: Any, e: Experiment) -> None:
    """``ticketlab <e.name>``: the options generated from e's config fields, --preset and the run options."""
    p = sub.add_parser(e.name, help=e.help, description=e.help)
    groups = {"data and model": p.add_argument_group("data and model")}
    groups["data and model"].add_argument("--preset", choices=sorted(PRESETS),
                                          help="paper settings to start from; flags given override them")
    flags.add_options(p, flags.options(e.config_cls, e.group), e.base, groups)
    _add_run_options(p, e.threads)
    p.set_defaults(func=_run_experiment, experiment=e)


def config_from_args(args: argparse.Namespace, experiment: Experiment | None = None,
                     base: dict[str, Any] | None = None) -> Any:
    """The config a command line describes: field defaults <- the command's base <- --preset <- flags."""
    e = experiment or args.experiment
    layers = {**(e.base if base is None else base), **(PRESETS[args.preset] if getattr(args, "preset", None) else {})}
    opts = flags.options(e.config_cls, e.group)
    values = flags.values(opts, args, layers)
    if e.finish is not None:
        e.finish(values)
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


def _run_experiment(args: argparse.Namespace) -> int:
    """Run the command's config in the store, then write and print its report."""
    from .store import Store
    from .training import resolve_device

    e: Experiment = args.experiment
    if e.intro:
        print(e.intro)
    config = config_from_args(args)
    _set_threads(args)
    resolve_device(args.device)  # a missing GPU is reported before the store is touched
    store = Store(args.runs_dir)
    started = time.time()
    e.run(config, store, device=args.device, progress=not args.no_progress)
    run = store.run(config_hash(config))
    print(f"\nfinished in {time.time() - started:.1f} s; results in {run.path}")
    _write_report([run.hash], store, run.path)
    return 0


def _write_report(hashes: Sequence[str], store, out: Path) -> None:
    """report.md and plots for the given runs: one section per kind of run, by its record's report.

    The first kind's main plot is report.png, a later kind's report_<kind>.png.
    """
    from .atomic import atomic_write_text

    by_kind: dict[str, list[Any]] = {}
    for h in hashes:
        run = store.run(h)
        by_kind.setdefault(run.read_json("config.json")["experiment"], []).append(run)
    records = {kind: experiment_of(kind) for kind in by_kind}  # an unknown kind fails before anything is written
    known = [e.config_cls.experiment for e in EXPERIMENTS.values()]
    out = Path(out)
    parts, plots = [], []
    for i, kind in enumerate(sorted(by_kind, key=known.index)):
        text, pngs = records[kind].report(by_kind[kind], out / ("report.png" if i == 0 else f"report_{kind}.png"))
        parts.append(text)
        plots += pngs
    text = "\n\n".join(parts)
    atomic_write_text(out / "report.md", text + "\n")
    print(text)
    for png in plots:
        print(f"\nplot: {png}")
    print(f"table: {out / 'report.md'}")


def cmd_plant(args: argparse.Namespace) -> int:
    """The Plant 'n' Seek benchmark: tables and plots in --out (no store: cells are cheap)."""
    from .atomic import atomic_write_text, remove_stale_temp_files
    from .planting.benchmark import benchmark_table, plot_benchmark, run_benchmark

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


def _ls_filters(texts: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE filters of ``ls``; anything else is one clear error."""
    bad = [t for t in texts if "=" not in t or t.startswith("=")]
    if bad:
        raise ConfigError(f"ls filters are KEY=VALUE, got {bad[0]!r}; e.g. ticketlab ls status=complete dataset=mnist")
    return dict(t.split("=", 1) for t in texts)


def cmd_ls(args: argparse.Namespace) -> int:
    from .store import Store

    filters = _ls_filters(args.filters)
    store = Store(args.runs_dir)
    if args.reindex:
        print(f"re-indexed {store.reindex()} runs")
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

    from .planting.benchmark import METHODS as PLANT_METHODS

    p = sub.add_parser("plant", help="the Plant 'n' Seek benchmark: find planted tickets with every method")
    p.add_argument("--tasks", nargs="+", default=["relu", "circle", "helix"], choices=("relu", "circle", "helix"),
                   help="planted-ticket tasks: relu and helix (regression), circle (classification) "
                        "(default: relu circle helix)")
    p.add_argument("--methods", nargs="+", default=list(PLANT_METHODS), choices=(*PLANT_METHODS, "ticket"),
                   help="pruning methods to compare; 'ticket' is the planted ticket itself (the reference) "
                        f"(default: {' '.join(PLANT_METHODS)})")
    p.add_argument("--kept", nargs="+", default=["1", "0.5", "0.1", "0.01", "ticket"],
                   help="fractions of host weights kept, or 'ticket' (the planted ticket's own) "
                        "(default: 1 0.5 0.1 0.01 ticket)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell (default: 3)")
    p.add_argument("--depth", type=int, default=5,
                   help="layers of the target network and of the host it is planted in (default: 5)")
    p.add_argument("--width", type=int, default=100, help="units per hidden layer of the host network (default: 100)")
    p.add_argument("--epochs", type=int, default=10,
                   help="training epochs of the kept weights (and of edge-popup's scores) (default: 10)")
    p.add_argument("--workers", type=int, default=2, help="parallel single-threaded processes (default: 2)")
    p.add_argument("--out", default="runs/reports/plant",
                   help="folder for report.md, rows.json and the plots (default: runs/reports/plant)")
    p.add_argument("--no-progress", action="store_true", help="no line per finished cell")
    p.set_defaults(func=cmd_plant)

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
    p = sub.add_parser("report", help="tables and plots of stored runs (any kinds, one section per kind)")
    p.add_argument("runs", nargs="+", help="run hashes (or unique prefixes)")
    p.add_argument("--out", help="folder for report.md and the plots (default: the run's folder; for several runs "
                                 "RUNS_DIR/reports/<their hashes>)")
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
