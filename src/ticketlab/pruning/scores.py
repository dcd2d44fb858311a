"""Pruning scores: how much each weight matters, higher = keep. One registry for every method.

A score function takes the model, the current mask and a ScoreSource and returns a tensor per
masked parameter. It never changes the caller's model: every method scores a copy with the mask
applied, so iterative pruning and the sanity checks see the model exactly as it was.
Selection (how many to keep, where) is separate: see ``selection.py`` and ``distributions.py``.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, option
from ..masks import Mask
from ..probe import probe_input, run_probe

Batch = tuple[torch.Tensor, torch.Tensor]


class ScoreError(ValueError):
    """Unknown scoring method or unusable options."""


@dataclass
class ScoreSource:
    """What a score may look at. ``batches()`` yields the same (x, y) batches on every call.

    SynFlow is data-free and never calls ``batches``; it needs only ``input_shape`` (and
    ``example_input`` for a model that cannot run on a synthetic input, see ``synflow``). ``loss``
    (network output, target) -> scalar is what SNIP and GraSP differentiate (cross-entropy by
    default; e.g. ``F.mse_loss`` for regression). Inputs may be floating point or integer token
    ids (for models that start with an ``nn.Embedding``).
    """

    batches: Callable[[], Iterable[Batch]]
    input_shape: tuple[int, ...]
    generator: torch.Generator
    device: torch.device = torch.device("cpu")
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(default=F.cross_entropy)
    example_input: torch.Tensor | None = None


ScoreFn = Callable[..., dict[str, torch.Tensor]]
SCORES: dict[str, ScoreFn] = {}
SCORE_OPTIONS: dict[str, type] = {}  # score name -> its frozen options dataclass (scores with options only)


def register_score(name: str, options: type | None = None) -> Callable[[ScoreFn], ScoreFn]:
    """Register a score under ``name``; ``options`` is its frozen options dataclass, if it has any.

    The options' fields (written with ``config.option``) are the score function's keyword arguments,
    ``PruneAtInitConfig.options`` and the ``prune`` command's flags (``dest`` names the flag).
    """
    def decorate(fn: ScoreFn) -> ScoreFn:
        SCORES[name] = fn
        if options is not None:
            SCORE_OPTIONS[name] = options
        return fn
    return decorate


def compute_scores(method: str, model: nn.Module, mask: Mask, source: ScoreSource, **options) -> dict[str, torch.Tensor]:
    """Scores of ``method`` (a name in SCORES) for every parameter of ``mask``, on the CPU."""
    if method not in SCORES:
        raise ScoreError(f"unknown pruning method {method!r}; choose one of {sorted(SCORES)}")
    mask.check_fits(model)
    scores = SCORES[method](model, mask, source, **options)
    return {n: scores[n].detach().to("cpu", torch.float64) for n in mask}


def masked_copy(model: nn.Module, mask: Mask, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` with pruned weights zeroed (the caller's model is never touched)."""
    clone = copy.deepcopy(model).to(device)
    if dtype is not None:
        clone = clone.to(dtype)
    mask.apply_(clone)
    return clone


def _weights(model: nn.Module, mask: Mask) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    return {n: params[n] for n in mask}


def _batches(source: ScoreSource) -> Iterator[Batch]:
    any_batch = False
    for x, y in source.batches():
        any_batch = True
        yield x.to(source.device), y.to(source.device)
    if not any_batch:
        raise ScoreError("the score's data source yielded no batches")


@register_score("magnitude")
def magnitude(model: nn.Module, mask: Mask, source: ScoreSource) -> dict[str, torch.Tensor]:
    """|w| (pruned weights score 0): the same ranking IMP prunes by (``magnitude.magnitude_scores``)."""
    from .magnitude import magnitude_scores

    return magnitude_scores(dict(model.named_parameters()), mask)


@register_score("random")
def random(model: nn.Module, mask: Mask, source: ScoreSource) -> dict[str, torch.Tensor]:
    """Uniform random scores from the source's generator (random pruning)."""
    return {n: torch.rand(mask[n].shape, generator=source.generator, dtype=torch.float64) for n in mask}


@register_score("snip")
def snip(model: nn.Module, mask: Mask, source: ScoreSource) -> dict[str, torch.Tensor]:
    """SNIP (Lee et al. 2019): |dL/dc| = |g * w| with c the mask, g summed over the source's batches.

    The paper's normalisation to sum 1 does not change the ranking and is left out.
    """
    net = masked_copy(model, mask, source.device)
    net.train()
    weights = _weights(net, mask)
    grads = {n: torch.zeros_like(w) for n, w in weights.items()}
    for x, y in _batches(source):
        loss = source.loss(net(x), y)
        for n, g in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
            grads[n] += g
    return {n: (grads[n] * weights[n].detach()).abs() for n in weights}


@dataclass(frozen=True)
class GraspOptions:
    """GraSP's options: the logits are divided by ``temperature`` (the paper's 200)."""

    temperature: float = option(200.0, "GraSP: the logits are divided by this temperature (the paper's 200)",
                                dest="grasp_temperature")

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"GraSP temperature (--grasp-temperature) must be > 0, got {self.temperature}")


