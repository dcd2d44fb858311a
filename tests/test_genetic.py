"""The strong-ticket GA (``pruning/genetic.py``): operators on hand cases, the batched fitness
against a per-individual loop, ranking ties, seeding and resuming."""
from __future__ import annotations

import warnings

import pytest
import torch

from ticketlab.data import ArrayData
from ticketlab.pruning.genetic import (FrozenMLP, GAOptions, GAState, GeneticError, evolve, flip_bits, initial_state,
                                       next_generation, random_genomes, rank, select_survivors, stop_reason,
                                       uniform_crossover)

torch.set_num_threads(1)


def _moons(n: int = 400, seed: int = 0) -> ArrayData:
    from ticketlab.data import load_dataset

    return load_dataset("moons", n_train=n, n_test=10, seed=seed).train


def _small(**kw) -> GAOptions:
    base = dict(population=16, min_generations=4, patience=3, max_generations=12)
    return GAOptions(**{**base, **kw})


def B(*rows: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r] for r in rows])


# --- operators ---------------------------------------------------------------------------------------

def test_uniform_crossover_takes_each_bit_from_the_parent_the_draw_names():
    a, b = B("11110000"), B("10101010")
    take_b = B("00001111")
    assert torch.equal(uniform_crossover(a, b, take_b), B("11111010"))
    assert torch.equal(uniform_crossover(a, b, ~take_b), B("10100000"))


def test_flip_bits_flips_exactly_one_bit_per_genome_and_leaves_the_input_alone():
    g = B("0000", "1111", "1010")
    out = flip_bits(g, torch.tensor([0, 3, 1]))
    assert torch.equal(out, B("1000", "1110", "1110"))
    assert torch.equal(g, B("0000", "1111", "1010"))


def test_rank_orders_by_accuracy_then_sparser_genome_then_index():
    correct = torch.tensor([5, 7, 7, 3, 7])
    kept = torch.tensor([1, 4, 2, 0, 2])
    # 7 correct: kept 2 (index 2, then 4), kept 4 (index 1); then 5; then 3
    assert rank(correct, kept).tolist() == [2, 4, 1, 0, 3]


def test_ties_in_accuracy_go_to_the_sparser_genome_at_selection():
    genomes = B("1111", "1000", "1100")
    correct = torch.tensor([9, 9, 9])
    survivors, c = select_survivors(genomes, correct, 2)
    assert torch.equal(survivors, B("1000", "1100"))
    assert c.tolist() == [9, 9]


def test_survivor_selection_is_elitist_truncation_over_parents_and_offspring():
    genomes = B("0001", "0011", "0111", "1111", "0000")
    correct = torch.tensor([1, 8, 3, 8, 2])
    survivors, c = select_survivors(genomes, correct, 3)
    assert torch.equal(survivors, B("0011", "1111", "0111"))
    assert c.tolist() == [8, 8, 3]


def test_random_genomes_are_seeded_and_near_their_density():
    a = random_genomes(50, 400, 0.3, torch.Generator().manual_seed(4))
    b = random_genomes(50, 400, 0.3, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and a.dtype == torch.bool
    assert abs(a.float().mean().item() - 0.3) < 0.02


def test_migration_adds_fresh_genomes_and_the_population_keeps_its_size():
    net = FrozenMLP([2, 6, 2], torch.Generator().manual_seed(0))
    train = _moons(200)
    opts = _small(population=20, recombination_rate=0.0, mutation_rate=0.0, migration_rate=0.25)
    s0 = initial_state(net, train, opts, torch.Generator().manual_seed(1))
    s1 = next_generation(s0, net, train, opts)
    assert s1.history[-1]["evaluated"] == 5  # only the 0.25 * 20 migrants are new
    assert s1.genomes.shape == s0.genomes.shape
    assert s1.correct[0] >= s0.correct[0]  # elitist: the best never gets worse
    assert torch.equal(s1.correct, s1.correct.sort(descending=True).values)


def test_a_generation_makes_children_from_the_top_mates_and_mutants_of_parents_and_children():
    net = FrozenMLP([2, 6, 2], torch.Generator().manual_seed(0))
    train = _moons(200)
    opts = _small(population=20, recombination_rate=1.0, mutation_rate=1.0, migration_rate=0.0)
    s0 = initial_state(net, train, opts, torch.Generator().manual_seed(1))
    s1 = next_generation(s0, net, train, opts)
    assert s1.history[-1]["evaluated"] == 20 + 40  # 20 children, then a mutant of each of the 40


# --- the frozen net and batched fitness ------------------------------------------------------------

def test_frozen_net_is_uniform_in_minus_one_one_and_seeded():
    a = FrozenMLP([2, 50, 2], torch.Generator().manual_seed(3))
    b = FrozenMLP([2, 50, 2], torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a.weights + a.biases, b.weights + b.biases))
    w = torch.cat([t.flatten() for t in a.weights + a.biases])
    assert w.min() >= -1 and w.max() <= 1 and w.min() < -0.9 and w.max() > 0.9
    assert a.genome_length == 2 * 50 + 50 * 2


