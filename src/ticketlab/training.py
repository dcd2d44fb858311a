"""Masked training: the whole loop in one file.

Pruned weights are kept at exactly zero by one fused in-place multiply of all masked weights after
each optimiser step (``torch._foreach_mul_``), not by forward hooks that rebuild every weight on
every call. Whatever the optimiser does to a pruned weight (momentum, weight decay, Adam moments
fed by its nonzero gradient), the multiply puts it back to zero before the next forward pass.

Steps are counted in iterations; epochs only decide data order. Data order and augmentation are
derived from (seed, epoch) and (seed, step), so a run resumed at step s sees exactly the batches
an uninterrupted run would.

Every training in ticketlab runs through this one loop: the loss (cross-entropy by default, MSE or
any callable), the evaluation metrics, the optimiser and the set of trained parameters are
arguments, so frozen-weight methods (edge-popup trains only its scores) and the planted benchmark
(a scaled regression loss) use it too.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .config import TrainConfig
from .data import ArrayData, DataSplits
from .masks import Mask
from .steps import to_iterations


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> mean loss (scalar)
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> SUM over the batch
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


class DivergenceError(RuntimeError):
    """The training loss (or an evaluation loss) became NaN or infinite: the run cannot go on."""


def _finite(x: float | None) -> bool:
    return x is None or math.isfinite(x)


def default_device() -> torch.device:
    """A GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DeviceError(ValueError):
    """A device that does not exist on this machine (or a name PyTorch does not know)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on, checked before any work starts: a GPU asked for but absent is an
    error naming the fix, not a traceback half-way through a run."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device {device!r} is not a device name ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but no CUDA GPU is visible to PyTorch on this machine "
                              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device "
                              "cpu, or leave --device out to use a GPU only when one is present")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"device {device!r} asked for, but Apple's MPS backend is not available here; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {device!r} is not supported by ticketlab; use cpu or cuda")
    return dev


def make_optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig, *,
                   foreach: bool | None = None) -> torch.optim.Optimizer:
    """The configured optimiser; fused kernels by default (one pass over weights, grads and state).

    Measured on LeNet-300-100 / MNIST, 2 CPU cores: the fused Adam step is 2.4x faster than the
    default one, which more than pays for the mask multiply (benchmarks/masking_overhead.py).
    Falls back to the default implementation where no fused kernel exists (older torch, devices);
    ``foreach`` is passed to that fallback (None: PyTorch's choice).
    """
    params = list(params)
    if cfg.optimizer == "sgd":
        cls: type[torch.optim.Optimizer] = torch.optim.SGD
        kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    else:
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        kwargs = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.fused_optimizer:
        try:
            return cls(params, **kwargs, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return cls(params, **kwargs) if foreach is None else cls(params, **kwargs, foreach=foreach)


def lr_factor(step: int, cfg: TrainConfig, total_steps: int, iterations_per_epoch: int) -> float:
    """Multiplier of the base LR at iteration ``step`` (a pure function, so it can be replayed)."""
    warmup = to_iterations(cfg.warmup, iterations_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "multistep":
        passed = sum(step >= to_iterations(m, iterations_per_epoch) for m in cfg.milestones)
        return cfg.gamma ** passed
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress  # linear decay to zero


@dataclass
class Callback:
    """Call ``fn(trainer, step)`` when ``step`` iterations are done, at given steps or periodically.

    Steps count completed iterations: a callback at 0 sees the weights before any update, at k the
    weights after k updates (what weight rewinding to step k saves).
    """

    fn: Callable[["Trainer", int], None]
    at: Sequence[int] = ()
    every: int | None = None

    def __post_init__(self) -> None:
        self.at = frozenset(self.at)  # checked at every step: O(1) lookups

    def due(self, step: int) -> bool:
        return step in self.at or (self.every is not None and self.every > 0 and step % self.every == 0)


@dataclass
class History:
    """Evaluations over a run: one dict per evaluation (step, losses, accuracies)."""

    records: list[dict[str, float]] = field(default_factory=list)
    mask_events: list[dict] = field(default_factory=list)  # (step, kept per layer) at every mask change

    def best(self, key: str = "val_loss") -> dict[str, float] | None:
        rows = [r for r in self.records if key in r]
        return min(rows, key=lambda r: (r[key], r["step"])) if rows else None


def _batch_generator(seed: int, salt: int, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + salt * 7_919 + index) % (2**63 - 1))
    return g


def correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Number of samples whose largest output is the target class (the "accuracy" metric's sum)."""
    return (output.argmax(1) == target).sum()


def default_metrics(data: ArrayData) -> dict[str, Metric]:
    """Accuracy for int64 class labels; nothing for floating-point (regression) targets."""
    return {"accuracy": correct} if data.y.dtype == torch.int64 else {}


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayData, batch_size: int = 1000, loss: Loss = F.cross_entropy,
             metrics: Mapping[str, Metric] | None = None) -> dict[str, float]:
    """Mean ``loss`` and the mean of each metric of ``model`` on ``data`` (already on the device).

    ``metrics`` maps a name to a per-batch *sum* (``correct`` -> accuracy); default:
    ``default_metrics(data)``. A batch adds its mean loss times its size; cross-entropy is summed
    exactly (``reduction="sum"``).
    """
    metrics = default_metrics(data) if metrics is None else metrics
    was_training = model.training
    model.eval()
    loss_sum, sums = 0.0, dict.fromkeys(metrics, 0)
    for i in range(0, len(data), batch_size):
        x, y = data.x[i:i + batch_size], data.y[i:i + batch_size]
        out = model(x)
        if loss is F.cross_entropy:
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        else:
            loss_sum += float(loss(out, y)) * len(y)
        for name, metric in metrics.items():
            sums[name] += metric(out, y).item()
    model.train(was_training)
    n = max(1, len(data))
    return {"loss": loss_sum / n, **{name: total / n for name, total in sums.items()}}


