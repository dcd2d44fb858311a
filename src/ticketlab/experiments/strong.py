"""Strong lottery tickets of a frozen random net, as a stored run (``ticketlab strong``).

Altmann et al. (2024) search a ReLU MLP whose weights and biases are drawn U[-1, 1] and never
trained for a mask that classifies well by itself, with a genetic algorithm
(``pruning/genetic.py``), and compare it with edge-popup on the same frozen net and with ordinary
backprop. Per seed (the seed draws the frozen net and every random choice of the methods):

    ticket   = --method ga:          the GA's best genome (``seed_S/ga``)
               --method edgepopup:   edge-popup's top-k mask at --density (``seed_S/edgepopup``)
               --method gem:         GEM-MINER's flag mask at --density, before fine-tuning (``seed_S/gem``)
    baselines (--baselines):
      edgepopup  edge-popup on the same frozen net at the ticket's density (``seed_S/edgepopup_ticket``,
                 methods ga and gem) and at each --baseline-densities value (``seed_S/edgepopup_D``)
      backprop   dense training of the same net from the same U[-1, 1] weights (``seed_S/backprop``)

A new ticket method is one more entry in ``TICKETS``: a function ``(ctx, seed) -> row`` that stores
its unit under ``seed_S/<method>``.

Resuming: the GA saves its whole state (population, fitness, history, generator state) after every
generation in one atomic ``checkpoint.safetensors``, so a killed run continues from its last
generation and ends with exactly the uninterrupted result. Edge-popup and backprop units are
seeded end to end and short: a unit killed before its ``summary.json`` is trained again and gives
the same numbers. The run's ``summary.json`` (all rows) is written last and marks it complete.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, DataConfig, TrainConfig, option
from ..data import ArrayData, DataSplits
from ..pruning.genetic import FrozenMLP, GAOptions, GAState, evolve
from ..store import Run, Store, index_fields
from ..training import Trainer, evaluate, resolve_device
from .common import Log, Named, prepare_data, running

STRONG_METHODS = ("ga", "edgepopup", "gem")
BASELINES = ("edgepopup", "backprop")



@dataclass(frozen=True)
class StrongConfig:
    """One setting (data set, frozen net) over several seeds: a ticket method and its baselines."""

    method: str = option("ga", "how the strong ticket is found: 'ga' (genetic algorithm, Altmann et al.), "
                               "'edgepopup' (Ramanujan et al., at --density) or 'gem' (GEM-MINER, Sreenivasan et al., "
                               "at --density)", choices=STRONG_METHODS)
    data: DataConfig = field(default_factory=lambda: DataConfig(name="moons"))
    hidden: tuple[int, ...] = option((20,), "hidden widths of the frozen ReLU MLP (input and output widths come from "
                                            "the data), e.g. 20, or 50 50", metavar="WIDTH")
    seeds: tuple[int, ...] = option((0,), "seeds: each draws its own frozen U[-1, 1] net and the methods' random "
                                          "choices; the data set is the same for all (its own seed option)")
    ga: GAOptions = field(default_factory=GAOptions)
    density: float = option(0.5, "edgepopup and gem methods: kept fraction (edge-popup: of every weight matrix; gem: "
                                 "of all weights, ranked globally)", sparsity=True)
    gem_iter_period: int = option(2, "gem method: epochs between GEM-MINER's pruning rounds (needs --epochs >= "
                                     "period + 1)")
    # the authors' two GEM-MINER behaviours, measured against ours in docs/gem_miner.md; added after runs
    # existed: at their defaults out of the hash and of config.json
    gem_round_counts: str = option("exact", "gem method: per-round counts, 'exact' (ticketlab) or 'ceil' (the authors': "
                                            "ceil(p * flagged) plus ties)", choices=("exact", "ceil"),
                                   omit_default="always")
    gem_lr_step: str = option("iteration", "gem method: score-phase cosine LR stepped per 'iteration' (ticketlab) or "
                                           "per 'epoch' (the authors')", choices=("iteration", "epoch"),
                              omit_default="always")
    baselines: tuple[str, ...] = option(BASELINES, "'edgepopup': edge-popup on the same frozen net at the GA "
                                                   "ticket's density and at each --baseline-densities value; "
                                                   "'backprop': dense training of the same net", choices=BASELINES)
    baseline_densities: tuple[float, ...] = option((0.5,), "kept fractions at which the edgepopup baseline also runs")
    epochs: int = option(10, "epochs of edge-popup and of backprop")
    batch_size: int = option(128, "mini-batch of edge-popup and backprop (authors: 128)")
    edgepopup_lr: float = option(0.1, "edge-popup: SGD learning rate (momentum 0.9, weight decay 1e-4, cosine), "
                                      "as the authors' hidden-networks config")
    backprop_lr: float = option(1e-3, "backprop: Adam learning rate (weight decay 1e-4), as the authors' config")
    model: Named = field(default=Named(), metadata={"hash": False, "cli": False})

    experiment = "strong"

    def __post_init__(self) -> None:
        if self.method not in STRONG_METHODS:
            raise ConfigError(f"--method {self.method!r} is unknown; choose one of {STRONG_METHODS}")
        hidden = tuple(int(h) for h in self.hidden)
        if any(h < 1 for h in hidden):
            raise ConfigError(f"--hidden widths must be >= 1, got {list(self.hidden)}")
        seeds = tuple(int(s) for s in self.seeds)
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ConfigError(f"--seeds must be distinct integers >= 0, at least one; got {list(self.seeds)}")
        if not 0.0 < float(self.density) <= 1.0:
            raise ConfigError(f"--density must lie in (0, 1], got {self.density}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"--baselines {unknown} unknown; choose from {BASELINES}")
        densities = tuple(float(d) for d in self.baseline_densities)
        if any(not 0.0 < d <= 1.0 for d in densities):
            raise ConfigError(f"--baseline-densities must lie in (0, 1], got {list(self.baseline_densities)}")
        if self.method != "gem" and (self.gem_round_counts, self.gem_lr_step) != ("exact", "iteration"):
            raise ConfigError(f"--gem-round-counts / --gem-lr-step apply to the gem method, not {self.method}")
        if self.method == "gem" and not 1 <= self.gem_iter_period < self.epochs:
            raise ConfigError(f"--gem-iter-period must lie in [1, --epochs - 1] (GEM-MINER prunes after every period "
                              f"and needs one round at least); got {self.gem_iter_period} with --epochs {self.epochs}")
        if self.epochs < 1 or self.batch_size < 1 or self.edgepopup_lr <= 0 or self.backprop_lr <= 0:
            raise ConfigError(f"--epochs, --batch-size, --edgepopup-lr and --backprop-lr must be positive; got "
                              f"{self.epochs}, {self.batch_size}, {self.edgepopup_lr}, {self.backprop_lr}")
        object.__setattr__(self, "hidden", hidden)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "baselines", tuple(b for b in BASELINES if b in self.baselines))
        object.__setattr__(self, "baseline_densities", densities)
        if not self.model.name:
            object.__setattr__(self, "model", Named("frozen_mlp_" + "_".join(map(str, hidden))))


@dataclass
class StrongContext:
    """What the units of one run share."""

    run: Run
    config: StrongConfig
    data: DataSplits
    device: torch.device
    log: Log
    train_device: torch.device | None = None  # edge-popup and backprop (default: device)

    def net(self, seed: int) -> FrozenMLP:
        """The seed's frozen U[-1, 1] net (the same draw for every method)."""
        widths = [int(np.prod(self.data.input_shape)), *self.config.hidden, self.data.num_classes]
        return FrozenMLP(widths, torch.Generator().manual_seed(int(seed)))