def _loop_counts(net: FrozenMLP, genomes: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 device: str = "cpu") -> list[int]:
    """What a per-individual GA does: mask an nn.Module's weights, run the points, count."""
    module = net.to_module().to(device)
    x, y = x.to(device), y.to(device)
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    loop = []
    with torch.no_grad():
        for genome in genomes:
            for lin, w, m in zip(linears, net.weights, net.layer_masks(genome)):
                lin.weight.copy_(w * m[0])
            loop.append(int((module(x).argmax(-1) == y).sum()))
    return loop


def _problem(widths: list[int], k: int = 13, n: int = 300, seed: int = 1):
    net = FrozenMLP(widths, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, widths[0], generator=g) * 2 - 1
    y = torch.randint(0, widths[-1], (n,), generator=g)
    return net, random_genomes(k, net.genome_length, 0.5, g), x, y


@pytest.mark.parametrize("strategy", ["auto", "loop", "stacked", "chunked"])
@pytest.mark.parametrize("widths", [[2, 20, 2], [2, 7, 5, 3], [64, 10, 10], [3, 4]])
def test_batched_fitness_equals_a_per_individual_loop_exactly(widths, strategy):
    net, genomes, x, y = _problem(widths)
    loop = _loop_counts(net, genomes, x, y)
    assert net.correct(genomes, x, y, strategy=strategy).tolist() == loop
    # many chunks of points (the last one padded) and, for "stacked"/"chunked", of genomes
    for budget in (97, 1000, 5000):
        assert net.correct(genomes, x, y, strategy=strategy, budget=budget).tolist() == loop


def test_fused_strategy_says_what_it_needs_and_auto_picks_it_only_where_it_fits(monkeypatch):
    from ticketlab.pruning import genetic_fused
    from ticketlab.pruning.genetic import _resolve

    net, genomes, x, y = _problem([2, 20, 2])
    if not genetic_fused.available("cuda"):
        with pytest.raises(GeneticError, match="needs a CUDA device and the triton package"):
            net.correct(genomes, x, y, strategy="fused")
    assert genetic_fused.supports([2, 20, 2]) and genetic_fused.supports([64, 100, 100, 100, 10])
    assert not genetic_fused.supports([3, 4])                  # no hidden layer
    assert not genetic_fused.supports([2, 10, 10, 10, 10, 2])  # 4 hidden layers
    assert not genetic_fused.supports([2, 200, 2])             # padded to 256 > 128
    cuda = torch.device("cuda")
    monkeypatch.setattr(genetic_fused, "available", lambda device: torch.device(device).type == "cuda")
    assert _resolve("auto", cuda, net) == "fused"
    assert _resolve("auto", torch.device("cpu"), net) == "loop" == net.evaluation_strategy()
    assert net.evaluation_strategy("stacked") == "stacked"
    assert _resolve("auto", cuda, FrozenMLP([2, 200, 2])) == "chunked"
    assert _resolve("auto", cuda, FrozenMLP([2, 20, 2], dtype=torch.float64)) == "chunked"
    with pytest.raises(GeneticError, match="1 to 3 hidden layers"):
        _resolve("fused", cuda, FrozenMLP([2, 200, 2]))
    monkeypatch.setattr(genetic_fused, "available", lambda device: False)
    assert _resolve("auto", cuda, net) == "chunked"


