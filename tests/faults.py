"""A simulated kill at a chosen file write, shared by the tests that resume killed runs."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import ticketlab.atomic as atomic


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
