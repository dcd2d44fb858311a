"""Structured tickets by post-processing IMP masks: refill, refill+ and regroup (Chen et al. 2022).

Chen, Chen, Ma, Wang & Wang, "Coarsening the Granularity: Towards Structurally Sparse Lottery
Tickets" (ICML 2022; code: github.com/VITA-Group/Structure-LTH). After every IMP round the
unstructured mask of each layer is turned into a structured one, then the kept weights are reset
(rewound) and retrained as IMP always does. A layer's mask is viewed as a matrix with one row per
output channel (Conv: ``C_out x C_in*k*k``; Linear: ``out x in``).

Refill / Refill+ (:func:`refill`)
    With ``L`` the row length and ``nnz`` the kept weights of the layer, keep
    ``c = floor(nnz / L + r * (C_out - nnz / L))`` whole output channels and make them dense; every
    other channel becomes empty. ``r = 0`` is "Refill" (about the same number of weights as the IMP
    mask), ``r > 0`` "Refill+" (extra channels). Channels are ranked by ``importance``:

    * ``"count"`` -- the number of weights the IMP mask keeps in the channel (the authors' code
      default, ``criteria="remain"``); ties are broken by the l1 norm of the kept weights when
      weights are given, then by the lower channel index (the authors' code picks one tied channel
      at random, and keeps *all* channels above the k-th smallest count, so its channel count can
      differ from the formula; ours keeps exactly ``c``);
    * ``"l1"`` -- the l1 norm of the weights the IMP mask keeps in the channel (the trained weights
      the mask was computed from; the paper's "magnitude" alternative). Ties by lower index.

    A layer that still keeps some weight keeps at least one channel (the floor would otherwise
    empty a layer holding fewer than ``L`` weights and cut the network; the authors' code never
    reaches that case on ResNets because their conv rows are long but their layers wide).

Regroup (:func:`regroup_blocks`, :func:`regroup`)
    The non-empty rows are partitioned into ``parts`` (8) groups by a partition of the hypergraph
    whose vertices are the rows and whose hyperedges are the columns (a column joins the rows that
    keep a weight in it). The authors call hMETIS (``shmetis <file> 8 10``), a multilevel
    min-cut partitioner with a 10% balance tolerance -- a binary we cannot ship or call. Stand-in:
    **deterministic recursive spectral bisection of the hypergraph's clique expansion** (rows i, j
    joined with weight ``sum over shared columns e of 1/(|e|-1)``, the standard clique expansion):
    each split orders the rows by the Fiedler vector of the graph Laplacian (connected components
    first, largest first, each ordered by its own Fiedler vector) and cuts at the balanced size, so
    the parts are exactly balanced (sizes differ by at most one), reproducible (no random seed, the
    eigenvector's sign is fixed), and computed with numpy alone. Spectral bisection is the
    classical relaxation of the same balanced min-cut objective hMETIS optimises; it lacks
    hMETIS's multilevel coarsening and Fiduccia-Mattheyses refinement, so its cuts can be worse, and
    the parts -- hence the blocks -- differ from the authors'.

    Each part then grows a dense column set: its columns are sorted by how many of the part's rows
    keep a weight in them (ties: lower index), and the first ``i`` columns are taken for the
    smallest ``i`` such that, for *every* row of the part, ``i > t1 * (the row's kept weights
    outside those i columns)`` (``t1 = 1.5``). The block (the part's rows x those columns) becomes
    dense; parts of at most ``min_rows`` (16) rows give no block. The new mask is the union of the
    blocks: weights outside every block are dropped, zeros inside a block are filled. If no part
    gives a block, the layer's mask is returned unchanged, as in the authors' code.

    Differences from the authors' ``regroup`` besides the partitioner: their growth loop tests
    column ``i`` (the loop counter) instead of the column just added (``cc[i-1]``) when it counts a
    row's remaining weights, and stops counting the rows of a part at the first row that fails;
    we count the remaining weights of every row over the columns actually taken. Their loop also
    never takes all columns (``range(1, ncols)``); ours may. Their split of parts over 32 rows
    into a multiple of 32 and a remainder (GPU tiling) does not change the mask, so it is left out.

Structure metrics (:func:`structure_metrics`)
    For any mask on any model: the fraction of empty output channels (rows without a kept weight),
    the fraction of kept weights that lie in dense blocks, and the parameters and FLOPs of the
    model with its dead channels physically removed, computed analytically from channel counts.
    See the function's docstring for the exact definitions.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..masks import Mask
from ..prunable import parameter_names, prunable_layers

__all__ = [
    "STRUCTURES",
    "IMPORTANCES",
    "StructureError",
    "refill_channel_count",
    "refill",
    "RegroupResult",
    "partition_rows",
    "regroup_blocks",
    "regroup",
    "structurable_weights",
    "structure_mask",
    "dense_block_fraction",
    "structure_metrics",
]

STRUCTURES = ("none", "refill", "refill+", "regroup")
IMPORTANCES = ("count", "l1")


class StructureError(ValueError):
    """An argument of a structuring step does not fit (shape, ratio, method, ...)."""


def _rows(t: torch.Tensor) -> torch.Tensor:
    if t.dim() < 2:
        raise StructureError(f"a structured mask needs a weight of >= 2 dimensions (rows = output channels), "
                             f"got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


# --- refill ---------------------------------------------------------------------------------------

def refill_channel_count(mask: torch.Tensor, r: float = 0.0) -> int:
    """``c = floor(nnz/L + r*(C_out - nnz/L))``, at least 1 while the layer keeps a weight, at most
    ``C_out`` (``L`` = row length). Computed in exact rational arithmetic where ``r`` is 0."""
    if not 0.0 <= r <= 1.0:
        raise StructureError(f"refill ratio r must be in [0, 1], got {r}")
    m = _rows(mask)
    rows, length = m.shape
    nnz = int(m.sum())
    if nnz == 0:
        return 0
    if r == 0.0:
        c = nnz // length
    else:
        n = nnz / length
        c = math.floor(n + r * (rows - n) + 1e-9)  # 1e-9: a product like 0.1*(64-6.0) must not fall below an int
    return int(min(rows, max(c, 1)))


def refill(mask: torch.Tensor, weights: torch.Tensor | None = None, r: float = 0.0,
           importance: str = "count") -> torch.Tensor:
    """Refill (``r = 0``) or Refill+ (``r > 0``) of one layer's mask: exactly
    :func:`refill_channel_count` output channels, the most important ones, made dense; the other
    channels empty. ``weights`` (same shape) are the trained weights the IMP mask was computed from:
    needed for ``importance="l1"``, used to break ties of ``"count"``. Returns a new bool tensor."""
    if importance not in IMPORTANCES:
        raise StructureError(f"refill importance {importance!r} is unknown; choose one of {IMPORTANCES}")
    m = _rows(mask.bool())
    if weights is not None and tuple(weights.shape) != tuple(mask.shape):
        raise StructureError(f"weights of shape {tuple(weights.shape)} do not fit the mask {tuple(mask.shape)}")
    if importance == "l1" and weights is None:
        raise StructureError("refill by l1 needs the layer's weights")
    c = refill_channel_count(m, r)
    rows = m.shape[0]
    l1 = (_rows(weights.detach().to("cpu", torch.float64)).abs() * m).sum(1) if weights is not None else None
    index = torch.arange(rows, dtype=torch.float64)
    if importance == "count":
        keys = [m.sum(1).to(torch.float64)] + ([l1] if l1 is not None else [])
    else:
        keys = [l1]
    # lexicographic: larger keys first, then the lower index
    order = np.lexsort([index.numpy()] + [(-k).numpy() for k in reversed(keys)])
    keep = torch.zeros(rows, dtype=torch.bool)
    keep[torch.as_tensor(order[:c], dtype=torch.long)] = True
    return keep[:, None].expand_as(m).reshape(mask.shape).clone()


# --- regroup --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegroupResult:
    """What :func:`regroup_blocks` did to one 2-D mask: the new mask, the parts (row indices of the
    partition of the non-empty rows) and the blocks ``(rows, columns)`` kept dense. ``fallback`` is
    True when no part gave a block and ``mask`` is the input, unchanged."""

    mask: torch.Tensor
    parts: tuple[tuple[int, ...], ...]
    blocks: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    fallback: bool


def _fiedler_order(w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Indices (into ``rows``) ordered for a balanced cut: connected components of the weighted graph
    ``w`` largest first (ties: lowest row), each ordered by its own Fiedler vector (ties: lower row)."""
    n = len(rows)
    label = -np.ones(n, dtype=np.int64)
    comps: list[np.ndarray] = []
    for start in range(n):  # connected components by breadth-first search (n is a layer's row count)
        if label[start] >= 0:
            continue
        label[start] = len(comps)
        frontier, members = [start], [start]
        while frontier:
            nxt = np.flatnonzero((w[frontier] > 0).any(0) & (label < 0))
            label[nxt] = len(comps)
            frontier = nxt.tolist()
            members += frontier
        comps.append(np.sort(np.asarray(members)))
    comps.sort(key=lambda c: (-len(c), rows[c[0]]))
    out = []
    for comp in comps:
        if len(comp) <= 2:
            out.append(comp)
            continue
        sub = w[np.ix_(comp, comp)]
        lap = np.diag(sub.sum(1)) - sub
        _, vecs = np.linalg.eigh(lap)
        v = vecs[:, 1]
        big = int(np.argmax(np.abs(v)))
        if v[big] < 0:
            v = -v
        v = np.round(v, 10)  # ties (and float noise) fall back to the row index
        out.append(comp[np.lexsort((rows[comp], v))])
    return np.concatenate(out)


