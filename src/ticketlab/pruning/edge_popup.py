"""Edge-popup (Ramanujan et al. 2020): find a strong ticket inside frozen random weights.

Every masked parameter ``p`` (the weight of each Linear/Conv layer chosen by
``prunable_parameters``, and that layer's bias when ``include_bias``) gets a real-valued score
tensor ``s`` of the same shape. The forward pass uses ``p * m`` where ``m`` keeps the
``round(density * numel)`` entries of largest ``|s|`` in that tensor (layer-wise top-k). The
backward pass is the paper's straight-through estimator: ``|s|`` receives
``dL/d(p * m) * p``, the gradient as if the mask were all ones, so the scores receive
``dL/ds = dL/d(p * m) * p * sign(s)`` (equal to ``dL/d(p * m) * p`` for positive scores). The weights
themselves are frozen and never change.

The user's layers are not rewritten: each masked parameter gets a
``torch.nn.utils.parametrize`` parametrization holding its scores, so any model with Linear/Conv
layers works, and so do raw parameters used through ``F.linear`` / ``F.conv2d`` that
``include`` names (see ``prunable_parameters``). ``EdgePopup.remove()`` bakes the current mask into
plain weights and removes the parametrizations again.

Shared (tied) parameters, e.g. an embedding whose weight is also the output layer's
(``self.out.weight = self.emb.weight``), get ONE score tensor and one mask, registered as the same
parametrization on every module that holds the parameter, so every use sees the same masked
weight while training; the mask is named as ``named_parameters()`` names the parameter (its first
name) and ``remove()`` restores the tie (both modules hold the same, now masked, parameter again).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..data import DataSplits
from ..masks import Mask
from ..prunable import parameter_names, prunable_layers, prunable_parameters

WEIGHT_INITS = ("kaiming_normal", "signed_constant", "keep")
BIAS_INITS = ("keep", "normal")
SCORE_INITS = ("kaiming_uniform",)
_GAIN = math.sqrt(2.0)  # ReLU gain, as in the paper


class EdgePopupError(ValueError):
    """Bad edge-popup options or use of an EdgePopup after ``remove()``."""


def _kept_count(density: float, numel: int) -> int:
    """round(density * numel), at least 1, at most numel."""
    return min(numel, max(1, round(density * numel)))


def topk_mask(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask keeping exactly the ``k`` largest entries of ``magnitude`` (same shape).

    One ``kthvalue`` per call; ties at the threshold go to the lowest flat indices, so the result
    is deterministic and always keeps exactly ``k`` entries. No host synchronisation.
    """
    flat = magnitude.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(magnitude, dtype=torch.bool)
    # the k-th largest is the (n - k + 1)-th smallest
    threshold = flat.kthvalue(n - k + 1).values
    above = flat > threshold
    tied = flat == threshold
    room = k - above.sum()
    keep = above | (tied & (tied.cumsum(0) <= room))
    return keep.view_as(magnitude)


