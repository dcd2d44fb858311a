"""Learned Bernoulli supermask (Zhou et al. 2019, "Deconstructing Lottery Tickets", Sec. 5).

Every masked weight tensor ``w`` (the Linear/Conv weights chosen by ``prunable_parameters``) is
frozen and gets a real-valued logit tensor ``s`` of the same shape. Each forward pass of the model in
training draws one mask ``m ~ Bernoulli(sigmoid(s))`` per tensor and computes with ``w * m``. The
backward pass is the straight-through estimator of the authors' code: the sample's gradient is
passed to ``sigmoid(s)`` as if ``m`` were ``sigmoid(s)``, so

    dL/ds = dL/dm * sigmoid(s) * (1 - sigmoid(s)),   dL/dm = dL/d(w * m) * w.

Only the logits are trained; weights and biases never change (biases are not masked, as in the
authors' code). Zhou's supermask picks its own density: nothing fixes how many weights are kept.

What the authors' code does (uber-research/deconstructing-lottery-tickets at dbad201), and so the
default here:

- ``masked_networks.py`` ``get_effective_mask`` (lines 170-189): in training
  ``Bernoulli(sigmoid(s)).sample() + sigmoid(s) - stop_gradient(sigmoid(s))``; at test time a
  sample too ("actually, sample them too", line 181-187), so ``eval_mask="sample"`` is the default.
  We write the same estimator as ``sample + (p - p.detach())``: its value is exactly the 0/1
  sample (``sample + p - p`` is not exact in floating point), its gradient the same.
- Logits start at the constant ``--sigmoid_bias`` (default 0, ``train_supermask.py`` line 63;
  ``Constant(self.sigmoid_bias)``, ``masked_networks.py`` line 213): every weight kept with
  probability 0.5. Here ``logit_init=0.0``.
- Optimiser: ``--opt sgd`` (``MomentumOptimizer``, momentum 0.9), constant LR, no weight decay on
  the logits; the README's supermask command uses ``--lr 100 --num_epochs 2000`` with the default
  ``--train_batch_size 250`` (``train_supermask.py`` lines 41-47; README "Train a Supermask
  directly"). The LR is that large because ``dL/ds`` carries the factors ``w`` and ``sigmoid'``
  (<= 1/4). Those are the defaults of ``train_bernoulli_supermask``.
- ``--signed_constant`` (``make_signed_consts``, lines 192-197): ``sign(w) * sqrt(var(w))`` with the
  variance over the whole layer tensor (``tf.nn.moments``: population variance), times
  ``--signed_constant_multiplier`` (default 1). Here ``weight_init="signed_constant"`` writes
  ``sign(w) * w.std(unbiased=False) * constant_multiplier`` into the weight once (the code recomputes
  it from the frozen kernel at every call: the same values).
- ``--dynamic_scaling`` (lines 236-239): ``effective_kernel * size(mask) / reduce_sum(mask)``, the
  count of ones of the *sampled* mask of that layer, with the gradient flowing through the count as
  well (no ``stop_gradient``). Here ``dynamic_scaling=True`` does exactly that; a layer whose sample
  keeps nothing divides by 1 instead of 0 (its weights are all zero anyway; the code gives NaN).
- The final result is the mean test accuracy over 10 sampled masks (``train_supermask.py`` lines
  328-341), each over the whole test set in one batch.

Differences by design: the weights are the model's own init (the code draws Glorot-normal); one mask
is drawn per call of the model (a forward pre-hook on it), shared by every use of a tied weight in
that call; sampling uses our own seeded generator (``u ~ U[0, 1)`` from a ``torch.Generator`` seeded
with ``seed``, keep where ``u < sigmoid(s)``), so the same seed gives the same masks. The
deterministic mask is ``sigmoid(s) > 0.5`` (the code's ``round(sigmoid(s))`` with ``--round_mask``
at test time; ``round`` sends 0.5 to 0 in TensorFlow, so the same rule).

The user's layers are not rewritten: each masked parameter gets a ``torch.nn.utils.parametrize``
parametrization holding its logits (the mechanism of ``edge_popup.py``), so any model with
Linear/Conv layers works. ``BernoulliSupermask.remove()`` bakes the deterministic mask into plain
weights.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..data import ArrayData, DataSplits
from ..masks import Mask
from ..prunable import prunable_parameters
from .edge_popup import _holders

WEIGHT_INITS = ("keep", "signed_constant")
EVAL_MASKS = ("sample", "deterministic")
OPTIMIZERS = ("sgd", "adam")


class BernoulliSupermaskError(ValueError):
    """Bad Bernoulli-supermask options, or use of a BernoulliSupermask after ``remove()``."""


class _Sampler:
    """The draws shared by all masks of one model: a seeded generator per device and a draw counter.

    ``draw`` advances once per call of the model (a forward pre-hook); every parametrization samples
    its mask once per draw and reuses it for every use within that call (tied weights).
    """

    def __init__(self, seed: int, eval_mask: str):
        self.seed = int(seed)
        self.eval_mask = eval_mask
        self.draw = 0
        self.frozen = False
        self.active = False  # off while parametrizations are registered (their check calls forward)
        self._generators: dict[torch.device, torch.Generator] = {}

    def advance(self, *_: object) -> None:
        if not self.frozen:
            self.draw += 1

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        gen = self._generators.get(like.device)
        if gen is None:
            gen = self._generators[like.device] = torch.Generator(device=like.device).manual_seed(self.seed)
        return torch.rand(like.shape, generator=gen, device=like.device, dtype=like.dtype)


class BernoulliMask(nn.Module):
    """Parametrization ``w -> w * m`` with ``m ~ Bernoulli(sigmoid(logits))`` and straight-through
    gradients to the logits (optionally times size / kept, ``dynamic_scaling``).

    In training mode (and in eval mode with ``eval_mask="sample"``) ``m`` is a sample, drawn once per
    call of the model; in eval mode with ``eval_mask="deterministic"`` it is ``sigmoid(logits) > 0.5``.
    ``last_sample`` holds the last 0/1 mask used (a float tensor, no gradient).
    """

    def __init__(self, logits: torch.Tensor, sampler: _Sampler, dynamic_scaling: bool = False):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.dynamic_scaling = bool(dynamic_scaling)
        self._sampler = sampler  # a plain object, not a submodule: shared by every mask of the model
        self._draw = -1
        self.last_sample: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.logits)
        if not self._sampler.active:  # registration's shape check: draw nothing
            sample = (p > 0.5).to(p.dtype).detach()
        elif self.training or self._sampler.eval_mask == "sample":
            if self._draw != self._sampler.draw or self.last_sample is None:
                with torch.no_grad():
                    self.last_sample = (self._sampler.uniform(p) < p).to(p.dtype)
                self._draw = self._sampler.draw
            sample = self.last_sample
        else:
            sample = (p > 0.5).to(p.dtype).detach()
            self.last_sample = sample
        # value: exactly the 0/1 sample; gradient: that of sigmoid(s) (the straight-through estimator)
        m = sample + (p - p.detach())
        out = weight * m
        if self.dynamic_scaling:
            out = out * (m.numel() / m.sum().clamp_min(1.0))
        return out

    @torch.no_grad()
    def probabilities(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @torch.no_grad()
    def deterministic_mask(self) -> torch.Tensor:
        return torch.sigmoid(self.logits) > 0.5

    def extra_repr(self) -> str:
        return f"shape={tuple(self.logits.shape)}, dynamic_scaling={self.dynamic_scaling}"


class BernoulliSupermask:
    """Put Bernoulli-mask logit parametrizations on ``model`` (in place) and freeze its weights.

    ``weight_init``: ``"keep"`` (the model's weights as they are) or ``"signed_constant"``
    (``sign(w) * std(w) * constant_multiplier``, the std of each masked tensor over all its entries,
    population std; module docstring). Logits start at the constant ``logit_init`` (0: keep
    probability 0.5, the authors'). ``dynamic_scaling`` multiplies each masked tensor by
    size / (ones in its current mask). ``eval_mask``: what eval mode computes with, a fresh
    ``"sample"`` (the authors') or the ``"deterministic"`` mask ``sigmoid(s) > 0.5``. ``seed`` seeds
    the sampling generator.

    Every parameter of the model gets ``requires_grad=False``; only the logits (``logits()``) are
    trainable. Mask names are the model's parameter names, so the Mask fits the model returned by
    ``remove()``. ``include`` / ``exclude`` choose the masked weights like ``prunable_parameters``;
    a parameter shared by several modules has one logit tensor and one sample per call.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        weight_init: str = "keep",
        constant_multiplier: float = 1.0,
        logit_init: float = 0.0,
        dynamic_scaling: bool = False,
        eval_mask: str = "sample",
        seed: int = 0,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ):
        if weight_init not in WEIGHT_INITS:
            raise BernoulliSupermaskError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        _check_eval_mask(eval_mask)
        if not (isinstance(constant_multiplier, (int, float)) and math.isfinite(constant_multiplier)
                and constant_multiplier > 0):
            raise BernoulliSupermaskError(f"constant_multiplier must be a finite number > 0, got {constant_multiplier!r}")
        if not (isinstance(logit_init, (int, float)) and math.isfinite(logit_init)):
            raise BernoulliSupermaskError(f"logit_init must be a finite number, got {logit_init!r}")
        if any(parametrize.is_parametrized(m) for m in model.modules()):
            raise BernoulliSupermaskError("the model already carries parametrizations; remove them first")
        self.model = model
        self.weight_init = weight_init
        self.dynamic_scaling = bool(dynamic_scaling)
        self._removed = False
        self._sampler = _Sampler(seed, eval_mask)

        weights = prunable_parameters(model, include=include, exclude=exclude)
        holders = _holders(model)
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)

        self._entries: list[tuple[str, BernoulliMask, list[tuple[nn.Module, str]]]] = []
        for name, weight in weights.items():
            if weight_init == "signed_constant":
                with torch.no_grad():
                    weight.copy_(weight.sign() * weight.std(unbiased=False) * float(constant_multiplier))
            logits = torch.full(weight.shape, float(logit_init), device=weight.device, dtype=weight.dtype)
            pm = BernoulliMask(logits, self._sampler, self.dynamic_scaling)
            where = holders[id(weight)]
            for module, attr in where:  # one parametrization, shared by every holder
                parametrize.register_parametrization(module, attr, pm)
            self._entries.append((name, pm, where))
        self._hook = model.register_forward_pre_hook(self._sampler.advance)
        self._sampler.active = True

    # --- API ------------------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._removed:
            raise BernoulliSupermaskError("this BernoulliSupermask was removed from its model; create a new one")

    @property
    def eval_mask(self) -> str:
        return self._sampler.eval_mask

    @eval_mask.setter
    def eval_mask(self, value: str) -> None:
        _check_eval_mask(value)
        self._sampler.eval_mask = value

    def logits(self) -> list[nn.Parameter]:
        """The trainable logit tensors (what the optimiser trains), in parameter order."""
        self._check_alive()
        return [pm.logits for _, pm, _ in self._entries]

    def named_logits(self) -> dict[str, nn.Parameter]:
        """Parameter name -> its logit tensor."""
        self._check_alive()
        return {name: pm.logits for name, pm, _ in self._entries}

    def parametrizations(self) -> dict[str, BernoulliMask]:
        """Parameter name -> its parametrization (``last_sample``, ``probabilities()``)."""
        self._check_alive()
        return {name: pm for name, pm, _ in self._entries}

    def mask(self) -> Mask:
        """The deterministic mask ``sigmoid(s) > 0.5`` per masked parameter, under the parameter names."""
        self._check_alive()
        return Mask({name: pm.deterministic_mask() for name, pm, _ in self._entries})

    def last_sample(self) -> Mask:
        """The mask sampled at the last call of the model (in sampling mode)."""
        self._check_alive()
        missing = [name for name, pm, _ in self._entries if pm.last_sample is None]
        if missing:
            raise BernoulliSupermaskError(f"no mask has been drawn yet for {missing}; call the model first")
        return Mask({name: pm.last_sample.bool() for name, pm, _ in self._entries})

    @torch.no_grad()
    def expected_density(self) -> float:
        """Mean keep probability ``sigmoid(s)`` over all masked weights (the expected sample density)."""
        self._check_alive()
        total = sum(pm.logits.numel() for _, pm, _ in self._entries)
        return float(sum(torch.sigmoid(pm.logits).sum() for _, pm, _ in self._entries)) / total

    @contextlib.contextmanager
    def fixed_sample(self) -> Iterator[None]:
        """Draw one mask now and use it for every call of the model inside the block (an
        evaluation over several batches sees one mask, as the authors' whole-test-set batch)."""
        self._check_alive()
        sampler = self._sampler
        was = sampler.frozen
        if not was:
            sampler.advance()
        sampler.frozen = True
        try:
            yield
        finally:
            sampler.frozen = was

    def evaluate(self, data: ArrayData, *, mask: str = "sample", samples: int = 10,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 batch_size: int = 1000) -> dict:
        """Test loss/metrics of the model under sampled masks (``samples`` of them, one mask for the
        whole of ``data`` each) or the deterministic mask. Returns ``loss`` and ``accuracy`` (the mean
        over samples; accuracy None for non-class targets), ``losses`` / ``accuracies`` per sample and
        ``densities`` (kept fraction of each mask used)."""
        from ..training import evaluate

        self._check_alive()
        _check_eval_mask(mask)
        if mask == "sample" and not (isinstance(samples, int) and samples >= 1):
            raise BernoulliSupermaskError(f"samples must be an integer >= 1, got {samples!r}")
        previous = self.eval_mask
        self.eval_mask = mask
        rows = []
        try:
            for _ in range(samples if mask == "sample" else 1):
                with self.fixed_sample():
                    rows.append(evaluate(self.model, data, batch_size=batch_size, loss=loss))
                    used = self.last_sample()
                    rows[-1]["density"] = used.density
        finally:
            self.eval_mask = previous
        accs = [r.get("accuracy") for r in rows]
        has_acc = all(a is not None for a in accs)
        return {
            "loss": sum(r["loss"] for r in rows) / len(rows),
            "accuracy": sum(accs) / len(accs) if has_acc else None,
            "losses": [r["loss"] for r in rows],
            "accuracies": accs if has_acc else None,
            "densities": [r["density"] for r in rows],
        }

    def remove(self) -> nn.Module:
        """Bake the deterministic mask into plain weights (``w * mask``, times size / kept with
        ``dynamic_scaling``), drop the parametrizations and the sampling hook, and restore the
        parameters' ``requires_grad`` flags. Returns the model (same object)."""
        self._check_alive()
        for _, pm, where in self._entries:
            keep = pm.deterministic_mask()
            for module, attr in where:
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            module, attr = where[0]
            param = getattr(module, attr)
            with torch.no_grad():
                param.mul_(keep.to(dtype=param.dtype))
                if self.dynamic_scaling:
                    param.mul_(keep.numel() / max(1, int(keep.sum())))
        self._hook.remove()
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(name, p.requires_grad))
        self._removed = True
        return self.model