def test_auto_falls_back_to_chunked_with_a_warning_when_the_fused_kernel_fails(monkeypatch):
    import ticketlab.pruning.genetic as genetic

    net, genomes, x, y = _problem([2, 7, 5, 3])
    loop = _loop_counts(net, genomes, x, y)
    real_resolve = genetic._resolve
    def resolve(strategy, device, n):  # as on a GPU with Triton
        if strategy == "fused" or (strategy == "auto" and not n.__dict__.get("_fused_failed")):
            return "fused"
        return real_resolve(strategy, device, n)

    monkeypatch.setattr(genetic, "_resolve", resolve)

    def broken(self, *args):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(FrozenMLP, "_correct_fused", broken)
    with pytest.warns(UserWarning, match="fused GA kernel failed.*no kernel for this GPU.*'chunked'"):
        assert net.correct(genomes, x, y).tolist() == loop
    assert net._fused_failed and len(net._plans) == 1  # chunked ran, with its own budget
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second try, no second warning
        assert net.correct(genomes, x, y).tolist() == loop
    with pytest.raises(RuntimeError, match="no kernel"):  # asked for by name: the error stands
        net.correct(genomes, x, y, strategy="fused")


_needs_fused = pytest.mark.skipif(not torch.cuda.is_available() or not __import__(
    "ticketlab.pruning.genetic_fused", fromlist=["x"]).available("cuda"), reason="needs CUDA and triton")