def partition_rows(pattern: np.ndarray, parts: int) -> list[np.ndarray]:
    """Balanced partition of the rows of the boolean matrix ``pattern`` into ``parts`` groups, the
    stand-in for hMETIS (see the module docstring): recursive spectral bisection of the clique
    expansion of the hypergraph (rows = vertices, columns = hyperedges). Part sizes differ by at
    most one; fewer rows than ``parts`` give one part per row. Returns row indices, each sorted."""
    if parts < 1:
        raise StructureError(f"parts must be >= 1, got {parts}")
    pattern = np.asarray(pattern, dtype=bool)

    def split(idx: np.ndarray, k: int) -> list[np.ndarray]:
        if k <= 1 or len(idx) <= 1:
            return [idx]
        sub = pattern[idx].astype(np.float64)
        size = sub.sum(0)
        weight = np.where(size >= 2, 1.0 / np.maximum(size - 1, 1), 0.0)
        w = (sub * weight) @ sub.T
        np.fill_diagonal(w, 0.0)
        order = idx[_fiedler_order(w, idx)]
        k_left = k // 2
        n_left = int(round(len(idx) * k_left / k))
        return split(np.sort(order[:n_left]), k_left) + split(np.sort(order[n_left:]), k - k_left)

    groups = split(np.arange(pattern.shape[0]), min(parts, max(pattern.shape[0], 1)))
    return [g for g in groups if len(g)]