def _check_eval_mask(eval_mask: str) -> None:
    if eval_mask not in EVAL_MASKS:
        raise BernoulliSupermaskError(f"eval_mask must be one of {EVAL_MASKS}, got {eval_mask!r}")


def train_bernoulli_supermask(
    model: nn.Module,
    data: DataSplits,
    epochs: int = 10,
    lr: float = 100.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 250,
    seed: int = 0,
    *,
    optimizer: str = "sgd",
    schedule: str = "constant",
    weight_init: str = "keep",
    constant_multiplier: float = 1.0,
    logit_init: float = 0.0,
    dynamic_scaling: bool = False,
    eval_samples: int = 10,
    device: torch.device | str | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> dict:
    """Learn a Bernoulli supermask of ``model``'s frozen weights on ``data`` with ``loss`` (network
    output, target) -> mean loss; cross-entropy classification by default.

    Trains through the ``Trainer`` with the logits as its only parameters: by default the authors'
    SGD (momentum 0.9, constant ``lr`` 100, no weight decay, batches of 250); ``optimizer="adam"``
    (momentum must then be 0) and any ``schedule`` of ``TrainConfig`` are there too. Batches are the
    Trainer's seeded ones (``len(train) // batch_size`` per epoch), one evaluation per epoch (eval
    mode: one sampled mask per evaluation batch of 1000). ``seed`` seeds batches and mask samples.

    Returns ``test_accuracy`` / ``test_loss`` (mean over ``eval_samples`` sampled masks, each over
    the whole test set; ``test_accuracies`` / ``test_losses`` per sample, ``sampled_densities``),
    ``deterministic_test_accuracy`` / ``deterministic_test_loss`` (mask ``sigmoid(s) > 0.5``),
    ``mask`` (that deterministic Mask), ``density`` (its kept fraction), ``layer_density``,
    ``expected_density`` (mean ``sigmoid(s)``), ``history`` (per epoch: train/test loss, sampled test
    accuracy, expected and deterministic density) and ``supermask`` (the ``BernoulliSupermask``;
    ``result["supermask"].remove()`` gives a plain model with the deterministic mask baked in).
    ``model`` is modified in place and stays parametrized.
    """
    from ..config import TrainConfig
    from ..training import Callback, Trainer, resolve_device

    if not (isinstance(epochs, int) and epochs >= 1):
        raise BernoulliSupermaskError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise BernoulliSupermaskError(f"lr must be a finite number > 0, got {lr!r}")
    if optimizer not in OPTIMIZERS:
        raise BernoulliSupermaskError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if optimizer != "sgd" and momentum:
        raise BernoulliSupermaskError(f"momentum applies to sgd only; pass momentum=0 with optimizer {optimizer!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise BernoulliSupermaskError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if len(data.train) < batch_size:
        raise BernoulliSupermaskError(
            f"batch_size {batch_size} is larger than the training set ({len(data.train)} samples)")
    if not (isinstance(eval_samples, int) and eval_samples >= 1):
        raise BernoulliSupermaskError(f"eval_samples must be an integer >= 1, got {eval_samples!r}")
    cfg = _train_config(TrainConfig, optimizer=optimizer, lr=float(lr), momentum=momentum,
                        weight_decay=weight_decay, batch_size=batch_size, steps=f"{epochs}ep",
                        schedule=schedule, eval_every="1ep", fused_optimizer=False)

    dev = resolve_device(device)
    model.to(dev)
    sm = BernoulliSupermask(model, weight_init=weight_init, constant_multiplier=constant_multiplier,
                            logit_init=logit_init, dynamic_scaling=dynamic_scaling, eval_mask="sample",
                            seed=seed, include=include, exclude=exclude)
    per_epoch = len(data.train) // batch_size
    densities: dict[int, tuple[float, float]] = {}
    record = Callback(lambda trainer, step: densities.__setitem__(step, (sm.expected_density(), sm.mask().density)),
                      every=per_epoch)
    trainer = Trainer(model, data, cfg, seed=int(seed), device=dev, loss=loss, parameters=sm.logits(),
                      callbacks=[record])
    history = []
    for r in trainer.train().records[1:]:  # records[0]: the evaluation before training
        expected, det = densities.get(r["step"], (None, None))
        history.append({"epoch": r["step"] // per_epoch, "train_loss": r["train_loss"], "test_loss": r["test_loss"],
                        "test_accuracy": r.get("test_accuracy"), "expected_density": expected, "density": det})
    test = data.test.to(dev)
    sampled = sm.evaluate(test, mask="sample", samples=eval_samples, loss=loss)  # one mask per pass over test
    det = sm.evaluate(test, mask="deterministic", loss=loss)
    mask = sm.mask()
    return {
        "test_accuracy": sampled["accuracy"],
        "test_loss": sampled["loss"],
        "test_accuracies": sampled["accuracies"],
        "test_losses": sampled["losses"],
        "sampled_densities": sampled["densities"],
        "deterministic_test_accuracy": det["accuracy"],
        "deterministic_test_loss": det["loss"],
        "density": mask.density,
        "layer_density": mask.densities(),
        "expected_density": sm.expected_density(),
        "mask": mask,
        "history": history,
        "supermask": sm,
    }


def _train_config(cls, **fields):
    """TrainConfig with its own errors turned into ours (one error type for bad options)."""
    try:
        return cls(**fields)
    except ValueError as exc:
        raise BernoulliSupermaskError(str(exc)) from None


__all__: Sequence[str] = ["BernoulliMask", "BernoulliSupermask", "BernoulliSupermaskError",
                          "train_bernoulli_supermask"]
