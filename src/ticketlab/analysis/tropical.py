"""Decision boundaries of an (Affine, ReLU, Affine) network through tropical geometry.

Alfarra et al., "On the Decision Boundaries of Deep Neural Networks: A Tropical Geometry
Perspective". For ``f(x) = B ReLU(A x + c1) + c2`` (A: p x n, B: k x p) and one pair of classes
(i, j), split ``B_i - B_j`` into two non-negative weight vectors per hidden unit,

    w1 = ReLU(B_i) + ReLU(-B_j),   w2 = ReLU(B_j) + ReLU(-B_i),   w1 - w2 = B_i - B_j,

so that ``f_i - f_j = T1 - T2`` with the two *tropical polynomials* (max-plus, all weights >= 0)

    T_k(x) = sum_u max(0, w_k[u] (a_u . x + c1_u)) + c2_(i or j).

A sum of maxima of affine functions is the maximum over the Minkowski sum of their (exponent,
coefficient) point sets, so with the *lifted* generators (rows; ``A~ = [A | c1]``)

    G_k = diag(w_k) A~        (p x (n+1)),

    T_k(x) = max over v in P_k of  < v, (x, 1) >,     P_k = c2 e_(n+1) + sum_u [0, G_k[u]],

the support function of the lifted zonotope ``P_k`` (generators G_k, based at the origin, lifted to
height c2 of its class) in the direction ``(x, 1)``. The decision boundary ``{f_i = f_j}`` is where
the two support values are equal, that is where the face of ``conv(P_1 u P_2)`` exposed by
``(x, 1)`` holds points of both zonotopes: it lies on the tropical hypersurface of
``R = max(T1, T2)``, whose dual subdivision is the projection to R^n of the *upper* faces of that
lifted hull (faces whose outward normal has a positive last coordinate). The paper writes the
zonotopes with segments ``[A+_u, A-_u]`` and shifts ``(B-_i + B+_j) A-``, ``(B+_i + B-_j) A-``;
both of its zonotopes are ours moved by the same vector ``(|B_i| + |B_j|) A-``, which adds the
same linear function to T1 and T2 and so cancels in ``T1 - T2`` (as METHODS.md says).

Pictures use the projections ``Z_k`` of the lifted zonotopes to the input plane (n = 2) and the
hull of their union (the Newton polygon of R, the support of the dual subdivision). Vertices are
enumerated exactly: all 2^p subset sums for few generators, the sorted-angle walk for a 2-D
zonotope, and for the lifted 3-D zonotope the regions around every edge ray ``g_a x g_b``.

"Shape preserved" (:func:`shape_distance`): each hull is normalised by translating its area
centroid to the origin and scaling it to unit area; two normalised hulls are compared by their IoU
(area of the intersection / area of the union) and their Hausdorff distance (exact for convex
polygons: the largest distance of a vertex of one to the other polygon).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["TropicalError", "TropicalNet", "Geometry", "affine_relu_affine", "geometry", "hull_polygon",
           "normalise_polygon", "polygon_area", "polygon_iou", "polygon_hausdorff", "shape_distance",
           "zonotope_points", "zonotope_vertices_2d", "zonotope_vertices_3d", "boundary_points"]

SUPPORTED = ("tropical analysis supports (Affine, ReLU, Affine) networks only: nn.Sequential(nn.Linear, nn.ReLU, "
             "nn.Linear) (an nn.Flatten first is allowed) or ticketlab's MLP with one hidden layer (hidden=[h]), "
             "with at least 2 outputs")


class TropicalError(ValueError):
    """A model this analysis does not cover, or a degenerate request."""


def _linear_relu_linear(mods: list[nn.Module], what: str) -> tuple[nn.Linear, nn.Linear]:
    mods = [m for m in mods if not isinstance(m, nn.Flatten)]
    kinds = [type(m).__name__ for m in mods]
    if len(mods) == 3 and isinstance(mods[0], nn.Linear) and isinstance(mods[1], nn.ReLU) \
            and isinstance(mods[2], nn.Linear):
        return mods[0], mods[2]
    raise TropicalError(f"{SUPPORTED}; got {what} with layers {kinds}")


def affine_relu_affine(model: nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(A, c1, B, c2)`` of a supported model, as float64 numpy arrays (a missing bias is zero)."""
    from ..models.mlp import MLP

    if isinstance(model, MLP):
        first, last = _linear_relu_linear([*model.hidden, model.fc], f"an MLP with hidden layers "
                                          f"{[m.out_features for m in model.hidden if isinstance(m, nn.Linear)]}")
    elif isinstance(model, nn.Sequential):
        first, last = _linear_relu_linear(list(model), "an nn.Sequential")
    else:
        raise TropicalError(f"{SUPPORTED}; got a {type(model).__name__}")
    if last.in_features != first.out_features:
        raise TropicalError(f"{SUPPORTED}; the layers' widths do not chain ({first.out_features} -> "
                            f"{last.in_features})")
    if last.out_features < 2:
        raise TropicalError(f"{SUPPORTED}; got {last.out_features} output (a decision boundary needs two classes)")

    def arr(t: torch.Tensor | None, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape) if t is None else t.detach().cpu().double().numpy().copy()

    A = arr(first.weight, ())
    B = arr(last.weight, ())
    return A, arr(first.bias, (A.shape[0],)), B, arr(last.bias, (B.shape[0],))


