"""A learned Bernoulli supermask of the frozen init as a stored run (``ticketlab supermask``).

One run = one :class:`~ticketlab.config.SupermaskConfig`. The model is built from the seed and its
init stored (``init.safetensors``); ``train_bernoulli_supermask`` trains the mask logits (the
weights never change), then the run stores

- ``mask.safetensors``: the deterministic mask ``sigmoid(s) > 0.5`` (``Mask.save``),
- ``logits.safetensors``: the trained logits ``s`` under the masked parameters' names,
- ``metrics.jsonl``: per epoch train/test loss, sampled test accuracy, expected and deterministic density,
- ``summary.json`` (written last, marks the run complete): test accuracy as the mean over
  ``eval_samples`` sampled masks and per sample, the deterministic mask's accuracy, densities, seconds.

There is no mid-training checkpoint: a run killed before its summary is written trains again from
its stored init, and as everything is seeded (init, batch order, mask samples) it writes the same
files an uninterrupted run would. A complete run is returned from the store without recomputing.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ..config import SupermaskConfig
from ..masks import Mask
from ..pruning.bernoulli_supermask import train_bernoulli_supermask
from ..store import Store, index_fields
from ..training import resolve_device
from .common import Log, build_seeded_model, load_or_save_init, prepare_data, running, training_length


def run_supermask(
    config: SupermaskConfig,
    store: Store,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Run (or return the stored result of) one supermask experiment; returns its summary.

    ``progress`` is accepted for the common signature; the supermask trainer draws no progress bar
    (the log says when training starts and what it gave). A run killed before it completed is trained
    again from its stored init (no mid-training checkpoint), giving the same files.
    """
    data, _ = prepare_data(config.data, config.seed)  # val_size is 0 (SupermaskConfig refuses others)
    model = build_seeded_model(config.model, data, config.seed)  # validates the model before the store is touched
    training_length(config.train, data)  # a batch larger than the training set is refused here
    dev = resolve_device(device)
    with running(store, config, log) as run:
        if (done := run.complete_summary()) is not None:
            log(f"supermask run {run.hash} is complete; nothing recomputed")
            return {k: v for k, v in done.items() if k != "status"}
        log(f"supermask run {run.hash} in {run.path} ({config.data.name}, {config.model.name}, "
            f"weight init {config.weight_init}, dynamic scaling {config.dynamic_scaling}, {config.epochs} epochs)")
        load_or_save_init(run, model)
        t = config.train
        started = time.perf_counter()
        result = train_bernoulli_supermask(
            model, data, epochs=config.epochs, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
            batch_size=t.batch_size, seed=config.seed, optimizer=t.optimizer, schedule=t.schedule,
            weight_init=config.weight_init, dynamic_scaling=config.dynamic_scaling,
            eval_samples=config.eval_samples, device=dev, include=config.include, exclude=config.exclude)
        seconds = time.perf_counter() - started
        mask: Mask = result["mask"]  # the deterministic mask (a Mask is always on the CPU)
        logits = {name: s.detach().cpu().clone() for name, s in result["supermask"].named_logits().items()}
        accs = result["test_accuracies"]
        summary = {
            "weight_init": config.weight_init,
            "dynamic_scaling": config.dynamic_scaling,
            "epochs": config.epochs,
            "eval_samples": config.eval_samples,
            "test_accuracy": result["test_accuracy"],  # mean over the sampled masks (the authors' number)
            "final_test_accuracy": result["test_accuracy"],  # the name ``ticketlab ls`` shows
            "test_accuracy_min": min(accs) if accs else None,
            "test_accuracy_max": max(accs) if accs else None,
            "test_accuracies": accs,
            "test_loss": result["test_loss"],
            "test_losses": result["test_losses"],
            "sampled_densities": result["sampled_densities"],
            "deterministic_test_accuracy": result["deterministic_test_accuracy"],
            "deterministic_test_loss": result["deterministic_test_loss"],
            "density": mask.density,
            "kept": mask.num_kept,
            "total": mask.num_total,
            "layer_density": mask.densities(),
            "expected_density": result["expected_density"],
            "seconds": seconds,
        }
        mask.save(run.file("mask.safetensors"))
        run.save_tensors(logits, "logits.safetensors")
        run.write_jsonl(result["history"], "metrics.jsonl")
        run.mark_complete(summary)  # written last: marks the run complete
        run.update_index(status="complete", summary=index_fields(summary))
        log(f"  supermask: test acc {summary['test_accuracy']:.4f} (mean of {config.eval_samples} sampled masks), "
            f"deterministic mask {summary['deterministic_test_accuracy']:.4f}, density {mask.density:.4f}, "
            f"{seconds:.1f} s")
    return summary
