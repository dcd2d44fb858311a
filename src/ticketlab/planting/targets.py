"""Plant 'n' Seek's hand-made target networks (Fischer & Burkholz 2022), as ``TargetNetwork``s.

``depth`` counts input and output layers (depth 5 = 4 weight matrices); every task supports any
depth >= 3. All weights are float64; weights that are exactly zero are not in the ticket, so
``ticket_size(task, depth) = target_network(task, depth).num_weights(tol=1e-12)``.

ReLU
    One path of weights 1 and biases 0: widths [1, 1, ..., 1], depth - 1 weights.
    The output is exactly max(0, x).

Circle (the output is the 4 logits a_j * g_hat + c_j, a = (5, 10, 20, 40), c = (0, -1, -6, -20))
    depth 5, widths [2, 4, 2, 20, 4] (108 weights = 4 + 4 + 20 + 80):
      layer 1: ReLU(+x1), ReLU(-x1), ReLU(+x2), ReLU(-x2);
      layer 2: |x1|, |x2| (sum of the two ReLUs of each input);
      layer 3: K = 10 knot units per component, ReLU(|x_i| - k/K), k = 0..K-1;
      layer 4: g_hat = sum_i sum_k w_k ReLU(|x_i| - k/K) with w_0 = 1/K, w_k = 2/K (k >= 1): the
               piecewise-linear interpolant of t^2 at the knots k/K (exact there), summed over i.
    depth 3, widths [2, 20, 4] (100 weights = 20 + 80), knots on [-1, 1]: per input 10 one-weight
      units, ReLU(x_i - b) and ReLU(-x_i - b) for b = 1/11, 3/11, 5/11, 7/11, 9/11. With outer
      weights equal to the slope increments (slope b_m + b_{m+1} on [b_m, b_{m+1}]) and the
      constant 2 * (1/11)^2 in the output bias, this is the piecewise-linear interpolant of x^2 at the nodes
      +-1/11, +-3/11, ..., +-9/11, +-1 (11 segments of width h = 2/11 covering [-1, 1]; the middle
      one, [-1/11, 1/11], is flat at 1/121). Documented choice: the interpolant overestimates x^2 by
      up to h^2/4, so the output biases subtract a_j * h^2/4 (h^2/8 per component), which centres
      the error in [-h^2/8, h^2/8]; without it the noise-free accuracy drops from ~0.99 to ~0.975.
    depth 4, widths [2, 4, 20, 4] (124 weights = 4 + 40 + 80), documented choice: the depth-5
      network with layer 2 folded into the knot layer (ReLU(r_i+ + r_i- - k/K), two weights per
      knot unit); it computes exactly the same function as depth 5.
    depth 5 + m (m >= 1): m mirroring layers between the |x| layer and the knot layer, widths
      [2, 4, 2, 3, ..., 3, 20, 4]. Mirror layer j reflects the point p (first |x1|, |x2|, then the
      folded point) about the axis at angle pi / 2^(j+1) (pi/4, pi/8, ...) when it lies above it:
      its neurons are p1, p2 (>= 0, so ReLU keeps them) and r = ReLU(n_j . p) with
      n_j = (-sin, cos) of that angle; the folded point p - 2 r n_j is read off linearly by the next
      layer (2 -> 3 neurons for the first mirror layer, 3 -> 3 after it). Reflections keep
      |p|^2 = g, so the same knot layer (on the folded coordinates) and output layer follow.

Helix (outputs (t cos t, t sin t, t) / (8 pi), t = 5 pi + 3 pi x)
    depth 5, widths [1, 1, 30, 3, 3]:
      layer 1: u = x + 1 (in [0, 2], so the ReLU is the identity);
      layer 2: N = 30 knot units ReLU(p_j (u - s_j)), s_j = 2j/N, alternating signs p_j = +1, -1, ...;
      layer 3: the 3 outputs as the piecewise-linear interpolants F_k of the helix at the nodes
               2j/N, j = 0..N, plus B = 1 (all three components exceed -1, so the ReLU passes
               them unchanged): with slopes m_j, outer weights a_0 = m_0, a_j = m_j - m_{j-1};
               a negative unit ReLU(s_j - u) = ReLU(u - s_j) - (u - s_j), so unit 0 (= u) takes
               weight a_0 + sum_{p_j = -1} a_j and the bias absorbs + sum_{p_j = -1} a_j s_j;
      layer 4: identity 3 -> 3, bias -B (linear output).
    The third output is linear in x: its slope increments vanish analytically and are set to exactly
    0, so it uses one weight (the paper's code keeps ~25 float-noise weights there).
    Ticket: 1 + 30 + (30 + 30 + 1) + 3 = 95 weights. The paper's 120 = 1 + 30 + (30 + 30 + 26) + 3
      counts 26 nonzero entries in the third output's row, i.e. 25 float-noise weights more.
    depth 3, widths [1, 30, 3]: the same knot units directly on x in [-1, 1] (s_j = -1 + 2j/N) and
      a linear output layer: 30 + (30 + 30 + 1) = 91 weights (the paper's 115 = 30 + 30 + 30 + 25:
      24 float-noise weights more in the third output's row).
    Noise-free MSE (mean over the 3 outputs, x ~ U[-1, 1]) ~1.9e-4 at every depth; the paper's
      planted Helix MSE ~3.2e-4 is measured on noisy data (+1e-4 noise variance).
    depth 4, widths [1, 1, 30, 3] (documented choice): depth 5 without the +B / identity layer,
      1 + 30 + 61 = 92 weights.
    depth 5 + m: m more identity layers 3 -> 3 (no bias) between the +B layer and the output.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ticketlab.planting.network import TargetNetwork
from ticketlab.planting.tasks import (
    CIRCLE_OFFSETS,
    CIRCLE_SLOPES,
    TASKS,
    helix_function,
)

CIRCLE_KNOTS = 10       # K: knots per component on [0, 1] (depth >= 4)
CIRCLE_DEPTH3_UNITS = 10  # units per input on [-1, 1] at depth 3
HELIX_KNOTS = 30        # N
HELIX_SHIFT = 1.0       # B: makes the helix outputs nonnegative so ReLU passes them
_DT = torch.float64


def _t(rows) -> Tensor:
    return torch.tensor(rows, dtype=_DT)


def target_network(task: str, depth: int = 5) -> TargetNetwork:
    """The hand-made target of ``task`` ("relu", "circle", "helix") with ``depth`` >= 3 layers
    (counting input and output). See the module docstring for the constructions."""
    if task not in TASKS:
        raise ValueError(f"unknown planting task {task!r}; known tasks: {', '.join(TASKS)}")
    if int(depth) != depth or depth < 3:
        raise ValueError(f"target depth must be an integer >= 3 (input and output counted), got {depth}")
    depth = int(depth)
    if task == "relu":
        return _relu_target(depth)
    if task == "circle":
        return _circle_target(depth)
    return _helix_target(depth)


def ticket_size(task: str, depth: int = 5) -> int:
    """Number of nonzero weights (|w| > 1e-12) of the target: the planted ticket's size."""
    return target_network(task, depth).num_weights(tol=1e-12)


