"""``ticketlab sweep``: a grid of runs of one procedure on a local process pool or on Ray.

A sweep spec is a procedure (any command of ``EXPERIMENTS``: imp, prune, sparse, ...), fixed options
and grid axes. It is written as a small TOML file::

    procedure = "prune"
    name = "prune-digits"                 # optional: the sweep folder's name
    [options]                             # fixed: the command's flags, by name (dest or flag spelling)
    dataset = "digits"
    model = "mlp"
    model_option = {hidden = [32]}
    steps = "2ep"
    [grid]                                # axes: every combination is one run
    seed = [0, 1, 2]
    density = [0.1, 0.02]
    [[cases]]                             # optional lists: each case is crossed with the grid
    method = "snip"
    [[cases]]
    method = "synflow"
    rounds = 10
    density = 0.1                         # a case fixes what it names: no density axis in this case

or on the command line, where an option given several values is an axis::

    ticketlab sweep prune --dataset digits --method snip synflow --seed 0 1 2 --density 0.1 0.02

Every combination becomes an argument list of the single command (``ticketlab prune ...``), parsed by
the parser that command uses and turned into its config by ``cli.config_from_args`` (presets,
defaults and cross-option rules included): a sweep run has exactly the hash, folder and results of
the single command. Runs already complete in the Store are skipped; the rest run on a local
process pool (default) or as Ray tasks (``--backend ray``); one line per finished run gives the
sweep's count and ETA; the sweep ends with one report of the whole study (``report.md`` and plots)
and ``sweep.json`` (every run's hash, axis values, status, attempts, threads) in the sweep folder.

``--stack`` (imp, prune, sparse): the runs that share data, model and training settings are trained
as stacked models (``ticketlab.replicates``), each then the single command's ``--seeds`` run (its own
hash), one task per stack (``stacked_runs``, ``stack_groups``).

Failures: a worker that dies (killed process, broken pool, Ray worker or node crash) has its run
retried, up to ``--retries`` times; the retry continues from the run's last checkpoint (the Store
resumes every procedure). A run that fails with a user error (bad option, missing data, ...) or any
other exception is reported once and not retried. A run whose lock another live process holds (a
second sweep over the same store) waits until that process lets go, then is re-checked. The exit
code is 0 when every run is complete, 1 otherwise. See docs/sweep.md.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import shlex
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, config_hash

__all__ = ["SweepRun", "SweepSpec", "SweepResult", "add_sweep_parser", "choose_parallelism", "cmd_sweep",
           "expand", "experiment_parser", "load_spec", "run_sweep", "spec_from_argv", "spec_from_dict", "stack_groups",
           "stacked_runs"]

Fragment = tuple[str, ...]  # a piece of a command line: ("--seed", "1"), ("--model-option", "hidden=[32]")

# Environment variable for tests of the retry path: "HASH_PREFIX:FILE_NAME" makes the worker running
# that run exit abruptly (os._exit) right after its first completed write of a file of that name, once
# per run and store (a marker file in the store root remembers it fired).
FAULT_ENV = "TICKETLAB_SWEEP_FAULT"

# Imported once by the fork server, so a new worker (and every worker after a crash) starts with them
# (PyTorch's optimisers import torch._dynamo on their first step; digits / moons need scikit-learn):
# each run would otherwise pay ~5 s of imports in a fresh process. A module that is missing is skipped.
PRELOAD = ("ticketlab.sweep", "ticketlab.experiments.registry", "torch._dynamo", "sklearn.datasets")

SMALL_MODEL = 1_000_000  # parameters: below this, one thread per run is as fast as several


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are ConfigErrors (a sweep names the combination), not exits."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def experiment_parser(procedure: str) -> argparse.ArgumentParser:
    """The config options of ``ticketlab <procedure>`` exactly as that command parses them (without the
    run options --runs-dir, --device, --threads, --no-progress, which belong to the sweep)."""
    from .cli import _add_config_options
    from .experiments.registry import EXPERIMENTS

    if procedure not in EXPERIMENTS:
        raise ConfigError(f"unknown procedure {procedure!r} for a sweep; one of: {', '.join(EXPERIMENTS)} "
                          "(or a .toml spec file)")
    e = EXPERIMENTS[procedure]
    p = _Parser(prog=f"ticketlab {procedure}", description=e.help, allow_abbrev=False)
    _add_config_options(p, e, e.base)
    p.set_defaults(experiment=e)
    return p


# --- specs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """A procedure, fixed command-line fragments, axes of alternative fragments, and optional cases
    (each a list of fragments, crossed with the axes)."""

    procedure: str
    fixed: tuple[Fragment, ...] = ()
    axes: tuple[tuple[str, tuple[tuple[str, Fragment], ...]], ...] = ()  # (key, ((shown value, fragment), ...))
    cases: tuple[tuple[tuple[str, str, Fragment], ...], ...] = ()         # each: ((key, shown value, fragment), ...)
    name: str | None = None

    def describe(self) -> dict[str, Any]:
        """What sweep.json records of the spec."""
        return {"procedure": self.procedure, "fixed": [list(f) for f in self.fixed],
                "axes": {k: [v for v, _ in values] for k, values in self.axes},
                "cases": [{k: v for k, v, _ in case} for case in self.cases], "name": self.name}


@dataclass(frozen=True)
class SweepRun:
    """One combination: its values on the axes (and case), its command line and its config."""

    values: dict[str, str]
    argv: tuple[str, ...]
    config: Any
    hash: str


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of the parser -> its action."""
    return {s: a for a in parser._actions for s in a.option_strings}


def _is_flag(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)
        return False  # a negative number is a value
    except ValueError:
        return True


def _single_value(action: argparse.Action) -> bool:
    """An option that takes exactly one value (several values given make it an axis)."""
    return action.nargs is None and not isinstance(action, argparse._AppendAction)


