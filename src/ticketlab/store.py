"""Run store: ``runs/<config-hash>/`` folders plus an SQLite index that makes runs queryable.

Every file is written atomically (temp file, fsync, rename). A unit of work (one training run of
one IMP level, say) is complete only once its ``summary.json`` exists, which is written last; a
rerun skips complete units and redoes incomplete ones. Files of complete units that fail to load
are reported as corrupt, never silently recomputed over. Tensors are stored with safetensors, so
loading never unpickles anything.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from .config import config_hash, to_dict


class StoreError(RuntimeError):
    """A run folder that is corrupt, locked, or does not belong to the config asked for."""


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not path.exists():
        raise StoreError(f"{path} is missing")
    try:
        return load(path.read_bytes())
    except Exception as exc:  # safetensors raises several error types for damaged files
        raise StoreError(
            f"{path} is corrupt or truncated ({exc}). It was left untouched; delete it (or its run "
            f"folder) to recompute that part of the run."
        ) from exc


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
        return self.file(unit, "summary.json").exists()

    def read_json(self, *parts: str) -> Any:
        path = self.file(*parts)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{path} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path} is corrupt ({exc}); it was left untouched, delete it to recompute") from exc

    def write_json(self, obj: Any, *parts: str) -> None:
        atomic_write_json(self.file(*parts), obj)

    def write_jsonl(self, rows: list[dict[str, Any]], *parts: str) -> None:
        atomic_write_text(self.file(*parts), "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def read_jsonl(self, *parts: str) -> list[dict[str, Any]]:
        path = self.file(*parts)
        rows = []
        try:
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    rows.append(json.loads(line))
        except FileNotFoundError:
            raise StoreError(f"{path} is missing") from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path} line {i} is corrupt ({exc}); delete the file to recompute") from exc
        return rows

    def save_tensors(self, tensors: Mapping[str, torch.Tensor], *parts: str) -> None:
        save_tensors(self.file(*parts), tensors)

    def load_tensors(self, *parts: str) -> dict[str, torch.Tensor]:
        return load_tensors(self.file(*parts))

    def update_index(self, **fields: Any) -> None:
        self._store.update(self.hash, **fields)


class Store:
    """All runs under one root folder, with ``index.sqlite`` beside them."""

    def __init__(self, root: str | os.PathLike = "runs"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        with self._db() as db:
            db.execute(
                """CREATE TABLE IF NOT EXISTS runs (
                    hash TEXT PRIMARY KEY, experiment TEXT, created TEXT, updated TEXT, status TEXT,
                    dataset TEXT, model TEXT, summary TEXT, config TEXT)"""
            )

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.db_path, timeout=30)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"run index {self.db_path} cannot be opened ({exc}); "
                             "run `ticketlab ls --reindex` to rebuild it from the run folders") from exc
        try:
            with db:
                yield db
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"run index {self.db_path} is corrupt ({exc}); move it aside and run "
                             "`ticketlab ls --reindex` to rebuild it from the run folders") from exc
        finally:
            db.close()

    # --- runs ---------------------------------------------------------------------------------
    def open_run(self, config: Any) -> Run:
        """The folder for ``config``, created if new; checks an existing one belongs to it."""
        run_hash = config_hash(config)
        path = self.root / run_hash
        described = {"experiment": config.experiment, "hash": run_hash, "config": to_dict(config)}
        cfg_file = path / "config.json"
        if cfg_file.exists():
            try:
                stored = json.loads(cfg_file.read_text())
            except json.JSONDecodeError as exc:
                raise StoreError(f"{cfg_file} is corrupt ({exc}); it was left untouched") from exc
            hashed_now = to_dict(config, for_hash=True)
            if stored.get("hash") != run_hash or _strip_unhashed(stored.get("config", {}), config) != hashed_now:
                raise StoreError(f"{path} holds a different experiment than this config; refusing to mix them")
        else:
            path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cfg_file, described)
        self.update(run_hash, experiment=config.experiment, status="running",
                    dataset=config.data.name, model=config.model.name,
                    config=json.dumps(described["config"], sort_keys=True), create=True)
        return Run(path, run_hash, self)

    def run(self, run_hash: str) -> Run:
        """An existing run by full hash or unique prefix."""
        matches = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(run_hash)
                   and (p / "config.json").exists()]
        if not matches:
            raise StoreError(f"no run {run_hash!r} under {self.root}; `ticketlab ls` lists the runs")
        if len(matches) > 1:
            raise StoreError(f"run prefix {run_hash!r} is ambiguous: {sorted(p.name for p in matches)}")
        return Run(matches[0], matches[0].name, self)

    @contextmanager
    def lock(self, run: Run) -> Iterator[None]:
        """Refuse to run the same experiment twice at once (two writers would interleave)."""
        lock_path = run.file(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"run {run.hash} is being written by another process "
                                 f"(lock {lock_path}); wait for it to finish") from None
            yield
        finally:
            os.close(fd)

    # --- index --------------------------------------------------------------------------------
    def update(self, run_hash: str, *, create: bool = False, **fields: Any) -> None:
        fields = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
        fields["updated"] = _now()
        with self._db() as db:
            if create:
                db.execute("INSERT OR IGNORE INTO runs (hash, created) VALUES (?, ?)", (run_hash, _now()))
            cols = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE runs SET {cols} WHERE hash = ?", (*fields.values(), run_hash))

    def list(self, **filters: str) -> list[dict[str, Any]]:
        """Rows of the index, newest first; filters match columns or config keys (``lr=0.1``)."""
        with self._db() as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY created DESC, hash")]
        for row in rows:
            row["config"] = json.loads(row["config"]) if row.get("config") else {}
            row["summary"] = json.loads(row["summary"]) if row.get("summary") else {}
        return [r for r in rows if all(_matches(r, k, v) for k, v in filters.items())]

    def reindex(self) -> int:
        """Rebuild the index from the run folders (after it was lost or corrupted)."""
        count = 0
        for path in sorted(self.root.iterdir()):
            cfg = path / "config.json"
            if not cfg.exists():
                continue
            described = json.loads(cfg.read_text())
            config = described.get("config", {})
            summary_path = path / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            self.update(path.name, create=True, experiment=described.get("experiment"),
                        status=summary.get("status", "incomplete"),
                        dataset=config.get("data", {}).get("name"), model=config.get("model", {}).get("name"),
                        config=json.dumps(config, sort_keys=True), summary=summary)
            count += 1
        return count


def _strip_unhashed(stored: dict[str, Any], config: Any) -> dict[str, Any]:
    """Stored config minus the fields the hash ignores, for comparison with the config asked for."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(config):
        if not f.metadata.get("hash", True):
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


def _matches(row: dict[str, Any], key: str, value: str) -> bool:
    if key in row and key not in ("config", "summary"):
        return str(row[key]) == value or (row["hash"].startswith(value) if key == "hash" else False)
    flat = _flatten(row["config"])
    candidates = [v for k, v in flat.items() if k == key or k.endswith("." + key)]
    return any(str(v) == value for v in candidates)
