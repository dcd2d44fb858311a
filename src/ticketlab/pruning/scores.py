"""Pruning scores: how much each weight matters, higher = keep. One registry for every method.

A score function takes the model, the current mask and a ScoreSource and returns a tensor per
masked parameter. It never changes the caller's model: every method scores a copy with the mask
applied, so iterative pruning and the sanity checks see the model exactly as it was.
Selection (how many to keep, where) is separate: see ``selection.py`` and ``distributions.py``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
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
    return {n: s.to(torch.float64) for n, s in raw_scores(method, model, mask, source, **options).items()}


def raw_scores(method: str, model: nn.Module, mask: Mask, source: ScoreSource, **options) -> dict[str, torch.Tensor]:
    """``compute_scores`` in each score's own dtype (on the CPU, detached): what selection ranks,
    without a float64 copy of float32 scores (the conversion is exact, so the ranking is the same)."""
    if method not in SCORES:
        raise ScoreError(f"unknown pruning method {method!r}; choose one of {sorted(SCORES)}")
    mask.check_fits(model)
    scores = SCORES[method](model, mask, source, **options)
    return {n: scores[n].detach().to("cpu") for n in mask}


def masked_copy(model: nn.Module, mask: Mask, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` with pruned weights zeroed (the caller's model is never touched)."""
    clone = copy.deepcopy(model).to(device)
    if dtype is not None:
        clone = clone.to(dtype)
    mask.apply_(clone)
    return clone


def _set_mode(net: nn.Module, bn_mode: str) -> None:
    """Train or eval mode for a data-driven score's copy (BatchNorm statistics, dropout)."""
    if bn_mode not in ("train", "eval"):
        raise ScoreError(f"bn_mode must be 'train' or 'eval', got {bn_mode!r}")
    net.train(bn_mode == "train")


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
def snip(model: nn.Module, mask: Mask, source: ScoreSource, bn_mode: str = "train") -> dict[str, torch.Tensor]:
    """SNIP (Lee et al. 2019): |dL/dc| = |g * w| with c the mask, g summed over the source's batches.

    The paper's normalisation to sum 1 does not change the ranking and is left out. ``bn_mode``:
    the copy scores in train mode (BatchNorm batch statistics, the default) or eval mode (running
    statistics, as the Synaptic-Flow code does; see docs/pai_speed.md).
    """
    net = masked_copy(model, mask, source.device)
    _set_mode(net, bn_mode)
    weights = _weights(net, mask)
    grads: dict[str, torch.Tensor] = {}  # the first batch's gradient is the sum so far: no zeros + g
    for x, y in _batches(source):
        loss = source.loss(net(x), y)
        for n, g in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
            grads[n] = grads[n].add_(g) if n in grads else _owned(g, weights[n])
    return {n: grads[n].mul_(weights[n].detach()).abs_() for n in weights}


@dataclass(frozen=True)
class GraspOptions:
    """GraSP's options: the logits are divided by ``temperature`` (the paper's 200)."""

    temperature: float = option(200.0, "GraSP: the logits are divided by this temperature (the paper's 200)",
                                dest="grasp_temperature")

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"GraSP temperature (--grasp-temperature) must be > 0, got {self.temperature}")


