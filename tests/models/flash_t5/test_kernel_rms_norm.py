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
"""Triton T5 RMSNorm (and its residual-add fusion) against fp64 references: outputs, every gradient, dtypes.

Runs on CPU through Triton's interpreter (set below when there is no CUDA), on the GPU as is.
"""

import os

import pytest
import torch


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="the RMSNorm kernel needs Triton")

from transformers.models.t5.modeling_t5 import T5LayerNorm  # noqa: E402

from fat5.models.flash_t5.kernels import rms_norm as K  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-6


def eager(x, weight, eps=EPS):
    """transformers' T5LayerNorm formula, in whatever dtype it is given (fp64 for references)."""
    variance = x.to(torch.float32 if x.dtype != torch.float64 else torch.float64).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        x = x.to(weight.dtype)
    return weight * x


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def leaf(t):
    return t.detach().clone().requires_grad_()


def inputs(shape, x_dtype, w_dtype, scale=3.0):
    x = (scale * torch.randn(shape, device=DEVICE) + 0.5).to(x_dtype)
    w = (1.0 + 0.3 * torch.randn(shape[-1], device=DEVICE)).to(w_dtype)
    return x, w


# (x dtype, weight dtype): fp32 training, bf16 weights, and autocast (bf16 activations, fp32 weights).
DTYPES = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float16),
]
# Hidden sizes that are not powers of two; row counts that are not multiples of the kernels' row blocks; a shape whose
# backward runs several row blocks per program (300 x 24: 5 blocks of 64 rows over 3 programs).
SHAPES = [(3, 37, 200), (300, 24), (7, 1000), (1, 1, 130)]


def tolerance(dtype):
    return 2e-5 if dtype == torch.float32 else 1.5e-2


