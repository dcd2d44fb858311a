"""The errors that mean "the input was wrong" (shown to CLI users as one line, exit code 2), and
operating-system errors turned into one line that names the path and the fix."""
from __future__ import annotations

import errno

from .config import ConfigError
from .data import DataError
from .distributed import DistributedError
from .masks import MaskError
from .models import ModelError
from .prunable import PrunableError
from .pruning.selection import SelectionError
from .steps import StepError
from .store import StoreError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, MaskError, ModelError, PrunableError, SelectionError, StepError, StoreError, ValueError,
    DistributedError,
)


def describe_os_error(exc: OSError) -> str:
    """One line for an OS error: what failed, on which path, and what to do about it."""
    path = exc.filename or "a file"
    what = exc.strerror or str(exc)
    again = "then run the same command again: it continues where it stopped"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path}; free disk space (or choose another --runs-dir), {again}"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {path}; free space in your quota, {again}"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: {what}; choose a writable --runs-dir (or --out), {again}"
    if exc.errno == errno.ENOENT:
        return f"{path} does not exist ({what})"
    return f"{what}: {path}"
