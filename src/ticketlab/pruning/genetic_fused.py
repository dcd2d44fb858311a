"""The GA's population evaluation as one fused GPU kernel (Triton): ``FrozenMLP.correct(strategy="fused")``.

Why a kernel of its own: a population of small masked MLPs over many points is neither arithmetic-
nor memory-heavy, it is *launch*-heavy. A per-individual loop costs ~10 launches and a sync per
genome; the batched products of the ``"chunked"`` strategy still write every hidden activation of
every genome to memory and cost a few launches per point chunk. Here one program holds one genome's
masked weights in registers and streams blocks of points through the whole net, argmax and count
included: one launch per generation, no activation ever leaves the chip.

Exactness (the counts must equal a per-individual loop over ``nn.Linear`` exactly): every product
is a chain of fused multiply-adds in the input order, starting from zero, and the bias is added
after the sum, which is what ``nn.Linear``'s fp32 GEMM computes on a GPU (no TF32, no split sums):
a first layer of few inputs by explicit ``fma`` in input order, the other layers by ``tl.dot`` in
IEEE fp32 (Triton's fp32 "ieee" dot is a sequential FMA chain over the reduced dimension). Padding
rows and columns are zeros, whose products add exactly nothing. ``benchmarks/ga_population.py``
checks the counts against the loop on the device every run.

Triton is optional: :func:`available` says whether this strategy can run (a CUDA device and an
importable ``triton``); ``FrozenMLP.correct(strategy="auto")`` falls back to ``"chunked"`` otherwise.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MAX_HIDDEN = 3   # hidden layers the kernel has code for
MAX_WIDTH = 128  # widest padded layer: above it one genome's weights no longer fit the registers
FMA_FIRST_MAX = 8  # a first layer with at most this many inputs runs as explicit FMAs (no 16-wide padding)
# points per block (rows of each product) and warps per program for nets up to 64 wide (padded);
# wider nets get half the points and twice the warps (a block's activations and the genome's
# weights must stay in registers). H200 sweep (benchmarks/ga_population.py --sweep, [2, 50, 50, 2]):
# 128 x 4 warps 1.99 ms, 64 x 4 2.96 ms, 256 x 8 1.95 ms, 256 x 4 7.9 ms (register spills, by all signs).
BLOCK_POINTS = 128
NUM_WARPS = 4
PROGRAMS_PER_SM = 4  # enough programs (genomes x point groups) to fill the device


@functools.lru_cache(maxsize=None)
def _triton():
    try:
        import triton
        import triton.language as tl
    except Exception:  # not installed, or broken for this torch: the strategy is unavailable
        return None
    return triton, tl


def available(device: torch.device | str) -> bool:
    """Whether ``"fused"`` can run on ``device`` (CUDA and Triton importable)."""
    return torch.device(device).type == "cuda" and _triton() is not None


def supports(widths: Sequence[int]) -> bool:
    """Whether the kernel has code for this net: 1..MAX_HIDDEN hidden layers, padded widths <= MAX_WIDTH."""
    hidden = len(widths) - 2
    return 1 <= hidden <= MAX_HIDDEN and max(_pad(w) for w in widths) <= MAX_WIDTH


def _pad(width: int) -> int:
    """A layer width rounded up to a power of two of at least 16 (``tl.dot``'s smallest side)."""
    return max(16, 1 << (int(width) - 1).bit_length())


def _kernel():
    from . import _ga_kernel  # imports triton: only once the strategy runs

    return _ga_kernel.count_kernel


@dataclass
class FusedPlan:
    """Zero-padded weight stacks (K x rows x cols per layer, transposed) and biases for one
    population size; reused across generations (only the masked entries are rewritten)."""

    stacks: list[torch.Tensor]
    biases: list[torch.Tensor]
    counts: torch.Tensor


def make_plan(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], k: int) -> FusedPlan:
    dev = weights[0].device
    dims = [_first_rows(weights[0].shape[1])] + [_pad(w.shape[0]) for w in weights]
    stacks = [torch.zeros(k, dims[i], dims[i + 1], dtype=torch.float32, device=dev) for i in range(len(weights))]
    padded = []
    for b, width in zip(biases, dims[1:]):
        out = torch.zeros(width, dtype=torch.float32, device=dev)
        out[:b.shape[0]] = b
        padded.append(out)
    return FusedPlan(stacks, padded, torch.zeros(k, dtype=torch.int32, device=dev))


def launch_shape(widths: Sequence[int]) -> tuple[int, int]:
    """Points per block and warps per program for a net (see BLOCK_POINTS)."""
    wide = max(_pad(w) for w in widths) > 64
    return (BLOCK_POINTS // 2, NUM_WARPS * 2) if wide else (BLOCK_POINTS, NUM_WARPS)


def _first_rows(inputs: int) -> int:
    return inputs if inputs <= FMA_FIRST_MAX else _pad(inputs)


def count(plan: FusedPlan, weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
          x: torch.Tensor, y: torch.Tensor, *, block: int | None = None, num_warps: int | None = None,
          fma_first: bool | None = None, programs_per_sm: int | None = None) -> torch.Tensor:
    """Correct points per genome (int64, on the device). ``masks`` as ``FrozenMLP.layer_masks``;
    ``x`` (N x in, fp32, contiguous) and ``y`` (N, int64) on the device. ``block``, ``num_warps``,
    ``fma_first`` and ``programs_per_sm`` override the module defaults (for the benchmark's sweep)."""
    k = masks[0].shape[0]
    for stack, w, m in zip(plan.stacks, weights, masks):
        torch.mul(w.t(), m.transpose(1, 2), out=stack[:k, :w.shape[1], :w.shape[0]])
    plan.counts.zero_()
    d_in, hidden = weights[0].shape[1], len(weights) - 1
    fma = (d_in <= FMA_FIRST_MAX) if fma_first is None else bool(fma_first)
    dims = [s.shape[2] for s in plan.stacks]          # padded output widths, the last = classes
    first = plan.stacks[0]
    if not fma and first.shape[1] != _pad(d_in):      # the dot form on a thin input (sweep only)
        first = torch.zeros(first.shape[0], _pad(d_in), dims[0], device=first.device)
        first[:, :d_in] = plan.stacks[0][:, :d_in]
    ptrs: list[torch.Tensor] = [first, plan.biases[0]]
    for i in range(1, MAX_HIDDEN + 1):
        ptrs += [plan.stacks[i], plan.biases[i]] if i < len(plan.stacks) else [plan.biases[0], plan.biases[0]]
    default_block, default_warps = launch_shape([d_in] + [w.shape[0] for w in weights])
    block, num_warps = block or default_block, num_warps or default_warps
    blocks = -(-x.shape[0] // block)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.device.type == "cuda" else 1
    groups = max(1, min(blocks, -(-(programs_per_sm or PROGRAMS_PER_SM) * sms // k)))
    per_program = -(-blocks // groups)
    groups = -(-blocks // per_program)
    _kernel()[(k, groups)](
        x, y, x.shape[0], per_program, plan.counts, *ptrs,
        D_IN=d_in, D_IN_P=_pad(d_in), W0_ROWS=first.shape[1], FMA_FIRST=fma,
        H0=dims[0], H1=dims[1] if hidden > 1 else 1, H2=dims[2] if hidden > 2 else 1, HIDDEN=hidden,
        CLASSES=weights[-1].shape[0], C_P=dims[-1], BLOCK=block, num_warps=num_warps)
    return plan.counts[:k].to(torch.int64)