# --- units -----------------------------------------------------------------------------------------

def _ga_unit(ctx: StrongContext, seed: int) -> dict[str, Any]:
    """The GA's strong ticket; the state is saved after every generation."""
    run, unit = ctx.run, f"seed_{seed}/ga"
    if run.file(unit, "summary.json").exists():
        return run.read_json(unit, "summary.json")
    net = ctx.net(seed)
    dev_net = net.to(ctx.device)
    flat = lambda split: ArrayData(split.x.flatten(1), split.y).to(ctx.device)  # noqa: E731 (images: flat)
    train, test = flat(ctx.data.train), flat(ctx.data.test)
    opts = ctx.config.ga
    ckpt = run.file(unit, "checkpoint.safetensors")
    state = GAState.from_tensors(run.load_tensors(unit, "checkpoint.safetensors"), net.genome_length) \
        if ckpt.exists() else None
    if state is not None:
        ctx.log(f"  {unit}: resuming after generation {state.generation}")
    started = time.perf_counter()

    def save(s: GAState) -> None:
        run.save_tensors(s.to_tensors(), unit, "checkpoint.safetensors")

    state = evolve(dev_net, train, opts, seed, state=state, on_generation=save)
    best = state.genomes[:1]
    test_acc = int(dev_net.correct(best, test.x, test.y)[0]) / len(test)
    mask = net.mask(best[0])
    summary = {"seed": seed, "method": "ga", "role": "ticket", "density": mask.density, "kept": mask.num_kept,
               "total": mask.num_total, "layer_density": mask.densities(), "test_accuracy": test_acc,
               "train_accuracy": state.history[-1]["best_accuracy"], "generations": state.generation,
               "stopped": state.stopped, "variant": opts.variant, "bound": state.bound,
               "evaluated": int(sum(r["evaluated"] for r in state.history)),
               "seconds": time.perf_counter() - started}
    mask.save(run.file(unit, "mask.safetensors"))
    run.write_jsonl(state.history, unit, "history.jsonl")
    run.write_json(summary, unit, "summary.json")  # written last: marks the unit complete
    ckpt.unlink(missing_ok=True)
    ctx.log(f"  {unit}: test acc {test_acc:.4f}, train acc {summary['train_accuracy']:.4f}, density "
            f"{mask.density:.4f}, {state.generation} generations ({state.stopped}); population evaluated by "
            f"'{dev_net.evaluation_strategy()}' on {ctx.device}")
    return summary


