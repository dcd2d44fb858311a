"""Planting a target network into a random host (Plant 'n' Seek, Fischer & Burkholz 2022).

Layer by layer, each target neuron is matched to the unused host neuron whose incoming parameters
best fit it up to a positive scale, and that neuron's ticket parameters are overwritten with the
rescaled target neuron. As in the authors' code (``plant_lottery_tickets/plant.py``), the fit uses
only the target neuron's nonzero incoming weights: with theta = (bias, those weights / the scales
of their matched inputs) and m = the host neuron's (bias, weights from those matched inputs),
m ~ c theta with c = theta.m / |theta|^2 and distance |m - c theta|_1 (the authors' L1; the paper's
text reads as L2, ``distance="l2"``). A host neuron is admissible only with c > 0 and the signs of m
equal to those of theta on theta's nonzero entries: ReLU is only positively homogeneous, so c must
be positive, and the sign rule keeps the planted neuron close to what the host already had.
Overwritten, the host neuron computes c times the target neuron, and c becomes its scale for the
next layer. Every other weight of a planted neuron (from inputs that are not in the ticket) stays
as drawn: it is simply not in the ticket mask.

Fallback (stated, and counted in ``PlantResult.fallbacks``): when no unused neuron is admissible,
the unused neuron with the smallest distance is overwritten anyway, with c = |theta.m| / |theta|^2
(or 1 when that is 0). The result is still an exact plant; only the "naturalness" of the chosen
neuron is lost. The authors' code differs here (docs/plant_benchmark.md, "Planting"): it fits over
all host neurons, used ones included, and when the best one is used or none is admissible it takes
the first free neuron with c = |w_first / theta_1|; and since its list of used neurons starts as
zeros, host neuron 0 of each layer is never chosen by the fit. We always pick the best admissible
*unused* neuron.

The output neurons are matched the same way and the host's output rows are then permuted into
target order, so ``masked host(x) / output_scale == target(x)``.

The output scale lambda = ``output_scale`` (the output neurons' c, a product of the scales of every
layer: ~1e-2..1e-7 at depth 5) is **never** applied to the host that is pruned or trained: as in the
authors' code, every method scores and trains the raw host output, and lambda serves only to
evaluate the isolated ticket (``ticket_forward``). ``fold_output_scale=True`` is an ablation, not the
paper: it divides the ticket's output weights and biases by lambda so the raw host output under
the ticket mask equals the target. Those weights then become 10^1..10^5 times larger than every
other weight of the host, which un-hides the ticket (magnitude pruning finds it trivially) and
makes every other mask train badly; docs/plant_benchmark.md measures both.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..masks import Mask
from ..models import build_model
from .network import TargetNetwork


class PlantingError(ValueError):
    """The host cannot hold the target (depth or widths do not fit)."""


@dataclass
class PlantResult:
    host: nn.Module                  # the planted host (a copy; the given host is untouched)
    mask: Mask                       # the ticket: exactly the target's nonzero weights, in host coordinates
    output_scale: torch.Tensor       # host output j = output_scale[j] * target output j (under the mask)
    neuron_map: list[list[int]]      # per layer: host neuron index of each target neuron
    scales: list[torch.Tensor]       # per layer: the scale c of each planted neuron
    fallbacks: list[int]             # per layer: target neurons planted without an admissible host neuron
    bias_mask: Mask                  # per layer "<layer>.bias": the planted neurons whose target bias is nonzero

    @torch.no_grad()
    def ticket_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The host with only the ticket's weights, divided by the output scales: the target."""
        net = copy.deepcopy(self.host)
        self.mask.apply_(net)
        return net(x.to(next(net.parameters()).dtype)) / self.output_scale.to(x.device)


