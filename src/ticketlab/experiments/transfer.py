"""Ticket transfer across data sets and optimisers (Morcos et al. 2019, "One ticket to win them all").

A ticket found by IMP on a source task is trained on a target task:

    source = a stored IMP run (reset init, or rewind: "late resetting")
    own    = IMP on the target with the source's pruning settings (an ordinary imp run; a control)
    for level L in the levels:
        mask   = the source's level-L mask on every covered layer
        start  = the source's reset weights (theta_0, or theta_k for late resetting)
        output layer: freshly initialised for the target's classes and dense (default, as the paper)
        train on the target:  ticket  (mask, start)
                              random  (a random mask with the ticket's layer densities, start)
                              reinit  (mask, a fresh random init)

The target's data must fit the source's model: its input is adapted only when asked
(``input_adapt``: resize images to the source resolution, replicate or average channels), and any
weight whose shape still differs is named in one error. Training settings are the source run's
unless a flag overrides them (the optimiser transfer: ``--optimizer sgd`` on an Adam ticket).
Every (level, branch) is a resumable unit; the run records its source and its own-ticket run.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import typing
import warnings
from dataclasses import dataclass, field, replace
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn

from ..config import ConfigError, DataConfig, IMPConfig, ModelConfig, TrainConfig, config_hash, option
from ..data import ArrayData, DataError
from ..masks import Mask
from ..prunable import UnprunedWeightsWarning, output_parameter_name
from ..pruning.selection import random_mask_like
from ..store import Store, StoreError, index_fields
from ..training import resolve_device
from .common import Log, Named, UnitContext, build_seeded_model, connectivity, prepare_data, running, train_unit
from .imp import derived_seed, run_imp, unit_name

TRANSFERABLE_RESETS = ("init", "rewind")
CONTROLS = ("own", "random", "reinit")
# Training settings a transfer may override; the others (fused optimiser, precision) are the source's.
_OVERRIDABLE = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "batch_size", "steps", "schedule",
                "milestones", "gamma", "warmup", "eval_every", "mask_gradients")


def _overrides_class() -> type:
    """``TrainOverrides``: TrainConfig's overridable fields, each None ("the source run's") by default,
    so the generated flags are the usual training flags and a flag left out inherits."""
    hints = typing.get_type_hints(TrainConfig)
    fields = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in _OVERRIDABLE:
            meta = {**f.metadata, "shown_default": "the source run's"}
            fields.append((f.name, Optional[hints[f.name]], field(default=None, metadata=meta)))
    cls = dataclasses.make_dataclass("TrainOverrides", fields, frozen=True, namespace={"cli_group": "training"})
    cls.__module__ = __name__
    return cls


TrainOverrides = _overrides_class()


@dataclass(frozen=True)
class TransferConfig:
    """One source ticket's levels trained on a target task, with the controls."""

    source: str = option("", "the stored IMP run whose tickets are transferred: its full 12-character hash (as "
                             "`ticketlab ls` shows it); its reset must be init or rewind (late resetting)",
                         flag="--from", dest="source", required=True)
    levels: tuple[int, ...] = option((), "the source's levels to transfer (0 = the dense network)",
                                     flag="--level", dest="levels", shown_default="every level of the source")
    weights: str = option("reset", "what the transferred ticket's weights start from: reset (the source's reset "
                                   "point: theta_0 for init, theta_k for rewind), init (theta_0 even for a rewind "
                                   "source)", choices=("reset", "init"))
    output: str = option("reinit", "the output layer on the target: reinit (fresh init for the target's classes, "
                                   "dense, as the paper) or transfer (the source's weights and mask; needs the same "
                                   "number of classes)", choices=("reinit", "transfer"))
    input_adapt: str = option("none", "fit the target's inputs to the source's input shape: none (a shape that "
                                      "differs is an error) or resize (bilinear resize to the source's height x "
                                      "width; 1 channel replicated to 3, 3 averaged to 1)", choices=("none", "resize"))
    dense_layers: tuple[str, ...] = option((), "source-masked weights kept dense on the target (e.g. fc1.weight)",
                                           flag="--dense-layer", dest="dense_layers", metavar="NAME")
    controls: tuple[str, ...] = option(CONTROLS, "controls at every level: own (the target's own IMP ticket, an "
                                                 "ordinary imp run with the source's pruning settings), random (a "
                                                 "random mask with the ticket's layer densities), reinit (the ticket's "
                                                 "mask, a fresh random init)", choices=CONTROLS, nargs="*")
    seed: int = option(0, "seed of the target training: data order, the fresh output layer, the controls")
    data: DataConfig = field(default_factory=DataConfig)
    overrides: TrainOverrides = field(default_factory=TrainOverrides, metadata={"hash": False})  # type: ignore[valid-type]
    # resolved by run_transfer: the source's training settings with the overrides (hashed)
    train: TrainConfig | None = field(default=None, metadata={"cli": False})
    model: Named = field(default=Named(), metadata={"hash": False, "cli": False})

    experiment = "transfer"

    def __post_init__(self) -> None:
        if len(self.source) != 12 or any(c not in "0123456789abcdef" for c in self.source):
            raise ConfigError(f"--from must be the full 12-character hash of a stored IMP run (as `ticketlab ls` "
                              f"shows it), got {self.source!r}")
        levels = tuple(sorted(set(int(level) for level in self.levels)))
        if any(level < 0 for level in levels):
            raise ConfigError(f"levels must be >= 0, got {list(self.levels)}")
        object.__setattr__(self, "levels", levels)
        for name, allowed in (("weights", ("reset", "init")), ("output", ("reinit", "transfer")),
                              ("input_adapt", ("none", "resize"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        object.__setattr__(self, "controls", tuple(self.controls))
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise ConfigError(f"controls {unknown} are unknown; choose from {CONTROLS}")
        object.__setattr__(self, "dense_layers", tuple(sorted(set(self.dense_layers))))


def resolve_train(source: TrainConfig, overrides: Any) -> TrainConfig:
    """The source's training settings with every override that was given."""
    given = {f.name: getattr(overrides, f.name) for f in dataclasses.fields(overrides)
             if getattr(overrides, f.name) is not None}
    if "optimizer" in given and given["optimizer"] != source.optimizer and "momentum" not in given:
        given["momentum"] = 0.0  # SGD's momentum does not carry to Adam (and Adam has none to give SGD)
        given.setdefault("nesterov", False)
    return replace(source, **given)


# ---- the source ticket ------------------------------------------------------------------------

@dataclass
class Source:
    """What a transfer takes from its source IMP run."""

    run: Any
    config: IMPConfig
    input_shape: tuple[int, ...]
    levels: list[int]

    def mask(self, level: int, dense: Mask) -> Mask:
        if level == 0:
            return dense
        return Mask.load(self.run.file(f"level_{level:02d}", "mask.safetensors"), require_checksum=True)

    def start_weights(self, which: str) -> dict[str, torch.Tensor]:
        if which == "init" or self.config.reset == "init":
            return self.run.load_tensors("init.safetensors")
        return self.run.load_tensors("rewind.safetensors")


def load_source(store: Store, config: TransferConfig) -> Source:
    """The source IMP run, checked: an IMP run with a transferable reset, the levels present."""
    from ..config import imp_config_from_dict

    run = store.run(config.source)
    if run.hash != config.source:
        raise StoreError(f"--from {config.source!r} names run {run.hash}; give its full hash")
    described = run.read_json("config.json")
    if described.get("experiment") != "imp":
        raise StoreError(f"run {run.hash} is a {described.get('experiment')!r} run; --from needs an imp run")
    imp = imp_config_from_dict(described["config"])
    if imp.reset not in TRANSFERABLE_RESETS:
        raise ConfigError(f"run {run.hash} resets with {imp.reset!r}: a transferable ticket is a mask with the weights "
                          f"it restarts from, which only {' and '.join(TRANSFERABLE_RESETS)} (late resetting) define")
    if imp.mask0 != "zero":
        raise ConfigError(f"run {run.hash} holds pruned weights at {imp.mask0!r} (mask-0); transfer takes tickets whose "
                          "pruned weights are zero")
    available = [0] + [lv for lv in range(1, imp.levels + 1)
                       if run.file(f"level_{lv:02d}", "mask.safetensors").exists()]
    if config.levels:
        missing = [lv for lv in config.levels if lv not in available]
        if missing:
            raise StoreError(f"run {run.hash} has no level {missing} mask yet (it has levels {available}); run or "
                             "finish it first, or choose other --level values")
        levels = list(config.levels)
    else:
        if run.complete_summary() is None:
            raise StoreError(f"run {run.hash} is not complete; finish it, or name the levels it has with --level "
                             f"(it has {available})")
        levels = available
    if not run.file("init.safetensors").exists():
        raise StoreError(f"run {run.hash} has no init.safetensors; it has not started training")
    if imp.reset == "rewind" and config.weights == "reset" and not run.file("rewind.safetensors").exists():
        raise StoreError(f"run {run.hash} has no rewind point (rewind.safetensors) yet; finish its dense training")
    source_data, _ = prepare_data(replace(imp.data, val_size=0), imp.seed)
    return Source(run, imp, source_data.input_shape, levels)


# ---- fitting the target to the source's model ---------------------------------------------------

def input_adapter(name: str, have: tuple[int, ...], shape: tuple[int, ...], how: str,
                  tokens: bool = False) -> Callable[[ArrayData], ArrayData]:
    """A function giving a split of the target ``name`` (samples of shape ``have``) the source's
    input ``shape``: the identity when they agree, else the resize ``how`` asks for, else one error."""
    if have == shape:
        return lambda part: part
    if math.prod(have) == math.prod(shape) and 1 in (len(have), len(shape)) and not tokens:
        # the same values, flat or as an image (row-major): a reshape, no adaptation needed
        return lambda part: ArrayData(part.x.reshape(len(part), *shape), part.y)
    if how == "none":
        raise DataError(f"the target {name!r} has inputs of shape {have}, the source's model takes {shape}; use "
                        f"--input-adapt resize (images: bilinear resize, channels replicated or averaged) or a data "
                        f"option giving that shape (digits: size=28)")
    if len(have) != 3 or len(shape) != 3 or tokens:
        raise DataError(f"--input-adapt resize fits images (C, H, W) to images; the target's inputs are {have} and "
                        f"the source's {shape}")
    channels, height, width = shape
    if have[0] != channels and 1 not in (have[0], channels):
        raise DataError(f"--input-adapt resize maps 1 channel to {channels} or {have[0]} to 1, not {have[0]} to "
                        f"{channels}")

    def fit(part: ArrayData) -> ArrayData:
        x = part.x
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
        if tuple(x.shape[2:]) != (height, width):
            x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return ArrayData(x.contiguous(), part.y)

    return fit


def output_entries(model: nn.Module) -> list[str]:
    """The state-dict entries of the output layer (the module of the last prunable weight)."""
    module = output_parameter_name(model).rpartition(".")[0]
    return [k for k in model.state_dict() if k.rpartition(".")[0] == module]


def transferred_state(target: nn.Module, start: dict[str, torch.Tensor], output: str) -> dict[str, torch.Tensor]:
    """The target model's start state: every entry from the source's start weights but the output
    layer's (kept from the target's fresh init) when ``output`` is reinit; one error names every
    entry whose shape does not fit."""
    state = target.state_dict()
    fresh = set(output_entries(target)) if output == "reinit" else set()
    wrong = [f"{k}: source {tuple(start[k].shape)}, target {tuple(v.shape)}" for k, v in state.items()
             if k not in fresh and k in start and start[k].shape != v.shape]
    missing = [k for k in state if k not in fresh and k not in start]
    if wrong or missing:
        hint = ("the output layer: the target has another number of classes; use --output reinit"
                if output == "transfer" and any(k in output_entries(target) for k in
                                                [w.split(":")[0] for w in wrong]) else
                "the input: see --input-adapt, or a data option giving the source's input shape")
        raise ConfigError("the source ticket does not fit the target's model: " + "; ".join(wrong + [
            f"{k}: not in the source" for k in missing]) + f" (check {hint})")
    return {k: (v if k in fresh else start[k].clone()) for k, v in state.items()}


def transferred_mask(source_mask: Mask, target: nn.Module, output: str, dense_layers: tuple[str, ...]) -> Mask:
    """The source mask on the covered layers: all but the output layer (reinit) and ``dense_layers``."""
    unknown = [n for n in dense_layers if n not in source_mask]
    if unknown:
        raise ConfigError(f"--dense-layer {unknown}: not weights the source masks ({list(source_mask)})")
    skip = set(dense_layers) | (set(output_entries(target)) if output == "reinit" else set())
    covered = {n: t for n, t in source_mask.items() if n not in skip}
    if not covered:
        raise ConfigError("the transferred mask covers no layer: every masked weight is the output layer or a "
                          "--dense-layer")
    mask = Mask(covered)
    mask.check_fits(target)
    return mask


# ---- the procedure -------------------------------------------------------------------------------

def own_imp_config(config: TransferConfig, source: Source, train: TrainConfig) -> IMPConfig:
    """The control "own": IMP on the target with the source's pruning settings, the transfer's seed
    and training settings, down to the deepest level transferred (no baselines of its own)."""
    s = source.config
    return IMPConfig(data=config.data, model=ModelConfig(s.model.name, dict(s.model.options)), train=train,
                     prune=s.prune, levels=max(source.levels), reset=s.reset, rewind_step=s.rewind_step,
                     baselines=(), seed=config.seed)


def run_transfer(config: TransferConfig, store: Store, *, device: str | torch.device | None = None,
                 progress: bool = True, log: Log = print) -> list[dict[str, Any]]:
    """Run (or continue) the transfer; one row per (level, branch), the own-ticket rows included."""
    source = load_source(store, config)
    train = resolve_train(source.config.train, config.overrides)
    if config.train is not None and config.train != train:
        if any(getattr(config.overrides, f.name) is not None for f in dataclasses.fields(config.overrides)):
            raise ConfigError("give the target's training settings either as a whole (train=TrainConfig(...)) or "
                              "as overrides of the source's, not both")
        train = config.train
    object.__setattr__(config, "train", train)
    object.__setattr__(config, "model", Named(source.config.model.name))
    data, validation = prepare_data(config.data, config.seed)
    fit = input_adapter(data.name, data.input_shape, source.input_shape, config.input_adapt, data.train.is_tokens)
    data = replace(data, train=fit(data.train), test=fit(data.test), input_shape=source.input_shape)
    validation = None if validation is None else fit(validation)
    model_cfg = source.config.model
    target = build_seeded_model(model_cfg, data, config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnprunedWeightsWarning)
        source_dense = Mask.dense(target, **source.config.prune.prunable_options)
    start = source.start_weights(config.weights)
    transferred_state(target, start, config.output)  # a ticket that cannot fit stops here, before the store
    transferred_mask(source_dense, target, config.output, config.dense_layers)
    dev = resolve_device(device)

    own_rows: dict[int, dict[str, Any]] = {}
    own_hash = None
    if "own" in config.controls:
        own_cfg = own_imp_config(config, source, train)
        log(f"control 'own': IMP on the target ({config.data.name}), an ordinary imp run")
        for row in run_imp(own_cfg, store, device=dev, progress=progress, log=log):
            if row["branch"] == "ticket":
                own_rows[row["level"]] = row
        own_hash = config_hash(own_cfg)

    with running(store, config, log) as run:
        if (done := run.complete_summary()) is not None:
            log(f"transfer run {run.hash} is complete; nothing recomputed")
            return done["rows"]
        log(f"transfer run {run.hash} in {run.path}: IMP run {source.run.hash} ({source.config.data.name}, "
            f"{source.config.train.optimizer}) -> {config.data.name} ({train.optimizer}), levels {source.levels}")
        ctx = UnitContext(run, data, validation, train, config.seed, dev, progress, log)
        rows: list[dict[str, Any]] = []
        for level in source.levels:
            source_mask = source.mask(level, source_dense)
            mask = transferred_mask(source_mask, target, config.output, config.dense_layers)
            common = {"level": level, "source_density": source_mask.density}
            branches = [("ticket", mask, transferred_state(target, start, config.output))]
            if level > 0:
                if "random" in config.controls:
                    g = torch.Generator().manual_seed(derived_seed(config.seed, "random", level))
                    branches.append(("random", random_mask_like(mask, g), transferred_state(target, start, config.output)))
                if "reinit" in config.controls:
                    fresh = build_seeded_model(model_cfg, data, derived_seed(config.seed, "reinit", level))
                    branches.append(("reinit", mask, fresh.state_dict()))
            for branch, m, state in branches:
                model = build_seeded_model(model_cfg, data, config.seed)
                model.load_state_dict(state)
                conn, _ = connectivity(model, m, data)
                summary = train_unit(ctx, unit_name(level, branch), model, m, start_step=0, extra_summary=conn)
                rows.append({**common, "branch": branch, **_row(summary)})
            if level in own_rows:
                rows.append({**common, "branch": "own", **_row(own_rows[level])})
        deepest = [r for r in rows if r["branch"] == "ticket"][-1]  # what `ls` shows of the run
        summary = {"source": source.run.hash, "own_run": own_hash, "rows": rows, "levels_done": deepest["level"],
                   "density": deepest["density"], "final_test_accuracy": deepest["final_test_accuracy"],
                   "source_data": source.config.data.name, "source_optimizer": source.config.train.optimizer,
                   "target_data": config.data.name, "target_optimizer": train.optimizer}
        run.mark_complete(summary)
        run.update_index(status="complete", summary=index_fields(summary))
    return rows


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("density", "final_test_accuracy", "max_test_accuracy", "test_accuracy_at_early_stop", "early_stop_step",
            "effective_density")
    return {k: summary.get(k) for k in keys}


# ---- report --------------------------------------------------------------------------------------

BRANCH_STYLE = {"ticket": ("transferred ticket", "tab:blue", "o-"), "own": ("target's own ticket", "tab:green", "s--"),
                "random": ("random mask (ticket's layer densities)", "tab:gray", "^:"),
                "reinit": ("transferred mask, random re-init", "tab:red", "v:")}


def _label(summary: dict[str, Any]) -> str:
    return (f"{summary['source_data']} ({summary['source_optimizer']}) -> {summary['target_data']} "
            f"({summary['target_optimizer']})")


def transfer_table(groups: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean, std and count of final test accuracy per (group, level, branch) over the group's runs."""
    out = []
    for label, summaries in groups.items():
        cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for s in summaries:
            for r in s["rows"]:
                cells.setdefault((r["level"], r["branch"]), []).append(r)
        for (level, branch), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], list(BRANCH_STYLE).index(kv[0][1]))):
            accs = [r["final_test_accuracy"] for r in rs]
            mean = statistics.fmean(accs)
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            out.append({"transfer": label, "level": level, "branch": branch,
                        "remaining_percent": 100 * sum(r["source_density"] for r in rs) / len(rs),
                        "mean": mean, "std": std, "n": len(accs)})
    return out


def transfer_report(runs, plot) -> tuple[str, list]:
    """Transfer runs grouped by (source data, optimiser) -> (target data, optimiser): the exact table
    (mean ± std over the group's runs, i.e. seeds) and one panel per group of final test accuracy vs.
    the source ticket's remaining weights, the ticket beside the own ticket and the two random controls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis.report import _save

    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        summary = run.read_json("summary.json")
        groups.setdefault(_label(summary), []).append({**summary, "hash": run.hash})
    table = transfer_table(groups)
    lines = []
    for label, summaries in groups.items():
        lines += [f"### transfer {label}", "",
                  f"runs: {', '.join(s['hash'][:8] for s in summaries)}; sources: "
                  f"{', '.join(s['source'][:8] for s in summaries)}; own-ticket runs: "
                  f"{', '.join((s['own_run'] or '-')[:8] for s in summaries)}", "",
                  "| level | remaining % (source ticket) | branch | final test acc (mean ± std) | n |", "|---|---|---|---|---|"]
        for r in table:
            if r["transfer"] == label:
                lines.append(f"| {r['level']} | {r['remaining_percent']:.2f} | {r['branch']} | "
                             f"{r['mean']:.4f} ± {r['std']:.4f} | {r['n']} |")
        lines.append("")
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, label in zip(axes.flat, groups):
        for branch, (name, color, style) in BRANCH_STYLE.items():
            pts = [r for r in table if r["transfer"] == label and r["branch"] == branch]
            if not pts:
                continue
            xs = [r["remaining_percent"] for r in pts]
            ax.errorbar(xs, [r["mean"] for r in pts], yerr=[r["std"] for r in pts], fmt=style, color=color,
                        label=name, capsize=3, markersize=4)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining in the source ticket (%)")
        ax.set_ylabel("final test accuracy (target)")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return "\n".join(lines), [_save(fig, plot)]


__all__ = ["TransferConfig", "TrainOverrides", "input_adapter", "load_source", "resolve_train", "run_transfer",
           "transfer_report", "transfer_table", "transferred_mask", "transferred_state"]
