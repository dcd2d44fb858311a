"""FLOPs of a (sparse) network: what a mask saves in inference and in training.

Density alone does not say what a sparse network costs: a weight of a conv layer is used once per
output position, a weight of a linear layer once per sample, so two masks of equal density can
differ several-fold in compute. This module counts the compute each weight layer does, dense and
under a mask, and turns it into training cost with the accounting of the RigL paper (Evci et al.
2020, "Rigging the lottery"), so that pruning, static sparse training and dynamic sparse training
can be compared on equal terms.

Convention (one, used everywhere in this module)
-------------------------------------------------
**FLOPs = multiply-adds of the weight layers: 1 multiply-add = 1 FLOP**, as in the RigL paper's
accounting (often called MACs elsewhere; multiply by 2 to count multiplies and adds separately).

* Counted: the weights of every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` (the layers of
  :data:`ticketlab.prunable.PRUNABLE_LAYER_TYPES`). Each weight costs one FLOP per output position
  it is applied at: a Linear layer's weights once per position of the leading (non-feature)
  dimensions of its input, e.g. once per token of a sequence; a conv layer's weights once per
  output pixel (``out_h * out_w`` in 2-D). Dense FLOPs per sample are therefore
  ``positions * weight.numel()``, which for a conv is
  ``out_h * out_w * out_c * (in_c / groups) * kh * kw``; sparse FLOPs are ``positions * kept``.
  Zero padding is counted like real input (a weight at the border still "runs"), in both the
  dense and the sparse count, so their ratio is exactly the layer's density.
* Not counted: biases, normalisation layers, activations, pooling, residual additions, softmax
  and the loss. They are linear in the number of activations, not weights, and a mask does not
  change them; leaving them out is what RigL and most of the sparsity literature do.
* Unmasked layers (a mask may cover only some layers, e.g. the first layer kept dense) count
  as dense.
* Weights used functionally (a raw ``nn.Parameter`` passed to ``F.linear`` / ``F.conv1d/2d/3d``
  in a custom module, or a Linear/Conv weight used again outside its layer) count the same way,
  in a row of their own named after the parameter. A shared (tied) weight is looked up in the
  mask under its one name (the one ``named_parameters()`` gives it) at every use.
* Embedding lookups are not counted (a lookup, not multiply-adds); the forward pass runs with
  each lookup returning the sum of its table's rows (see :mod:`ticketlab.probe`), so a token
  model (integer inputs) needs no real token ids: ``input_shape`` is the shape of one sequence.
* Training: the backward pass costs twice the forward pass (gradient w.r.t. the activations and
  gradient w.r.t. the weights, each as costly as the forward), so a training step costs
  ``3 * f`` per sample; the gradient w.r.t. the input of the first layer is counted too, as in
  RigL. See :func:`run_training_flops` for RigL's dense-gradient steps.

All counts are per sample unless a function takes a batch size.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import nn

from ..masks import Mask
from ..probe import probe_input, run_probe
from ..prunable import PRUNABLE_LAYER_TYPES, parameter_names

__all__ = [
    "layer_flops",
    "forward_flops",
    "dense_forward_flops",
    "training_step_flops",
    "rigl_average_step_flops",
    "run_training_flops",
    "FlopsError",
]


class FlopsError(ValueError):
    """The model cannot be run on the given input shape, or a count argument is invalid."""


def _weight_name(module_name: str) -> str:
    # Same naming as ticketlab.prunable, so rows line up with Mask keys.
    return f"{module_name}.weight" if module_name else "weight"


def _example_input(model: nn.Module, input_shape: tuple[int, ...],
                   example_input: torch.Tensor | None = None) -> torch.Tensor:
    """Zeros of shape (1, *input_shape) on the model's device, in its floating dtype (or the first
    sample of ``example_input``: integer ids as they are, floating inputs as zeros)."""
    device, dtype = torch.device("cpu"), torch.get_default_dtype()
    for t in [*model.parameters(), *model.buffers()]:
        device = t.device
        if t.is_floating_point():
            dtype = t.dtype
            break
    if example_input is not None:
        return probe_input(None, example_input, fill=0.0, dtype=dtype, device=device)
    try:
        shape = tuple(int(d) for d in input_shape)
    except TypeError:
        raise FlopsError(f"input_shape must be a tuple of ints for one sample, got {input_shape!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise FlopsError(
            f"input_shape must be a non-empty tuple of positive ints for ONE sample (no batch "
            f"dimension), e.g. (1, 28, 28) or (784,); got {input_shape!r}"
        )
    return torch.zeros((1, *shape), device=device, dtype=dtype)


def layer_flops(
    model: nn.Module, input_shape: tuple[int, ...], mask: Mask | None = None, *,
    example_input: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Per-layer forward FLOPs of one sample, dense and under ``mask`` (see module docstring).

    Runs one forward pass of a zero tensor of shape ``(1, *input_shape)`` under ``torch.no_grad``
    in eval mode (so BatchNorm statistics are not touched), with temporary forward hooks on every
    Linear/Conv layer to see the shape each one produces; the hooks are removed and the training
    flag restored afterwards, even if the forward pass fails. Parameters are not modified.

    Returns one dict per weight layer that the forward pass calls, in the order of its first call:

    * ``name``: module name (``"0"``, ``"stages.0.0.conv1"``, ...);
    * ``weight``: its weight's parameter name, the key a :class:`Mask` uses (``"0.weight"``);
    * ``dense_flops`` / ``sparse_flops``: multiply-adds per sample, dense and with only the kept
      weights (equal to ``dense_flops`` when the mask does not cover the layer or is ``None``);
    * ``output_shape``: the layer's output shape for a batch of one (leading dimension 1);
    * ``calls``: how many times the forward pass called the layer (FLOPs are summed over calls,
      so a layer reused with shared weights is counted each time it runs).

    A weight used functionally (``F.linear(x, self.w)`` on a raw parameter, or a layer's weight
    used outside its layer) gets a row whose ``name`` and ``weight`` are the parameter's name.
    ``example_input`` (a batch; its first sample is used, floating values as zeros) replaces the
    zero input for models that cannot run on one (see :mod:`ticketlab.probe`).

    Layers that the forward pass never calls do no compute and get no row. Raises
    :class:`~ticketlab.masks.MaskError` if the mask names parameters the model lacks or has the
    wrong shapes, and :class:`FlopsError` if the model cannot run on ``input_shape``.
    """
    if mask is not None:
        mask.check_fits(model)
    x = _example_input(model, input_shape, example_input)
    canonical = parameter_names(model)

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    running: list[nn.Module] = []  # the Linear/Conv layers whose forward is running

    def add(key: tuple[str, str], name: str, wname: str, weight: torch.Tensor, positions: int,
            output: torch.Tensor) -> None:
        kept = weight.numel()
        if mask is not None and wname in mask:
            kept = int(mask[wname].sum())
        row = rows.get(key)
        if row is None:
            rows[key] = {"name": name, "weight": wname, "dense_flops": positions * weight.numel(),
                         "sparse_flops": positions * kept, "output_shape": tuple(output.shape), "calls": 1}
        else:
            row["dense_flops"] += positions * weight.numel()
            row["sparse_flops"] += positions * kept
            row["calls"] += 1

    def functional(func: Any, args: tuple, kwargs: dict, output: Any) -> None:
        """A F.linear / F.conv call: counted here unless it is a hooked layer's own operation."""
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if not isinstance(weight, nn.Parameter) or id(weight) not in canonical:
            return
        if running and running[-1].weight is weight:
            return  # the layer's own call: its forward hook counts it
        if not isinstance(output, torch.Tensor):
            return
        wname = canonical[id(weight)]
        add(("functional", wname), wname, wname, weight, output.numel() // weight.shape[0], output)

    def pre_hook(module: nn.Module, _inputs: Any) -> None:
        running.append(module)

    def make_hook(module_name: str):
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            if running and running[-1] is module:
                running.pop()
            if not isinstance(output, torch.Tensor):
                raise FlopsError(f"layer {module_name!r} returned {type(output).__name__}, not a tensor")
            weight = module.weight
            # Channels / features are dim 1 for conv outputs and the last dim for linear outputs.
            out_units = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            positions = output.numel() // out_units  # output positions, batch of one
            # a shared (tied) weight is masked under the one name named_parameters() gives it
            wname = canonical.get(id(weight), _weight_name(module_name))
            add(("module", module_name), module_name, wname, weight, positions, output)

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYER_TYPES):
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            run_probe(model, x, FlopsError, f"FLOPs of one sample of shape {tuple(x.shape[1:])}",
                      example_given=example_input is not None, on_call=functional)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return list(rows.values())


