"""Masks that change during training, as Trainer callbacks (no second training loop).

- ``DropGrow``: sparse-to-sparse training. Every ``delta_t`` steps until ``t_end``, each layer
  drops the fraction f(t) = alpha/2 (1 + cos(pi t / t_end)) of its active weights with the
  smallest |w| and grows as many inactive connections: by largest |dense gradient| (RigL, Evci et
  al. 2020) or at random (SET, Mocanu et al. 2018). As in RigL's Algorithm 1 the grow candidates
  are the connections inactive *after* the drop (a just-dropped one may come back, at 0). Grown
  weights start at exactly 0 and their optimiser state (momentum, Adam moments) is reset; every
  layer keeps its active count. The dense gradient is the one the Trainer's backward pass of the
  update step already computed (pruned weights' gradients are not masked), so it costs nothing
  extra here; FLOPs accounting charges it as RigL's paper does.
- ``GradualMagnitude``: dense-to-sparse (Zhu & Gupta 2017). At t = t0, t0 + dt, ..., t0 + n dt the
  sparsity is s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, reached by removing the smallest |w|
  among the weights still kept, globally or per layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..masks import Mask
from .selection import _top_indices, keep_top


def cosine_drop_fraction(step: int, alpha: float, t_end: int) -> float:
    """f(t) = alpha / 2 * (1 + cos(pi t / t_end)); 0 from t_end on."""
    if step >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


def _reset_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero every per-entry optimiser state of ``param`` at the positions ``where``."""
    state = optimizer.state.get(param, {})
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.view(-1)[where] = 0


@dataclass
class DropGrow:
    """RigL (``grow="gradient"``) or SET (``grow="random"``) mask updates as a Trainer callback."""

    grow: str
    delta_t: int = 100
    t_end: int = 0
    alpha: float = 0.3
    seed: int = 0
    log: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.grow not in ("gradient", "random"):
            raise ValueError(f"grow must be 'gradient' (RigL) or 'random' (SET), got {self.grow!r}")
        if self.delta_t < 1:
            raise ValueError(f"delta_t must be >= 1, got {self.delta_t}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha (initial drop fraction) must be in (0, 1), got {self.alpha}")

    def is_update_step(self, step: int) -> bool:
        return 0 < step < self.t_end and step % self.delta_t == 0

    def update_steps(self, total_steps: int) -> int:
        """How many updates a run of ``total_steps`` makes (for FLOPs accounting)."""
        return sum(1 for t in range(1, total_steps + 1) if self.is_update_step(t))

    @torch.no_grad()
    def __call__(self, trainer, step: int) -> None:
        if not self.is_update_step(step) or trainer.mask is None:
            return
        fraction = cosine_drop_fraction(step, self.alpha, self.t_end)
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


def gmp_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's cubic schedule: s_i before ``start``, s_f from ``end`` on."""
    if step <= start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


@dataclass
class GradualMagnitude:
    """Gradual magnitude pruning every ``every`` steps from ``start`` to ``end`` (a Trainer callback)."""

    final_sparsity: float
    start: int
    end: int
    every: int
    initial_sparsity: float = 0.0
    scope: str = "global"

    def __post_init__(self) -> None:
        if not 0 <= self.initial_sparsity <= self.final_sparsity < 1:
            raise ValueError("need 0 <= initial_sparsity <= final_sparsity < 1, got "
                             f"{self.initial_sparsity} and {self.final_sparsity}")
        if self.every < 1 or self.end <= self.start:
            raise ValueError(f"need every >= 1 and end > start, got every={self.every}, {self.start}..{self.end}")
        if (self.end - self.start) % self.every:
            raise ValueError(f"end - start ({self.end - self.start}) must be a multiple of every ({self.every})")
        if self.scope not in ("global", "layerwise"):
            raise ValueError(f"scope must be 'global' or 'layerwise', got {self.scope!r}")

    def is_prune_step(self, step: int) -> bool:
        return self.start <= step <= self.end and (step - self.start) % self.every == 0

    def target_counts(self, mask: Mask, step: int) -> dict[tuple[str, ...], int]:
        density = 1.0 - gmp_sparsity(step, self.initial_sparsity, self.final_sparsity, self.start, self.end)
        if self.scope == "global":
            return {tuple(mask): int(round(mask.num_total * density))}
        return {(n,): int(round(t.numel() * density)) for n, t in mask.items()}

    @torch.no_grad()
    def __call__(self, trainer, step: int) -> None:
        if not self.is_prune_step(step) or trainer.mask is None:
            return
        params = dict(trainer.model.named_parameters())
        scores = {n: params[n].detach().abs().cpu() for n in trainer.mask}
        groups = {names: min(count, sum(int(trainer.mask[n].sum()) for n in names))
                  for names, count in self.target_counts(trainer.mask, step).items()}
        trainer.set_mask(keep_top(scores, trainer.mask, groups))
