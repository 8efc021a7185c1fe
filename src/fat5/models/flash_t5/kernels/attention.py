# Copyright 2026 The FAT5 Authors. Licensed under the Apache License, Version 2.0.
"""FAT5's attention in Triton: FlashAttention-2-style forward and backward that carry the position bias in the kernel.

    out = softmax(scale * q @ k.T + bias + mask) @ v

The bias is never a (query x key) tensor for the position encodings that do not need one:

- T5 relative buckets: the (buckets x heads) table is expanded into the bias of every relative position `key -
  query` in [-max_distance, max_distance] through transformers' T5 bucketing (`T5Attention._relative_position_bucket`,
  the definition the table follows; the kernels import nothing from the model), where the kernels' max_distance is
  `far_distance`: the distance from which the bucket no longer changes (92 for T5's 32 buckets and max distance 128,
  bidirectional). A tile's bias depends only on the offset of its corner from the diagonal, and the tiles within
  max_distance of the diagonal come in a few such offsets whatever the sequence lengths: their bias is gathered once,
  in the caller's graph, and a kernel reads one with a block load. A tile whose every relative position lies beyond
  max_distance (most tiles of a long sequence) adds a single value. Backward sums the score gradients of each
  relative position (a tile's diagonals) in the kernel, one partial row per program; autograd takes them back to the
  bucket table.
- ALiBi: `-slope * |key - query|` from the per-head slopes, symmetric or asymmetric (the first half of the heads
  sees only earlier keys, the second half only later ones).
- Any other bias (FIRE, a user's) is read as a dense (batch|1, heads|1, query, key) tensor, with its gradient.

Also in the kernels: the key-padding mask (batch, key), causal masking with the offset of cached keys, query and key
lengths that differ (cross-attention), head dims up to 128, fp16/bf16/fp32 (fp32 products in full precision), and
attention dropout (a counter-based Philox mask drawn from a seed, four scores a Philox call, drawn again by the
backward kernels: nothing of (query x key) size is stored). Rows whose every key is masked give zeros.

Paths the kernels do not take run through `torch.nn.functional.scaled_dot_product_attention` with a bias built for
the call (documented in `fat5_attention`): head dims above 128, dtypes other than fp16/bf16/fp32, 4D attention masks,
and decode steps (a few queries against a cache, where building the bias of those rows is cheap and the fused kernel
gains nothing).

The ops are `torch.library.triton_op`s on GPUs (see `kernel_op`): `torch.compile(fullgraph=True)` traces into them
and launches the kernels from the compiled graph. This module imports Triton: import it only where Triton exists.
"""

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton
from torch.nn import functional as F
from transformers.models.t5.modeling_t5 import T5Attention
from transformers.utils import logging

from .utils import fix_interpreter_loop_bounds, interpreting, is_decode_step, kernel_op, kernels_can_run


logger = logging.get_logger(__name__)

fix_interpreter_loop_bounds()

BIAS_NONE, BIAS_RELATIVE, BIAS_ALIBI, BIAS_DENSE = 0, 1, 2, 3
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    # Key/value-gradient kernel only: compute the tiles beyond max_distance keys by row.
    fast_keys_by_row: bool = False
    # Key/value-gradient kernel only: no bounds masks on the near-diagonal tiles of a call without a causal mask (they
    # lie inside both sequences). A tuned choice: it changes the whole kernel's register allocation.
    near_in_bounds: bool = False


def kernel_configs(head_dim: int, dtype: torch.dtype) -> dict[str, KernelConfig]:
    """Tile sizes of the forward, the key/value-gradient and the query-gradient kernels."""
    if interpreting():
        # Small tiles on CPU so that tests of a few dozen tokens cover several tiles and ragged ends.
        small = KernelConfig(16, 16, 1, 1)
        return {"forward": small, "backward_kv": small, "backward_q": small}
    if dtype == torch.float32:
        # fp32 tiles take twice the shared memory of half ones: the half-precision tiles would not fit.
        return {
            "forward": KernelConfig(64, 32, 4, 2),
            "backward_kv": KernelConfig(32, 64, 4, 2),
            "backward_q": KernelConfig(64, 32, 4, 2),
        }
    return dict(TUNED_CONFIGS["wide" if head_dim > 64 else "narrow"])


# Chosen with benchmarks/bench_attention.py --sweep (bf16, B*N = 32768, H = 12, N = 4096) on an H100; the wide
# key/value-gradient tiles on an H200 (a forward+backward with fast tiles keys by row, 32 x 128 and 8 warps: 4.98 ms at
# N = 2048 and 8.62 ms at N = 4096; 32 x 64 and 4 warps: 5.37 and 8.98 ms; 64 x 64 query by row: 10.3 ms at 4096).
# Near tiles in bounds, H200, key/value-gradient kernel at N = 2048: 2.57 against 2.59 ms wide, 1.361 against 1.351 ms
# narrow.
TUNED_CONFIGS = {
    "narrow": {
        "forward": KernelConfig(64, 64, 4, 3),
        "backward_kv": KernelConfig(64, 64, 4, 3),
        "backward_q": KernelConfig(64, 64, 4, 3),
    },
    "wide": {
        "forward": KernelConfig(128, 64, 8, 3),
        "backward_kv": KernelConfig(32, 128, 8, 3, fast_keys_by_row=True, near_in_bounds=True),
        "backward_q": KernelConfig(128, 64, 8, 3),
    },
}


@triton.jit
def _scores(
    q,
    k,
    start_m,
    start_n,
    offs_m,
    offs_n,
    batch,
    head,
    num_heads,
    seq_n,
    qk_scale,
    query_offset,
    relative_bias,
    key_mask_ptr,
    stride_mask_b,
    bias_ptr,
    stride_bias_b,
    stride_bias_h,
    stride_bias_m,
    stride_bias_n,
    seq_m,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IN_BOUNDS: tl.constexpr,
    BIAS_KIND: tl.constexpr,
    ALIBI_ASYMMETRIC: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    KEYS_BY_ROW: tl.constexpr,
):
    """The tile's scores in the log2 domain (natural-log scores times log2(e)), masked keys at -inf: (query x key), or
    (key x query) with KEYS_BY_ROW.

    An IN_BOUNDS tile lies inside both sequences and wholly on one side of the causal diagonal: no bounds, causal or
    relative position arithmetic per score. `relative_bias` is the T5 bias (log2 domain): one value beyond
    max_distance, or the tile's from `_near_bias_tile`; in the backward's fast T5 tiles and bias-free tiles, that one
    value (0 without a bias) less each query's log-sum-exp (a column or a row).
    """
    if KEYS_BY_ROW:
        query_index = offs_m[None, :]
        key_index = offs_n[:, None]
        s = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
    else:
        query_index = offs_m[:, None]
        key_index = offs_n[None, :]
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if BIAS_KIND == 1:
        s += relative_bias.to(tl.float32)
    if BIAS_KIND == 2:
        relative = key_index - (query_index + query_offset)
        slope = tl.load(bias_ptr + head)
        s -= slope * tl.abs(relative).to(tl.float32) * 1.4426950408889634
    if BIAS_KIND == 3:
        bias_ptrs = (
            bias_ptr
            + batch * stride_bias_b
            + head * stride_bias_h
            + query_index * stride_bias_m
            + key_index * stride_bias_n
        )
        # An in-bounds tile's keys lie inside the sequence, but the query rows of the last tile may run past seq_m.
        bias_mask = query_index < seq_m
        if not IN_BOUNDS:
            bias_mask = bias_mask & (key_index < seq_n)
        bias = tl.load(bias_ptrs, mask=bias_mask, other=0.0)
        s += bias.to(tl.float32) * 1.4426950408889634
    if not IN_BOUNDS:
        relative = key_index - (query_index + query_offset)
        valid = key_index < seq_n
        if CAUSAL:
            valid = valid & (relative <= 0)
        s = tl.where(valid, s, float("-inf"))
    if ALIBI_ASYMMETRIC:
        relative = key_index - (query_index + query_offset)
        backwards_only = head < num_heads // 2
        s = tl.where(tl.where(backwards_only, relative <= 0, relative >= 0), s, float("-inf"))
    if HAS_KEY_MASK:
        keep = tl.load(key_mask_ptr + batch * stride_mask_b + offs_n, mask=offs_n < seq_n, other=0) != 0
        s = tl.where(keep[:, None] if KEYS_BY_ROW else keep[None, :], s, float("-inf"))
    return s


@triton.jit
def _same_segment(s, query_segments, key_segments, KEYS_BY_ROW: tl.constexpr):
    """The scores of packed rows, keys of other segments (examples) and padding keys (segment 0) at -inf."""
    if KEYS_BY_ROW:
        same = (key_segments[:, None] == query_segments[None, :]) & (key_segments[:, None] != 0)
    else:
        same = (query_segments[:, None] == key_segments[None, :]) & (key_segments[None, :] != 0)
    return tl.where(same, s, float("-inf"))


@triton.jit
def _segment_range(SEGMENTS_ROW, OTHER_STARTS_ROW, offs, length, OTHER_BLOCK: tl.constexpr):
    """The segments of a tile's rows (0 past `length`), and the range [lo, hi) of the other sequence that holds the
    same segments: a packed row's examples are contiguous, so the tiles outside it are skipped whole. `lo` is rounded
    down to a tile of OTHER_BLOCK: the kernels' ranges are tiled from 0."""
    segments = tl.load(SEGMENTS_ROW + offs, mask=offs < length, other=0)
    last = tl.max(segments, 0)
    first = tl.min(tl.where(segments == 0, last, segments), 0)
    lo = tl.load(OTHER_STARTS_ROW + first)
    hi = tl.load(OTHER_STARTS_ROW + last + 1)
    # A tile of padding only (segment 0) attends to nothing.
    hi = tl.where(last == 0, lo, hi)
    return segments, lo // OTHER_BLOCK * OTHER_BLOCK, hi


@triton.jit
def _within_segments(lo, hi, segment_lo, segment_hi, HAS_SEGMENTS: tl.constexpr):
    """The range [lo, hi) of a kernel's loop, cut to its tile's examples in a packed call."""
    if HAS_SEGMENTS:
        lo = tl.maximum(lo, segment_lo)
        hi = tl.minimum(hi, segment_hi)
    return lo, hi