@dataclass
class TropicalNet:
    """The tropical form of ``f(x) = B ReLU(A x + c1) + c2`` for classes ``(i, j)``."""

    A: np.ndarray
    c1: np.ndarray
    B: np.ndarray
    c2: np.ndarray
    classes: tuple[int, int] = (0, 1)

    @classmethod
    def of(cls, model: nn.Module, classes: tuple[int, int] = (0, 1)) -> "TropicalNet":
        A, c1, B, c2 = affine_relu_affine(model)
        i, j = classes
        if i == j or not (0 <= i < B.shape[0] and 0 <= j < B.shape[0]):
            raise TropicalError(f"classes must be two different outputs of the {B.shape[0]}; got {classes}")
        return cls(A, c1, B, c2, (int(i), int(j)))

    @property
    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(w1, w2)``: non-negative per-unit weights with ``w1 - w2 = B_i - B_j``."""
        bi, bj = self.B[self.classes[0]], self.B[self.classes[1]]
        return np.maximum(bi, 0) + np.maximum(-bj, 0), np.maximum(bj, 0) + np.maximum(-bi, 0)

    @property
    def lifted(self) -> np.ndarray:
        """``A~ = [A | c1]`` (p x (n+1))."""
        return np.concatenate([self.A, self.c1[:, None]], axis=1)

    def generators(self) -> tuple[np.ndarray, np.ndarray]:
        """``(G1, G2)``: the lifted generators ``diag(w_k) A~``, one row per hidden unit."""
        w1, w2 = self.weights
        return w1[:, None] * self.lifted, w2[:, None] * self.lifted

    @property
    def heights(self) -> tuple[float, float]:
        """The output biases that lift each zonotope: ``(c2_i, c2_j)``."""
        return float(self.c2[self.classes[0]]), float(self.c2[self.classes[1]])

    def f(self, x: np.ndarray) -> np.ndarray:
        """All outputs at the points ``x`` (m x n), float64."""
        return np.maximum(x @ self.A.T + self.c1, 0) @ self.B.T + self.c2

    def margin(self, x: np.ndarray) -> np.ndarray:
        """``f_i - f_j`` at ``x``."""
        out = self.f(x)
        return out[:, self.classes[0]] - out[:, self.classes[1]]

    def tropical(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(T1(x), T2(x))`` evaluated term by term (sum of max(0, .) + height)."""
        z = x @ self.A.T + self.c1
        w1, w2 = self.weights
        h1, h2 = self.heights
        return np.maximum(w1 * z, 0).sum(1) + h1, np.maximum(w2 * z, 0).sum(1) + h2


# --- zonotopes -------------------------------------------------------------------------------------

