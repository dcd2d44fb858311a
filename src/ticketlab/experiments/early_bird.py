"""Early-bird tickets (You et al., ICLR 2020): draw the ticket as soon as its mask stops moving.

Units of a run:
- ``search``: (cheap) training with the detector; stops when the ticket is drawn;
- ``full``: the usual full training with the same detector recording every epoch's mask (for the
  distance matrix, and the ticket "from full training" at the same ratio);
- ``ticket_retrain`` / ``full_retrain``: each ticket retrained for the full schedule. Channel
  tickets are physically smaller models (``pruning/channels.py``); unstructured tickets stay masked.

Per-epoch masks are stored in the run folder, so a resumed search rebuilds its distance history.
Unstructured tickets cover the weights ``include`` / ``exclude`` choose (raw parameters,
embeddings besides the Linear/Conv weights); their retraining units record, and the run logs, the
ticket's effective density and collapsed layers.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_weights, save_weights
from ..config import EarlyBirdConfig
from ..integrity import verify_safetensors
from ..masks import Mask
from ..prunable import UnprunedWeightsWarning
from ..pruning.channels import channel_mask_distance, channel_mask_from_bn, shrink
from ..pruning.selection import keep_top
from ..store import Run, Store, StoreError, index_fields, load_tensors, save_tensors
from ..training import Callback, Trainer, resolve_device
from ..analysis.flops import dense_forward_flops, forward_flops
from .common import running, Log, UnitContext, build_seeded_model, connectivity, connectivity_line, example_input, \
    load_or_save_init, prepare_data, train_unit, training_length

AnyMask = dict[str, torch.Tensor]


def slimming_penalty(strength: float):
    """Network slimming's L1 penalty on every BatchNorm scale: strength * sum |gamma|."""
    def penalty(model: nn.Module) -> torch.Tensor:
        scales = [m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
        return strength * sum(s.abs().sum() for s in scales) if scales else torch.zeros(())
    return penalty


def current_mask(model: nn.Module, kind: str, prune_ratio: float, **prunable: Any) -> AnyMask:
    """The ticket's mask if it were drawn now: BN channels (global |gamma|) or weights (global |w|).

    ``prunable`` (``include`` / ``exclude``) chooses the weights of an unstructured mask.
    """
    if kind == "channel":
        return channel_mask_from_bn(model, prune_ratio)
    dense = Mask.dense(model, **prunable)
    params = dict(model.named_parameters())
    scores = {n: params[n].detach().abs().cpu() for n in dense}
    keep = int(round(dense.num_total * (1.0 - prune_ratio)))
    return dict(keep_top(scores, dense, {tuple(dense): keep}).items())


def mask_distance(a: AnyMask, b: AnyMask) -> float:
    """Normalised Hamming distance between two masks of the same kind (0 equal, 1 complements)."""
    return channel_mask_distance(a, b)


class EarlyBirdDetector:
    """Trainer callback at every epoch end: record the mask and its distance to the previous
    epoch's; draw the ticket once the last ``window`` distances are all below ``epsilon``."""

    def __init__(self, cfg: EarlyBirdConfig, iterations_per_epoch: int, mask_dir: Path, ticket_path: Path | None):
        self.cfg = cfg
        self.ipe = iterations_per_epoch
        self.mask_dir = mask_dir
        self.ticket_path = ticket_path  # where to save the weights at the draw; None: record only, never stop
        self.masks: dict[int, AnyMask] = {}
        self.drawn_epoch: int | None = None
        for f in sorted(mask_dir.glob("epoch_*.safetensors")):  # resume: rebuild the history
            self._record(int(f.stem.split("_")[1]), {k: v.bool() for k, v in load_tensors(f).items()})

    @property
    def distances(self) -> list[float]:
        """d(epoch e, epoch e-1) for every recorded epoch after the first."""
        epochs = sorted(self.masks)
        return [mask_distance(self.masks[a], self.masks[b]) for a, b in zip(epochs[1:], epochs)]

    def _record(self, epoch: int, mask: AnyMask) -> bool:
        self.masks[epoch] = mask
        d = self.distances
        if self.drawn_epoch is None and len(d) >= self.cfg.window and max(d[-self.cfg.window:]) < self.cfg.epsilon:
            self.drawn_epoch = epoch
            return True
        return False

    def __call__(self, trainer: Trainer, step: int) -> None:
        if step == 0 or step % self.ipe:
            return
        epoch = step // self.ipe
        prunable = {k: v for k, v in self.cfg.prunable_options.items() if v}  # only the options given
        with warnings.catch_warnings():  # run_early_bird warned once about weights left dense
            warnings.simplefilter("ignore", UnprunedWeightsWarning)
            mask = current_mask(trainer.model, self.cfg.kind, self.cfg.prune_ratio, **prunable)
        save_tensors(self.mask_dir / f"epoch_{epoch:03d}.safetensors", {k: v.to(torch.uint8) for k, v in mask.items()})
        self._record(epoch, mask)
        # Compare with the state, not _record's answer: a resumed search reloads the masks of epochs
        # it will replay, so it knows its draw epoch before it gets there again.
        if self.drawn_epoch == epoch and self.ticket_path is not None:
            save_weights(trainer.model, self.ticket_path)
            trainer.request_stop()


def distance_matrix(masks: dict[int, AnyMask]) -> tuple[list[int], list[list[float]]]:
    epochs = sorted(masks)
    return epochs, [[mask_distance(masks[a], masks[b]) for b in epochs] for a in epochs]


def _search(cfg: EarlyBirdConfig, ctx: UnitContext, run: Run, init: dict, cheap: bool) -> tuple[dict, EarlyBirdDetector]:
    """Train with the detector: the cheap search (stops at the draw) or the full reference run."""
    unit = "search" if cheap else "full"
    train = cfg.train
    if cheap:
        train = replace(train, lr=cfg.search_lr or train.lr, precision=cfg.search_precision)
    model = build_seeded_model(cfg.model, ctx.data, cfg.seed)
    model.load_state_dict(init)
    detector = EarlyBirdDetector(cfg, ctx.iterations_per_epoch, run.file(unit, "masks"),
                                 run.file(unit, "ticket_weights.safetensors") if cheap else None)
    end_step = None
    if cheap and detector.drawn_epoch is not None and not run.is_complete(unit):
        # Killed after the draw step's checkpoint: a resumed Trainer does not rerun that step's
        # callbacks, so the detector would never stop it. End the search at the draw instead.
        draw_step = detector.drawn_epoch * ctx.iterations_per_epoch
        if _checkpoint_step(run.file(unit, "checkpoint.safetensors")) == draw_step:
            end_step = draw_step
    summary = train_unit(replace(ctx, train=train), unit, model, None, start_step=0, end_step=end_step,
                         callbacks=[Callback(detector, every=ctx.iterations_per_epoch)],
                         regularizer=slimming_penalty(cfg.slimming) if cfg.kind == "channel" else None)
    return summary, detector


def _checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint was taken at; None when there is none (or it is unreadable: the
    resume reports that)."""
    try:
        return int(verify_safetensors(path.read_bytes(), path)["step"])
    except (OSError, KeyError, ValueError, StoreError):
        return None


def _retrain(cfg: EarlyBirdConfig, ctx: UnitContext, unit: str, source_weights: Path, mask: AnyMask) -> dict[str, Any]:
    """Retrain a ticket for the full schedule: a shrunk model (channel) or a masked one."""
    model = build_seeded_model(cfg.model, ctx.data, cfg.seed)
    load_weights(model, source_weights)
    if cfg.retrain_from == "reinit":
        model = build_seeded_model(cfg.model, ctx.data, cfg.seed + 7919)
    example = example_input(ctx.data)
    if cfg.kind == "channel":
        small = shrink(model, mask, example_input=example)
        summary = train_unit(ctx, unit, small, None, start_step=0)
        return {**summary, "parameters": sum(p.numel() for p in small.parameters()),
                "forward_flops": forward_flops(small, ctx.data.input_shape, example_input=example)}
    weight_mask = Mask(mask)
    conn, _ = connectivity(model, weight_mask, ctx.data)
    ctx.log(connectivity_line(f"{unit} ticket", weight_mask, conn))
    summary = train_unit(ctx, unit, model, weight_mask, start_step=0, extra_summary=conn)
    pruned = weight_mask.num_total - weight_mask.num_kept  # counted like dense_parameters: every parameter
    return {**summary, "parameters": sum(p.numel() for p in model.parameters()) - pruned,
            "forward_flops": forward_flops(model, ctx.data.input_shape, weight_mask, example_input=example)}


def run_early_bird(config: EarlyBirdConfig, store: Store, *, device: str | torch.device | None = None,
                   progress: bool = True, log: Log = print) -> dict[str, Any]:
    """Run (or continue) an early-bird experiment; returns the comparison summary."""
    data, validation = prepare_data(config.data, config.seed)
    model = build_seeded_model(config.model, data, config.seed)
    if config.kind == "channel":
        # Fails clearly for models without prunable BN; with Torch-Pruning installed this also traces
        # (and caches) the model's dependency graph on a real input for the per-epoch masks.
        channel_mask_from_bn(model, config.prune_ratio, example_input=example_input(data))
    else:
        Mask.dense(model, **config.prunable_options)  # checks include / exclude, names weights left dense
    ipe, total = training_length(config.train, data)
    epochs = total // ipe
    if epochs < config.window + 1:
        raise ValueError(f"training lasts {epochs} epochs; the detector needs at least window + 1 = "
                         f"{config.window + 1} epochs to compare masks")
    dev = resolve_device(device)
    with running(store, config, log) as run:
        if (done := run.complete_summary()) is not None:
            log(f"early-bird run {run.hash} is complete; nothing recomputed")
            return {k: v for k, v in done.items() if k != "status"}
        log(f"early-bird run {run.hash} in {run.path} ({config.data.name}, {config.model.name}, {config.kind}, "
            f"sparsity {config.prune_ratio})")
        load_or_save_init(run, model)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        ctx = UnitContext(run, data, validation, config.train, config.seed, dev, progress, log,
                          prunable=config.prunable_options if config.kind == "unstructured" else {})
        search, detector = _search(config, ctx, run, init, cheap=True)
        full, reference = _search(config, ctx, run, init, cheap=False)
        drawn = detector.drawn_epoch
        if drawn is None:
            log("no early-bird ticket drawn during the search: using the mask at its end")
            drawn = max(detector.masks)
            save_weights_from = run.file("search", "final.safetensors")
        else:
            save_weights_from = run.file("search", "ticket_weights.safetensors")
        log(f"early-bird ticket drawn at epoch {drawn}; retraining it and the full-training ticket")
        ticket = _retrain(config, ctx, "ticket_retrain", save_weights_from, detector.masks[drawn])
        full_ticket = _retrain(config, ctx, "full_retrain", run.file("full", "final.safetensors"),
                               reference.masks[max(reference.masks)])
        summary = _costs(config, model, data, ipe, total, drawn, search, full, ticket, full_ticket, reference)
        epochs_list, matrix = distance_matrix(reference.masks)
        run.write_json({"epochs": epochs_list, "distances": matrix}, "distance_matrix.json")
        run.mark_complete(summary)  # last: marks the run complete
        run.update_index(status="complete", summary=index_fields(summary))
    return summary


def _costs(cfg: EarlyBirdConfig, model: nn.Module, data, ipe: int, total: int, drawn: int, search: dict,
           full: dict, ticket: dict, full_ticket: dict, reference: EarlyBirdDetector) -> dict[str, Any]:
    """Epochs and training FLOPs (3 x forward per sample) of early-bird vs. train-prune-retrain."""
    samples_per_epoch = ipe * cfg.train.batch_size
    f_dense = dense_forward_flops(model, data.input_shape, example_input=example_input(data))
    epochs = total // ipe
    search_flops = 3 * f_dense * samples_per_epoch * drawn
    full_flops = 3 * f_dense * samples_per_epoch * epochs
    retrain_eb = 3 * ticket["forward_flops"] * samples_per_epoch * epochs
    retrain_full = 3 * full_ticket["forward_flops"] * samples_per_epoch * epochs
    would_draw = next((e for e in sorted(reference.masks)
                       if _fires(reference, e)), None)
    return {
        "kind": cfg.kind, "prune_ratio": cfg.prune_ratio, "epochs": epochs, "drawn_epoch": drawn,
        "full_run_would_draw_at": would_draw,
        "search_epochs": drawn, "dense_test_accuracy": full["final_test_accuracy"],
        "search_test_accuracy_at_draw": search["final_test_accuracy"],
        "ticket_test_accuracy": ticket["final_test_accuracy"],
        "full_ticket_test_accuracy": full_ticket["final_test_accuracy"],
        "dense_parameters": sum(p.numel() for p in model.parameters()),
        "ticket_parameters": ticket["parameters"], "full_ticket_parameters": full_ticket["parameters"],
        "ticket_density": ticket["parameters"] / sum(p.numel() for p in model.parameters()),
        "dense_forward_flops": f_dense, "ticket_forward_flops": ticket["forward_flops"],
        "full_ticket_forward_flops": full_ticket["forward_flops"],
        "early_bird_training_flops": search_flops + retrain_eb,
        "standard_training_flops": full_flops + retrain_full,
        "training_flops_saved": 1.0 - (search_flops + retrain_eb) / (full_flops + retrain_full),
        "search_flops_saved": 1.0 - search_flops / full_flops,
        "final_distances": reference.distances[-cfg.window:],
        **({f"{which}_{k}": unit[k] for which, unit in (("ticket", ticket), ("full_ticket", full_ticket))
            for k in ("effective_density", "collapsed_layers") if k in unit} if cfg.kind == "unstructured" else {}),
    }


def _fires(detector: EarlyBirdDetector, epoch: int) -> bool:
    """Would the detector have drawn at ``epoch`` given the masks up to it?"""
    epochs = [e for e in sorted(detector.masks) if e <= epoch]
    d = [mask_distance(detector.masks[a], detector.masks[b]) for a, b in zip(epochs[1:], epochs)]
    return len(d) >= detector.cfg.window and max(d[-detector.cfg.window:]) < detector.cfg.epsilon