def forward_flops(model: nn.Module, input_shape: tuple[int, ...], mask: Mask | None = None, *,
                  example_input: torch.Tensor | None = None) -> int:
    """Forward FLOPs of one sample under ``mask`` (dense if ``mask`` is None): f_S, or f_D."""
    return sum(row["sparse_flops"] for row in layer_flops(model, input_shape, mask, example_input=example_input))


def dense_forward_flops(model: nn.Module, input_shape: tuple[int, ...], *,
                        example_input: torch.Tensor | None = None) -> int:
    """Forward FLOPs of one sample of the dense model, f_D."""
    return sum(row["dense_flops"] for row in layer_flops(model, input_shape, example_input=example_input))


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FlopsError(f"{name} must be a non-negative int, got {value!r}")
    return value


def training_step_flops(f_forward: int) -> int:
    """FLOPs of one training step per sample: forward + backward (2x forward) = ``3 * f_forward``."""
    return 3 * _check_count("f_forward", f_forward)


def rigl_average_step_flops(f_sparse: int, f_dense: int, delta_t: int) -> float:
    """RigL's average training FLOPs per step and sample: ``(3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1)``.

    The formula of Evci et al. (2020): ``ΔT`` ordinary sparse steps (3 f_S each) and one mask
    update step that also computes the dense gradient (2 f_S + f_D, see
    :func:`run_training_flops`), averaged over those ``ΔT + 1`` steps.
    """
    f_s = _check_count("f_sparse", f_sparse)
    f_d = _check_count("f_dense", f_dense)
    dt = _check_count("delta_t", delta_t)
    return (3 * f_s * dt + 2 * f_s + f_d) / (dt + 1)