class _StraightThroughMask(torch.autograd.Function):
    """Forward ``w * topk(|s|)``; backward ``dL/ds = dL/dout * w * sign(s)``.

    The straight-through estimator passes ``dL/dout * w`` to ``|s|`` as if the mask were all ones
    (the paper's GetSubnet); the chain rule through ``|s|`` adds ``sign(s)`` (the paper's code
    ranks ``scores.abs()`` and autograd applies the same sign). Without the sign, descent pushes a
    negative score that *should* be kept further from zero in the wrong direction, and training
    ends below chance (measured: 8-29% test accuracy on 4 classes).
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
        scores = scores.detach()
        mask = topk_mask(scores.abs(), k)
        ctx.save_for_backward(weight, scores, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        weight, scores, mask = ctx.saved_tensors
        grad_weight = grad_out * mask if ctx.needs_input_grad[0] else None
        grad_scores = grad_out * weight * scores.sign() if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


class ScoreMask(nn.Module):
    """Parametrization ``w -> w * topk(|scores|, k)`` with straight-through gradients to ``scores``."""

    def __init__(self, scores: torch.Tensor, k: int):
        super().__init__()
        self.scores = nn.Parameter(scores)
        self.k = int(k)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThroughMask.apply(weight, self.scores, self.k)

    @torch.no_grad()
    def current_mask(self) -> torch.Tensor:
        return topk_mask(self.scores.abs(), self.k)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.scores.shape)}, k={self.k}"


def _fan_in(weight: torch.Tensor) -> int:
    """Inputs per output unit: in_features for Linear, in_channels / groups * kernel size for Conv."""
    return weight[0].numel() if weight.dim() > 1 else 1


class ScoredParametrizations:
    """What edge-popup and GEM-MINER share: a score tensor per masked parameter, installed as a
    parametrization on every module holding it (``self._entries``: name, parametrization with
    ``scores``, holders), and a ``remove`` that gives the model back with its ``requires_grad`` flags."""

    _error: type[Exception] = ValueError
    _entries: list
    _removed: bool
    _requires_grad: dict[str, bool]
    model: nn.Module

    def _check_alive(self) -> None:
        if self._removed:
            raise self._error(f"this {type(self).__name__} was removed from its model; create a new one")

    def scores(self) -> list[nn.Parameter]:
        """The trainable score tensors (what the optimiser trains), in parameter order."""
        self._check_alive()
        return [pm.scores for _, pm, _ in self._entries]

    def named_scores(self) -> dict[str, nn.Parameter]:
        """Parameter name -> its score tensor."""
        self._check_alive()
        return {name: pm.scores for name, pm, _ in self._entries}

    def _released(self) -> nn.Module:
        """After the parametrizations are gone: the model with its parameters' flags restored."""
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(name, p.requires_grad))
        self._removed = True
        return self.model