def spec_from_argv(procedure: str, argv: Sequence[str], name: str | None = None) -> SweepSpec:
    """The spec of ``ticketlab sweep PROCEDURE ARGV``: an option of one value given several values (or
    given several times) is an axis; options that take several values (--baselines, --milestones) or
    repeat (--model-option) keep their meaning and are fixed (sweep them from a TOML spec)."""
    parser = experiment_parser(procedure)
    actions = _actions(parser)
    groups: list[tuple[str, list[str]]] = []  # (flag as given, values), in order
    for token in argv:
        if _is_flag(token):
            flag, eq, value = token.partition("=")
            if flag not in actions:
                raise ConfigError(f"ticketlab {procedure} has no option {flag}; `ticketlab {procedure} --help` lists "
                                  "them (the run options --runs-dir, --device, --threads belong to the sweep)")
            groups.append((flag, [value] if eq else []))
        elif not groups:
            raise ConfigError(f"unexpected value {token!r} before any option in the sweep of {procedure}")
        else:
            groups[-1][1].append(token)
    fixed: list[Fragment] = []
    axes: dict[str, list[tuple[str, Fragment]]] = {}
    order: list[str] = []
    for flag, vals in groups:
        action = actions[flag]
        if action.nargs == 0:  # a switch
            if vals:
                raise ConfigError(f"{flag} is a switch and takes no value, got {' '.join(vals)}")
            fixed.append((flag,))
        elif _single_value(action):
            if not vals:
                raise ConfigError(f"{flag} needs a value")
            key = action.dest
            prior = [f for f in fixed if f[0] in action.option_strings]
            if key in axes or len(vals) > 1 or prior:
                for f in prior:  # an option first given once, then again: all its values make the axis
                    fixed.remove(f)
                    axes.setdefault(key, []).append((f[1], f))
                if key not in order:
                    order.append(key)
                axes.setdefault(key, []).extend((v, (flag, v)) for v in vals)
            else:
                fixed.append((flag, vals[0]))
        elif isinstance(action, argparse._AppendAction):
            if action.nargs is None and len(vals) != 1:
                raise ConfigError(f"{flag} takes one value per use (repeat the flag for more), got {len(vals)}")
            fixed.append((flag, *vals))
        else:  # nargs "+": one value that is a list
            if not vals:
                raise ConfigError(f"{flag} needs at least one value")
            fixed.append((flag, *vals))
    return SweepSpec(procedure, tuple(fixed), tuple((k, tuple(axes[k])) for k in order), (), name)


def _lookup(actions: Mapping[str, argparse.Action], key: str, procedure: str) -> tuple[str, argparse.Action, str]:
    """The option a spec key names, and how: by its flag (``model-option``, ``no-prune-first``), by the
    flag of a switch that turns it off (``prune_first = false`` for --no-prune-first) or by its dest
    (``model_options``, ``include_first``)."""
    flag = "--" + key.replace("_", "-")
    if flag in actions:
        return flag, actions[flag], "flag"
    if "--no-" + flag[2:] in actions:
        return "--no-" + flag[2:], actions["--no-" + flag[2:]], "negated"
    for s, a in actions.items():
        if a.dest == key or a.dest == key.replace("-", "_"):
            return s, a, "dest"
    raise ConfigError(f"sweep spec: ticketlab {procedure} has no option {key!r}; `ticketlab {procedure} --help` "
                      "lists them (give a flag without its dashes, e.g. model-option, or its name, e.g. model_options)")


def _token(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _fragment(actions: Mapping[str, argparse.Action], key: str, value: Any, procedure: str) -> Fragment:
    """A TOML value as the command-line fragment the single command would be given."""
    flag, action, how = _lookup(actions, key, procedure)
    if action.nargs == 0:  # a switch: `x = true` gives --x; `x = false` gives --no-x; by dest: the field's value
        if not isinstance(value, bool):
            raise ConfigError(f"sweep spec: {key} is a switch; give true or false, not {value!r}")
        give = {"flag": value, "negated": not value, "dest": value == action.const}[how]
        return (flag,) if give else ()
    if isinstance(action, argparse._AppendAction):
        if isinstance(value, dict):  # --model-option hidden=[32] --model-option ...
            return tuple(t for k, v in value.items() for t in (flag, f"{k}={_token(v)}"))
        items = value if isinstance(value, list) else [value]
        return tuple(t for v in items for t in (flag, _token(v)))
    if _single_value(action):
        if isinstance(value, (list, dict)):
            raise ConfigError(f"sweep spec: {key} takes one value, got {value!r} (an axis goes under [grid])")
        return (flag, _token(value))
    items = value if isinstance(value, list) else [value]
    return (flag, *map(_token, items))


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else _token(value)


def spec_from_dict(data: Mapping[str, Any], source: str = "sweep spec") -> SweepSpec:
    """The spec of a parsed TOML document (``procedure``, ``name``, ``[options]``, ``[grid]``, ``[[cases]]``)."""
    unknown = sorted(set(data) - {"procedure", "name", "options", "grid", "cases"})
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}; a spec has procedure, name, [options], [grid] "
                          "and [[cases]]")
    procedure = data.get("procedure")
    if not isinstance(procedure, str):
        raise ConfigError(f"{source}: `procedure = \"imp\"` (or prune, sparse, ...) is required")
    actions = _actions(experiment_parser(procedure))
    options = data.get("options", {})
    grid = data.get("grid", {})
    cases = data.get("cases", [])
    if not isinstance(options, dict) or not isinstance(grid, dict) or not isinstance(cases, list):
        raise ConfigError(f"{source}: [options] and [grid] are tables, [[cases]] an array of tables")
    fixed = tuple(f for k, v in options.items() if (f := _fragment(actions, k, v, procedure)))
    dest = lambda key: _lookup(actions, key, procedure)[1].dest  # noqa: E731 - the key's option, however spelt
    axes = []
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: grid axis {key!r} needs a non-empty list of values, got {values!r}")
        axes.append((dest(key), tuple((_shown(v), _fragment(actions, key, v, procedure)) for v in values)))
    case_list = []
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not case:
            raise ConfigError(f"{source}: case {i + 1} must be a non-empty table of options")
        case_list.append(tuple((dest(k), _shown(v), _fragment(actions, k, v, procedure)) for k, v in case.items()))
    name = data.get("name")
    if name is not None and (not isinstance(name, str) or not name or "/" in name or name.startswith(".")):
        raise ConfigError(f"{source}: name must be a plain folder name, got {name!r}")
    return SweepSpec(procedure, fixed, tuple(axes), tuple(case_list), name)


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """A TOML spec file."""
    import tomllib

    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"sweep spec {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep spec {path} is not valid TOML: {exc}") from None
    return spec_from_dict(data, str(path))


