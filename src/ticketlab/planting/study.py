"""Plant 'n' Seek studies in the Store: every cell a run, a study a record of its cells.

A *cell* (task, method, kept fraction, seed, under one :class:`Protocol`) is one run of experiment
``plant`` in the Store, named by the hash of all of that: its folder holds ``config.json``,
``environment.json`` and ``summary.json`` (the cell's row, written last with ``mark_complete``). A
complete cell is never recomputed; an interrupted one (no summary) is recomputed from scratch (cells
are small: no checkpoints). A damaged file of a cell stops the study with one error naming it.

A *study* is tasks x methods x kept fractions x seeds plus the references of every (task, seed):
the unpruned host (method ``dense``, kept 1; a pruning method at kept 1 is the same network, so it
is never a cell of its own) and the planted ticket (method ``ticket``, kept ``"ticket"``). Its
record is a run of experiment ``plant-study`` whose config holds the study's description and whose
summary lists its cells' hashes in row order, so ``ticketlab report <study>`` redraws its tables
and ``ticketlab ls experiment=plant-study`` lists studies.

:func:`run_study` computes only the missing cells, in batches of one task (``batches``: at most
``BATCH_CELLS`` cells, an even mix of methods) handed to ``workers`` single-threaded processes; a
batch runs every training of its cells as stacked models (``cells.run_cells``, up to ``stack_size``
cells per stack) and writes each cell's run (every run of the batch locked while it computes). The
rows come back in the study's order whatever order they finished in, and a cell's row is the same
whatever batch or stack it was computed in. The workers die with the parent, even when it is SIGKILLed (Linux: the
``PR_SET_PDEATHSIG`` of ``prctl``; elsewhere a watchdog thread that sees the parent pid change).

:func:`write_report` writes ``report.md``, ``rows.json``, ``weak.png`` and ``strong.png`` to a
temp folder beside ``out`` and swaps it in as a whole (``renameat2(RENAME_EXCHANGE)`` on Linux,
else two renames that the next call completes or undoes), so ``out`` never mixes two reports.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text, recover_folder, replace_folder
from ..config import ConfigError, config_hash
from ..store import Run, Store, StoreError, index_fields
from ..threads import torch_threads
from .benchmark import ALL_METHODS, REFERENCE_METHODS, Protocol, benchmark_table, plot_benchmark
from .cells import STACK_SIZE, run_cells
from .tasks import TASKS

Row = dict[str, Any]
Log = Callable[[str], None]
REPORT_FILES = ("report.md", "rows.json", "weak.png", "strong.png")
_MARKER = ".ticketlab-plant-report"  # a folder holding it was written by write_report and may be replaced
_RESERVED = ("status", "files")  # keys of a run's summary.json that a row must not use


@dataclass(frozen=True)
class Named:
    """``data`` / ``model`` of a plant config: only the name the Store's index lists."""

    name: str


def _model_name(protocol: Protocol) -> str:
    return f"planted-mlp-d{protocol.depth}-w{protocol.width}"


def normalize_kept(kept: float | int | str) -> float | str:
    """``"ticket"`` or a float in (0, 1] (so ``1``, ``"1"`` and ``1.0`` name the same cell)."""
    if kept == "ticket":
        return "ticket"
    try:
        value = float(kept)
    except (TypeError, ValueError):
        raise ConfigError(f"kept must be 'ticket' or a fraction in (0, 1], got {kept!r}") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"kept must be 'ticket' or a fraction in (0, 1], got {kept!r}")
    return value


