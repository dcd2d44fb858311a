"""Plant 'n' Seek's hand-made target networks (Fischer & Burkholz 2022), as ``TargetNetwork``s.

They follow the authors' code (RelationalML/PlantNSeek, ``plant_lottery_tickets/tickets.py`` as
called by ``Synaptic-Flow-Extended/Models/circler.py``); the differences are listed below.
``depth`` counts input and output layers (depth 5 = 4 weight matrices); every task supports any
depth >= 3. All weights are float64 with shape (out, in) (the authors' are (in, out)); weights that
are exactly zero are not in the ticket, so
``ticket_size(task, depth) = target_network(task, depth).num_weights(tol=1e-12)``.
Figures below: noise-free, on 100,000 points x ~ U[-1, 1]^d (seed 0).

Signed knot units (``knot_layer``, the authors' ``param_outer(xs, pm, fun)``)
    Knots s_0 < ... < s_{n-1} (always a ``linspace``), signs p_j = +-1 with p_0 forced to +1;
    hidden unit j = ReLU(p_j (u - s_j)). The next (linear) layer equals, for u >= s_0, the
    piecewise-linear interpolant of ``fun`` at the nodes s_0, ..., s_{n-1} and the extra node
    s_{n-1} + (s_1 - s_0), continued linearly beyond it: with the interpolant's slopes m_j, unit
    j >= 1 gets the increment a_j = m_j - m_{j-1}; a negative unit is handled by
    ReLU(z) = ReLU(-z) + z, and since unit 0 = u - s_0 for u >= s_0, unit 0 gets
    m_0 + sum_{p_j = -1} a_j and the bias is fun(s_0) - sum_{p_j = -1} a_j (s_j - s_0).
    ``alternating_signs(n, last)``: p = +1, -1, +1, ... (the authors' ``pm[1::2] = -1``), the
    last sign optionally forced.

ReLU (identical to the authors' ``lottery_relu(depth, "reg")``)
    One path of weights 1 and biases 0: widths [1, 1, ..., 1], depth - 1 weights (4 at depth 5).
    The output is exactly max(0, x).

Circle (the output is the 4 logits a_j * g_hat + c_j, a = (5, 10, 20, 40), c = (0, -1, -6, -20);
g_hat approximates g = x1^2 + x2^2; K = 10 knots per component, as the authors' circler.py)
    The authors' ``lottery_sphere(depth, [0.2, 0.5, 0.7], 10, "class")`` builds the same a and c
    (its class_bound recursion gives c_j = c_{j-1} + (a_{j-1} - a_j) * bound_{j-1}); at depths 3, 4
    and 5 our weights and biases equal theirs (transposed) to ~1e-13.
    depth 5, widths [2, 4, 2, 20, 4] (108 weights = 4 + 4 + 20 + 80):
      layer 1: ReLU(+x1), ReLU(-x1), ReLU(+x2), ReLU(-x2);
      layer 2: |x1|, |x2| (sum of the two ReLUs of each input);
      layer 3: per component, 10 knot units on |x_i| with knots linspace(0, 1, 10) (spacing 1/9)
               and signs +, -, +, -, +, -, +, -, +, + (alternating, the last forced to +1);
      layer 4: g_hat = sum over i of the interpolant of t^2 at the nodes j/9, j = 0..10, on |x_i|:
               exact at the nodes, 0 <= g_hat - g <= 2 (1/9)^2 / 4.
      Accuracy 0.9909.
    depth 4, widths [2, 4, 20, 4] (124 weights = 4 + 40 + 80): the depth-5 network with layer 2
      folded into the knot layer (ReLU(p_j (r_i+ + r_i- - s_j)), two weights per knot unit) and,
      as the authors' depth-4 branch, the last sign -1 (signs strictly alternating); the same
      function as depth 5. Accuracy 0.9909.
    depth 3, widths [2, 20, 4] (100 weights = 20 + 80): per input x_i, 10 one-weight knot units
      on x_i itself with knots linspace(-1, 1, 10) (spacing 2/9) and alternating signs (last -1),
      i.e. the interpolant of x_i^2 at the nodes -1 + 2j/9 on [-1, 1] (the middle segment
      [-1/9, 1/9] is flat at 1/81); 0 <= g_hat - g <= 2 (2/9)^2 / 4, not centred. Accuracy 0.9614.
    depth 5 + m (m >= 1): m mirroring layers between the |x| layer and the knot layer, widths
      [2, 4, 2, 3, ..., 3, 20, 4]. Mirror layer j reflects the point p (first |x1|, |x2|, then the
      folded point) about the axis at angle pi / 2^(j+1) (pi/4, pi/8, ...) when it lies above it:
      its neurons are p1, p2 (>= 0, so ReLU keeps them) and r = ReLU(n_j . p) with
      n_j = (-sin, cos) of that angle; the folded point p - 2 r n_j is read off linearly by the next
      layer (2 -> 3 neurons for the first mirror layer, 3 -> 3 after it). Reflections keep
      |p|^2 = g, and the folded coordinates are >= 0, so the depth-5 knot layer (knots
      linspace(0, 1, 10), last sign +1; valid for any coordinate >= 0, which covers the folded
      coordinates up to sqrt(2)) and output layer follow, reading the folded point.
      Ticket 132 weights at depth 6 (4 + 4 + 4 + 40 + 80), 160 at depth 10; accuracy 0.9909 at
      depth 6, 0.9914 at depth 7, 0.9924 at depth 10.
      This differs from the authors' depth > 5 branch, which folds by projecting onto
      v = (cos phi, sin phi) and |v_perp . p| and uses nk knots on [0, sqrt(2)] for the first and
      nko knots on [0, sin(phi) sqrt(0.7) + 0.01] for the second (nk + nko = 20): 119 / 153
      ticket weights and accuracy 0.9879 / 0.9980 at depth 6 / 10 (0.9869 at depth 7).

Helix (outputs (t cos t, t sin t, t) / (8 pi), t = 5 pi + 3 pi x; N = 30 knots, as the authors'
circler.py; the authors' ``lottery_helix_wide(fun_ex1, fun_ex2, fun_ex3, depth, 30)``)
    depth 5, widths [1, 1, 30, 3, 3]:
      layer 1: u = x + 1 (in [0, 2], so the ReLU is the identity);
      layer 2: 30 knot units on u, knots linspace(0, 2, 30) (spacing 2/29), alternating signs
               +, -, +, ..., - ;
      layer 3: the 3 outputs as the interpolants of the helix at the nodes 2j/29, j = 0..30, plus
               B = 1 (all three components exceed -1, so the ReLU passes them unchanged);
      layer 4: identity 3 -> 3, bias -B (linear output).
    The third output is linear in x: its slope increments vanish analytically, and ours are set to
    exactly 0 (increments below 1e-9 times the output's largest slope), so that row uses one weight;
    the authors' code keeps them as float noise (|w| ~ 3e-15), nonzero weights of their ticket.
    Otherwise our weights and biases equal theirs (transposed) to ~1e-13 at every depth.
    Ticket: 1 + 30 + (30 + 30 + 1) + 3 = 95 weights. The paper's / authors' 120
      = 1 + 30 + (30 + 30 + 26) + 3 counts 26 nonzero entries in the third output's row, i.e. 25
      float-noise weights more.
    depth 3, widths [1, 30, 3]: the same knot units directly on x, knots linspace(-1, 1, 30):
      30 + (30 + 30 + 1) = 91 weights (the authors' 115: 24 float-noise weights more).
    depth 4, widths [1, 1, 30, 3]: depth 5 without the +B / identity layer, 1 + 30 + 61 = 92
      weights (the authors' 117).
    depth 5 + m: m more identity layers 3 -> 3 (bias 0) between the +B layer and the output
      (the authors' depth > 4 branch: +1 on the knot-output bias, depth - 4 identity layers, the
      last with bias -1): 95 + 3m weights (98 at depth 6, 110 at depth 10; the authors' + 25).
    Every depth computes the same function: the max abs error to ``helix_function`` on [-1, 1]
      is 0.0487 (the bound h^2/8 max|f''| with h = 2/29 is 0.053); MSE (mean over the 3 outputs)
      2.15e-4 (3.20e-4 and 3.25e-4 for the first two outputs, 0 for the third); the paper's
      ~2.2e-4 approximation error.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ticketlab.planting.network import TargetNetwork
from ticketlab.planting.tasks import (
    CIRCLE_OFFSETS,
    CIRCLE_SLOPES,
    TASKS,
    helix_function,
)

CIRCLE_KNOTS = 10   # K: knots per component (the authors' circler.py: K = 10)
HELIX_KNOTS = 30    # N: knots (the authors' circler.py: 30)
HELIX_SHIFT = 1.0   # B: makes the helix outputs nonnegative so ReLU passes them
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


# ----------------------------------------------------------------------------- signed knot units
def alternating_signs(n: int, last: float | None = None) -> Tensor:
    """p_j = +1, -1, +1, ... (the authors' ``pm[1::2] = -1``), optionally with p_{n-1} = ``last``."""
    signs = torch.ones(n, dtype=_DT)
    signs[1::2] = -1.0
    if last is not None:
        signs[-1] = last
    return signs


def knot_layer(knots: Tensor, signs: Tensor, fun: Callable[[Tensor], Tensor],
               drop_noise: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Signed knot units and the linear layer reading them (the authors' ``param_outer``).

    Hidden unit j is ReLU(p_j (u - s_j)) (returned as its input weight p_j and bias -p_j s_j);
    the outer layer (weights (k, n), bias (k,)) equals, for u >= s_0, the piecewise-linear
    interpolant of ``fun`` ((m,) -> (m, k)) at the nodes s_0 < ... < s_{n-1} plus one extra node
    s_{n-1} + (s_1 - s_0), continued linearly beyond it. p_0 is forced to +1. With slopes m_j of the
    interpolant, unit j >= 1 gets the slope increment a_j = m_j - m_{j-1}; a negative unit uses
    ReLU(z) = ReLU(-z) + z, and since unit 0 = u - s_0 for u >= s_0, unit 0 gets m_0 + sum_{p_j<0} a_j
    and the bias f(s_0) - sum_{p_j<0} a_j (s_j - s_0). ``drop_noise`` sets increments below 1e-9
    times the largest slope of their output to exactly 0 (float noise of linear outputs).
    """
    s = knots.to(_DT)
    signs = signs.to(_DT).clone()
    signs[0] = 1.0
    nodes = torch.cat([s, s[-1:] + (s[1] - s[0])])
    values = fun(nodes)
    if values.dim() == 1:
        values = values[:, None]
    slopes = (values[1:] - values[:-1]) / (nodes[1:] - nodes[:-1])[:, None]  # (n, k)
    inc = slopes[1:] - slopes[:-1]                                             # a_1..a_{n-1}
    if drop_noise:
        scale = slopes.abs().max(dim=0).values
        inc[inc.abs() <= 1e-9 * scale] = 0.0
    neg = signs[1:] < 0
    w_out = torch.cat([(slopes[0] + inc[neg].sum(dim=0))[None, :], inc], dim=0).T.contiguous()
    b_out = values[0] - (inc[neg] * (s[1:][neg] - s[0])[:, None]).sum(dim=0)
    return signs, -signs * s, w_out, b_out


# ----------------------------------------------------------------------------------------- ReLU
def _relu_target(depth: int) -> TargetNetwork:
    return TargetNetwork(weights=[_t([[1.0]]) for _ in range(depth - 1)],
                         biases=[_t([0.0]) for _ in range(depth - 1)])


# --------------------------------------------------------------------------------------- Circle
def _square(t: Tensor) -> Tensor:
    return t * t


def _circle_output(outer: Tensor, const: Tensor) -> tuple[Tensor, Tensor]:
    """Output layer a_j * (outer . units + const) + c_j (outer: (units,), const: scalar)."""
    a = _t(CIRCLE_SLOPES)
    c = _t(CIRCLE_OFFSETS)
    return a[:, None] * outer[None, :], a * const + c


def _circle_target(depth: int) -> TargetNetwork:
    k = CIRCLE_KNOTS
    if depth == 3:
        w_in, b_in, w_o, b_o = knot_layer(torch.linspace(-1.0, 1.0, k, dtype=_DT),
                                          alternating_signs(k, last=-1.0), _square)
        hidden = torch.zeros(2 * k, 2, dtype=_DT)
        hidden[:k, 0] = w_in
        hidden[k:, 1] = w_in
        w_out, b_out = _circle_output(w_o[0].repeat(2), 2 * b_o[0])
        return TargetNetwork(weights=[hidden, w_out], biases=[b_in.repeat(2), b_out])
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
    # knot layer on the two (folded) coordinates, component-major
    last = -1.0 if depth == 4 else 1.0
    w_in, b_in, w_o, b_o = knot_layer(torch.linspace(0.0, 1.0, k, dtype=_DT),
                                      alternating_signs(k, last=last), _square)
    weights.append(readout.repeat_interleave(k, dim=0) * w_in.repeat(2)[:, None])
    biases.append(b_in.repeat(2))
    w_out, b_out = _circle_output(w_o[0].repeat(2), 2 * b_o[0])
    weights.append(w_out)
    biases.append(b_out)
    return TargetNetwork(weights=weights, biases=biases)


# ---------------------------------------------------------------------------------------- Helix
def _helix_target(depth: int) -> TargetNetwork:
    n = HELIX_KNOTS
    signs = alternating_signs(n)
    if depth == 3:
        w_in, b_in, w_out, b_out = knot_layer(torch.linspace(-1.0, 1.0, n, dtype=_DT), signs,
                                              lambda v: helix_function(v[:, None]), drop_noise=True)
        return TargetNetwork(weights=[w_in[:, None], w_out], biases=[b_in, b_out])
    # layer 1: u = x + 1 in [0, 2] (ReLU is the identity there)
    w_in, b_in, w_out, b_out = knot_layer(torch.linspace(0.0, 2.0, n, dtype=_DT), signs,
                                          lambda v: helix_function((v - 1.0)[:, None]), drop_noise=True)
    weights = [_t([[1.0]]), w_in[:, None], w_out]
    biases = [_t([1.0]), b_in, b_out]
    if depth >= 5:
        biases[-1] = b_out + HELIX_SHIFT
        for _ in range(depth - 5):
            weights.append(torch.eye(3, dtype=_DT))
            biases.append(torch.zeros(3, dtype=_DT))
        weights.append(torch.eye(3, dtype=_DT))
        biases.append(torch.full((3,), -HELIX_SHIFT, dtype=_DT))
    return TargetNetwork(weights=weights, biases=biases)