@pytest.mark.parametrize("x_dtype,w_dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_forward_backward(poison, shape, x_dtype, w_dtype):
    torch.manual_seed(sum(shape))
    x, w = inputs(shape, x_dtype, w_dtype)
    xk, wk = leaf(x), leaf(w)
    y = K.rms_norm(xk, wk, EPS)
    # Output dtype and values as T5LayerNorm (same-dtype eager run), values against fp64.
    y_eager = eager(x, w)
    assert y.dtype == y_eager.dtype == K.rms_norm_output_dtype(x_dtype, w_dtype)
    assert y.shape == x.shape
    dy = torch.randn(y.shape, device=DEVICE).to(y.dtype)
    y.backward(dy)

    xr, wr = leaf(x.double()), leaf(w.double())
    yr = eager(xr, wr)
    yr.backward(dy.double())
    tol = tolerance(x_dtype if w_dtype == torch.float32 and x_dtype == torch.float32 else torch.bfloat16)
    assert torch.isfinite(y).all()
    assert rel(y, yr) < (2e-6 if y.dtype == torch.float32 else tol)
    assert rel(y, yr) <= 2 * rel(y_eager, yr) + 2e-6
    assert xk.grad.dtype == x_dtype and wk.grad.dtype == w_dtype
    assert torch.isfinite(xk.grad).all() and torch.isfinite(wk.grad).all()
    assert rel(xk.grad, xr.grad) < tol
    assert rel(wk.grad, wr.grad) < tol


@pytest.mark.parametrize(
    "x_dtype,r_dtype,w_dtype",
    [
        (torch.float32, torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32, torch.float32),  # autocast: bf16 sublayer output, fp32 residual stream
    ],
)
@pytest.mark.parametrize("shape", [(2, 45, 96), (300, 24)])
def test_add_rms_norm(poison, shape, x_dtype, r_dtype, w_dtype):
    torch.manual_seed(1 + sum(shape))
    x, w = inputs(shape, x_dtype, w_dtype)
    r = (2 * torch.randn(shape, device=DEVICE)).to(r_dtype)
    xk, rk, wk = leaf(x), leaf(r), leaf(w)
    y, h = K.add_rms_norm(xk, rk, wk, EPS)
    h_eager = r + x
    assert h.dtype == h_eager.dtype and y.dtype == eager(h_eager, w).dtype
    if DEVICE == "cuda":
        assert torch.equal(h, h_eager)  # the sum is rounded to its dtype exactly as eager PyTorch does
    else:
        # Triton's interpreter truncates fp32 -> bf16 instead of rounding to nearest: one ulp apart at most.
        torch.testing.assert_close(h, h_eager, rtol=2**-7, atol=0)
    dy = torch.randn(y.shape, device=DEVICE).to(y.dtype)
    dh = torch.randn(h.shape, device=DEVICE).to(h.dtype)
    torch.autograd.backward([y, h], [dy, dh])

    xr, rr, wr = leaf(x.double()), leaf(r.double()), leaf(w.double())
    hr = rr + xr
    yr = eager(hr, wr)
    torch.autograd.backward([yr, hr], [dy.double(), dh.double()])
    tol = 2e-5 if x_dtype == r_dtype == torch.float32 else 1.5e-2
    assert rel(y, yr) < tol
    assert xk.grad.dtype == x_dtype and rk.grad.dtype == r_dtype and wk.grad.dtype == w_dtype
    for got, want in [(xk.grad, xr.grad), (rk.grad, rr.grad), (wk.grad, wr.grad)]:
        assert torch.isfinite(got).all()
        assert rel(got, want) < tol


def test_weight_without_grad_and_empty_input(poison):
    x, w = inputs((5, 40), torch.float32, torch.float32)
    xk = leaf(x)
    K.rms_norm(xk, w, EPS).sum().backward()
    assert w.grad is None and torch.isfinite(xk.grad).all()
    empty = torch.randn(0, 40, device=DEVICE, requires_grad=True)
    wk = leaf(w)
    out = K.rms_norm(empty, wk, EPS)
    assert out.shape == (0, 40)
    out.sum().backward()
    assert torch.equal(wk.grad, torch.zeros_like(w))


def test_module_is_a_drop_in_for_t5_layer_norm():
    torch.manual_seed(3)
    ref = T5LayerNorm(96, eps=1e-5).to(DEVICE)
    with torch.no_grad():
        ref.weight.mul_(1 + 0.2 * torch.randn(96, device=DEVICE))
    fused = K.FusedT5RMSNorm(96, eps=1e-5).to(DEVICE)
    assert fused.state_dict().keys() == ref.state_dict().keys()
    fused.load_state_dict(ref.state_dict())
    assert fused.variance_epsilon == ref.variance_epsilon == 1e-5
    for w_dtype in (torch.float32, torch.bfloat16):
        ref.to(w_dtype)
        fused.to(w_dtype)
        for x_dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(2, 11, 96, device=DEVICE).to(x_dtype)
            want, got = ref(x), fused(x)
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=1e-2 if want.dtype == torch.bfloat16 else 1e-5, atol=1e-2)
    # The residual variant: (norm(residual + x), residual + x).
    x, r = torch.randn(3, 96, device=DEVICE), torch.randn(3, 96, device=DEVICE)
    ref.float()
    fused.float()
    y, h = fused.forward_with_residual(x, r)
    torch.testing.assert_close(h, r + x)
    torch.testing.assert_close(y, ref(r + x))
    # fp64 is not a kernel dtype: the module falls back to the eager formula.
    ref.double()
    fused.double()
    x = torch.randn(4, 96, device=DEVICE, dtype=torch.float64)
    torch.testing.assert_close(fused(x), ref(x))


def test_torch_compile_fullgraph():
    torch.manual_seed(4)

    def block(x, r, w1, w2):
        y, h = K.add_rms_norm(x, r, w1, EPS)
        return (K.rms_norm(y, w2, EPS) * h).sum()

    args = [torch.randn(6, 72, device=DEVICE) for _ in range(2)] + [1 + 0.1 * torch.randn(72, device=DEVICE)] * 2
    eager_args = [leaf(a) for a in args]
    compiled_args = [leaf(a) for a in args]
    block(*eager_args).backward()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    compiled(*compiled_args).backward()
    for a, b in zip(eager_args, compiled_args):
        torch.testing.assert_close(a.grad, b.grad)


def test_opcheck():
    x, w = inputs((9, 40), torch.float32, torch.float32)
    r = torch.randn(9, 40, device=DEVICE)
    torch.library.opcheck(torch.ops.fat5.rms_norm_fwd, (leaf(x), leaf(w), EPS))
    torch.library.opcheck(torch.ops.fat5.add_rms_norm_fwd, (leaf(x), leaf(r), leaf(w), EPS))