@register_score("grasp", options=GraspOptions)
def grasp(model: nn.Module, mask: Mask, source: ScoreSource, temperature: float = 200.0,
          bn_mode: str = "train") -> dict[str, torch.Tensor]:
    """GraSP (Wang et al. 2020): score = w * Hg, higher = keep.

    The paper scores S(-w) = -w * Hg and removes the weights with the *largest* S, i.e. keeps the
    smallest -w * Hg. We return w * Hg = -S so that, like every other score here, the highest scores
    are kept; the mask is the paper's. Hg is the Hessian-gradient product, the gradient of
    g^T stop_grad(g) (g summed over the source's batches), with logits divided by ``temperature``.
    ``bn_mode`` as in :func:`snip`.
    """
    if temperature <= 0:
        raise ScoreError(f"GraSP temperature must be > 0, got {temperature}")
    net = masked_copy(model, mask, source.device)
    _set_mode(net, bn_mode)
    weights = _weights(net, mask)
    params = list(weights.values())
    batches = list(_batches(source))
    rng = _rng_state(source.device)
    x, y = batches[0]
    loss = source.loss(net(x) / temperature, y)
    # One batch and a forward pass that drew no random numbers (no dropout in train mode): the first
    # pass's graph is the second pass's, so Hg comes from it (one forward and backward fewer). The
    # gradient is bitwise the same with or without create_graph (test), so the scores are too.
    fused = len(batches) == 1 and torch.equal(rng, _rng_state(source.device))
    first = torch.autograd.grad(loss, params, create_graph=fused)
    g_fixed = [g.detach() + 0.0 for g in first]  # + 0.0: the value (and zero sign) of a zero accumulator + g
    for x, y in batches[1:]:
        loss = source.loss(net(x) / temperature, y)
        for acc, g in zip(g_fixed, torch.autograd.grad(loss, params)):
            acc += g
    if fused:
        z = sum((gi * gf).sum() for gi, gf in zip(first, g_fixed))
        hg = [h + 0.0 for h in torch.autograd.grad(z, params)]
    else:
        del first
        hg = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            loss = source.loss(net(x) / temperature, y)
            g = torch.autograd.grad(loss, params, create_graph=True)
            z = sum((gi * gf).sum() for gi, gf in zip(g, g_fixed))
            for acc, h in zip(hg, torch.autograd.grad(z, params)):
                acc += h
    return {n: p.detach() * h for (n, p), h in zip(weights.items(), hg)}