# ----------------------------------------------------------------------------------------- ReLU
def _relu_target(depth: int) -> TargetNetwork:
    return TargetNetwork(weights=[_t([[1.0]]) for _ in range(depth - 1)],
                         biases=[_t([0.0]) for _ in range(depth - 1)])


# --------------------------------------------------------------------------------------- Circle
def _circle_output(hidden_weights: Tensor, shift: float = 0.0) -> tuple[Tensor, Tensor]:
    """Output layer a_j * (sum of knot units weighted by hidden_weights) + c_j - a_j * shift."""
    a = _t(CIRCLE_SLOPES)
    c = _t(CIRCLE_OFFSETS)
    return a[:, None] * hidden_weights[None, :], c - a * shift


def _circle_knot_weights(k: int) -> Tensor:
    """Outer weights of ReLU(t - i/k), i = 0..k-1, interpolating t^2 at the knots i/k on [0, 1]:
    slope on [i/k, (i+1)/k] is (2i+1)/k, so the increments are 1/k, then 2/k."""
    w = torch.full((k,), 2.0 / k, dtype=_DT)
    w[0] = 1.0 / k
    return w


def _circle_target(depth: int) -> TargetNetwork:
    if depth == 3:
        return _circle_depth3()
    k = CIRCLE_KNOTS
    weights: list[Tensor] = []
    biases: list[Tensor] = []
    # layer 1: ReLU(+x1), ReLU(-x1), ReLU(+x2), ReLU(-x2)
    weights.append(_t([[1, 0], [-1, 0], [0, 1], [0, -1]]))
    biases.append(torch.zeros(4, dtype=_DT))
    readout = _t([[1, 1, 0, 0], [0, 0, 1, 1]])  # the point (|x1|, |x2|) as a linear map of the layer
    if depth >= 5:
        weights.append(readout)  # layer 2: |x1|, |x2|
        biases.append(torch.zeros(2, dtype=_DT))
        readout = torch.eye(2, dtype=_DT)
        for j in range(1, depth - 4):  # mirroring layers
            angle = math.pi / 2 ** (j + 1)
            normal = _t([-math.sin(angle), math.cos(angle)])
            weights.append(torch.cat([readout, (normal @ readout)[None, :]], dim=0))
            biases.append(torch.zeros(3, dtype=_DT))
            readout = torch.cat([torch.eye(2, dtype=_DT), (-2.0 * normal)[:, None]], dim=1)
    # knot layer: ReLU(p_i - m/K) for i = 1, 2 and m = 0..K-1 (component-major)
    knots = torch.arange(k, dtype=_DT) / k
    weights.append(readout.repeat_interleave(k, dim=0))
    biases.append(-knots.repeat(2))
    w_out, b_out = _circle_output(_circle_knot_weights(k).repeat(2))
    weights.append(w_out)
    biases.append(b_out)
    return TargetNetwork(weights=weights, biases=biases)