def expand(spec: SweepSpec) -> list[SweepRun]:
    """Every combination as the single command's config, in order (cases, then axes in the order
    given, the last varying fastest); an option a case sets is not varied by its axis in that case
    (``method = "dense"`` with ``density = 1.0`` beside a density axis); a combination that repeats
    an earlier config is dropped.
    An invalid combination is a ConfigError naming it (nothing has run yet)."""
    from .cli import config_from_args

    parser = experiment_parser(spec.procedure)
    runs: list[SweepRun] = []
    seen: set[str] = set()
    problems: list[str] = []
    for case in (spec.cases or ((),)):
        named = {k for k, _, _ in case}
        axes = [(key, values) for key, values in spec.axes if key not in named]  # a case fixes what it names
        for choice in itertools.product(*(values for _, values in axes)):
            values = {k: v for k, v, _ in case}
            values.update({key: shown for (key, _), (shown, _) in zip(axes, choice)})
            argv = tuple(t for frag in (*spec.fixed, *(f for _, _, f in case), *(f for _, f in choice)) for t in frag)
            label = " ".join(f"{k}={v}" for k, v in values.items()) or "(the fixed options)"
            try:
                config = config_from_args(parser.parse_args(list(argv)))
            except ConfigError as exc:
                problems.append(f"{label}: {exc}")
                continue
            except (ValueError, TypeError) as exc:
                problems.append(f"{label}: {exc}")
                continue
            h = config_hash(config)
            if h in seen:
                continue
            seen.add(h)
            runs.append(SweepRun(values, argv, config, h))
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ConfigError(f"{len(problems)} combination(s) of the sweep are not valid runs of "
                          f"ticketlab {spec.procedure} (nothing was run):\n  {shown}")
    return runs


def stacked_runs(procedure: str, runs: Sequence[SweepRun]) -> list[SweepRun]:
    """``--stack``: each run as the single command's ``--seeds`` run (``train.numerics = "stacked"``,
    its own hash) where the procedure and model stack, else unchanged (it runs one by one, as
    ``--seeds`` then does); the runs that share data, model and training settings then train as one stack."""
    from dataclasses import replace

    from .config import to_dict
    from .data import load_dataset
    from .experiments.registry import EXPERIMENTS
    from .experiments.stacked import stacked_train

    e = EXPERIMENTS[procedure]
    if e.run_seeds is None:
        raise ConfigError(f"--stack: ticketlab {procedure} has no stacked runs (imp, prune and sparse have); drop "
                          "--stack")
    out = []
    refusals: dict[str, str | None] = {}  # per setting (IMP's also reads its prune options)
    datasets: dict[str, Any] = {}  # each data set loaded once, for every setting's refusal
    for r in runs:
        key = config_hash(replace(r.config, seed=0))
        if key not in refusals:
            d = r.config.data
            data_key = json.dumps(to_dict(d), sort_keys=True)
            if data_key not in datasets:
                datasets[data_key] = load_dataset(d.name, d.root, **d.options)
            refusals[key] = e.stack_refusal(r.config, datasets[data_key])
        if refusals[key] is None:
            config = replace(r.config, train=stacked_train(r.config.train))
            out.append(SweepRun(r.values, r.argv, config, config_hash(config)))
        else:
            out.append(r)
    return out


def stack_groups(runs: Sequence[SweepRun]) -> list[list[SweepRun]]:
    """The runs in groups that train as one stack (in the order of their first run): the stacked runs
    that share their data, model and training settings (``shared_settings``: seeds, methods, kept
    fractions, rates, resets may differ); every other run alone."""
    from .experiments.stacked import STACKED, shared_settings

    groups: dict[str, list[SweepRun]] = {}
    for r in runs:
        stacked = getattr(getattr(r.config, "train", None), "numerics", None) == STACKED
        groups.setdefault(shared_settings(r.config) if stacked else r.hash, []).append(r)
    return list(groups.values())


# --- workers x threads ----------------------------------------------------------------------------
_FILE_SHAPES = {"mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10),
                "cifar100": ((3, 32, 32), 100)}  # read from files: their shapes are known without loading them


def model_parameters(config: Any) -> int | None:
    """The number of parameters of the config's model (None when it cannot be told cheaply)."""
    data, model = getattr(config, "data", None), getattr(config, "model", None)
    if data is None or model is None or not hasattr(model, "name"):
        return None
    try:
        import torch

        from .data import load_dataset
        from .models import build_model

        if data.name in _FILE_SHAPES:
            shape, classes = _FILE_SHAPES[data.name]
        else:  # generated or shipped data sets are cheap to load
            splits = load_dataset(data.name, data.root, **data.options)
            shape, classes = splits.input_shape, splits.num_classes
        with torch.random.fork_rng(devices=[]):
            net = build_model(model.name, shape, classes, **model.options)
        return sum(p.numel() for p in net.parameters())
    except Exception:  # the worker reports the real problem
        return None


