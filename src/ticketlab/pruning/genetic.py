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
and they are evaluated together: K masks over the same frozen weights are one stack of masked
weight matrices, so the whole population's forward pass is one batched ``matmul`` per layer
(:meth:`FrozenMLP.correct`), not a Python loop over individuals.

The run stops after at least ``min_generations`` generations once the best training accuracy has
not changed for ``patience`` generations, at ``max_generations``, or (variant ``"ga"``, as the
authors' stop rule t10) when the best genome classifies every training point. Variant
``"adaptive_ab"`` ("GA (adaptive AB)") keeps every genome connected (every output unit reachable
from an input through kept weights), fills its first population only with genomes above an
accuracy bound that is lowered step by step until the population is full, and caps at 200
generations.

Everything random comes from one ``torch.Generator`` on the CPU, and :class:`GAState` holds the
whole state between generations (population, fitness, history, generator state), so a run
continued from a saved state gives exactly the uninterrupted result.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
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
CUDA_BUDGET = 1 << 26  # H200: 7.5 ms at 2^24, 5.7 ms at 2^26, 5.5 ms at 2^28 for 100 x 50,000 points


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
                budget: int | None = None) -> torch.Tensor:
        """Correctly classified points per genome (K int64, on the CPU), in one batched pass.

        Genomes and points go in chunks so that no activation tensor holds more than about
        ``budget`` numbers (default ``CUDA_BUDGET`` / ``CPU_BUDGET``). A point's logits do not
        depend on the rest of its chunk, so chunking does not change the counts (the tests check
        chunked against unchunked and against a per-individual loop, exactly).
        """
        genomes = self._check(genomes)
        device = self.weights[0].device
        if budget is None:
            budget = CUDA_BUDGET if device.type == "cuda" else CPU_BUDGET
        genomes, x, y = genomes.to(device), x.to(device), y.to(device)
        k_all, n_all = genomes.shape[0], x.shape[0]
        width = max(self.widths[1:])
        k_chunk = max(1, min(k_all, budget // max(1, width)))
        total = torch.zeros(k_all, dtype=torch.int64, device=device)
        for k0 in range(0, k_all, k_chunk):
            g = genomes[k0:k0 + k_chunk]
            n_chunk = max(1, budget // (g.shape[0] * width))
            for n0 in range(0, n_all, n_chunk):
                pred = self.logits(g, x[n0:n0 + n_chunk]).argmax(-1)
                total[k0:k0 + k_chunk] += (pred == y[n0:n0 + n_chunk]).sum(-1)
        return total.cpu()

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
    with training accuracy >= the bound are kept, the bound dropping by 0.05 after every round that
    leaves the population short (deterministic, where the authors lower it after a time limit).
    """
    n, length = options.population, net.genome_length
    n_train = len(train)
    bound: float | None = None
    if options.variant == "ga":
        genomes = random_genomes(n, length, options.init_density, generator)
        correct = net.correct(genomes, train.x, train.y)
        evaluated = n
    else:
        bound = float(options.bound)
        kept_g, kept_c, evaluated = [], [], 0
        while sum(g.shape[0] for g in kept_g) < n:
            cand = _connected_fresh(net, n, options, generator)
            c = net.correct(cand, train.x, train.y)
            evaluated += n
            ok = c >= bound * n_train - 1e-9
            kept_g.append(cand[ok])
            kept_c.append(c[ok])
            if sum(g.shape[0] for g in kept_g) < n:
                bound = max(0.0, round(bound - 0.05, 10))
        genomes, correct = torch.cat(kept_g)[:n], torch.cat(kept_c)[:n]
    genomes, correct = select_survivors(genomes, correct, n)
    history = [_summarise(genomes, correct, 0, evaluated, n_train)]
    return GAState(genomes, correct, generator.get_state(), history, n_train, bound)


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


__all__ = ["FrozenMLP", "GAOptions", "GAState", "GeneticError", "VARIANTS", "evolve", "flip_bits", "initial_state",
           "next_generation", "random_genomes", "rank", "select_survivors", "stop_reason", "uniform_crossover"]