@dataclass(frozen=True)
class PlantCell:
    """One benchmark cell; its hash names its run. ``data`` / ``model`` (the index's dataset and
    model columns) are derived from the task and the protocol and left out of the hash."""

    task: str
    method: str
    kept: float | str
    seed: int
    protocol: Protocol = field(default_factory=Protocol)
    data: Named = field(init=False, metadata={"hash": False})
    model: Named = field(init=False, metadata={"hash": False})
    # the trainings' arithmetic: "stacked" = replicates' kernels (cells.run_cells), whose rows differ
    # from the per-cell Trainer's of earlier versions in the last bits; hashed, so those are not reused
    numerics: str = field(default="stacked", init=False)

    experiment = "plant"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown planting task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.method not in ALL_METHODS and self.method not in REFERENCE_METHODS:
            raise ConfigError(f"unknown plant method {self.method!r}; choose from "
                              f"{', '.join(ALL_METHODS + REFERENCE_METHODS)}")
        kept = normalize_kept(self.kept)
        if self.method == "dense" and kept != 1.0:
            raise ConfigError(f"method 'dense' is the unpruned host: kept must be 1, got {self.kept!r}")
        if self.method == "ticket" and kept != "ticket":
            raise ConfigError(f"method 'ticket' is the planted ticket: kept must be 'ticket', got {self.kept!r}")
        if self.method in ALL_METHODS and kept == 1.0:
            raise ConfigError(f"kept 1 of {self.method} is the dense host: use method 'dense' (one cell per task and "
                              "seed)")
        if self.method == "gem" and isinstance(self.protocol, Protocol) and self.protocol.epochs < 2:
            raise ConfigError(f"plant method gem needs --epochs >= 2 (GEM-MINER prunes after an epoch and trains on "
                              f"after its last round), got {self.protocol.epochs}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.protocol, Protocol):
            raise ConfigError(f"protocol must be a Protocol, got {type(self.protocol).__name__}")
        object.__setattr__(self, "kept", kept)
        object.__setattr__(self, "data", Named(self.task))
        object.__setattr__(self, "model", Named(_model_name(self.protocol)))

    @property
    def hash(self) -> str:
        return config_hash(self)


@dataclass(frozen=True)
class PlantStudyConfig:
    """A study's description (its record's config): what ``study_cells`` expands to its cells."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    kept: tuple[float | str, ...]
    seeds: tuple[int, ...]
    protocol: Protocol = field(default_factory=Protocol)
    data: Named = field(init=False, metadata={"hash": False})
    model: Named = field(init=False, metadata={"hash": False})

    experiment = "plant-study"

    def __post_init__(self) -> None:
        tasks = tuple(dict.fromkeys(self.tasks))
        methods = tuple(m for m in dict.fromkeys(self.methods) if m not in REFERENCE_METHODS)
        kept = tuple(k for k in dict.fromkeys(normalize_kept(k) for k in self.kept) if k != 1.0)
        seeds = tuple(dict.fromkeys(self.seeds))
        if not tasks or not seeds:
            raise ConfigError("a plant study needs at least one task and one seed")
        if methods and not kept:
            raise ConfigError(f"methods {list(methods)} need a kept fraction below 1 (or 'ticket')")
        for name, value in (("tasks", tasks), ("methods", methods), ("kept", kept), ("seeds", seeds)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "data", Named("+".join(tasks)))
        object.__setattr__(self, "model", Named(_model_name(self.protocol)))
        self.cells()  # every cell valid

    def cells(self) -> list[PlantCell]:
        """Per task: the dense host per seed, each method x kept x seed, the planted ticket per seed."""
        out: list[PlantCell] = []
        for task in self.tasks:
            out += [PlantCell(task, "dense", 1.0, s, self.protocol) for s in self.seeds]
            out += [PlantCell(task, m, k, s, self.protocol) for m in self.methods for k in self.kept for s in self.seeds]
            out += [PlantCell(task, "ticket", "ticket", s, self.protocol) for s in self.seeds]
        return out

    @property
    def hash(self) -> str:
        return config_hash(self)


class StudyRows(list):
    """The rows of a study, in its cells' order, with what the call did: ``study`` (the record's
    hash), ``reused`` and ``computed`` (cell counts)."""

    study: str = ""
    reused: int = 0
    computed: int = 0


# --- one cell -------------------------------------------------------------------------------------
def _row_of(summary: dict[str, Any]) -> Row:
    return {k: v for k, v in summary.items() if k not in _RESERVED}


def _check_row(row: Row) -> Row:
    bad = [k for k in _RESERVED if k in row]
    if bad:
        raise ValueError(f"run_cell returned reserved keys {bad}")
    for k, v in row.items():
        if not (v is None or isinstance(v, (str, int, float, bool))):
            raise TypeError(f"run_cell's row must be flat JSON values; {k!r} is {type(v).__name__}")
    return row


def compute_cell(store: Store, cell: PlantCell, *, device: str = "cpu", log: Log = print) -> Row:
    """The cell's row: read from its run when complete, else computed and stored (under its lock)."""
    return compute_cells(store, [cell], device=device, log=log)[0]


