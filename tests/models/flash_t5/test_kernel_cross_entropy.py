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
"""Triton cross-entropy (label smoothing, z-loss, ignore_index) and its fusion with the LM-head matmul, against fp64
references: losses, gradients of logits, hidden states and weight, dtypes, ragged shapes, all-ignored batches.

Runs on CPU through Triton's interpreter (set below when there is no CUDA), on the GPU as is. Under the interpreter the
kernel walks the vocabulary in blocks of 512, so V = 1000 covers the loop and its ragged end.
"""

import os

import pytest
import torch
import torch.nn.functional as F


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="the cross-entropy kernel needs Triton")

from fat5.models.flash_t5.kernels import cross_entropy as K  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IGNORE = -100


def reference_loss(logits, labels, ignore_index=IGNORE, label_smoothing=0.0, z_loss=0.0, reduction="mean"):
    """fp64: F.cross_entropy with label smoothing, plus z_loss * lse**2 on the non-ignored rows; the mean divides by
    the number of non-ignored rows (0 when there is none)."""
    x = logits.double().reshape(-1, logits.shape[-1])
    y = labels.reshape(-1)
    per_row = F.cross_entropy(x, y, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none")
    valid = y != ignore_index
    per_row = per_row + z_loss * torch.logsumexp(x, -1).square() * valid
    if reduction == "none":
        return per_row.view(labels.shape)
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / valid.sum().clamp(min=1)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def leaf(t):
    return t.detach().clone().requires_grad_()


def make_labels(n, vocab, ignore_every=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[::ignore_every] = IGNORE
    return labels.to(DEVICE)


def test_reference_matches_torch_without_z_loss():
    """The fp64 reference is F.cross_entropy itself when z_loss is 0 (and some row is labelled)."""
    logits = torch.randn(9, 50, dtype=torch.float64)
    labels = make_labels(9, 50).cpu()
    want = F.cross_entropy(logits, labels, ignore_index=IGNORE, label_smoothing=0.2)
    torch.testing.assert_close(reference_loss(logits, labels, label_smoothing=0.2), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("label_smoothing,z_loss", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-2), (0.2, 1e-3)])
@pytest.mark.parametrize("n_rows,vocab", [(37, 1000), (13, 300)])
def test_cross_entropy(poison, n_rows, vocab, label_smoothing, z_loss, dtype):
    torch.manual_seed(n_rows + vocab)
    logits = (4 * torch.randn(n_rows, vocab, device=DEVICE)).to(dtype)
    labels = make_labels(n_rows, vocab, seed=vocab)
    xk = leaf(logits)
    loss = K.cross_entropy(xk, labels, IGNORE, label_smoothing, z_loss)
    assert loss.dtype == torch.float32 and loss.shape == ()
    (3 * loss).backward()
    xr = leaf(logits.double())
    want = reference_loss(xr, labels, IGNORE, label_smoothing, z_loss)
    (3 * want).backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)
    assert xk.grad.dtype == dtype and torch.isfinite(xk.grad).all()
    assert rel(xk.grad, xr.grad) < (1e-5 if dtype == torch.float32 else 1e-2)
    ignored = labels == IGNORE
    assert torch.equal(xk.grad[ignored], torch.zeros_like(xk.grad[ignored]))


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_reductions_and_leading_dims(poison, reduction):
    torch.manual_seed(7)
    logits = torch.randn(2, 9, 700, device=DEVICE)
    labels = make_labels(18, 700, ignore_every=4).view(2, 9)
    xk = leaf(logits)
    loss = K.cross_entropy(xk, labels, IGNORE, 0.1, 1e-3, reduction=reduction)
    xr = leaf(logits.double())
    want = reference_loss(xr, labels, IGNORE, 0.1, 1e-3, reduction=reduction)
    assert loss.shape == want.shape
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)
    g = torch.randn(loss.shape, device=DEVICE)
    loss.backward(g)
    want.backward(g.double())
    assert rel(xk.grad, xr.grad) < 1e-5


def test_all_ignored_is_zero_with_zero_grads(poison):
    """Documented choice: a batch with no labelled token has loss 0 and zero gradients (PyTorch's mean gives nan)."""
    logits = leaf(torch.randn(6, 300, device=DEVICE))
    labels = torch.full((6,), IGNORE, device=DEVICE)
    loss = K.cross_entropy(logits, labels, IGNORE, 0.1, 1e-2)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))

    hidden, weight = leaf(torch.randn(6, 40, device=DEVICE)), leaf(torch.randn(300, 40, device=DEVICE))
    loss = K.linear_cross_entropy(hidden, weight, labels, IGNORE, 0.1, 1e-2, chunk_size=4)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_custom_ignore_index():
    logits = torch.randn(10, 80, device=DEVICE)
    labels = make_labels(10, 80)
    labels[labels == IGNORE] = 3  # a real class now
    labels[1] = 0  # the ignored one
    torch.testing.assert_close(
        K.cross_entropy(logits, labels, ignore_index=0).double(), reference_loss(logits, labels, ignore_index=0)
    )