@triton.jit
def _dropout_keep(
    dropout_seed, batch_head, offs_m, start_n, dropout_p, BLOCK_N: tl.constexpr, KEYS_BY_ROW: tl.constexpr
):
    """Which scores of the tile of queries `offs_m` and keys [start_n, start_n + BLOCK_N) attention dropout keeps:
    (query x key), or (key x query) with KEYS_BY_ROW.

    One Philox4x32-10 call draws four consecutive keys of a query: its counter is (key // 4, query, 0, 0), its key
    (the seed's low word, the seed's high word | (batch, head)), so each head has its own stream, and output j is key
    4 * (key // 4) + j's. A score is kept when that uint32 is at least floor(p * 2^32) (p in fp32). The bits depend
    on the score's query and key only: the forward and both backward kernels draw the same mask whatever their tile
    shapes and layouts. `start_n` must be a multiple of 4 (the kernels' key tiles start at multiples of BLOCK_N), so
    that a group of four keys never straddles two tiles; positions past the sequences draw bits that the kernels'
    masks discard. The counter's words are the indices themselves: no length bounds the stream."""
    tl.static_assert(BLOCK_N % 4 == 0, "a tile holds whole groups of four keys")
    philox_key = (batch_head.to(tl.int64) << 32) | dropout_seed
    key_groups = start_n // 4 + tl.arange(0, BLOCK_N // 4)
    if KEYS_BY_ROW:
        bits0, bits1, bits2, bits3 = tl.philox(philox_key, key_groups[:, None], offs_m[None, :], 0, 0)
    else:
        bits0, bits1, bits2, bits3 = tl.philox(philox_key, key_groups[None, :], offs_m[:, None], 0, 0)
    # A uint32 compare: p * 2^32 is exact in fp32 (p < 1), its conversion truncates.
    threshold = (tl.cast(dropout_p, tl.float32) * 4294967296.0).to(tl.uint32)
    keep0 = bits0 >= threshold
    keep1 = bits1 >= threshold
    keep2 = bits2 >= threshold
    keep3 = bits3 >= threshold
    # (rows, columns / 4, 2, 2), each join adding the last dimension: element [..., a, b] is output 2a + b, that of key
    # 4 * group + 2a + b.
    keep = tl.join(tl.join(keep0, keep2), tl.join(keep1, keep3))
    if KEYS_BY_ROW:
        keep = tl.reshape(tl.permute(keep, (0, 2, 3, 1)), (BLOCK_N, offs_m.shape[0]))
    else:
        keep = tl.reshape(keep, (offs_m.shape[0], BLOCK_N))
    return keep


@triton.jit
def _far_biases(bias_tiles, head, num_bias_tiles, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """T5's bias beyond max_distance before and after the query (log2 domain): the first and last bias tiles lie wholly
    there, so any of their elements is it."""
    tiles = bias_tiles + head * num_bias_tiles * (BLOCK_M * BLOCK_N)
    far_before = tl.load(tiles).to(tl.float32)
    return far_before, tl.load(tiles + (num_bias_tiles - 1) * (BLOCK_M * BLOCK_N)).to(tl.float32)


@triton.jit
def _near_bias_tile(
    bias_tiles, head, num_bias_tiles, bias_tile_lo, start_m, start_n, query_offset, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, TILE_STEP: tl.constexpr,
):  # fmt: skip
    """The T5 bias of the tile at (start_m, start_n): the precomputed Toeplitz tile of its corner offset, one
    contiguous block load. Corners beyond the precomputed ones clamp to the first or last tile, wholly beyond
    max_distance."""
    corner = start_n - start_m - query_offset
    tile = tl.minimum(tl.maximum((corner - bias_tile_lo) // TILE_STEP, 0), num_bias_tiles - 1)
    tile_ptrs = (
        bias_tiles
        + (head * num_bias_tiles + tile) * (BLOCK_M * BLOCK_N)
        + tl.arange(0, BLOCK_M)[:, None] * BLOCK_N
        + tl.arange(0, BLOCK_N)[None, :]
    )
    return tl.load(tile_ptrs)


@triton.jit
def _bias_of_tile(
    bias_tiles, head, num_bias_tiles, bias_tile_lo, start_m, start_n, query_offset, far_bias, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, TILE_STEP: tl.constexpr, FAST: tl.constexpr, BIAS_KIND: tl.constexpr,
):  # fmt: skip
    """The T5 bias of the tile at (start_m, start_n) of a range: the far value on a fast one, else the tile's."""
    bias = far_bias
    if BIAS_KIND == 1:
        if not FAST:
            bias = _near_bias_tile(
                bias_tiles, head, num_bias_tiles, bias_tile_lo, start_m, start_n, query_offset, BLOCK_M, BLOCK_N,
                TILE_STEP,
            )  # fmt: skip
    return bias


@triton.jit
def _key_ranges(
    start_m,
    seq_n,
    query_offset,
    max_distance,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BIAS_KIND: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """Split a query block's keys into [0, a) fast | [a, b) general | [b, c) fast | [c, end) general.

    The first fast range is beyond max_distance before the queries (T5: bias index 0) or, for other biases, every
    whole tile below the causal diagonal; the second is beyond max_distance after them (T5: the last index). Without a
    causal mask the first general range ends at the last whole key tile: it lies inside both sequences too.
    """
    full_n = seq_n // BLOCK_N * BLOCK_N
    end = seq_n
    if CAUSAL:
        end = tl.minimum(seq_n, start_m + BLOCK_M + query_offset)
    if BIAS_KIND == 1:
        fast_before = tl.maximum(start_m + query_offset - max_distance + 1, 0) // BLOCK_N * BLOCK_N
    elif CAUSAL:
        fast_before = tl.maximum(start_m + query_offset + 1, 0) // BLOCK_N * BLOCK_N
    else:
        fast_before = full_n
    fast_before = tl.minimum(tl.minimum(fast_before, full_n), end)
    if CAUSAL:
        general_end = end
        fast_after = end
    elif BIAS_KIND == 1:
        after_start = tl.cdiv(tl.maximum(start_m + BLOCK_M - 1 + query_offset + max_distance, 0), BLOCK_N) * BLOCK_N
        general_end = tl.minimum(tl.maximum(after_start, fast_before), full_n)
        fast_after = full_n
    else:
        general_end = fast_before
        fast_after = fast_before
    return fast_before, general_end, fast_after, end


@triton.jit
def _key_tile(
    q, k_base, v_base, start_n, offs_n_block, offs_d, d_ok, start_m, offs_m, batch, head, num_heads, seq_m, seq_n,
    stride_kn, stride_vn, qk_scale, query_offset, KEY_MASK, stride_mask_b, BIAS, stride_bias_b, stride_bias_h,
    stride_bias_m, stride_bias_n, relative_bias, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IN_BOUNDS: tl.constexpr, BIAS_KIND: tl.constexpr,
    ALIBI_ASYMMETRIC: tl.constexpr, CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """The key and value tile at `start_n` of a query tile's loop over keys, and the tile's log2-domain scores."""
    offs_n = start_n + offs_n_block
    if IN_BOUNDS:
        kv_mask = d_ok
    else:
        kv_mask = (offs_n[:, None] < seq_n) & d_ok
    k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
    s = _scores(
        q, k, start_m, start_n, offs_m, offs_n, batch, head, num_heads, seq_n, qk_scale, query_offset, relative_bias,
        KEY_MASK, stride_mask_b, BIAS, stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n, seq_m, BLOCK_M,
        BLOCK_N, IN_BOUNDS, BIAS_KIND, ALIBI_ASYMMETRIC, CAUSAL, HAS_KEY_MASK, PRECISION, False,
    )  # fmt: skip
    return k, v, s


@triton.jit
def _forward_range(
    acc, l_i, m_i, q, k_base, v_base, lo, hi, far_bias, offs_m, offs_d, offs_n_block, start_m, batch, head,
    num_heads, seq_m, seq_n, stride_kn, stride_vn, qk_scale, query_offset, max_distance, KEY_MASK, stride_mask_b,
    BIAS, stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n, BIAS_TILES, num_bias_tiles, bias_tile_lo,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_STEP: tl.constexpr, FAST: tl.constexpr,
    IN_BOUNDS: tl.constexpr, BIAS_KIND: tl.constexpr, ALIBI_ASYMMETRIC: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr, PRECISION: tl.constexpr, SCALE_POSITIVE: tl.constexpr, dropout_seed, dropout_p,
    HAS_DROPOUT: tl.constexpr, query_segments, KEY_SEGMENTS_ROW, HAS_SEGMENTS: tl.constexpr,
):  # fmt: skip
    d_ok = offs_d[None, :] < HEAD_DIM
    # A fast T5 tile's scores differ from its products by one scale and one bias value: with a positive scale the row
    # maximum of the products gives theirs, and scale, bias and maximum go into one multiply-add a score. Such a tile
    # takes its unscaled, unbiased products from `_key_tile`.
    SHIFT_IN_SCORES: tl.constexpr = FAST and BIAS_KIND == 1 and SCALE_POSITIVE
    product_scale = 1.0 if SHIFT_IN_SCORES else qk_scale
    PRODUCT_BIAS_KIND: tl.constexpr = 0 if SHIFT_IN_SCORES else BIAS_KIND
    next_bias = _bias_of_tile(
        BIAS_TILES, head, num_bias_tiles, bias_tile_lo, start_m, lo, query_offset, far_bias, BLOCK_M, BLOCK_N,
        TILE_STEP, FAST, BIAS_KIND,
    )  # fmt: skip
    for start_n in range(lo, hi, BLOCK_N):
        relative_bias = next_bias
        # A tile ahead, so that the load's latency hides behind this tile's products (a clamped read past hi).
        next_bias = _bias_of_tile(
            BIAS_TILES, head, num_bias_tiles, bias_tile_lo, start_m, start_n + BLOCK_N, query_offset, far_bias,
            BLOCK_M, BLOCK_N, TILE_STEP, FAST, BIAS_KIND,
        )  # fmt: skip
        k, v, s = _key_tile(
            q, k_base, v_base, start_n, offs_n_block, offs_d, d_ok, start_m, offs_m, batch, head, num_heads, seq_m,
            seq_n, stride_kn, stride_vn, product_scale, query_offset, KEY_MASK, stride_mask_b, BIAS, stride_bias_b,
            stride_bias_h, stride_bias_m, stride_bias_n, relative_bias, BLOCK_M, BLOCK_N, IN_BOUNDS,
            PRODUCT_BIAS_KIND, ALIBI_ASYMMETRIC, CAUSAL, HAS_KEY_MASK, PRECISION,
        )  # fmt: skip
        if HAS_SEGMENTS:
            offs_n = start_n + offs_n_block
            key_segments = tl.load(KEY_SEGMENTS_ROW + offs_n, mask=offs_n < seq_n, other=0)
            s = _same_segment(s, query_segments, key_segments, False)
        if SHIFT_IN_SCORES:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale + relative_bias)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row with no unmasked key yet keeps m = -inf; subtract 0 there so that exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        if SHIFT_IN_SCORES:
            p = tl.exp2(s * qk_scale + (relative_bias - m_safe)[:, None])
        else:
            p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        # The normaliser sums every probability; dropout zeroes some in the product with the values only (the kept
        # ones' 1 / (1 - p) is applied once, to the output).
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            keep = _dropout_keep(dropout_seed, batch * num_heads + head, offs_m, start_n, dropout_p, BLOCK_N, False)
            p = tl.where(keep, p, 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _forward_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    KEY_MASK,
    BIAS,
    BIAS_TILES,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_om,
    stride_mask_b,
    stride_bias_b,
    stride_bias_h,
    stride_bias_m,
    stride_bias_n,
    num_heads,
    seq_m,
    seq_n,
    qk_scale,
    query_offset,
    max_distance,
    num_bias_tiles,
    bias_tile_lo,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TILE_STEP: tl.constexpr,
    BIAS_KIND: tl.constexpr,
    ALIBI_ASYMMETRIC: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    SCALE_POSITIVE: tl.constexpr,
    DROPOUT_SEED,
    dropout_p,
    HAS_DROPOUT: tl.constexpr,
    QUERY_SEGMENTS,
    KEY_SEGMENTS,
    KEY_SEGMENT_STARTS,
    stride_query_segments_b,
    stride_key_segments_b,
    stride_starts_b,
    HAS_SEGMENTS: tl.constexpr,
):
    # torch.compile passes Python floats as fp64 scalars: keep every score product in fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    dropout_p = tl.cast(dropout_p, tl.float32)
    dropout_seed = tl.load(DROPOUT_SEED) if HAS_DROPOUT else 0
    start_m = tl.program_id(0) * BLOCK_M
    batch_head = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n_block = tl.arange(0, BLOCK_N)
    d_ok = offs_d[None, :] < HEAD_DIM

    q_ptrs = Q + batch * stride_qb + head * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < seq_m) & d_ok, other=0.0)
    k_base = K + batch * stride_kb + head * stride_kh
    v_base = V + batch * stride_vb + head * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    fast_before, general_end, fast_after, end = _key_ranges(
        start_m, seq_n, query_offset, max_distance, BLOCK_M, BLOCK_N, BIAS_KIND, CAUSAL
    )
    bias_before = 0.0
    bias_after = 0.0
    if BIAS_KIND == 1:
        bias_before, bias_after = _far_biases(BIAS_TILES, head, num_bias_tiles, BLOCK_M, BLOCK_N)
    query_segments, segment_lo, segment_hi = 0, 0, 0
    key_segments_row = KEY_SEGMENTS
    if HAS_SEGMENTS:
        key_segments_row = KEY_SEGMENTS + batch * stride_key_segments_b
        query_segments, segment_lo, segment_hi = _segment_range(
            QUERY_SEGMENTS + batch * stride_query_segments_b, KEY_SEGMENT_STARTS + batch * stride_starts_b, offs_m,
            seq_m, BLOCK_N,
        )  # fmt: skip
    # The ranges in turn; the even ones are fast (whole tiles, one far bias value), and without a causal mask the
    # second is in bounds too (see _key_ranges).
    bounds = (0, fast_before, general_end, fast_after, end)
    far_biases = (bias_before, 0.0, bias_after, 0.0)
    for segment in tl.static_range(4):
        lo, hi = _within_segments(bounds[segment], bounds[segment + 1], segment_lo, segment_hi, HAS_SEGMENTS)
        acc, l_i, m_i = _forward_range(
            acc, l_i, m_i, q, k_base, v_base, lo, hi, far_biases[segment], offs_m,
            offs_d, offs_n_block, start_m, batch, head, num_heads, seq_m, seq_n, stride_kn, stride_vn, qk_scale,
            query_offset, max_distance, KEY_MASK, stride_mask_b, BIAS, stride_bias_b, stride_bias_h, stride_bias_m,
            stride_bias_n, BIAS_TILES, num_bias_tiles, bias_tile_lo, HEAD_DIM, BLOCK_M, BLOCK_N, TILE_STEP,
            segment % 2 == 0, segment % 2 == 0 or (segment == 1 and not CAUSAL), BIAS_KIND, ALIBI_ASYMMETRIC, CAUSAL,
            HAS_KEY_MASK, PRECISION, SCALE_POSITIVE, dropout_seed, dropout_p, HAS_DROPOUT, query_segments,
            key_segments_row, HAS_SEGMENTS,
        )  # fmt: skip

    empty = l_i == 0.0
    normaliser = tl.where(empty, 1.0, l_i)
    if HAS_DROPOUT:
        normaliser *= 1.0 - dropout_p
    out = acc / normaliser[:, None]
    o_ptrs = O + batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m[:, None] < seq_m) & d_ok)
    # log2-domain log-sum-exp; +inf for rows with every key masked makes their backward probabilities 0.
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + batch_head * seq_m + offs_m, lse, mask=offs_m < seq_m)