def run_training_flops(
    steps: int,
    batch_size: int,
    f_forward_per_step: Sequence[int] | int,
    dense_gradient_steps: int | Collection[int] = 0,
    f_dense: int | None = None,
) -> int:
    """Total training FLOPs of a run: ``sum over steps of 3 * f_S(t) * batch_size`` plus RigL's extra.

    ``f_forward_per_step`` is the sparse forward FLOPs per sample, one int for a fixed mask or one
    value per step when the mask changes (gradual pruning, density schedules).

    Dense-gradient steps (RigL mask updates). An ordinary sparse step costs per sample f_S
    (forward) + f_S (gradient w.r.t. activations, through the kept weights) + f_S (gradient w.r.t.
    the kept weights) = 3 f_S. At a RigL update step the gradient w.r.t. *all* weights is needed
    to pick the connections to grow, so the last term becomes f_D: 2 f_S + f_D, i.e.
    ``f_D - f_S`` more than an ordinary step. The total is thus
    ``batch_size * (sum_t 3 f_S(t) + sum_{t in dense steps} (f_D - f_S(t)))``. For one RigL period
    of ΔT ordinary steps plus one update step (``steps = ΔT + 1``, one dense-gradient step) this is
    ``batch_size * (3 f_S ΔT + 2 f_S + f_D)``, i.e. :func:`rigl_average_step_flops` per step and
    sample. (If updates happen every ΔT steps, a period is ΔT steps including the update, and the
    same formula applies with ΔT - 1 in place of ΔT.)

    ``dense_gradient_steps`` is either the number of such steps (needs a single int
    ``f_forward_per_step``) or the collection of their 0-based step indices. ``f_dense`` (f_D) is
    required when there are any.
    """
    steps = _check_count("steps", steps)
    batch_size = _check_count("batch_size", batch_size)
    if isinstance(f_forward_per_step, int) and not isinstance(f_forward_per_step, bool):
        per_step = None
        f_fixed = _check_count("f_forward_per_step", f_forward_per_step)
        sparse_total = 3 * f_fixed * steps
    else:
        per_step = [_check_count("f_forward_per_step[i]", f) for f in f_forward_per_step]
        if len(per_step) != steps:
            raise FlopsError(
                f"f_forward_per_step has {len(per_step)} values but the run has {steps} steps"
            )
        f_fixed = None
        sparse_total = 3 * sum(per_step)

    if isinstance(dense_gradient_steps, int) and not isinstance(dense_gradient_steps, bool):
        n_dense = _check_count("dense_gradient_steps", dense_gradient_steps)
        if n_dense > steps:
            raise FlopsError(f"dense_gradient_steps ({n_dense}) exceeds steps ({steps})")
        if n_dense and per_step is not None:
            raise FlopsError(
                "with per-step forward FLOPs, pass dense_gradient_steps as the step indices at which "
                "the dense gradient is computed, not a count"
            )
        dense_f_sparse = [f_fixed] * n_dense if n_dense else []
    else:
        listed = [_check_count("dense_gradient_steps[i]", i) for i in dense_gradient_steps]
        indices = sorted(set(listed))
        if len(indices) != len(listed):
            raise FlopsError("dense_gradient_steps lists a step twice")
        if indices and indices[-1] >= steps:
            raise FlopsError(f"dense gradient step {indices[-1]} is outside the run's {steps} steps")
        dense_f_sparse = [f_fixed if per_step is None else per_step[i] for i in indices]

    extra = 0
    if dense_f_sparse:
        if f_dense is None:
            raise FlopsError("f_dense (the dense forward FLOPs f_D) is needed for dense-gradient steps")
        f_d = _check_count("f_dense", f_dense)
        bad = [f for f in dense_f_sparse if f > f_d]
        if bad:
            raise FlopsError(f"sparse forward FLOPs {bad[0]} exceed f_dense {f_d}")
        extra = sum(f_d - f for f in dense_f_sparse)
    return batch_size * (sparse_total + extra)