class Trainer:
    """Train ``model`` on ``data`` under ``mask``, evaluating on a schedule and running callbacks.

    Works with any ``nn.Module``. ``loss(output, target)`` is minimised and evaluated
    (cross-entropy by default); ``metrics`` are evaluated too (see ``evaluate``; records hold
    ``test_<name>`` / ``val_<name>``). ``parameters`` are the ones trained (default: all of the
    model's; they must belong to the model, whose state is what checkpoints save); the others stay
    as they are. ``optimizer(parameters)`` builds the optimiser (default: ``make_optimizer`` from
    ``cfg``); the LR schedule of ``cfg`` sets the LR of all its groups every step.
    ``start_step`` lets a run begin mid-schedule (weight rewinding trains steps k..T with the LR the
    full schedule has there). ``lr_override`` fixes a constant LR (fine-tuning).
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        cfg: TrainConfig,
        mask: Mask | None = None,
        *,
        validation: ArrayData | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        callbacks: Sequence[Callback] = (),
        progress: bool = False,
        desc: str = "train",
        regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
        loss: Loss = F.cross_entropy,
        metrics: Mapping[str, Metric] | None = None,
        parameters: Iterable[nn.Parameter] | None = None,
        optimizer: OptimizerFactory | None = None,
        pruned_values: Mapping[str, torch.Tensor] | None = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.cfg = cfg
        self.seed = seed
        self.train_data = data.train.to(self.device)
        self.test_data = data.test.to(self.device)
        self.val_data = validation.to(self.device) if validation is not None and len(validation) else None
        self.augment = data.augment
        self.iterations_per_epoch = len(self.train_data) // cfg.batch_size
        if self.iterations_per_epoch == 0:
            raise ValueError(
                f"batch_size {cfg.batch_size} is larger than the training set ({len(self.train_data)} samples)"
            )
        self.total_steps = to_iterations(cfg.steps, self.iterations_per_epoch)
        self.eval_every = to_iterations(cfg.eval_every, self.iterations_per_epoch)
        self.callbacks = list(callbacks)
        self.progress = progress
        self.desc = desc
        self.history = History()
        self.step: int | None = None  # completed iterations while training, else None
        self.regularizer = regularizer  # added to the loss, e.g. network slimming's L1 on BN scales
        self.stop_requested = False  # a callback may end training early (early-bird tickets)
        self.loss = loss
        self.metrics = default_metrics(self.test_data) if metrics is None else dict(metrics)
        self.pruned_values = dict(pruned_values) if pruned_values is not None else None
        self.set_mask(mask)
        params = list(self.model.parameters()) if parameters is None else list(parameters)
        known = {id(p) for p in self.model.parameters()}
        if not params or any(id(p) not in known for p in params):
            raise ValueError("parameters to train must be a non-empty selection of the model's own parameters "
                             "(checkpoints save the model's state)")
        self.optimizer = (optimizer or partial(make_optimizer, cfg=cfg))(params)
        # under torchrun: each rank trains on its shard of every batch, DDP averages the gradients
        self._forward = self.model
        if distributed.active():
            from torch.nn.parallel import DistributedDataParallel

            self._forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # --- masking --------------------------------------------------------------------------------
    def set_mask(self, mask: Mask | None) -> None:
        """Install a mask: zero the pruned weights now and after every step from here on.

        With ``pruned_values`` (Zhou et al.'s "mask-0" actions: pruned weights frozen at their init,
        or at init / 0 by a rule) the pruned entries are held at those values instead of zero: one
        more fused add after the multiply. Called during training (RigL, SET, GMP), the change is
        logged in ``history.mask_events``.
        """
        self.mask = mask
        if getattr(self, "step", None) is not None and mask is not None:
            self.history.mask_events.append({"step": self.step, "kept": mask.kept_per_layer()})
        self._pruned_list: list[torch.Tensor] = []
        if mask is None:
            self._masked_params: list[torch.Tensor] = []
            self._mask_values: list[torch.Tensor] = []
            return
        params = mask.check_fits(self.model)
        distributed.check_same_on_every_rank("the mask", mask)  # under torchrun every rank trains one ticket
        if self.pruned_values is None:
            # A layer that keeps every weight needs no multiply (issue 22: masking only where needed).
            params = {n: p for n, p in params.items() if not bool(mask[n].all())}
        self._masked_params = list(params.values())
        self._mask_values = [mask[n].to(device=p.device, dtype=p.dtype) for n, p in params.items()]
        if self.pruned_values is not None:
            missing = [n for n in params if n not in self.pruned_values]
            if missing:
                raise ValueError(f"pruned_values has no values for {missing}; give one tensor per masked parameter")
            self._pruned_list = [(self.pruned_values[n].detach().to(device=p.device, dtype=p.dtype)
                                  * (1 - v)) for (n, p), v in zip(params.items(), self._mask_values)]
        self.reapply_mask()

    def reapply_mask(self) -> None:
        """Zero the pruned weights now (mask-0: set them to their pruned values); runs every step.

        Grad mode is switched off by hand, not with ``@torch.no_grad()``, whose context object
        costs about as much Python time as the rest of the call (docs/masking_cost.md).
        """
        if self._masked_params:
            grad_enabled = torch.is_grad_enabled()
            torch.set_grad_enabled(False)
            try:
                torch._foreach_mul_(self._masked_params, self._mask_values)
                if self._pruned_list:
                    torch._foreach_add_(self._masked_params, self._pruned_list)
            finally:
                torch.set_grad_enabled(grad_enabled)

    def _mask_gradients(self) -> None:
        grads = [p.grad for p in self._masked_params if p.grad is not None]
        if len(grads) == len(self._masked_params) and grads:
            torch._foreach_mul_(grads, self._mask_values)

    # --- the loop -------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch used at iteration ``step``: a slice of this epoch's seeded permutation."""
        epoch, offset = divmod(step, self.iterations_per_epoch)
        if getattr(self, "_perm_epoch", None) != epoch:
            g = _batch_generator(self.seed, 1, epoch)
            self._perm = torch.randperm(len(self.train_data), generator=g).to(self.device)
            self._perm_epoch = epoch
        idx = distributed.shard(self._perm[offset * self.cfg.batch_size:(offset + 1) * self.cfg.batch_size])
        x, y = self.train_data.x.index_select(0, idx), self.train_data.y.index_select(0, idx)
        if self.augment is not None:
            x = self.augment(x, _batch_generator(self.seed, 2, step))
        return x, y

    def set_lr(self, step: int, lr_override: float | None = None) -> float:
        lr = lr_override if lr_override is not None else self.cfg.lr * lr_factor(
            step, self.cfg, self.total_steps, self.iterations_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def evaluate_now(self, step: int, train_loss: float | None = None) -> dict[str, float]:
        record: dict[str, float] = {"step": step}
        if train_loss is not None:
            record["train_loss"] = train_loss
        for split, data in (("val", self.val_data), ("test", self.test_data)):
            if data is not None:
                for key, value in evaluate(self.model, data, loss=self.loss, metrics=self.metrics).items():
                    record[f"{split}_{key}"] = value
        if self.mask is not None:  # masks may change while training (RigL, GMP): keep their history
            record["density"] = self.mask.density
            record["layer_density"] = self.mask.densities()
        self.history.records.append(record)
        return record

    def _run_callbacks(self, step: int) -> None:
        for cb in self.callbacks:
            if cb.due(step):
                cb.fn(self, step)

    def train(self, start_step: int = 0, end_step: int | None = None,
              lr_override: float | None = None, resumed: bool = False) -> History:
        """Run iterations ``start_step`` .. ``end_step`` (default: the configured length).

        ``resumed`` means the state at ``start_step`` came from a checkpoint whose evaluation and
        callbacks at that step already ran, so they are not repeated.
        """
        end = self.total_steps if end_step is None else end_step
        if not 0 <= start_step <= end:
            raise ValueError(f"start step {start_step} must lie in [0, {end}]")
        self.model.train()
        self.reapply_mask()
        bar = _progress(end - start_step, self.desc) if self.progress else None
        loss_sum = torch.zeros((), device=self.device)
        loss_count = 0
        self.step = start_step
        if not resumed:
            self.evaluate_now(start_step)
            self._run_callbacks(start_step)
        for step in range(start_step, end):
            self.set_lr(step, lr_override)
            x, y = self.batch(step)
            with self._autocast():
                loss = self.loss(self._forward(x), y)
            if self.regularizer is not None:
                loss = loss + self.regularizer(self.model)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.mask_gradients:
                self._mask_gradients()
            self.optimizer.step()
            self.reapply_mask()
            loss_sum += loss.detach()
            loss_count += 1
            done = self.step = step + 1
            if done % self.eval_every == 0 or done == end:
                rec = self.evaluate_now(done, float(distributed.mean_over_ranks(loss_sum)) / loss_count)
                self._check_finite(rec, done - loss_count, lr_override)
                loss_sum.zero_()
                loss_count = 0
                if bar is not None:
                    shown = "test_accuracy" if "test_accuracy" in rec else "test_loss"
                    bar.set_postfix({shown: f"{rec[shown]:.4f}"}, refresh=False)
            self._run_callbacks(done)
            if bar is not None:
                bar.update(1)
            if self.stop_requested:
                if self.history.records[-1]["step"] != done:
                    rec = self.evaluate_now(done, float(distributed.mean_over_ranks(loss_sum)) / max(1, loss_count))
                    self._check_finite(rec, done - loss_count, lr_override)
                break
        if bar is not None:
            bar.close()
        self.step = None
        return self.history

    def _check_finite(self, record: dict[str, float], since: int, lr_override: float | None) -> None:
        """Stop loudly on a non-finite loss: a NaN run must never be stored as a result."""
        bad = {k: v for k, v in record.items() if k.endswith("loss") and not _finite(v)}
        if not bad:
            return
        step = int(record["step"])
        lr = lr_override if lr_override is not None else self.optimizer.param_groups[0]["lr"]
        where = (f"between steps {since} and {step}" if "train_loss" in bad and since < step else f"at step {step}")
        raise DivergenceError(
            f"training diverged {where} of {self.desc}: " + ", ".join(f"{k} = {v}" for k, v in bad.items())
            + f". Nothing of this unit was stored as complete. Try a lower learning rate (now {lr:g}), a "
            "warm-up (--warmup), or check the data for NaN/inf values")

    def request_stop(self) -> None:
        """End training after the current step (its evaluation is recorded)."""
        self.stop_requested = True

    def _autocast(self):
        """bfloat16 autocast for the forward pass when configured (cheap search phases), else nothing."""
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, mininterval=0.5, dynamic_ncols=True)