@triton.jit
def _backward_delta_kernel(
    O,
    DO,
    DELTA,
    stride_ob,
    stride_oh,
    stride_om,
    stride_dob,
    stride_doh,
    stride_dom,
    num_heads,
    seq_m,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta = rowsum(dO * O) in fp32: the softmax backward's correction term."""
    batch_head = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < seq_m) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :], mask=mask)
    do = tl.load(
        DO + batch * stride_dob + head * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :], mask=mask
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + batch_head * seq_m + offs_m, delta, mask=offs_m < seq_m)


@triton.jit
def _query_ranges(
    start_n,
    seq_m,
    seq_n,
    query_offset,
    max_distance,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BIAS_KIND: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """Split a key block's queries into [lo, a) fast | [a, b) general | [b, c) fast | [c, seq_m) general.

    The first fast range holds queries beyond max_distance before the keys (T5, bidirectional: bias index last); the
    second, queries beyond max_distance after them (T5: index 0) or, for other biases, every whole tile past the causal
    diagonal. Under a causal mask, query blocks wholly before the keys are skipped (lo).
    """
    full_m = seq_m // BLOCK_M * BLOCK_M
    lo = 0
    if CAUSAL:
        lo = tl.maximum(start_n - query_offset, 0) // BLOCK_M * BLOCK_M
    fast_after_end = lo
    if BIAS_KIND == 1:
        if not CAUSAL:
            fast_after_end = tl.minimum(
                tl.maximum(start_n - query_offset - max_distance + 1, 0) // BLOCK_M * BLOCK_M, full_m
            )
        first_far_before = (
            tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - query_offset + max_distance, 0), BLOCK_M) * BLOCK_M
        )
        general_end = tl.minimum(tl.maximum(first_far_before, fast_after_end), full_m)
    elif CAUSAL:
        first_past_diagonal = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - query_offset, 0), BLOCK_M) * BLOCK_M
        general_end = tl.minimum(tl.maximum(first_past_diagonal, fast_after_end), full_m)
    else:
        general_end = fast_after_end
    general_end = tl.maximum(general_end, lo)
    fast_before_end = tl.maximum(full_m, general_end)
    if start_n + BLOCK_N > seq_n:
        # A ragged key block needs its bounds mask in every tile.
        fast_after_end = lo
        general_end = lo
        fast_before_end = lo
    return lo, fast_after_end, general_end, fast_before_end


