"""Triton kernels for packed variable-length attention with an optional frame-causal mask.

FlashAttention-2 style (online softmax in fp32, log-sum-exp saved for the backward),
structured like Triton's tutorial 06-fused-attention: ``@triton.jit`` tile helpers and grid
kernels, launchers that validate what they hand to the GPU, and one
``torch.autograd.Function``. The public entry point is
:func:`pyramid_core.attention.varlen_attention` (``backend="triton"``), which validates the
arguments first; this module trusts that validation and only re-checks what the kernels
themselves depend on (strides, dtypes, devices).

Layout (as ``flash_attn_varlen_func``): ``q (total, H, D)``, ``k, v (total, H_kv, D)`` with
``H % H_kv == 0`` (grouped-query heads), ``cu_seqlens`` int32 ``(num_seqs + 1,)`` shared by
queries and keys (self-attention), optional ``frame_ids`` int32 ``(total,)``: token ``i`` may
attend token ``j`` of its own sequence iff ``frame_ids[j] <= frame_ids[i]``.

How the frame mask is applied. Each query tile knows the min/max frame of its rows, each key
tile the min/max frame of its columns. A key tile whose smallest frame is above the query
tile's largest frame is skipped (its K/V loads are predicated off and no math runs); a key
tile whose largest frame is at most the query tile's smallest frame is fully visible and runs
without building the mask; only tiles on a frame boundary compute ``fk <= fq``. Frame ids need
not be sorted for correctness; with the usual layout (text at frame 0, then frames in time
order) the skipped tiles are the whole "future" and the masked tiles a thin band.

No host synchronisation. The grid has ``cdiv(total, BLOCK) + num_seqs`` programs per head (an
upper bound on the number of tiles that needs no lengths on the host); each program walks
``cu_seqlens`` to find its sequence (a ``num_seqs``-long scalar loop, negligible for the few
dozen sequences of a packed batch) and surplus programs exit at once. So neither a
``max_seqlen`` nor any ``.item()`` is needed.

Limits:
  * head_dim <= 128. 64 and 128 run unpadded; any other size is padded in-kernel to the next
    of 64 / 128 (masked loads, e.g. 40 -> 64), costing the padded FLOPs.
  * fp16 and bf16 on CUDA (fp32 accumulation, exp2 softmax). fp32 also runs (dots in IEEE
    fp32, slow; meant for tests). The Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors)
    runs fp32 and fp16 but not bf16: it stores bf16 as uint16 and does arithmetic on the
    bit patterns (triton 3.7-3.9, checked 2025-11).
  * Token and head strides are free (q/k/v may be views into a fused qkv tensor), the head_dim
    stride must be 1. Row offsets are int64 per sequence start, in-tile offsets int32.
  * Deterministic: the backward has no atomics (dK/dV per key tile loop over the query tiles,
    and over the query heads of a GQA group; dQ is a separate kernel).
  * Autotuning (CUDA only) is keyed on a power-of-two bucket of the mean sequence length, the
    padded head_dim and the mask switches; tensor dtypes are added to the key by Triton. Its
    results are kept in Triton's cache dir for the next process. The
    configuration lists were chosen for sm_80 (A100: 164 KB shared memory, 255 registers per
    thread) from offline register/spill reports (``python -m pyramid_core.attention.aot``) and
    also compile for sm_90 (wgmma); a keep-filter drops the ones that spill for a head_dim.

Compiler notes (dates are when observed):
  * 2025-11, triton 3.9: a K/V load nested inside the ``if visible:`` branch would not be
    software-pipelined, so the loads stay at loop level and are predicated on the visibility
    instead; only the math is under the branch.
  * 2025-11, triton 3.9: masked scores use ``-inf`` while the running max starts at a large
    finite negative value, so a row that has seen only masked keys gets ``exp2(-inf) = 0``
    instead of ``exp2(-inf - -inf) = nan``.
  * 2025-11, triton 3.9 / ptxas 12.x: the dK/dV kernel holds K, V and two fp32 accumulators
    for its whole life; at head_dim 128 it needs 8 warps to stay within 255 registers on sm_80.
  * 2025-11, triton 3.9, sm_80: without the frame mask the backward tiles' dots sat directly
    in the loop body, where the dot-operand prefetch keeps the next tiles in registers too; at
    head_dim 128 that spilled 560-1200 B. The mask-free backward therefore also runs its math
    under a runtime (always true) branch, like the masked one: no spills, and no prefetch.
  * 2025-11, triton 3.9 interpreter: ``bool_tensor & bool_scalar`` yields an int32 array that
    ``tl.load`` rejects as a mask ("mask has unsupported dtype"), so row predicates are built
    as one comparison, ``rows < tl.where(visible, seq_len, 0)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import selfcheck
from .plan import pack_plan
from .sdpa import varlen_attention_sdpa

LOG2E = 1.4426950408889634
INT32_MAX = tl.constexpr(2147483647)
INT32_MIN = tl.constexpr(-2147483648)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128


def is_interpreting() -> bool:
    """True when the kernels of this module were built for Triton's CPU interpreter.

    Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a function, i.e. when this
    module is first imported; setting the variable later has no effect on these kernels.
    """
    return not isinstance(_varlen_fwd_kernel, triton.runtime.JITFunction)


# =============================================================================================
# Tile helpers
# =============================================================================================


@triton.jit
def _locate_tile(cu_seqlens, num_seqs, tile_id, BLOCK: tl.constexpr):
    """Flat tile index -> (start row of its sequence, sequence length, first row of the tile).

    Tiles are numbered sequence after sequence, ``cdiv(len, BLOCK)`` per sequence; inside a
    sequence the last tile comes first (with a frame-causal mask the last rows see the most
    keys, so the longest programs start early). Programs past the last tile get length 0.
    """
    seq_start = tl.load(cu_seqlens) * 0
    seq_len = seq_start
    row0 = seq_start
    tiles_before = seq_start
    start = seq_start
    for b in range(num_seqs):
        end = tl.load(cu_seqlens + b + 1)
        n_tiles = tl.cdiv(end - start, BLOCK)
        hit = (tile_id >= tiles_before) & (tile_id < tiles_before + n_tiles)
        seq_start = tl.where(hit, start, seq_start)
        seq_len = tl.where(hit, end - start, seq_len)
        row0 = tl.where(hit, (n_tiles - 1 - (tile_id - tiles_before)) * BLOCK, row0)
        tiles_before += n_tiles
        start = end
    return seq_start, seq_len, row0


@triton.jit
def _load_rows(ptrs, rows_in, d_in, EVEN_D: tl.constexpr):
    """Load a (rows, BLOCK_D) tile; rows outside ``rows_in`` and padded head dims read 0."""
    if EVEN_D:
        x = tl.load(ptrs, mask=rows_in[:, None], other=0.0)
    else:
        x = tl.load(ptrs, mask=rows_in[:, None] & d_in[None, :], other=0.0)
    return x


@triton.jit
def _load_full_rows(ptrs, d_in, EVEN_D: tl.constexpr):
    """Load a tile known to lie inside the sequence (only padded head dims are masked)."""
    if EVEN_D:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=d_in[None, :], other=0.0)
    return x


@triton.jit
def _frame_range(frames, rows_in):
    """(min, max) frame over the valid rows of a tile."""
    lo = tl.min(tl.where(rows_in, frames, INT32_MAX), 0)
    hi = tl.max(tl.where(rows_in, frames, INT32_MIN), 0)
    return lo, hi


@triton.jit
def _count_frames(frames, seq_len, value, INCLUSIVE: tl.constexpr):
    """How many of the sequence's ``seq_len`` frame ids (non-decreasing, at ``frames``) are
    ``<= value`` (``INCLUSIVE``) or ``< value``: a binary search, ~log2(seq_len) scalar loads
    per program."""
    lo = seq_len * 0
    hi = seq_len
    while lo < hi:
        mid = (lo + hi) // 2
        frame = tl.load(frames + mid)
        if INCLUSIVE:
            below = frame <= value
        else:
            below = frame < value
        lo = tl.where(below, mid + 1, lo)
        hi = tl.where(below, hi, mid)
    return lo


# =============================================================================================
# Forward
# =============================================================================================


@triton.jit
def _fwd_tile(
    acc, l_i, m_i, q, fq, q_fmin, q_fmax,
    k_ptrs, v_ptrs, fk_ptr, start_n, seq_len, offs_n, d_in, qk_scale,
    BOUNDS: tl.constexpr, FRAME_MASK: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One key tile of the online softmax: update (acc, l_i, m_i) of a query tile."""
    cols = start_n + offs_n
    n_in = cols < seq_len
    if FRAME_MASK:
        # Out-of-sequence keys read frame INT32_MAX: never visible, and they force the mask.
        fk = tl.load(fk_ptr + cols, mask=n_in, other=INT32_MAX)
        visible = tl.min(fk, 0) <= q_fmax  # some row sees some key of this tile
        need_mask = tl.max(fk, 0) > q_fmin  # some row misses some key of this tile
        # Invisible tile: predicate every row off (cols < 0) rather than branch around the loads.
        ld = cols < tl.where(visible, seq_len, 0)
        k = _load_rows(k_ptrs, ld, d_in, EVEN_D)
        v = _load_rows(v_ptrs, ld, d_in, EVEN_D)
    else:
        visible = True
        need_mask = BOUNDS
        if BOUNDS:
            k = _load_rows(k_ptrs, n_in, d_in, EVEN_D)
            v = _load_rows(v_ptrs, n_in, d_in, EVEN_D)
        else:
            k = _load_full_rows(k_ptrs, d_in, EVEN_D)
            v = _load_full_rows(v_ptrs, d_in, EVEN_D)
    if visible:
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if need_mask:
            if FRAME_MASK:
                keep = fk[None, :] <= fq[:, None]
            else:
                keep = n_in[None, :]
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _varlen_fwd_kernel(
    Q, K, V, O, LSE, CU_SEQLENS, FRAME_IDS,
    qk_scale, num_seqs,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_ot, stride_oh, stride_lse_h,
    seq_bucket,  # autotuning key only
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    FRAME_MASK: tl.constexpr, SORTED_FRAMES: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq_start, seq_len, row0 = _locate_tile(CU_SEQLENS, num_seqs, tl.program_id(0), BLOCK_M)
    if row0 >= seq_len:  # surplus program (or empty sequence)
        return
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    off_h = tl.program_id(1)
    off_hk = off_h // GROUP
    base = seq_start.to(tl.int64)

    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_in = offs_m < seq_len
    d_in = offs_d < HEAD_DIM

    q_ptrs = Q + base * stride_qt + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
    k_ptrs = K + base * stride_kt + off_hk * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = V + base * stride_vt + off_hk * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]
    fk_ptr = FRAME_IDS + base
    q = _load_rows(q_ptrs, m_in, d_in, EVEN_D)
    if FRAME_MASK:
        fq = tl.load(fk_ptr + offs_m, mask=m_in, other=INT32_MIN)
        q_fmin, q_fmax = _frame_range(fq, m_in)
    else:
        fq = 0
        q_fmin = 0
        q_fmax = 0

    # Running max starts finite (see the compiler notes); l_i and acc in fp32.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if SORTED_FRAMES:
        # Sorted ids: the keys every row of this tile sees form a prefix (frames <= q_fmin),
        # and no row sees a key past the last frame <= q_fmax. The prefix's whole tiles run as
        # unmasked tiles (no frame-id loads in the loop, so Triton pipelines their K/V loads
        # like the mask-free kernel's); only the band up to the visible end is masked, and the
        # future is never visited.
        n_open = (_count_frames(fk_ptr, seq_len, q_fmin, True) // BLOCK_N) * BLOCK_N
        n_end = _count_frames(fk_ptr, seq_len, q_fmax, True)
        for start_n in range(0, n_open, BLOCK_N):
            acc, l_i, m_i = _fwd_tile(
                acc, l_i, m_i, q, fq, q_fmin, q_fmax,
                k_ptrs + start_n * stride_kt, v_ptrs + start_n * stride_vt, fk_ptr,
                start_n, seq_len, offs_n, d_in, qk_scale,
                False, False, EVEN_D, DOT_PRECISION,
            )
        for start_n in range(n_open, n_end, BLOCK_N):
            acc, l_i, m_i = _fwd_tile(
                acc, l_i, m_i, q, fq, q_fmin, q_fmax,
                k_ptrs + start_n * stride_kt, v_ptrs + start_n * stride_vt, fk_ptr,
                start_n, seq_len, offs_n, d_in, qk_scale,
                True, True, EVEN_D, DOT_PRECISION,
            )
    else:
        # Key tiles that lie inside the sequence need no bounds checks; the ragged last one does.
        n_full = (seq_len // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            acc, l_i, m_i = _fwd_tile(
                acc, l_i, m_i, q, fq, q_fmin, q_fmax,
                k_ptrs + start_n * stride_kt, v_ptrs + start_n * stride_vt, fk_ptr,
                start_n, seq_len, offs_n, d_in, qk_scale,
                False, FRAME_MASK, EVEN_D, DOT_PRECISION,
            )
        if n_full < seq_len:
            acc, l_i, m_i = _fwd_tile(
                acc, l_i, m_i, q, fq, q_fmin, q_fmax,
                k_ptrs + n_full * stride_kt, v_ptrs + n_full * stride_vt, fk_ptr,
                n_full, seq_len, offs_n, d_in, qk_scale,
                True, FRAME_MASK, EVEN_D, DOT_PRECISION,
            )

    # Every valid row sees at least itself, so l_i > 0 there; padding rows are not stored.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    o_ptrs = O + base * stride_ot + off_h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=m_in[:, None] & d_in[None, :])
    # LSE in base 2 of the scaled scores: the backward recomputes p = exp2(s * qk_scale - lse).
    tl.store(LSE + off_h * stride_lse_h + base + offs_m, m_i + tl.math.log2(l_safe), mask=m_in)


# =============================================================================================
# Backward
# =============================================================================================


@triton.jit
def _bwd_preprocess_kernel(
    O, DO, DELTA, total,
    stride_ot, stride_oh, stride_dot, stride_doh, stride_delta_h,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta = rowsum(dO * O), the softmax-Jacobian term shared by dK and dQ."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    off_h = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows < total)[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows64 = rows.to(tl.int64)
    o = tl.load(O + rows64[:, None] * stride_ot + off_h * stride_oh + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + rows64[:, None] * stride_dot + off_h * stride_doh + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + off_h * stride_delta_h + rows, delta, mask=rows < total)


@triton.jit
def _bwd_dkdv_tile(
    dk, dv, k, v, fk, k_fmin, k_fmax,
    q_ptrs, do_ptrs, lse_ptr, delta_ptr, fq_ptr, start_m, seq_len, offs_m, d_in, qk_scale,
    BOUNDS: tl.constexpr, FRAME_MASK: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One query tile's contribution to the dK/dV of a key tile (computed transposed, (N, M))."""
    rows = start_m + offs_m
    m_in = rows < seq_len
    if FRAME_MASK:
        # Padding rows read INT32_MIN: they see nothing, and they force the mask.
        fq = tl.load(fq_ptr + rows, mask=m_in, other=INT32_MIN)
        visible = k_fmin <= tl.max(fq, 0)
        need_mask = k_fmax > tl.min(fq, 0)
        ld = rows < tl.where(visible, seq_len, 0)
        q = _load_rows(q_ptrs, ld, d_in, EVEN_D)
        do = _load_rows(do_ptrs, ld, d_in, EVEN_D)
    else:
        # Always true, but a runtime branch: it keeps the dots out of Triton's dot-operand
        # prefetch, which doubles the live register tiles and spills at head_dim 128.
        visible = start_m < seq_len
        need_mask = BOUNDS
        ld = m_in
        if BOUNDS:
            q = _load_rows(q_ptrs, m_in, d_in, EVEN_D)
            do = _load_rows(do_ptrs, m_in, d_in, EVEN_D)
        else:
            q = _load_full_rows(q_ptrs, d_in, EVEN_D)
            do = _load_full_rows(do_ptrs, d_in, EVEN_D)
    lse = tl.load(lse_ptr + rows, mask=ld, other=0.0)
    delta = tl.load(delta_ptr + rows, mask=ld, other=0.0)
    if visible:
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        p_t = tl.math.exp2(s_t - lse[None, :])
        if need_mask:
            if FRAME_MASK:
                keep = fk[:, None] <= fq[None, :]
            else:
                keep = m_in[None, :]
            p_t = tl.where(keep, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _varlen_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_SEQLENS, FRAME_IDS,
    qk_scale, sm_scale, num_seqs,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lse_h,
    seq_bucket,  # autotuning key only
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    FRAME_MASK: tl.constexpr, SORTED_FRAMES: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK, dV for one key tile of one K/V head, summed over the query heads of its group."""
    seq_start, seq_len, col0 = _locate_tile(CU_SEQLENS, num_seqs, tl.program_id(0), BLOCK_N)
    if col0 >= seq_len:
        return
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    off_hk = tl.program_id(1)
    base = seq_start.to(tl.int64)

    offs_n = col0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_in = offs_n < seq_len
    d_in = offs_d < HEAD_DIM

    k = _load_rows(K + base * stride_kt + off_hk * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
                   n_in, d_in, EVEN_D)
    v = _load_rows(V + base * stride_vt + off_hk * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :],
                   n_in, d_in, EVEN_D)
    fq_ptr = FRAME_IDS + base
    if FRAME_MASK:
        fk = tl.load(fq_ptr + offs_n, mask=n_in, other=INT32_MAX)
        k_fmin, k_fmax = _frame_range(fk, n_in)
    else:
        fk = 0
        k_fmin = 0
        k_fmax = 0

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    m_full = (seq_len // BLOCK_M) * BLOCK_M
    for g in range(GROUP):
        off_h = off_hk * GROUP + g
        q_ptrs = Q + base * stride_qt + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
        do_ptrs = DO + base * stride_dot + off_h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :]
        lse_ptr = LSE + off_h * stride_lse_h + base
        delta_ptr = DELTA + off_h * stride_lse_h + base
        if SORTED_FRAMES:
            # Sorted ids (see the forward): query rows before the first frame >= k_fmin see
            # nothing of this key tile and are never visited; rows from the first frame >=
            # k_fmax on see all of it and run unmasked; the band between is masked.
            m_vis = (_count_frames(fq_ptr, seq_len, k_fmin, False) // BLOCK_M) * BLOCK_M
            m_open = tl.cdiv(_count_frames(fq_ptr, seq_len, k_fmax, False), BLOCK_M) * BLOCK_M
            for start_m in range(m_vis, tl.minimum(m_open, seq_len), BLOCK_M):
                dk, dv = _bwd_dkdv_tile(
                    dk, dv, k, v, fk, k_fmin, k_fmax,
                    q_ptrs + start_m * stride_qt, do_ptrs + start_m * stride_dot, lse_ptr, delta_ptr, fq_ptr,
                    start_m, seq_len, offs_m, d_in, qk_scale,
                    True, True, EVEN_D, DOT_PRECISION,
                )
            for start_m in range(m_open, m_full, BLOCK_M):
                dk, dv = _bwd_dkdv_tile(
                    dk, dv, k, v, fk, k_fmin, k_fmax,
                    q_ptrs + start_m * stride_qt, do_ptrs + start_m * stride_dot, lse_ptr, delta_ptr, fq_ptr,
                    start_m, seq_len, offs_m, d_in, qk_scale,
                    False, False, EVEN_D, DOT_PRECISION,
                )
            if (m_full < seq_len) & (m_open <= m_full):   # the ragged last tile, all rows open
                dk, dv = _bwd_dkdv_tile(
                    dk, dv, k, v, fk, k_fmin, k_fmax,
                    q_ptrs + m_full * stride_qt, do_ptrs + m_full * stride_dot, lse_ptr, delta_ptr, fq_ptr,
                    m_full, seq_len, offs_m, d_in, qk_scale,
                    True, False, EVEN_D, DOT_PRECISION,
                )
        else:
            for start_m in range(0, m_full, BLOCK_M):
                dk, dv = _bwd_dkdv_tile(
                    dk, dv, k, v, fk, k_fmin, k_fmax,
                    q_ptrs + start_m * stride_qt, do_ptrs + start_m * stride_dot, lse_ptr, delta_ptr, fq_ptr,
                    start_m, seq_len, offs_m, d_in, qk_scale,
                    False, FRAME_MASK, EVEN_D, DOT_PRECISION,
                )
            if m_full < seq_len:
                dk, dv = _bwd_dkdv_tile(
                    dk, dv, k, v, fk, k_fmin, k_fmax,
                    q_ptrs + m_full * stride_qt, do_ptrs + m_full * stride_dot, lse_ptr, delta_ptr, fq_ptr,
                    m_full, seq_len, offs_m, d_in, qk_scale,
                    True, FRAME_MASK, EVEN_D, DOT_PRECISION,
                )

    st_mask = n_in[:, None] & d_in[None, :]
    dk_ptrs = DK + base * stride_dkt + off_hk * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :]
    dv_ptrs = DV + base * stride_dvt + off_hk * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :]
    tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=st_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=st_mask)


@triton.jit
def _bwd_dq_tile(
    dq, q, do, lse, delta, fq, q_fmin, q_fmax,
    k_ptrs, v_ptrs, fk_ptr, start_n, seq_len, offs_n, d_in, qk_scale,
    BOUNDS: tl.constexpr, FRAME_MASK: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One key tile's contribution to dQ of a query tile."""
    cols = start_n + offs_n
    n_in = cols < seq_len
    if FRAME_MASK:
        fk = tl.load(fk_ptr + cols, mask=n_in, other=INT32_MAX)
        visible = tl.min(fk, 0) <= q_fmax
        need_mask = tl.max(fk, 0) > q_fmin
        # Invisible tile: predicate every row off (cols < 0) rather than branch around the loads.
        ld = cols < tl.where(visible, seq_len, 0)
        k = _load_rows(k_ptrs, ld, d_in, EVEN_D)
        v = _load_rows(v_ptrs, ld, d_in, EVEN_D)
    else:
        visible = start_n < seq_len  # runtime branch, see _bwd_dkdv_tile
        need_mask = BOUNDS
        if BOUNDS:
            k = _load_rows(k_ptrs, n_in, d_in, EVEN_D)
            v = _load_rows(v_ptrs, n_in, d_in, EVEN_D)
        else:
            k = _load_full_rows(k_ptrs, d_in, EVEN_D)
            v = _load_full_rows(v_ptrs, d_in, EVEN_D)
    if visible:
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        if need_mask:
            if FRAME_MASK:
                keep = fk[None, :] <= fq[:, None]
            else:
                keep = n_in[None, :]
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _varlen_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_SEQLENS, FRAME_IDS,
    qk_scale, sm_scale, num_seqs,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_dqt, stride_dqh, stride_lse_h,
    seq_bucket,  # autotuning key only
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    FRAME_MASK: tl.constexpr, SORTED_FRAMES: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ for one query tile of one query head."""
    seq_start, seq_len, row0 = _locate_tile(CU_SEQLENS, num_seqs, tl.program_id(0), BLOCK_M)
    if row0 >= seq_len:
        return
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    off_h = tl.program_id(1)
    off_hk = off_h // GROUP
    base = seq_start.to(tl.int64)

    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_in = offs_m < seq_len
    d_in = offs_d < HEAD_DIM

    q = _load_rows(Q + base * stride_qt + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                   m_in, d_in, EVEN_D)
    do = _load_rows(DO + base * stride_dot + off_h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                    m_in, d_in, EVEN_D)
    lse = tl.load(LSE + off_h * stride_lse_h + base + offs_m, mask=m_in, other=0.0)
    delta = tl.load(DELTA + off_h * stride_lse_h + base + offs_m, mask=m_in, other=0.0)
    k_ptrs = K + base * stride_kt + off_hk * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :]
    v_ptrs = V + base * stride_vt + off_hk * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]
    fk_ptr = FRAME_IDS + base
    if FRAME_MASK:
        fq = tl.load(fk_ptr + offs_m, mask=m_in, other=INT32_MIN)
        q_fmin, q_fmax = _frame_range(fq, m_in)
    else:
        fq = 0
        q_fmin = 0
        q_fmax = 0

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if SORTED_FRAMES:   # the forward's prefix / band split
        n_open = (_count_frames(fk_ptr, seq_len, q_fmin, True) // BLOCK_N) * BLOCK_N
        n_end = _count_frames(fk_ptr, seq_len, q_fmax, True)
        for start_n in range(0, n_open, BLOCK_N):
            dq = _bwd_dq_tile(
                dq, q, do, lse, delta, fq, q_fmin, q_fmax,
                k_ptrs + start_n * stride_kt, v_ptrs + start_n * stride_vt, fk_ptr,
                start_n, seq_len, offs_n, d_in, qk_scale,
                False, False, EVEN_D, DOT_PRECISION,
            )
        for start_n in range(n_open, n_end, BLOCK_N):
            dq = _bwd_dq_tile(
                dq, q, do, lse, delta, fq, q_fmin, q_fmax,
                k_ptrs + start_n * stride_kt, v_ptrs + start_n * stride_vt, fk_ptr,
                start_n, seq_len, offs_n, d_in, qk_scale,
                True, True, EVEN_D, DOT_PRECISION,
            )
    else:
        n_full = (seq_len // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            dq = _bwd_dq_tile(
                dq, q, do, lse, delta, fq, q_fmin, q_fmax,
                k_ptrs + start_n * stride_kt, v_ptrs + start_n * stride_vt, fk_ptr,
                start_n, seq_len, offs_n, d_in, qk_scale,
                False, FRAME_MASK, EVEN_D, DOT_PRECISION,
            )
        if n_full < seq_len:
            dq = _bwd_dq_tile(
                dq, q, do, lse, delta, fq, q_fmin, q_fmax,
                k_ptrs + n_full * stride_kt, v_ptrs + n_full * stride_vt, fk_ptr,
                n_full, seq_len, offs_n, d_in, qk_scale,
                True, FRAME_MASK, EVEN_D, DOT_PRECISION,
            )
    dq_ptrs = DQ + base * stride_dqt + off_h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :]
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=m_in[:, None] & d_in[None, :])


# =============================================================================================
# Autotuning
# =============================================================================================
#
# Candidates for sm_80 (A100); they compile for sm_90 too. ``keep`` removes the ones that the
# offline register report (python -m pyramid_core.attention.aot) shows spilling at a head_dim.


def _cfg(block_m, block_n, warps, stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


FWD_CONFIGS = [
    _cfg(128, 64, 4, 3),
    _cfg(128, 64, 8, 3),
    _cfg(128, 128, 8, 2),
    _cfg(64, 64, 4, 3),
    _cfg(64, 64, 8, 3),
    _cfg(64, 32, 4, 3),
    # Hopper (sm_90: 227 KB shared memory, wgmma): larger key tiles and deeper pipelines.
    _cfg(128, 128, 8, 3),
    _cfg(128, 128, 8, 4),
    _cfg(128, 64, 8, 4),
    _cfg(128, 64, 4, 4),
    _cfg(64, 128, 4, 3),
]
# (BLOCK_M, BLOCK_N, warps, stages) of the forward configs tried on sm_90 and newer only.
HOPPER_FWD = {(128, 128, 8, 3), (128, 128, 8, 4), (128, 64, 8, 4), (128, 64, 4, 4), (64, 128, 4, 3)}
# dK/dV: BLOCK_N is the key tile held for the whole program, BLOCK_M the query tile streamed.
BWD_DKDV_CONFIGS = [
    _cfg(32, 64, 4, 2),
    _cfg(32, 64, 8, 2),
    _cfg(32, 128, 8, 2),
    _cfg(64, 64, 8, 2),
]
BWD_DQ_CONFIGS = [
    _cfg(64, 32, 4, 2),
    _cfg(64, 64, 4, 2),
    _cfg(64, 64, 8, 2),
    _cfg(128, 32, 8, 2),
    _cfg(128, 64, 8, 2),
]


def keep_config(kernel: str, config: triton.Config, block_d: int, frame_mask: bool = True, arch: int = 80) -> bool:
    """Whether ``config`` stays a candidate for ``kernel`` ("fwd", "dkdv", "dq") at ``block_d``,
    with or without the frame mask, on a GPU of compute capability ``arch`` (80 for 8.0).

    From the sm_80 register reports (bf16, frame mask, triton 3.9, 2025-11), every kept
    config compiles without spills; the dropped ones spill (or waste warps):

    * fwd, head_dim 128: 8 warps, at most 64-key tiles (4 warps spill: 64x64 8 B with the
      frame mask, 64x32 144 B without). head_dim 64: 8 warps for 128-row tiles (128x64 with 4
      warps spills 16 B without the mask), 4 warps for 64-row tiles.
    * dK/dV, head_dim 64: 32-row query tiles (64-row tiles spill 8-168 B at 4 or 8 warps).
      head_dim 128: 8 warps and 64-key tiles (4 warps spill 8-64 B; 128 keys spill ~3 KB).
    * dQ, head_dim 128: at most 64x64 tiles, 4 warps only with 32-key tiles (64x64 with 4
      warps spills 96 B, 128x64 with 8 warps 376 B). head_dim 64: 8 warps for 128 rows.
    """
    bm, bn, warps = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps
    if kernel == "fwd":
        if (bm, bn, warps, config.num_stages) in HOPPER_FWD or (arch >= 90 and (bm, bn, warps) == (128, 64, 4)):
            # sm_90 reports (triton 3.9, 2026-12): none of these spills at head_dim 64 (117-244
            # registers); at 128 the 4-warp ones spill 16-976 B and 128x128 at 4 stages needs
            # 288 KB of shared memory.
            if arch < 90:
                return False
            return block_d <= 64 or (warps == 8 and (bm, bn, config.num_stages) != (128, 128, 4))
        if block_d > 64:
            # the frame-masked 128x64 tile spills 8 B on sm_80 since the sorted-frames fast
            # path gave the masked kernel its pipelined loop; sm_90's wgmma fits it (224 regs)
            return warps == 8 and bn <= 64 and not (frame_mask and bm == 128 and arch < 90)
        return warps == (8 if bm == 128 else 4)
    if kernel == "dkdv":
        if block_d > 64:
            return warps == 8 and bn == 64
        return bm == 32
    if kernel == "dq":
        if block_d > 64:
            return bm * bn <= 64 * 64 and (warps == 8 or bn == 32)
        return warps == 4 or bm == 128
    raise ValueError(f"unknown kernel {kernel!r}")


def _pruner(kernel: str):
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        major, minor = torch.cuda.get_device_capability(args["Q"].device)
        kept = [c for c in configs if keep_config(kernel, c, args["BLOCK_D"], args["FRAME_MASK"], major * 10 + minor)]
        return kept or configs[:1]

    return prune


_AUTOTUNE_KEY = ["seq_bucket", "BLOCK_D", "FRAME_MASK", "SORTED_FRAMES", "GROUP"]


def _autotuned(kernel_fn, configs, name: str):
    # cache_results: the winning config is kept in Triton's cache dir, so the next process on
    # this machine skips the benchmark (``python -m pyramid_core cache --clear`` removes it).
    return triton.autotune(configs, key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _pruner(name)},
                           cache_results=True)(kernel_fn)


_fwd_autotuned = _autotuned(_varlen_fwd_kernel, FWD_CONFIGS, "fwd")
_dkdv_autotuned = _autotuned(_varlen_bwd_dkdv_kernel, BWD_DKDV_CONFIGS, "dkdv")
_dq_autotuned = _autotuned(_varlen_bwd_dq_kernel, BWD_DQ_CONFIGS, "dq")

# Fixed tiles for the interpreter (small tiles keep CPU tests fast) and for forced configs.
INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}


def _launch(autotuned, grid, args, meta, config):
    """Run ``autotuned`` (CUDA) or its plain kernel with a fixed ``config`` (interpreter, tests)."""
    if config is None and not is_interpreting():
        autotuned[grid](*args, **meta)
        return
    config = dict(INTERPRETER_CONFIG if config is None else config)
    warps, stages = config.pop("num_warps", 4), config.pop("num_stages", 2)
    autotuned.fn[grid](*args, **meta, **config, num_warps=warps, num_stages=stages)


# =============================================================================================
# Launchers
# =============================================================================================


def padded_head_dim(head_dim: int) -> int:
    """The tile width used for ``head_dim``: 64 or 128."""
    return 64 if head_dim <= 64 else 128


def _seq_bucket(total: int, num_seqs: int) -> int:
    """Power-of-two bucket of the mean sequence length (autotuning key; no host sync)."""
    mean = max(1, total // max(1, num_seqs))
    return min(max(triton.next_power_of_2(mean), 128), 32768)


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _check_launch(name: str, tensors: dict, dtype: torch.dtype, device: torch.device) -> None:
    """What the kernels rely on: same device, one float dtype, unit stride on head_dim."""
    for arg, t in tensors.items():
        if t.device != device:
            raise ValueError(f"{name}: {arg} is on {t.device}, expected {device}")
        if t.dtype != dtype:
            raise ValueError(f"{name}: {arg} has dtype {t.dtype}, expected {dtype}")
        if t.dim() != 3 or t.stride(-1) != 1:
            raise ValueError(f"{name}: {arg} must be (tokens, heads, head_dim) with head_dim stride 1, "
                             f"got shape {tuple(t.shape)} strides {t.stride()}")
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: dtype {dtype} is not supported (use float16, bfloat16 or float32)")


def _index_args(q, cu_seqlens, frame_ids):
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.device != q.device or not cu_seqlens.is_contiguous():
        raise ValueError("cu_seqlens must be a contiguous int32 tensor on the device of q")
    if frame_ids is None:
        return cu_seqlens  # unused pointer; FRAME_MASK=False never reads it
    if frame_ids.dtype != torch.int32 or frame_ids.device != q.device or not frame_ids.is_contiguous():
        raise ValueError("frame_ids must be a contiguous int32 tensor on the device of q")
    return frame_ids


def _sorted_frames(cu_seqlens, frame_ids) -> bool:
    """Whether the frame ids never decrease within a sequence, read on the host once per
    tensor object (:func:`~pyramid_core.attention.plan.pack_plan`): the models build their
    ids once per stage, so this costs one synchronisation per stage, not per layer."""
    return frame_ids is not None and pack_plan(cu_seqlens, frame_ids).frames_sorted


def varlen_fwd(q, k, v, cu_seqlens, frame_ids, scale, config=None):
    """Forward launcher. Returns ``out (total, H, D)`` and ``lse (H, total)`` (fp32, base 2)."""
    total, heads, head_dim = q.shape
    _check_launch("varlen_fwd", {"q": q, "k": k, "v": v}, q.dtype, q.device)
    frames = _index_args(q, cu_seqlens, frame_ids)
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"varlen_fwd: head_dim {head_dim} > {MAX_HEAD_DIM}")
    num_seqs = cu_seqlens.numel() - 1
    out = torch.empty_like(q)
    lse = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(total, meta["BLOCK_M"]) + num_seqs, heads)  # noqa: E731
    args = (q, k, v, out, lse, cu_seqlens, frames, scale * LOG2E, num_seqs,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), lse.stride(0), _seq_bucket(total, num_seqs))
    meta = dict(GROUP=heads // k.shape[1], HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim),
                FRAME_MASK=frame_ids is not None, SORTED_FRAMES=_sorted_frames(cu_seqlens, frame_ids),
                DOT_PRECISION=_dot_precision(q.dtype))
    _launch(_fwd_autotuned, grid, args, meta, config)
    return out, lse


def varlen_bwd(do, q, k, v, out, lse, cu_seqlens, frame_ids, scale, config=None):
    """Backward launcher: returns ``dq, dk, dv`` shaped like ``q, k, v``."""
    total, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    if do.stride(-1) != 1:
        do = do.contiguous()
    _check_launch("varlen_bwd", {"do": do, "q": q, "k": k, "v": v, "out": out}, q.dtype, q.device)
    frames = _index_args(q, cu_seqlens, frame_ids)
    num_seqs = cu_seqlens.numel() - 1
    block_d = padded_head_dim(head_dim)
    bucket = _seq_bucket(total, num_seqs)

    delta = torch.empty_like(lse)
    pre_block = 64
    _bwd_preprocess_kernel[(triton.cdiv(total, pre_block), heads)](
        out, do, delta, total, out.stride(0), out.stride(1), do.stride(0), do.stride(1), delta.stride(0),
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=pre_block,
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    meta = dict(GROUP=heads // kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
                FRAME_MASK=frame_ids is not None, SORTED_FRAMES=_sorted_frames(cu_seqlens, frame_ids),
                DOT_PRECISION=_dot_precision(q.dtype))
    common = (scale * LOG2E, scale, num_seqs,
              q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
              do.stride(0), do.stride(1))
    _launch(_dkdv_autotuned,
            lambda m: (triton.cdiv(total, m["BLOCK_N"]) + num_seqs, kv_heads),
            (q, k, v, do, lse, delta, dk, dv, cu_seqlens, frames, *common,
             dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), lse.stride(0), bucket),
            meta, config)
    _launch(_dq_autotuned,
            lambda m: (triton.cdiv(total, m["BLOCK_M"]) + num_seqs, heads),
            (q, k, v, do, lse, delta, dq, cu_seqlens, frames, *common,
             dq.stride(0), dq.stride(1), lse.stride(0), bucket),
            meta, config)
    return dq, dk, dv


# =============================================================================================
# Autograd
# =============================================================================================


class VarlenAttentionFunction(torch.autograd.Function):
    """Triton varlen attention with gradients for q, k and v."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, frame_ids, scale, config):
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out, lse = varlen_fwd(q, k, v, cu_seqlens, frame_ids, scale, config)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, frame_ids)
        ctx.scale, ctx.config = scale, config
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, cu_seqlens, frame_ids = ctx.saved_tensors
        if not selfcheck.backward_ok(varlen_attention_triton, q, frame_ids):
            return (*_sdpa_gradients(do, q, k, v, cu_seqlens, frame_ids, ctx.scale), None, None, None, None)
        dq, dk, dv = varlen_bwd(do, q, k, v, out, lse, cu_seqlens, frame_ids, ctx.scale, ctx.config)
        return dq, dk, dv, None, None, None, None


def _sdpa_gradients(do, q, k, v, cu_seqlens, frame_ids, scale):
    """dq, dk, dv of the portable SDPA backend, for a backward that failed its self-check."""
    with torch.enable_grad():
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        out = varlen_attention_sdpa(q, k, v, cu_seqlens, frame_ids, scale)
        return torch.autograd.grad(out, (q, k, v), do)


def varlen_attention_triton(q, k, v, cu_seqlens, frame_ids=None, scale=None, config=None):
    """Triton backend of :func:`pyramid_core.attention.varlen_attention` (inputs pre-validated).

    ``config`` forces one tile configuration (``BLOCK_M``, ``BLOCK_N``, ``num_warps``,
    ``num_stages``) instead of autotuning; the interpreter always uses a fixed one.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return VarlenAttentionFunction.apply(q, k, v, cu_seqlens, frame_ids, scale, config)


__all__ = [
    "varlen_attention_triton", "varlen_fwd", "varlen_bwd", "VarlenAttentionFunction",
    "is_interpreting", "padded_head_dim", "keep_config", "MAX_HEAD_DIM", "SUPPORTED_DTYPES",
]