def compute_cells(store: Store, cells: Sequence[PlantCell], *, device: str = "cpu", log: Log = print,
                  stack_size: int = STACK_SIZE) -> list[Row]:
    """The cells' rows: read from their runs when complete, else computed together (``run_cells``:
    every training of the batch stacked) and stored one by one, every cell's run locked throughout.

    A cell whose training diverged is not stored (its run is listed as diverged): the others are
    stored, then ``DivergenceError`` names it. A kill leaves complete cells complete; a rerun computes
    the rest in other stacks and gets the same rows (a cell's row does not depend on its stack)."""
    from ..experiments.common import running
    from ..training import DivergenceError

    protocols = {c.protocol for c in cells}
    if len(protocols) > 1:
        raise ValueError("compute_cells: every cell of a batch needs the same protocol")
    with contextlib.ExitStack() as held:
        runs = [held.enter_context(running(store, cell, log)) for cell in cells]
        summaries = [run.complete_summary() for run in runs]
        rows: list[Row | None] = [None if summary is None else _row_of(summary) for summary in summaries]
        todo = [k for k, row in enumerate(rows) if row is None]
        if todo:
            protocol = cells[todo[0]].protocol
            computed = run_cells([(cells[k].task, cells[k].method, cells[k].kept, cells[k].seed) for k in todo],
                                 protocol, device=device, stack_size=stack_size, log=log)
            failed = []
            for k, row in zip(todo, computed):
                if isinstance(row, DivergenceError):
                    failed.append(row)
                    continue
                run = runs[k]
                run.mark_complete(_check_row(row))  # last: marks the cell complete
                summary = run.complete_summary()
                run.update_index(status="complete", summary=index_fields(summary))
                rows[k] = _row_of(summary)  # as stored, so a computed row equals a reused one
            if failed:
                raise DivergenceError("; ".join(str(e) for e in failed))
    return rows  # type: ignore[return-value]


def cell_ticket(run: Run, *, log: Log = print) -> dict[str, Any]:
    """A complete cell's ticket, for export: its host after weak training ("model", pruned entries
    exactly 0), the mask it found over the pruning pool ("mask"), the host's input and output sizes.

    A cell stores only its row (no weights: it is cheaper to recompute than to checkpoint), so the
    cell is computed again, alone; its row does not depend on its stack (``cells``), so the
    recomputation must give the stored row bit for bit, and is refused otherwise (a row stored by
    another version's arithmetic, or a damaged one): nothing is exported that is not the stored cell."""
    from ..training import DivergenceError
    from .benchmark import run_cell

    config = run.read_json("config.json")
    if config.get("experiment") != PlantCell.experiment:
        raise ValueError(f"run {run.hash} is a {config.get('experiment')!r} run, not a planted cell")
    cfg = config["config"]
    summary = run.complete_summary()
    if summary is None:
        raise ValueError(f"planted cell {run.hash} is not complete; nothing to export yet")
    if cfg.get("numerics", "stacked") != PlantCell.numerics:
        raise ValueError(f"planted cell {run.hash} was computed with numerics {cfg.get('numerics')!r}, this version "
                         f"computes {PlantCell.numerics!r}: its ticket cannot be recomputed bit for bit")
    try:
        cell = PlantCell(cfg["task"], cfg["method"], normalize_kept(cfg["kept"]), int(cfg["seed"]),
                         Protocol(**cfg["protocol"]))
    except (KeyError, TypeError, ConfigError) as exc:
        raise ValueError(f"run {run.hash}'s config is not a planted cell this version can read ({exc})") from None
    if cell.hash != run.hash:
        raise ValueError(f"run {run.hash}'s config does not describe it (it describes cell {cell.hash})")
    log(f"recomputing planted cell {run.hash} ({cell.task} {cell.method} kept {cell.kept} seed {cell.seed}): a cell "
        "stores its row, not its weights")
    try:
        row = run_cell(cell.task, cell.method, cell.kept, cell.seed, cell.protocol, return_model=True)
    except DivergenceError as exc:
        raise ValueError(f"planted cell {run.hash}: the recomputation diverged ({exc}) but the stored cell did not") \
            from None
    stored = _row_of(summary)
    differ = [k for k in stored if k != "seconds" and json.dumps(stored[k]) != json.dumps(row.get(k))]
    if differ:
        k = differ[0]
        raise ValueError(f"planted cell {run.hash}: recomputing it does not reproduce its stored row ({k}: stored "
                         f"{stored[k]!r}, recomputed {row.get(k)!r}); it was stored by other arithmetic, so its "
                         "ticket cannot be exported")
    model = row["model"]
    linears = [m for m in model.modules() if hasattr(m, "in_features")]
    return {"model": model, "mask": row["found"], "input_dim": linears[0].in_features,
            "output_dim": linears[-1].out_features, "hidden": [m.out_features for m in linears[:-1]], "row": stored}


