"""Strong lottery tickets by a genetic algorithm (Altmann et al. 2024, authors' code SLTN-GA).

A ReLU MLP keeps its weights and biases at their U[-1, 1] draw for good (:class:`FrozenMLP`). A
genome is one bit per *weight* (biases are never masked); its fitness is the number of training
points the masked net classifies correctly, and genomes are ranked by (accuracy, number of zero
bits), so an accuracy tie goes to the sparser genome. One generation (population N):

1. recombination: each individual, with probability ``recombination_rate``, makes one child by
   *uniform* crossover (each bit from either parent with probability 1/2) with a mate drawn
   uniformly from the best ``parent_rate * N`` individuals (itself included, as in the authors' code);
2. mutation: each individual, children included, with probability ``mutation_rate`` adds a mutant
   with one uniformly drawn bit flipped;
3. migration: ``migration_rate * N`` fresh Bernoulli(``init_density``) genomes join;
4. survivor selection: the best N of parents and offspring survive (elitist truncation).

Only the offspring are evaluated (parents keep their fitness, as the authors' fitness cache does),
and they are evaluated together (:meth:`FrozenMLP.correct`), by one of four strategies that give the
same counts: ``"fused"`` (the CUDA default where Triton is installed: one kernel launch per
generation, each program streams points through one genome's whole net, argmax and count included;
genetic_fused.py), ``"chunked"`` (the CUDA default without Triton: each weight stack augmented with
its bias row, points in chunks whose activations for the whole population stay in L2, all chunks
replayed as one CUDA graph), ``"stacked"`` (one batched ``matmul`` per layer over large chunks) and
``"loop"`` (the CPU default: per genome plain 2-D products, which a CPU runs faster than broadcast
batched ones).

The run stops after at least ``min_generations`` generations once the best training accuracy has
not changed for ``patience`` generations, at ``max_generations``, or (variant ``"ga"``, as the
authors' stop rule t10) when the best genome classifies every training point. Variant
``"adaptive_ab"`` ("GA (adaptive AB)") keeps every genome connected (every output unit reachable
from an input through kept weights), fills its first population only with genomes above an
accuracy bound that is lowered step by step until the population is full (after every short round
of N candidates, or with ``bound_seconds`` after that many seconds as the authors do: then the run
depends on the machine's speed and is not reproducible), and caps at 200 generations.

Everything random comes from one ``torch.Generator`` on the CPU, and :class:`GAState` holds the
whole state between generations (population, fitness, history, generator state), so a run
continued from a saved state gives exactly the uninterrupted result (generation 0 of a wall-clock
adaptive_ab run is saved like any other, so its continuation is exact too).
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..config import option
from ..data import ArrayData
from ..masks import Mask

VARIANTS = ("ga", "adaptive_ab")
_DEFAULT_MAX = {"ga": 300, "adaptive_ab": 200}  # authors' configs: population_age 300 (t10), 200 (t4)
# most activations one chunk of FrozenMLP.correct holds (numbers); see benchmarks/ga_population.py
CPU_BUDGET = 1 << 22
LOOP_BUDGET = 1 << 17  # "loop" on one CPU thread: 18 ms per genome at 2^17, 25 ms at 2^22 (50,000 points)
CUDA_BUDGET = 1 << 26  # "stacked" on an H200: 7.5 ms at 2^24, 5.7 ms at 2^26, 5.5 ms at 2^28 (100 x 50,000 points)
STRATEGIES = ("auto", "fused", "chunked", "stacked", "loop")
_clock = time.perf_counter  # adaptive_ab's wall-clock bound rule (a name of its own, so tests can fake it)
_GRAPHS_KEPT = 16  # captured evaluations a net keeps (one per padded population size and point count)
# "chunked": chunks go round-robin to this many branches (own buffers; on CUDA own streams in the
# graph, so one chunk's small kernels overlap the next's); 1 = one chain. Measured on an H200
# (benchmarks/ga_population.py --sweep, docs/strong_tickets.md): 2 branches at an eighth of L2 each
# 3.36 ms, one chain at a quarter 4.02 ms.
CHUNK_STREAMS = 2
CUDA_GRAPHS = True  # False: "chunked" launches its kernels one by one on CUDA too (to time what the graph saves)

class GeneticError(ValueError):
    """Bad GA options, genomes of the wrong shape or a state that does not fit the net."""


@dataclass(frozen=True)
class GAOptions:
    """The GA's hyper-parameters (defaults: the authors' configs, population 100)."""

    population: int = option(100, "GA population size N")
    recombination_rate: float = option(0.3, "GA: probability that an individual makes a child by uniform crossover")
    parent_rate: float = option(0.3, "GA: mates are drawn from this best fraction of the population")
    mutation_rate: float = option(0.1, "GA: probability that an individual (children included) adds a one-bit mutant")
    migration_rate: float = option(0.1, "GA: fresh random genomes per generation, as a fraction of N")
    init_density: float = option(0.5, "GA: probability that a bit of a fresh genome is 1 (kept)")
    min_generations: int = option(100, "GA: generations before the stagnation stop may end the run")
    patience: int = option(50, "GA: stop once the best training accuracy is unchanged for this many generations")
    max_generations: int = option(0, "GA: hard cap on generations", shown_default="300 (ga), 200 (adaptive_ab)")
    variant: str = option("ga", "GA variant: 'ga' (the paper's GA) or 'adaptive_ab' (connected genomes, accuracy "
                                "bound on the first population, 200-generation cap)", choices=VARIANTS)
    bound: float = option(0.85, "adaptive_ab: first accuracy bound for the first population (lowered by 0.05 per "
                                "round of N candidates until the population is full)")
    bound_seconds: float = option(0.0, "adaptive_ab: lower the bound only after this many seconds without filling "
                                       "the first population (the authors' wall-clock rule, 4-5 s; NOT deterministic: "
                                       "depends on the machine's speed); 0 = after every short round (deterministic)",
                                  omit_default=True)

    cli_group = "genetic algorithm"

    def __post_init__(self) -> None:
        if isinstance(self.population, bool) or not isinstance(self.population, int) or self.population < 2:
            raise GeneticError(f"population must be an integer >= 2, got {self.population!r}")
        for name in ("recombination_rate", "mutation_rate", "migration_rate", "bound"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise GeneticError(f"{name} must lie in [0, 1], got {v!r}")
        for name in ("parent_rate", "init_density"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise GeneticError(f"{name} must lie in (0, 1], got {v!r}")
        if self.variant not in VARIANTS:
            raise GeneticError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if not isinstance(self.bound_seconds, (int, float)) or isinstance(self.bound_seconds, bool) \
                or not 0.0 <= self.bound_seconds < float("inf"):
            raise GeneticError(f"bound_seconds must be a number of seconds >= 0, got {self.bound_seconds!r}")
        for name in ("min_generations", "patience", "max_generations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise GeneticError(f"{name} must be an integer >= 0, got {v!r}")
        if self.patience < 1:
            raise GeneticError(f"patience must be >= 1, got {self.patience}")
        if self.max_generations and self.max_generations < 1:
            raise GeneticError(f"max_generations must be >= 1 (0: the variant's default), got {self.max_generations}")

    @property
    def generation_cap(self) -> int:
        """``max_generations``, or the variant's default when it is 0."""
        return self.max_generations or _DEFAULT_MAX[self.variant]

    @property
    def mates(self) -> int:
        """How many of the best individuals may be drawn as mates (at least 1)."""
        return max(1, int(self.parent_rate * self.population))

    @property
    def migrants(self) -> int:
        return int(self.migration_rate * self.population)