def _largest_model(runs: Sequence[SweepRun], most: int = 8) -> int | None:
    """Parameters of the largest model among the runs' distinct (data, model) settings (the first
    ``most`` of them; each is built once)."""
    seen: dict[str, Any] = {}
    for r in runs:
        data, model = getattr(r.config, "data", None), getattr(r.config, "model", None)
        key = json.dumps([repr(data), repr(model)])
        if key not in seen and len(seen) < most:
            seen[key] = r.config
    sizes = [s for s in map(model_parameters, seen.values()) if s is not None]
    return max(sizes, default=None)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_parallelism(runs: int, parameters: int | None, cores: int | None = None, workers: int | None = None,
                       threads: int | None = None, default_threads: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) for ``runs`` runs of a model of ``parameters`` parameters.

    Small models (under ``SMALL_MODEL`` parameters: MLPs, LeNet, ResNet-20) gain nothing from a
    second thread and lose much on a busy machine, so they run one thread each and as many workers
    as cores; larger ones take up to 4 threads each. Workers never exceed the runs; spare cores go
    to the threads of large models. ``workers`` / ``threads`` given are kept as they are.
    """
    if (workers is not None and workers < 1) or (threads is not None and threads < 1):
        raise ConfigError(f"--workers and --threads must be >= 1, got {workers} and {threads}")
    cores = cores or available_cores()
    small = parameters is not None and parameters < SMALL_MODEL
    if threads is None:
        threads = default_threads or (1 if small else min(4, cores))
        if workers is not None:
            threads = min(threads, max(1, cores // workers)) if small else max(1, cores // workers)
    if workers is None:
        workers = max(1, min(max(runs, 1), cores // threads))
        if not small and threads < 4 and default_threads is None:
            threads = max(threads, min(4, cores // workers))
    return workers, threads


# --- the worker -----------------------------------------------------------------------------------
def _install_fault(task: Mapping[str, Any]) -> bool:
    """Test hook (FAULT_ENV, carried in the task): exit abruptly after a chosen write, once. Whether
    it was installed."""
    spec = task.get("fault")
    if not spec or ":" not in spec:
        return False
    prefix, name = spec.split(":", 1)
    if not task["hash"].startswith(prefix):
        return False
    marker = Path(task["runs_dir"]) / f".sweep-fault-{task['hash']}"
    if marker.exists():
        return False
    import ticketlab.atomic as atomic

    def hook(event: str, tmp: Path, path: Path) -> None:
        if event == "after_rename" and path.name == name and task["hash"] in path.parts:
            marker.touch()
            os._exit(86)  # a dying worker: no cleanup, no exception

    atomic.fault_hook = hook
    return True


def _creation_race(run: Any, exc: BaseException) -> bool:
    """Whether ``exc`` is the mark of two processes creating the same run folder at once.

    ``Store.open_run`` writes a new run's config.json without a lock, after removing the temp files
    a killed writer may have left: a second process creating the same run at that moment removes the
    first one's temp file (FileNotFoundError on its rename) or sees it and refuses the folder ("holds
    files but no config.json"). Once config.json is in place, claiming the run again is safe: the
    run's flock then decides who writes it.
    """
    if isinstance(exc, FileNotFoundError):
        racing = Path(str(exc.filename or "")).name.startswith(".config.json.")
    else:
        racing = "holds files but no config.json" in str(exc)
    deadline = time.monotonic() + 5.0
    while racing and not run.file("config.json").exists():  # the other process is still writing it
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return racing


def execute(task: Mapping[str, Any]) -> dict[str, Any]:
    """Run one sweep run in this process (a pool worker or a Ray task) and say how it went.

    Never raises for the run's own failures: a user error, a divergence or another exception is
    returned as a status (so the scheduler can tell them from a dying worker, which it retries).
    """
    import torch

    from .errors import USER_ERRORS
    from .experiments.common import MaskViolation
    from .experiments.registry import EXPERIMENTS
    from .store import Run, RunBusyError, Store, StoreError, index_fields
    from .training import DivergenceError

    torch.set_num_threads(int(task["threads"]))
    started = time.perf_counter()
    h = task["hash"]
    out: dict[str, Any] = {"hash": h, "pid": os.getpid(), "threads": torch.get_num_threads()}
    log_path = Path(task["log"]) if task.get("log") else None
    log_file = None
    faulty = False
    try:
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = log_path.open("a", buffering=1)
            log_file.write(f"--- attempt {task.get('attempt', 1)} pid {os.getpid()} threads {out['threads']} "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lines_seen: list[str] = []

        def log(text: str) -> None:
            if "nothing recomputed" in text:  # every procedure's line for a run found complete under its lock
                lines_seen.append(text)
            if log_file is not None:
                log_file.write(text + "\n")

        store = Store(task["runs_dir"])
        if task.get("hashes"):  # runs sharing data, model and training settings, as one stack (--stack)
            faulty = _install_fault(task)
            try:
                EXPERIMENTS[task["procedure"]].run_seeds(task["configs"], store, device=task.get("device"),
                                                         progress=False, log=log)
            except DivergenceError as exc:  # the others were stored; each run's status is read below
                out["message"] = str(exc)
            out.update(status="stack", runs={})
            for each in task["hashes"]:
                done = Run(store.root / each, each, store).complete_summary() if (store.root / each).is_dir() else None
                out["runs"][each] = ({"status": "complete", "summary": index_fields(done)} if done is not None else
                                     {"status": "diverged", "error": "DivergenceError",
                                      "message": out.get("message", "diverged in its stack")})
            return out
        run = Run(store.root / h, h, store)
        if run.file("config.json").exists() and (done := run.complete_summary()) is not None:
            out.update(status="reused", summary=index_fields(done))  # completed meanwhile by another process
            return out
        # resumed: an earlier attempt (or command) left more than the folder's config and lock
        out["resumed"] = run.path.is_dir() and any(p.name not in ("config.json", ".lock") for p in run.path.iterdir())
        faulty = _install_fault(task)
        for claim in range(3):
            try:
                EXPERIMENTS[task["procedure"]].run(task["config"], store, device=task.get("device"), progress=False,
                                                   log=log)
                break
            except (OSError, StoreError) as exc:
                if claim == 2 or isinstance(exc, RunBusyError) or not _creation_race(run, exc):
                    raise
                log(f"  another process created the run folder at the same moment ({exc}); claiming it again")
                time.sleep(0.2 * (claim + 1))
        summary = store.run(h).complete_summary()
        # found complete once its lock was ours: another process computed it meanwhile
        out.update(status="reused" if lines_seen else "complete", summary=index_fields(summary) if summary else {})
    except RunBusyError as exc:
        out.update(status="busy", message=str(exc))
    except DivergenceError as exc:
        out.update(status="diverged", error="DivergenceError", message=str(exc))
    except MaskViolation as exc:
        out.update(status="failed", error="MaskViolation", message=f"internal error: {exc}")
    except USER_ERRORS as exc:
        out.update(status="error", error=type(exc).__name__, message=str(exc))
    except OSError as exc:
        from .errors import describe_os_error

        out.update(status="error", error=type(exc).__name__, message=describe_os_error(exc))
    except Exception as exc:  # noqa: BLE001 - reported once with its traceback, not retried
        out.update(status="failed", error=type(exc).__name__, message=f"{exc}", traceback=traceback.format_exc())
    finally:
        if faulty:
            import ticketlab.atomic as atomic

            atomic.fault_hook = None
        out["seconds"] = time.perf_counter() - started
        if log_file is not None:
            if out.get("status") not in (None, "complete"):
                log_file.write(f"{out.get('status')}: {out.get('error', '')} {out.get('message', '')}\n"
                               + out.get("traceback", ""))
            log_file.close()
    return out


# --- backends -------------------------------------------------------------------------------------
class Crashed(Exception):
    """The process running a task died (or the backend lost it); the task may be retried."""


class _PoolBackend:
    """A local ``ProcessPoolExecutor`` (forkserver, else spawn), at most ``workers`` tasks in flight.

    A worker that dies breaks the whole pool: every task in flight then fails with
    ``BrokenProcessPool`` (the pool cannot say which worker died), so each of them counts one
    attempt; the pool is made anew and they continue from their checkpoints.
    """

    name = "local"

    def __init__(self, workers: int):
        self.capacity = workers
        self.workers = workers
        self.pool = None
        self.inflight: dict[Any, dict[str, Any]] = {}
        self._collected: list[tuple[dict[str, Any], dict[str, Any] | Crashed]] = []  # for the next poll

    def _context(self) -> Any:
        import multiprocessing as mp

        if "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(list(PRELOAD))
            return ctx
        return mp.get_context("spawn")

    def submit(self, task: dict[str, Any]) -> None:
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=self._context())
        try:
            self.inflight[self.pool.submit(execute, task)] = task
        except BrokenProcessPool:  # a worker died since the last poll, before its futures said so
            self._collected.extend(self._collect_broken())
            self.pool = ProcessPoolExecutor(self.workers, mp_context=self._context())
            self.inflight[self.pool.submit(execute, task)] = task

    def poll(self, timeout: float | None) -> list[tuple[dict[str, Any], dict[str, Any] | Crashed]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        out, self._collected = self._collected, []
        if not self.inflight:
            return out
        done, _ = wait(list(self.inflight), timeout=0 if out else timeout, return_when=FIRST_COMPLETED)
        broken = False
        for f in done:
            task = self.inflight.pop(f)
            try:
                out.append((task, f.result()))
            except BrokenProcessPool as exc:
                broken = True
                out.append((task, Crashed(f"worker process died ({exc})")))
            except Exception as exc:  # noqa: BLE001 - e.g. a task that cannot be pickled
                out.append((task, {"hash": task["hash"], "status": "failed", "error": type(exc).__name__,
                                   "message": str(exc), "seconds": 0.0}))
        if broken:
            out.extend(self._collect_broken())
        return out

    def _collect_broken(self) -> list[tuple[dict[str, Any], dict[str, Any] | Crashed]]:
        """A broken pool's tasks in flight: they fail too (or finished just before), each with its
        outcome; the pool is shut down (the next submit makes a new one)."""
        from concurrent.futures import wait

        out: list[tuple[dict[str, Any], dict[str, Any] | Crashed]] = []
        rest, _ = wait(list(self.inflight))
        for f in rest:
            task = self.inflight.pop(f)
            try:
                out.append((task, f.result()))
            except Exception as exc:  # noqa: BLE001
                out.append((task, Crashed(f"worker pool broken while this run was in flight ({exc})")))
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = None
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


class _RayBackend:
    """Each run a Ray task asking for ``threads`` CPUs (and one GPU with a CUDA device). Ray's own
    retries are off: a crashed task comes back here and is resubmitted like a pool's, so the attempts
    are counted the same way on both backends."""

    name = "ray"

    def __init__(self, threads: int, device: str | None, address: str | None, cpus: int | None):
        import ray

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False)
            if address:
                kwargs["address"] = address
            elif cpus:
                kwargs["num_cpus"] = cpus
            ray.init(**kwargs)
            self.started = True
        gpus = 1 if device and str(device).startswith("cuda") else 0
        self.remote = ray.remote(execute).options(num_cpus=threads, num_gpus=gpus, max_retries=0,
                                                  retry_exceptions=False)
        total = int(ray.cluster_resources().get("CPU", 1))
        self.capacity = max(1, total // max(threads, 1)) * 2  # keep the cluster busy, not flooded
        self.inflight: dict[Any, dict[str, Any]] = {}

    def submit(self, task: dict[str, Any]) -> None:
        self.inflight[self.remote.remote(task)] = task

    def poll(self, timeout: float | None) -> list[tuple[dict[str, Any], dict[str, Any] | Crashed]]:
        if not self.inflight:
            return []
        ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        out: list[tuple[dict[str, Any], dict[str, Any] | Crashed]] = []
        for ref in ready:
            task = self.inflight.pop(ref)
            try:
                out.append((task, self.ray.get(ref)))
            except self.ray.exceptions.RayTaskError as exc:  # raised inside execute (a BaseException)
                out.append((task, {"hash": task["hash"], "status": "failed", "error": type(exc).__name__,
                                   "message": str(exc), "seconds": 0.0}))
            except self.ray.exceptions.RayError as exc:  # worker / node died, object lost, ...
                out.append((task, Crashed(f"Ray lost the task: {type(exc).__name__}: {str(exc).splitlines()[0]}")))
        return out

    def close(self) -> None:
        for ref in self.inflight:
            self.ray.cancel(ref, force=True)
        if self.started:
            self.ray.shutdown()


# --- the sweep ------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What a sweep did: one record per run (sweep.json's "runs"), the folder, the wall time."""

    records: list[dict[str, Any]]
    folder: Path
    seconds: float
    workers: int
    threads: int
    backend: str
    complete: bool = field(init=False)

    def __post_init__(self) -> None:
        self.complete = all(r["status"] in ("complete", "reused") for r in self.records)

    @property
    def computed(self) -> int:
        return sum(r["status"] == "complete" for r in self.records)

    @property
    def reused(self) -> int:
        return sum(r["status"] == "reused" for r in self.records)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _result_text(summary: Mapping[str, Any]) -> str:
    for key, label in (("final_test_accuracy", "test acc"), ("ticket_test_accuracy", "ticket test acc"),
                       ("test_accuracy", "test acc")):
        if isinstance(summary.get(key), (int, float)):
            return f"{label} {summary[key]:.4f}"
    return "complete"


