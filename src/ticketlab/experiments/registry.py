"""The experiment records: one per stored-run command (``ticketlab imp``, ``prune``, ...).

A record names the command, its config class (whose fields become the command's flags, help and
defaults; see ``ticketlab.flags``), the function that runs a config in the store, and the function
that reports stored runs of that kind. A new procedure is its own file (config dataclass with
``option`` fields, ``run_x(config, store, *, device, progress)``, a report function) plus one line in
``EXPERIMENTS`` below (and one entry in ``tests/test_fault_injection.py::PROCEDURES``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..analysis.report import early_bird_report, imp_report, prune_report, sparse_report, supermask_report
from ..config import (SUPERMASK_TRAIN, ConfigError, EarlyBirdConfig, IMPConfig, PruneAtInitConfig, SparseTrainConfig,
                      SupermaskConfig)
from .deconstruct import DeconstructConfig, deconstruct_report, run_deconstruct
from .early_bird import run_early_bird
from .imp import imp_stack_refusal, run_imp, run_imp_seeds
from .prune_at_init import run_prune_at_init, run_prune_at_init_seeds
from .sparse_training import run_sparse_training, run_sparse_training_seeds, sparse_stack_refusal
from .stacked import refusal_for
from .strong import StrongConfig, run_strong, strong_report
from .supermask import run_supermask
from .transfer import TransferConfig, run_transfer, transfer_report
from .tropical import TROPICAL_TRAIN, TropicalConfig, run_tropical, tropical_report


@dataclass(frozen=True)
class Experiment:
    """One command that runs a config in the store and reports it."""

    name: str                           # the subcommand: ``ticketlab <name>``
    help: str                           # its line in ``ticketlab --help``
    config_cls: type                    # frozen config dataclass; ``config_cls.experiment`` tags its runs
    run: Callable[..., Any]             # run(config, store, *, device, progress)
    report: Callable[..., Any]          # report(runs, plot_path) -> (markdown, [png paths])
    group: str                          # --help section of the procedure's own options
    base: Mapping[str, Any] = field(default_factory=dict)  # defaults over the config's (the demo's)
    finish: Callable[[dict[str, Any], frozenset[str]], None] | None = None  # rules across options, on
    # {dest: value} and the dests given on the command line
    threads: int | None = None          # default --threads
    intro: str = ""                     # printed before the run starts
    presets: bool = True                # whether --preset (data, model, training settings) applies
    # run_seeds(configs, store, *, device, progress, stack_limit): runs differing only in their seed,
    # trained as one stacked model (``--seeds``; experiments.stacked); None: --seeds runs them one by one
    run_seeds: Callable[..., Any] | None = None
    # why a config's seeds are not stacked (None: they are); (config, its data set if loaded already)
    stack_refusal: Callable[..., str | None] | None = None


def _imp_finish(values: dict[str, Any], given: frozenset[str] = frozenset()) -> None:
    """--no-prune-output: the output layer stays dense, so a preset's output rate is dropped; an
    --output-rate given on the command line with it is refused (it would be silently ignored)."""
    if values.get("include_output") is False:
        if "output_rate" in given and values.get("output_rate") is not None:
            raise ConfigError("--output-rate prunes the output layer, which --no-prune-output keeps dense; "
                              "give one of them")
        values["output_rate"] = None


def _sparse_finish(values: dict[str, Any], given: frozenset[str] = frozenset()) -> None:
    """Dense training keeps every weight (a density given with it is refused, not ignored); the
    other methods need a density."""
    if values["method"] == "dense" and "density" in values and values["density"] != 1.0:
        raise ConfigError(f"--method dense trains every weight: a density of {values['density']:g} (--density / "
                          "--sparsity) does not apply to it; drop it, or choose a sparse method (static, set, rigl, "
                          "gmp)")
    if "density" not in values:
        if values["method"] != "dense":
            raise ConfigError(f"--method {values['method']} needs --density or --sparsity")
        values["density"] = 1.0


def _supermask_finish(values: dict[str, Any], given: frozenset[str] = frozenset()) -> None:
    """The authors' momentum 0.9 is SGD's: another optimiser (adam) without --momentum gets 0."""
    if values.get("optimizer") != "sgd" and "momentum" not in given:
        values["momentum"] = 0.0


# Standard settings from the papers (see METHODS.md); any flag given on the command line wins.
PRESETS: dict[str, dict[str, Any]] = {
    "lenet_mnist": dict(dataset="mnist", model="lenet_300_100", optimizer="adam", lr=1.2e-3, batch_size=60,
                        steps="50000it", val_size=5000, eval_every="1000it", output_rate=0.1),
    "conv2_cifar10": dict(dataset="cifar10", model="conv2", optimizer="adam", lr=2e-4, batch_size=60,
                          steps="20000it", val_size=5000, eval_every="1000it"),
    "conv4_cifar10": dict(dataset="cifar10", model="conv4", optimizer="adam", lr=3e-4, batch_size=60,
                          steps="25000it", val_size=5000, eval_every="1000it"),
    "conv6_cifar10": dict(dataset="cifar10", model="conv6", optimizer="adam", lr=3e-4, batch_size=60,
                          steps="30000it", val_size=5000, eval_every="1000it"),
    "resnet20_cifar10": dict(dataset="cifar10", model="resnet20", optimizer="sgd", lr=0.1, momentum=0.9,
                             weight_decay=1e-4, batch_size=128, steps="160ep", schedule="multistep",
                             milestones=["80ep", "120ep"], reset="rewind", rewind_step="2000it", eval_every="1ep"),
    "vgg16_cifar10": dict(dataset="cifar10", model="vgg16", optimizer="sgd", lr=0.1, momentum=0.9,
                          weight_decay=1e-4, batch_size=128, steps="160ep", schedule="multistep",
                          milestones=["80ep", "120ep"], reset="rewind", rewind_step="2000it", eval_every="1ep"),
}

# Offline demo: scikit-learn's digits, an MLP, IMP down to 1% of the weights with both baselines
# (about 20 seconds on 2 cores). Below ~3% the random re-init falls behind the ticket.
DEMO = dict(dataset="digits", model="mlp", model_options={"hidden": [300, 100]}, optimizer="adam", lr=1e-3,
            batch_size=32, steps="20ep", val_size=200, eval_every="1ep", levels=9, rate=0.4)

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("imp", "iterative magnitude pruning (lottery tickets) with baselines", IMPConfig, run_imp,
               imp_report, "pruning", finish=_imp_finish, run_seeds=run_imp_seeds,
               stack_refusal=imp_stack_refusal),
    Experiment("prune", "prune at initialisation (SNIP, GraSP, SynFlow, magnitude, random), then train",
               PruneAtInitConfig, run_prune_at_init, prune_report, "pruning at initialisation",
               run_seeds=run_prune_at_init_seeds, stack_refusal=refusal_for),
    Experiment("sparse", "sparse training: dense, static, SET, RigL, gradual magnitude pruning", SparseTrainConfig,
               run_sparse_training, sparse_report, "sparse training", finish=_sparse_finish,
               run_seeds=run_sparse_training_seeds, stack_refusal=sparse_stack_refusal),
    Experiment("early-bird", "early-bird tickets: draw the ticket when its mask stops changing", EarlyBirdConfig,
               run_early_bird, early_bird_report, "early-bird tickets"),
    Experiment("supermask", "learned Bernoulli supermask of the frozen init (Zhou et al. 2019)", SupermaskConfig,
               run_supermask, supermask_report, "supermask", base=SUPERMASK_TRAIN, finish=_supermask_finish),
    Experiment("deconstruct", "Zhou et al.'s grid on one stored IMP run: mask criteria x mask-1 x mask-0 x kept "
               "fractions, one-shot from its trained dense network", DeconstructConfig, run_deconstruct,
               deconstruct_report, "grid", presets=False),  # data, model and training come from --source
    Experiment("transfer", "ticket transfer (Morcos et al.): a stored IMP run's tickets trained on another data set or "
               "with another optimiser, beside the target's own ticket and random controls", TransferConfig,
               run_transfer, transfer_report, "transfer", presets=False),  # training settings: the source's
    Experiment("tropical", "tropical pictures (Alfarra et al.): zonotopes and decision boundaries of a 2-h-2 net, its "
               "one-shot magnitude tickets, re-inits and pruned nets on moons / circles", TropicalConfig, run_tropical,
               tropical_report, "tropical", base=TROPICAL_TRAIN, threads=1, presets=False),
    Experiment("strong", "strong lottery tickets of a frozen U[-1, 1] net: genetic algorithm (Altmann et al.) or "
               "edge-popup, with edge-popup and backprop baselines", StrongConfig, run_strong, strong_report, "strong "
               "tickets", base=dict(dataset="moons"), threads=1, presets=False),
    Experiment("demo", "a small offline IMP experiment (digits) with report", IMPConfig, run_imp, imp_report,
               "pruning", base=DEMO, finish=_imp_finish, threads=1,  # tiny model: one thread is as fast
               intro="ticketlab demo: lottery tickets by IMP on scikit-learn's digits (offline, about 20 seconds).\n"
                     "Watch the winning ticket hold its accuracy as weights are removed while the same mask\n"
                     "with a fresh random init falls behind.\n"),
)}


def experiment_of(kind: str) -> Experiment:
    """The record that reports stored runs tagged ``kind`` (``config.json``'s "experiment")."""
    for e in EXPERIMENTS.values():
        if e.config_cls.experiment == kind:
            return e
    raise ConfigError(f"runs of kind {kind!r} are unknown to this version of ticketlab; "
                      f"known: {sorted({e.config_cls.experiment for e in EXPERIMENTS.values()})}")
