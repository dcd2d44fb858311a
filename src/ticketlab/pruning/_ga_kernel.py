"""Triton kernel of the GA's fused population evaluation (see genetic_fused.py; imported only there,
once a "fused" evaluation runs, because importing triton costs time and triton is optional)."""
import triton
import triton.language as tl


@triton.jit
def _load_matrix(ptr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """A ROWS x COLS row-major matrix (one genome's masked, transposed, zero-padded weight)."""
    return tl.load(ptr + tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :])


@triton.jit
def _dense(h, w, b):
    """``h @ w + b``: the sum a sequential fp32 FMA chain (IEEE, no TF32), the bias added after it."""
    return tl.dot(h, w, input_precision="ieee") + b[None, :]


@triton.jit
def count_kernel(x_ptr, y_ptr, n_points, blocks_per_program, counts_ptr,
                 w0_ptr, b0_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr,
                 D_IN: tl.constexpr, D_IN_P: tl.constexpr, W0_ROWS: tl.constexpr, FMA_FIRST: tl.constexpr,
                 H0: tl.constexpr, H1: tl.constexpr, H2: tl.constexpr, HIDDEN: tl.constexpr,
                 CLASSES: tl.constexpr, C_P: tl.constexpr, BLOCK: tl.constexpr):
    """Program (genome, group): the genome's correct count over the group's point blocks, added
    to ``counts[genome]``. Layer i's stack holds K row-major (rows x cols) weights; the genome's
    weights are loaded once, before the loop over point blocks."""
    genome = tl.program_id(0)
    group = tl.program_id(1)
    cols0 = tl.arange(0, H0)
    b0 = tl.load(b0_ptr + cols0)
    if not FMA_FIRST:
        w0 = _load_matrix(w0_ptr + genome * (D_IN_P * H0), D_IN_P, H0)
    if HIDDEN == 1:
        w1 = _load_matrix(w1_ptr + genome * (H0 * C_P), H0, C_P)
        b1 = tl.load(b1_ptr + tl.arange(0, C_P))
    else:
        w1 = _load_matrix(w1_ptr + genome * (H0 * H1), H0, H1)
        b1 = tl.load(b1_ptr + tl.arange(0, H1))
    if HIDDEN == 2:
        w2 = _load_matrix(w2_ptr + genome * (H1 * C_P), H1, C_P)
        b2 = tl.load(b2_ptr + tl.arange(0, C_P))
    if HIDDEN == 3:
        w2 = _load_matrix(w2_ptr + genome * (H1 * H2), H1, H2)
        b2 = tl.load(b2_ptr + tl.arange(0, H2))
        w3 = _load_matrix(w3_ptr + genome * (H2 * C_P), H2, C_P)
        b3 = tl.load(b3_ptr + tl.arange(0, C_P))
    classes = tl.arange(0, C_P)
    total = tl.zeros((BLOCK,), dtype=tl.int32)
    for i in range(blocks_per_program):
        rows = (group * blocks_per_program + i) * BLOCK + tl.arange(0, BLOCK)
        valid = rows < n_points
        if FMA_FIRST:  # few inputs: input by input, in order, as the GEMM's FMA chain
            h = tl.zeros((BLOCK, H0), dtype=tl.float32)
            for j in tl.static_range(D_IN):
                xj = tl.load(x_ptr + rows * D_IN + j, mask=valid, other=0.0)
                wj = tl.load(w0_ptr + genome * (W0_ROWS * H0) + j * H0 + cols0)
                h = tl.fma(xj[:, None], wj[None, :], h)
            h = h + b0[None, :]
        else:
            inputs = tl.arange(0, D_IN_P)
            xb = tl.load(x_ptr + rows[:, None] * D_IN + inputs[None, :],
                         mask=valid[:, None] & (inputs[None, :] < D_IN), other=0.0)
            h = _dense(xb, w0, b0)
        h = tl.maximum(h, 0.0)
        if HIDDEN == 1:
            logits = _dense(h, w1, b1)
        elif HIDDEN == 2:
            h = tl.maximum(_dense(h, w1, b1), 0.0)
            logits = _dense(h, w2, b2)
        else:
            h = tl.maximum(_dense(h, w1, b1), 0.0)
            h = tl.maximum(_dense(h, w2, b2), 0.0)
            logits = _dense(h, w3, b3)
        logits = tl.where(classes[None, :] < CLASSES, logits, float("-inf"))
        pred = tl.argmax(logits, axis=1, tie_break_left=True)  # torch.argmax: the first maximum
        label = tl.load(y_ptr + rows, mask=valid, other=-1)
        total += ((pred.to(tl.int64) == label) & valid).to(tl.int32)
    tl.atomic_add(counts_ptr + genome, tl.sum(total, axis=0))
