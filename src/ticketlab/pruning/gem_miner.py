"""GEM-MINER (Sreenivasan et al. 2022, "Rare Gems: Finding Lottery Tickets at Initialization").

The authors' ``hc_iter`` algorithm (code: ksreenivasan/pruning_is_enough). Every prunable weight
tensor ``w`` (the Linear/Conv weights chosen by ``prunable_parameters``) is frozen at its init
(by default rewritten to the *signed constant* ``sign(w) * gain / sqrt(fan_in)``, gain = sqrt 2)
and gets

* a score tensor ``s`` of the same shape, initialised U[0, 1] from a generator seeded with
  ``seed`` and kept in [0, 1] by clamping after every optimiser step;
* a flag tensor (a buffer, 1 = not yet pruned).

The forward pass computes with ``w * 1{s > 0.5} * flag``. The backward pass sends the gradient
straight through the rounding: ``dL/ds = dL/d(w_eff) * w * flag`` (the authors' ``GetSubnet``
returns the incoming gradient unchanged and the product with the flag follows). The loss is the
task loss plus ``lam * sum(s ** 2)`` over every score tensor.

Every ``iter_period`` epochs a global pruning round unflags, for good, the still-flagged weights
with the smallest scores, so that after the K = floor((epochs - 1) / iter_period) rounds exactly
``round(density * N)`` weights stay flagged (N = number of masked weights; at least 1). Round r
(1..K) keeps ``max(1, round(N * density ** (r / K)))`` weights: each round removes the fraction
p = 1 - density ** (1 / K) of the flagged weights up to rounding, and rounding never accumulates
because every target is computed from N. Rounds happen, as in the authors' loop, after the
0-based epochs ``iter_period, 2 * iter_period, ..., K * iter_period`` (i.e. once T + 1, 2T + 1,
..., KT + 1 epochs are done); ties at the threshold keep the lowest flat index (global order:
parameter order, then row-major).

Two of the authors' behaviours that change results are options (``docs/gem_miner.md`` measures
both ways): ``round_counts="ceil"`` (each round unflags ``ceil(p * flagged)`` weights plus every
flagged weight tied with the last of them, so the final density is only about ``density``; the
default ``"exact"`` hits the count) and ``lr_step="epoch"`` (the cosine LR held constant within an
epoch, as their ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch; the default
``"iteration"`` decays it every step).

The result is the *flag* mask (not ``1{s > 0.5}``), fine-tuned by ``finetune_gem`` (the
``Trainer`` with that mask) from the frozen weights (the signed constants), as the authors'
``--unflag-before-finetune`` path does. See docs/gem_miner.md for every decision and deviation.

The user's layers are not rewritten: each masked parameter gets a ``torch.nn.utils.parametrize``
parametrization (the mechanism of ``edge_popup.py``), so any model with Linear/Conv layers works;
``GemMiner.remove()`` restores plain parameters holding the frozen weights (unmasked).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..data import DataSplits
from ..masks import Mask
from ..prunable import prunable_parameters
from .edge_popup import ScoredParametrizations, _fan_in, _holders, topk_mask

if TYPE_CHECKING:  # for annotations only: the functions import training/config where used
    from ..training import History, Trainer

WEIGHT_INITS = ("signed_constant", "keep")
OPTIMIZERS = ("sgd", "adam")
ROUND_COUNTS = ("exact", "ceil")  # ours: exact counts per round; the authors': ceil(p * flagged) + ties
LR_STEPS = ("iteration", "epoch")  # ours: cosine per iteration; the authors': per epoch
_GAIN = math.sqrt(2.0)  # nn.init.calculate_gain("relu"), the authors' default nonlinearity
THRESHOLD = 0.5  # the authors' quantize_threshold


class GemMinerError(ValueError):
    """Bad GEM-MINER options, or use of a GemMiner after ``remove()``."""


# --- the schedule -------------------------------------------------------------------------------
def pruning_rounds(epochs: int, iter_period: int) -> int:
    """K = floor((epochs - 1) / iter_period), the number of pruning rounds (the authors')."""
    _check_int("epochs", epochs, 1)
    _check_int("iter_period", iter_period, 1)
    return (epochs - 1) // iter_period


def prune_epochs(epochs: int, iter_period: int) -> list[int]:
    """Completed-epoch counts after which a round prunes: iter_period * j + 1, j = 1..K."""
    return [iter_period * j + 1 for j in range(1, pruning_rounds(epochs, iter_period) + 1)]


def kept_schedule(total: int, density: float, rounds: int) -> list[int]:
    """Flagged weights after each of ``rounds`` rounds: ``max(1, round(total * density ** (r / rounds)))``.

    Non-increasing, and the last entry is ``max(1, round(density * total))`` exactly.
    """
    _check_density(density)
    _check_int("total", total, 1)
    _check_int("rounds", rounds, 1)
    out = [max(1, min(total, round(total * density ** (r / rounds)))) for r in range(1, rounds)]
    out.append(max(1, min(total, round(total * density))))
    for i in range(1, len(out)):  # float noise cannot make a later round keep more
        out[i] = min(out[i], out[i - 1])
    return out


def prune_rate(density: float, rounds: int) -> float:
    """p = 1 - density ** (1 / rounds): the fraction of flagged weights each round removes."""
    _check_density(density)
    _check_int("rounds", rounds, 1)
    return 1.0 - density ** (1.0 / rounds)


def ceil_schedule(total: int, density: float, rounds: int) -> list[int]:
    """Flagged weights after each round under the authors' counts, if no scores tie: each round
    unflags ``ceil(p * flagged)`` with p = ``prune_rate(density, rounds)``. Ties at a round's
    threshold can only unflag more. Why: shows how far ``round_counts="ceil"`` lands below target."""
    rate = prune_rate(density, rounds)
    _check_int("total", total, 1)
    out, flagged = [], total
    for _ in range(rounds):
        flagged -= math.ceil(rate * flagged)
        out.append(flagged)
    return out


def epoch_cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """The LR of 0-based ``epoch`` under ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch
    (the authors' score phase): ``lr * (1 + cos(pi * epoch / epochs)) / 2``, constant in the epoch."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


# --- the parametrization ------------------------------------------------------------------------
class _RoundedMask(torch.autograd.Function):
    """Forward ``w * 1{s > 0.5} * flag``; backward ``dL/ds = dL/dout * w * flag`` (straight through)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
        mask = (scores.detach() > THRESHOLD) & flag
        ctx.save_for_backward(weight, mask, flag)
        return weight * mask

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        weight, mask, flag = ctx.saved_tensors
        grad_weight = grad_out * mask if ctx.needs_input_grad[0] else None
        grad_scores = grad_out * weight * flag if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


class GemMask(nn.Module):
    """Parametrization ``w -> w * 1{scores > 0.5} * flag`` with straight-through score gradients."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.register_buffer("flag", torch.ones(scores.shape, dtype=torch.bool, device=scores.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _RoundedMask.apply(weight, self.scores, self.flag)

    @torch.no_grad()
    def forward_mask(self) -> torch.Tensor:
        return (self.scores > THRESHOLD) & self.flag

    def extra_repr(self) -> str:
        return f"shape={tuple(self.scores.shape)}, flagged={int(self.flag.sum())}"


class GemMiner(ScoredParametrizations):
    """Put GEM-MINER score/flag parametrizations on ``model`` (in place) and freeze its parameters.

    ``weight_init``: ``"signed_constant"`` (the authors': ``sign(w) * sqrt(2) / sqrt(fan_in)``
    with the signs of the model's own init; an exact zero counts as +) or ``"keep"`` (the
    model's weights as they are). Scores start U[0, 1] from ``generator`` (seeded 0 when None).
    Biases are neither scored nor masked (the authors' default ``--bias False``); like every other
    parameter they are frozen (``requires_grad=False``) until ``remove()``.

    Mask names are the model's parameter names, so masks fit the model ``remove()`` returns.
    ``include`` / ``exclude`` choose the masked weights as in ``prunable_parameters``; a parameter
    shared by several modules has one score and flag tensor.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        weight_init: str = "signed_constant",
        generator: torch.Generator | None = None,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ):
        if weight_init not in WEIGHT_INITS:
            raise GemMinerError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        if any(parametrize.is_parametrized(m) for m in model.modules()):
            raise GemMinerError("the model already carries parametrizations; remove them first")
        self.model = model
        self.weight_init = weight_init
        self._removed = False
        gen = generator if generator is not None else torch.Generator().manual_seed(0)

        weights = prunable_parameters(model, include=include, exclude=exclude)
        holders = _holders(model)
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)

        self._entries: list[tuple[str, GemMask, list[tuple[nn.Module, str]]]] = []
        for name, weight in weights.items():
            if weight_init == "signed_constant":
                std = _GAIN / math.sqrt(_fan_in(weight))
                with torch.no_grad():
                    weight.copy_(torch.where(weight < 0, -std, std).to(weight.dtype))
            scores = torch.rand(weight.shape, generator=gen).to(device=weight.device, dtype=weight.dtype)
            pm = GemMask(scores)
            where = holders[id(weight)]
            for module, attr in where:  # one parametrization, shared by every holder
                parametrize.register_parametrization(module, attr, pm)
            self._entries.append((name, pm, where))
        self.total = sum(pm.scores.numel() for _, pm, _ in self._entries)

    _error = GemMinerError

    # --- API ------------------------------------------------------------------------------------
    def frozen_weights(self) -> dict[str, torch.Tensor]:
        """Parameter name -> the frozen weight tensor (the parametrization's original)."""
        self._check_alive()
        return {name: getattr(where[0][0].parametrizations, where[0][1]).original
                for name, _, where in self._entries}

    def flag_mask(self) -> Mask:
        """The flags (weights not yet pruned): GEM-MINER's result."""
        self._check_alive()
        return Mask({name: pm.flag for name, pm, _ in self._entries})

    def forward_mask(self) -> Mask:
        """What the forward pass uses now: ``1{s > 0.5} & flag``."""
        self._check_alive()
        return Mask({name: pm.forward_mask() for name, pm, _ in self._entries})

    def num_flagged(self) -> int:
        self._check_alive()
        return int(sum(int(pm.flag.sum()) for _, pm, _ in self._entries))

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project every score onto [0, 1] (after each optimiser step)."""
        self._check_alive()
        torch._foreach_clamp_min_(self.scores(), 0.0)
        torch._foreach_clamp_max_(self.scores(), 1.0)

    def regularizer(self, lam: float) -> Callable[[nn.Module], torch.Tensor]:
        """``model -> lam * sum over score tensors of ||s||^2`` (the Trainer's ``regularizer``)."""
        def reg(_: nn.Module) -> torch.Tensor:
            return lam * sum((s * s).sum() for s in self.scores())
        return reg

    @torch.no_grad()
    def prune_to(self, keep: int) -> int:
        """Unflag, for good, the flagged weights with the smallest scores so that exactly ``keep``
        stay flagged (global ranking over all masked tensors; ties keep the lowest flat index).
        Returns the number unflagged. ``keep`` may not exceed the flagged count."""
        self._check_alive()
        flagged = self.num_flagged()
        if not (isinstance(keep, int) and 1 <= keep <= flagged):
            raise GemMinerError(f"keep must be an int in [1, {flagged}] (the flagged count), got {keep!r}")
        if keep == flagged:
            return 0
        pms = [pm for _, pm, _ in self._entries]
        values = torch.cat([torch.where(pm.flag, pm.scores.detach(), -math.inf).reshape(-1).float().cpu()
                            for pm in pms])
        keep_flat = topk_mask(values, keep)
        offset = 0
        for pm in pms:
            n = pm.flag.numel()
            pm.flag.copy_(keep_flat[offset:offset + n].view_as(pm.flag).to(pm.flag.device))
            offset += n
        return flagged - keep

    @torch.no_grad()
    def prune_fraction(self, rate: float) -> int:
        """The authors' round (``prune_type: BottomK``): take the ``ceil(rate * flagged)``-th smallest
        flagged score as threshold and unflag every flagged weight scoring ``<=`` it, so ties (e.g.
        scores clamped to 0) unflag more than the count. Returns the number unflagged."""
        self._check_alive()
        if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
            raise GemMinerError(f"rate must lie in [0, 1), got {rate!r}")
        flagged = self.num_flagged()
        count = math.ceil(rate * flagged)
        if count == 0:
            return 0
        pms = [pm for _, pm, _ in self._entries]
        values = torch.cat([pm.scores.detach()[pm.flag].reshape(-1).cpu() for pm in pms])
        threshold = values.kthvalue(count).values
        for pm in pms:
            pm.flag &= pm.scores.detach() > threshold.to(pm.scores.device)
        return flagged - self.num_flagged()

    def remove(self) -> nn.Module:
        """Drop the parametrizations: every masked parameter holds its frozen (unmasked) weight
        again and the parameters' ``requires_grad`` flags are restored. Returns the model."""
        self._check_alive()
        for _, pm, where in self._entries:
            for module, attr in where:
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        return self._released()


# --- the procedure ------------------------------------------------------------------------------
def train_gem_miner(
    model: nn.Module,
    data: DataSplits,
    density: float,
    *,
    epochs: int = 20,
    iter_period: int = 5,
    lr: float = 0.1,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    lam: float = 1e-4,
    batch_size: int = 128,
    weight_init: str = "signed_constant",
    seed: int = 0,
    device: torch.device | str | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    keep_parametrized: bool = False,
    round_counts: str = "exact",
    lr_step: str = "iteration",
) -> dict:
    """GEM-MINER's score phase on ``model`` (in place): find a flag mask of exactly
    ``max(1, round(density * N))`` of the N masked weights.

    Trains only the scores through the ``Trainer``: ``optimizer`` "sgd" (``momentum``, no
    weight decay; the authors' CIFAR recipe is lr 0.1, momentum 0.9, batch 128) or "adam"
    (their MNIST/TinyImageNet runs), cosine LR from ``lr`` to 0 per iteration, loss +
    ``lam * ||s||^2``, scores clamped to [0, 1] after every step, the Trainer's seeded batches
    (``len(train) // batch_size`` per epoch) and one evaluation per epoch. Pruning rounds: see
    the module docstring. Needs ``epochs >= iter_period + 1`` unless ``density == 1``.

    The authors' behaviours, to measure against ours: ``round_counts="ceil"`` prunes each round
    with ``GemMiner.prune_fraction(prune_rate(density, K))`` (ceil + ties; the final count is only
    about the target) instead of ``prune_to`` exact counts; ``lr_step="epoch"`` holds the cosine LR
    constant within each epoch (``epoch_cosine_lr``) instead of decaying it every iteration.

    Returns ``mask`` (the flag Mask, the result), ``forward_mask`` (``1{s > 0.5} & flag`` at the
    end), ``scores`` (name -> final scores, a CPU copy), ``density`` (of ``mask``),
    ``test_accuracy`` / ``test_loss`` (the model with ``forward_mask``, the authors' "acc after
    rounding"), ``flag_test_accuracy`` / ``flag_test_loss`` (the frozen weights under the flag
    mask, what fine-tuning starts from), ``history`` (one record per epoch: ``epoch``,
    ``train_loss``, ``test_accuracy`` before any pruning that epoch, ``flag_density`` and
    ``forward_density`` and ``flagged`` after it, ``pruned`` this epoch, ``lr`` of its last step),
    ``rounds`` (K), ``kept_schedule`` (the flagged count after each round: planned for "exact", as
    it happened for "ceil"), ``round_counts``, ``lr_step`` and ``gem_miner`` (the GemMiner object).

    ``model`` ends holding the frozen weights (signed constants by default) as plain parameters,
    unmasked, with its ``requires_grad`` flags restored, ready for ``finetune_gem(model, data,
    result["mask"])``; ``keep_parametrized=True`` leaves the parametrizations on instead.
    """
    from ..config import TrainConfig
    from ..training import Callback, Trainer, default_device, evaluate

    _check_density(density)
    _check_int("epochs", epochs, 1)
    _check_int("iter_period", iter_period, 1)
    _check_int("batch_size", batch_size, 1)
    if optimizer not in OPTIMIZERS:
        raise GemMinerError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if round_counts not in ROUND_COUNTS:
        raise GemMinerError(f"round_counts must be one of {ROUND_COUNTS}, got {round_counts!r}")
    if lr_step not in LR_STEPS:
        raise GemMinerError(f"lr_step must be one of {LR_STEPS}, got {lr_step!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise GemMinerError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise GemMinerError(f"lam must be a finite number >= 0, got {lam!r}")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise GemMinerError(f"momentum must lie in [0, 1), got {momentum!r}")
    rounds = pruning_rounds(epochs, iter_period)
    if rounds == 0 and density < 1:
        raise GemMinerError(
            f"epochs={epochs} with iter_period={iter_period} leaves no pruning round "
            f"(K = floor((epochs - 1) / iter_period) = 0); use epochs >= iter_period + 1 = {iter_period + 1}")
    if len(data.train) < batch_size:
        raise GemMinerError(f"batch_size {batch_size} is larger than the training set ({len(data.train)} samples)")

    dev = torch.device(device) if device is not None else default_device()
    model.to(dev)
    gm = GemMiner(model, weight_init=weight_init, generator=torch.Generator().manual_seed(int(seed)),
                  include=include, exclude=exclude)
    schedule = kept_schedule(gm.total, density, rounds) if rounds else []
    per_epoch = len(data.train) // batch_size
    at_epoch = dict(zip(prune_epochs(epochs, iter_period), schedule))  # completed epochs -> kept count
    rate = prune_rate(density, rounds) if rounds else 0.0
    log: dict[int, dict] = {}

    def prune_round(epoch: int) -> int:
        if epoch not in at_epoch:
            return 0
        return gm.prune_to(at_epoch[epoch]) if round_counts == "exact" else gm.prune_fraction(rate)

    def after_step(trainer: Trainer, step: int) -> None:
        if step == 0:
            return
        gm.clamp_()
        if step % per_epoch:
            return
        epoch = step // per_epoch
        pruned = prune_round(epoch)
        log[epoch] = {"flag_density": gm.num_flagged() / gm.total, "forward_density": gm.forward_mask().density,
                      "pruned": pruned, "flagged": gm.num_flagged(), "lr": trainer.optimizer.param_groups[0]["lr"]}

    common = dict(lr=lr, weight_decay=0.0, batch_size=batch_size, steps=f"{epochs}ep", eval_every="1ep",
                  schedule="cosine" if lr_step == "iteration" else "constant", fused_optimizer=False)
    cfg = (TrainConfig(optimizer="sgd", momentum=momentum, **common) if optimizer == "sgd"
           else TrainConfig(optimizer="adam", **common))
    trainer = Trainer(model, data, cfg, seed=int(seed), device=dev, loss=loss, parameters=gm.scores(),
                      regularizer=gm.regularizer(float(lam)), callbacks=[Callback(after_step, every=1)])
    records = _train_scores(trainer, epochs, per_epoch, lr, lr_step).records[1:]  # [0]: before training
    history = []
    for r in records:
        epoch = r["step"] // per_epoch
        history.append({"epoch": epoch, "train_loss": r["train_loss"], "test_loss": r["test_loss"],
                        "test_accuracy": r.get("test_accuracy"), **log.get(epoch, {})})
    if round_counts == "ceil":  # what the rounds kept, in order
        schedule = [log[e]["flagged"] for e in sorted(at_epoch) if e in log]

    test = data.test.to(dev)
    final = evaluate(model, test, loss=loss)
    mask, forward_mask = gm.flag_mask(), gm.forward_mask()
    scores = {name: s.detach().cpu().clone() for name, s in gm.named_scores().items()}
    if not keep_parametrized:
        gm.remove()
    flag_eval = _evaluate_masked(model, mask, test, loss) if not keep_parametrized else None
    return {
        "mask": mask,
        "forward_mask": forward_mask,
        "scores": scores,
        "density": mask.density,
        "test_accuracy": final.get("accuracy"),
        "test_loss": final["loss"],
        "flag_test_accuracy": None if flag_eval is None else flag_eval.get("accuracy"),
        "flag_test_loss": None if flag_eval is None else flag_eval["loss"],
        "history": history,
        "rounds": rounds,
        "kept_schedule": schedule,
        "round_counts": round_counts,
        "lr_step": lr_step,
        "gem_miner": gm,
    }


def _train_scores(trainer: Trainer, epochs: int, per_epoch: int, lr: float, lr_step: str) -> History:
    """Run the score phase: one Trainer run (cosine per iteration from the config), or, for the
    authors' per-epoch cosine, one run per epoch at that epoch's constant LR (same batches, same
    callbacks, one evaluation per epoch as before)."""
    if lr_step == "iteration":
        return trainer.train()
    for e in range(epochs):
        trainer.train(e * per_epoch, (e + 1) * per_epoch, lr_override=epoch_cosine_lr(lr, e, epochs),
                      resumed=e > 0)
    return trainer.history


@torch.no_grad()
def _evaluate_masked(model: nn.Module, mask: Mask, test, loss) -> dict:
    """Evaluate the plain ``model`` under ``mask`` without changing its weights."""
    from ..training import evaluate

    params = mask.check_fits(model)
    saved = {n: p.detach().clone() for n, p in params.items()}
    mask.apply_(model)
    try:
        return evaluate(model, test, loss=loss)
    finally:
        for n, p in params.items():
            p.copy_(saved[n])


def finetune_gem(
    model: nn.Module,
    data: DataSplits,
    mask: Mask,
    *,
    epochs: int = 20,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    optimizer: str = "sgd",
    milestones: Sequence[float] = (0.5, 2 / 3),
    seed: int = 0,
    device: torch.device | str | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> dict:
    """Fine-tune the weights of ``model`` under ``mask`` with the ``Trainer`` (pruned weights held
    at exactly zero), from the weights the model holds now (after ``train_gem_miner``: the frozen
    signed constants, as the authors).

    The authors' fine-tuning recipe: SGD lr 0.01, momentum 0.9, weight decay 1e-4, multistep
    LR x0.1 at ``milestones`` (fractions of the run; their schedule helper's default for run
    lengths it has no table for: 1/2 and 2/3), as many epochs as the score phase, batch 128.
    ``optimizer="adam"`` uses Adam with ``lr`` and ``weight_decay`` (no momentum). Every
    parameter of the model is trained (biases included). Returns ``test_accuracy`` /
    ``test_loss`` (end), ``start_test_accuracy`` (before the first step), ``history`` (the
    Trainer's records) and ``model``.
    """
    from ..config import TrainConfig
    from ..training import Trainer, default_device

    _check_int("epochs", epochs, 1)
    _check_int("batch_size", batch_size, 1)
    if optimizer not in OPTIMIZERS:
        raise GemMinerError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not all(isinstance(m, (int, float)) and 0 < m < 1 for m in milestones):
        raise GemMinerError(f"milestones are fractions of the run in (0, 1), got {tuple(milestones)!r}")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise GemMinerError("the model still carries GEM-MINER parametrizations; call gem_miner.remove() first")
    per_epoch = len(data.train) // batch_size
    if per_epoch == 0:
        raise GemMinerError(f"batch_size {batch_size} is larger than the training set ({len(data.train)} samples)")
    total = epochs * per_epoch
    steps = tuple(f"{it}it" for it in sorted({max(1, int(m * total)) for m in milestones}))
    common = dict(lr=lr, weight_decay=weight_decay, batch_size=batch_size, steps=f"{epochs}ep",
                  schedule="multistep", milestones=steps, gamma=0.1, eval_every="1ep")
    cfg = (TrainConfig(optimizer="sgd", momentum=momentum, **common) if optimizer == "sgd"
           else TrainConfig(optimizer="adam", **common))
    dev = torch.device(device) if device is not None else default_device()
    trainer = Trainer(model, data, cfg, mask, seed=int(seed), device=dev, loss=loss)
    records = trainer.train().records
    return {
        "test_accuracy": records[-1].get("test_accuracy"),
        "test_loss": records[-1]["test_loss"],
        "start_test_accuracy": records[0].get("test_accuracy"),
        "history": records,
        "model": model,
    }


def _check_density(density: float) -> None:
    if isinstance(density, bool) or not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
        raise GemMinerError(f"density must lie in (0, 1], got {density!r}")


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise GemMinerError(f"{name} must be an int >= {low}, got {value!r}")


__all__: Sequence[str] = [
    "LR_STEPS", "ROUND_COUNTS", "GemMask", "GemMiner", "GemMinerError", "ceil_schedule", "epoch_cosine_lr",
    "finetune_gem", "kept_schedule", "prune_epochs", "prune_rate", "pruning_rounds", "train_gem_miner",
]
