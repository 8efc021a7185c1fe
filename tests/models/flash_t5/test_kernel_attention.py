# Copyright 2026 The FAT5 Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The `fat5` Triton attention against an fp64 reference: outputs and every gradient (q, k, v, the T5 bucket table, a
dense bias) for each position encoding, padding, causal masks with cached keys, cross-attention and ragged sizes.

Runs on CPU through Triton's interpreter (set below when there is no CUDA), on the GPU as is; the GPU run adds real
sizes in bf16.
"""

import dataclasses
import math
import os

import pytest
import torch


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="the fat5 attention kernels need Triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from transformers.models.t5.modeling_t5 import T5Attention  # noqa: E402

from fat5.models.flash_t5.kernels import attention as A  # noqa: E402
from fat5.models.flash_t5.modeling_flash_t5 import alibi_slopes, relative_position_bucket  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Module(torch.nn.Module):
    is_causal = False


def reference_attention(
    q, k, v, scale, bias=None, key_mask=None, causal=False, offset=0, blocked=None, dropout_keep=None, dropout=0.0
):
    """fp64 softmax attention with an additive bias; rows with no key to attend to give zeros. `dropout_keep`
    (batch, heads, query, key) replays a dropout mask: the kept probabilities are scaled by 1 / (1 - dropout)."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias.double()
    seq_m, seq_n = q.shape[2], k.shape[2]
    allowed = torch.ones(1, 1, seq_m, seq_n, dtype=torch.bool, device=q.device)
    relative = torch.arange(seq_n, device=q.device)[None, :] - torch.arange(seq_m, device=q.device)[:, None] - offset
    if causal:
        allowed = allowed & (relative <= 0)
    if blocked is not None:
        allowed = allowed & ~blocked
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    if dropout_keep is not None:
        probs = probs * dropout_keep / (1.0 - dropout)
    return (probs @ v).transpose(1, 2)


def t5_dense_bias(table, seq_m, seq_n, offset, bidirectional, num_buckets, max_distance):
    relative = torch.arange(seq_n)[None, :] - torch.arange(seq_m)[:, None] - offset
    buckets = T5Attention._relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    buckets = buckets.to(table.device)
    return table[buckets].permute(2, 0, 1).unsqueeze(0)


def t5_bias_kwargs(table, num_buckets, max_distance, **others):
    """`fat5_attention`'s keyword arguments of a T5 bucket table, with any others."""
    return {
        "relative_attention_bias": table,
        "relative_attention_num_buckets": num_buckets,
        "relative_attention_max_distance": max_distance,
        **others,
    }


def inputs(batch, heads, seq_m, seq_n, head_dim, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, seq_m, heads, head_dim), (batch, seq_n, heads, head_dim), (batch, seq_n, heads, head_dim)]
    # transformers' layout: (batch, heads, length, head_dim) views of (batch, length, heads, head_dim) tensors.
    tensors = [torch.randn(shape, generator=generator).to(DEVICE, dtype).transpose(1, 2) for shape in shapes]
    return [t.detach().requires_grad_() for t in tensors]


def padding_mask(batch, seq_n, lengths):
    mask = torch.zeros(batch, seq_n, dtype=torch.bool, device=DEVICE)
    for row, length in enumerate(lengths):
        mask[row, :length] = True
    return mask


def relative_error(actual, expected):
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), "non-finite values (an element left unwritten?)"
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-12)).item()


def check(actual_outputs, expected_outputs, tolerance):
    for name, actual, expected in zip(("out", "dq", "dk", "dv", "dbias"), actual_outputs, expected_outputs):
        assert actual.shape == expected.shape, name
        assert relative_error(actual, expected) < tolerance, f"{name}: {relative_error(actual, expected):.2e}"


def run_both(kernel_kwargs, reference_kwargs, q, k, v, scale, bias_leaf=None, reference_bias=None, mask=None):
    out, weights = A.fat5_attention(Module(), q, k, v, mask, scaling=scale, **kernel_kwargs)
    assert weights is None
    grad = torch.randn_like(out)
    leaves = [q, k, v] + ([bias_leaf] if bias_leaf is not None else [])
    kernel_grads = torch.autograd.grad(out, leaves, grad)
    reference_leaves = [t.detach().double().requires_grad_() for t in leaves]
    bias_leaf64 = reference_leaves[3] if bias_leaf is not None else None
    bias = reference_bias(bias_leaf64) if reference_bias is not None else None
    expected = reference_attention(*reference_leaves[:3], scale, bias=bias, key_mask=mask, **reference_kwargs)
    expected_grads = torch.autograd.grad(expected, reference_leaves, grad.double())
    return [out, *kernel_grads], [expected, *expected_grads]


