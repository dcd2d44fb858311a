"""Masks that change during training, as Trainer callbacks (no second training loop).

Each callback composes a schedule (``pruning/schedules.py``: when, and how much in total) with
what the method does at an update step:

- ``DropGrow``: sparse-to-sparse training under a ``CosineDrop`` schedule. At every update step
  (every ``delta_t`` steps until ``t_end``) each layer drops the fraction f(t) = alpha/2 (1 +
  cos(pi t / t_end)) of its active weights with the smallest |w| and grows as many inactive
  connections: by largest |dense gradient| (RigL, Evci et al. 2020) or at random (SET, Mocanu et
  al. 2018). As in RigL's Algorithm 1 the grow candidates are the connections inactive *after* the
  drop (a just-dropped one may come back, at 0). Grown weights start at exactly 0 and their
  optimiser state (momentum, Adam moments) is reset; every layer keeps its active count. The dense
  gradient is the one the Trainer's backward pass of the update step already computed (pruned
  weights' gradients are not masked), so it costs nothing extra here; FLOPs accounting charges it
  as RigL's paper does.
- ``GradualMagnitude``: dense-to-sparse under a ``Cubic`` schedule (Zhu & Gupta 2017): at t = t0,
  t0 + dt, ..., t0 + n dt the sparsity is s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, reached
  by removing the smallest |w| among the weights still kept, spread over layers by any
  distribution ('global', 'uniform', 'erk', 'smart', 'smart_vgg').
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import ConfigError, _check_step, option
from ..masks import Mask
from .distributions import DISTRIBUTIONS, layer_counts, shapes_of
from .schedules import CosineDrop, Cubic, update_steps
from .selection import _top_indices, keep_top

GMP_DISTRIBUTIONS = ("global",) + DISTRIBUTIONS


def _reset_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero every per-entry optimiser state of ``param`` at the positions ``where``."""
    state = optimizer.state.get(param, {})
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.view(-1)[where] = 0


@dataclass(frozen=True)
class DropGrowOptions:
    """SET's and RigL's options: update the mask every ``delta_t`` iterations until ``t_end`` (a
    fraction of training), dropping ``alpha`` (cosine-decayed) of each layer's active weights."""

    delta_t: int = option(100, "RigL/SET: iterations between mask updates")
    t_end: float = option(0.75, "RigL/SET: last update, as a fraction of training")
    alpha: float = option(0.3, "RigL/SET: initial drop fraction (cosine-decayed)")

    def __post_init__(self) -> None:
        if self.delta_t < 1:
            raise ConfigError(f"delta_t must be >= 1, got {self.delta_t}")
        if not 0 < self.t_end <= 1:
            raise ConfigError(f"t_end is a fraction of training in (0, 1], got {self.t_end}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha (initial drop fraction) must be in (0, 1), got {self.alpha}")


@dataclass
class DropGrow:
    """RigL (``grow="gradient"``) or SET (``grow="random"``) mask updates as a Trainer callback.

    ``schedule`` says when to update and which fraction to drop (``CosineDrop(alpha, every=delta_t,
    end=t_end)``); run it as ``Callback(updater, every=schedule.every)``.
    """

    grow: str
    schedule: CosineDrop
    seed: int = 0
    log: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.grow not in ("gradient", "random"):
            raise ValueError(f"grow must be 'gradient' (RigL) or 'random' (SET), got {self.grow!r}")
        if not all(hasattr(self.schedule, a) for a in ("is_update_step", "drop_fraction")):
            raise TypeError(f"DropGrow needs a schedule with is_update_step and drop_fraction (e.g. CosineDrop), "
                            f"got {self.schedule!r}")

    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_update_step(step)

    def update_steps(self, total_steps: int) -> int:
        """How many updates a run of ``total_steps`` makes (for FLOPs accounting)."""
        return len(update_steps(self.schedule, range(1, total_steps + 1)))

    @torch.no_grad()
    def __call__(self, trainer, step: int) -> None:
        if not self.is_update_step(step) or trainer.mask is None:
            return
        fraction = self.schedule.drop_fraction(step)
        params = dict(trainer.model.named_parameters())
        new = {}
        changed = 0
        for index, (name, m) in enumerate(trainer.mask.items()):
            p = params[name]
            active = m.to(p.device).reshape(-1)
            k = int(round(fraction * int(active.sum())))
            if k == 0:
                new[name] = m
                continue
            # The k active weights of smallest |w| (ranked among the active ones only) ...
            w = p.detach().reshape(-1)
            active_idx = active.nonzero().reshape(-1)
            drop = active_idx[_top_indices(-w[active_idx].abs(), k)]
            after_drop = active.clone()
            after_drop[drop] = False
            # ... make way for the k inactive connections of largest |gradient| (RigL) or random (SET).
            if self.grow == "gradient":
                if p.grad is None:
                    raise RuntimeError(f"RigL needs the dense gradient of {name!r}, but it has none at step {step}")
                grow_score = p.grad.reshape(-1).abs()
            else:
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + step * 7_919 + index) % (2**63 - 1))
                grow_score = torch.rand(w.numel(), generator=g).to(p.device)
            grow = _top_indices(torch.where(after_drop, float("-inf"), grow_score), k)
            after_drop[grow] = True
            p.view(-1)[grow] = 0.0
            _reset_optimizer_state(trainer.optimizer, p, grow)
            new[name] = after_drop.reshape(m.shape).cpu()
            changed += k
        trainer.set_mask(Mask(new))
        self.log.append({"step": step, "drop_fraction": fraction, "changed": changed})