def unfused_in_dtype(hidden, weight, labels, scale, label_smoothing, z_loss):
    """What the model does without the fusion: logits in the input dtype, the loss in fp32."""
    logits = (hidden * scale) @ weight.t()
    return reference_loss(logits.float(), labels, IGNORE, label_smoothing, z_loss).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "n_tokens,dim,vocab,chunk_size",
    [
        (45, 72, 700, 16),  # several chunks, the last one short
        (30, 40, 1000, 128),  # one chunk larger than the input
        (64, 24, 333, None),  # default chunking
    ],
)
def test_linear_cross_entropy(poison, n_tokens, dim, vocab, chunk_size, dtype):
    torch.manual_seed(n_tokens * dim)
    scale = dim**-0.5
    hidden = torch.randn(n_tokens, dim, device=DEVICE).to(dtype)
    weight = (torch.randn(vocab, dim, device=DEVICE) * 2).to(dtype)
    labels = make_labels(n_tokens, vocab, ignore_every=4, seed=vocab)
    hk, wk = leaf(hidden), leaf(weight)
    loss = K.linear_cross_entropy(hk, wk, labels, IGNORE, 0.1, 1e-3, scale=scale, chunk_size=chunk_size)
    assert loss.dtype == torch.float32 and loss.shape == ()
    (2.5 * loss).backward()

    hr, wr = leaf(hidden.double()), leaf(weight.double())
    want = reference_loss((hr * scale) @ wr.t(), labels, IGNORE, 0.1, 1e-3)
    (2.5 * want).backward()
    ht, wt = leaf(hidden), leaf(weight)
    unfused = unfused_in_dtype(ht, wt, labels, scale, 0.1, 1e-3)
    (2.5 * unfused).backward()

    assert hk.grad.dtype == dtype and wk.grad.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)
        assert rel(hk.grad, hr.grad) < 1e-5 and rel(wk.grad, wr.grad) < 1e-5
    else:
        # bf16 logits: as close to fp64 as the unfused bf16 computation is (within a factor 2), and below 2e-2.
        assert abs(loss.item() - want.item()) <= 2 * abs(unfused.item() - want.item()) + 1e-3
        for got, same_dtype, exact in [(hk.grad, ht.grad, hr.grad), (wk.grad, wt.grad, wr.grad)]:
            assert rel(got, exact) < 2e-2
            assert rel(got, exact) <= 2 * rel(same_dtype, exact) + 1e-3


def test_linear_cross_entropy_frozen_weight_sum_and_no_grad(poison):
    torch.manual_seed(11)
    hidden = torch.randn(20, 32, device=DEVICE)
    weight = torch.randn(500, 32, device=DEVICE)
    labels = make_labels(20, 500)
    hk = leaf(hidden)
    loss = K.linear_cross_entropy(hk, weight, labels, reduction="sum", chunk_size=8)
    loss.backward()
    hr = leaf(hidden.double())
    want = reference_loss(hr @ weight.double().t(), labels, reduction="sum")
    want.backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-4)
    assert weight.grad is None and rel(hk.grad, hr.grad) < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(
            K.linear_cross_entropy(hidden, weight, labels).double(), reference_loss(hidden @ weight.t(), labels)
        )


def test_linear_cross_entropy_leading_dims_and_autocast():
    torch.manual_seed(12)
    hidden = leaf(torch.randn(2, 7, 48, device=DEVICE))
    weight = leaf(torch.randn(400, 48, device=DEVICE))
    labels = make_labels(14, 400).view(2, 7)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = K.linear_cross_entropy(hidden, weight, labels, chunk_size=5)
    loss.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    hr, wr = leaf(hidden.double()), leaf(weight.double())
    want = reference_loss(hr @ wr.t(), labels)
    want.backward()
    assert abs(loss.item() - want.item()) < 2e-2
    assert rel(hidden.grad, hr.grad) < 2e-2 and rel(weight.grad, wr.grad) < 2e-2


def test_torch_compile_fullgraph():
    torch.manual_seed(13)
    hidden = torch.randn(24, 40, device=DEVICE)
    weight = torch.randn(300, 40, device=DEVICE)
    labels = make_labels(24, 300)

    def step(h, w):
        logits_loss = K.cross_entropy(h @ w.t(), labels, IGNORE, 0.1, 1e-3)
        fused_loss = K.linear_cross_entropy(h, w, labels, IGNORE, 0.1, 1e-3, scale=0.5, chunk_size=10)
        return logits_loss + fused_loss

    e_h, e_w, c_h, c_w = leaf(hidden), leaf(weight), leaf(hidden), leaf(weight)
    want = step(e_h, e_w)
    want.backward()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(c_h, c_w)
    got.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(c_h.grad, e_h.grad)
    torch.testing.assert_close(c_w.grad, e_w.grad)


def test_opcheck():
    logits = leaf(torch.randn(11, 300, device=DEVICE))
    labels = make_labels(11, 300)
    torch.library.opcheck(torch.ops.fat5.cross_entropy_fwd, (logits, labels, IGNORE, 0.1, 1e-3))
    hidden, weight = leaf(torch.randn(11, 24, device=DEVICE)), leaf(torch.randn(300, 24, device=DEVICE))
    torch.library.opcheck(
        torch.ops.fat5.linear_cross_entropy_fwd,
        (hidden, weight, labels, IGNORE, 0.1, 1e-3, 0.5, False, 4, True, True),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )
