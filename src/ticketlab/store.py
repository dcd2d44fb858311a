"""Run store: ``runs/<config-hash>/`` folders plus an SQLite index that makes runs queryable.

Every file is written atomically (temp file, fsync, rename) and carries a checksum of its own
content (``integrity.py``), verified whenever it is read: a damaged file is reported by name and
never resumed from. A unit of work (one training run of one IMP level, say) is complete only once
its ``summary.json`` exists, which is written last; a rerun skips complete units and redoes
incomplete ones. Tensors are stored with safetensors, so loading never unpickles anything.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes, atomic_write_text, remove_stale_temp_files
from .config import config_hash, to_dict
from .integrity import (CorruptFileError, StoreError, open_json, open_jsonl, seal_json, seal_jsonl,
                        seal_safetensors, verify_file, verify_safetensors)

__all__ = ["CorruptFileError", "Run", "RunBusyError", "Store", "StoreError", "load_tensors", "save_tensors"]


class RunBusyError(StoreError):
    """The run is being written by another live process (its lock is held): wait, then run again."""


def _unshare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies in which no two names share memory (tied weights): safetensors refuses shared
    tensors, and each name loads back into its own slot of the state dict."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in tensors.items():
        t = v.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0))
        out[k] = t
    return out


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Tensors (and string metadata) as one checksummed safetensors file, written atomically."""
    from safetensors.torch import save

    data = save(_unshare(tensors), metadata=metadata)
    atomic_write_bytes(path, seal_safetensors(data))


def read_verified(path: Path, *, require: bool = True) -> bytes:
    """The bytes of a stored safetensors file after its checksum was verified."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path} is missing") from None
    verify_safetensors(data, path, require=require)
    return data


def load_tensors(path: Path, *, require_checksum: bool = True) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    data = read_verified(path, require=require_checksum)
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises several error types for damaged files
        raise CorruptFileError(path, f"safetensors cannot read it ({exc})") from exc
    return dict(sorted(tensors.items()))  # safetensors returns them in an order that varies between processes


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_UNLISTED = ("summary.json", "environment.json")  # the marker itself; a record that later sessions extend


class Run:
    """One run's folder. Paths are relative names like ``"level_01/ticket"``."""

    def __init__(self, path: Path, run_hash: str, index: "Store"):
        self.path = path
        self.hash = run_hash
        self._store = index

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    # --- units --------------------------------------------------------------------------------
    def is_complete(self, unit: str) -> bool:
        """A unit is complete when its summary (written last) and the files before it exist; one
        whose weights or metrics were deleted (to recompute them) is trained again."""
        return all(self.file(unit, name).exists() for name in ("summary.json", "final.safetensors", "metrics.jsonl"))

    def read_json(self, *parts: str) -> Any:
        path = self.file(*parts)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{path} is missing") from None
        return open_json(data, path)

    def write_json(self, obj: dict[str, Any], *parts: str) -> None:
        atomic_write_text(self.file(*parts), seal_json(obj))

    def write_jsonl(self, rows: list[dict[str, Any]], *parts: str) -> None:
        atomic_write_text(self.file(*parts), seal_jsonl(rows))

    def read_jsonl(self, *parts: str) -> list[dict[str, Any]]:
        path = self.file(*parts)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{path} is missing") from None
        return open_jsonl(data, path)

    def save_tensors(self, tensors: Mapping[str, torch.Tensor], *parts: str) -> None:
        save_tensors(self.file(*parts), tensors)

    def load_tensors(self, *parts: str) -> dict[str, torch.Tensor]:
        return load_tensors(self.file(*parts))

    def update_index(self, **fields: Any) -> None:
        self._store.update(self.hash, **fields)

    # --- integrity ----------------------------------------------------------------------------
    def verify(self) -> list[CorruptFileError]:
        """Every stored file of the run checked against its checksum; the damaged ones."""
        problems = []
        for path in sorted(self.path.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                try:
                    verify_file(path)
                except CorruptFileError as exc:
                    problems.append(exc)
        return problems

    def mark_complete(self, summary: dict[str, Any]) -> None:
        """Write the run's ``summary.json`` (last), listing the files the complete run holds."""
        files = sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*")
                       if p.is_file() and not p.name.startswith(".")
                       and str(p.relative_to(self.path)) not in _UNLISTED
                       and p.relative_to(self.path).parts[0] != "tensorboard")  # --log event files: optional
        self.write_json({"status": "complete", **summary, "files": files}, "summary.json")

    def complete_summary(self) -> dict[str, Any] | None:
        """The run's summary when the whole run is complete (every file it listed is there), else
        None: a run whose files were deleted to recompute them is continued, not skipped."""
        if not self.file("summary.json").exists():
            return None
        summary = self.read_json("summary.json")
        if summary.get("status") != "complete":
            return None
        if any(not self.file(f).exists() for f in summary.get("files", [])):
            return None
        return {k: v for k, v in summary.items() if k != "files"}


class Store:
    """All runs under one root folder, with ``index.sqlite`` beside them.

    A store on a read-only file system (an archive, a colleague's folder) can be listed, reported
    and verified; only running experiments needs write access.
    """

    def __init__(self, root: str | os.PathLike = "runs"):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store {self.root} is a file, not a folder; give --runs-dir a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store folder {self.root}: {exc.strerror}; "
                             "choose another --runs-dir") from None
        self.db_path = self.root / "index.sqlite"
        self.read_only = not os.access(self.root, os.W_OK) or (
            self.db_path.exists() and not os.access(self.db_path, os.W_OK))
        if not self.read_only:
            with self._db() as db:
                db.execute(
                    """CREATE TABLE IF NOT EXISTS runs (
                        hash TEXT PRIMARY KEY, experiment TEXT, created TEXT, updated TEXT, status TEXT,
                        dataset TEXT, model TEXT, summary TEXT, config TEXT)"""
                )

    def require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"store {self.root} is read-only (no write permission); runs cannot be started or "
                             "continued there. Listing, reports and `ticketlab verify` still work; copy the store "
                             "or choose a writable --runs-dir to run experiments")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            if self.read_only:
                db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
            else:
                db = sqlite3.connect(self.db_path, timeout=30)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"run index {self.db_path} cannot be opened ({exc}); "
                             "run `ticketlab ls --reindex` to rebuild it from the run folders") from exc
        try:
            with db:
                yield db
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if "readonly" in text or "read-only" in text:
                raise StoreError(f"run index {self.db_path} is read-only ({exc}); ticketlab needs write access "
                                 "to the store to run experiments; choose a writable --runs-dir") from exc
            if "locked" in text or "busy" in text:
                raise StoreError(f"run index {self.db_path} stayed locked by another process for 30 s ({exc}); "
                                 "try again when the other ticketlab command has finished") from exc
            if "disk" in text and ("full" in text or "i/o" in text):
                raise StoreError(f"run index {self.db_path} could not be written ({exc}); free disk space and "
                                 "run the same command again") from exc
            raise StoreError(f"run index {self.db_path} failed ({exc}); if this persists, move it aside and run "
                             "`ticketlab ls --reindex` to rebuild it from the run folders") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"run index {self.db_path} is corrupt ({exc}); move it aside and run "
                             "`ticketlab ls --reindex` to rebuild it from the run folders") from exc
        finally:
            db.close()

    # --- runs ---------------------------------------------------------------------------------
    def open_run(self, config: Any) -> Run:
        """The folder for ``config``, created if new; checks an existing one belongs to it."""
        from .distributed import writer_only

        self.require_writable()
        run_hash = config_hash(config)
        path = self.root / run_hash
        described = {"experiment": config.experiment, "hash": run_hash, "config": to_dict(config)}
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            writer_only(lambda: self._create_run(path, cfg_file, described))  # under torchrun: rank 0's
        stored = open_json(cfg_file.read_bytes(), cfg_file)
        hashed_now = to_dict(config, for_hash=True)
        if stored.get("hash") != run_hash or _strip_unhashed(stored.get("config", {}), config) != hashed_now:
            raise StoreError(f"{path} holds a different experiment than this config; refusing to mix them")
        run = Run(path, run_hash, self)
        return run

    @staticmethod
    def _create_run(path: Path, cfg_file: Path, described: dict[str, Any], wait: float = 60.0) -> None:
        """Write a new run's config.json under the run's lock, so two processes creating the same run at
        once cannot remove each other's temp file or both write it: the second waits, then finds it."""
        path.mkdir(parents=True, exist_ok=True)
        lock_path = path / ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {lock_path}: {exc.strerror}") from None
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cfg_file.exists():
                        return  # created meanwhile (its creator may be running it now)
                    if time.monotonic() > deadline:
                        raise RunBusyError(f"{path} is being created by another process (lock {lock_path}) and has "
                                           f"no config.json after {wait:.0f} s; run again") from None
                    time.sleep(0.02)
            if cfg_file.exists():
                return
            remove_stale_temp_files(path)  # a kill while config.json was being written
            if any(p.name != ".lock" for p in path.iterdir()):
                raise StoreError(f"{path} holds files but no config.json, so it cannot be told whose they are; "
                                 "move the folder aside and run again")
            atomic_write_text(cfg_file, seal_json(described))
        finally:
            os.close(fd)  # releases the lock

    def index_run(self, run: Run, config: Any) -> None:
        """Add the run to the index as running (once its lock is held)."""
        self.update(run.hash, experiment=config.experiment, status="running",
                    dataset=config.data.name, model=config.model.name,
                    config=json.dumps(to_dict(config), sort_keys=True), create=True)

    def run(self, run_hash: str) -> Run:
        """An existing run by full hash or unique prefix."""
        matches = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(run_hash)
                   and (p / "config.json").exists()]
        if not matches:
            raise StoreError(f"no run {run_hash!r} under {self.root}; `ticketlab ls` lists the runs")
        if len(matches) > 1:
            raise StoreError(f"run prefix {run_hash!r} is ambiguous: {sorted(p.name for p in matches)}")
        return Run(matches[0], matches[0].name, self)

    def runs(self) -> list[Run]:
        """Every run folder (one with a config.json) under the root."""
        return [Run(p, p.name, self) for p in sorted(self.root.iterdir())
                if p.is_dir() and (p / "config.json").exists()]

    @contextmanager
    def lock(self, run: Run) -> Iterator[None]:
        """Refuse to run the same experiment twice at once (two writers would interleave).

        An ``flock`` dies with its process, so a killed run never leaves a lock that blocks the rerun.
        """
        from .distributed import is_writer

        if not is_writer():  # under torchrun rank 0 holds the lock for the whole process group
            yield
            return
        lock_path = run.file(".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {lock_path}: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusyError(f"run {run.hash} is being written by another process "
                                 f"(lock {lock_path}); wait for it to finish") from None
            yield
        finally:
            os.close(fd)

    def is_being_written(self, run_hash: str) -> bool:
        """Whether a live process holds the run's lock (a killed one holds nothing)."""
        lock_path = self.root / run_hash / ".lock"
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
        return False

    # --- index --------------------------------------------------------------------------------
    def update(self, run_hash: str, *, create: bool = False, **fields: Any) -> None:
        from .distributed import is_writer

        if not is_writer():  # under torchrun only rank 0 writes the index
            return
        fields = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
        fields["updated"] = _now()
        with self._db() as db:
            if create:
                db.execute("INSERT OR IGNORE INTO runs (hash, created) VALUES (?, ?)", (run_hash, _now()))
            cols = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE runs SET {cols} WHERE hash = ?", (*fields.values(), run_hash))

    def list(self, *conditions: tuple[str, str, str], **filters: str) -> list[dict[str, Any]]:
        """Rows of the index, newest first; filters match columns or config keys (``lr=0.1``);
        ``conditions`` are (key, op, value) with op one of ``= > < >= <=`` over columns, config
        and summary keys (``("final_test_accuracy", ">", "0.9")``; comparisons are numeric).

        A run indexed as running whose lock no live process holds was killed: it is listed as
        ``interrupted``.
        """
        if not self.db_path.exists():
            return []
        with self._db() as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY created DESC, hash")]
        for row in rows:
            row["config"] = json.loads(row["config"]) if row.get("config") else {}
            row["summary"] = json.loads(row["summary"]) if row.get("summary") else {}
            if row.get("status") == "running" and not self.is_being_written(row["hash"]):
                row["status"] = "interrupted"
        every = [(k, "=", v) for k, v in filters.items()] + [tuple(c) for c in conditions]
        for _, op, value in every:
            if op not in _OPS:
                raise StoreError(f"filter operator {op!r} is unknown; use one of {' '.join(_OPS)}")
            if op != "=" and _number(value) is None:
                raise StoreError(f"a {op} filter compares numbers; {value!r} is not one")
        _check_filter_keys(rows, {k: v for k, _, v in every})
        return [r for r in rows if all(_matches(r, k, v, op) for k, op, v in every)]

    def upgrade(self) -> dict[str, dict[str, Any]]:
        """Give every file of every run that predates checksums its checksum (``ticketlab migrate``).

        Each run is locked while it is upgraded (a run being written is skipped and reported);
        files that already carry a checksum are verified; a file that does not parse is reported
        and left as it is. Returns, per run, the files sealed now, the count already sealed and
        the problems.
        """
        from .integrity import seal_legacy_file

        self.require_writable()
        report: dict[str, dict[str, Any]] = {}
        for run in self.runs():
            entry: dict[str, Any] = {"sealed": [], "intact": 0, "problems": []}
            report[run.hash] = entry
            try:
                with self.lock(run):
                    remove_stale_temp_files(run.path)
                    for path in sorted(run.path.rglob("*")):
                        if not path.is_file() or path.name.startswith(".") or \
                                path.suffix not in (".json", ".jsonl", ".safetensors"):
                            continue
                        try:
                            if seal_legacy_file(path):
                                entry["sealed"].append(str(path.relative_to(run.path)))
                            else:
                                entry["intact"] += 1
                        except CorruptFileError as exc:
                            entry["problems"].append(str(exc))
            except StoreError as exc:
                entry["problems"].append(str(exc))
        return report

    def reindex(self) -> int:
        """Rebuild the index from the run folders (after it was lost or corrupted)."""
        self.require_writable()
        count = 0
        for run in self.runs():
            described = run.read_json("config.json")
            config = described.get("config", {})
            summary = run.read_json("summary.json") if run.file("summary.json").exists() else {}
            self.update(run.hash, create=True, experiment=described.get("experiment"),
                        status=summary.get("status", "interrupted"),
                        dataset=config.get("data", {}).get("name"), model=config.get("model", {}).get("name"),
                        config=json.dumps(config, sort_keys=True), summary=index_fields(summary))
            count += 1
        return count