def _edgepopup_unit(ctx: StrongContext, seed: int, density: float, unit: str, role: str) -> dict[str, Any]:
    """Edge-popup on the seed's frozen net (biases unmasked, like the GA's), at ``density``."""
    from ..pruning.edge_popup import train_edge_popup

    run, cfg = ctx.run, ctx.config
    if run.file(unit, "summary.json").exists():
        return run.read_json(unit, "summary.json")
    started = time.perf_counter()
    model = ctx.net(seed).to_module()
    dev = ctx.train_device or ctx.device
    result = train_edge_popup(model, ctx.data, density, epochs=cfg.epochs, lr=cfg.edgepopup_lr, momentum=0.9,
                              weight_decay=1e-4, batch_size=cfg.batch_size, seed=seed, include_bias=False,
                              weight_init="keep", bias_init="keep", device=dev)
    mask = result["mask"]
    train_acc = evaluate(model, ctx.data.train.to(dev))["accuracy"]
    summary = {"seed": seed, "method": "edgepopup", "role": role, "asked_density": density, "density": mask.density,
               "kept": mask.num_kept, "total": mask.num_total, "layer_density": mask.densities(),
               "test_accuracy": result["test_accuracy"], "train_accuracy": train_acc, "epochs": cfg.epochs,
               "seconds": time.perf_counter() - started}
    mask.save(run.file(unit, "mask.safetensors"))
    run.write_json(summary, unit, "summary.json")
    ctx.log(f"  {unit}: test acc {summary['test_accuracy']:.4f}, density {mask.density:.4f}")
    return summary


