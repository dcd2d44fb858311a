"""Step strings: training lengths written as ``"1000it"``, ``"2ep"`` or ``"2ep100it"``.

Written in the unit the paper uses; turned into iterations only once the data set (and so the
number of iterations per epoch) is known.
"""
from __future__ import annotations

import re
from functools import lru_cache

_STEP_RE = re.compile(r"^\s*(?:(\d+)\s*ep)?\s*(?:(\d+)\s*it)?\s*$")


class StepError(ValueError):
    """A step string that cannot be read."""


@lru_cache(maxsize=4096)  # called for warm-up and milestones at every training step
def parse_step(text: str | int) -> tuple[int, int]:
    """``"2ep100it"`` -> (2, 100). A Python int (from code) means iterations; a string needs its
    unit: ``"10"`` is refused, as it could mean either (the CLI's ``--steps 10`` used to train 10
    iterations where an epoch count was often meant)."""
    if isinstance(text, int):
        if text < 0:
            raise StepError(f"step {text} is negative")
        return 0, text
    s = str(text).strip()
    if s.isdecimal():  # not isdigit: '²' is a digit that int() cannot read
        raise StepError(f"step {text!r} has no unit: write '{int(s)}it' for {int(s)} iterations or '{int(s)}ep' "
                        f"for {int(s)} epochs")
    m = _STEP_RE.match(s)
    if not s or not m or (m.group(1) is None and m.group(2) is None):
        raise StepError(
            f"cannot read step {text!r}: write iterations as '1000it', epochs as '2ep', or both as '2ep100it'"
        )
    return int(m.group(1) or 0), int(m.group(2) or 0)


def to_iterations(text: str | int, iterations_per_epoch: int) -> int:
    """Resolve a step string to a number of iterations."""
    if iterations_per_epoch <= 0:
        raise StepError(f"iterations_per_epoch must be positive, got {iterations_per_epoch}")
    epochs, its = parse_step(text)
    return epochs * iterations_per_epoch + its


def format_step(iteration: int, iterations_per_epoch: int) -> str:
    """Inverse of ``to_iterations`` for display: 1500 with 1000/epoch -> '1ep500it'."""
    if iterations_per_epoch <= 0:
        raise StepError(f"iterations_per_epoch must be positive, got {iterations_per_epoch}")
    if iteration < 0:
        raise StepError(f"iteration {iteration} is negative")
    ep, it = divmod(iteration, iterations_per_epoch)
    if ep and it:
        return f"{ep}ep{it}it"
    return f"{ep}ep" if ep else f"{it}it"