@pytest.fixture(params=[False, True], ids=["narrow-layout", "wide-layout"])
def kv_layout(request, monkeypatch):
    """Both layouts of the key/value-gradient kernel, tuned choices: fast tiles query or key by row, the near tiles
    of a call without a causal mask with or without bounds masks."""
    configs = A.kernel_configs

    def with_layout(head_dim, dtype):
        chosen = configs(head_dim, dtype)
        kv_config = dataclasses.replace(
            chosen["backward_kv"], fast_keys_by_row=request.param, near_in_bounds=request.param
        )
        if not torch.cuda.is_available():
            # Twice as many keys as queries a tile: a block_m taken for a block_n anywhere fails.
            kv_config = dataclasses.replace(kv_config, block_n=2 * kv_config.block_m)
        chosen["backward_kv"] = kv_config
        return chosen

    monkeypatch.setattr(A, "kernel_configs", with_layout)


@pytest.mark.parametrize(
    "seq_m,seq_n,bidirectional,lengths",
    [
        (37, 37, True, None),
        (37, 37, True, (37, 21)),
        (45, 45, False, (45, 30)),
        (20, 45, False, None),
        # Far tiles on both sides of the diagonal and a ragged far tile, whose bias tile is clamped to the last one.
        (100, 100, True, (100, 70)),
        # Bidirectional queries that start past the first keys: the near tiles of a non-causal call are taken as
        # inside both sequences (no bounds masks); they must end at the last whole key tile, before the ragged one.
        (30, 70, True, (70, 50)),
    ],
    ids=["encoder", "encoder-padded", "decoder-padded", "decoder-cached-keys", "encoder-far-tiles", "encoder-offset"],
)
def test_t5_relative_bias(poison, kv_layout, seq_m, seq_n, bidirectional, lengths):
    num_buckets, max_distance, heads = 8, 12, 3
    q, k, v = inputs(2, heads, seq_m, seq_n, 32, torch.float32)
    table = torch.randn(num_buckets, heads, device=DEVICE).requires_grad_()
    mask = padding_mask(2, seq_n, lengths) if lengths else None
    causal, offset = not bidirectional, seq_n - seq_m
    kernel_kwargs = t5_bias_kwargs(
        table, num_buckets, max_distance, bidirectional=bidirectional, is_causal=causal, query_offset=offset
    )

    def reference_bias(table64):
        return t5_dense_bias(table64, seq_m, seq_n, offset, bidirectional, num_buckets, max_distance)

    actual, expected = run_both(
        kernel_kwargs, {"causal": causal, "offset": offset}, q, k, v, 1.0, table, reference_bias, mask
    )
    check(actual, expected, 1e-5)


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 12), (64, 256), (4, 8), (32, 1024)])
def test_model_buckets_as_t5(num_buckets, max_distance, bidirectional):
    """The model's bucketing gives T5's bucket, which the kernels take the table's bias by, to every relative position,
    on both sides and far beyond max_distance."""
    relative = torch.arange(-8 * max_distance, 8 * max_distance + 1)
    expected = T5Attention._relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    assert torch.equal(relative_position_bucket(relative, bidirectional, num_buckets, max_distance), expected)


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 12), (64, 256), (4, 8)])
def test_far_distance_starts_where_the_bucket_stops_changing(num_buckets, max_distance, bidirectional):
    """Every relative position from far_distance on, on each side and well past max_distance, has the bucket of the
    far end in T5's own bucketing; and the range is not wider than that plus the documented one-position margin."""
    far = A.far_distance(num_buckets, max_distance, bidirectional)
    assert 1 <= far <= max_distance
    relative = torch.arange(-4 * max_distance, 4 * max_distance + 1)
    buckets = T5Attention._relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    by_position = dict(zip(relative.tolist(), buckets.tolist()))
    for side in (1, -1):
        beyond = [by_position[side * distance] for distance in range(far, 4 * max_distance + 1)]
        assert set(beyond) == {by_position[side * max_distance]}
    last_changing = max(
        distance
        for distance in range(max_distance + 1)
        for side in (1, -1)
        if by_position[side * distance] != by_position[side * max_distance]
    )
    assert far == min(last_changing + 2, max_distance)
    # T5's defaults: the bias stops changing 91 positions out on either side of an encoder query, not 128.
    if (num_buckets, max_distance, bidirectional) == (32, 128, True):
        assert far == 92


