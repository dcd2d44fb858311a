"""A simulated kill at a chosen file write, shared by the tests that resume killed runs."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import ticketlab.atomic as atomic
from ticketlab.integrity import CHECKSUM_KEY


class Kill(BaseException):
    """A simulated SIGKILL: not an Exception, so no ``except Exception`` handler swallows it."""


def after_writing(name: str, under: str | None = None) -> Callable[[Path], bool]:
    """Matches the first completed write of a file called ``name`` (inside a folder path ending ``under``)."""
    return lambda path: path.name == name and (under is None or str(path.parent).endswith(under))


@contextmanager
def killed_after(matches: Callable[[Path], bool]) -> Iterator[None]:
    """Run the block, which must be killed right after the first completed write ``matches``."""
    def hook(event: str, tmp: Path, path: Path) -> None:
        if event == "after_rename" and matches(path):
            raise Kill(str(path))

    atomic.fault_hook = hook
    try:
        with pytest.raises(Kill):
            yield
    finally:
        atomic.fault_hook = None


def timing_free(obj: Any) -> Any:
    """Stored JSON comparable across runs: timing fields and checksums left out, NaN as "nan"
    (a metric that does not apply, e.g. raw MSE of a classifier; NaN != NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return "nan"
    if isinstance(obj, dict):
        return {k: timing_free(v) for k, v in obj.items() if k != CHECKSUM_KEY and not k.endswith("seconds")}
    if isinstance(obj, list):
        return [timing_free(v) for v in obj]
    return obj