@register_score("grasp", options=GraspOptions)
def grasp(model: nn.Module, mask: Mask, source: ScoreSource, temperature: float = 200.0) -> dict[str, torch.Tensor]:
    """GraSP (Wang et al. 2020): score = w * Hg, higher = keep.

    The paper scores S(-w) = -w * Hg and removes the weights with the *largest* S, i.e. keeps the
    smallest -w * Hg. We return w * Hg = -S so that, like every other score here, the highest scores
    are kept; the mask is the paper's. Hg is the Hessian-gradient product, the gradient of
    g^T stop_grad(g) (g summed over the source's batches), with logits divided by ``temperature``.
    """
    if temperature <= 0:
        raise ScoreError(f"GraSP temperature must be > 0, got {temperature}")
    net = masked_copy(model, mask, source.device)
    net.train()
    weights = _weights(net, mask)
    params = list(weights.values())
    batches = list(_batches(source))
    g_fixed = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = source.loss(net(x) / temperature, y)
        for acc, g in zip(g_fixed, torch.autograd.grad(loss, params)):
            acc += g
    hg = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = source.loss(net(x) / temperature, y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        z = sum((gi * gf).sum() for gi, gf in zip(g, g_fixed))
        for acc, h in zip(hg, torch.autograd.grad(z, params)):
            acc += h
    return {n: p.detach() * h for (n, p), h in zip(weights.items(), hg)}


@register_score("synflow")
def synflow(model: nn.Module, mask: Mask, source: ScoreSource) -> dict[str, torch.Tensor]:
    """SynFlow (Tanaka et al. 2020): |w * dR/dw| with R = sum of the output of the network whose
    parameters are all replaced by their absolute values, on one all-ones input. Data-free: the
    source's batches are never read.

    Computed in float64 on a copy (so deep networks do not overflow and the caller's weights and
    signs are untouched), BatchNorm in eval mode as the paper specifies.

    Token models. The paper's all-ones *input* has no literal meaning for a model whose input
    goes through an ``nn.Embedding`` (token ids index a table). An embedding lookup is a Linear
    layer on one-hot vectors, and the all-ones input of that Linear layer is every token at once:
    the lookup returns the sum of all rows of |W| (see :mod:`ticketlab.probe`). So the |theta|
    network is run with every embedding lookup replaced by that row sum, at every position of the
    input; every table row gets the score |w| * (paths from its output to R), exactly as the
    input columns of a first Linear layer do, and no data is read. The input itself is all ones
    of ``source.input_shape`` (its values reach only embedding lookups, which ignore them), or,
    when ``source.example_input`` is given, its first sample: integer token ids as they are, a
    floating input replaced by ones of its shape. A model that cannot run on the synthetic input
    (it indexes with or one-hot encodes the ids itself) raises a ScoreError asking for
    ``example_input``.
    """
    return SynflowScorer(model, source, reuse=False)(mask)


class SynflowScorer:
    """SynFlow scores for successive masks of one unchanged model (iterative SynFlow's rounds).

    The float64 |theta| copy of the model is built once; each call only writes
    |w| * mask into the masked weights (in place) and runs one forward and backward pass, so the
    rounds do not deep-copy, convert and take absolute values of the whole network again. The
    scores are bitwise those of :func:`synflow` on the same mask (same arithmetic, same dtype).
    The caller's model is never touched; it must not change between calls.
    """

    def __init__(self, model: nn.Module, source: ScoreSource, reuse: bool = True):
        self.source = source
        self.reuse = reuse  # False: one call only, the |w| copies for later rounds are not kept
        net = copy.deepcopy(model).to(source.device).to(torch.float64)
        net.eval()
        with torch.no_grad():
            for p in net.parameters():
                p.abs_()
        self.net = net
        self.params = dict(net.named_parameters())
        self.abs_weights: dict[str, torch.Tensor] = {}
        self.x = probe_input(source.input_shape, source.example_input, fill=1.0, dtype=torch.float64,
                             device=source.device)

    def __call__(self, mask: Mask) -> dict[str, torch.Tensor]:
        if not self.reuse:
            if getattr(self, "_used", False):
                raise RuntimeError("a SynflowScorer made with reuse=False scores once")
            self._used = True
        with torch.no_grad():
            for n in mask:
                w = self.params[n]
                if not self.reuse:
                    w.mul_(mask[n].to(w.device))
                    continue
                if n not in self.abs_weights:  # |w| of the unmasked model, kept for later rounds
                    self.abs_weights[n] = w.detach().clone()
                torch.mul(self.abs_weights[n], mask[n].to(w.device), out=w.data)
        weights = {n: self.params[n] for n in mask}
        source = self.source
        out = run_probe(self.net, self.x, ScoreError, "SynFlow", example_given=source.example_input is not None)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise ScoreError(f"SynFlow needs a floating tensor output, got {type(out).__name__}")
        R = out.sum()
        grads = torch.autograd.grad(R, list(weights.values()), allow_unused=True)
        # out of place: a gradient may be an expanded view (an embedding's, from the all-tokens probe)
        return {n: torch.mul(w.detach(), g).abs_() if g is not None else torch.zeros_like(w)
                for (n, w), g in zip(weights.items(), grads)}