class EdgePopup(ScoredParametrizations):
    """Put edge-popup score parametrizations on ``model`` (in place) and freeze its weights.

    ``weight_init``: ``"kaiming_normal"`` (N(0, gain^2 / fan_in), gain = sqrt 2),
    ``"signed_constant"`` (+-gain / sqrt(fan_in) with random signs) or ``"keep"`` (the model's
    weights as they are). ``scale_fan`` additionally divides the re-initialised weights by
    sqrt(density) (the paper's "scaled" variant; ignored with ``"keep"``). ``bias_init``:
    ``"keep"`` (the model's own biases) or ``"normal"`` (N(0, gain^2 / fan_in) of the layer).
    NOTE: ticketlab's built-in models initialise biases to zero; a zero bias gets zero score
    gradient (dL/ds = g * b * sign(s)) and masking it changes nothing, so with
    ``include_bias=True`` on those models pass ``bias_init="normal"`` for bias scores to matter. Every parameter of the model gets ``requires_grad=False``; only the
    scores (``scores()``) are trainable. Scores start Kaiming-uniform like a weight of the layer,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default Linear/Conv init, also used by the
    paper's code), for weights and biases alike.

    Mask names are the model's original parameter names (``"0.weight"``, ``"0.bias"``), so the
    Mask fits the model returned by ``remove()``. ``include`` / ``exclude`` choose the masked
    weights like ``prunable_parameters`` (e.g. ``include=["w1"]`` for a raw parameter used through
    ``F.linear``); a parameter shared by several modules has one score tensor (module docstring).
    Biases (``include_bias``) are those of the Linear/Conv layers whose weights are masked.
    """

    def __init__(
        self,
        model: nn.Module,
        density: float,
        *,
        include_bias: bool = True,
        weight_init: str = "kaiming_normal",
        scale_fan: bool = False,
        score_init: str = "kaiming_uniform",
        generator: torch.Generator | None = None,
        bias_init: str = "keep",
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ):
        _check_density(density)
        if weight_init not in WEIGHT_INITS:
            raise EdgePopupError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        if bias_init not in BIAS_INITS:
            raise EdgePopupError(f"bias_init must be one of {BIAS_INITS}, got {bias_init!r}")
        if score_init not in SCORE_INITS:
            raise EdgePopupError(f"score_init must be one of {SCORE_INITS}, got {score_init!r}")
        if any(parametrize.is_parametrized(m) for m in model.modules()):
            raise EdgePopupError("the model already carries parametrizations; remove them first")
        self.model = model
        self.density = float(density)
        self.include_bias = include_bias
        self._removed = False
        gen = generator if generator is not None else torch.Generator().manual_seed(0)

        weights = prunable_parameters(model, include=include, exclude=exclude)
        canonical = parameter_names(model)
        holders = _holders(model)
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)

        # Linear/Conv layers by the parameter they use as weight (several for a shared weight)
        layers_of: dict[int, list[nn.Module]] = {}
        for _, module in prunable_layers(model):
            if isinstance(getattr(module, "weight", None), nn.Parameter):
                layers_of.setdefault(id(module.weight), []).append(module)

        # (original parameter name, parametrization, [(module, attribute), ...] holding it)
        self._entries: list[tuple[str, ScoreMask, list[tuple[nn.Module, str]]]] = []
        biases_seen: set[int] = set()
        for wname, weight in weights.items():
            fan_in = _fan_in(weight)
            if weight_init != "keep":
                std = _GAIN / math.sqrt(fan_in)
                if scale_fan:
                    std /= math.sqrt(self.density)
                if weight_init == "kaiming_normal":
                    new = torch.randn(weight.shape, generator=gen) * std
                else:
                    signs = torch.randint(0, 2, weight.shape, generator=gen).float() * 2 - 1
                    new = signs * std
                with torch.no_grad():
                    weight.copy_(new.to(dtype=weight.dtype))
            targets = [(wname, weight)]
            for layer in layers_of.get(id(weight), []):
                bias = getattr(layer, "bias", None)
                if not isinstance(bias, nn.Parameter) or id(bias) in biases_seen:
                    continue
                biases_seen.add(id(bias))
                if bias_init == "normal":
                    new_bias = torch.randn(bias.shape, generator=gen) * (_GAIN / math.sqrt(fan_in))
                    with torch.no_grad():
                        bias.copy_(new_bias.to(dtype=bias.dtype))
                if include_bias and canonical[id(bias)] not in weights:  # else scored as a weight
                    targets.append((canonical[id(bias)], bias))
            bound = 1.0 / math.sqrt(fan_in)
            for full_name, param in targets:
                scores = (torch.rand(param.shape, generator=gen) * 2 - 1) * bound
                scores = scores.to(device=param.device, dtype=param.dtype)
                pm = ScoreMask(scores, _kept_count(self.density, param.numel()))
                where = holders[id(param)]
                for module, attr in where:  # one parametrization, shared by every holder
                    parametrize.register_parametrization(module, attr, pm)
                self._entries.append((full_name, pm, where))

    _error = EdgePopupError

    # --- API ------------------------------------------------------------------------------------
    def set_density(self, density: float) -> None:
        """Change the kept fraction of every masked tensor (annealed edge-popup)."""
        self._check_alive()
        _check_density(density)
        self.density = float(density)
        for _, pm, _ in self._entries:
            pm.k = _kept_count(self.density, pm.scores.numel())

    def mask(self) -> Mask:
        """The current top-k mask per masked parameter, under the original parameter names."""
        self._check_alive()
        return Mask({name: pm.current_mask() for name, pm, _ in self._entries})

    def remove(self) -> nn.Module:
        """Bake the current mask into plain weights (w * mask), drop the parametrizations.

        The parameters' ``requires_grad`` flags are restored to what they were before edge-popup,
        so the returned model can be fine-tuned like any other. Returns the model (same object).
        """
        self._check_alive()
        for _, pm, where in self._entries:
            mask = pm.current_mask()
            for module, attr in where:  # every holder gets the original (shared) parameter back
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            module, attr = where[0]
            with torch.no_grad():
                getattr(module, attr).mul_(mask.to(dtype=getattr(module, attr).dtype))
        return self._released()


def _holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(parameter) -> every (module, attribute name) that holds it (several for tied weights)."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    seen: set[tuple[int, str]] = set()
    for _, module in model.named_modules(remove_duplicate=False):
        for attr, p in module._parameters.items():
            if p is None or (id(module), attr) in seen:
                continue
            seen.add((id(module), attr))
            out.setdefault(id(p), []).append((module, attr))
    return out