def sweep_folder(spec: SweepSpec, runs: Sequence[SweepRun], runs_dir: str | os.PathLike) -> Path:
    """RUNS_DIR/sweeps/<name>, or <procedure>-<N>runs-<digest of the hashes> without a name."""
    if spec.name:
        return Path(runs_dir) / "sweeps" / spec.name
    digest = hashlib.sha1(" ".join(sorted(r.hash for r in runs)).encode()).hexdigest()[:8]
    return Path(runs_dir) / "sweeps" / f"{spec.procedure}-{len(runs)}runs-{digest}"


def run_sweep(spec: SweepSpec, runs_dir: str | os.PathLike = "runs", *, backend: str = "local",
              workers: int | None = None, threads: int | None = None, retries: int = 2, device: str | None = None,
              address: str | None = None, out: str | os.PathLike | None = None, report: bool = True,
              print_fn: Callable[[str], None] | None = print, runs: Sequence[SweepRun] | None = None,
              poll_seconds: float = 1.0, stack: bool = False) -> SweepResult:
    """Run every combination of ``spec`` not yet complete in the store; write sweep.json and the report.

    ``print_fn`` gets one line per finished run (None: silent). Returns the records; raises
    ConfigError for an invalid spec before anything runs. ``stack``: the runs that share data,
    model and training settings are trained as stacked models, each the single command's ``--seeds``
    run (``stacked_runs``, ``stack_groups``; given ``runs`` are taken as they are).
    """
    from .atomic import atomic_write_text
    from .experiments.registry import EXPERIMENTS
    from .store import Run, Store

    say = print_fn or (lambda text: None)
    if retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {retries}")
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend must be local or ray, got {backend!r}")
    runs = list(runs) if runs is not None else (stacked_runs(spec.procedure, expand(spec)) if stack else expand(spec))
    store = Store(runs_dir)
    store.require_writable()
    folder = Path(out) if out else sweep_folder(spec, runs, store.root)
    e = EXPERIMENTS[spec.procedure]
    started = time.time()
    records: dict[str, dict[str, Any]] = {}
    todo: list[SweepRun] = []
    for r in runs:
        rec = {"hash": r.hash, "values": r.values, "argv": list(r.argv), "status": "pending", "attempts": 0}
        records[r.hash] = rec
        try:
            summary = Run(store.root / r.hash, r.hash, store).complete_summary()
        except Exception:  # noqa: BLE001 - a damaged summary: the worker reports it properly
            summary = None
        if summary is not None:
            rec.update(status="reused", summary=_scalars(summary))
        else:
            todo.append(r)
    n = len(runs)
    params = _largest_model(todo) if todo else None
    if device and str(device).startswith("cuda") and workers is None and backend == "local":
        workers = 1  # one process per GPU unless asked otherwise
    n_workers, n_threads = choose_parallelism(len(todo), params, workers=workers, threads=threads,
                                              default_threads=e.threads)
    say(f"sweep of {n} {spec.procedure} runs: {n - len(todo)} already complete, {len(todo)} to run"
        + (f" on {backend} with {n_workers} worker(s) x {n_threads} thread(s)" if todo else "")
        + (f" ({params:,} parameters per model)" if params is not None and todo else ""))
    fault = os.environ.get(FAULT_ENV)
    tasks: deque[dict[str, Any]] = deque()
    for group in _spread(stack_groups(todo), n_workers):
        r = group[0]
        task = {"procedure": spec.procedure, "config": r.config, "hash": r.hash, "runs_dir": str(store.root),
                "device": device, "threads": n_threads, "attempt": 0, "fault": fault,
                "log": str(folder / "logs" / f"{r.hash}.log")}
        if len(group) > 1:  # (a stacked run alone is a stack of one: its procedure's run does that)
            task.update(configs=[g.config for g in group], hashes=[g.hash for g in group])
        tasks.append(task)
    waiting: list[dict[str, Any]] = []  # runs whose lock another live process holds
    finished = n - len(todo)
    run_started = time.time()
    done_computed = 0
    first_done: float | None = None
    engine = None
    if todo:
        if backend == "ray":
            try:
                engine = _RayBackend(n_threads, device, address, None if workers is None else n_workers * n_threads)
            except ImportError:
                raise ConfigError("--backend ray needs Ray: pip install 'ticketlab[ray]' (or 'ray>=2.9')") from None
        else:
            engine = _PoolBackend(n_workers)

    def finish(task: Mapping[str, Any], rec: dict[str, Any]) -> None:
        nonlocal finished, first_done
        finished += 1
        left = n - finished
        if done_computed and first_done is None:
            first_done = time.time()
        # the rate from the runs since the first one (whose time includes the workers' start-up)
        if done_computed >= 3:
            eta = (time.time() - first_done) / (done_computed - 1) * left
        else:
            eta = (time.time() - run_started) / done_computed * left if done_computed else float("nan")
        if rec["status"] in ("complete", "reused"):
            what = _result_text(rec.get("summary", {})) + (" (completed by another process)"
                                                           if rec["status"] == "reused" else "")
        else:
            what = f"{rec['status'].upper()}: {rec.get('error', '')} {rec.get('message', '')}".strip()
        values = " ".join(f"{k}={v}" for k, v in rec["values"].items())
        extra = (f"{rec.get('seconds', 0):.1f} s, {rec.get('threads', n_threads)} thread(s)"
                 + (", resumed" if rec.get("resumed") else ""))
        say(f"[{finished}/{n}] {task['hash']} {values}: {what} ({extra}) | "
            f"elapsed {_duration(time.time() - started)}, ETA {_duration(eta) if left else '0 s'}")

    def complete_now(run_hash: str) -> dict[str, Any] | None:
        try:
            return Run(store.root / run_hash, run_hash, store).complete_summary()
        except Exception:  # noqa: BLE001 - a damaged summary: a worker reports it
            return None

    try:
        while tasks or waiting or (engine is not None and engine.inflight):
            for task in list(waiting):  # a run another process held: done by it, or free to continue
                if not any(store.is_being_written(h) for h in _hashes(task)):
                    waiting.remove(task)
                    left = []
                    for h in _hashes(task):
                        if (summary := complete_now(h)) is not None:
                            records[h].update(status="reused", summary=_scalars(summary))
                            finish({"hash": h}, records[h])
                        else:
                            left.append(h)
                    if left:
                        tasks.appendleft(_narrowed(task, left))
            while tasks and len(engine.inflight) < engine.capacity:
                task = tasks.popleft()
                if any(store.is_being_written(h) for h in _hashes(task)):
                    _note_wait(records[task["hash"]], say, task["hash"])
                    waiting.append(task)
                    continue
                task["attempt"] += 1
                for h in _hashes(task):
                    records[h]["attempts"] = task["attempt"]
                engine.submit(task)
            if not engine.inflight:
                if waiting:
                    time.sleep(poll_seconds)
                continue
            for task, result in engine.poll(poll_seconds):
                rec = records[task["hash"]]
                if not isinstance(result, Crashed) and result.get("status") == "stack":
                    for h, each in result["runs"].items():  # one line per run of the stack
                        one = records[h]
                        one.update({k: v for k, v in result.items() if k not in ("hash", "runs", "status", "message")})
                        one.update({k: v for k, v in each.items() if k != "summary"})
                        if each["status"] == "complete":
                            one["summary"] = each.get("summary", {})
                            one["resumed"] = task["attempt"] > 1
                            one["stacked_with"] = len(result["runs"])
                            done_computed += 1
                        finish({"hash": h}, one)
                    continue
                if isinstance(result, Crashed):
                    rec.setdefault("crashes", []).append(str(result))
                    if task["attempt"] <= retries:
                        say(f"  run {task['hash']}: {result}; retrying (attempt {task['attempt'] + 1} of "
                            f"{retries + 1}), it continues from its last checkpoint")
                        tasks.appendleft(task)
                        continue
                    rec.update(status="crashed", message=f"{result} on each of {task['attempt']} attempts")
                elif result["status"] == "busy":
                    task["attempt"] -= 1
                    for h in _hashes(task):
                        records[h]["attempts"] = task["attempt"]
                    _note_wait(rec, say, task["hash"])
                    waiting.append(task)
                    continue
                else:
                    rec.update({k: v for k, v in result.items() if k not in ("hash", "summary")})
                    if result["status"] in ("complete", "reused"):
                        rec["summary"] = result.get("summary", {})
                    if result["status"] == "complete":
                        rec["resumed"] = bool(result.get("resumed")) or task["attempt"] > 1
                        done_computed += 1
                for h in _hashes(task):  # a stack that failed as a whole (crashed, user error): each of its runs
                    if h != task["hash"]:
                        records[h].update({k: v for k, v in rec.items() if k in ("status", "error", "message",
                                                                                  "traceback", "crashes")})
                    finish({"hash": h}, records[h])
    finally:
        if engine is not None:
            engine.close()
    wall = time.time() - started
    ordered = [records[r.hash] for r in runs]
    result = SweepResult(ordered, folder, wall, n_workers, n_threads, backend)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"procedure": spec.procedure, "spec": spec.describe(), "backend": backend, "workers": n_workers,
           "threads": n_threads, "retries": retries, "device": device, "runs_dir": str(store.root),
           "hashes": [r.hash for r in runs], "complete": result.complete, "computed": result.computed,
           "reused": result.reused, "wall_seconds": wall, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "runs": ordered}
    atomic_write_text(folder / "sweep.json", json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    failed = [rec for rec in ordered if rec["status"] not in ("complete", "reused")]
    say(f"\nsweep: {len(ordered) - len(failed)} of {n} runs complete ({result.computed} computed, {result.reused} "
        f"reused) in {_duration(wall)}; {folder / 'sweep.json'}")
    for rec in failed:
        say(f"  NOT COMPLETE {rec['hash']} {' '.join(f'{k}={v}' for k, v in rec['values'].items())}: "
            f"{rec['status']} {rec.get('error', '')}: {rec.get('message', '')}")
    if report:
        complete = [rec["hash"] for rec in ordered if rec["status"] in ("complete", "reused")]
        if complete:
            _report(complete, store, folder, print_fn)
    return result


def _spread(groups: list[list[SweepRun]], workers: int) -> list[list[SweepRun]]:
    """Fewer stacks than workers: cut each into even parts so every worker has one (a replicate's
    numbers do not depend on its stack, so this changes no result)."""
    if not groups or len(groups) >= workers:
        return groups
    parts = -(-workers // len(groups))
    out = []
    for group in groups:
        n = min(parts, len(group))
        out += [group[i::n] for i in range(n)]
    return out


def _hashes(task: Mapping[str, Any]) -> list[str]:
    """The runs a task computes: a stack's (``--stack``), or its one run."""
    return list(task.get("hashes") or [task["hash"]])


def _narrowed(task: dict[str, Any], hashes: Sequence[str]) -> dict[str, Any]:
    """A stack's task for the runs ``hashes`` of it only (the others were completed meanwhile)."""
    if "hashes" not in task:
        return task
    keep = [i for i, h in enumerate(task["hashes"]) if h in set(hashes)]
    out = {**task, "hashes": [task["hashes"][i] for i in keep], "configs": [task["configs"][i] for i in keep]}
    out.update(hash=out["hashes"][0], config=out["configs"][0])
    if len(keep) == 1:
        del out["hashes"], out["configs"]
    return out


def _note_wait(rec: dict[str, Any], say: Callable[[str], None], run_hash: str) -> None:
    if not rec.get("waited"):
        say(f"  run {run_hash} is being written by another process (its lock is held); waiting for it")
    rec["waited"] = True


def _scalars(summary: Mapping[str, Any]) -> dict[str, Any]:
    from .store import index_fields

    return index_fields(dict(summary))


def _report(hashes: Sequence[str], store: Any, folder: Path, print_fn: Callable[[str], None] | None) -> None:
    """report.md and plots of the whole study (``ticketlab report``'s writer); quiet without print_fn."""
    import contextlib
    import io

    from .cli import _write_report

    if print_fn is print:
        _write_report(hashes, store, folder)
        return
    with contextlib.redirect_stdout(io.StringIO()):
        _write_report(hashes, store, folder)


# --- the command ----------------------------------------------------------------------------------
def _add_execution_options(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    d = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    g = p.add_argument_group("execution (not part of any run's config or hash)")
    g.add_argument("--backend", choices=("local", "ray"), default=d("local"),
                   help="local: a process pool on this machine; ray: one Ray task per run (default: local)")
    g.add_argument("--address", default=d(None),
                   help="Ray cluster address (ray://host:10001, or auto) (default: a new local Ray instance)")
    g.add_argument("--workers", type=int, default=d(None),
                   help="runs at once (default: cores / threads, at most the number of runs; 1 with --device cuda)")
    g.add_argument("--threads", type=int, default=d(None),
                   help="PyTorch threads per run (default: 1 for models under 1M parameters, else up to 4)")
    g.add_argument("--retries", type=int, default=d(2),
                   help="times a run whose worker died is retried, from its checkpoint (default: 2)")
    g.add_argument("--device", default=d(None), help="device of every run: cpu, cuda (default: a GPU if present)")
    g.add_argument("--runs-dir", default=d("runs"), help="store folder, shared by every worker (default: ./runs)")
    g.add_argument("--out", default=d(None), help="sweep folder for sweep.json, report.md and the plots "
                                                  "(default: RUNS_DIR/sweeps/<name or procedure-N-runs-digest>)")
    g.add_argument("--name", default=d(None), help="the sweep folder's name under RUNS_DIR/sweeps (default: <procedure>-<N>-runs-<digest>)")
    g.add_argument("--stack", action="store_true", default=d(False),
                   help="train the runs that share data, model and training settings (imp, prune, sparse on a "
                        "plain MLP) together as stacked models, each the single command's --seeds run; other runs "
                        "one by one; see docs/sweep.md")
    g.add_argument("--dry-run", action="store_true", default=d(False),
                   help="list the runs (hash, values, complete or not) and run nothing")
    g.add_argument("--no-progress", action="store_true", default=d(False), help="no line per finished run")


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``ticketlab sweep SPEC [OPTIONS]``: SPEC is a .toml file or a procedure name followed by its
    options, any of them with several values."""
    p = subparsers.add_parser(
        "sweep", help="a grid of runs of one procedure on a local process pool or Ray, with one report",
        description="A grid of runs of one procedure (imp, prune, sparse, ...): SPEC is a TOML file, or a procedure "
                    "name followed by its options, where an option given several values is an axis (ticketlab "
                    "sweep prune --dataset digits --model mlp --method snip synflow --density 0.1 0.02 --seed 0 1 2). "
                    "Each run is exactly the single command's run (same hash and folder); runs complete in the "
                    "store are skipped; a run whose worker died is retried from its checkpoint. Ends with one "
                    "report of the study and sweep.json in the sweep folder. Exit code 0 when every run is "
                    "complete, 1 otherwise. See docs/sweep.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help="a sweep spec .toml file, or a procedure name (imp, prune, sparse, "
                                                "...) followed by its options")
    p.add_argument("options", nargs=argparse.REMAINDER, metavar="OPTION",
                   help="the procedure's options (several values make an axis) and the execution options")
    _add_execution_options(p)
    p.set_defaults(func=cmd_sweep)
    return p


def _split_options(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """The execution options given after SPEC (mixed with the procedure's) taken out of them."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_execution_options(p, suppress=True)
    own, rest = p.parse_known_args(list(args.options or []))
    merged = argparse.Namespace(**{**vars(args), **vars(own)})
    return merged, rest


def cmd_sweep(args: argparse.Namespace) -> int:
    """Expand the spec, run what is missing, write sweep.json and the report; 0 when all complete."""
    from .store import Run, Store

    args, rest = _split_options(args)
    if args.spec.endswith(".toml") or (os.path.sep in args.spec) or Path(args.spec).is_file():
        if rest:
            raise ConfigError(f"options after a spec file are execution options only; got {' '.join(rest)} (put "
                              "the procedure's options in the file)")
        spec = load_spec(args.spec)
        if args.name:
            spec = SweepSpec(spec.procedure, spec.fixed, spec.axes, spec.cases, args.name)
    else:
        if "-h" in rest or "--help" in rest:
            experiment_parser(args.spec).print_help()
            return 0
        spec = spec_from_argv(args.spec, rest, name=args.name)
    runs = expand(spec)
    if args.stack:
        runs = stacked_runs(spec.procedure, runs)
    if args.dry_run:
        store = Store(args.runs_dir)
        for r in runs:
            path = store.root / r.hash
            state = "complete" if path.exists() and Run(path, r.hash, store).complete_summary() is not None else (
                "started" if path.exists() else "new")
            print(f"{r.hash}  {state:<8}  {' '.join(f'{k}={v}' for k, v in r.values.items())}")
        one = shlex.join(runs[0].argv) if runs else ""
        print(f"{len(runs)} runs; command of one: ticketlab {spec.procedure} {one}")
        return 0
    if args.device:
        from .training import resolve_device

        resolve_device(args.device)  # a missing GPU is reported before anything runs
    result = run_sweep(spec, args.runs_dir, backend=args.backend, workers=args.workers, threads=args.threads,
                       retries=args.retries, device=args.device, address=args.address, out=args.out,
                       print_fn=(lambda text: None) if args.no_progress else print, runs=runs, stack=args.stack)
    if args.no_progress:
        print(f"sweep: {sum(r['status'] in ('complete', 'reused') for r in result.records)} of {len(result.records)} "
              f"runs complete; {result.folder / 'sweep.json'}")
    return 0 if result.complete else 1

