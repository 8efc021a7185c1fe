# Copyright 2025 The FAT5 authors. Licensed under the Apache License, Version 2.0.
"""T5-style RMSNorm in Triton: forward and backward, alone or fused with the residual add.

    y = weight * (x * rsqrt(mean(x**2, -1) + eps))

No mean subtraction, no bias; the statistics are always computed in fp32. The output dtype follows transformers'
`T5LayerNorm` exactly: the weight's dtype when the weight is fp16/bf16, else `promote(x.dtype, float32,
weight.dtype)` (so a bf16 input with an fp32 weight, the autocast case, gives an fp32 output). Inside the kernel
everything is fp32 and the result is rounded once, where `T5LayerNorm` rounds the normalised input to the half
weight's dtype before the product: the two differ by at most one rounding of the output dtype.

`add_rms_norm(x, residual, weight, eps)` returns `(rms_norm(residual + x), residual + x)` in one pass over the data;
the sum is rounded to its dtype (`promote(x.dtype, residual.dtype)`) before it is normalised, as in eager PyTorch.

Backward: dx in one pass per row; dweight is reduced in two stages (each program of a persistent grid accumulates the
rows it owns in fp32 registers and writes one partial row, then the partial rows are summed).

Both ops (namespace `fat5`, registered autograd) are `kernel_op`s: `torch.library.triton_op`s on a GPU, whose kernels
a compiled graph launches with no Python per call, opaque custom ops under the CPU interpreter; either way they work
under `torch.compile(fullgraph=True)`. `FusedT5RMSNorm` is a drop-in replacement for `T5LayerNorm` /
`FlashT5LayerNorm` (same `weight` parameter, same `variance_epsilon`, same state dict); it uses the kernel on CUDA
(or under `TRITON_INTERPRET=1`) and the eager formula elsewhere.

This module imports Triton at import time: import it only where Triton exists.
"""

import torch
import triton
import triton.language as tl
from torch import nn
from torch.library import wrap_triton

from .utils import fix_interpreter_loop_bounds, interpreting, kernel_op


_HALF_DTYPES = (torch.float16, torch.bfloat16)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HIDDEN = 65536