def index_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """What the index keeps of a run's summary: its scalar fields (IMP: those of the last ticket
    level, and the dense accuracy). Derived from the stored summary alone, so a rebuilt or
    repaired index says exactly what the uninterrupted run wrote."""
    if "levels" in summary:
        tickets = [r for r in summary["levels"] if r.get("branch") == "ticket"]
        if not tickets:
            return {}
        return {"levels_done": tickets[-1]["level"], "density": tickets[-1]["density"],
                "final_test_accuracy": tickets[-1]["final_test_accuracy"],
                "dense_test_accuracy": tickets[0]["final_test_accuracy"]}
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and k != "status"}


def _strip_unhashed(stored: dict[str, Any], config: Any) -> dict[str, Any]:
    """Stored config minus the fields the hash ignores, for comparison with the config asked for."""
    import dataclasses

    from .config import flat_options

    out = {}
    for f in dataclasses.fields(config):
        if not f.metadata.get("hash", True):
            continue
        if "options" in f.metadata:  # a method's options: stored (and hashed) as flat legacy keys
            out.update({k: stored.get(k, v) for k, v in flat_options(None, f).items()})
            continue
        sub = getattr(config, f.name)
        if f.metadata.get("omit_default") and sub == f.default:
            continue
        value = stored.get(f.name, f.default)
        out[f.name] = _strip_unhashed(value or {}, sub) if dataclasses.is_dataclass(sub) else value
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_OPS = ("=", ">", "<", ">=", "<=")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _check_filter_keys(rows: list[dict[str, Any]], filters: dict[str, str]) -> None:
    """A filter key that no run has (a typo: ``datset=mnist``) is an error, not an empty list."""
    if not rows or not filters:
        return
    columns = {k for k in rows[0] if k not in ("config", "summary")}
    keys: set[str] = set()
    for row in rows:
        for name in [*_flatten(row["config"]), *_flatten(row["summary"])]:
            parts = name.split(".")
            keys.update(".".join(parts[i:]) for i in range(len(parts)))
    unknown = [k for k in filters if k not in columns and k not in keys]
    if unknown:
        known = sorted(columns | {k for k in keys if "." not in k})
        raise StoreError(f"no run in this store has {', '.join(repr(k) for k in unknown)}; filter by one of: "
                         f"{', '.join(known)} (or a dotted config path such as train.lr)")


def _matches(row: dict[str, Any], key: str, value: str, op: str = "=") -> bool:
    if key in row and key not in ("config", "summary"):
        candidates = [row[key]]
        if op == "=" and key == "hash" and row["hash"].startswith(value):
            return True
    else:
        candidates = [v for flat in (_flatten(row["config"]), _flatten(row["summary"]))
                      for k, v in flat.items() if k == key or k.endswith("." + key)]
    if op == "=":
        return any(str(v) == value for v in candidates)
    target = float(value)
    numbers = [n for n in map(_number, candidates) if n is not None]
    compare = {">": float.__gt__, "<": float.__lt__, ">=": float.__ge__, "<=": float.__le__}[op]
    return any(compare(n, target) for n in numbers)