@pytest.mark.parametrize("asymmetric", [False, True], ids=["symmetric", "asymmetric"])
def test_alibi(poison, kv_layout, asymmetric):
    heads, seq = 4, 35
    q, k, v = inputs(2, heads, seq, seq, 16, torch.float32, seed=1)
    slopes = torch.tensor(alibi_slopes(heads // 2 if asymmetric else heads), device=DEVICE)
    slopes = slopes.repeat(2) if asymmetric else slopes
    mask = padding_mask(2, seq, (35, 17))
    relative = torch.arange(seq, device=DEVICE)[None, :] - torch.arange(seq, device=DEVICE)[:, None]
    bias = -slopes[:, None, None].double() * relative.abs()
    blocked = None
    if asymmetric:
        blocked = torch.cat([(relative > 0).expand(2, -1, -1), (relative < 0).expand(2, -1, -1)])
    kernel_kwargs = {"alibi_slopes": slopes, "alibi_asymmetric": asymmetric}
    actual, expected = run_both(kernel_kwargs, {"blocked": blocked}, q, k, v, 0.25, None, lambda _: bias, mask)
    check(actual, expected, 1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_dense_bias_and_its_gradient(poison, kv_layout, causal):
    heads, seq = 2, 33
    q, k, v = inputs(2, heads, seq, seq, 24, torch.float32, seed=2)
    bias = torch.randn(1, heads, seq, seq, device=DEVICE).requires_grad_()
    mask = padding_mask(2, seq, (33, 9))
    expanded = bias.expand(2, -1, -1, -1)
    out, _ = A.fat5_attention(Module(), q, k, v, mask, scaling=1.0, position_bias=expanded, is_causal=causal)
    grad = torch.randn_like(out)
    actual = [out, *torch.autograd.grad(out, [q, k, v, bias], grad)]
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    expected = reference_attention(*leaves[:3], 1.0, bias=leaves[3], key_mask=mask, causal=causal)
    check(actual, [expected, *torch.autograd.grad(expected, leaves, grad.double())], 1e-5)


@pytest.mark.parametrize(
    "seq_m,seq_n,causal,lengths,scale",
    [
        (37, 37, False, (37, 21), 0.5),
        (45, 45, True, (45, 30), 0.5),
        (20, 45, True, None, 0.5),
        # A negative scale: the row maximum of the scores is not that of the products.
        (37, 37, False, (37, 21), -0.5),
    ],
    ids=["encoder-padded", "decoder-padded", "decoder-cached-keys", "negative-scale"],
)
def test_self_attention_without_bias(poison, kv_layout, seq_m, seq_n, causal, lengths, scale):
    q, k, v = inputs(2, 3, seq_m, seq_n, 32, torch.float32, seed=6)
    mask = padding_mask(2, seq_n, lengths) if lengths else None
    offset = seq_n - seq_m
    kernel_kwargs = {"is_causal": causal, "query_offset": offset}
    actual, expected = run_both(kernel_kwargs, {"causal": causal, "offset": offset}, q, k, v, scale, mask=mask)
    check(actual, expected, 1e-5)


def test_cross_attention_without_bias(poison):
    q, k, v = inputs(2, 2, 19, 40, 32, torch.float32, seed=3)
    mask = padding_mask(2, 40, (40, 26))
    actual, expected = run_both({}, {}, q, k, v, 1.0, mask=mask)
    check(actual, expected, 1e-5)


def test_all_keys_masked_gives_zeros(poison):
    q, k, v = inputs(2, 2, 17, 17, 16, torch.float32, seed=4)
    mask = padding_mask(2, 17, (17, 0))
    out, _ = A.fat5_attention(Module(), q, k, v, mask, scaling=1.0)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    (dq, dk, dv) = torch.autograd.grad(out.sum(), [q, k, v])
    assert torch.equal(dq[1], torch.zeros_like(dq[1])) and torch.isfinite(dk).all() and torch.isfinite(dv).all()


HALF_DTYPES = [torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_within_sdpa_error(poison, dtype):
    """Half-precision kernel error against fp64 is within SDPA's own error on the same inputs, with a T5 bias of
    trained magnitude (bf16 on GPU only: the CPU interpreter cannot multiply bf16, and the kernel refuses it there)."""
    heads, seq, num_buckets, max_distance = 2, 40, 8, 12
    q, k, v = inputs(2, heads, seq, seq, 32, dtype, seed=5)
    # Trained T5 tables reach magnitudes of ten and more: the kernel's fp16 bias tiles must hold them.
    table = torch.randn(num_buckets, heads, generator=torch.Generator().manual_seed(7)).to(DEVICE) * 8
    out, _ = A.fat5_attention(Module(), q, k, v, None, scaling=1.0, **t5_bias_kwargs(table, num_buckets, max_distance))
    bias = t5_dense_bias(table.double(), seq, seq, 0, True, num_buckets, max_distance)
    expected = reference_attention(q, k, v, 1.0, bias=bias)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
    sdpa_error = relative_error(sdpa.transpose(1, 2), expected)
    assert relative_error(out, expected) < 1.5 * sdpa_error + 1e-4


def test_decode_step_takes_sdpa_with_the_same_result():
    """A few queries against cached keys, no gradient: the SDPA route, equal to the kernel's answer."""
    num_buckets, max_distance = 8, 12
    q, k, v = inputs(1, 2, 3, 30, 16, torch.float32, seed=6)
    table = torch.randn(num_buckets, 2, device=DEVICE)
    kwargs = t5_bias_kwargs(table, num_buckets, max_distance, bidirectional=False, is_causal=True)
    assert A.kernel_refusal(q, k, v, None, 0.0) is None  # gradients enabled: the kernel
    with torch.no_grad():
        assert A.kernel_refusal(q, k, v, None, 0.0) == "a decode step"
        decoded, _ = A.fat5_attention(Module(), q, k, v, None, scaling=1.0, **kwargs)
    kernel, _ = A.fat5_attention(Module(), q, k, v, None, scaling=1.0, **kwargs)
    torch.testing.assert_close(decoded, kernel.detach(), rtol=1e-5, atol=1e-5)


def test_fallback_to_dense_bias_warns_but_decode_steps_do_not():
    """A 4D mask sends a training call to SDPA with an N x N bias: the user hears of it; a decode step takes SDPA by
    design and says nothing."""
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    logger = logging.get_logger(A.__name__)
    logger.warning_once.cache_clear()
    q, k, v = inputs(1, 2, 20, 20, 16, torch.float32)
    with CaptureLogger(logger) as captured:
        with torch.no_grad():
            A.fat5_attention(Module(), q[:, :, :1], k, v, None)
    assert captured.out == ""
    with CaptureLogger(logger) as captured:
        out, _ = A.fat5_attention(Module(), q, k, v, torch.ones(1, 1, 20, 20, dtype=torch.bool, device=DEVICE))
    assert "for a 4D attention mask" in captured.out and "square of the sequence length" in captured.out
    assert out.shape == (1, 20, 2, 16)


def test_bad_inputs_are_clear_errors():
    q, k, v = inputs(2, 2, 20, 20, 16, torch.float32)
    with pytest.raises(ValueError, match="key-padding mask has shape"):
        A.fat5_attention(Module(), q, k, v, torch.ones(2, 7, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="needs at least as many keys"):
        A.fat5_attention(Module(), q, k[:, :, :5], v[:, :, :5], None, is_causal=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU interpreter's refusal of bf16")
def test_bf16_under_the_interpreter_takes_sdpa():
    q, k, v = inputs(1, 2, 20, 20, 16, torch.bfloat16)
    assert A.kernel_refusal(q, k, v, None, 0.0) == "bf16 under Triton's CPU interpreter"
    out, _ = A.fat5_attention(Module(), q, k, v, None, scaling=1.0)
    assert relative_error(out, reference_attention(q, k, v, 1.0)) < 1e-2


@pytest.mark.parametrize("dropout", [0.0, 0.25], ids=["no-dropout", "dropout-packed"])
@pytest.mark.parametrize("bias_kind", ["relative", "dense", "none"])
def test_opcheck(bias_kind, dropout):
    """The ops' registrations agree with their implementation (`torch.library.opcheck`): output shapes, dtypes and
    strides of the fake implementations (the traced implementation itself on a GPU), the autograd registration,
    and a trace under AOT dispatch."""
    torch.manual_seed(0)
    q, k, v = inputs(2, 2, 20, 24, 16, torch.float32)
    key_mask = padding_mask(2, 24, [24, 17]).view(torch.uint8)
    tiles = (None, None, None)
    max_distance, causal = 0, False
    if bias_kind == "relative":
        max_distance = A.far_distance(8, 12, bidirectional=True)
        table = torch.randn(8, 2, device=DEVICE, requires_grad=True)
        bias = A.relative_bias_by_distance(table, 8, 12, bidirectional=True)
        tiles = A.relative_bias_tiles(bias, max_distance, 0, A.kernel_configs(16, torch.float32), torch.float32)
        kind = A.BIAS_RELATIVE
    elif bias_kind == "dense":
        bias = torch.randn(1, 2, 20, 24, device=DEVICE, requires_grad=True)
        kind, causal = A.BIAS_DENSE, True
    else:
        bias, kind = None, A.BIAS_NONE
    options = (kind, 0.25, causal, False, max_distance, 0)
    seed = torch.tensor([99], dtype=torch.int64, device=DEVICE) if dropout else None
    # With dropout, a packed call too: two examples in the first row, one in the second.
    segments = (None,) * 4
    if dropout:
        query_segments, key_segments = packed_segments([[8, 12], [20]], 20), packed_segments([[10, 14], [24]], 24)
        starts = [A.segment_starts(ids, 24) for ids in (query_segments, key_segments)]
        segments = (query_segments, key_segments, *starts)
    forward_args = (q, k, v, key_mask, bias, *tiles, *options, dropout, seed, *segments)
    torch.library.opcheck(torch.ops.fat5.attention_forward, forward_args)

    out, lse = torch.ops.fat5.attention_forward(*forward_args)
    grad_out = torch.randn_like(out)
    bias_grad = bias is not None
    backward_args = (out, lse, key_mask, bias, tiles[1], tiles[2], seed, *options, dropout, bias_grad, *segments)
    backward_args = (grad_out, q, k, v, *backward_args)
    torch.library.opcheck(
        torch.ops.fat5.attention_backward, tuple(a.detach() if torch.is_tensor(a) else a for a in backward_args)
    )


UINT32 = 0xFFFFFFFF


def _mulhilo32(multiplier, x):
    """(high, low) words of multiplier * x for a 32-bit constant and an int64 tensor of uint32s, in int64 arithmetic
    (16-bit halves, so that no product overflows)."""
    low_half, high_half = x & 0xFFFF, x >> 16
    low_product, high_product = multiplier * low_half, multiplier * high_half
    middle = high_product + (low_product >> 16)
    return middle >> 16, ((middle & 0xFFFF) << 16) | (low_product & 0xFFFF)


def philox4x32(counter, key, rounds=10):
    """Philox4x32 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011; Random123's philox4x32_R) in
    torch: the four output words of the counters (four int64 tensors of uint32s, broadcast together) under the key
    (two)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        high0, low0 = _mulhilo32(0xD2511F53, c0)
        high1, low1 = _mulhilo32(0xCD9E8D57, c2)
        c0, c1, c2, c3 = high1 ^ c1 ^ k0, low1, high0 ^ c3 ^ k1, low0
        k0, k1 = (k0 + 0x9E3779B9) & UINT32, (k1 + 0xBB67AE85) & UINT32
    return c0, c1, c2, c3


def test_philox4x32_known_answers():
    """The replay's Philox gives Random123's known answers (kat_vectors, philox4x32 with 10 rounds)."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((UINT32,) * 4, (UINT32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        words = philox4x32([torch.tensor(c) for c in counter], [torch.tensor(k) for k in key])
        assert [int(w) for w in words] == list(expected)


def replay_keep_mask(seed, batch, heads, seq_m, seq_n, dropout):
    """The dropout mask the kernels should draw from `seed`, replayed here without their code: (batch, heads, query,
    key), True = kept. Score (query, key) of head h = batch * heads + head takes word key % 4 of Philox4x32-10 with
    counter (key // 4, query, 0, 0) and key (the seed's low word, its high word | h), and is kept when that word is
    at least floor(p * 2^32), p in fp32."""
    seed = int(seed)
    head = torch.arange(batch * heads, dtype=torch.int64, device=DEVICE)[:, None, None]
    query = torch.arange(seq_m, dtype=torch.int64, device=DEVICE)[None, :, None]
    key = torch.arange(seq_n, dtype=torch.int64, device=DEVICE)[None, None, :]
    zero = torch.zeros((), dtype=torch.int64, device=DEVICE)
    philox_key = (torch.full_like(head, seed & UINT32), (head | (seed >> 32)) & UINT32)
    words = philox4x32((key // 4, query, zero, zero), philox_key)
    words = torch.stack(torch.broadcast_tensors(*words))
    word = torch.gather(words, 0, (key % 4).expand(1, batch * heads, seq_m, seq_n))[0]
    threshold = math.floor(float(torch.tensor(dropout, dtype=torch.float32)) * 2**32)
    return (word >= threshold).view(batch, heads, seq_m, seq_n)


@triton.jit
def _keep_mask_kernel(
    SEED, KEEP, seq_m, seq_n, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KEYS_BY_ROW: tl.constexpr
):
    start_m = tl.program_id(0) * BLOCK_M
    start_n = tl.program_id(1) * BLOCK_N
    batch_head = tl.program_id(2)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    keep = A._dropout_keep(tl.load(SEED), batch_head, offs_m, start_n, dropout_p, BLOCK_N, KEYS_BY_ROW)
    if KEYS_BY_ROW:
        query_index = offs_m[None, :]
        key_index = offs_n[:, None]
    else:
        query_index = offs_m[:, None]
        key_index = offs_n[None, :]
    in_bounds = (query_index < seq_m) & (key_index < seq_n)
    tl.store(KEEP + (batch_head * seq_m + query_index) * seq_n + key_index, keep.to(tl.int8), mask=in_bounds)


def kernel_keep_mask(seed, batch, heads, seq_m, seq_n, dropout, block_m=16, block_n=16, keys_by_row=False):
    """The dropout mask the kernels draw from `seed`, drawn through their own `_dropout_keep` tile by tile (tiles of
    block_m queries and block_n keys, keys by row or not): (batch, heads, query, key), True = kept."""
    keep = torch.zeros(batch, heads, seq_m, seq_n, dtype=torch.int8, device=DEVICE)
    grid = (triton.cdiv(seq_m, block_m), triton.cdiv(seq_n, block_n), batch * heads)
    _keep_mask_kernel[grid](
        seed, keep, seq_m, seq_n, dropout, BLOCK_M=block_m, BLOCK_N=block_n, KEYS_BY_ROW=keys_by_row
    )
    return keep.bool()


@pytest.fixture
def fixed_dropout_seed(monkeypatch):
    seed = torch.tensor([20261203], dtype=torch.int64, device=DEVICE)
    monkeypatch.setattr(A, "draw_dropout_seed", lambda device: seed.to(device))
    return seed


@pytest.mark.parametrize(
    "seq_m,seq_n,bidirectional,lengths",
    [(37, 37, True, (37, 21)), (45, 45, False, (45, 30)), (20, 45, False, None), (100, 100, True, (100, 70))],
    ids=["encoder-padded", "decoder-padded", "decoder-cached-keys", "encoder-far-tiles"],
)
def test_dropout_t5_gradients_replay_the_forward_mask(
    poison, kv_layout, fixed_dropout_seed, seq_m, seq_n, bidirectional, lengths
):
    """Attention dropout with the T5 bias: output and every gradient (q, k, v, the bucket table) equal an fp64
    computation that applies the kernels' own mask, so the backward kernels drew the forward's mask, in every kind of
    tile (far, near, ragged) and both key/value layouts."""
    num_buckets, max_distance, heads, dropout = 8, 12, 3, 0.3
    q, k, v = inputs(2, heads, seq_m, seq_n, 32, torch.float32, seed=8)
    table = torch.randn(num_buckets, heads, device=DEVICE).requires_grad_()
    mask = padding_mask(2, seq_n, lengths) if lengths else None
    causal, offset = not bidirectional, seq_n - seq_m
    kernel_kwargs = t5_bias_kwargs(
        table, num_buckets, max_distance, bidirectional=bidirectional, is_causal=causal, query_offset=offset,
        dropout=dropout,
    )  # fmt: skip
    keep = replay_keep_mask(fixed_dropout_seed, 2, heads, seq_m, seq_n, dropout)
    reference_kwargs = {"causal": causal, "offset": offset, "dropout_keep": keep, "dropout": dropout}

    def reference_bias(table64):
        return t5_dense_bias(table64, seq_m, seq_n, offset, bidirectional, num_buckets, max_distance)

    actual, expected = run_both(kernel_kwargs, reference_kwargs, q, k, v, 1.0, table, reference_bias, mask)
    check(actual, expected, 1e-5)


@pytest.mark.parametrize("bias_kind", ["alibi", "dense", "none"])
def test_dropout_other_biases_replay_the_forward_mask(poison, kv_layout, fixed_dropout_seed, bias_kind):
    """Attention dropout with ALiBi, a dense bias (and its gradient) and no bias (cross-attention, ragged lengths)."""
    heads, seq_m, seq_n, dropout = 2, 33, 33 if bias_kind != "none" else 47, 0.2
    q, k, v = inputs(2, heads, seq_m, seq_n, 16, torch.float32, seed=9)
    mask = padding_mask(2, seq_n, (seq_n, 11))
    keep = replay_keep_mask(fixed_dropout_seed, 2, heads, seq_m, seq_n, dropout)
    relative = torch.arange(seq_n, device=DEVICE)[None, :] - torch.arange(seq_m, device=DEVICE)[:, None]
    bias_leaf, reference_bias, kernel_kwargs = None, None, {"dropout": dropout}
    if bias_kind == "alibi":
        slopes = torch.tensor(alibi_slopes(heads), device=DEVICE)
        kernel_kwargs["alibi_slopes"] = slopes
        reference_bias = lambda _: -slopes[:, None, None].double() * relative.abs()  # noqa: E731
    elif bias_kind == "dense":
        bias_leaf = torch.randn(1, heads, seq_m, seq_n, device=DEVICE).requires_grad_()
        kernel_kwargs["position_bias"] = bias_leaf.expand(2, -1, -1, -1)
        reference_bias = lambda bias64: bias64  # noqa: E731
    reference_kwargs = {"dropout_keep": keep, "dropout": dropout}
    actual, expected = run_both(kernel_kwargs, reference_kwargs, q, k, v, 0.5, bias_leaf, reference_bias, mask)
    check(actual, expected, 1e-5)


@pytest.mark.parametrize(
    "block_m,block_n,keys_by_row",
    [(16, 16, False), (16, 64, False), (64, 16, False), (32, 32, True), (16, 64, True), (64, 16, True)],
)
def test_dropout_mask_is_the_replay_in_every_tile_shape(fixed_dropout_seed, block_m, block_n, keys_by_row):
    """`_dropout_keep` draws the replayed mask whatever the tile shape and layout (query or key by row), ragged last
    tiles included (lengths that are no multiple of 4 or of a tile): the forward and backward kernels, whose tiles
    differ, draw one mask."""
    expected = replay_keep_mask(fixed_dropout_seed, 2, 3, 37, 45, 0.3)
    keep = kernel_keep_mask(fixed_dropout_seed, 2, 3, 37, 45, 0.3, block_m, block_n, keys_by_row)
    assert torch.equal(keep, expected)


def test_dropout_mask_keep_rate_and_streams(fixed_dropout_seed):
    """The kernels keep a fraction 1 - p of the scores (within four standard deviations), each head draws its own
    mask, and another seed draws another."""
    batch, heads, seq, dropout = 2, 3, 64, 0.3
    keep = kernel_keep_mask(fixed_dropout_seed, batch, heads, seq, seq, dropout, 64, 64)
    assert torch.equal(keep, replay_keep_mask(fixed_dropout_seed, batch, heads, seq, seq, dropout))
    draws = keep.numel()
    assert abs(keep.float().mean().item() - (1 - dropout)) < 4 * (dropout * (1 - dropout) / draws) ** 0.5
    by_head = keep.view(batch * heads, -1)
    assert all(not torch.equal(by_head[0], other) for other in by_head[1:])
    other_seed = kernel_keep_mask(fixed_dropout_seed + 1, batch, heads, seq, seq, dropout, 64, 64)
    assert (keep != other_seed).float().mean() > 0.3


def test_dropout_bounds_no_length():
    """Dropout takes the kernels at any length: the mask's counter holds a query and a key group, not a score's index
    within its head (calls of 2^31 scores a head or more once went to SDPA)."""
    q, k, v = (torch.empty(1, 1, 2**16, 16, device="meta") for _ in range(3))
    assert A.kernel_refusal(q, k, v, None, 0.1) is None


def test_dropout_is_reproducible_and_zero_changes_nothing(poison):
    """The same torch seed gives the same output and gradients; another seed another; p = 0 is the kernel without
    dropout, to the bit."""
    q, k, v = inputs(2, 2, 30, 30, 16, torch.float32, seed=10)
    mask = padding_mask(2, 30, (30, 18))

    def run(dropout, torch_seed=0, **kwargs):
        torch.manual_seed(torch_seed)
        out, _ = A.fat5_attention(Module(), q, k, v, mask, scaling=0.5, dropout=dropout, **kwargs)
        return [out, *torch.autograd.grad(out.square().sum(), [q, k, v])]

    first, again, other = run(0.1), run(0.1), run(0.1, torch_seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    out, _ = A.fat5_attention(Module(), q, k, v, mask, scaling=0.5)
    without = [out, *torch.autograd.grad(out.square().sum(), [q, k, v])]
    assert all(torch.equal(a, b) for a, b in zip(run(0.0), without))


def packed_segments(lengths_by_row, seq):
    """(rows, seq) segment ids: each row's examples of the given lengths in turn, ids from 1, padding (0) last."""
    segments = torch.zeros(len(lengths_by_row), seq, dtype=torch.int32)
    for row, lengths in enumerate(lengths_by_row):
        start = 0
        for index, length in enumerate(lengths):
            segments[row, start : start + length] = index + 1
            start += length
    return segments.to(DEVICE)


def same_segment(query_segments, key_segments):
    return (query_segments[:, None, :, None] == key_segments[:, None, None, :]) & (key_segments[:, None, None, :] != 0)


@pytest.mark.parametrize(
    "query_lengths,key_lengths,causal,bias_kind",
    [
        # Examples that start and end inside tiles, one wider than max_distance, padding in a row's last tiles.
        ([[20, 30, 15], [70]], None, False, "t5"),
        ([[5, 40, 3, 10], [33, 33]], None, True, "t5"),
        ([[12, 50], [3, 3, 60]], None, False, "alibi"),
        # Cross-attention: each decoder example sees its own encoder example.
        ([[9, 14, 6], [30]], [[20, 30, 15], [70]], False, "none"),
    ],
    ids=["encoder-t5", "decoder-t5", "encoder-alibi", "cross-attention"],
)
def test_packed_rows_attend_within_their_example(poison, kv_layout, query_lengths, key_lengths, causal, bias_kind):
    """Packed rows: output and every gradient equal an fp64 computation that masks every other example's keys and
    padding, where the kernels skip the tiles outside an example (padding queries give zeros)."""
    seq_m = 70 if key_lengths is None else 40
    seq_n = 70
    heads = 2
    q, k, v = inputs(2, heads, seq_m, seq_n, 16, torch.float32, seed=11)
    query_segments = packed_segments(query_lengths, seq_m)
    key_segments = query_segments if key_lengths is None else packed_segments(key_lengths, seq_n)
    kernel_kwargs = {"is_causal": causal, "query_segment_ids": query_segments, "key_segment_ids": key_segments}
    bias_leaf, reference_bias = None, None
    if bias_kind == "t5":
        num_buckets, max_distance = 8, 12
        bias_leaf = torch.randn(num_buckets, heads, device=DEVICE).requires_grad_()
        kernel_kwargs.update(t5_bias_kwargs(bias_leaf, num_buckets, max_distance, bidirectional=not causal))

        def reference_bias(table64):
            return t5_dense_bias(table64, seq_m, seq_n, 0, not causal, num_buckets, max_distance)

    elif bias_kind == "alibi":
        slopes = torch.tensor(alibi_slopes(heads), device=DEVICE)
        kernel_kwargs["alibi_slopes"] = slopes
        relative = torch.arange(seq_n, device=DEVICE)[None, :] - torch.arange(seq_m, device=DEVICE)[:, None]
        reference_bias = lambda _: -slopes[:, None, None].double() * relative.abs()  # noqa: E731
    reference_kwargs = {"causal": causal, "blocked": ~same_segment(query_segments, key_segments)}
    actual, expected = run_both(kernel_kwargs, reference_kwargs, q, k, v, 0.5, bias_leaf, reference_bias)
    check(actual, expected, 1e-5)


def test_packed_rows_equal_their_examples_one_by_one(poison):
    """Each example of a packed row gives, with the T5 bias, the output and gradients it gives alone: its relative
    positions are the same in the row."""
    lengths, heads, num_buckets, max_distance = [20, 33, 9], 2, 8, 12
    q, k, v = inputs(1, heads, 64, 64, 16, torch.float32, seed=12)
    table = torch.randn(num_buckets, heads, device=DEVICE).requires_grad_()
    bias_kwargs = t5_bias_kwargs(table, num_buckets, max_distance)
    segments = packed_segments([lengths], 64)
    packed, _ = A.fat5_attention(
        Module(), q, k, v, None, scaling=1.0, query_segment_ids=segments, key_segment_ids=segments, **bias_kwargs
    )
    grad = torch.randn_like(packed)
    packed_grads = torch.autograd.grad(packed, [q, k, v, table], grad)
    start, table_grad = 0, torch.zeros_like(table)
    for length in lengths:
        part = slice(start, start + length)
        pieces = [t[:, :, part].detach().requires_grad_() for t in (q, k, v)]
        alone, _ = A.fat5_attention(Module(), *pieces, None, scaling=1.0, **bias_kwargs)
        alone_grads = torch.autograd.grad(alone, [*pieces, table], grad[:, part])
        torch.testing.assert_close(packed[:, part], alone, rtol=1e-4, atol=1e-5)
        for packed_grad, alone_grad in zip(packed_grads[:3], alone_grads[:3]):
            torch.testing.assert_close(packed_grad[:, :, part], alone_grad, rtol=1e-4, atol=1e-5)
        table_grad += alone_grads[3]
        start += length
    torch.testing.assert_close(packed_grads[3], table_grad, rtol=1e-4, atol=1e-5)


def test_segment_starts():
    segments = packed_segments([[2, 3], [4], []], 6)
    starts = A.segment_starts(segments, 6)
    assert starts.shape == (3, 8)
    assert starts[0, 1:4].tolist() == [0, 2, 5] and starts[1, 1:3].tolist() == [0, 4] and starts[2, 1].item() == 0


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 and the tiles of D = 64 and 128 compile on a GPU only")
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_packed_dropout_at_model_head_dims_in_bf16(fixed_dropout_seed, head_dim, causal):
    """The kernels that train T5 and mT5 (D = 64) and the large FAT5 models (D = 128): packed bf16 rows with the T5
    bias and dropout give the output and gradients of an fp64 computation that replays their mask, within bf16
    error (a mask drawn differently in a backward kernel costs tens of percent)."""
    heads, seq, num_buckets, max_distance, dropout = 2, 512, 32, 128, 0.1
    q, k, v = inputs(2, heads, seq, seq, head_dim, torch.bfloat16, seed=13)
    table = torch.randn(num_buckets, heads, device=DEVICE).requires_grad_()
    segments = packed_segments([[100, 250, 150], [300, 64]], seq)
    kernel_kwargs = {
        **t5_bias_kwargs(table, num_buckets, max_distance, bidirectional=not causal),
        "is_causal": causal, "query_segment_ids": segments, "key_segment_ids": segments, "dropout": dropout,
    }  # fmt: skip
    keep = replay_keep_mask(fixed_dropout_seed, 2, heads, seq, seq, dropout)
    blocked = ~same_segment(segments, segments)
    reference_kwargs = {"causal": causal, "blocked": blocked, "dropout_keep": keep, "dropout": dropout}

    def reference_bias(table64):
        return t5_dense_bias(table64, seq, seq, 0, not causal, num_buckets, max_distance)

    actual, expected = run_both(kernel_kwargs, reference_kwargs, q, k, v, head_dim**-0.5, table, reference_bias)
    check(actual, expected, 2e-2)