def regroup_blocks(mask: torch.Tensor, *, parts: int = 8, min_rows: int = 16, t1: float = 1.5) -> RegroupResult:
    """Regroup one layer's mask, viewed as ``rows x columns`` (see the module docstring)."""
    m = _rows(mask.bool())
    pattern = m.numpy()
    nonempty = np.flatnonzero(pattern.any(1))
    ncols = pattern.shape[1]
    groups = [nonempty[g] for g in partition_rows(pattern[nonempty], parts)] if len(nonempty) else []
    blocks = []
    for rows in groups:
        p = pattern[rows]
        order = np.lexsort((np.arange(ncols), -p.sum(0)))  # most-used columns first, then lower index
        covered = np.cumsum(p[:, order], axis=1)  # covered[j, i-1]: row j's kept weights in the first i columns
        remaining = p.sum(1)[:, None] - covered
        taken = np.arange(1, ncols + 1)
        ok = (taken[None, :] > t1 * remaining).all(0)
        if len(rows) <= min_rows or not ok.any():
            continue
        i = int(np.argmax(ok)) + 1
        blocks.append((tuple(int(r) for r in rows), tuple(sorted(int(c) for c in order[:i]))))
    parts_out = tuple(tuple(int(r) for r in g) for g in groups)
    if not blocks:
        return RegroupResult(mask.bool().clone(), parts_out, (), True)
    new = torch.zeros_like(m)
    for rows, cols in blocks:
        new[np.ix_(rows, cols)] = True
    return RegroupResult(new.reshape(mask.shape), parts_out, tuple(blocks), False)


