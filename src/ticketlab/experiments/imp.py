"""Iterative magnitude pruning (Frankle & Carbin 2019; Frankle et al. 2020; Renda et al. 2020).

Level 0 trains the dense network. Level L >= 1 prunes ``rate`` of the weights the level-(L-1)
ticket still keeps, by final |w| (or by another mask criterion of Zhou et al. 2019 over (theta_0,
final weights): ``config.prune.criterion``, ``pruning/criteria.py``), then resets the kept weights by
a registered reset action (``resets.py``) and trains again:

- ``init``      weights <- theta_0 (the original lottery ticket), train steps 0..T;
- ``rewind``    weights <- theta_k (weights after k iterations of dense training), train k..T;
- ``lr_rewind`` keep the final weights, replay the LR schedule from step k, train k..T;
- ``finetune``  keep the final weights, train k..T at the schedule's final (small) LR.
- ``random_reinit``, ``random_reshuffle``, ``signed_reinit``, ``signed_reshuffle``, ``signed_constant``,
  ``rand_signed_constant``: the "mask-1" actions of Zhou et al. 2019, built from theta_0 (optionally
  rescaled by layer size / kept, ``reset_rescale``) with a generator seeded by (seed, level); 0..T.

Baselines at each level L >= 1: ``reinit`` trains the same mask from a fresh random init;
``random`` trains a random mask with the ticket's layer-wise densities from the ticket's reset
weights. In ``init``/``rewind`` mode baselines train the ticket's segment (k..T); in
``lr_rewind``/``finetune`` mode they have no trained weights to keep, so they train 0..T.

Each (level, branch) is one unit in the Store; a rerun skips complete units and resumes an
interrupted one from its last checkpoint.

Every unit's summary records the connectivity of the mask it trains (``effective_density``: kept
weights on some input->output path / all masked weights; ``collapsed_layers``: layers with no such
weight), and every level logs it for the ticket and the random-mask baseline. ``config.prune``'s
``include`` / ``exclude`` choose the weights besides the Linear/Conv ones (raw parameters,
embeddings) that the masks cover.

Structured tickets (Chen et al. 2022, ``config.prune.structure``, ``pruning/structure.py``): with
``refill`` / ``refill+`` / ``regroup`` each level's IMP mask is post-processed into whole channels or
dense blocks (Conv and Linear weights, or Conv only with ``structure_layers="conv"``; never the
output layer) before it is stored, so the level resets and retrains the structured mask and the next
level prunes from it. Every unit's summary also records the structure metrics of its mask
(``empty_channel_fraction``, ``block_nonzero_fraction``, ``shrunk_params``, ``shrunk_flops`` and
their dense counterparts; :func:`ticketlab.pruning.structure.structure_metrics`).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..checkpoint import save_weights
from ..config import IMPConfig
from ..data import ArrayData, DataSplits
from ..masks import Mask
from ..prunable import PrunableError, UnprunedWeightsWarning, output_parameter_name
from ..pruning.criteria import imp_prune_by
from ..pruning.selection import random_mask_like
from ..pruning.structure import structurable_weights, structure_mask, structure_metrics
from ..steps import to_iterations
from ..store import Run, Store, StoreError, config_hash, index_fields
from ..training import Callback, DivergenceError, resolve_device, lr_factor
from .resets import RESETS, Reset, ResetInputs
from . import mask0
from .common import (running, Log, UnitContext, build_seeded_model, connectivity, connectivity_line,
                     example_input, load_or_save_init, prepare_data, seed_splits, train_unit, training_length)
from .stacked import STACKED, StackedUnit, check_stack_configs, stack_size, train_units_stacked


@dataclass
class Setup:
    """What every unit of one IMP run shares."""

    config: IMPConfig
    ctx: UnitContext
    total_steps: int
    rewind_step: int
    train_rows: torch.Tensor | None = None  # stacked runs: the seed's training rows of the shared data set

    @property
    def run(self):
        return self.ctx.run


def derived_seed(seed: int, purpose: str, level: int) -> int:
    """Independent, reproducible seeds for each baseline and level."""
    salt = {"reinit": 1, "random": 2, "reset": 3, "criterion": 4}[purpose]
    return (seed * 1_000_003 + salt * 10_007 + level) % (2**31 - 1)


def unit_name(level: int, branch: str) -> str:
    return f"level_{level:02d}/{branch}"


def _rewind_callback(s: Setup) -> Callback:
    return Callback(lambda t, step: save_weights(t.model, s.run.file("rewind.safetensors")), at=(s.rewind_step,))


def level_mask(s: Setup, level: int, previous: Mask, previous_weights: dict[str, torch.Tensor],
               output_name: str | None, init_state: dict[str, torch.Tensor],
               model: torch.nn.Module | None = None) -> Mask:
    """The level's mask: ``config.prune.criterion`` (``pruning/criteria.py``) scores each weight the
    previous level still keeps from (theta_0 = ``init_state``, the previous level's final weights), and
    ``keep_top`` keeps IMP's exact count per group. The default ``large_final`` is the |w| ranking of
    ``imp_prune``, bit for bit. ``random`` draws from a generator seeded by (seed, level).

    With ``config.prune.structure`` other than ``none`` the pruned mask is then structured (refill,
    refill+ or regroup of ``pruning/structure.py``; refill ranks channels with the previous level's
    final weights) on the Conv/Linear weights of ``model`` except its output layer; the structured
    mask is the one stored."""
    path = s.run.file(f"level_{level:02d}", "mask.safetensors")
    if path.exists():
        return Mask.load(path, require_checksum=True)
    p = s.config.prune
    mask = imp_prune_by(p.criterion, init_state, previous_weights, previous, level=level, rate=p.rate, scope=p.scope,
                        output_name=output_name, output_rate=p.output_rate,
                        generator=torch.Generator().manual_seed(derived_seed(s.config.seed, "criterion", level)))
    if p.structure != "none":
        if model is None:
            raise ValueError("level_mask needs the model to structure the mask (config.prune.structure)")
        names = _structured_layers(s, model, mask)
        pruned = mask
        mask = structure_mask(mask, p.structure, names, weights=previous_weights, ratio=p.structure_ratio,
                              importance=p.structure_importance, parts=p.structure_parts, min_rows=p.structure_min_rows)
        s.ctx.log(f"level {level}: {p.structure} on {len(names)} layers, density {pruned.density:.4f} -> "
                  f"{mask.density:.4f}")
    mask.save(path)
    return mask


def _check(config: IMPConfig, data: DataSplits) -> tuple[int, int]:
    """(total iterations, rewind iteration); everything that can be wrong with the request is checked
    before the store is touched."""
    model = build_seeded_model(config.model, data, config.seed)
    dense = Mask.dense(model, **config.prune.prunable_options)  # names weights left dense, checks include/exclude
    if config.prune.output_rate is not None and output_parameter_name(model) not in dense:
        raise PrunableError(f"output_rate is set but the output layer's weight {output_parameter_name(model)!r} is "
                            f"not pruned (exclude={list(config.prune.exclude)}); drop output_rate or the exclusion")
    _, total = training_length(config.train, data)
    k = to_iterations(config.rewind_step, len(data.train) // config.train.batch_size)
    if k >= total:
        raise ValueError(f"rewind step {config.rewind_step} ({k} it) must be before the end of training ({total} it)")
    return total, k


def _describe(config: IMPConfig, run: Run) -> str:
    return (f"IMP run {run.hash} in {run.path} ({config.data.name}, {config.model.name}, reset={config.reset}"
            + (f", seed {config.seed}, stacked)" if config.train.numerics == STACKED else ")"))


def _mark_complete(run: Run, rows: list[dict[str, Any]]) -> None:
    run.mark_complete({"levels": rows})
    run.update_index(status="complete", summary=index_fields({"status": "complete", "levels": rows}))


def run_imp(
    config: IMPConfig,
    store: Store,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Log = print,
) -> list[dict[str, Any]]:
    """Run (or continue) IMP and return one row per (level, branch)."""
    if config.train.numerics == STACKED:  # a run of a stack (``--seeds``), continued alone: a stack of one
        return run_imp_seeds([config], store, device=device, progress=progress, log=log)[0]
    data, validation = prepare_data(config.data, config.seed)
    total, k = _check(config, data)
    dev = resolve_device(device)
    with running(store, config, log) as run:
        if (done := run.complete_summary()) is not None:
            log(f"IMP run {run.hash} is complete; nothing recomputed")
            return done["levels"]
        ctx = UnitContext(run, data, validation, config.train, config.seed, dev, progress, log,
                          prunable=config.prune.prunable_options)
        s = Setup(config, ctx, total, k)
        log(_describe(config, run))
        rows = _levels(s)
        _mark_complete(run, rows)
    return rows


@dataclass
class UnitRequest:
    """One training unit an IMP level asks for (``train_unit``'s arguments); the answer is its summary."""

    unit: str
    model: torch.nn.Module
    mask: Mask
    start_step: int = 0
    lr_override: float | None = None
    extra_summary: dict[str, Any] | None = None
    pruned_values: dict[str, torch.Tensor] | None = None
    callbacks: list[Callback] = field(default_factory=list)
    save_rewind: bool = False  # save the weights after rewind_step iterations (the rewind point)


def _train(s: Setup, req: UnitRequest) -> dict[str, Any]:
    """A request trained (or loaded, when complete) by the solo Trainer."""
    callbacks = [*req.callbacks, *([_rewind_callback(s)] if req.save_rewind else [])]
    return train_unit(s.ctx, req.unit, req.model, req.mask, start_step=req.start_step, lr_override=req.lr_override,
                      extra_summary=req.extra_summary, pruned_values=req.pruned_values, callbacks=callbacks)


def _levels(s: Setup) -> list[dict[str, Any]]:
    """Every level of one run, its units trained one after another."""
    steps = _level_steps(s)
    requests = next(steps)
    while True:
        try:
            requests = steps.send([_train(s, r) for r in requests])
        except StopIteration as stop:
            return stop.value


def _level_steps(s: Setup) -> Generator[list[UnitRequest], list[dict[str, Any]], list[dict[str, Any]]]:
    """IMP's algorithm box, one run: yields the training units each level needs (the ticket, then its
    baselines, which do not depend on it) and is sent back their summaries (``_levels`` trains them
    one by one, ``run_imp_seeds`` many runs' units as stacks); returns one row per (level, branch)."""
    config, run = s.config, s.run
    model = build_seeded_model(config.model, s.ctx.data, config.seed)
    load_or_save_init(run, model)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():  # run_imp warned about weights left dense when it checked the options
        warnings.simplefilter("ignore", UnprunedWeightsWarning)
        mask = Mask.dense(model, **config.prune.prunable_options)
    # only output_rate prunes the output layer apart (a model of raw parameters may have no Linear output)
    output_name = output_parameter_name(model) if config.prune.output_rate is not None else None
    reset = RESETS[config.reset]
    needs_rewind = reset.needs_rewind_point
    rows: list[dict[str, Any]] = []

    conn = _connectivity(s, model, mask, 0, "dense network")
    [summary] = yield [UnitRequest(unit_name(0, "ticket"), model, mask, extra_summary=conn, save_rewind=needs_rewind)]
    if needs_rewind and not run.file("rewind.safetensors").exists():
        raise StoreError(f"rewind point at step {s.rewind_step} ({run.file('rewind.safetensors')}) is missing; "
                         f"delete {run.file('level_00')} to train the dense network again and recreate it")
    rows.append({"level": 0, "branch": "ticket", **summary})
    stored_rows = run.read_jsonl("levels.jsonl") if run.file("levels.jsonl").exists() else []
    stored_rows = _write_levels(s, rows, stored_rows)

    for level in range(1, config.levels + 1):
        final_weights = {k: v.clone() for k, v in model.state_dict().items()}
        mask = level_mask(s, level, mask, final_weights, output_name, init_state, model)
        s.ctx.log(f"level {level}: pruned to density {mask.density:.4f}\n{mask.table()}")
        conn = _connectivity(s, model, mask, level, "ticket")
        reset_state = reset.start_weights(ResetInputs(
            init=init_state, final=final_weights, rewind=lambda: run.load_tensors("rewind.safetensors"), mask=mask,
            generator=torch.Generator().manual_seed(derived_seed(config.seed, "reset", level)),
            rescale=config.reset_rescale))
        start, lr_override = _segment(s, reset)
        held = mask0.pruned_values(config.mask0, init_state, final_weights, mask)
        model.load_state_dict(mask0.start_weights(config.mask0, reset_state, init_state, final_weights, mask))
        dead = _emptied_channel_biases(s, model, mask)
        requests = [UnitRequest(unit_name(level, "ticket"), model, mask, start, lr_override,
                                {**conn, **_dead_summary(dead)}, held, _hold_zero(model, dead))]

        baseline_start = start if reset.baselines_share_segment else 0
        baseline_lr = lr_override if reset.baselines_share_segment else None
        for branch in config.baselines:
            b_dead: dict[str, torch.Tensor] = {}
            if branch == "reinit":
                b_model = build_seeded_model(config.model, s.ctx.data, derived_seed(config.seed, "reinit", level))
                b_mask, b_conn = mask, conn  # the ticket's mask
                b_dead = dead
            else:
                b_model = build_seeded_model(config.model, s.ctx.data, config.seed)
                b_model.load_state_dict(reset_state if reset.baselines_share_segment else init_state)
                b_mask = _random_mask(s, level, mask)
                b_conn = _connectivity(s, b_model, b_mask, level, "random-mask baseline")
            requests.append(UnitRequest(unit_name(level, branch), b_model, b_mask, baseline_start, baseline_lr,
                                        {**b_conn, **_dead_summary(b_dead)}, callbacks=_hold_zero(b_model, b_dead)))
        summaries = yield requests  # the ticket and its baselines are independent: trained as one batch
        for branch, summary in zip(("ticket", *config.baselines), summaries):
            rows.append({"level": level, "branch": branch, **summary})
        if len(rows) > len(stored_rows):
            stored_rows = _write_levels(s, rows, stored_rows)
            run.update_index(summary=index_fields({"levels": rows}))
    return rows


def run_imp_seeds(
    configs: Sequence[IMPConfig],
    store: Store,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Log = print,
    stack_limit: int | None = None,
) -> list[list[dict[str, Any]]]:
    """Run (or continue) IMP runs that share their data set, model and training settings (``--seeds``
    runs; a sweep's seeds, rates and resets with ``--stack``), every level's units of all runs
    trained as one stacked model (``experiments.stacked``; configs say ``train.numerics = "stacked"``).
    Each run follows its own algorithm box (``_level_steps``); units that share a training segment
    (start step, LR override, rewind point) are trained together, whichever level or branch they are.
    Returns each run's rows; a run whose training diverged is reported by one DivergenceError after the
    others are stored."""
    full = check_stack_configs(configs, imp_stack_refusal)
    first = configs[0]
    dev = resolve_device(device)
    setups: dict[int, Setup] = {}
    rows_of: dict[int, list[dict[str, Any]]] = {}
    diverged: list[str] = []
    order = sorted(range(len(configs)), key=lambda i: config_hash(configs[i]))  # one lock order for every process
    with contextlib.ExitStack() as locks:
        gens: dict[int, Generator[list[UnitRequest], list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for i in order:
            config = configs[i]
            data, validation, rows = seed_splits(full, config.data, config.seed)
            total, k = _check(config, data)
            run = locks.enter_context(running(store, config, log))
            if (done := run.complete_summary()) is not None:
                log(f"IMP run {run.hash} (seed {config.seed}) is complete; nothing recomputed")
                rows_of[i] = done["levels"]
                continue
            # the unit context holds the seed's training part only by its length and shapes (a view of the
            # first rows): the stack trains each run on its own rows of the one shared copy of the data
            shape = replace(data, train=_prefix(full, len(data.train)))
            ctx = UnitContext(run, shape, validation, config.train, config.seed, dev, progress, log,
                              prunable=config.prune.prunable_options)
            setups[i] = Setup(config, ctx, total, k, rows)
            log(_describe(config, run))
            gens[i] = _level_steps(setups[i])
        waiting: dict[int, tuple[list[UnitRequest], list[dict[str, Any] | None]]] = {}

        def advance(i: int, answers: list[dict[str, Any]] | None) -> None:
            """Run i's algorithm up to its next units still to train (complete ones are loaded)."""
            s, gen = setups[i], gens[i]
            while True:
                try:
                    requests = next(gen) if answers is None else gen.send(answers)
                except StopIteration as stop:
                    rows_of[i] = stop.value
                    _mark_complete(s.run, stop.value)
                    return
                got = [_train(s, r) if s.run.is_complete(r.unit) else None for r in requests]
                if any(g is None for g in got):
                    waiting[i] = (requests, got)
                    return
                answers = got  # type: ignore[assignment]

        for i in list(gens):
            advance(i, None)
        while waiting:
            todo = [(i, j) for i in sorted(waiting) for j, got in enumerate(waiting[i][1]) if got is None]
            segment = _segment_of(setups, waiting[todo[0][0]][0][todo[0][1]], todo[0][0])
            group = [(i, j) for i, j in todo if _segment_of(setups, waiting[i][0][j], i) == segment]
            size = stack_size(waiting[group[0][0]][0][group[0][1]].model, first.train, len(group), stack_limit, dev)
            for start in range(0, len(group), size):
                chunk = [(i, j) for i, j in group[start:start + size] if i in waiting]  # not a diverged run's
                units = [_stacked_unit(setups[i], waiting[i][0][j]) for i, j in chunk]
                log(f"training {len(units)} unit(s) as one stacked model: "
                    f"{', '.join(sorted({u.unit for u in units}))}")
                for (i, j), outcome in zip(chunk, train_units_stacked(units, full, dev)):
                    if i not in waiting:
                        continue
                    if outcome.summary is None:
                        setups[i].run.update_index(status="diverged")
                        diverged.append(f"{setups[i].run.hash} (seed {configs[i].seed}): {outcome.diverged}")
                        gens[i].close()
                        del waiting[i]
                        continue
                    waiting[i][1][j] = outcome.summary
            for i in [i for i in sorted(waiting) if all(g is not None for g in waiting[i][1])]:
                _, answers = waiting.pop(i)
                advance(i, answers)  # type: ignore[arg-type]
    if diverged:
        raise DivergenceError(f"{len(diverged)} of {len(configs)} IMP runs diverged and were not completed (the "
                              f"others were): {'; '.join(diverged)}")
    return [rows_of[i] for i in range(len(configs))]


def imp_stack_refusal(config: IMPConfig, data: DataSplits | None = None) -> str | None:
    """Why IMP runs of ``config`` are not stacked (None: they can be)."""
    if config.prune.structure != "none":
        return "structured tickets hold emptied channels' biases at zero by a per-step callback"
    if config.mask0 != IMPConfig.__dataclass_fields__["mask0"].default:
        return f"mask-0 action {config.mask0!r} holds pruned weights at non-zero values"
    from .stacked import refusal_for

    return refusal_for(config, data)


def _prefix(full: DataSplits, n: int) -> Any:
    """The first ``n`` training rows of ``full`` as a view (no copy): a stand-in of a seed's training
    part of that length, for the lengths, shapes and probe inputs a unit context is asked for."""
    return ArrayData(full.train.x[:n], full.train.y[:n])


def _segment_of(setups: dict[int, Setup], request: UnitRequest, i: int) -> tuple[Any, ...]:
    return (request.start_step, request.lr_override, setups[i].rewind_step if request.save_rewind else None)


def _stacked_unit(s: Setup, request: UnitRequest) -> StackedUnit:
    if request.callbacks or request.pruned_values is not None:
        raise ValueError(f"{request.unit}: a unit with callbacks or held pruned values cannot be stacked")
    def save_rewind_point(state: dict[str, torch.Tensor]) -> None:
        rewind = build_seeded_model(s.config.model, s.ctx.data, s.config.seed)
        rewind.load_state_dict(state)
        save_weights(rewind, s.run.file("rewind.safetensors"))

    return StackedUnit(s.ctx, request.unit, request.model, request.mask, s.train_rows, request.extra_summary, None,
                       request.start_step, request.lr_override, s.rewind_step if request.save_rewind else None,
                       save_rewind_point if request.save_rewind else None)


def _emptied_channel_biases(s: Setup, model: torch.nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
    """Structured tickets (``config.prune.structure``): the bias entries of the output channels the mask
    empties in the structured layers. Masks cover weights, so without this an emptied channel would
    still emit its bias (after ReLU a constant map), or the shift of the BatchNorm that follows it, and
    the physically shrunk ticket, which drops the channel, would not be the trained one. A BatchNorm is
    found as the module defined right after the layer with as many features (conv -> BN, as in
    ticketlab's VGG and ResNet); one defined elsewhere is not, and ``export --format shrunk`` then
    refuses the ticket."""
    if s.config.prune.structure == "none":
        return {}
    modules = list(model.named_modules())
    following = {name: modules[i + 1] for i, (name, _) in enumerate(modules[:-1])}
    dead = {}
    for name in _structured_layers(s, model, mask):
        module_name = name.rpartition(".")[0]
        module = model.get_submodule(module_name) if module_name else model
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            continue
        empty = ~mask[name].reshape(mask[name].shape[0], -1).any(dim=1)
        if not bool(empty.any()):
            continue
        if module.bias is not None and tuple(module.bias.shape) == tuple(empty.shape):
            dead[f"{module_name}.bias"] = empty
        # the BatchNorm defined right after the layer over its channels (conv -> BN): its shift would be
        # the emptied channel's output, so it is held at zero too (and its scale, which then multiplies 0)
        bn_name, bn = following.get(module_name, ("", None))
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) and bn.affine and bn.num_features == len(empty):
            dead[f"{bn_name}.weight"] = empty
            dead[f"{bn_name}.bias"] = empty
    return dead


def _hold_zero(model: torch.nn.Module, dead: dict[str, torch.Tensor]) -> list[Callback]:
    """Zero ``dead``'s bias entries now and after every step (so every forward sees them at zero)."""
    if not dead:
        return []
    params = dict(model.named_parameters())
    targets = [(params[n], keep_zero) for n, keep_zero in dead.items()]

    @torch.no_grad()
    def zero(*_: object) -> None:
        for p, keep_zero in targets:
            p.masked_fill_(keep_zero.to(p.device), 0.0)

    zero()
    return [Callback(lambda trainer, step: zero(), every=1)]


def _dead_summary(dead: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"biases_held_at_zero": sum(int(t.sum()) for t in dead.values())} if dead else {}


def _structured_layers(s: Setup, model: torch.nn.Module, mask: Mask) -> list[str]:
    """The masked weights ``config.prune.structure`` acts on (and the structure metrics measure):
    Conv (and Linear, ``structure_layers="all"``) weights, the output layer's excluded."""
    try:
        output = (output_parameter_name(model),)
    except PrunableError:  # no Linear/Conv layer at all: nothing to structure
        output = ()
    return structurable_weights(model, mask, layers=s.config.prune.structure_layers, exclude=output)


def _connectivity(s: Setup, model: torch.nn.Module, mask: Mask, level: int, what: str) -> dict[str, Any]:
    """Effective density and collapsed layers of ``mask``, logged as one line, and its structure
    metrics (``pruning/structure.py``), all stored with the unit."""
    conn, _ = connectivity(model, mask, s.ctx.data)
    s.ctx.log(connectivity_line(f"level {level} {what}", mask, conn))
    names = _structured_layers(s, model, mask)
    metrics = structure_metrics(model, mask, s.ctx.data.input_shape, names=names,
                                example_input=example_input(s.ctx.data))
    fraction = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    if s.config.prune.structure != "none":  # (stored with every unit; logged where the run asks for structure)
        s.ctx.log(f"  structure ({len(names)} layers): empty channels {fraction(metrics['empty_channel_fraction'])}, kept "
                  f"weights in dense blocks {fraction(metrics['block_nonzero_fraction'])}; shrunk model "
                  f"{metrics['shrunk_params']}/{metrics['params_dense']} params, "
                  f"{metrics['shrunk_flops']}/{metrics['flops_dense']} FLOPs")
    return {**conn, **metrics}


def _write_levels(s: Setup, rows: list[dict[str, Any]], stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Extend ``levels.jsonl`` with newly completed levels; never shorten or rewrite what it holds
    (a rerun that stops half-way leaves the file as it was)."""
    if len(rows) <= len(stored):
        return stored
    if rows[:len(stored)] != stored:
        raise StoreError(f"{s.run.file('levels.jsonl')} disagrees with the stored units it summarises; move it "
                         "aside to rebuild it from them")
    s.run.write_jsonl(rows, "levels.jsonl")
    return list(rows)  # a copy: ``rows`` keeps growing


def _segment(s: Setup, reset: Reset) -> tuple[int, float | None]:
    """(start step, constant LR or None) of a level's training under the reset action."""
    start = s.rewind_step if reset.starts_at_rewind_step else 0
    if reset.constant_final_lr:
        return start, s.config.train.lr * lr_factor(s.total_steps - 1, s.config.train, s.total_steps,
                                                    s.ctx.iterations_per_epoch)
    return start, None


def _random_mask(s: Setup, level: int, ticket: Mask) -> Mask:
    path = s.run.file(f"level_{level:02d}", "random_mask.safetensors")
    if path.exists():
        return Mask.load(path, require_checksum=True)
    g = torch.Generator().manual_seed(derived_seed(s.config.seed, "random", level))
    mask = random_mask_like(ticket, g)
    mask.save(path)
    return mask