def _backprop_unit(ctx: StrongContext, seed: int) -> dict[str, Any]:
    """Dense Adam training of the same net from its U[-1, 1] weights (the authors' backprop baseline)."""
    run, cfg, unit = ctx.run, ctx.config, f"seed_{seed}/backprop"
    if run.file(unit, "summary.json").exists():
        return run.read_json(unit, "summary.json")
    started = time.perf_counter()
    model = ctx.net(seed).to_module()
    train_cfg = TrainConfig(optimizer="adam", lr=cfg.backprop_lr, weight_decay=1e-4, batch_size=cfg.batch_size,
                            steps=f"{cfg.epochs}ep", eval_every=f"{cfg.epochs}ep")
    dev = ctx.train_device or ctx.device
    trainer = Trainer(model, ctx.data, train_cfg, seed=seed, device=dev)
    last = trainer.train().records[-1]
    train_acc = evaluate(model, ctx.data.train.to(dev))["accuracy"]
    summary = {"seed": seed, "method": "backprop", "role": "baseline", "density": 1.0,
               "test_accuracy": last["test_accuracy"], "train_accuracy": train_acc, "epochs": cfg.epochs,
               "seconds": time.perf_counter() - started}
    run.write_json(summary, unit, "summary.json")
    ctx.log(f"  {unit}: test acc {summary['test_accuracy']:.4f} (dense)")
    return summary


def _edgepopup_ticket(ctx: StrongContext, seed: int) -> dict[str, Any]:
    return _edgepopup_unit(ctx, seed, ctx.config.density, f"seed_{seed}/edgepopup", "ticket")


def _gem_ticket(ctx: StrongContext, seed: int) -> dict[str, Any]:
    """GEM-MINER's flag mask on the seed's frozen net (weights kept as drawn, biases unmasked, like the
    GA's): scores trained with SGD (--edgepopup-lr, momentum 0.9) for --epochs, a global pruning round
    every --gem-iter-period epochs toward --density. The strong accuracy is the flag mask's before
    any fine-tuning (fine-tuning the gem is ``pruning.gem_miner.finetune_gem``)."""
    from ..pruning.gem_miner import train_gem_miner

    run, cfg, unit = ctx.run, ctx.config, f"seed_{seed}/gem"
    if run.file(unit, "summary.json").exists():
        return run.read_json(unit, "summary.json")
    started = time.perf_counter()
    model = ctx.net(seed).to_module()
    dev = ctx.train_device or ctx.device
    result = train_gem_miner(model, ctx.data, cfg.density, epochs=cfg.epochs, iter_period=cfg.gem_iter_period,
                             lr=cfg.edgepopup_lr, batch_size=cfg.batch_size, weight_init="keep", seed=seed, device=dev,
                             round_counts=cfg.gem_round_counts, lr_step=cfg.gem_lr_step)
    mask = result["mask"]
    mask.apply_(model)
    train_acc = evaluate(model, ctx.data.train.to(dev))["accuracy"]
    summary = {"seed": seed, "method": "gem", "role": "ticket", "asked_density": cfg.density, "density": mask.density,
               "kept": mask.num_kept, "total": mask.num_total, "layer_density": mask.densities(),
               "test_accuracy": result["flag_test_accuracy"], "train_accuracy": train_acc, "epochs": cfg.epochs,
               "seconds": time.perf_counter() - started}
    mask.save(run.file(unit, "mask.safetensors"))
    run.write_json(summary, unit, "summary.json")
    ctx.log(f"  {unit}: test acc {summary['test_accuracy']:.4f}, density {mask.density:.4f}")
    return summary


# the ticket methods: a new one is one more entry
TICKETS: dict[str, Callable[[StrongContext, int], dict[str, Any]]] = {"ga": _ga_unit, "edgepopup": _edgepopup_ticket,
                                                                     "gem": _gem_ticket}