@dataclass(frozen=True)
class GMPOptions:
    """Gradual magnitude pruning's options: prune every ``every`` from ``start`` to ``end`` (step
    strings; None: 75% of training), the cubic schedule starting at ``initial_sparsity``. (That it
    stays below the final sparsity is checked by the experiment config, which knows the density.)"""

    start: str = option("0it", "GMP: first pruning step", dest="gmp_start")
    end: str | None = option(None, "GMP: last pruning step", dest="gmp_end", shown_default="75% of training")
    every: str = option("100it", "GMP: pruning period", dest="gmp_every")
    initial_sparsity: float = option(0.0, "GMP: sparsity of the first prune (the cubic schedule starts there)",
                                     dest="gmp_initial_sparsity")

    def __post_init__(self) -> None:
        if not 0 <= self.initial_sparsity < 1:
            raise ConfigError(f"gmp_initial_sparsity must be in [0, 1), got {self.initial_sparsity}")
        for what in ("start", "every") + (("end",) if self.end is not None else ()):
            _check_step(f"gmp_{what}", getattr(self, what))


@dataclass
class GradualMagnitude:
    """Gradual magnitude pruning at the update steps of ``schedule`` (a Trainer callback, run at
    ``every=1``): prune to ``schedule.density_at(step)`` by |w| among the weights still kept.

    ``distribution`` spreads the kept weights over layers: 'global' ranks all layers together
    (round(N d) kept in all); 'uniform' keeps round(n_l d) in every layer (Zhu & Gupta's per-layer
    pruning); 'erk', 'smart', 'smart_vgg' keep ``layer_counts(distribution, shapes, d)`` per layer,
    never fewer than their final counts, so the last update lands exactly on
    ``layer_counts(distribution, shapes, schedule.density)``. Counts never grow: a layer keeps at
    most what it keeps now.
    """

    schedule: Cubic
    distribution: str = "global"

    def __post_init__(self) -> None:
        if not all(hasattr(self.schedule, a) for a in ("is_update_step", "density_at", "density")):
            raise TypeError(f"GradualMagnitude needs a schedule with is_update_step, density_at and density "
                            f"(e.g. Cubic), got {self.schedule!r}")
        if self.distribution not in GMP_DISTRIBUTIONS:
            raise ValueError(f"distribution {self.distribution!r} is unknown; choose one of {GMP_DISTRIBUTIONS}")

    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_update_step(step)

    def target_counts(self, mask: Mask, step: int) -> dict[tuple[str, ...], int]:
        density = self.schedule.density_at(step)
        if self.distribution == "global":
            return {tuple(mask): int(round(mask.num_total * density))}
        if self.distribution == "uniform":
            return {(n,): int(round(t.numel() * density)) for n, t in mask.items()}
        shapes = shapes_of(mask)
        final = layer_counts(self.distribution, shapes, self.schedule.density)
        if density - self.schedule.density <= 1e-12:  # the end (Cubic's 1 - (1 - d) may be an ulp off d)
            return {(n,): final[n] for n in mask}
        now = layer_counts(self.distribution, shapes, density)
        return {(n,): max(final[n], now[n]) for n in mask}

    @torch.no_grad()
    def __call__(self, trainer, step: int) -> None:
        if not self.is_update_step(step) or trainer.mask is None:
            return
        params = dict(trainer.model.named_parameters())
        scores = {n: params[n].detach().abs().cpu() for n in trainer.mask}
        groups = {names: min(count, sum(int(trainer.mask[n].sum()) for n in names))
                  for names, count in self.target_counts(trainer.mask, step).items()}
        trainer.set_mask(keep_top(scores, trainer.mask, groups))


# The sparse-training methods' options, by method name (dense and static take none).
SPARSE_OPTIONS: dict[str, type] = {"set": DropGrowOptions, "rigl": DropGrowOptions, "gmp": GMPOptions}