def _owned(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``g`` as a dense tensor of its own, safe to update in place (a sparse or view gradient is
    copied into zeros, which is what accumulating it into zeros gave)."""
    if g.layout == torch.strided and g._base is None and g.is_contiguous():
        return g
    return torch.zeros_like(w) + g


def _rng_state(device: torch.device) -> torch.Tensor:
    """The state of the generator a forward pass on ``device`` draws from (dropout)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


SYNFLOW_PRECISIONS = ("float64", "float32")
BN_MODES = ("train", "eval")


@register_score("synflow")
def synflow(model: nn.Module, mask: Mask, source: ScoreSource, precision: str = "float64") -> dict[str, torch.Tensor]:
    """SynFlow (Tanaka et al. 2020): |w * dR/dw| with R = sum of the output of the network whose
    parameters are all replaced by their absolute values, on one all-ones input. Data-free: the
    source's batches are never read.

    Computed on a copy (the caller's weights and signs are untouched), BatchNorm in eval mode as
    the paper specifies. ``precision`` 'float64' (default; the masks of every stored run) scores in
    double precision so deep networks do not overflow; 'float32' scores in single precision with
    power-of-two rescaling of the layers where float32's range needs it (see
    :class:`SynflowScorer`): the same ranking up to float32 rounding, about 2.5x cheaper.

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
    scorer = SynflowScorer(model, source, reuse=False, precision=precision)
    scores = scorer(mask)
    # undo the power-of-two rescaling (exact in float64): the caller sees the true scores
    return {n: torch.ldexp(s.double(), torch.tensor(-scorer.exponent)) if scorer.exponent else s
            for n, s in scores.items()}


class _AbsNet:
    """A copy of the model in ``dtype`` with every parameter replaced by its absolute value, in
    eval mode, and the probe input; each call writes |w| * mask into the masked weights (in place)
    and returns R = sum of the output and the scores |w * dR/dw|."""

    def __init__(self, model: nn.Module, source: ScoreSource, dtype: torch.dtype, keep: bool):
        net = copy.deepcopy(model).to(source.device).to(dtype)
        net.eval()
        with torch.no_grad():
            for p in net.parameters():
                p.abs_()
        self.net = net
        self.params = dict(net.named_parameters())
        self.keep = keep  # False: one call only, the |w| copies for later rounds are not kept
        self.abs_weights: dict[str, torch.Tensor] = {}
        self.example_given = source.example_input is not None
        self.x = probe_input(source.input_shape, source.example_input, fill=1.0, dtype=dtype, device=source.device)

    def set_mask(self, mask: Mask) -> None:
        """Masked weights := |w| * mask (|w| of the unmasked model kept for later rounds)."""
        with torch.no_grad():
            for n in mask:
                w = self.params[n]
                if not self.keep:
                    w.mul_(mask[n].to(w.device))
                    continue
                if n not in self.abs_weights:
                    self.abs_weights[n] = w.detach().clone()
                if w.device.type == "cpu":  # numpy multiplies by a bool array ~5x faster than torch
                    np.multiply(self.abs_weights[n].numpy(), mask[n].numpy(), out=w.detach().numpy())
                else:
                    torch.mul(self.abs_weights[n], mask[n].to(w.device), out=w.data)

    def __call__(self, mask: Mask) -> tuple[float, dict[str, torch.Tensor]]:
        self.set_mask(mask)
        weights = {n: self.params[n] for n in mask}
        out = run_probe(self.net, self.x, ScoreError, "SynFlow", example_given=self.example_given)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise ScoreError(f"SynFlow needs a floating tensor output, got {type(out).__name__}")
        R = out.sum()
        grads = torch.autograd.grad(R, list(weights.values()), allow_unused=True)
        scores = {n: _score(w.detach(), g) for (n, w), g in zip(weights.items(), grads)}
        return float(R.detach()), scores


def _score(w: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """|w * g|, in the gradient's own buffer when it is a plain one (no new allocation per round);
    out of place for a view (an embedding's gradient from the all-tokens probe is expanded)."""
    if g is None:
        return torch.zeros_like(w)
    if g._base is None and g.is_contiguous() and g.shape == w.shape:
        return g.mul_(w).abs_()
    return torch.mul(w, g).abs_()


class SynflowScorer:
    """SynFlow scores for successive masks of one unchanged model (iterative SynFlow's rounds).

    The |theta| copy of the model is built once; each call only writes |w| * mask into the masked
    weights (in place) and runs one forward and backward pass, so the rounds do not deep-copy,
    convert and take absolute values of the whole network again. The caller's model is never
    touched; it must not change between calls.

    ``precision`` 'float64': the scores are bitwise those of :func:`synflow` (``exponent`` 0).
    'float32': precision only where needed. A round is scored in float32 when R (the output sum)
    lies in [2^-60, 2^100], so the |theta| network's values and scores stay far inside float32's
    range (Euler: the scores of a bias-free layer sum to R). Otherwise the layers are rescaled by
    powers of two (:func:`_chain_exponents`): every value of the network, and so every score, is then
    multiplied by the same 2^exponent *exactly* (a power-of-two factor does not round), so the ranking
    is float64's up to float32's own rounding; the rescaling is checked bitwise against the unscaled
    float64 scores before it is used. A network it cannot rescale (not a chain of Linear / Conv /
    BatchNorm layers, e.g. a residual block; or still out of range) is scored in float64 that
    round. Returned scores are those times ``2 ** exponent`` (the same factor for all layers).
    """

    def __init__(self, model: nn.Module, source: ScoreSource, reuse: bool = True, precision: str = "float64"):
        if precision not in SYNFLOW_PRECISIONS:
            raise ScoreError(f"SynFlow precision must be one of {SYNFLOW_PRECISIONS}, got {precision!r}")
        self.model, self.source, self.reuse, self.precision = model, source, reuse, precision
        dtype = torch.float64 if precision == "float64" else torch.float32
        self.net = _AbsNet(model, source, dtype, keep=reuse)
        self.net64: _AbsNet | None = self.net if precision == "float64" else None  # built when needed
        self.exponent = 0  # log2 of the factor the current float32 net's values carry
        self.last_exponent = 0  # ... and the factor of the scores the last call returned
        self._in_float64 = False  # the last round needed float64 and the float32 net would not hold the next
        self._used = False

    def __call__(self, mask: Mask) -> dict[str, torch.Tensor]:
        if not self.reuse:
            if self._used:
                raise RuntimeError("a SynflowScorer made with reuse=False scores once")
            self._used = True
        if self.precision == "float64":
            return self.net(mask)[1]
        if not self._in_float64:
            R, scores = self.net(mask)
            if _in_range(R):
                self.last_exponent = self.exponent
                return scores
            if self._rescale(mask):
                R, scores = self.net(mask)
                if _in_range(R):
                    self.last_exponent = self.exponent
                    return scores
        # float32 cannot hold this round: float64, as precision='float64' would. Later rounds stay in
        # float64 (no float32 pass and failed rescaling each round) until the float32 net would fit.
        self.last_exponent = 0
        R64, scores = self._float64()(mask)
        self._in_float64 = not _in_range(math.ldexp(R64, self.exponent))
        return scores

    def _float64(self) -> _AbsNet:
        if self.net64 is None:
            self.net64 = _AbsNet(self.model, self.source, torch.float64, keep=self.reuse)
        return self.net64

    def _rescale(self, mask: Mask) -> bool:
        """Rebuild the float32 net with power-of-two layer scales fitted to ``mask``, if they verify."""
        ref = self._float64()
        ref.set_mask(mask)
        exps = _chain_exponents(ref)
        if exps is None:
            return False
        scaled = _AbsNet(self.model, self.source, torch.float64, keep=False)
        net32 = _AbsNet(self.model, self.source, torch.float32, keep=self.reuse)
        if not (_scale_(scaled.net, exps) and _scale_(net32.net, exps) and _same_values(net32.net, scaled.net)):
            return False  # a scaled parameter left float32's range
        exponent = exps.output
        R_ref, want = ref(mask)
        R_scaled, got = scaled(mask)
        e = torch.tensor(exponent)
        if not all(torch.equal(torch.ldexp(want[n], e), got[n]) for n in mask) or math.ldexp(R_ref, exponent) != R_scaled:
            return False  # not a chain of layers the scales commute with (e.g. a residual add)
        self.net, self.exponent = net32, exponent
        return True


_LOW, _HIGH = 2.0 ** -60, 2.0 ** 100


def _in_range(R: float) -> bool:
    """R far enough inside float32's range that the values and scores summing to it are too."""
    return _LOW <= R <= _HIGH


@dataclass
class _Exponents:
    """Power-of-two exponents of a chain's layers: module name -> (input exponent, output exponent);
    ``output`` is the exponent of the network's output (and of every score)."""

    layers: dict[str, tuple[int, int]]
    output: int


_SCALABLE = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)


def _chain_exponents(ref: _AbsNet) -> _Exponents | None:
    """Exponents that bring every layer's output of the (float64, masked) |theta| network near 1,
    reading the layers with parameters or buffers as one chain in the order they run. None when a
    layer is of a kind whose scaling is not known, runs twice, or outputs zero or non-finite values."""
    runs: list[tuple[str, nn.Module, float]] = []
    leaves = [(n, m) for n, m in ref.net.named_modules()
              if next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None]
    if any(not isinstance(m, _SCALABLE) for _, m in leaves):
        return None

    def record(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            runs.append((name, module, float(output.detach().abs().max()) if isinstance(output, torch.Tensor) else math.nan))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in leaves]
    try:
        with torch.no_grad():
            run_probe(ref.net, ref.x, ScoreError, "SynFlow", example_given=ref.example_given)
    finally:
        for h in handles:
            h.remove()
    if len({n for n, _, _ in runs}) != len(runs):
        return None
    layers, exp_in = {}, 0
    for name, module, top in runs:
        if not (math.isfinite(top) and top > 0):
            return None
        exp_out = -math.frexp(top)[1]
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is None:
                return None  # batch statistics even in eval mode: not homogeneous
            if module.weight is None:
                exp_out = exp_in  # no affine factor to carry a change of scale
        layers[name] = (exp_in, exp_out)
        exp_in = exp_out
    return _Exponents(layers, exp_in)


def _scale_(net: nn.Module, exps: _Exponents) -> bool:
    """Multiply each chain layer of ``net`` by its powers of two, in place: the factor on the layer's
    multiplicative parameters moves its input exponent to its output exponent, its additive ones
    (bias, BatchNorm's shift) carry the output exponent, BatchNorm's running mean the input one."""
    modules = dict(net.named_modules())
    with torch.no_grad():
        for name, (e_in, e_out) in exps.layers.items():
            m = modules[name]
            if getattr(m, "weight", None) is not None:
                m.weight.mul_(2.0 ** (e_out - e_in))
            if getattr(m, "bias", None) is not None:
                m.bias.mul_(2.0 ** e_out)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.mul_(2.0 ** e_in)
    return all(torch.isfinite(t).all() for t in (*net.parameters(), *net.buffers()) if t.is_floating_point())


def _same_values(a: nn.Module, b: nn.Module) -> bool:
    """Every floating parameter and buffer of ``a`` (float32) is ``b``'s (float64) rounded to float32.

    A weight scaled by a power of two converts exactly; a bias that carries a very small exponent may
    land among float32's subnormals and round there (absolute error <= 2^-150, far below the float32
    rounding of the activations near 1 it is added to): the same kind of error as float32 arithmetic.
    """
    tensors_a = [*a.parameters(), *a.buffers()]
    tensors_b = [*b.parameters(), *b.buffers()]
    return all(torch.allclose(x.to(y.dtype), y, rtol=2.0 ** -24, atol=2.0 ** -149)
               for x, y in zip(tensors_a, tensors_b) if x.is_floating_point())