def run_strong(config: StrongConfig, store: Store, *, device: str | torch.device | None = None,
               progress: bool = True, log: Log = print,
               train_device: str | torch.device | None = None) -> list[dict[str, Any]]:
    """Run (or continue) the setting over every seed; one row per (seed, method, density).

    ``progress`` is accepted for the common signature; units log one line each. ``device`` is
    where the GA evaluates its population; ``train_device`` (default: ``device``) where edge-popup
    and backprop train: nets this small often train faster on one CPU thread than on a GPU, while
    the GA's batched evaluation of 50,000 points is where a GPU pays.
    """
    data, _ = prepare_data(config.data, config.seeds[0])
    if data.train.y.dtype != torch.int64:
        raise ConfigError(f"data set {config.data.name!r} has no class labels; strong tickets are classified here")
    if config.batch_size > len(data.train):
        raise ConfigError(f"--batch-size {config.batch_size} exceeds the {len(data.train)} training samples")
    dev = resolve_device(device)
    with running(store, config, log) as run:
        if (done := run.complete_summary()) is not None:
            log(f"strong run {run.hash} is complete; nothing recomputed")
            return done["rows"]
        log(f"strong run {run.hash} in {run.path}: {config.method} on {config.data.name}, net "
            f"{[int(np.prod(data.input_shape)), *config.hidden, data.num_classes]}, {len(config.seeds)} seed(s)")
        ctx = StrongContext(run, config, data, dev, log,
                            resolve_device(train_device) if train_device is not None else None)
        rows: list[dict[str, Any]] = []
        for seed in config.seeds:
            ticket = TICKETS[config.method](ctx, seed)
            rows.append(ticket)
            if "edgepopup" in config.baselines:
                if config.method != "edgepopup":
                    rows.append(_edgepopup_unit(ctx, seed, ticket["density"], f"seed_{seed}/edgepopup_ticket",
                                                "at ticket density"))
                for d in config.baseline_densities:
                    rows.append(_edgepopup_unit(ctx, seed, d, f"seed_{seed}/edgepopup_{d:g}", f"at {d:g}"))
            if "backprop" in config.baselines:
                rows.append(_backprop_unit(ctx, seed))
        summary = {"method": config.method, "dataset": config.data.name, "net": list(
            [int(np.prod(data.input_shape)), *config.hidden, data.num_classes]), "rows": rows,
            **_headline(rows, config.method)}
        run.mark_complete(summary)
        run.update_index(status="complete", summary=index_fields(summary))
    return rows