# --- the frozen network ----------------------------------------------------------------------------

class FrozenMLP:
    """A ReLU MLP ``widths[0] -> ... -> widths[-1]`` with weights and biases drawn U[-1, 1] once.

    The draw order is layer by layer, weight then bias, from ``generator``, so the same seed gives
    the same net. Genomes are flat bool vectors over the weights in that order (row-major per
    layer); :meth:`to_module` gives ticketlab's ``mlp`` with these weights (names ``hidden.0``,
    ``hidden.2``, ..., ``fc``) for edge-popup and backprop on the very same net.
    """

    def __init__(self, widths: Sequence[int], generator: torch.Generator | None = None, *,
                 dtype: torch.dtype = torch.float32):
        widths = [int(w) for w in widths]
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise GeneticError(f"widths must list at least input and output width, all >= 1, got {widths}")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.widths = widths
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            self.weights.append((torch.rand(fan_out, fan_in, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype))
            self.biases.append((torch.rand(fan_out, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype))
        self.sizes = [w.numel() for w in self.weights]

    @property
    def genome_length(self) -> int:
        return sum(self.sizes)

    @property
    def names(self) -> list[str]:
        """The weight names of :meth:`to_module` (``hidden.0.weight``, ..., ``fc.weight``)."""
        return [f"hidden.{2 * i}.weight" for i in range(len(self.weights) - 1)] + ["fc.weight"]

    def to(self, device: torch.device | str) -> FrozenMLP:
        """The same net with its tensors on ``device`` (a shallow copy)."""
        other = object.__new__(FrozenMLP)
        other.widths, other.sizes = self.widths, self.sizes
        other.weights = [w.to(device) for w in self.weights]
        other.biases = [b.to(device) for b in self.biases]
        other._plans = {}
        return other

    def _check(self, genomes: torch.Tensor) -> torch.Tensor:
        if genomes.dim() == 1:
            genomes = genomes[None]
        if genomes.dim() != 2 or genomes.shape[1] != self.genome_length:
            raise GeneticError(f"genomes must be K x {self.genome_length} (one bit per weight), got "
                               f"{tuple(genomes.shape)}")
        return genomes

    def layer_masks(self, genomes: torch.Tensor) -> list[torch.Tensor]:
        """K genomes -> per layer a K x out x in bool mask."""
        genomes = self._check(genomes).bool()
        out, start = [], 0
        for w, n in zip(self.weights, self.sizes):
            out.append(genomes[:, start:start + n].reshape(-1, *w.shape))
            start += n
        return out

    def logits(self, genomes: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """K x N x classes: every genome's masked net on the same inputs, one matmul per layer."""
        masks = self.layer_masks(genomes)
        h = x.to(self.weights[0].dtype)
        last = len(self.weights) - 1
        for i, (w, b, m) in enumerate(zip(self.weights, self.biases, masks)):
            stacked = (w * m.to(w.dtype)).transpose(1, 2)       # K x in x out
            if h.dim() == 2:                                    # the shared input: N x in -> K x N x out
                h = torch.matmul(h, stacked).add_(b)
            else:                                               # bias fused into the batched product
                h = torch.baddbmm(b, h, stacked)
            if i < last:
                h = h.relu_()
        return h

    @torch.no_grad()
    def correct(self, genomes: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                budget: int | None = None, strategy: str = "auto") -> torch.Tensor:
        """Correctly classified points per genome (K int64, on the CPU).

        ``strategy`` (see the module docstring): ``"auto"`` is ``"fused"`` on CUDA with Triton
        installed (for fp32 nets of 1 to 3 hidden layers up to 128 wide), else ``"chunked"`` on CUDA
        and ``"loop"`` elsewhere (``"chunked"`` needs a hidden layer; without one it runs
        ``"stacked"``). ``budget`` caps the numbers one activation tensor of a chunk holds
        (defaults: :meth:`default_budget`; ``"fused"`` holds no activations and ignores it).
        A point's logits do not depend on the rest of its chunk or on the other genomes, so neither
        the strategy nor the chunking changes a count (the tests check each against a
        per-individual loop over an ``nn.Module``, exactly). Matrix products run in
        full fp32 (TF32 is switched off for the call).
        """
        genomes = self._check(genomes)
        device = self.weights[0].device
        requested, strategy = strategy, _resolve(strategy, device, self)
        given, budget = budget, self.default_budget(strategy, device) if budget is None else int(budget)
        if budget < 1:
            raise GeneticError(f"budget must be >= 1 activation, got {budget}")
        if genomes.shape[0] == 0 or x.shape[0] == 0:
            return torch.zeros(genomes.shape[0], dtype=torch.int64)
        genomes, x, y = genomes.to(device), x.to(device, self.weights[0].dtype), y.to(device)
        if strategy == "fused":
            try:
                return self._correct_fused(genomes, x, y)
            except Exception as exc:  # e.g. a GPU this Triton cannot compile for: "auto" falls back
                if requested != "auto":
                    raise
                warnings.warn(f"the fused GA kernel failed on {device} ({type(exc).__name__}: {exc}); this net "
                              "evaluates with strategy 'chunked' from now on (the same counts)", stacklevel=2)
                self.__dict__["_fused_failed"] = True
                strategy = "chunked"
                budget = self.default_budget(strategy, device) if given is None else int(given)
        with _full_fp32():
            if strategy == "loop":
                return self._correct_loop(genomes, x, y, budget)
            if strategy == "stacked" or len(self.weights) == 1:  # chunked needs a hidden layer
                return self._correct_stacked(genomes, x, y, budget)
            return self._correct_chunked(genomes, x, y, budget)

    def evaluation_strategy(self, strategy: str = "auto") -> str:
        """The strategy :meth:`correct` runs for ``strategy`` on this net's device (``"auto"`` made
        concrete, after a fused-kernel failure too), e.g. for a run's log."""
        return _resolve(strategy, self.weights[0].device, self)

    def default_budget(self, strategy: str = "auto", device: torch.device | str | None = None) -> int:
        """The activation budget ``correct`` uses by default: for ``"chunked"`` a quarter of the
        device's L2 cache shared by the ``CHUNK_STREAMS`` branches (the chunks in flight, two hidden
        activations each, then fill half of it, and stay there between the products), for ``"loop"`` ``LOOP_BUDGET`` (a CPU core's cache), else
        ``CUDA_BUDGET`` / ``CPU_BUDGET``."""
        device = torch.device(device) if device is not None else self.weights[0].device
        strategy = _resolve(strategy, device, self)
        if strategy == "fused":
            return 1  # holds no activations: the budget plays no part
        if strategy == "chunked":
            return _l2_bytes(device) // (4 * self.weights[0].element_size() * max(1, int(CHUNK_STREAMS)))
        if strategy == "loop":
            return LOOP_BUDGET
        return CUDA_BUDGET if device.type == "cuda" else CPU_BUDGET

    def chunk_points(self, k: int, budget: int | None = None, strategy: str = "auto",
                     device: torch.device | str | None = None) -> int:
        """Points per chunk when ``correct`` evaluates ``k`` genomes (what the benchmark reports)."""
        device = torch.device(device) if device is not None else self.weights[0].device
        strategy = _resolve(strategy, device, self)
        budget = self.default_budget(strategy, device) if budget is None else int(budget)
        if strategy == "fused":
            from . import genetic_fused

            return genetic_fused.launch_shape(self.widths)[0]
        if strategy == "loop":
            return max(1, budget // max(self.widths[1:]))
        if strategy == "stacked":
            return max(1, budget // (min(k, max(1, budget // max(self.widths[1:]))) * max(self.widths[1:])))
        return _points_per_chunk(budget, _pad_k(k) * max(_augmented_widths(self.widths)[1:-1] or [1]))

    def _correct_fused(self, genomes: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One Triton launch for the whole population (genetic_fused.py); plans cached per padded K."""
        from . import genetic_fused

        plans: dict[int, Any] = self.__dict__.setdefault("_fused_plans", {})
        k_pad = _pad_k(genomes.shape[0])
        if k_pad not in plans:
            while len(plans) >= _GRAPHS_KEPT:
                plans.pop(next(iter(plans)))
            plans[k_pad] = genetic_fused.make_plan(self.weights, self.biases, k_pad)
        with torch.cuda.device(x.device):
            counts = genetic_fused.count(plans[k_pad], self.weights, self.layer_masks(genomes),
                                         x.contiguous(), y.to(torch.int64).contiguous())
        return counts.cpu()

    def _correct_loop(self, genomes: torch.Tensor, x: torch.Tensor, y: torch.Tensor, budget: int) -> torch.Tensor:
        """Per genome, the very products ``nn.Linear`` makes (``addmm``) on point chunks: on a CPU
        these 2-D products beat the broadcast batched ones, and there is no launch to save."""
        n_chunk = max(1, budget // max(self.widths[1:]))
        masks = self.layer_masks(genomes)
        out = torch.zeros(genomes.shape[0], dtype=torch.int64, device=x.device)
        for k in range(genomes.shape[0]):
            weights = [(w * m[k].to(w.dtype)).t() for w, m in zip(self.weights, masks)]
            for n0 in range(0, x.shape[0], n_chunk):
                out[k] += (_forward_2d(weights, self.biases, x[n0:n0 + n_chunk]).argmax(-1)
                           == y[n0:n0 + n_chunk]).sum()
        return out.cpu()

    def _correct_stacked(self, genomes: torch.Tensor, x: torch.Tensor, y: torch.Tensor, budget: int) -> torch.Tensor:
        """All genomes of a chunk at once, one batched product per layer (the first batched version)."""
        k_all, n_all = genomes.shape[0], x.shape[0]
        width = max(self.widths[1:])
        k_chunk = max(1, min(k_all, budget // max(1, width)))
        total = torch.zeros(k_all, dtype=torch.int64, device=x.device)
        for k0 in range(0, k_all, k_chunk):
            g = genomes[k0:k0 + k_chunk]
            n_chunk = max(1, budget // (g.shape[0] * width))
            for n0 in range(0, n_all, n_chunk):
                pred = self.logits(g, x[n0:n0 + n_chunk]).argmax(-1)
                total[k0:k0 + k_chunk] += (pred == y[n0:n0 + n_chunk]).sum(-1)
        return total.cpu()

    def _correct_chunked(self, genomes: torch.Tensor, x: torch.Tensor, y: torch.Tensor, budget: int) -> torch.Tensor:
        """Augmented weight stacks, L2-sized point chunks; on CUDA one captured graph per padded
        population size, replayed with this call's genomes and points copied into its buffers."""
        k, width = genomes.shape[0], max(_augmented_widths(self.widths)[1:-1] or [1])
        group = max(4, budget // (32 * width) // 4 * 4)  # so that a chunk holds at least 32 points
        if k > group:
            return torch.cat([self._correct_chunked(genomes[k0:k0 + group], x, y, budget)
                              for k0 in range(0, k, group)])
        k_pad = _pad_k(k)
        n_chunk = min(_points_per_chunk(budget, k_pad * width), x.shape[0])
        plan = self._plan(k_pad, x.shape[0], n_chunk, max(1, int(CHUNK_STREAMS)))
        _fill_plan(plan, self, genomes, x, y)
        if plan.x.device.type != "cuda" or not CUDA_GRAPHS:
            return _run_chunks(plan)[:k].cpu()
        with torch.cuda.device(plan.x.device):
            if plan.graph is None:
                _capture(plan)
            plan.graph.replay()
        return plan.counts[:k].cpu()

    def _plan(self, k_pad: int, n_points: int, n_chunk: int, branches: int) -> _ChunkPlan:
        """The cached static buffers (and graph) for this shape, made on first use."""
        plans: dict[tuple[int, int, int, int], _ChunkPlan] = self.__dict__.setdefault("_plans", {})
        key = (k_pad, n_points, n_chunk, branches)
        if key not in plans:
            while len(plans) >= _GRAPHS_KEPT:
                plans.pop(next(iter(plans)))
            plans[key] = _make_plan(self, k_pad, n_points, n_chunk, branches)
        return plans[key]

    @torch.no_grad()
    def connected(self, genomes: torch.Tensor) -> torch.Tensor:
        """K bools: every output unit is reachable from an input through kept weights."""
        reach = torch.ones(self._check(genomes).shape[0], self.widths[0], 1)
        for m in self.layer_masks(genomes.cpu()):
            reach = (torch.bmm(m.float(), reach) > 0).float()
        return reach.squeeze(-1).bool().all(1)

    def to_module(self) -> nn.Module:
        """ticketlab's ``mlp`` holding these weights and biases (a fresh, trainable copy)."""
        from ..models import build_model

        model = build_model("mlp", (self.widths[0],), self.widths[-1], hidden=list(self.widths[1:-1]))
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases):
                lin.weight.copy_(w.cpu())
                lin.bias.copy_(b.cpu())
        return model

    def mask(self, genome: torch.Tensor) -> Mask:
        """One genome as a :class:`Mask` over :meth:`to_module`'s weights."""
        return Mask({n: m[0].cpu() for n, m in zip(self.names, self.layer_masks(genome))})


# --- evaluation strategies (FrozenMLP.correct) ---------------------------------------------------

def _resolve(strategy: str, device: torch.device, net: FrozenMLP) -> str:
    """``"auto"`` made concrete for ``device``; ``"fused"`` refused where it cannot run."""
    from . import genetic_fused

    if strategy not in STRATEGIES:
        raise GeneticError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    fits = net.weights[0].dtype == torch.float32 and genetic_fused.supports(net.widths)
    if strategy == "auto":
        if device.type != "cuda":
            return "loop"
        failed = net.__dict__.get("_fused_failed", False)  # set by correct() when the kernel failed here
        return "fused" if fits and not failed and genetic_fused.available(device) else "chunked"
    if strategy == "fused" and not genetic_fused.available(device):
        raise GeneticError(f"strategy 'fused' needs a CUDA device and the triton package (device {device}); "
                           "use 'auto', which falls back to 'chunked'")
    if strategy == "fused" and not fits:
        raise GeneticError(f"strategy 'fused' has code for float32 nets of 1 to {genetic_fused.MAX_HIDDEN} hidden "
                           f"layers up to {genetic_fused.MAX_WIDTH} units wide (padded), not {net.widths} in "
                           f"{net.weights[0].dtype}; use 'chunked'")
    return strategy


@contextmanager
def _full_fp32() -> Iterator[None]:
    """No TF32 in the products (restored afterwards): the counts must equal a plain fp32 loop's."""
    if not torch.backends.cuda.matmul.allow_tf32:  # the default: nothing to change
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = True


def _l2_bytes(device: torch.device) -> int:
    """The device's L2 cache (an H100: 50 MB, an H200: 60 MB); 2 MiB for a CPU core's L2."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or 50 << 20
    return 2 << 20


def _pad_k(k: int) -> int:
    """Population sizes rounded up to a multiple of 4, so a GA run captures few graphs."""
    return -(-k // 4) * 4


def _augmented_widths(widths: Sequence[int]) -> list[int]:
    """Layer widths for the chunked pass: every hidden layer gets a constant-one column (the next
    layer's bias becomes one more row of its weight stack), rounded up to a multiple of 4 (aligned
    rows for the products); input and output keep their widths."""
    return [widths[0]] + [-(-(w + 1) // 4) * 4 for w in widths[1:-1]] + [widths[-1]]


def _points_per_chunk(budget: int, per_point: int) -> int:
    """Points whose activations fit ``budget`` numbers, a multiple of 32 when that many fit."""
    n = max(1, budget // max(1, per_point))
    return n - n % 32 if n >= 32 else n


def _forward_2d(weights_t: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One masked net's logits, with ``nn.Linear``'s own product (``addmm``, bias in the epilogue)."""
    h = x
    for i, (w, b) in enumerate(zip(weights_t, biases)):
        h = torch.addmm(b, h, w)
        if i < len(biases) - 1:
            h = h.relu_()
    return h


def _linear_relu(bias: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``relu(x @ w + bias)`` into ``out``, bias and ReLU in the product's epilogue where torch has
    that (cuBLASLt), which saves one pass over the activation; same rounding as ``nn.Linear``."""
    if hasattr(torch, "_addmm_activation"):
        return torch._addmm_activation(bias, x, w, out=out)
    return torch.addmm(bias, x, w, out=out).relu_()


@dataclass
class _ChunkPlan:
    """The static buffers of one chunked evaluation shape (and its CUDA graph, once captured).

    The first layer is one 2-D product for the whole population, ``x (n x in) @ first (in x K*out)``
    with bias and ReLU in its epilogue; its bias vector is 1 at each genome's extra column, so that
    column of the activation is the constant one the next layer needs. Each later layer i is a
    batched product with a K x in_aug x out_aug stack: rows [0, in) the masked weights (transposed),
    row ``in`` the bias (and, for hidden layers, a 1 at column ``out`` to carry the constant on).
    The product adds the bias as its last term, where ``nn.Linear`` adds it after the sum: the same
    rounding.
    """

    x: torch.Tensor                  # chunks x n x in; padded points are 0
    y: torch.Tensor                  # chunks x 1 x n; -1 on padded points (never a prediction)
    first: torch.Tensor              # in x K x out0_aug, the first layer's masked weights
    first_bias: torch.Tensor         # K*out0_aug
    stacks: list[torch.Tensor]       # per later layer K x in_aug x out_aug
    hidden: list[list[torch.Tensor]]  # per branch, per hidden layer the chunk's activation (first: n x K*out0_aug)
    logits: torch.Tensor             # chunks x K x n x classes
    n_points: int
    streams: list[Any] = field(default_factory=list)  # CUDA: one per branch (made outside any capture)
    counts: torch.Tensor | None = None
    graph: Any = None


def _make_plan(net: FrozenMLP, k_pad: int, n_points: int, n_chunk: int, branches: int = 1) -> _ChunkPlan:
    dev, dtype = net.weights[0].device, net.weights[0].dtype
    widths, aug = net.widths, _augmented_widths(net.widths)
    chunks = -(-n_points // n_chunk)
    x = torch.zeros(chunks, n_chunk, widths[0], dtype=dtype, device=dev)
    y = torch.full((chunks, 1, n_chunk), -1, dtype=torch.int64, device=dev)
    first = torch.zeros(widths[0], k_pad, aug[1], dtype=dtype, device=dev)
    first_bias = torch.zeros(k_pad, aug[1], dtype=dtype, device=dev)
    first_bias[:, :widths[1]] = net.biases[0]
    first_bias[:, widths[1]] = 1
    stacks = []
    for i in range(1, len(net.weights)):
        stack = torch.zeros(k_pad, aug[i], aug[i + 1], dtype=dtype, device=dev)
        stack[:, widths[i], :widths[i + 1]] = net.biases[i]
        if i + 1 < len(net.weights):
            stack[:, widths[i], widths[i + 1]] = 1
        stacks.append(stack)
    hidden = [[torch.zeros(n_chunk, k_pad * aug[1], dtype=dtype, device=dev)]
              + [torch.zeros(k_pad, n_chunk, w, dtype=dtype, device=dev) for w in aug[2:-1]]
              for _ in range(branches)]
    logits = torch.zeros(chunks, k_pad, n_chunk, widths[-1], dtype=dtype, device=dev)
    streams = [torch.cuda.Stream(dev) for _ in range(branches)] if dev.type == "cuda" and branches > 1 else []
    return _ChunkPlan(x, y, first, first_bias.view(-1), stacks, hidden, logits, n_points, streams)


def _fill_plan(plan: _ChunkPlan, net: FrozenMLP, genomes: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
    """Copy this call's masked weights, points and labels into the plan's static buffers."""
    k = genomes.shape[0]
    masks = net.layer_masks(genomes)
    w0 = net.weights[0]
    torch.mul(w0.t()[:, None], masks[0].permute(2, 0, 1), out=plan.first[:, :k, :w0.shape[0]])
    for stack, w, m in zip(plan.stacks, net.weights[1:], masks[1:]):
        torch.mul(w.t(), m.transpose(1, 2), out=stack[:k, :w.shape[1], :w.shape[0]])
    plan.x.view(-1, x.shape[1])[:plan.n_points] = x
    plan.y.view(-1)[:plan.n_points] = y


def _run_chunks(plan: _ChunkPlan) -> torch.Tensor:
    """The whole evaluation over the plan's buffers: per chunk one product per layer into its
    branch's reused hidden buffers (ReLU in the first product's epilogue, in place after the
    others), branches on their own streams on CUDA, then one argmax and count over all logits."""
    if plan.streams:  # fork from the current (capturing) stream, join back before the count
        main = torch.cuda.current_stream(plan.x.device)
        for stream in plan.streams:
            stream.wait_stream(main)
    for c in range(plan.x.shape[0]):
        b = c % len(plan.hidden)
        if plan.streams:
            with torch.cuda.stream(plan.streams[b]):
                _run_chunk(plan, c, plan.hidden[b])
        else:
            _run_chunk(plan, c, plan.hidden[b])
    for stream in plan.streams:
        main.wait_stream(stream)
    return (plan.logits.argmax(-1) == plan.y).sum((0, 2))


def _run_chunk(plan: _ChunkPlan, c: int, hidden: list[torch.Tensor]) -> None:
    """Chunk ``c``'s logits into ``plan.logits[c]``."""
    k, n = plan.logits.shape[1], plan.x.shape[1]
    h = _linear_relu(plan.first_bias, plan.x[c], plan.first.view(plan.first.shape[0], -1), out=hidden[0])
    h = h.view(n, k, -1).transpose(0, 1)
    last = len(plan.stacks)
    for i, stack in enumerate(plan.stacks, start=1):
        out = hidden[i] if i < last else plan.logits[c]
        torch.bmm(h, stack, out=out)
        h = out.relu_() if i < last else out


def _capture(plan: _ChunkPlan) -> None:
    """Record the evaluation as one CUDA graph (after a warm-up on a side stream, so cuBLAS has
    chosen its kernels and workspace): a replay is then one launch instead of ~5 per chunk."""
    side = torch.cuda.Stream(plan.x.device)
    side.wait_stream(torch.cuda.current_stream(plan.x.device))
    with torch.cuda.stream(side):
        _run_chunks(plan)
    torch.cuda.current_stream(plan.x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan.counts = _run_chunks(plan)
    plan.graph = graph


# --- operators (pure; every random draw is passed in) --------------------------------------------

def uniform_crossover(a: torch.Tensor, b: torch.Tensor, take_b: torch.Tensor) -> torch.Tensor:
    """Children taking each bit from ``b`` where ``take_b`` holds, else from ``a`` (any batch shape)."""
    return torch.where(take_b, b, a)


def flip_bits(genomes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A copy of each genome (K x G) with bit ``index[k]`` flipped."""
    out = genomes.clone()
    rows = torch.arange(genomes.shape[0])
    out[rows, index] = ~out[rows, index]
    return out


def rank(correct: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Indices best first: more correct points first, then fewer kept bits (the sparser genome),
    then the lower index (a stable, deterministic order)."""
    n = correct.shape[0]
    key_index = torch.arange(n)
    # lexicographic by stable sorts, least significant key first
    order = key_index
    order = order[torch.sort(kept[order], stable=True).indices]
    order = order[torch.sort(-correct[order], stable=True).indices]
    return order


def select_survivors(genomes: torch.Tensor, correct: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Elitist truncation: the best ``n`` of ``genomes`` by :func:`rank`, best first."""
    order = rank(correct, genomes.sum(1))[:n]
    return genomes[order], correct[order]


def random_genomes(n: int, length: int, density: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` fresh genomes, each bit 1 with probability ``density``."""
    return torch.rand(n, length, generator=generator) < density


# --- state and one generation --------------------------------------------------------------------

@dataclass
class GAState:
    """Everything a GA run carries from one generation to the next (population sorted best first)."""

    genomes: torch.Tensor              # N x G bool
    correct: torch.Tensor              # N int64, correctly classified training points
    rng: torch.Tensor                  # the generator's state after the last generation
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per generation (0: initial)
    n_train: int = 0
    bound: float | None = None         # adaptive_ab: the accuracy bound the first population met
    stopped: str | None = None         # why the run ended, once it has

    @property
    def generation(self) -> int:
        return len(self.history) - 1

    # one safetensors file: every field as a tensor, so a save is one atomic write
    _COLUMNS = ("generation", "best_correct", "best_kept", "mean_correct", "mean_kept", "evaluated")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        cols = {f"history.{c}": torch.tensor([float(r[c]) for r in self.history], dtype=torch.float64)
                for c in self._COLUMNS}
        stop = (self.stopped or "").encode()
        return {"genomes": self.genomes.to(torch.uint8), "correct": self.correct, "rng": self.rng,
                "n_train": torch.tensor([self.n_train]),
                "bound": torch.tensor([-1.0 if self.bound is None else self.bound], dtype=torch.float64),
                "stopped": torch.tensor(list(stop), dtype=torch.uint8), **cols}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], genome_length: int) -> GAState:
        if t["genomes"].dim() != 2 or t["genomes"].shape[1] != genome_length:
            raise GeneticError(f"the saved population has genomes of shape {tuple(t['genomes'].shape)}, but this "
                               f"net has {genome_length} weights; the state belongs to another net")
        n_train = int(t["n_train"][0])
        rows = len(t["history.generation"])
        history = []
        for i in range(rows):
            r = {c: t[f"history.{c}"][i].item() for c in cls._COLUMNS}
            history.append(_record(int(r["generation"]), int(r["best_correct"]), int(r["best_kept"]),
                                   r["mean_correct"], r["mean_kept"], int(r["evaluated"]), n_train, genome_length))
        bound = float(t["bound"][0])
        stopped = bytes(t["stopped"].tolist()).decode() or None
        return cls(t["genomes"].bool(), t["correct"].to(torch.int64), t["rng"].to(torch.uint8), history, n_train,
                   None if bound < 0 else bound, stopped)


def _record(generation: int, best_correct: int, best_kept: int, mean_correct: float, mean_kept: float,
            evaluated: int, n_train: int, length: int) -> dict[str, Any]:
    return {"generation": generation, "best_correct": best_correct, "best_kept": best_kept,
            "mean_correct": mean_correct, "mean_kept": mean_kept, "evaluated": evaluated,
            "best_accuracy": best_correct / n_train, "mean_accuracy": mean_correct / n_train,
            "best_density": best_kept / length, "mean_density": mean_kept / length}


def _summarise(state_genomes: torch.Tensor, correct: torch.Tensor, generation: int, evaluated: int,
               n_train: int) -> dict[str, Any]:
    kept = state_genomes.sum(1)
    return _record(generation, int(correct[0]), int(kept[0]), float(correct.double().mean()),
                   float(kept.double().mean()), evaluated, n_train, state_genomes.shape[1])


def _connected_fresh(net: FrozenMLP, n: int, options: GAOptions, gen: torch.Generator) -> torch.Tensor:
    """``n`` fresh genomes that keep the net connected (redrawn until they do; up to 1000 rounds)."""
    out: list[torch.Tensor] = []
    have = 0
    for _ in range(1000):
        if have >= n:
            break
        cand = random_genomes(n, net.genome_length, options.init_density, gen)
        cand = cand[net.connected(cand)]
        out.append(cand)
        have += cand.shape[0]
    else:
        raise GeneticError(f"init_density {options.init_density} almost never gives a connected net "
                           f"{net.widths}; raise --init-density")
    return torch.cat(out)[:n]


def initial_state(net: FrozenMLP, train: ArrayData, options: GAOptions, generator: torch.Generator) -> GAState:
    """Generation 0: N Bernoulli(init_density) genomes, evaluated and ranked.

    adaptive_ab: candidates are connected genomes; rounds of N candidates are evaluated and those
    with training accuracy >= the bound are kept. The bound drops by 0.05 after every round that
    leaves the population short (deterministic), or, with ``bound_seconds`` > 0, only once that many
    seconds have passed since it last dropped (the authors' wall-clock rule: how many rounds each
    bound gets then depends on the machine's speed, so the run is not reproducible).
    """
    n = options.population
    if options.variant == "ga":
        genomes = random_genomes(n, net.genome_length, options.init_density, generator)
        correct, evaluated, bound = net.correct(genomes, train.x, train.y), n, None
    else:
        genomes, correct, evaluated, bound = _bounded_population(net, train, options, generator)
    genomes, correct = select_survivors(genomes, correct, n)
    history = [_summarise(genomes, correct, 0, evaluated, len(train))]
    return GAState(genomes, correct, generator.get_state(), history, len(train), bound)


def _bounded_population(net: FrozenMLP, train: ArrayData, options: GAOptions,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """adaptive_ab's first population: connected candidates above a falling accuracy bound."""
    n, bound = options.population, float(options.bound)
    kept_g, kept_c, evaluated, have = [], [], 0, 0
    dropped_at = _clock()
    while have < n:
        cand = _connected_fresh(net, n, options, generator)
        c = net.correct(cand, train.x, train.y)
        evaluated += n
        ok = c >= bound * len(train) - 1e-9
        kept_g.append(cand[ok])
        kept_c.append(c[ok])
        have += int(ok.sum())
        if have < n and (options.bound_seconds == 0 or _clock() - dropped_at >= options.bound_seconds):
            bound = max(0.0, round(bound - 0.05, 10))
            dropped_at = _clock()
    return torch.cat(kept_g)[:n], torch.cat(kept_c)[:n], evaluated, bound


def next_generation(state: GAState, net: FrozenMLP, train: ArrayData, options: GAOptions) -> GAState:
    """One generation: crossover, mutation, migration, one batched evaluation of the offspring,
    elitist truncation. Returns a new state (the given one is not changed)."""
    gen = torch.Generator().manual_seed(0)
    gen.set_state(state.rng)
    pop, correct = state.genomes, state.correct
    n, length = pop.shape[0], pop.shape[1]
    ab = options.variant == "adaptive_ab"
    # 1. recombination: mates from the best `mates` (the population is sorted best first)
    parents = torch.nonzero(torch.rand(n, generator=gen) < options.recombination_rate).flatten()
    mates = torch.randint(0, options.mates, (parents.numel(),), generator=gen)
    take = torch.rand(parents.numel(), length, generator=gen) < 0.5
    children = uniform_crossover(pop[parents], pop[mates], take)
    # 2. mutation of parents and children alike
    pool = torch.cat([pop, children])
    chosen = torch.nonzero(torch.rand(pool.shape[0], generator=gen) < options.mutation_rate).flatten()
    flips = torch.randint(0, length, (chosen.numel(),), generator=gen)
    mutants = flip_bits(pool[chosen], flips)
    if ab:  # offspring that would cut the net are dropped (the population stays connected)
        children = children[net.connected(children)] if children.shape[0] else children
        mutants = mutants[net.connected(mutants)] if mutants.shape[0] else mutants
    # 3. migration
    if ab:
        migrants = _connected_fresh(net, options.migrants, options, gen) if options.migrants else \
            torch.zeros(0, length, dtype=torch.bool)
    else:
        migrants = random_genomes(options.migrants, length, options.init_density, gen)
    offspring = torch.cat([children, mutants, migrants])
    # 4. one batched evaluation of every new genome, then elitist truncation
    off_correct = net.correct(offspring, train.x, train.y) if offspring.shape[0] else \
        torch.zeros(0, dtype=torch.int64)
    genomes, new_correct = select_survivors(torch.cat([pop, offspring]), torch.cat([correct, off_correct]), n)
    record = _summarise(genomes, new_correct, state.generation + 1, offspring.shape[0], state.n_train)
    return replace(state, genomes=genomes, correct=new_correct, rng=gen.get_state(),
                   history=[*state.history, record])


def stop_reason(state: GAState, options: GAOptions) -> str | None:
    """Why the run should stop after its last generation, or None to go on."""
    g = state.generation
    best = [r["best_correct"] for r in state.history]
    if options.variant == "ga" and best[-1] == state.n_train:
        return "perfect training accuracy"
    if g >= options.generation_cap:
        return f"generation cap {options.generation_cap}"
    window = best[-options.patience:]
    if g >= options.min_generations and len(window) == options.patience and len(set(window)) == 1:
        return f"best accuracy unchanged for {options.patience} generations"
    return None


def evolve(net: FrozenMLP, train: ArrayData, options: GAOptions, seed: int = 0, *, state: GAState | None = None,
           on_generation: Callable[[GAState], None] | None = None) -> GAState:
    """Run the GA to its stop (or continue ``state``); returns the final state, best genome first.

    ``on_generation(state)`` is called after generation 0 and after every generation (e.g. to save
    the state); a run continued from any such state ends exactly where the uninterrupted run ends.
    The net's device is where the population is evaluated; every random draw is on the CPU.
    """
    if state is None:
        gen = torch.Generator().manual_seed(int(seed))
        state = initial_state(net, train, options, gen)
        if on_generation is not None:
            on_generation(state)
    elif state.genomes.shape[1] != net.genome_length:
        raise GeneticError(f"the state's genomes have {state.genomes.shape[1]} bits, the net {net.genome_length}")
    while state.stopped is None:
        reason = stop_reason(state, options)
        if reason is not None:
            state = replace(state, stopped=reason)
            break
        state = next_generation(state, net, train, options)
        if on_generation is not None:
            on_generation(state)
    return state


__all__ = ["FrozenMLP", "GAOptions", "GAState", "GeneticError", "STRATEGIES", "VARIANTS", "evolve", "flip_bits",
           "initial_state", "next_generation", "random_genomes", "rank", "select_survivors", "stop_reason",
           "uniform_crossover"]