def host_network(input_dim: int, output_dim: int, depth: int = 5, width: int = 100, seed: int = 0) -> nn.Module:
    """The paper's host: ReLU MLP, linear output, W ~ N(0, 2/fan_in), bias of layer l ~ N(0, s_l^2)
    with s_l the product of the weight standard deviations of layers 1..l."""
    if depth < 2:
        raise PlantingError(f"depth counts input and output layers and must be >= 2, got {depth}")
    model = build_model("mlp", (input_dim,), output_dim, hidden=tuple([width] * (depth - 2)))
    g = torch.Generator().manual_seed(seed)
    s = 1.0
    with torch.no_grad():
        for layer in _linears(model):
            std = math.sqrt(2.0 / layer.in_features)
            s *= std
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * s)
    return model


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _linear_names(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def plant(target: TargetNetwork, host: nn.Module, distance: str = "l1", fold_output_scale: bool = False) -> PlantResult:
    """Plant ``target`` into a copy of ``host`` (a ReLU MLP of the same depth, wide enough)."""
    if distance not in ("l2", "l1"):
        raise PlantingError(f"distance must be 'l2' (paper) or 'l1' (the paper's code), got {distance!r}")
    host = copy.deepcopy(host)
    layers, names = _linears(host), _linear_names(host)
    widths = [layers[0].in_features, *(lin.out_features for lin in layers)] if layers else []
    if len(layers) != len(target.weights):
        raise PlantingError(f"host has depth {len(layers) + 1}, target depth {target.depth}; they must be equal")
    if widths[0] != target.widths[0] or widths[-1] != target.widths[-1]:
        raise PlantingError(f"host maps {widths[0]} -> {widths[-1]}, target {target.widths[0]} -> {target.widths[-1]}")
    too_narrow = [(l, t, h) for l, (t, h) in enumerate(zip(target.widths, widths)) if t > h]
    if too_narrow:
        raise PlantingError(f"target layers wider than the host (layer, target, host): {too_narrow}")

    matched = list(range(widths[0]))                   # inputs are matched to themselves ...
    scales = torch.ones(widths[0], dtype=torch.float64)  # ... with scale 1
    mask = {n: torch.zeros(lin.weight.shape, dtype=torch.bool) for n, lin in zip(names, layers)}
    bias_names = [n[: -len("weight")] + "bias" for n in names]
    bias_mask = {n: torch.zeros(lin.bias.shape, dtype=torch.bool) for n, lin in zip(bias_names, layers)}
    neuron_map, all_scales, fallbacks = [], [], []
    for l, (lin, w_t, b_t) in enumerate(zip(layers, target.weights, target.biases)):
        w_h, b_h = lin.weight, lin.bias
        matched_cols = torch.tensor(matched)
        used: set[int] = set()
        fallbacks.append(0)
        new_matched, new_scales = [], torch.zeros(w_t.shape[0], dtype=torch.float64)
        for j in range(w_t.shape[0]):
            ticket_in = torch.nonzero(w_t[j]).flatten()      # the target neuron's nonzero incoming weights
            cols = matched_cols[ticket_in]                    # ... as host input columns
            theta = torch.cat([b_t[j:j + 1], w_t[j, ticket_in] / scales[ticket_in]]).to(torch.float64)
            free = torch.tensor([i for i in range(w_h.shape[0]) if i not in used])
            m = torch.cat([b_h[free, None], w_h[free][:, cols]], dim=1).to(torch.float64)
            i, c, admissible = _best_fit(theta, m, distance)
            fallbacks[-1] += not admissible
            host_i = int(free[i])
            used.add(host_i)
            b_h[host_i] = c * theta[0]
            w_h[host_i, cols] = (c * theta[1:]).to(w_h.dtype)
            mask[names[l]][host_i, cols] = True
            bias_mask[bias_names[l]][host_i] = bool(b_t[j] != 0)
            new_matched.append(host_i)
            new_scales[j] = c
        neuron_map.append(new_matched)
        all_scales.append(new_scales)
        matched, scales = new_matched, new_scales

    # output rows into target order
    last = layers[-1]
    order = torch.tensor(matched)
    last.weight.copy_(last.weight[order])
    last.bias.copy_(last.bias[order])
    mask[names[-1]] = mask[names[-1]][order]
    bias_mask[bias_names[-1]] = bias_mask[bias_names[-1]][order]
    output_scale = scales.to(torch.float32)
    if fold_output_scale:  # ticket part of the output layer / scale: raw output == target under the mask
        ticket_rows = mask[names[-1]]
        last.weight[ticket_rows] = (last.weight / output_scale[:, None].to(last.weight.dtype))[ticket_rows]
        last.bias.div_(output_scale.to(last.bias.dtype))
        output_scale = torch.ones_like(output_scale)
    return PlantResult(host, Mask(mask), output_scale, neuron_map, all_scales, fallbacks, Mask(bias_mask))


def _best_fit(theta: torch.Tensor, m: torch.Tensor, distance: str) -> tuple[int, float, bool]:
    """(row of m, scale c, admissible?) of the best host neuron for target vector ``theta``."""
    norm2 = float(theta @ theta)
    if norm2 == 0.0:  # a constant-zero target neuron: any free neuron, scale 1
        return 0, 1.0, True
    c = (m @ theta) / norm2
    residual = m - c[:, None] * theta[None, :]
    dist = residual.norm(dim=1) if distance == "l2" else residual.abs().sum(dim=1)
    nonzero = theta != 0
    sign_ok = (torch.sign(m[:, nonzero]) == torch.sign(theta[nonzero])).all(dim=1)
    admissible = (c > 0) & sign_ok
    if bool(admissible.any()):
        i = int(torch.where(admissible, dist, torch.tensor(float("inf"), dtype=dist.dtype)).argmin())
        return i, float(c[i]), True
    i = int(dist.argmin())
    scale = abs(float(c[i])) or 1.0
    return i, scale, False