def _headline(rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """The ticket's mean test accuracy and density (the index's columns)."""
    tickets = [r for r in rows if r["role"] == "ticket"]
    acc = float(np.mean([r["test_accuracy"] for r in tickets]))
    return {"final_test_accuracy": acc, "test_accuracy": acc,
            "density": float(np.mean([r["density"] for r in tickets]))}


# --- report ------------------------------------------------------------------------------------------

def _label(r: dict[str, Any]) -> str:
    return r["method"] if r["role"] == "ticket" else f"{r['method']} ({r['role']})"


def _mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.4f} ± {v.std():.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def strong_report(runs: list[Any], plot: Any) -> tuple[str, list[Any]]:
    """Per run: mean ± std over seeds of test accuracy and kept fraction per method, the per-seed
    rows, and the GA's best / mean training accuracy and density per generation (every 10th
    generation and the last, first seed). One figure: test accuracy vs kept fraction of every
    row of every run, and the GA's per-generation curves."""
    from pathlib import Path

    parts: list[str] = []
    curves: list[tuple[str, list[dict[str, Any]]]] = []
    scatter: list[tuple[str, dict[str, Any]]] = []
    for run in runs:
        summary = run.read_json("summary.json")
        rows = summary["rows"]
        cfg = run.read_json("config.json")["config"]
        variant = cfg.get("ga", {}).get("variant", "ga") if summary["method"] == "ga" else ""
        name = f"{summary['dataset']} {summary['net']}" + (f" {variant}" if variant not in ("", "ga") else "")
        lines = [f"### strong {run.hash[:8]}: {summary['method']} on {name}, {len({r['seed'] for r in rows})} seed(s)",
                 "", "| method | seeds | test accuracy | kept fraction | train accuracy |", "|---|---|---|---|---|"]
        labels = list(dict.fromkeys(_label(r) for r in rows))
        for label in labels:
            sel = [r for r in rows if _label(r) == label]
            lines.append(f"| {label} | {len(sel)} | {_mean_std([r['test_accuracy'] for r in sel])} | "
                         f"{_mean_std([r['density'] for r in sel])} | {_mean_std([r['train_accuracy'] for r in sel])} |")
        lines += ["", "Per seed:", "", "| seed | method | test accuracy | kept fraction | train accuracy | seconds |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['seed']} | {_label(r)} | {r['test_accuracy']:.4f} | {r['density']:.4f} | "
                         f"{r['train_accuracy']:.4f} | {r.get('seconds', 0.0):.1f} |")
            scatter.append((name, r))
        ga_rows = [r for r in rows if r["method"] == "ga"]
        if ga_rows:
            seed = ga_rows[0]["seed"]
            hist = run.read_jsonl(f"seed_{seed}", "ga", "history.jsonl")
            curves.append((name, hist))
            shown = [h for h in hist if h["generation"] % 10 == 0 or h is hist[-1]]
            lines += ["", f"GA per generation (seed {seed}; every 10th generation and the last; population "
                          f"{cfg.get('ga', {}).get('population', 100)}; stopped: {ga_rows[0]['stopped']}):", "",
                      "| generation | best train acc | mean train acc | best kept fraction | mean kept fraction | "
                      "evaluated |", "|---|---|---|---|---|---|"]
            for h in shown:
                lines.append(f"| {h['generation']} | {h['best_accuracy']:.4f} | {h['mean_accuracy']:.4f} | "
                             f"{h['best_density']:.4f} | {h['mean_density']:.4f} | {h['evaluated']} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts), [_figure(scatter, curves, Path(plot))]


def _figure(scatter: list[tuple[str, dict[str, Any]]], curves: list[tuple[str, list[dict[str, Any]]]],
            path: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis.report import _save

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    markers = {"ga": "o", "edgepopup": "s", "backprop": "^"}
    settings = list(dict.fromkeys(n for n, _ in scatter))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for name, r in scatter:
        c = colors[settings.index(name) % len(colors)]
        filled = r["role"] == "ticket" or r["method"] == "backprop"
        axes[0].scatter(r["density"], r["test_accuracy"], marker=markers.get(r["method"], "x"), s=22,
                        facecolors=c if filled else "none", edgecolors=c)
    for i, name in enumerate(settings):
        axes[0].plot([], [], color=colors[i % len(colors)], label=name)
    for m, mk in markers.items():
        axes[0].scatter([], [], marker=mk, color="k", label=m)
    axes[0].set_xlabel("kept fraction")
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("strong tickets (hollow: edge-popup baselines)", fontsize=10)
    axes[0].legend(fontsize=7)
    settings += [n for n, _ in curves if n not in settings]
    labelled: set[str] = set()
    for name, hist in curves:  # the first GA seed of each run, coloured like its setting on the left
        c = colors[settings.index(name) % len(colors)]
        g = [h["generation"] for h in hist]
        axes[1].plot(g, [h["best_accuracy"] for h in hist], color=c, label=None if name in labelled else name)
        labelled.add(name)
        axes[1].plot(g, [h["mean_accuracy"] for h in hist], color=c, ls="--")
        axes[2].plot(g, [h["best_density"] for h in hist], color=c)
        axes[2].plot(g, [h["mean_density"] for h in hist], color=c, ls="--")
    axes[1].set_title("GA training accuracy, first seed of each run (solid best, dashed mean)", fontsize=9)
    axes[2].set_title("GA kept fraction (solid best, dashed mean)", fontsize=10)
    for ax in axes[1:]:
        ax.set_xlabel("generation")
    if curves:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