def _check_density(density: float) -> None:
    if not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
        raise EdgePopupError(f"density must lie in (0, 1], got {density!r}")


def train_edge_popup(
    model: nn.Module,
    data: DataSplits,
    density: float,
    epochs: int = 10,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 32,
    anneal: bool = False,
    seed: int = 0,
    *,
    include_bias: bool = True,
    weight_init: str = "kaiming_normal",
    scale_fan: bool = False,
    bias_init: str = "keep",
    device: torch.device | str | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> dict:
    """Train only the edge-popup scores of ``model`` on ``data`` with ``loss`` (network output,
    target) -> mean loss; cross-entropy classification by default.

    Trains through the ``Trainer`` with the scores as its only parameters (the weights are
    frozen): SGD (momentum, weight decay on the scores) with a per-iteration cosine schedule from
    ``lr`` to 0, the Trainer's seeded batches (``len(train) // batch_size`` per epoch) and one
    evaluation per epoch. ``anneal``: epoch e (0-based) trains at density
    ``density ** ((e + 1) / epochs)`` (a callback at each epoch's start), so the last epoch and the
    result use ``density``.

    ``include`` / ``exclude`` choose the masked weights as in ``prunable_parameters``. Inputs may
    be integer token ids (models that start with an ``nn.Embedding``).

    ``model`` is modified in place and stays parametrized; call ``result["edge_popup"].remove()``
    for a plain pruned model. Returns ``test_accuracy``, ``test_loss``, ``density`` (kept fraction
    of the final mask), ``mask``, ``history`` (per-epoch records) and ``edge_popup``.

    ``data`` is a ``DataSplits`` (its ``ArrayData`` may hold float regression targets).
    ``test_loss`` is the mean of ``loss`` over the test set; ``test_accuracy`` is computed only
    when the test labels are int64 (class labels) and is None otherwise.
    """
    from ..config import TrainConfig
    from ..training import Callback, Trainer, default_device

    if epochs < 1:
        raise EdgePopupError(f"epochs must be >= 1, got {epochs}")
    if len(data.train) < batch_size:
        raise EdgePopupError(f"batch_size {batch_size} is larger than the training set ({len(data.train)} samples)")

    from .schedules import Annealing, OneShot

    _check_density(density)
    # the density epoch e (0-based) trains at: density ** ((e + 1) / epochs) when annealing
    density_in = (Annealing(density, epochs) if anneal else OneShot(density)).density_at

    dev = torch.device(device) if device is not None else default_device()
    model.to(dev)
    gen = torch.Generator().manual_seed(int(seed))
    ep = EdgePopup(model, density_in(0), include_bias=include_bias, weight_init=weight_init,
                   scale_fan=scale_fan, generator=gen, bias_init=bias_init, include=include, exclude=exclude)
    per_epoch = len(data.train) // batch_size
    cfg = TrainConfig(optimizer="sgd", lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                      steps=f"{epochs}ep", schedule="cosine", eval_every="1ep", fused_optimizer=False)
    anneal_cb = Callback(lambda trainer, step: ep.set_density(density_in(step // per_epoch)),
                         at=[e * per_epoch for e in range(1, epochs)])
    trainer = Trainer(model, data, cfg, seed=int(seed), device=dev, loss=loss, parameters=ep.scores(),
                      callbacks=[anneal_cb] if anneal else [])
    history = [{"epoch": r["step"] // per_epoch, "density": density_in(r["step"] // per_epoch - 1),
                "train_loss": r["train_loss"], "test_loss": r["test_loss"], "test_accuracy": r.get("test_accuracy")}
               for r in trainer.train().records[1:]]  # records[0]: the evaluation before training
    mask = ep.mask()
    return {
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "density": mask.density,
        "mask": mask,
        "history": history,
        "edge_popup": ep,
    }


__all__: Sequence[str] = ["EdgePopup", "EdgePopupError", "ScoreMask", "topk_mask", "train_edge_popup"]
