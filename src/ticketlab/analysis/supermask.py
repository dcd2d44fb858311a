"""Supermasks on the untrained init (Zhou et al. 2019, "Deconstructing Lottery Tickets", Sec. 5).

A mask criterion over (w_init, w_final) (``pruning/criteria.py``) picks, one shot from the dense
mask, the weights to keep at each kept fraction; the mask is applied to theta_0, the *untrained*
init, and that network is evaluated as it is, with no training. Zhou et al. report that the
``large_final_same_sign`` mask alone lifts an untrained LeNet-300-100 to 86% on MNIST.

What the authors' code does (uber-research/deconstructing-lottery-tickets at dbad201), and so the
default here:

- ``get_init_loss_train_lottery.py`` (the "init accuracy" of every mask scenario, default prefix
  ``all_init_accuracy_``, line 61): with ``--exp none`` (lines 283-285) every trainable variable is
  loaded with the *initial* weights as they are, and the network is ``build_masked_fc_lottery``
  (line 256; ``network_builders.py`` 37-47), whose ``MaskedDense`` (``masked_layers.py`` 20-40)
  computes with ``kernel * mask`` and nothing else: **no rescaling** of the kept weights. The test
  accuracy/loss is measured on the whole test set (lines 165, 244-245).
- The mask is ``get_weight_init.py``'s: the criterion's score (``large_final_same_sign``: |w_f|, 0
  where the sign changed, lines 153-165) pruned **layer by layer** (``get_mask_by_layer_by_weight``,
  lines 36-52) from the dense mask (a dummy all-ones mask when the weights file holds none, line
  120); biases are never masked (line 101), so they stay at their init.
- "Dynamic weight rescaling" (multiply a layer's masked kernel by size / kept) exists in the code
  only for the *learned* Bernoulli supermask (``masked_networks.py`` lines 236-239, ``train_supermask.py
  --dynamic_scaling``). Here it is the option ``rescale=True``, off by default.

Differences from the code, by design: counts are ``round(n * kept_fraction)`` per layer (IMP's
rounding, ``pruning/magnitude.py``; the code prunes ``int(n * (1 - kept))``, i.e. keeps one more
when n * (1 - kept) is fractional), ties fall to ``keep_top``'s deterministic rule, ``random`` draws
from a seeded generator, and ``scope="global"`` ranks all masked layers together (the code is
layer-wise only). Every kept fraction is cut from the same scores, so the masks of one criterion are
nested (a smaller fraction keeps a subset of a larger one's weights).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..data import ArrayData, DataSplits
from ..masks import Mask
from ..pruning.criteria import criterion_scores
from ..pruning.selection import keep_top
from ..training import evaluate

SCOPES = ("layerwise", "global")


def kept_counts(mask: Mask, kept_fraction: float, scope: str = "layerwise") -> dict[tuple[str, ...], int]:
    """``keep_top`` groups for one kept fraction: one per layer (``layerwise``) or one over all layers
    (``global``), each keeping ``round(size * kept_fraction)`` weights."""
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} is unknown; choose one of {SCOPES}")
    if not 0.0 <= kept_fraction <= 1.0:
        raise ValueError(f"kept fraction must be in [0, 1], got {kept_fraction}")
    if scope == "layerwise":
        return {(n,): int(round(mask[n].numel() * kept_fraction)) for n in mask}
    return {tuple(mask): int(round(mask.num_total * kept_fraction))}


def supermask(
    criterion: str,
    init: Mapping[str, torch.Tensor],
    final: Mapping[str, torch.Tensor],
    dense: Mask,
    kept_fraction: float,
    *,
    scope: str = "layerwise",
    generator: torch.Generator | None = None,
) -> Mask:
    """The one-shot mask of ``criterion`` at ``kept_fraction`` over the parameters of ``dense``."""
    scores = criterion_scores(criterion, init, final, dense, generator)
    return keep_top(scores, dense, kept_counts(dense, kept_fraction, scope))


def masked_init(
    model: nn.Module,
    init: Mapping[str, torch.Tensor],
    mask: Mask,
    *,
    rescale: bool = False,
) -> nn.Module:
    """A copy of ``model`` holding theta_0 (``init``, a full state dict) with the pruned weights zeroed;
    unmasked parameters (biases, ...) and buffers at their init. ``rescale`` multiplies each masked
    parameter by size / kept (the code's "dynamic weight rescaling"; a layer keeping nothing stays 0)."""
    net = copy.deepcopy(model)
    net.load_state_dict(dict(init))
    with torch.no_grad():
        mask.apply_(net)
        if rescale:
            params = dict(net.named_parameters())
            for name, keep in mask.items():
                kept = int(keep.sum())
                if kept:
                    params[name].mul_(keep.numel() / kept)
    return net


def untrained_mask_accuracy(
    model: nn.Module,
    init: Mapping[str, torch.Tensor],
    final: Mapping[str, torch.Tensor],
    data: ArrayData | DataSplits,
    criterion: str,
    kept_fractions: Iterable[float],
    *,
    scope: str = "layerwise",
    generator: torch.Generator | None = None,
    include_first: bool = True,
    include_output: bool = True,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    rescale: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 1000,
) -> list[dict[str, Any]]:
    """Test accuracy and loss of the untrained init under ``criterion``'s mask, one row per kept fraction.

    ``model`` gives the architecture (its own weights are not used); ``init`` and ``final`` are full
    state dicts (theta_0 and the trained dense weights); ``data`` the test split (or a DataSplits, whose
    ``test`` is used). The mask covers ``Mask.dense(model, include_first=..., ...)``; the scores are
    computed once (``random`` draws once from ``generator``), so the fractions' masks are nested.
    Rows: criterion, scope, rescale, kept_fraction, kept (exact count), total, density, test_accuracy
    (None for data without one), test_loss, layer_kept.
    """
    test = data.test if isinstance(data, DataSplits) else data
    fractions = [float(f) for f in kept_fractions]
    dense = Mask.dense(model, include_first=include_first, include_output=include_output,
                       include=include, exclude=exclude)
    for f in fractions:
        kept_counts(dense, f, scope)  # check every fraction and the scope before any work
    scores = criterion_scores(criterion, init, final, dense, generator)
    test = test.to(device)
    rows = []
    for f in fractions:
        mask = keep_top(scores, dense, kept_counts(dense, f, scope))
        net = masked_init(model, init, mask, rescale=rescale).to(device)
        with torch.no_grad():
            result = evaluate(net, test, batch_size=batch_size)
        rows.append({
            "criterion": criterion, "scope": scope, "rescale": rescale, "kept_fraction": f,
            "kept": mask.num_kept, "total": mask.num_total, "density": mask.density,
            "test_accuracy": result.get("accuracy"), "test_loss": result["loss"],
            "layer_kept": mask.kept_per_layer(),
        })
    return rows


def from_run(
    store,
    run_hash: str,
    criteria: Iterable[str],
    kept_fractions: Iterable[float],
    *,
    scope: str = "layerwise",
    seed: int | None = None,
    rescale: bool = False,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """``untrained_mask_accuracy`` for each criterion on a stored IMP run: theta_0 = its
    ``init.safetensors``, the trained dense weights = ``level_00/ticket/final.safetensors``, and the
    run's own data (test split), model and prunable options (config.json). ``random`` draws from a
    generator seeded by ``seed`` (default: the seed IMP's criteria would use at level 0 of this run),
    re-seeded for every criterion. One row per (criterion, kept fraction)."""
    from ..config import imp_config_from_dict
    from ..experiments.common import build_seeded_model, prepare_data
    from ..experiments.imp import derived_seed
    from ..store import StoreError

    run = store.run(run_hash)
    described = run.read_json("config.json")
    if described.get("experiment") != "imp":
        raise StoreError(f"run {run.hash} is a {described.get('experiment')!r} run, not an IMP run")
    config = imp_config_from_dict(described["config"])
    if not run.file("level_00", "ticket", "final.safetensors").exists():
        raise StoreError(f"run {run.hash} has no trained dense network yet (level_00/ticket/final.safetensors); "
                         "finish its level 0 first")
    init = run.load_tensors("init.safetensors")
    final = run.load_tensors("level_00", "ticket", "final.safetensors")
    data, _ = prepare_data(config.data, config.seed)
    model = build_seeded_model(config.model, data, config.seed)
    g_seed = derived_seed(config.seed, "criterion", 0) if seed is None else seed
    options = config.prune.prunable_options
    fractions = [float(f) for f in kept_fractions]
    rows = []
    for criterion in criteria:
        rows += untrained_mask_accuracy(model, init, final, data.test, criterion, fractions, scope=scope,
                                        generator=torch.Generator().manual_seed(g_seed), rescale=rescale,
                                        device=device, **options)
    return rows