def regroup(mask: torch.Tensor, *, parts: int = 8, min_rows: int = 16, t1: float = 1.5) -> torch.Tensor:
    """The regrouped mask of one layer (a new bool tensor of the same shape); see :func:`regroup_blocks`."""
    return regroup_blocks(mask, parts=parts, min_rows=min_rows, t1=t1).mask


# --- whole masks ----------------------------------------------------------------------------------

def structurable_weights(model: nn.Module, mask: Mask, *, layers: str = "all",
                         exclude: Iterable[str] = ()) -> list[str]:
    """The masked weights a structuring step acts on: weights of Conv layers (``layers="conv"``) or
    of Conv and Linear layers (``"all"``) that ``mask`` covers, minus ``exclude`` (IMP passes the
    output layer's weight: its rows are the classes). Raw parameters and embeddings are left alone."""
    if layers not in ("all", "conv"):
        raise StructureError(f"layers must be 'all' or 'conv', got {layers!r}")
    canonical = parameter_names(model)
    skip = set(exclude)
    out = []
    for _, module in prunable_layers(model):
        if layers == "conv" and isinstance(module, nn.Linear):
            continue
        name = canonical.get(id(module.weight))
        if name in mask and name not in skip and name not in out:
            out.append(name)
    return out


def structure_mask(mask: Mask, method: str, names: Sequence[str], *,
                   weights: Mapping[str, torch.Tensor] | None = None, ratio: float = 0.0,
                   importance: str = "count", parts: int = 8, min_rows: int = 16, t1: float = 1.5) -> Mask:
    """``mask`` with the layers ``names`` structured by ``method`` (``refill``: ``ratio`` is
    ignored and taken as 0; ``refill+``: ``ratio`` is r; ``regroup``; ``none``: unchanged)."""
    if method not in STRUCTURES:
        raise StructureError(f"structure {method!r} is unknown; choose one of {STRUCTURES}")
    if method == "none":
        return mask
    out = dict(mask.items())
    for name in names:
        if method == "regroup":
            out[name] = regroup(mask[name], parts=parts, min_rows=min_rows, t1=t1)
        else:
            w = None if weights is None else weights[name]
            out[name] = refill(mask[name], w, ratio if method == "refill+" else 0.0, importance)
    return Mask(out)


# --- metrics --------------------------------------------------------------------------------------

def dense_block_fraction(mask: torch.Tensor, min_block_rows: int = 2) -> tuple[int, int]:
    """(kept weights in dense blocks, kept weights) of one layer's mask.

    A dense block is a set of rows with the *same* non-empty pattern (the block is those rows x the
    pattern's columns, all kept); it counts when it has at least ``min_block_rows`` rows, or when its
    pattern is the full row (whole channels: a single kept channel is a dense block too). Refill
    masks are therefore all in blocks; regroup masks are, apart from parts that share no pattern
    (no block was found); an unstructured mask almost never is, except for fully dense rows."""
    m = _rows(mask.bool())
    kept = int(m.sum())
    if kept == 0:
        return 0, 0
    patterns, counts = torch.unique(m[m.any(1)], dim=0, return_counts=True)
    inside = 0
    for p, n in zip(patterns, counts):
        if int(n) >= min_block_rows or bool(p.all()):
            inside += int(n) * int(p.sum())
    return inside, kept