def stored_row(store: Store, cell: PlantCell) -> Row | None:
    """The row of a complete cell (every file verified first), or None when it is not complete.

    A damaged file raises CorruptFileError: it is reported, never recomputed over."""
    path = store.root / cell.hash
    if not (path / "summary.json").exists():
        return None
    run = store.open_run(cell)  # checks the folder holds this cell
    problems = run.verify()
    if problems:
        raise problems[0]
    summary = run.complete_summary()
    return None if summary is None else _row_of(summary)


# --- workers --------------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` ends, however it ends (a SIGKILL included)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:  # other systems, and a parent that died before prctl ran
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def _portable(exc: BaseException) -> BaseException:
    """An exception the pipe can carry back (CorruptFileError's constructor takes two arguments)."""
    import pickle
    import traceback

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        pass
    if isinstance(exc, StoreError):
        return StoreError(str(exc))
    if isinstance(exc, ValueError):
        return ValueError(str(exc))
    return RuntimeError(f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc)))


def _worker_main(conn: Any, parent_pid: int, root: str, device: str, stack_size: int) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the workers
    import torch

    torch.set_num_threads(1)
    store = Store(root)

    def log(text: str) -> None:
        print(text, flush=True)

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        indices, cells = msg
        try:
            conn.send((indices, compute_cells(store, cells, device=device, log=log, stack_size=stack_size), None))
        except Exception as exc:  # noqa: BLE001 - carried to the parent, which stops the study
            conn.send((indices, None, _portable(exc)))