@triton.jit
def _backward_kv_range(
    dk, dv, far_before, far_after, k, v, q_base, do_base, lo, hi, far_bias, offs_n, offs_d, offs_m_block, start_n,
    batch, head, batch_head, num_heads, seq_m, seq_n, stride_qm, stride_dom, qk_scale, query_offset, max_distance,
    LSE, DELTA, KEY_MASK, stride_mask_b, BIAS, stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n, DBIAS,
    stride_dbias_b, stride_dbias_h, stride_dbias_m, relative_grad_row, tile_buffer, BIAS_TILES, num_bias_tiles,
    bias_tile_lo, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_STEP: tl.constexpr,
    BLOCK_DIAGONALS: tl.constexpr, FAST_KEYS_BY_ROW: tl.constexpr, FAST: tl.constexpr, IN_BOUNDS: tl.constexpr,
    FAR_AFTER: tl.constexpr, BIAS_KIND: tl.constexpr, BIAS_GRAD: tl.constexpr, ALIBI_ASYMMETRIC: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr, PRECISION: tl.constexpr, dropout_seed, dropout_p,
    HAS_DROPOUT: tl.constexpr, key_segments, QUERY_SEGMENTS_ROW, HAS_SEGMENTS: tl.constexpr,
):  # fmt: skip
    d_ok = offs_d[None, :] < HEAD_DIM
    # The near tiles stay query by row: their diagonal sums read the tile skewed by query.
    KEYS_BY_ROW: tl.constexpr = FAST_KEYS_BY_ROW if FAST else False
    # A bias-free or fast T5 tile's one bias value (0 without a bias) and each query's log-sum-exp make one shift a
    # query, added to the scores in their product's scaling (one operation a score less); the shift enters the scores
    # as T5's bias does.
    SHIFT_IN_SCORES: tl.constexpr = BIAS_KIND == 0 or (FAST and BIAS_KIND == 1)
    SCORE_BIAS_KIND: tl.constexpr = 1 if SHIFT_IN_SCORES else BIAS_KIND
    for start_m in range(lo, hi, BLOCK_M):
        if not SHIFT_IN_SCORES:
            relative_bias = _bias_of_tile(
                BIAS_TILES, head, num_bias_tiles, bias_tile_lo, start_m, start_n, query_offset, far_bias, BLOCK_M,
                BLOCK_N, TILE_STEP, FAST, BIAS_KIND,
            )  # fmt: skip
        offs_m = start_m + offs_m_block
        row_ok = offs_m < seq_m
        if IN_BOUNDS:
            q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=d_ok, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=d_ok, other=0.0)
            lse = tl.load(LSE + batch_head * seq_m + offs_m)
            delta = tl.load(DELTA + batch_head * seq_m + offs_m)
        else:
            q_mask = row_ok[:, None] & d_ok
            q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_mask, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=q_mask, other=0.0)
            lse = tl.load(LSE + batch_head * seq_m + offs_m, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + batch_head * seq_m + offs_m, mask=row_ok, other=0.0)
        if SHIFT_IN_SCORES:
            relative_bias = (far_bias - lse)[None, :] if KEYS_BY_ROW else (far_bias - lse)[:, None]
        s = _scores(
            q, k, start_m, start_n, offs_m, offs_n, batch, head, num_heads, seq_n, qk_scale, query_offset,
            relative_bias, KEY_MASK, stride_mask_b, BIAS, stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n,
            seq_m, BLOCK_M, BLOCK_N, IN_BOUNDS, SCORE_BIAS_KIND, ALIBI_ASYMMETRIC, CAUSAL, HAS_KEY_MASK, PRECISION,
            KEYS_BY_ROW,
        )  # fmt: skip
        if HAS_SEGMENTS:
            query_segments = tl.load(QUERY_SEGMENTS_ROW + offs_m, mask=row_ok, other=0)
            s = _same_segment(s, query_segments, key_segments, KEYS_BY_ROW)
        if SHIFT_IN_SCORES:
            p = tl.exp2(s)
        elif KEYS_BY_ROW:
            p = tl.exp2(s - lse[None, :])
        else:
            p = tl.exp2(s - lse[:, None])
        if KEYS_BY_ROW:
            query_index = offs_m[None, :]
            key_index = offs_n[:, None]
        else:
            query_index = offs_m[:, None]
            key_index = offs_n[None, :]
        # With dropout, the values saw the kept probabilities (dV's 1 / (1 - p) is applied once, at the end) and the
        # probabilities' gradient is the kept products' times 1 / (1 - p).
        p_kept = p
        if HAS_DROPOUT:
            keep = _dropout_keep(dropout_seed, batch_head, offs_m, start_n, dropout_p, BLOCK_N, KEYS_BY_ROW)
            p_kept = tl.where(keep, p, 0.0)
        if KEYS_BY_ROW:
            # Keys by row, the layout of Triton's fused-attention tutorial: the probabilities and score gradients
            # come out of their products as the dK and dV products take them, with no transpose of a register tile.
            dp = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            # Issued after dp's product (which waits for every product in flight): dv's runs while ds is computed.
            dv += tl.dot(p_kept.to(do.dtype), do, input_precision=PRECISION)
            if HAS_DROPOUT:
                dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
            ds = p * (dp - delta[None, :])
            dk += tl.dot(ds.to(q.dtype), q, input_precision=PRECISION)
        else:
            dv += tl.dot(tl.trans(p_kept.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            if HAS_DROPOUT:
                dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
            # Gradient of the natural-domain scores (scale * q.k + bias): also the gradient of the bias.
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        if BIAS_GRAD:
            if BIAS_KIND == 3:
                dbias_ptrs = (
                    DBIAS + batch * stride_dbias_b + head * stride_dbias_h + query_index * stride_dbias_m + key_index
                )
                tl.store(dbias_ptrs, ds.to(DBIAS.dtype.element_ty), mask=(query_index < seq_m) & (key_index < seq_n))
            if BIAS_KIND == 1:
                if FAST:
                    if FAR_AFTER:
                        far_after += tl.sum(ds, 1)
                    else:
                        far_before += tl.sum(ds, 1)
                else:
                    # Sum the tile's diagonals: write it out, read it back skewed (row i shifted left by i), sum the
                    # columns. Diagonal t holds the scores of relative position
                    # start_n - start_m - offset + t - (BLOCK_M - 1).
                    rows = tl.arange(0, BLOCK_M)
                    tl.store(tile_buffer + rows[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :], ds)
                    tl.debug_barrier()
                    diagonals = tl.arange(0, BLOCK_DIAGONALS)
                    columns = rows[:, None] + diagonals[None, :] - (BLOCK_M - 1)
                    skewed = tl.load(
                        tile_buffer + rows[:, None] * BLOCK_N + columns,
                        mask=(columns >= 0) & (columns < BLOCK_N),
                        other=0.0,
                    )
                    tl.debug_barrier()
                    diagonal_sums = tl.sum(skewed, 0)
                    relative = start_n - start_m - query_offset - (BLOCK_M - 1) + diagonals
                    in_range = diagonals < BLOCK_M + BLOCK_N - 1
                    # Diagonals at or beyond max_distance go to the ends of the relative-position row, with the fast
                    # tiles' sums: cheaper than masked sums over the tile (6 % off this kernel at D = 64).
                    clamped = tl.minimum(tl.maximum(relative, -max_distance), max_distance)
                    tl.atomic_add(relative_grad_row + clamped + max_distance, diagonal_sums, mask=in_range)
    return dk, dv, far_before, far_after


@triton.jit
def _backward_kv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    KEY_MASK,
    BIAS,
    BIAS_TILES,
    DBIAS,
    SCRATCH,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_dvb,
    stride_dvh,
    stride_dvn,
    stride_mask_b,
    stride_bias_b,
    stride_bias_h,
    stride_bias_m,
    stride_bias_n,
    stride_dbias_b,
    stride_dbias_h,
    stride_dbias_m,
    num_heads,
    seq_m,
    seq_n,
    scale,
    qk_scale,
    query_offset,
    max_distance,
    num_bias_tiles,
    bias_tile_lo,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TILE_STEP: tl.constexpr,
    BLOCK_DIAGONALS: tl.constexpr,
    FAST_KEYS_BY_ROW: tl.constexpr,
    NEAR_IN_BOUNDS: tl.constexpr,
    BIAS_KIND: tl.constexpr,
    BIAS_GRAD: tl.constexpr,
    ALIBI_ASYMMETRIC: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    DROPOUT_SEED,
    dropout_p,
    HAS_DROPOUT: tl.constexpr,
    QUERY_SEGMENTS,
    KEY_SEGMENTS,
    QUERY_SEGMENT_STARTS,
    stride_query_segments_b,
    stride_key_segments_b,
    stride_starts_b,
    HAS_SEGMENTS: tl.constexpr,
):
    """dK and dV of one key block, looping over the query blocks; also the bias gradient of each tile."""
    # torch.compile passes Python floats as fp64 scalars: keep every score product in fp32.
    scale = tl.cast(scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)
    dropout_p = tl.cast(dropout_p, tl.float32)
    dropout_seed = tl.load(DROPOUT_SEED) if HAS_DROPOUT else 0
    block_n = tl.program_id(0)
    start_n = block_n * BLOCK_N
    batch_head = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m_block = tl.arange(0, BLOCK_M)
    d_ok = offs_d[None, :] < HEAD_DIM

    kv_mask = (offs_n[:, None] < seq_n) & d_ok
    k = tl.load(K + batch * stride_kb + head * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask)
    v = tl.load(V + batch * stride_vb + head * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    q_base = Q + batch * stride_qb + head * stride_qh
    do_base = DO + batch * stride_dob + head * stride_doh
    relative_width = 2 * max_distance + 1
    # This program's own row of relative-position gradient sums: no other program writes it.
    relative_grad_row = SCRATCH + (batch_head * tl.num_programs(0) + block_n) * relative_width
    # The fast tiles' score-gradient sums, per row of the tile (a query, or a key with FAST_KEYS_BY_ROW): summing
    # within rows is cheap (no exchange between warps); the rows are summed once, at the end.
    far_before = tl.zeros([BLOCK_N if FAST_KEYS_BY_ROW else BLOCK_M], dtype=tl.float32)
    far_after = tl.zeros([BLOCK_N if FAST_KEYS_BY_ROW else BLOCK_M], dtype=tl.float32)
    # Per-program tile buffer through which a tile's diagonals are read (the relative-position sums).
    tile_buffer = SCRATCH + tl.num_programs(0) * tl.num_programs(1) * relative_width
    tile_buffer += (batch_head * tl.num_programs(0) + block_n) * BLOCK_M * BLOCK_N
    bias_before = 0.0
    bias_after = 0.0
    if BIAS_KIND == 1:
        bias_before, bias_after = _far_biases(BIAS_TILES, head, num_bias_tiles, BLOCK_M, BLOCK_N)

    lo, fast_after_end, general_end, fast_before_end = _query_ranges(
        start_n, seq_m, seq_n, query_offset, max_distance, BLOCK_M, BLOCK_N, BIAS_KIND, CAUSAL
    )
    key_segments, segment_lo, segment_hi = 0, 0, 0
    query_segments_row = QUERY_SEGMENTS
    if HAS_SEGMENTS:
        query_segments_row = QUERY_SEGMENTS + batch * stride_query_segments_b
        key_segments, segment_lo, segment_hi = _segment_range(
            KEY_SEGMENTS + batch * stride_key_segments_b, QUERY_SEGMENT_STARTS + batch * stride_starts_b, offs_n,
            seq_n, BLOCK_M,
        )  # fmt: skip
    # The ranges in turn; the even ones are fast (whole tiles, one far bias value), the first far after the keys.
    # Without a causal mask the near range (the second) ends at the last whole query tile, and a ragged key block has
    # only the last range: it lies inside both sequences.
    bounds = (lo, fast_after_end, general_end, fast_before_end, seq_m)
    far_biases = (bias_after, 0.0, bias_before, 0.0)
    for segment in tl.static_range(4):
        range_lo, range_hi = _within_segments(
            bounds[segment], bounds[segment + 1], segment_lo, segment_hi, HAS_SEGMENTS
        )
        dk, dv, far_before, far_after = _backward_kv_range(
            dk, dv, far_before, far_after, k, v, q_base, do_base, range_lo, range_hi,
            far_biases[segment], offs_n, offs_d, offs_m_block, start_n, batch, head, batch_head, num_heads, seq_m,
            seq_n, stride_qm, stride_dom, qk_scale, query_offset, max_distance, LSE, DELTA, KEY_MASK, stride_mask_b,
            BIAS, stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n, DBIAS, stride_dbias_b, stride_dbias_h,
            stride_dbias_m, relative_grad_row, tile_buffer, BIAS_TILES, num_bias_tiles, bias_tile_lo, HEAD_DIM,
            BLOCK_M, BLOCK_N, TILE_STEP, BLOCK_DIAGONALS, FAST_KEYS_BY_ROW, segment % 2 == 0,
            segment % 2 == 0 or (segment == 1 and NEAR_IN_BOUNDS and not CAUSAL), segment == 0, BIAS_KIND, BIAS_GRAD,
            ALIBI_ASYMMETRIC, CAUSAL, HAS_KEY_MASK, PRECISION, dropout_seed, dropout_p, HAS_DROPOUT, key_segments,
            query_segments_row, HAS_SEGMENTS,
        )  # fmt: skip

    if BIAS_GRAD:
        if BIAS_KIND == 1:
            tl.atomic_add(relative_grad_row, tl.sum(far_before))
            tl.atomic_add(relative_grad_row + relative_width - 1, tl.sum(far_after))

    dk_ptrs = DK + batch * stride_dkb + head * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    dv_ptrs = DV + batch * stride_dvb + head * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
    if HAS_DROPOUT:
        dv = dv / (1.0 - dropout_p)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _backward_q_range(
    dq, q, do, lse, delta, k_base, v_base, lo, hi, far_bias, offs_m, offs_d, offs_n_block, start_m, batch, head,
    num_heads, seq_m, seq_n, stride_kn, stride_vn, qk_scale, query_offset, max_distance, KEY_MASK, stride_mask_b,
    BIAS, stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n, BIAS_TILES, num_bias_tiles, bias_tile_lo,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_STEP: tl.constexpr, FAST: tl.constexpr,
    IN_BOUNDS: tl.constexpr, BIAS_KIND: tl.constexpr, ALIBI_ASYMMETRIC: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr, PRECISION: tl.constexpr, dropout_seed, dropout_p, HAS_DROPOUT: tl.constexpr,
    query_segments, KEY_SEGMENTS_ROW, HAS_SEGMENTS: tl.constexpr,
):  # fmt: skip
    d_ok = offs_d[None, :] < HEAD_DIM
    # As in the key/value kernel: a bias-free or fast T5 tile's bias and the log-sum-exp shift the scores in one
    # operation.
    SHIFT_IN_SCORES: tl.constexpr = BIAS_KIND == 0 or (FAST and BIAS_KIND == 1)
    SCORE_BIAS_KIND: tl.constexpr = 1 if SHIFT_IN_SCORES else BIAS_KIND
    if SHIFT_IN_SCORES:
        relative_bias = (far_bias - lse)[:, None]
    for start_n in range(lo, hi, BLOCK_N):
        if not SHIFT_IN_SCORES:
            # Loaded in turn, not a tile ahead as in the forward: ahead, the backward measured slower at N = 1024.
            relative_bias = _bias_of_tile(
                BIAS_TILES, head, num_bias_tiles, bias_tile_lo, start_m, start_n, query_offset, far_bias, BLOCK_M,
                BLOCK_N, TILE_STEP, FAST, BIAS_KIND,
            )  # fmt: skip
        k, v, s = _key_tile(
            q, k_base, v_base, start_n, offs_n_block, offs_d, d_ok, start_m, offs_m, batch, head, num_heads, seq_m,
            seq_n, stride_kn, stride_vn, qk_scale, query_offset, KEY_MASK, stride_mask_b, BIAS, stride_bias_b,
            stride_bias_h, stride_bias_m, stride_bias_n, relative_bias, BLOCK_M, BLOCK_N, IN_BOUNDS, SCORE_BIAS_KIND,
            ALIBI_ASYMMETRIC, CAUSAL, HAS_KEY_MASK, PRECISION,
        )  # fmt: skip
        if HAS_SEGMENTS:
            offs_n = start_n + offs_n_block
            key_segments = tl.load(KEY_SEGMENTS_ROW + offs_n, mask=offs_n < seq_n, other=0)
            s = _same_segment(s, query_segments, key_segments, False)
        p = tl.exp2(s) if SHIFT_IN_SCORES else tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if HAS_DROPOUT:
            keep = _dropout_keep(dropout_seed, batch * num_heads + head, offs_m, start_n, dropout_p, BLOCK_N, False)
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def _backward_q_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    KEY_MASK,
    BIAS,
    BIAS_TILES,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dqb,
    stride_dqh,
    stride_dqm,
    stride_mask_b,
    stride_bias_b,
    stride_bias_h,
    stride_bias_m,
    stride_bias_n,
    num_heads,
    seq_m,
    seq_n,
    scale,
    qk_scale,
    query_offset,
    max_distance,
    num_bias_tiles,
    bias_tile_lo,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TILE_STEP: tl.constexpr,
    BIAS_KIND: tl.constexpr,
    ALIBI_ASYMMETRIC: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    DROPOUT_SEED,
    dropout_p,
    HAS_DROPOUT: tl.constexpr,
    QUERY_SEGMENTS,
    KEY_SEGMENTS,
    KEY_SEGMENT_STARTS,
    stride_query_segments_b,
    stride_key_segments_b,
    stride_starts_b,
    HAS_SEGMENTS: tl.constexpr,
):
    """dQ of one query block, looping over the key blocks."""
    # torch.compile passes Python floats as fp64 scalars: keep every score product in fp32.
    scale = tl.cast(scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)
    dropout_p = tl.cast(dropout_p, tl.float32)
    dropout_seed = tl.load(DROPOUT_SEED) if HAS_DROPOUT else 0
    start_m = tl.program_id(0) * BLOCK_M
    batch_head = tl.program_id(1)
    batch = batch_head // num_heads
    head = batch_head % num_heads
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n_block = tl.arange(0, BLOCK_N)
    d_ok = offs_d[None, :] < HEAD_DIM
    row_ok = offs_m < seq_m

    q = tl.load(
        Q + batch * stride_qb + head * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
        mask=row_ok[:, None] & d_ok,
        other=0.0,
    )
    do = tl.load(
        DO + batch * stride_dob + head * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
        mask=row_ok[:, None] & d_ok,
        other=0.0,
    )
    lse = tl.load(LSE + batch_head * seq_m + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + batch_head * seq_m + offs_m, mask=row_ok, other=0.0)
    k_base = K + batch * stride_kb + head * stride_kh
    v_base = V + batch * stride_vb + head * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    bias_before = 0.0
    bias_after = 0.0
    if BIAS_KIND == 1:
        bias_before, bias_after = _far_biases(BIAS_TILES, head, num_bias_tiles, BLOCK_M, BLOCK_N)

    fast_before, general_end, fast_after, end = _key_ranges(
        start_m, seq_n, query_offset, max_distance, BLOCK_M, BLOCK_N, BIAS_KIND, CAUSAL
    )
    query_segments, segment_lo, segment_hi = 0, 0, 0
    key_segments_row = KEY_SEGMENTS
    if HAS_SEGMENTS:
        key_segments_row = KEY_SEGMENTS + batch * stride_key_segments_b
        query_segments, segment_lo, segment_hi = _segment_range(
            QUERY_SEGMENTS + batch * stride_query_segments_b, KEY_SEGMENT_STARTS + batch * stride_starts_b, offs_m,
            seq_m, BLOCK_N,
        )  # fmt: skip
    # The ranges in turn; the even ones are fast (whole tiles, one far bias value), and without a causal mask the
    # second is in bounds too (see _key_ranges).
    bounds = (0, fast_before, general_end, fast_after, end)
    far_biases = (bias_before, 0.0, bias_after, 0.0)
    for segment in tl.static_range(4):
        lo, hi = _within_segments(bounds[segment], bounds[segment + 1], segment_lo, segment_hi, HAS_SEGMENTS)
        dq = _backward_q_range(
            dq, q, do, lse, delta, k_base, v_base, lo, hi, far_biases[segment], offs_m,
            offs_d, offs_n_block, start_m, batch, head, num_heads, seq_m, seq_n, stride_kn, stride_vn, qk_scale,
            query_offset, max_distance, KEY_MASK, stride_mask_b, BIAS, stride_bias_b, stride_bias_h, stride_bias_m,
            stride_bias_n, BIAS_TILES, num_bias_tiles, bias_tile_lo, HEAD_DIM, BLOCK_M, BLOCK_N, TILE_STEP,
            segment % 2 == 0, segment % 2 == 0 or (segment == 1 and not CAUSAL), BIAS_KIND, ALIBI_ASYMMETRIC, CAUSAL,
            HAS_KEY_MASK, PRECISION, dropout_seed, dropout_p, HAS_DROPOUT, query_segments, key_segments_row,
            HAS_SEGMENTS,
        )  # fmt: skip

    dq_ptrs = DQ + batch * stride_dqb + head * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get full-precision products; TF32 would silently cost them about three decimal digits.
    return "ieee" if dtype == torch.float32 else "tf32"


def _bias_strides(bias: torch.Tensor | None, bias_kind: int) -> tuple[int, int, int, int]:
    if bias_kind != BIAS_DENSE:
        return 0, 0, 0, 0
    return tuple(0 if bias.shape[i] == 1 else bias.stride(i) for i in range(4))


def _new_like_heads_last(batch: int, heads: int, length: int, head_dim: int, like: torch.Tensor) -> torch.Tensor:
    """A (batch, heads, length, head_dim) view of a (batch, length, heads, head_dim) tensor: transformers' layout."""
    return torch.empty(batch, length, heads, head_dim, dtype=like.dtype, device=like.device).transpose(1, 2)


def _tile_layout(max_distance: int, query_offset: int, block_m: int, block_n: int) -> tuple[int, int, int]:
    """(step, first corner, count) of the near-diagonal bias tiles of one tile shape.

    A tile's bias depends only on its corner offset `start_n - start_m - query_offset` (relative position = corner +
    j - i), which steps by gcd(block_m, block_n) from tile to tile. The first and last tiles lie wholly beyond
    max_distance, so a kernel that clamps a corner into this range reads every tile right, a ragged far one included.
    """
    step = math.gcd(block_m, block_n)
    lo = -query_offset + (query_offset - max_distance - block_n + 1) // step * step
    hi = -query_offset - (-(query_offset + max_distance + block_m - 1) // step) * step
    return step, lo, (hi - lo) // step + 1


def _cached_in_eager_mode(function):
    """`function`, its results cached in eager mode. Under torch.compile it runs as it is, for dynamo to trace (or to
    take as a constant) rather than to trace into a cache."""
    cached = functools.lru_cache(maxsize=64)(function)

    @functools.wraps(function)
    def call(*args, **kwargs):
        return function(*args, **kwargs) if torch.compiler.is_compiling() else cached(*args, **kwargs)

    return call


@_cached_in_eager_mode
def _tile_index(
    max_distance: int, query_offset: int, block_m: int, block_n: int, device: torch.device
) -> torch.Tensor:
    """Index into the by-distance bias of every score of each near-diagonal tile: (tiles, block_m, block_n)."""
    step, lo, count = _tile_layout(max_distance, query_offset, block_m, block_n)
    corners = torch.arange(count, device=device) * step + lo
    relative = (
        corners[:, None, None]
        + torch.arange(block_n, device=device)[None, None, :]
        - torch.arange(block_m, device=device)[None, :, None]
    )
    return relative.clamp(-max_distance, max_distance) + max_distance


def relative_bias_tiles(
    by_distance: torch.Tensor,
    max_distance: int,
    query_offset: int,
    configs: dict[str, KernelConfig],
    input_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The T5 bias of every near-diagonal tile in the log2 domain, (heads, tiles, block_m, block_n), for the tile
    shapes of the forward, key/value-gradient and query-gradient kernels: its size does not depend on the sequence
    lengths. A kernel reads a tile of it with one block load where it would otherwise gather per score.

    The tiles are fp16 for half-precision inputs: an fp32 tile moves as many bytes as the keys and values of its
    scores together, and halving that made the forward 3-7 % faster at N = 1024-4096 on an H200 (GPU time, both
    versions in one run). fp16 keeps the bias to 2^-11 relative, finer than the bf16 bias SDPA would add. fp32 inputs
    keep fp32 tiles.

    Built in the caller's graph, not in the kernels' op: under torch.compile it fuses into one kernel that every
    layer of a stack shares, and in eager mode the op does no more than launch its kernels.
    """
    scaled = by_distance.detach() * LOG2E
    if input_dtype != torch.float32:
        half_max = torch.finfo(torch.float16).max
        scaled = scaled.clamp(-half_max, half_max).to(torch.float16)
    tiles = {}
    for config in configs.values():
        shape = (config.block_m, config.block_n)
        if shape not in tiles:
            tiles[shape] = scaled[:, _tile_index(max_distance, query_offset, *shape, by_distance.device)]
    forward, backward_kv, backward_q = (configs[name] for name in ("forward", "backward_kv", "backward_q"))
    return tuple(tiles[(config.block_m, config.block_n)] for config in (forward, backward_kv, backward_q))


def _tile_arguments(tiles, max_distance, query_offset, config, like):
    """Pointer, count, first corner and corner step of a kernel's bias tiles (a placeholder without the T5 bias)."""
    step, lo, count = _tile_layout(max_distance, query_offset, config.block_m, config.block_n)
    if tiles is None:
        return like, 1, 0, step
    return tiles, count, lo, step


def _segment_arguments(query_segments, key_segments, starts, like):
    """Pointers and batch strides of a packed call's segment ids and of one sequence's segment starts (placeholders
    without segments); both starts arrays have one shape."""
    if query_segments is None:
        return like, like, like, 0, 0, 0
    return query_segments, key_segments, starts, query_segments.stride(0), key_segments.stride(0), starts.stride(0)


def _forward(
    q, k, v, key_mask, bias, tiles, bias_kind, scale, causal, alibi_asymmetric, max_distance, query_offset, dropout_p,
    dropout_seed, query_segments=None, key_segments=None, key_segment_starts=None,
):  # fmt: skip
    batch, heads, seq_m, head_dim = q.shape
    seq_n = k.shape[2]
    out = torch.empty(batch, seq_m, heads, head_dim, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, seq_m, dtype=torch.float32, device=q.device)
    config = kernel_configs(head_dim, q.dtype)["forward"]
    grid = (triton.cdiv(seq_m, config.block_m), batch * heads)
    key_mask_arg = key_mask if key_mask is not None else q
    bias_arg = bias if bias is not None else q
    tiles, num_tiles, tile_lo, tile_step = _tile_arguments(tiles, max_distance, query_offset, config, q)
    wrap_triton(_forward_kernel)[grid](
        q, k, v, out, lse, key_mask_arg, bias_arg, tiles,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(2), out.stride(1),
        key_mask.stride(0) if key_mask is not None else 0, *_bias_strides(bias, bias_kind),
        heads, seq_m, seq_n, scale * LOG2E, query_offset, max_distance, num_tiles, tile_lo,
        HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_M=config.block_m,
        BLOCK_N=config.block_n, TILE_STEP=tile_step, BIAS_KIND=bias_kind, ALIBI_ASYMMETRIC=alibi_asymmetric,
        CAUSAL=causal, HAS_KEY_MASK=key_mask is not None, PRECISION=_precision(q.dtype), SCALE_POSITIVE=scale > 0,
        DROPOUT_SEED=dropout_seed if dropout_seed is not None else q, dropout_p=dropout_p,
        HAS_DROPOUT=dropout_seed is not None,
        **dict(zip(SEGMENT_ARGUMENTS, _segment_arguments(query_segments, key_segments, key_segment_starts, q))),
        HAS_SEGMENTS=query_segments is not None, num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return out, lse


SEGMENT_ARGUMENTS = (
    "QUERY_SEGMENTS", "KEY_SEGMENTS", "KEY_SEGMENT_STARTS", "stride_query_segments_b", "stride_key_segments_b",
    "stride_starts_b",
)  # fmt: skip


def _backward(
    grad_out, q, k, v, out, lse, key_mask, bias, kv_tiles, q_tiles, bias_kind, scale, causal, alibi_asymmetric,
    max_distance, query_offset, dropout_p, dropout_seed, bias_grad, query_segments=None, key_segments=None,
    query_segment_starts=None, key_segment_starts=None,
):  # fmt: skip
    batch, heads, seq_m, head_dim = q.shape
    seq_n = k.shape[2]
    block_d = max(16, triton.next_power_of_2(head_dim))
    configs = kernel_configs(head_dim, q.dtype)
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()

    delta = torch.empty(batch, heads, seq_m, dtype=torch.float32, device=q.device)
    delta_block = 64
    wrap_triton(_backward_delta_kernel)[(triton.cdiv(seq_m, delta_block), batch * heads)](
        out, grad_out, delta, out.stride(0), out.stride(2), out.stride(1),
        grad_out.stride(0), grad_out.stride(2), grad_out.stride(1), heads, seq_m,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=delta_block,
    )  # fmt: skip

    dq = _new_like_heads_last(batch, heads, seq_m, head_dim, q)
    dk = _new_like_heads_last(batch, heads, seq_n, head_dim, k)
    dv = _new_like_heads_last(batch, heads, seq_n, head_dim, v)
    key_mask_arg = key_mask if key_mask is not None else q
    bias_arg = bias if bias is not None else q
    common = {
        "HEAD_DIM": head_dim,
        "BLOCK_D": block_d,
        "BIAS_KIND": bias_kind,
        "ALIBI_ASYMMETRIC": alibi_asymmetric,
        "CAUSAL": causal,
        "HAS_KEY_MASK": key_mask is not None,
        "PRECISION": _precision(q.dtype),
        "DROPOUT_SEED": dropout_seed if dropout_seed is not None else q,
        "dropout_p": dropout_p,
        "HAS_DROPOUT": dropout_seed is not None,
        "HAS_SEGMENTS": query_segments is not None,
    }
    # The key/value kernel takes the queries' segment starts (which queries see a key tile), the query kernel the
    # keys' (which keys a query tile sees).
    kv_segments = _segment_arguments(query_segments, key_segments, query_segment_starts, q)
    kv_segments = dict(
        zip(("QUERY_SEGMENTS", "KEY_SEGMENTS", "QUERY_SEGMENT_STARTS", *SEGMENT_ARGUMENTS[3:]), kv_segments)
    )
    q_segments = dict(zip(SEGMENT_ARGUMENTS, _segment_arguments(query_segments, key_segments, key_segment_starts, q)))

    config = configs["backward_kv"]
    num_n_blocks = triton.cdiv(seq_n, config.block_n)
    relative_width = 2 * max_distance + 1
    dbias = q.new_empty(0)
    scratch = q.new_empty(0, dtype=torch.float32)
    if bias_grad and bias_kind == BIAS_DENSE:
        # Causal tiles above the diagonal are never visited: their bias gradient is zero, not left unwritten.
        allocate = torch.zeros if causal else torch.empty
        dbias = allocate(batch, heads, seq_m, seq_n, dtype=torch.float32, device=q.device)
    elif bias_grad and bias_kind == BIAS_RELATIVE:
        programs = num_n_blocks * batch * heads
        scratch = torch.empty(programs * (relative_width + config.block_m * config.block_n), device=q.device)
        scratch[: programs * relative_width].zero_()
    dbias_strides = (dbias.stride(0), dbias.stride(1), dbias.stride(2)) if dbias.dim() == 4 else (0, 0, 0)
    tiles, num_tiles, tile_lo, tile_step = _tile_arguments(kv_tiles, max_distance, query_offset, config, q)
    wrap_triton(_backward_kv_kernel)[(num_n_blocks, batch * heads)](
        q, k, v, grad_out, lse, delta, dk, dv, key_mask_arg, bias_arg, tiles,
        dbias if dbias.numel() else q, scratch,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), grad_out.stride(0), grad_out.stride(2), grad_out.stride(1),
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        key_mask.stride(0) if key_mask is not None else 0, *_bias_strides(bias, bias_kind), *dbias_strides,
        heads, seq_m, seq_n, scale, scale * LOG2E, query_offset, max_distance, num_tiles, tile_lo,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, TILE_STEP=tile_step,
        BLOCK_DIAGONALS=triton.next_power_of_2(config.block_m + config.block_n), BIAS_GRAD=bias_grad,
        FAST_KEYS_BY_ROW=config.fast_keys_by_row, NEAR_IN_BOUNDS=config.near_in_bounds, **common, **kv_segments,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip

    config = configs["backward_q"]
    tiles, num_tiles, tile_lo, tile_step = _tile_arguments(q_tiles, max_distance, query_offset, config, q)
    wrap_triton(_backward_q_kernel)[(triton.cdiv(seq_m, config.block_m), batch * heads)](
        q, k, v, grad_out, lse, delta, dq, key_mask_arg, bias_arg, tiles,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), grad_out.stride(0), grad_out.stride(2), grad_out.stride(1),
        dq.stride(0), dq.stride(1), dq.stride(2),
        key_mask.stride(0) if key_mask is not None else 0, *_bias_strides(bias, bias_kind),
        heads, seq_m, seq_n, scale, scale * LOG2E, query_offset, max_distance, num_tiles, tile_lo,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, TILE_STEP=tile_step, **common, **q_segments,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip

    if bias_grad and bias_kind == BIAS_RELATIVE:
        partial_rows = scratch[: num_n_blocks * batch * heads * relative_width]
        dbias = partial_rows.view(batch, heads, num_n_blocks, relative_width).sum((0, 2))
    elif bias_grad and bias_kind == BIAS_DENSE:
        reduce_dims = [i for i in range(4) if bias.shape[i] == 1 and dbias.shape[i] != 1]
        if reduce_dims:
            dbias = dbias.sum(reduce_dims, keepdim=True)
        dbias = dbias.to(bias.dtype)
    return dq, dk, dv, dbias


def _attention_forward_fake(
    q, k, v, key_mask, bias, forward_tiles, backward_kv_tiles, backward_q_tiles, bias_kind, *options_and_segments
):
    batch, heads, seq_m, head_dim = q.shape
    out = q.new_empty(batch, seq_m, heads, head_dim)
    return out, q.new_empty(batch, heads, seq_m, dtype=torch.float32)


def _attention_backward_fake(
    grad_out, q, k, v, out, lse, key_mask, bias, backward_kv_tiles, backward_q_tiles, dropout_seed, bias_kind, *options
):
    batch, heads, seq_m, head_dim = q.shape
    seq_n = k.shape[2]
    bias_grad = options[6]
    dq = _new_like_heads_last(batch, heads, seq_m, head_dim, q)
    dk = _new_like_heads_last(batch, heads, seq_n, head_dim, k)
    dv = _new_like_heads_last(batch, heads, seq_n, head_dim, v)
    if bias_grad:
        return dq, dk, dv, bias.new_empty(bias.shape)
    return dq, dk, dv, q.new_empty(0)


@kernel_op("fat5::attention_forward", _attention_forward_fake)
def attention_forward_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    forward_tiles: torch.Tensor | None,
    backward_kv_tiles: torch.Tensor | None,
    backward_q_tiles: torch.Tensor | None,
    bias_kind: int,
    scale: float,
    causal: bool,
    alibi_asymmetric: bool,
    max_distance: int,
    query_offset: int,
    dropout_p: float,
    dropout_seed: torch.Tensor | None,
    query_segments: torch.Tensor | None,
    key_segments: torch.Tensor | None,
    query_segment_starts: torch.Tensor | None,
    key_segment_starts: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(
        q, k, v, key_mask, bias, forward_tiles, bias_kind, scale, causal, alibi_asymmetric, max_distance, query_offset,
        dropout_p, dropout_seed, query_segments, key_segments, key_segment_starts,
    )  # fmt: skip


@kernel_op("fat5::attention_backward", _attention_backward_fake)
def attention_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    backward_kv_tiles: torch.Tensor | None,
    backward_q_tiles: torch.Tensor | None,
    dropout_seed: torch.Tensor | None,
    bias_kind: int,
    scale: float,
    causal: bool,
    alibi_asymmetric: bool,
    max_distance: int,
    query_offset: int,
    dropout_p: float,
    bias_grad: bool,
    query_segments: torch.Tensor | None,
    key_segments: torch.Tensor | None,
    query_segment_starts: torch.Tensor | None,
    key_segment_starts: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(
        grad_out, q, k, v, out, lse, key_mask, bias, backward_kv_tiles, backward_q_tiles, bias_kind, scale, causal,
        alibi_asymmetric, max_distance, query_offset, dropout_p, dropout_seed, bias_grad, query_segments, key_segments,
        query_segment_starts, key_segment_starts,
    )  # fmt: skip


def _setup_context(ctx, inputs, output):
    q, k, v, key_mask, bias, _forward_tiles, backward_kv_tiles, backward_q_tiles, bias_kind, *options = inputs
    *options, dropout_seed = options[:7]
    out, lse = output
    # The dropout seed is kept, not the mask: the backward kernels draw the forward's mask again.
    ctx.save_for_backward(
        q, k, v, out, lse, key_mask, bias, backward_kv_tiles, backward_q_tiles, dropout_seed, *inputs[-4:]
    )
    ctx.options = (bias_kind, *options)


def _backward_from_autograd(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, key_mask, bias, backward_kv_tiles, backward_q_tiles, dropout_seed, *segments = ctx.saved_tensors
    bias_kind = ctx.options[0]
    bias_grad = bias_kind in (BIAS_RELATIVE, BIAS_DENSE) and ctx.needs_input_grad[4]
    dq, dk, dv, dbias = attention_backward_op(
        grad_out, q, k, v, out, lse, key_mask, bias, backward_kv_tiles, backward_q_tiles, dropout_seed,
        *ctx.options, bias_grad, *segments,
    )  # fmt: skip
    # The key mask, the bias tiles, the dropout seed, the segments and the options take no gradient.
    return dq, dk, dv, None, dbias if bias_grad else None, *([None] * 15)


attention_forward_op.register_autograd(_backward_from_autograd, setup_context=_setup_context)


@_cached_in_eager_mode
@torch.compiler.assume_constant_result
def far_distance(num_buckets: int, max_distance: int, bidirectional: bool) -> int:
    """A distance in [1, max_distance] from which every farther relative position, on each side, has the bucket of
    max_distance: the kernels add one bias value per side from there on, and the fewer positions before it, the
    fewer tiles near the diagonal need their bias tile and their diagonal sums.

    The last position that T5's bucketing (float32, on the CPU) puts in an earlier bucket, plus two: one to reach the
    first far position, one more in case a device's float32 log puts that position in the earlier bucket.

    A constant to torch.compile, which would otherwise trace the bucketing.
    """
    relative = torch.arange(-max_distance, max_distance + 1)
    buckets = T5Attention._relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    near = ((relative < 0) & (buckets != buckets[0])) | ((relative > 0) & (buckets != buckets[-1]))
    last_near = int(relative[near].abs().max()) if near.any() else 0
    return min(last_near + 2, max_distance)


def relative_bias_by_distance(
    relative_attention_bias: torch.Tensor, num_buckets: int, max_distance: int, bidirectional: bool
) -> torch.Tensor:
    """(heads, 2 * far + 1): the bias of every relative position in [-far, far], far = `far_distance(num_buckets,
    max_distance, bidirectional)`; its two ends hold the bias of every farther position.

    Gathered from the (buckets, heads) table with T5's own bucketing, so autograd takes the kernel's gradient back to
    the table.
    """
    buckets = _distance_buckets(num_buckets, max_distance, bidirectional, relative_attention_bias.device)
    return relative_attention_bias.float()[buckets].t().contiguous()


# Cached in eager mode: the bucketing is a dozen small kernels a call; under torch.compile it fuses into one.
@_cached_in_eager_mode
def _distance_buckets(num_buckets: int, max_distance: int, bidirectional: bool, device: torch.device) -> torch.Tensor:
    """T5's bucket of every relative position in [-far, far], far = `far_distance(...)`."""
    far = far_distance(num_buckets, max_distance, bidirectional)
    relative = torch.arange(-far, far + 1, device=device)
    return T5Attention._relative_position_bucket(relative, bidirectional, num_buckets, max_distance)


def dense_bias(bias_kind, bias, seq_m, seq_n, query_offset, max_distance, alibi_asymmetric, device):
    """The (1|batch, heads, seq_m, seq_n) additive bias the kernels compute in place, for the paths they do not take."""
    if bias_kind == BIAS_DENSE:
        return bias
    if bias_kind == BIAS_NONE:
        return None
    relative = torch.arange(seq_n, device=device)[None, :] - torch.arange(seq_m, device=device)[:, None] - query_offset
    if bias_kind == BIAS_RELATIVE:
        return bias[:, relative.clamp(-max_distance, max_distance) + max_distance].unsqueeze(0)
    result = -bias[:, None, None] * relative.abs()
    if alibi_asymmetric:
        half = bias.shape[0] // 2
        blocked = torch.cat([(relative > 0).expand(half, -1, -1), (relative < 0).expand(half, -1, -1)])
        result = result.masked_fill(blocked, float("-inf"))
    return result.unsqueeze(0)


def _sdpa_with_bias(query, key, value, key_mask, attention_mask, bias, scale, causal, query_offset, dropout):
    """SDPA with every mask and bias folded into one additive (batch|1, heads|1, query, key) tensor."""
    seq_m, seq_n = query.shape[2], key.shape[2]
    # Causality hides nothing when every key is at or before the first query (a decode step against a dynamic cache).
    # A static cache's offset is a tensor: masking with it costs no host synchronisation.
    if not isinstance(query_offset, torch.Tensor):
        causal = causal and seq_n - 1 > query_offset
    if not causal and key_mask is None and attention_mask is None:
        # Nothing to fold: the bias (or none) goes to SDPA as it is, with no extra pass over it.
        attn_mask = None if bias is None else bias.to(query.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout, scale=scale)
        return out.transpose(1, 2).contiguous()
    min_value = torch.finfo(query.dtype).min
    additive = torch.zeros(1, 1, seq_m, seq_n, dtype=torch.float32, device=query.device)
    if bias is not None:
        additive = additive + bias.float()
    if causal:
        key_position = torch.arange(seq_n, device=query.device)[None, :]
        query_position = torch.arange(seq_m, device=query.device)[:, None] + query_offset
        additive = additive.masked_fill(key_position > query_position, min_value)
    if key_mask is not None:
        additive = additive.masked_fill(~key_mask.bool()[:, None, None, :], min_value)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        additive = additive.masked_fill(~attention_mask, min_value)
    elif attention_mask is not None:
        additive = additive + attention_mask.float()
    additive = additive.clamp(min=min_value).to(query.dtype)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=additive, dropout_p=dropout, scale=scale)
    return out.transpose(1, 2).contiguous()


def kernel_refusal(query, key, value, attention_mask, dropout) -> str | None:
    """Why the kernels do not take this call (then SDPA runs with a bias built for it), or None. Attention dropout
    bounds no length: its Philox counter holds a score's key group and query in two words (see `_dropout_keep`)."""
    if not kernels_can_run(query.device):
        # A model loaded where a GPU exists gets `fat5` by default, and may still run on the CPU before it moves.
        return f"inputs on {query.device} (the kernels run on CUDA GPUs, or on the CPU under TRITON_INTERPRET=1)"
    if query.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {query.shape[-1]} > {MAX_HEAD_DIM}"
    if query.dtype not in KERNEL_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return f"dtypes {query.dtype}/{key.dtype}/{value.dtype} (the kernels take one of fp16, bf16, fp32)"
    if query.dtype == torch.bfloat16 and interpreting():
        # Triton 3.x's CPU interpreter multiplies bf16 tiles in tl.dot as raw integers: a wrong answer, not slow.
        return "bf16 under Triton's CPU interpreter"
    if attention_mask is not None and attention_mask.dim() != 2:
        return "a 4D attention mask"
    if is_decode_step(query.shape[2]):
        return "a decode step"
    return None


def fat5_attention(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    relative_attention_bias: torch.Tensor | None = None,
    relative_attention_num_buckets: int | None = None,
    relative_attention_max_distance: int | None = None,
    bidirectional: bool = True,
    alibi_slopes: torch.Tensor | None = None,
    alibi_asymmetric: bool = False,
    query_offset: int | None = None,
    query_segment_ids: torch.Tensor | None = None,
    key_segment_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: (batch, heads, length, head_dim) inputs, (batch, query, heads, head_dim) out.

    The position bias comes as one of: `relative_attention_bias` (T5's (buckets, heads) table, with its bucketing
    parameters), `alibi_slopes` (heads,) with `alibi_asymmetric`, or a dense `position_bias`. `attention_mask` is the
    (batch, key) padding mask of the `fat5` mask function (True = attend), or None. Causal attention aligns the last
    query with the last key (`query_offset` = cached keys). Attention weights are not computed (None is returned).

    Packed rows (several examples a row) come as `query_segment_ids` (batch, query) and `key_segment_ids` (batch,
    key): each example's tokens share an id, ids rise from 1 along a row and padding (0) comes last. A query attends
    only to keys of its own id; the kernels skip the tiles outside its example.
    """
    if query.device != key.device or query.device != value.device:
        raise ValueError(
            f"query, key and value are on different devices: {query.device}, {key.device}, {value.device}"
        )
    if (
        attention_mask is not None
        and attention_mask.dim() == 2
        and attention_mask.shape != (key.shape[0], key.shape[2])
    ):
        raise ValueError(
            f"The key-padding mask has shape {tuple(attention_mask.shape)}, expected (batch, key length) = "
            f"{(key.shape[0], key.shape[2])}."
        )
    seq_m, seq_n = query.shape[2], key.shape[2]
    if (query_segment_ids is None) != (key_segment_ids is None):
        raise ValueError("Packed attention needs both `query_segment_ids` and `key_segment_ids`, or neither.")
    if query_segment_ids is not None and (
        query_segment_ids.shape != (query.shape[0], seq_m) or key_segment_ids.shape != (key.shape[0], seq_n)
    ):
        raise ValueError(
            f"Segment ids of shapes {tuple(query_segment_ids.shape)} and {tuple(key_segment_ids.shape)} do not match "
            f"the (batch, length) of the queries {(query.shape[0], seq_m)} and keys {(key.shape[0], seq_n)}."
        )
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    refusal = kernel_refusal(query, key, value, attention_mask, dropout)
    offset = seq_n - seq_m if query_offset is None else query_offset
    # A static cache counts its tokens in a tensor, which the SDPA route takes as it is; the kernels need an int.
    if refusal is None or not isinstance(offset, torch.Tensor):
        offset = int(offset)
        if causal and offset < 0:
            raise ValueError(f"Causal attention with {seq_m} queries needs at least as many keys, got {seq_n}.")

    max_distance = 0
    if relative_attention_bias is not None:
        bias_kind = BIAS_RELATIVE
        bucketing = (int(relative_attention_num_buckets), int(relative_attention_max_distance), bidirectional)
        bias = relative_bias_by_distance(relative_attention_bias, *bucketing)
        # The kernels' max_distance: where the bias becomes one value per side.
        max_distance = far_distance(*bucketing)
    elif alibi_slopes is not None:
        bias_kind, bias = BIAS_ALIBI, alibi_slopes.float().contiguous()
    elif position_bias is not None:
        bias_kind, bias = BIAS_DENSE, position_bias
    else:
        bias_kind, bias = BIAS_NONE, None

    if refusal is not None:
        # Decode steps take SDPA by design; any other fallback costs (query x key) memory, which the user should know.
        if not is_decode_step(seq_m) and not torch.compiler.is_compiling():
            logger.warning_once(
                f"`fat5` attention runs SDPA with a dense (query x key) position bias for {refusal}: its memory grows "
                "with the square of the sequence length."
            )
        full_bias = dense_bias(bias_kind, bias, seq_m, seq_n, offset, max_distance, alibi_asymmetric, query.device)
        key_mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        other_mask = attention_mask if key_mask is None else None
        if query_segment_ids is not None:
            same_segment = (query_segment_ids[:, None, :, None] == key_segment_ids[:, None, None, :]) & (
                key_segment_ids[:, None, None, :] != 0
            )
            if other_mask is not None and other_mask.dtype != torch.bool:
                other_mask = other_mask.masked_fill(~same_segment, torch.finfo(other_mask.dtype).min)
            else:
                other_mask = same_segment if other_mask is None else other_mask & same_segment
        out = _sdpa_with_bias(query, key, value, key_mask, other_mask, full_bias, scale, causal, offset, dropout)
        return out, None

    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    key_mask = None
    if attention_mask is not None:
        # A cast, not a bool-to-uint8 view: Inductor cannot lower a view of a bool tensor as another dtype.
        key_mask = (attention_mask != 0).to(torch.uint8)
    tiles = (None, None, None)
    if bias_kind == BIAS_RELATIVE:
        configs = kernel_configs(query.shape[-1], query.dtype)
        tiles = relative_bias_tiles(bias, max_distance, offset, configs, query.dtype)
    segments = (None, None, None, None)
    if query_segment_ids is not None:
        self_attention = key_segment_ids is query_segment_ids
        query_segment_ids = query_segment_ids.to(torch.int32).contiguous()
        # Ids index the starts arrays: a row of n tokens has at most n examples.
        max_segments = max(seq_m, seq_n)
        query_starts = segment_starts(query_segment_ids, max_segments)
        # Self-attention's queries and keys are one sequence: its ids and starts serve both.
        if self_attention:
            key_segment_ids, key_starts = query_segment_ids, query_starts
        else:
            key_segment_ids = key_segment_ids.to(torch.int32).contiguous()
            key_starts = segment_starts(key_segment_ids, max_segments)
        segments = (query_segment_ids, key_segment_ids, query_starts, key_starts)
    dropout = float(dropout)
    out, _ = attention_forward_op(
        query, key, value, key_mask, bias, *tiles, bias_kind, scale, causal, alibi_asymmetric, max_distance, offset,
        dropout, draw_dropout_seed(query.device) if dropout > 0.0 else None, *segments,
    )  # fmt: skip
    return out, None


def segment_starts(segment_ids: torch.Tensor, max_segments: int) -> torch.Tensor:
    """(batch, max_segments + 2) int32: where each segment id's tokens start in its row (entry s, for s >= 1), and
    where they end (entry s + 1), for rows whose ids rise from 1 and whose padding (0) comes last. Static shapes: one
    compiled graph whatever the number of examples."""
    counts = torch.zeros(segment_ids.shape[0], max_segments + 2, dtype=torch.int32, device=segment_ids.device)
    counts.scatter_add_(1, segment_ids.long(), torch.ones_like(segment_ids))
    counts[:, 0] = 0
    return (counts.cumsum(1, dtype=torch.int32) - counts).contiguous()


def draw_dropout_seed(device: torch.device) -> torch.Tensor:
    """The seed of one call's dropout mask, drawn from torch's generator of `device`: `torch.manual_seed` makes the
    masks reproducible, and under CUDA graphs each replay draws a new one."""
    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)


__all__ = ["fat5_attention", "far_distance", "relative_bias_by_distance"]