@_needs_fused
@pytest.mark.parametrize("widths", [[2, 20, 2], [2, 50, 50, 2], [64, 30, 10], [5, 40, 30, 20, 3], [12, 100, 4]])
@pytest.mark.parametrize("k", [1, 13, 100])
def test_fused_kernel_equals_a_per_individual_loop_on_the_gpu_exactly(widths, k):
    net, genomes, x, y = _problem(widths, k=k, n=5000)
    gpu = net.to("cuda")
    loop = _loop_counts(net, genomes, x, y, device="cuda")
    assert gpu.correct(genomes, x, y, strategy="fused").tolist() == loop
    assert gpu.correct(genomes, x, y).tolist() == loop  # auto is fused here
    assert gpu.correct(genomes[:k // 2 + 1], x[:77], y[:77], strategy="fused").tolist() == \
        _loop_counts(net, genomes[:k // 2 + 1], x[:77], y[:77], device="cuda")


def test_chunked_plans_are_reused_across_calls_without_leaking_state():
    net, genomes, x, y = _problem([2, 7, 5, 3], k=14)
    # 14 and 13 genomes share one padded plan (16); other points of the same count reuse it too
    first = net.correct(genomes, x, y, strategy="chunked", budget=20_000)
    assert first.tolist() == _loop_counts(net, genomes, x, y)
    fewer = net.correct(genomes[5:], x, y, strategy="chunked", budget=20_000)
    assert fewer.tolist() == first[5:].tolist()
    _, _, x2, y2 = _problem([2, 7, 5, 3], k=14, seed=7)
    again = net.correct(genomes[:13], x2, y2, strategy="chunked", budget=20_000)
    assert again.tolist() == _loop_counts(net, genomes[:13], x2, y2)
    assert len(net._plans) == 2  # (16 genomes, 300 points) and (12 genomes, 300 points)
    assert net.to("cpu")._plans == {}


def test_chunks_in_two_branches_give_the_same_counts(monkeypatch):
    import ticketlab.pruning.genetic as genetic

    monkeypatch.setattr(genetic, "CHUNK_STREAMS", 2)  # round-robin over two sets of buffers
    net, genomes, x, y = _problem([2, 7, 5, 3])
    assert net.correct(genomes, x, y, strategy="chunked", budget=5000).tolist() == _loop_counts(net, genomes, x, y)
    assert len(next(iter(net._plans.values())).hidden) == 2


def test_chunk_sizes_fill_the_budget_in_multiples_of_32_points():
    net = FrozenMLP([2, 50, 50, 2])
    # hidden widths 50 -> 52 with the constant column; 100 genomes -> 5200 numbers per point
    assert net.chunk_points(100, budget=52 * 100 * 700, strategy="chunked") == 672
    assert net.chunk_points(99, budget=52 * 100 * 700, strategy="chunked") == 672  # padded to 100
    assert net.chunk_points(100, budget=5200 * 20, strategy="chunked") == 20
    assert net.chunk_points(1, budget=1 << 17, strategy="loop") == (1 << 17) // 50
    assert net.default_budget("auto", "cpu") == net.default_budget("loop", "cpu")


def test_evaluation_runs_in_full_fp32_and_restores_the_tf32_flag():
    from ticketlab.pruning.genetic import _full_fp32

    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with _full_fp32():
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_mask_names_fit_the_module_and_bake_the_same_net():
    net = FrozenMLP([2, 5, 3, 2], torch.Generator().manual_seed(0))
    genome = random_genomes(1, net.genome_length, 0.5, torch.Generator().manual_seed(2))[0]
    module = net.to_module()
    mask = net.mask(genome)
    assert sorted(mask.keys()) == sorted(net.names)
    mask.apply_(module)
    x = torch.rand(40, 2)
    assert torch.allclose(module(x), net.logits(genome, x)[0], atol=1e-6)


def test_connectivity_needs_a_path_from_an_input_to_every_output():
    net = FrozenMLP([2, 2, 2], torch.Generator().manual_seed(0))
    # layer 1 (2x2, rows = hidden units): only hidden 0 gets input; layer 2: both outputs from hidden 0
    ok = torch.cat([B("1000")[0], B("1010")[0]])
    cut = torch.cat([B("1000")[0], B("0101")[0]])  # outputs only from hidden 1, which gets nothing
    half = torch.cat([B("1000")[0], B("1000")[0]])  # output 1 unreachable
    assert net.connected(torch.stack([ok, cut, half])).tolist() == [True, False, False]


def test_wrong_genome_shapes_and_bad_options_are_refused_clearly():
    net = FrozenMLP([2, 3, 2])
    with pytest.raises(GeneticError, match="K x 12"):
        net.correct(torch.zeros(2, 5, dtype=torch.bool), torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(GeneticError, match="population"):
        GAOptions(population=1)
    with pytest.raises(GeneticError, match="mutation_rate"):
        GAOptions(mutation_rate=1.5)
    with pytest.raises(GeneticError, match="variant"):
        GAOptions(variant="nsga")
    with pytest.raises(GeneticError, match="widths"):
        FrozenMLP([2])
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(GeneticError, match="strategy"):
        net.correct(torch.zeros(2, 12, dtype=torch.bool), x, y, strategy="gpu")
    with pytest.raises(GeneticError, match="budget"):
        net.correct(torch.zeros(2, 12, dtype=torch.bool), x, y, budget=0)
    with pytest.raises(GeneticError, match="bound_seconds"):
        GAOptions(bound_seconds=-1)
    assert net.correct(torch.zeros(0, 12, dtype=torch.bool), x, y).tolist() == []
    assert net.correct(torch.zeros(2, 12, dtype=torch.bool), x[:0], y[:0]).tolist() == [0, 0]


# --- runs: stopping, seeding, resuming --------------------------------------------------------------

def _state(best: list[int], n_train: int = 100) -> GAState:
    from ticketlab.pruning.genetic import _record

    hist = [_record(i, b, 1, b, 1, 1, n_train, 4) for i, b in enumerate(best)]
    return GAState(torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, dtype=torch.int64), torch.zeros(1), hist, n_train)


def test_stop_rule_minimum_generations_patience_cap_and_perfect_accuracy():
    opts = GAOptions(min_generations=5, patience=3, max_generations=9)
    assert stop_reason(_state([1, 2, 3, 3, 3]), opts) is None          # generation 4 < 5
    assert "unchanged" in stop_reason(_state([1, 2, 3, 3, 3, 3]), opts)  # generation 5, last 3 equal
    assert stop_reason(_state([1, 2, 3, 4, 5, 6, 6]), opts) is None
    assert "cap" in stop_reason(_state(list(range(10))), opts)
    assert "perfect" in stop_reason(_state([1, 100]), opts)
    assert stop_reason(_state([1, 100]), GAOptions(variant="adaptive_ab", min_generations=5)) is None
    assert GAOptions().generation_cap == 300 and GAOptions(variant="adaptive_ab").generation_cap == 200


def test_same_seed_same_result_and_another_seed_another():
    net = FrozenMLP([2, 10, 2], torch.Generator().manual_seed(0))
    train = _moons()
    a = evolve(net, train, _small(), seed=5)
    b = evolve(net, train, _small(), seed=5)
    c = evolve(net, train, _small(), seed=6)
    assert torch.equal(a.genomes, b.genomes) and a.history == b.history and a.stopped == b.stopped
    assert not torch.equal(a.genomes, c.genomes)
    best = [r["best_correct"] for r in a.history]
    assert best == sorted(best)  # elitism: the best accuracy never drops


@pytest.mark.parametrize("variant", ["ga", "adaptive_ab"])
def test_resuming_from_any_saved_generation_gives_the_uninterrupted_result(variant):
    net = FrozenMLP([2, 10, 2], torch.Generator().manual_seed(0))
    train = _moons()
    opts = _small(variant=variant)
    saved: list[dict[str, torch.Tensor]] = []
    full = evolve(net, train, opts, seed=2, on_generation=lambda s: saved.append(
        {k: v.clone() for k, v in s.to_tensors().items()}))
    assert len(saved) == full.generation + 1
    for tensors in (saved[0], saved[len(saved) // 2], saved[-1]):
        state = GAState.from_tensors(tensors, net.genome_length)
        resumed = evolve(net, train, opts, seed=999, state=state)  # the seed is ignored when resuming
        assert torch.equal(resumed.genomes, full.genomes)
        assert torch.equal(resumed.correct, full.correct)
        assert resumed.history == full.history and resumed.stopped == full.stopped
    with pytest.raises(GeneticError, match="another net"):
        GAState.from_tensors(saved[0], net.genome_length + 1)


def test_adaptive_ab_keeps_every_genome_connected_and_records_its_bound():
    net = FrozenMLP([2, 4, 2], torch.Generator().manual_seed(1))
    train = _moons()
    state = evolve(net, train, _small(variant="adaptive_ab", init_density=0.3, bound=0.95), seed=0)
    assert bool(net.connected(state.genomes).all())
    assert state.bound is not None and state.bound < 0.95  # lowered until the population filled
    first = state.history[0]
    assert first["best_accuracy"] >= state.bound - 1e-9


def test_adaptive_ab_wall_clock_bound_drops_only_after_its_seconds(monkeypatch):
    import ticketlab.pruning.genetic as genetic

    net = FrozenMLP([2, 4, 2], torch.Generator().manual_seed(1))
    train = _moons()
    opts = _small(variant="adaptive_ab", init_density=0.3, bound=0.95)
    rounds = initial_state(net, train, opts, torch.Generator().manual_seed(0))
    tiny = initial_state(net, train, _small(variant="adaptive_ab", init_density=0.3, bound=0.95, bound_seconds=1e-9),
                         torch.Generator().manual_seed(0))
    assert torch.equal(tiny.genomes, rounds.genomes) and tiny.bound == rounds.bound  # a drop after every round
    ticks = iter(range(10_000))
    monkeypatch.setattr(genetic, "_clock", lambda: float(next(ticks)))  # one second per look at the clock
    slow = initial_state(net, train, _small(variant="adaptive_ab", init_density=0.3, bound=0.95, bound_seconds=2.5),
                         torch.Generator().manual_seed(0))
    n_rounds = slow.history[0]["evaluated"] // opts.population
    drops = round((0.95 - slow.bound) / 0.05)
    assert drops >= 1 and drops == (n_rounds - 1) // 3  # every third short round: 3 s >= 2.5 s since the last
    assert slow.bound >= rounds.bound - 1e-9  # more rounds per bound: filled at the same bound or a higher one
    assert slow.history[0]["best_accuracy"] >= slow.bound - 1e-9
