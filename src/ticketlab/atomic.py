"""Atomic file writes: write to a temp file in the same folder, fsync, rename.

A process killed mid-write leaves either the old file or the new one, never a torn file (and at
worst a stray ``.<name>.*.tmp``, which the Store removes the next time it opens the run). Files get
the permissions the user's umask gives new files (``tempfile`` alone would make them 0600).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import sys
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
    from .distributed import writer_only  # under torchrun only rank 0 writes (see ticketlab.distributed)

    writer_only(lambda: _write_bytes(Path(path), data))


def _write_bytes(path: Path, data: bytes) -> None:
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


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _leftovers(out: Path, kind: str) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.{kind}-*"))


def recover_folder(out: Path) -> None:
    """Finish what a killed ``replace_folder`` left: with ``out`` gone, its old copy goes back; temp
    folders go."""
    if not out.exists():
        old = _leftovers(out, "old")
        if old:
            os.rename(old[-1], out)
    for leftover in _leftovers(out, "new") + _leftovers(out, "old"):
        shutil.rmtree(leftover, ignore_errors=True)


def replace_folder(out: Path, write: Callable[[Path], None]) -> None:
    """``write(folder)`` fills a new folder beside ``out``, which then replaces ``out`` as a whole
    (``renameat2(RENAME_EXCHANGE)`` on Linux, else two renames that ``recover_folder`` completes or
    undoes after a kill): ``out`` is always either the old folder or the new one, never a mix."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        _fsync_dir(tmp)
        if out.exists():
            if _renameat2_exchange(tmp, out):  # tmp now holds the old folder
                _fsync_dir(out.parent)
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.rename(out, old)  # a kill here: the next call puts old back (recover_folder)
                os.rename(tmp, out)
                _fsync_dir(out.parent)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
            _fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