def rms_norm_output_dtype(x_dtype: torch.dtype, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype `T5LayerNorm` returns for an input of `x_dtype` and a weight of `weight_dtype`."""
    if weight_dtype in _HALF_DTYPES:
        return weight_dtype
    return torch.promote_types(torch.promote_types(x_dtype, torch.float32), weight_dtype)


fix_interpreter_loop_bounds()


def _num_programs_cap(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _tile(n_cols: int, elements: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): whole rows per tile, about `elements` elements per tile."""
    block_n = triton.next_power_of_2(n_cols)
    block_m = max(1, min(64, elements // block_n))
    tile = block_m * block_n
    num_warps = 16 if tile >= 16384 else 8 if tile >= 4096 else 4
    return block_m, block_n, num_warps


@triton.jit
def _rms_norm_fwd_kernel(
    X,
    R,
    W,
    Y,
    H,
    RSTD,
    n_rows,
    n_cols,
    stride_x,
    stride_r,
    stride_y,
    stride_h,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # torch.compile passes Python floats as fp64 scalars: keep the statistics in fp32.
    eps = tl.cast(eps, tl.float32)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    rows = rows.to(tl.int64)

    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = (x + r).to(H.dtype.element_ty)
        tl.store(H + rows[:, None] * stride_h + cols[None, :], h, mask=mask)
        x = h.to(tl.float32)

    mean_square = tl.sum(x * x, axis=1) / n_cols
    rstd = 1.0 / tl.sqrt(mean_square + eps)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _rms_norm_bwd_kernel(
    DY,
    X,
    W,
    RSTD,
    DRES,
    DX,
    DW_PARTIAL,
    n_rows,
    n_cols,
    rows_per_program,
    stride_dy,
    stride_x,
    stride_dres,
    stride_dx,
    HAS_DRES: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first_row = pid * rows_per_program
    # rows_per_program is a multiple of BLOCK_M: the row ranges of the programs are disjoint.
    for start in range(0, rows_per_program, BLOCK_M):
        rows = first_row + start + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        rows = rows.to(tl.int64)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        x_hat = x * rstd[:, None]
        wdy = w[None, :] * dy
        # d/dx of x * rstd(x): rstd * (g - x_hat * mean(g * x_hat)), with g = w * dy
        c = tl.sum(x_hat * wdy, axis=1) / n_cols
        dx = (wdy - x_hat * c[:, None]) * rstd[:, None]
        if HAS_DRES:
            dx += tl.load(DRES + rows[:, None] * stride_dres + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if COMPUTE_DW:
            dw_acc += dy * x_hat
    if COMPUTE_DW:
        tl.store(DW_PARTIAL + pid * n_cols + cols, tl.sum(dw_acc, axis=0), mask=col_ok)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """A 2-D (rows, hidden) view with unit stride along hidden (copies only when it must)."""
    t2 = t.reshape(-1, t.shape[-1])
    if t2.stride(-1) != 1:
        t2 = t2.contiguous()
    return t2


def _check(x: torch.Tensor, weight: torch.Tensor):
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 1:
        raise ValueError(f"rms_norm: hidden size of x {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
    if x.shape[-1] > _MAX_HIDDEN:
        raise ValueError(f"rms_norm: hidden size {x.shape[-1]} > {_MAX_HIDDEN} is not supported by the kernel")
    if x.dtype not in _KERNEL_DTYPES or weight.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"rms_norm kernel supports fp16/bf16/fp32, got x {x.dtype}, weight {weight.dtype}")


def _forward(x, residual, weight, eps):
    _check(x, weight)
    n_cols = x.shape[-1]
    x2 = _as_rows(x)
    n_rows = x2.shape[0]
    out_dtype = rms_norm_output_dtype(x.dtype, weight.dtype)
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    if residual is not None:
        h_dtype = torch.promote_types(x.dtype, residual.dtype)
        r2 = _as_rows(residual)
        h = torch.empty(x.shape, dtype=h_dtype, device=x.device)
    else:
        r2 = x2
        h = y  # unused
    if n_rows == 0:
        return y, h, rstd
    y2 = y.view(-1, n_cols)
    h2 = h.view(-1, n_cols)
    block_m, block_n, num_warps = _tile(n_cols, 4096)
    grid = (triton.cdiv(n_rows, block_m),)
    wrap_triton(_rms_norm_fwd_kernel)[grid](
        x2,
        r2,
        weight,
        y2,
        h2,
        rstd,
        n_rows,
        n_cols,
        x2.stride(0),
        r2.stride(0),
        y2.stride(0),
        h2.stride(0),
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return y, h, rstd


def _backward(dy, x, weight, rstd, dres, compute_dw):
    """dx (in x's dtype; plus `dres` when given) and dweight (in weight's dtype, or an empty tensor)."""
    n_cols = x.shape[-1]
    x2 = _as_rows(x)
    dy2 = _as_rows(dy)
    n_rows = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n_rows == 0:
        dw = torch.zeros_like(weight) if compute_dw else weight.new_empty(0)
        return dx, dw
    dx2 = dx.view(-1, n_cols)
    dres2 = _as_rows(dres) if dres is not None else dy2
    block_m, block_n, num_warps = _tile(n_cols, 2048)
    n_tiles = triton.cdiv(n_rows, block_m)
    n_programs = min(n_tiles, _num_programs_cap(x.device))
    rows_per_program = triton.cdiv(n_tiles, n_programs) * block_m
    n_programs = triton.cdiv(n_rows, rows_per_program)
    dw_partial = torch.empty((n_programs, n_cols), dtype=torch.float32, device=x.device) if compute_dw else rstd
    wrap_triton(_rms_norm_bwd_kernel)[(n_programs,)](
        dy2,
        x2,
        weight,
        rstd,
        dres2,
        dx2,
        dw_partial,
        n_rows,
        n_cols,
        rows_per_program,
        dy2.stride(0),
        x2.stride(0),
        dres2.stride(0),
        dx2.stride(0),
        HAS_DRES=dres is not None,
        COMPUTE_DW=compute_dw,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    dw = dw_partial.sum(0).to(weight.dtype) if compute_dw else weight.new_empty(0)
    return dx, dw


# ----------------------------------------------------------------------------------------------------------------------
# ops


def _rms_norm_fwd_fake(x, weight, eps):
    y = x.new_empty(x.shape, dtype=rms_norm_output_dtype(x.dtype, weight.dtype))
    return y, x.new_empty(x.shape[:-1], dtype=torch.float32)


@kernel_op("fat5::rms_norm_fwd", _rms_norm_fwd_fake)
def _rms_norm_fwd_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y, _, rstd = _forward(x, None, weight, eps)
    return y, rstd


def _add_rms_norm_fwd_fake(x, residual, weight, eps):
    y = x.new_empty(x.shape, dtype=rms_norm_output_dtype(x.dtype, weight.dtype))
    h = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype))
    return y, h, x.new_empty(x.shape[:-1], dtype=torch.float32)


@kernel_op("fat5::add_rms_norm_fwd", _add_rms_norm_fwd_fake)
def _add_rms_norm_fwd_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if x.shape != residual.shape:
        raise ValueError(f"add_rms_norm: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ in shape")
    return _forward(x, residual, weight, eps)


def _rms_norm_bwd_fake(dy, x, weight, rstd, dres, compute_dw):
    return x.new_empty(x.shape), (weight.new_empty(weight.shape) if compute_dw else weight.new_empty(0))


@kernel_op("fat5::rms_norm_bwd", _rms_norm_bwd_fake)
def _rms_norm_bwd_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    dres: torch.Tensor | None,
    compute_dw: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward(dy, x, weight, rstd, dres, compute_dw)


def _rms_norm_setup_context(ctx, inputs, output):
    x, weight, eps = inputs
    _, rstd = output
    ctx.save_for_backward(x, weight, rstd)


def _rms_norm_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    compute_dw = ctx.needs_input_grad[1]
    dx, dw = torch.ops.fat5.rms_norm_bwd(dy, x, weight, rstd, None, compute_dw)
    return dx, (dw if compute_dw else None), None


_rms_norm_fwd_op.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup_context)


def _add_rms_norm_setup_context(ctx, inputs, output):
    x, residual, weight, eps = inputs
    _, h, rstd = output
    ctx.save_for_backward(h, weight, rstd)
    ctx.dtypes = (x.dtype, residual.dtype)


def _add_rms_norm_backward(ctx, dy, dh, _drstd):
    h, weight, rstd = ctx.saved_tensors
    compute_dw = ctx.needs_input_grad[2]
    # dh is the gradient reaching the new residual stream directly; the kernel adds it to the one through the norm.
    dsum, dw = torch.ops.fat5.rms_norm_bwd(dy, h, weight, rstd, dh, compute_dw)
    x_dtype, residual_dtype = ctx.dtypes
    dx = dsum.to(x_dtype) if ctx.needs_input_grad[0] else None
    dresidual = dsum.to(residual_dtype) if ctx.needs_input_grad[1] else None
    return dx, dresidual, (dw if compute_dw else None), None


_add_rms_norm_fwd_op.register_autograd(_add_rms_norm_backward, setup_context=_add_rms_norm_setup_context)


# ----------------------------------------------------------------------------------------------------------------------
# public API


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """T5 RMSNorm of `x` (..., hidden) with `weight` (hidden,); dtype semantics of `T5LayerNorm`."""
    y, _ = torch.ops.fat5.rms_norm_fwd(x, weight, eps)
    return y


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(rms_norm(residual + x, weight, eps), residual + x)` in one pass; both differentiable."""
    y, h, _ = torch.ops.fat5.add_rms_norm_fwd(x, residual, weight, eps)
    return y, h


def _eager_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    if weight.dtype in _HALF_DTYPES:
        x = x.to(weight.dtype)
    return weight * x


class FusedT5RMSNorm(nn.Module):
    """Drop-in for `T5LayerNorm`: same constructor, `weight` parameter and `variance_epsilon`; Triton on CUDA.

    Swap it in place of a model's layer norms without touching the state dict, e.g.::

        fused = FusedT5RMSNorm(norm.weight.shape[0], eps=norm.variance_epsilon)
        fused.weight = norm.weight
        parent.layer_norm = fused

    Falls back to the eager formula on devices the kernel does not serve (CPU without `TRITON_INTERPRET=1`) and for
    dtypes it does not take (fp64).
    """

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def _use_kernel(self, hidden_states: torch.Tensor) -> bool:
        return (
            (hidden_states.device.type == "cuda" or interpreting())
            and hidden_states.dtype in _KERNEL_DTYPES
            and self.weight.dtype in _KERNEL_DTYPES
            and hidden_states.shape[-1] <= _MAX_HIDDEN
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self._use_kernel(hidden_states):
            return rms_norm(hidden_states, self.weight, self.variance_epsilon)
        return _eager_rms_norm(hidden_states, self.weight, self.variance_epsilon)

    def forward_with_residual(
        self, hidden_states: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(self(residual + hidden_states), residual + hidden_states)`, fused when the kernel applies."""
        if self._use_kernel(hidden_states) and residual.dtype in _KERNEL_DTYPES:
            return add_rms_norm(hidden_states, residual, self.weight, self.variance_epsilon)
        new_residual = residual + hidden_states
        return _eager_rms_norm(new_residual, self.weight, self.variance_epsilon), new_residual

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"


__all__ = ["FusedT5RMSNorm", "add_rms_norm", "rms_norm", "rms_norm_output_dtype"]
