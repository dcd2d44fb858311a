"""Atomic file writes: write to a temp file in the same folder, fsync, rename.

A process killed mid-write leaves either the old file or the new one, never a torn file (and at
worst a stray ``.<name>.*.tmp``, which the Store removes the next time it opens the run). Files get
the permissions the user's umask gives new files (``tempfile`` alone would make them 0600).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

# Tests set this to simulate a kill at a write boundary: called with ("before_rename", tmp, path)
# once the temp file is complete, and ("after_rename", path, path) once the file is in place.
fault_hook: Callable[[str, Path, Path], None] | None = None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if fault_hook is not None:
            fault_hook("before_rename", Path(tmp), path)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    if fault_hook is not None:
        fault_hook("after_rename", path, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files that killed writers left under ``folder``; return them."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