def structure_metrics(model: nn.Module, mask: Mask, input_shape: tuple[int, ...], *,
                      names: Sequence[str] | None = None, example_input: torch.Tensor | None = None,
                      min_block_rows: int = 2) -> dict[str, Any]:
    """How structured ``mask`` is, and what its model costs once its dead channels are removed.

    * ``empty_channel_fraction``: output channels (Conv) and units (Linear) of the weights ``names``
      (by default every masked Linear/Conv weight; IMP passes the layers its structure step acts on,
      so the unstructured output layer does not blur the figure) that keep no weight / all their rows;
    * ``block_nonzero_fraction``: kept weights of those layers inside dense blocks
      (:func:`dense_block_fraction`) / their kept weights (1.0 for Refill and for regroup layers
      that found blocks);
    * ``shrunk_params`` / ``params_dense``: weights and biases of all Linear/Conv layers of the model
      with dead channels removed / of the dense model. A channel is dead when it carries nothing from
      the input to the output: all weights of a layer that touch it are off every input->output path
      (the effective weights of :mod:`ticketlab.analysis.connectivity`, so an empty output channel
      also removes the next layer's columns reading it, through pooling, flattening and BN). Each
      layer keeps ``out_alive x in_alive x kernel`` weights and ``out_alive`` biases: the dense
      layer of a physically smaller model, the zeros *inside* the kept channels still counted;
      the biases of removed channels are dropped (their constant output could be folded into the
      next layer's bias), as channel pruning does;
    * ``shrunk_flops`` / ``flops_dense``: forward multiply-adds of one sample of those layers
      (:mod:`ticketlab.analysis.flops` convention: one weight = one FLOP per output position), of
      the shrunk and of the dense model.

    In nets with residual additions the channels summed into one stream must match across the
    add, which this per-layer count ignores: there the shrunk figures are a lower bound on what a
    real (dependency-graph) shrink gives. If the connectivity analysis cannot run on the model, the
    mask's own empty rows and columns are used instead and ``structure_error`` says why.
    Unmasked Linear/Conv layers count as dense. The two fractions are None when ``names`` holds no
    row / no kept weight.
    """
    from ..analysis.connectivity import ConnectivityError, effective_mask
    from ..analysis.flops import layer_flops

    canonical = parameter_names(model)
    weights: dict[str, torch.Tensor] = {}
    biases: dict[str, int] = {}
    for _, module in prunable_layers(model):
        name = canonical[id(module.weight)]
        if name not in weights:
            weights[name] = module.weight
            biases[name] = 0 if getattr(module, "bias", None) is None else 1
    full = Mask({**{n: torch.ones(w.shape, dtype=torch.bool) for n, w in weights.items()}, **dict(mask.items())})
    result: dict[str, Any] = {}
    try:
        alive = effective_mask(model, full, input_shape, example_input)
    except ConnectivityError as exc:
        alive = full
        result["structure_error"] = str(exc)
    positions: dict[str, int] = {}
    for row in layer_flops(model, input_shape, example_input=example_input):
        w = weights.get(row["weight"])
        if w is not None:
            positions[row["weight"]] = positions.get(row["weight"], 0) + row["dense_flops"] // w.numel()

    chosen = set(weights) & set(mask) if names is None else set(names)
    unknown = chosen - (set(weights) & set(mask))
    if unknown:
        raise StructureError(f"structure metrics: {sorted(unknown)} are not masked Linear/Conv weights of the model")
    empty = rows_total = inside = kept = 0
    params = params_dense = flops = flops_dense = 0
    for name, w in weights.items():
        if name in chosen and w.dim() >= 2:
            m = _rows(mask[name])
            empty += int((~m.any(1)).sum())
            rows_total += m.shape[0]
            i, k = dense_block_fraction(mask[name], min_block_rows)
            inside, kept = inside + i, kept + k
        a = alive[name]
        if w.dim() >= 2:
            out_alive = int(_rows(a).any(1).sum())
            in_alive = int(_rows(a.transpose(0, 1)).any(1).sum())
            per = math.prod(w.shape[2:])
        else:  # a 1-D weight (never a Linear/Conv one); count it as it is
            out_alive, in_alive, per = int(a.any()), 1, w.numel()
        layer = out_alive * in_alive * per
        params += layer + biases[name] * out_alive
        params_dense += w.numel() + biases[name] * w.shape[0]
        flops += positions.get(name, 0) * layer
        flops_dense += positions.get(name, 0) * w.numel()
    result.update({
        "empty_channel_fraction": empty / rows_total if rows_total else None,
        "block_nonzero_fraction": inside / kept if kept else None,
        "shrunk_params": params, "params_dense": params_dense,
        "shrunk_flops": flops, "flops_dense": flops_dense,
    })
    return result