@contextlib.contextmanager
def _main_without_missing_file() -> Iterator[None]:
    """A spawned process re-runs the parent's main script unless it has no file; a main read from
    stdin (``python - <<EOF``) names a file that does not exist, so it is hidden while one starts."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or os.path.exists(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


BATCH_CELLS = 5 * STACK_SIZE  # at most this many cells per batch: a killed study loses at most one batch per worker


def batches(cells: Sequence[tuple[int, PlantCell]], cap: int = BATCH_CELLS) -> list[list[tuple[int, PlantCell]]]:
    """The cells cut into batches computed together: per task (one architecture per stack), the
    fewest batches of at most ``cap`` cells, each dealt an even share of every method (so batches
    cost about the same and each stacks well)."""
    by_task: dict[str, list[tuple[int, PlantCell]]] = {}
    for item in cells:
        by_task.setdefault(item[1].task, []).append(item)
    out = []
    for group in by_task.values():
        group = sorted(group, key=lambda item: (item[1].method, str(item[1].kept), item[1].seed))
        n = math.ceil(len(group) / cap)
        out += [sorted(group[i::n], key=lambda item: item[0]) for i in range(n)]
    return out


def _compute(store: Store, cells: Sequence[tuple[int, PlantCell]], workers: int, device: str,
             done: Callable[[int, Row], None], log: Log, stack_size: int = STACK_SIZE) -> None:
    """Compute ``cells`` (index, cell) in batches (``batches``), in this process (workers <= 1) or
    in ``workers`` spawned ones, each taking the next batch when it is done with one."""
    todo = batches(cells, max(1, min(BATCH_CELLS, math.ceil(len(cells) / max(1, workers)))))
    if workers <= 1 or len(todo) <= 1:
        for batch in todo:
            rows = compute_cells(store, [c for _, c in batch], device=device, log=log, stack_size=stack_size)
            for (i, _), row in zip(batch, rows):
                done(i, row)
        return
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")  # no fork of a parent with torch threads; pipes, no semaphores
    todo.reverse()
    procs: list[tuple[Any, Any]] = []
    busy: dict[int, list[tuple[int, PlantCell]]] = {}  # worker number -> the batch it computes
    try:
        for w in range(min(workers, len(todo))):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(theirs, os.getpid(), str(store.root), device, stack_size),
                            daemon=True, name=f"ticketlab-plant-{w}")
            with _main_without_missing_file():
                p.start()
            theirs.close()
            procs.append((p, mine))

        def feed(w: int) -> None:
            if todo:
                busy[w] = todo.pop()
                procs[w][1].send(([i for i, _ in busy[w]], [c for _, c in busy[w]]))

        def died(p: Any, w: int) -> RuntimeError:
            p.join(1)
            first = busy[w][0][1]
            return RuntimeError(f"plant worker {p.pid} died (exit code {p.exitcode}) while computing a batch of "
                                f"{len(busy[w])} cells ({first.task}, ...); run the same command again to continue")

        for w in range(len(procs)):
            feed(w)
        while busy:
            ready = set(wait([procs[w][1] for w in busy] + [procs[w][0].sentinel for w in busy]))
            for w in list(busy):
                p, conn = procs[w]
                if conn in ready or (p.sentinel in ready and conn.poll()):
                    try:
                        indices, rows, err = conn.recv()
                    except EOFError:
                        raise died(p, w) from None
                    if err is not None:
                        raise err
                    del busy[w]
                    for i, row in zip(indices, rows):
                        done(i, row)
                    feed(w)
                elif p.sentinel in ready:
                    raise died(p, w)
        for _, conn in procs:
            with contextlib.suppress(OSError):
                conn.send(None)
        for p, _ in procs:
            p.join(10)
    finally:
        for p, conn in procs:  # on an error or Ctrl-C: the workers stop now (a killed batch is recomputed)
            if p.is_alive():
                p.terminate()
        for p, conn in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
            conn.close()


# --- a study --------------------------------------------------------------------------------------
def run_study(tasks: Iterable[str], methods: Iterable[str], kept: Iterable[float | str], seeds: Iterable[int],
              protocol: Protocol = Protocol(), store: Store | str | os.PathLike = "runs", *, workers: int = 2,
              device: str = "cpu", progress: Callable[[Row, int, int], None] | None = None,
              log: Log = print, stack_size: int = STACK_SIZE) -> StudyRows:
    """Every cell of the study (see :class:`PlantStudyConfig`), computing only those not complete in
    ``store``; the rows in the study's order. ``progress(row, k, n)`` is called as the k-th of the n
    cells computed now finishes (cells finish a batch at a time). ``stack_size``: cells trained as
    one stacked model (1: one at a time; the rows are the same either way). The study's record (experiment ``plant-study``) is locked while it
    runs and marked complete, listing its cells, at the end."""
    from ..experiments.common import running

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    store = store if isinstance(store, Store) else Store(store)
    study = PlantStudyConfig(tuple(tasks), tuple(methods), tuple(kept), tuple(seeds), protocol)
    cells = study.cells()
    rows: list[Row | None] = [None] * len(cells)
    # torch on one thread here as in the workers: a cell's numbers and environment record do not
    # depend on the number of workers
    with torch_threads(1), running(store, study, log) as record:
        todo = []
        for i, cell in enumerate(cells):
            rows[i] = stored_row(store, cell)
            if rows[i] is None:
                todo.append((i, cell))
        reused = len(cells) - len(todo)
        if reused:
            _index_complete(store, [c for c, r in zip(cells, rows) if r is not None])
        log(f"plant study {study.hash}: {len(cells)} cells; reused {reused} cells, computing {len(todo)}"
            + (f" in {min(workers, len(todo))} worker processes" if len(todo) > 1 and workers > 1 else ""))
        finished = 0

        def done(i: int, row: Row) -> None:
            nonlocal finished
            rows[i] = row
            finished += 1
            if progress is not None:
                progress(row, finished, len(todo))

        _compute(store, todo, workers, device, done, log, stack_size)
        if record.complete_summary() is None:
            summary = {"cells": [c.hash for c in cells], "n_cells": len(cells)}
            record.mark_complete(summary)
            record.update_index(status="complete", summary=index_fields(summary))
    out = StudyRows(rows)
    out.study, out.reused, out.computed = study.hash, reused, len(todo)
    return out


def _index_complete(store: Store, cells: Sequence[PlantCell]) -> None:
    """Complete cells the index does not list as complete (a kill between a cell's summary and its
    index update, a lost index) are listed as complete again, from their stored summaries."""
    listed = {r["hash"]: r["status"] for r in store.list(experiment="plant")}
    for cell in cells:
        if listed.get(cell.hash) != "complete":
            run = store.open_run(cell)
            store.update(run.hash, create=True, experiment=cell.experiment, status="complete",
                         dataset=cell.data.name, model=cell.model.name,
                         config=json.dumps(run.read_json("config.json")["config"], sort_keys=True),
                         summary=index_fields(run.complete_summary()))


def study_rows(store: Store, run: Run) -> list[Row]:
    """The rows of a stored study record (``plant-study``) or of one cell (``plant``)."""
    described = run.read_json("config.json")
    kind = described.get("experiment")
    if kind == "plant":
        summary = run.complete_summary()
        if summary is None:
            raise StoreError(f"plant cell {run.hash} is not complete; run its study again to compute it")
        problems = run.verify()
        if problems:
            raise problems[0]
        return [_row_of(summary)]
    if kind != "plant-study":
        raise ConfigError(f"run {run.hash} is a {kind!r} run, not a plant study or cell")
    summary = run.complete_summary()
    if summary is None:
        raise StoreError(f"plant study {run.hash} is not complete (interrupted?); run its `ticketlab plant` command "
                         "again to finish it")
    out = []
    for h in summary["cells"]:
        if not (store.root / h / "config.json").exists():
            raise StoreError(f"cell {h} of plant study {run.hash} is missing from {store.root}; run the study again "
                             "to recompute it")
        out += study_rows(store, Run(store.root / h, h, store))
    return out


# --- the report -----------------------------------------------------------------------------------
def _check_replaceable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        if names and _MARKER not in names and not names <= set(REPORT_FILES):
            raise ConfigError(f"--out {out} holds files that no plant report wrote ({', '.join(sorted(names)[:5])}); "
                              "the report replaces its folder as a whole, so choose a new or empty folder")


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_report(rows: Sequence[Row], out: str | os.PathLike, note: str = "") -> dict[str, Path]:
    """report.md (the tables and ``note``), rows.json, weak.png and strong.png, in a folder that
    replaces ``out`` as a whole; returns the files' final paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(out)
    _check_replaceable(out)

    def write(tmp: Path) -> None:
        table = benchmark_table(rows)
        atomic_write_text(tmp / "report.md", table + (f"\n\n{note}\n" if note else "\n"))
        atomic_write_text(tmp / "rows.json", json.dumps([{k: _finite(v) for k, v in r.items()} for r in rows],
                                                         indent=1) + "\n")
        plot_benchmark(rows, tmp / "weak.png", metric="weak")
        plot_benchmark(rows, tmp / "strong.png", metric="strong")
        (tmp / _MARKER).write_text("written by ticketlab plant / report; replaced as a whole on the next report\n")

    replace_folder(out, write)
    return {name: out / name for name in REPORT_FILES}


__all__ = ["PlantCell", "PlantStudyConfig", "Protocol", "StudyRows", "compute_cell", "run_study", "stored_row",
           "study_rows", "write_report"]