def _circle_depth3() -> TargetNetwork:
    units = CIRCLE_DEPTH3_UNITS
    half = units // 2
    segments = 2 * half + 1
    h = 2.0 / segments
    b = (2 * torch.arange(half, dtype=_DT) + 1) / segments  # 1/11, 3/11, ..., 9/11
    # slope of the interpolant of t^2 on [b_m, b_{m+1}] is b_m + b_{m+1} (last node is 1)
    nodes = torch.cat([b, _t([1.0])])
    slopes = nodes[:-1] + nodes[1:]
    inc = torch.cat([slopes[:1], slopes[1:] - slopes[:-1]])  # outer weights of ReLU(t - b_m)
    rows, bias, outer = [], [], []
    for i in range(2):
        for sign in (1.0, -1.0):
            for m in range(half):
                row = [0.0, 0.0]
                row[i] = sign
                rows.append(row)
                bias.append(-float(b[m]))
                outer.append(float(inc[m]))
    w_hidden, b_hidden = _t(rows), _t(bias)
    # the interpolant equals b_0^2 on [-b_0, b_0]: the constant goes into the output bias, and the
    # centring shift h^2/8 per component (2 components) is subtracted as documented
    const = 2 * float(b[0]) ** 2
    a = _t(CIRCLE_SLOPES)
    w_out, b_out = _circle_output(_t(outer), shift=2 * h * h / 8)
    b_out = b_out + a * const
    return TargetNetwork(weights=[w_hidden, w_out], biases=[b_hidden, b_out])


# ---------------------------------------------------------------------------------------- Helix
def _helix_knot_layers(lo: float, hi: float, shift: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Knot units ReLU(p_j (v - s_j)) on v in [lo, hi] and the output layer computing the helix
    interpolants F(v) + shift, with F evaluated at x = v - lo - 1 (so v = x + lo + 1)."""
    n = HELIX_KNOTS
    step = (hi - lo) / n
    nodes = lo + step * torch.arange(n + 1, dtype=_DT)
    values = helix_function((nodes - lo - 1.0)[:, None])  # (n + 1, 3)
    slopes = (values[1:] - values[:-1]) / step               # (n, 3)
    inc = torch.cat([slopes[:1], slopes[1:] - slopes[:-1]], dim=0)  # a_j, (n, 3)
    scale = slopes.abs().max(dim=0).values.clamp(min=1.0)
    inc[inc.abs() < 1e-9 * scale] = 0.0  # float noise of exactly linear components (the t output)
    s = nodes[:-1]
    sign = torch.ones(n, dtype=_DT)
    sign[1::2] = -1.0
    w_hidden = sign[:, None]
    b_hidden = -sign * s
    neg = sign < 0
    w_out = inc.T.clone()  # (3, n)
    w_out[:, 0] = inc[0] + inc[neg].sum(dim=0)
    b_out = values[0] + shift - (inc[neg] * (s[neg] - lo)[:, None]).sum(dim=0)
    w_out[w_out.abs() < 1e-12] = 0.0
    return w_hidden, b_hidden, w_out, b_out


def _helix_target(depth: int) -> TargetNetwork:
    if depth == 3:
        w1, b1, w2, b2 = _helix_knot_layers(-1.0, 1.0, 0.0)
        return TargetNetwork(weights=[w1, w2], biases=[b1, b2])
    weights = [_t([[1.0]])]
    biases = [_t([1.0])]  # u = x + 1 in [0, 2]
    shift = HELIX_SHIFT if depth >= 5 else 0.0
    w1, b1, w2, b2 = _helix_knot_layers(0.0, 2.0, shift)
    weights += [w1, w2]
    biases += [b1, b2]
    for _ in range(depth - 5):
        weights.append(torch.eye(3, dtype=_DT))
        biases.append(torch.zeros(3, dtype=_DT))
    if depth >= 5:
        weights.append(torch.eye(3, dtype=_DT))
        biases.append(torch.full((3,), -HELIX_SHIFT, dtype=_DT))
    return TargetNetwork(weights=weights, biases=biases)