def _clean(G: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Generators without zero rows, parallel ones merged (``[0,g] + [0,t g]`` = ``[0,(1+t) g]`` for t > 0;
    an anti-parallel one flips to a base shift, handled by the callers through ``_orient``)."""
    G = np.asarray(G, dtype=np.float64)
    scale = max(1.0, float(np.abs(G).max(initial=0.0)))
    return G[np.linalg.norm(G, axis=1) > tol * scale]


def zonotope_points(G: np.ndarray, offset: np.ndarray | None = None, limit: int = 16) -> np.ndarray:
    """Every subset sum of the generators (2^p points, exact): the brute-force zonotope, for checks."""
    G = np.asarray(G, dtype=np.float64)
    p = G.shape[0]
    if p > limit:
        raise TropicalError(f"zonotope_points enumerates 2^p points; p = {p} > {limit}")
    bits = ((np.arange(2 ** p)[:, None] >> np.arange(p)) & 1).astype(np.float64)
    pts = bits @ G
    return pts + (0 if offset is None else np.asarray(offset, dtype=np.float64))


def zonotope_vertices_2d(G: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """Vertices of the 2-D zonotope ``offset + sum [0, g]`` in counter-clockwise order.

    The sorted-angle walk: every generator is turned to point into the upper half-plane (a turned
    generator moves the base point by the original), generators are sorted by angle in [0, pi), and
    the boundary is the base point plus the generators in that order, then minus them in the same
    order. Parallel generators are merged first, so every step turns; O(p log p).
    """
    G = _clean(G)
    base = np.zeros(2) if offset is None else np.asarray(offset, dtype=np.float64).copy()
    if G.shape[0] == 0:
        return base[None, :]
    flip = (G[:, 1] < 0) | ((G[:, 1] == 0) & (G[:, 0] < 0))
    base = base + G[flip].sum(0)
    H = np.where(flip[:, None], -G, G)
    ang = np.arctan2(H[:, 1], H[:, 0])
    order = np.argsort(ang, kind="stable")
    H, ang = H[order], ang[order]
    merged: list[np.ndarray] = []  # parallel (same angle) generators add up to one longer one
    last = math.inf
    for h, a in zip(H, ang):
        if merged and abs(a - last) <= 1e-12:
            merged[-1] = merged[-1] + h
        else:
            merged.append(h.copy())
            last = a
    M = np.array(merged)
    up = base + np.concatenate([np.zeros((1, 2)), np.cumsum(M, axis=0)])
    down = up[-1] - np.cumsum(M, axis=0)
    verts = np.concatenate([up, down[:-1]])
    return verts


def _plane_zonotope(G: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Vertices (as 3-D points, base at 0) of the zonotope of generators all orthogonal to ``u``."""
    e1 = G[0] / np.linalg.norm(G[0])
    e2 = np.cross(u, e1)
    e2 /= np.linalg.norm(e2)
    coords = np.stack([G @ e1, G @ e2], axis=1)
    flip = (coords[:, 1] < 0) | ((coords[:, 1] == 0) & (coords[:, 0] < 0))
    base = G[flip].sum(0)
    H = np.where(flip[:, None], -G, G)
    Hc = np.where(flip[:, None], -coords, coords)
    order = np.argsort(np.arctan2(Hc[:, 1], Hc[:, 0]), kind="stable")
    up = base + np.concatenate([np.zeros((1, 3)), np.cumsum(H[order], axis=0)])
    down = up[-1] - np.cumsum(H[order], axis=0)
    return np.concatenate([up, down[:-1]])


def zonotope_vertices_3d(G: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """Points of the 3-D zonotope ``offset + sum [0, g]`` that include all of its vertices.

    Every vertex is the subset sum of the generators with ``<g, v> > 0`` for a direction v in one
    region of the arrangement of the planes ``g^perp``, and every region touches an edge ray
    ``u = g_a x g_b``. Around that ray the generators orthogonal to u form a planar zonotope (four
    points for a generic pair; the sorted-angle walk when more are coplanar) on top of the sum of
    those with ``<g, u> > 0``. O(p^3) for p generators; the result may hold non-vertices (all inside),
    which a convex hull drops.
    """
    G = _clean(G)
    base = np.zeros(3) if offset is None else np.asarray(offset, dtype=np.float64)
    p = G.shape[0]
    if p == 0:
        return base[None, :]
    if p == 1:
        return base + np.stack([np.zeros(3), G[0]])
    norms = np.linalg.norm(G, axis=1)
    ia, ib = np.triu_indices(p, 1)
    U = np.cross(G[ia], G[ib])
    un = np.linalg.norm(U, axis=1)
    keep = un > 1e-12 * norms[ia] * norms[ib]
    if not keep.any():  # all generators parallel: a segment
        d = G[0] / norms[0]
        s = G @ d
        return base + np.stack([G[s < 0].sum(0), G[s > 0].sum(0)])
    ia, ib, U = ia[keep], ib[keep], U[keep] / un[keep, None]
    ia, ib, U = np.concatenate([ia, ia]), np.concatenate([ib, ib]), np.concatenate([U, -U])  # both rays of a line
    D = U @ G.T  # rays x p
    on = np.abs(D) <= 1e-10 * norms[None, :]
    fixed = np.where(D > 0, 1.0, 0.0) * ~on @ G  # pairs x 3
    out = []
    generic = on.sum(1) == 2
    if generic.any():
        ga, gb, fx = G[ia[generic]], G[ib[generic]], fixed[generic]
        out += [fx, fx + ga, fx + gb, fx + ga + gb]
    seen = set()
    for r in np.nonzero(~generic)[0]:
        key = (on[r].tobytes(), (D[r] > 0).tobytes())
        if key not in seen:  # the same ray from another pair of its coplanar generators
            seen.add(key)
            out.append(fixed[r] + _plane_zonotope(G[on[r]], U[r]))
    return base + np.concatenate(out)


def _hull_vertices(points: np.ndarray) -> np.ndarray:
    """The vertices of the convex hull of ``points`` (any affine dimension up to the ambient one)."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(pts) <= 2:
        return pts
    try:
        return pts[ConvexHull(pts).vertices]
    except QhullError:  # flat: hull in the affine span
        centre = pts.mean(0)
        _, s, vt = np.linalg.svd(pts - centre)
        rank = int((s > 1e-9 * max(1.0, s[0])).sum())
        if rank == 0:
            return pts[:1]
        coords = (pts - centre) @ vt[:rank].T
        if rank == 1:
            return pts[[coords[:, 0].argmin(), coords[:, 0].argmax()]]
        return pts[ConvexHull(coords).vertices]


def hull_polygon(points: np.ndarray) -> np.ndarray:
    """The 2-D convex hull of ``points`` as counter-clockwise vertices (fewer than 3 for a flat set)."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(pts) < 3:
        return pts
    try:
        return pts[ConvexHull(pts).vertices]  # counter-clockwise in 2-D
    except QhullError:
        return _hull_vertices(pts)


# --- geometry of one network ---------------------------------------------------------------------

@dataclass
class Geometry:
    """The zonotopes of one network and class pair (2-D input), lifted and projected."""

    net: TropicalNet
    G1: np.ndarray                 # lifted generators (p x 3)
    G2: np.ndarray
    P1: np.ndarray                 # vertices of the lifted zonotopes (with heights c2)
    P2: np.ndarray
    Z1: np.ndarray                 # the projected zonotopes (2-D, counter-clockwise)
    Z2: np.ndarray
    hull: np.ndarray               # conv(Z1 u Z2), counter-clockwise: the Newton polygon of max(T1, T2)
    upper_edges: list[tuple[np.ndarray, np.ndarray]]  # edges of the dual subdivision (projected upper faces)

    def support(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Support values of the lifted zonotopes in the directions ``(x, 1)``: ``(h_P1, h_P2)``."""
        X = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        return (X @ self.P1.T).max(1), (X @ self.P2.T).max(1)


def _upper_edges(P1: np.ndarray, P2: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Edges between the projected upper faces of conv(P1 u P2): the dual subdivision's edges."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.unique(np.concatenate([P1, P2]), axis=0)
    try:
        hull = ConvexHull(pts)
    except QhullError:
        return []  # flat lifted hull: one face, no inner edge
    eq = hull.equations
    scale = np.abs(pts).max() or 1.0
    upper = eq[:, 2] > 1e-9
    edges = []
    for f in np.nonzero(upper)[0]:
        tri = hull.simplices[f]
        for k in range(3):
            nb = hull.neighbors[f, k]  # the facet opposite vertex k shares the edge of the other two
            a, b = tri[(k + 1) % 3], tri[(k + 2) % 3]
            same = np.allclose(eq[nb, :3], eq[f, :3], atol=1e-9) and abs(eq[nb, 3] - eq[f, 3]) <= 1e-9 * scale
            if same or (upper[nb] and nb < f):
                continue  # inside one flat face, or drawn from the neighbour already
            edges.append((pts[a, :2], pts[b, :2]))
    return edges


def geometry(model: nn.Module | TropicalNet, classes: tuple[int, int] = (0, 1)) -> Geometry:
    """The zonotopes, their hull and the dual subdivision of a supported model with 2 inputs."""
    net = model if isinstance(model, TropicalNet) else TropicalNet.of(model, classes)
    if net.A.shape[1] != 2:
        raise TropicalError(f"zonotope pictures need a 2-D input; this network has {net.A.shape[1]} inputs "
                            "(TropicalNet.tropical and .generators work for any input size)")
    G1, G2 = net.generators()
    h1, h2 = net.heights
    P1 = _hull_vertices(zonotope_vertices_3d(G1, np.array([0.0, 0.0, h1])))
    P2 = _hull_vertices(zonotope_vertices_3d(G2, np.array([0.0, 0.0, h2])))
    Z1 = zonotope_vertices_2d(G1[:, :2])
    Z2 = zonotope_vertices_2d(G2[:, :2])
    hull = hull_polygon(np.concatenate([Z1, Z2]))
    return Geometry(net, G1, G2, P1, P2, Z1, Z2, hull, _upper_edges(P1, P2))


def boundary_points(net: TropicalNet, lo: np.ndarray, hi: np.ndarray, n: int = 64, seed: int = 0,
                    iters: int = 200) -> np.ndarray:
    """Points on the decision boundary ``f_i = f_j`` by bisection along random segments in the box."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    found = []
    for _ in range(50 * n):
        a, b = rng.uniform(lo, hi), rng.uniform(lo, hi)
        ma, mb = net.margin(a[None])[0], net.margin(b[None])[0]
        if ma * mb >= 0:
            continue
        for _ in range(iters):
            m = (a + b) / 2
            mm = net.margin(m[None])[0]
            if mm == 0:
                break
            if mm * ma < 0:
                b = m
            else:
                a, ma = m, mm
        found.append((a + b) / 2)
        if len(found) == n:
            break
    return np.array(found).reshape(-1, lo.size)


# --- shape of a hull -----------------------------------------------------------------------------

def polygon_area(P: np.ndarray) -> float:
    """Area of a counter-clockwise polygon (0 for fewer than 3 vertices)."""
    if len(P) < 3:
        return 0.0
    x, y = P[:, 0], P[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _centroid(P: np.ndarray) -> np.ndarray:
    x, y = P[:, 0], P[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    a = cross.sum() / 2
    return np.array([((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]) / (6 * a)


def normalise_polygon(P: np.ndarray) -> np.ndarray | None:
    """The polygon with its area centroid at the origin and unit area; None for a flat one."""
    area = polygon_area(P)
    if not area > 1e-12 * max(1.0, float(np.abs(P).max(initial=0.0))) ** 2:
        return None
    return (P - _centroid(P)) / math.sqrt(area)


def _clip(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: ``subject`` intersected with the convex counter-clockwise ``clip``."""
    out = list(subject)
    for k in range(len(clip)):
        a, b = clip[k], clip[(k + 1) % len(clip)]
        inp, out = out, []
        if not inp:
            break

        def side(q: np.ndarray) -> float:
            return (b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (q[0] - a[0])

        for m in range(len(inp)):
            cur, prev = inp[m], inp[m - 1]
            sc, sp = side(cur), side(prev)
            if sc >= 0:
                if sp < 0:
                    out.append(prev + (cur - prev) * (sp / (sp - sc)))
                out.append(cur)
            elif sp >= 0:
                out.append(prev + (cur - prev) * (sp / (sp - sc)))
    return np.array(out).reshape(-1, 2)


def polygon_iou(P: np.ndarray, Q: np.ndarray) -> float:
    """Intersection over union of two convex counter-clockwise polygons."""
    inter = polygon_area(_clip(P, Q))
    return inter / (polygon_area(P) + polygon_area(Q) - inter)


def _point_polygon_distance(x: np.ndarray, P: np.ndarray) -> float:
    """Distance from x to the solid convex counter-clockwise polygon P (0 inside)."""
    a, b = P, np.roll(P, -1, axis=0)
    e = b - a
    if np.all(e[:, 0] * (x[1] - a[:, 1]) - e[:, 1] * (x[0] - a[:, 0]) >= 0):
        return 0.0
    t = np.clip(((x - a) * e).sum(1) / (e * e).sum(1), 0, 1)
    return float(np.linalg.norm(a + t[:, None] * e - x, axis=1).min())


def polygon_hausdorff(P: np.ndarray, Q: np.ndarray) -> float:
    """Hausdorff distance of two solid convex polygons (attained at a vertex, so exact)."""
    return max(max(_point_polygon_distance(v, Q) for v in P), max(_point_polygon_distance(v, P) for v in Q))


def shape_distance(hull: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """``{"iou", "hausdorff"}`` of the scale-normalised hulls (centroid at 0, unit area); NaN for a
    flat hull (a network whose generators span no area: no 2-D decision structure)."""
    P, Q = normalise_polygon(hull), normalise_polygon(reference)
    if P is None or Q is None:
        return {"iou": float("nan"), "hausdorff": float("nan")}
    return {"iou": polygon_iou(P, Q), "hausdorff": polygon_hausdorff(P, Q)}
