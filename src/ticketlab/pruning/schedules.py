"""When to change a mask and to what density: schedules as small frozen objects.

A pruning method is three independent choices (as in JaxPruner): *when* and *how much in total*
(a schedule, this module), *how much per layer* (a distribution, ``distributions.layer_counts``) and
*which weights* (a score). Every schedule answers two questions::

    schedule.is_update_step(t) -> bool     # does the mask change at t?
    schedule.density_at(t) -> float        # the target density at t (fraction KEPT, always)

``t`` counts what the method counts: training steps (``Cubic``, ``CosineDrop``), pruning rounds
(``OneShot``, ``Iterative``; round k = after the k-th prune, 0 = before any), IMP levels
(``IMPLevels``) or epochs (``Annealing``, 0-based). ``density`` is the target density (at the end,
for the schedules that move); each kind adds what its method needs (``CosineDrop.drop_fraction``).

- ``OneShot(density, at=0)``: dense until ``at``, then ``density``.
- ``Iterative(density, rounds, kind)``: round k of n prunes to density d^(k/n) (``"exponential"``,
  SynFlow's 100 rounds) or 1 - (1 - d) k / n (``"linear"``); exactly d at k = n.
- ``IMPLevels(rate, levels=None)``: level L keeps (1 - rate)^L (IMP removes ``rate`` of the
  remaining weights per level).
- ``Cubic(density, start, end, every, initial_density=1.0)``: Zhu & Gupta's gradual pruning,
  s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 in sparsity s = 1 - density, every ``every`` steps
  from ``start`` to ``end``.
- ``CosineDrop(alpha, every, end, density=None)``: RigL/SET update every ``every`` steps before
  ``end`` and drop f(t) = alpha/2 (1 + cos(pi t / end)) of each layer's active weights; the density
  itself stays constant.
- ``Annealing(density, epochs)``: edge-popup's density annealing, epoch e (0-based) trains at
  d^((e + 1)/E), so the last epoch uses d.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

ITERATIVE_KINDS = ("exponential", "linear")


class ScheduleError(ValueError):
    """A schedule whose parameters are out of range or unknown."""


@runtime_checkable
class Schedule(Protocol):
    """What every schedule answers (``t``: a step, round, level or epoch, as the kind says)."""

    def is_update_step(self, step: int) -> bool: ...

    def density_at(self, step: int) -> float: ...


def _check_density(what: str, value: float, *, zero: bool = False) -> None:
    low_ok = value >= 0 if zero else value > 0
    if not (isinstance(value, (int, float)) and low_ok and value <= 1):
        raise ScheduleError(f"{what} (fraction kept) must be in {'[0' if zero else '(0'}, 1], got {value!r}")


def update_steps(schedule: Schedule, steps: Iterable[int]) -> list[int]:
    """The steps among ``steps`` at which ``schedule`` changes the mask."""
    return [t for t in steps if schedule.is_update_step(t)]


@dataclass(frozen=True)
class OneShot:
    """Prune once, at ``at``, to ``density``; dense before."""

    density: float
    at: int = 0

    def __post_init__(self) -> None:
        _check_density("density", self.density)
        object.__setattr__(self, "density", float(self.density))

    @classmethod
    def example(cls) -> "OneShot":
        """A small instance for the contract test (every registered schedule provides one)."""
        return OneShot(0.1, at=3)

    def is_update_step(self, step: int) -> bool:
        return step == self.at

    def density_at(self, step: int) -> float:
        return self.density if step >= self.at else 1.0


@dataclass(frozen=True)
class Iterative:
    """``rounds`` prunes to ``density``; round k (1-based) ends at d^(k/n) or 1 - (1 - d) k / n.

    ``density_at(0)`` is 1 (nothing pruned yet); from round n on it is exactly ``density`` (1 - (1 - d)
    is not always d in floating point). ``with_density(d)`` is the same schedule towards another
    density, e.g. one layer's share under a layer-wise distribution.
    """

    density: float
    rounds: int
    kind: str = "exponential"

    def __post_init__(self) -> None:
        _check_density("density", self.density, zero=True)
        object.__setattr__(self, "density", float(self.density))
        if self.kind not in ITERATIVE_KINDS:
            raise ScheduleError(f"unknown iterative schedule {self.kind!r}; choose one of {ITERATIVE_KINDS}")
        if self.rounds < 1 or self.rounds != int(self.rounds):
            raise ScheduleError(f"rounds must be an integer >= 1, got {self.rounds!r}")

    @classmethod
    def example(cls) -> "Iterative":
        """A small instance for the contract test (every registered schedule provides one)."""
        return Iterative(0.05, 10)

    def is_update_step(self, step: int) -> bool:
        return 1 <= step <= self.rounds

    def density_at(self, step: int) -> float:
        if step >= self.rounds:
            return self.density
        if step <= 0:
            return 1.0
        if self.kind == "exponential":
            return self.density ** (step / self.rounds)
        return 1.0 - (1.0 - self.density) * step / self.rounds

    def with_density(self, density: float) -> "Iterative":
        return replace(self, density=density)


@dataclass(frozen=True)
class IMPLevels:
    """Iterative magnitude pruning: each level removes ``rate`` of the remaining weights.

    Level L keeps (1 - rate)^L of the original weights (level 0 = dense, L >= 1 prunes). The kept
    count of a group of N weights is round(N * density_at(L)), computed from the level rather than
    chained level by level, so rounding never drifts. ``levels`` (optional) bounds the updates;
    ``density`` is then the density at the last level.
    """

    rate: float
    levels: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.rate, (int, float)) and 0 <= self.rate < 1):
            raise ScheduleError(f"rate (fraction of the remaining weights removed per level) must be in [0, 1), "
                                f"got {self.rate!r}")
        if self.levels is not None and (self.levels < 0 or self.levels != int(self.levels)):
            raise ScheduleError(f"levels must be an integer >= 0, got {self.levels!r}")
        object.__setattr__(self, "rate", float(self.rate))

    @property
    def density(self) -> float:
        if self.levels is None:
            raise ScheduleError("IMPLevels without levels has no final density; give levels=")
        return self.density_at(self.levels)

    @classmethod
    def example(cls) -> "IMPLevels":
        """A small instance for the contract test (every registered schedule provides one)."""
        return IMPLevels(0.2, levels=12)

    def is_update_step(self, step: int) -> bool:
        return step >= 1 and (self.levels is None or step <= self.levels)

    def density_at(self, step: int) -> float:
        if step <= 0:
            return 1.0
        if self.levels is not None:
            step = min(step, self.levels)
        return (1.0 - self.rate) ** step


@dataclass(frozen=True)
class Cubic:
    """Gradual magnitude pruning (Zhu & Gupta 2017): at t = start, start + every, ..., end the
    sparsity is s_t = s_f + (s_i - s_f)(1 - (t - start)/(end - start))^3, s = 1 - density.

    Evaluated in sparsity, as the paper writes it (and as stored GMP runs were computed), so
    ``density_at(end)`` is 1 - (1 - density): ``density`` itself or one ulp away from it (0.1 gives
    0.09999999999999998). Callers that need the final counts exactly (``GradualMagnitude`` with a
    layer-wise distribution) take them from ``density``.
    """

    density: float
    start: int
    end: int
    every: int
    initial_density: float = 1.0

    def __post_init__(self) -> None:
        # (1e-12: an initial density given as 1 - s_i may sit one ulp under a final density 1 - s_f = 1 - s_i)
        if not (0 < self.density <= 1 and 0 < self.initial_density <= 1 and self.density <= self.initial_density + 1e-12):
            raise ScheduleError(f"need 0 < density <= initial_density <= 1 (fractions kept), got "
                                f"density={self.density} and initial_density={self.initial_density}")
        if self.every < 1 or self.end <= self.start:
            raise ScheduleError(f"need every >= 1 and end > start, got every={self.every}, {self.start}..{self.end}")
        if (self.end - self.start) % self.every:
            raise ScheduleError(f"end - start ({self.end - self.start}) must be a multiple of every ({self.every})")
        object.__setattr__(self, "density", float(self.density))
        object.__setattr__(self, "initial_density", float(self.initial_density))

    @classmethod
    def example(cls) -> "Cubic":
        """A small instance for the contract test (every registered schedule provides one)."""
        return Cubic(0.1, start=10, end=110, every=10, initial_density=0.9)

    def is_update_step(self, step: int) -> bool:
        return self.start <= step <= self.end and (step - self.start) % self.every == 0

    def sparsity_at(self, step: int) -> float:
        initial, final = 1.0 - self.initial_density, 1.0 - self.density
        if step <= self.start:
            return initial
        if step >= self.end:
            return final
        return final + (initial - final) * (1.0 - (step - self.start) / (self.end - self.start)) ** 3

    def density_at(self, step: int) -> float:
        return 1.0 - self.sparsity_at(step)


@dataclass(frozen=True)
class CosineDrop:
    """RigL / SET: update every ``every`` steps while 0 < t < ``end``, dropping (and regrowing)
    ``drop_fraction(t)`` = alpha/2 (1 + cos(pi t / end)) of each layer's active weights.

    The density does not move: ``density_at`` returns ``density`` when it was given (the start
    mask's density; each layer keeps its count) and raises otherwise.
    """

    alpha: float
    every: int
    end: int
    density: float | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ScheduleError(f"every (delta_t) must be >= 1, got {self.every}")
        if not 0 < self.alpha < 1:
            raise ScheduleError(f"alpha (initial drop fraction) must be in (0, 1), got {self.alpha}")
        if self.end < 0:
            raise ScheduleError(f"end (t_end) must be >= 0, got {self.end}")
        if self.density is not None:
            _check_density("density", self.density)
            object.__setattr__(self, "density", float(self.density))

    @classmethod
    def example(cls) -> "CosineDrop":
        """A small instance for the contract test (every registered schedule provides one)."""
        return CosineDrop(0.3, every=10, end=75, density=0.2)

    def is_update_step(self, step: int) -> bool:
        return 0 < step < self.end and step % self.every == 0

    def drop_fraction(self, step: int) -> float:
        """f(t) = alpha / 2 * (1 + cos(pi t / end)); 0 from ``end`` on."""
        if step >= self.end:
            return 0.0
        return self.alpha / 2.0 * (1.0 + math.cos(math.pi * step / self.end))

    def density_at(self, step: int) -> float:
        if self.density is None:
            raise ScheduleError("this CosineDrop was built without density: drop-and-grow keeps the start "
                                "mask's density (pass density= to ask the schedule)")
        return self.density


@dataclass(frozen=True)
class Annealing:
    """Edge-popup's density annealing: epoch e (0-based) of ``epochs`` trains at
    ``density ** ((e + 1) / epochs)``, so the first epoch keeps d^(1/E) and the last exactly d.

    The density is set at the start of every epoch (``is_update_step(e)`` for 0 <= e < epochs).
    """

    density: float
    epochs: int

    def __post_init__(self) -> None:
        _check_density("density", self.density)
        if self.epochs < 1 or self.epochs != int(self.epochs):
            raise ScheduleError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        object.__setattr__(self, "density", float(self.density))

    @classmethod
    def example(cls) -> "Annealing":
        """A small instance for the contract test (every registered schedule provides one)."""
        return Annealing(0.05, 10)

    def is_update_step(self, step: int) -> bool:
        return 0 <= step < self.epochs

    def density_at(self, step: int) -> float:
        if step < 0:
            raise ScheduleError(f"epochs count from 0, got {step}")
        if step >= self.epochs - 1:
            return self.density
        return self.density ** ((step + 1) / self.epochs)


SCHEDULE_KINDS: dict[str, type] = {
    "one_shot": OneShot,
    "iterative": Iterative,
    "imp": IMPLevels,
    "cubic": Cubic,
    "cosine_drop": CosineDrop,
    "annealing": Annealing,
}
