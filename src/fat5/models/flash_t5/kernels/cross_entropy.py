# Copyright 2025 The FAT5 authors. Licensed under the Apache License, Version 2.0.
"""Cross-entropy with label smoothing and z-loss in Triton, alone or fused with the LM-head matmul.

The loss, for rows i whose label y_i is not `ignore_index` (N of them), logits x_i of width V, in fp32 whatever the
input dtype:

    lse_i  = logsumexp(x_i)
    loss_i = (1 - ls) * (lse_i - x_i[y_i]) + ls * (lse_i - mean_j x_i[j]) + z * lse_i**2
    loss   = sum_i loss_i / N                      (reduction="mean"; "sum": no division; "none": loss_i)

that is `F.cross_entropy(x.float(), y, ignore_index=ignore_index, label_smoothing=ls)` plus the PaLM / T5X z-loss
`z * mean(lse**2)` over the same rows, as the reference FAT5 implementation's PyTorch path computes it
(`compute_zloss` on the non-ignored rows, added to the loss). Ignored rows contribute nothing and get zero gradient.
When every row is ignored, the "mean" loss is 0 with zero gradients (PyTorch gives nan): a batch with no target
must not poison a training run.

Gradient of loss_i with respect to x_i: softmax(x_i) * (1 + 2 z lse_i) - ls / V - (1 - ls) * onehot(y_i).

- `cross_entropy(logits, labels, ...)`: a `kernel_op` (a `torch.library.triton_op` on a GPU, whose kernel a compiled
  graph launches with no Python per call; forward: one read of the logits, online logsumexp over vocabulary blocks;
  backward: one read, one write) with autograd.
- `linear_cross_entropy(hidden, weight, labels, ..., scale, chunk_size)`: the loss of `(hidden * scale) @ weight.T`
  without the (tokens, vocab) logits: token chunks, each one's logits made by a matmul in the input dtype, turned into
  their gradient in place by the kernel, then multiplied back into dhidden and dweight at once. The gradients are
  computed during the forward (for d loss = 1) and scaled by the incoming gradient in the backward.

Labels outside [0, V) other than `ignore_index` are not checked (the label logit reads as 0).

This module imports Triton at import time: import it only where Triton exists.
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .utils import fix_interpreter_loop_bounds, interpreting, kernel_op


fix_interpreter_loop_bounds()


_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _block_v(n_cols: int) -> tuple[int, int]:
    # Small blocks under the interpreter so that CPU tests cover the loop over vocabulary blocks and its ragged end.
    cap = 512 if interpreting() else 8192
    block = min(triton.next_power_of_2(n_cols), cap)
    return block, (16 if block >= 8192 else 8 if block >= 2048 else 4)


@triton.jit
def _cross_entropy_kernel(
    LOGITS,
    stride_logits,
    LABELS,
    LOSS,
    LSE,
    DLOSS,
    stride_dloss,
    GRAD,
    stride_grad,
    n_cols,
    ignore_index,
    label_smoothing,
    z_loss,
    COMPUTE_LOSS: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One program per row. COMPUTE_LOSS: logsumexp and loss of the row into LSE and LOSS. WRITE_GRAD: the gradient
    of the row, times DLOSS[row] (stride 0: one scalar for all rows), into GRAD (which may be LOGITS itself)."""
    # torch.compile passes Python floats as fp64 scalars: keep the loss and its gradient in fp32.
    label_smoothing = tl.cast(label_smoothing, tl.float32)
    z_loss = tl.cast(z_loss, tl.float32)
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(LABELS + row).to(tl.int64)
    valid = label != ignore_index
    row_logits = LOGITS + row * stride_logits
    cols = tl.arange(0, BLOCK_V)

    if COMPUTE_LOSS:
        m = tl.full([], float("-inf"), tl.float32)
        s = tl.full([], 0.0, tl.float32)
        total = tl.full([], 0.0, tl.float32)
        for start in range(0, n_cols, BLOCK_V):
            offs = start + cols
            ok = offs < n_cols
            x = tl.load(row_logits + offs, mask=ok, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            total += tl.sum(tl.where(ok, x, 0.0), axis=0)
            m = m_new
        lse = m + tl.log(s)
        in_range = valid & (label >= 0) & (label < n_cols)
        x_label = tl.load(row_logits + tl.where(in_range, label, 0), mask=in_range, other=0.0).to(tl.float32)
        loss = lse - (1.0 - label_smoothing) * x_label - label_smoothing * (total / n_cols) + z_loss * lse * lse
        tl.store(LOSS + row, tl.where(valid, loss, 0.0))
        tl.store(LSE + row, lse)
    else:
        lse = tl.load(LSE + row)

    if WRITE_GRAD:
        dloss = tl.load(DLOSS + row * stride_dloss).to(tl.float32)
        dloss = tl.where(valid, dloss, 0.0)
        p_scale = dloss * (1.0 + 2.0 * z_loss * lse)
        uniform = dloss * label_smoothing / n_cols
        on_label = dloss * (1.0 - label_smoothing)
        row_grad = GRAD + row * stride_grad
        for start in range(0, n_cols, BLOCK_V):
            offs = start + cols
            ok = offs < n_cols
            x = tl.load(row_logits + offs, mask=ok, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) * p_scale - uniform - tl.where(offs == label, on_label, 0.0)
            tl.store(row_grad + offs, g.to(GRAD.dtype.element_ty), mask=ok)


def _launch(logits, labels, loss, lse, dloss, grad, ignore_index, label_smoothing, z_loss, compute_loss, write_grad):
    n_rows, n_cols = logits.shape
    if n_rows == 0:
        return
    block_v, num_warps = _block_v(n_cols)
    wrap_triton(_cross_entropy_kernel)[(n_rows,)](
        logits,
        logits.stride(0),
        labels,
        loss,
        lse,
        dloss,
        dloss.stride(0) if dloss.dim() > 0 else 0,
        grad,
        grad.stride(0),
        n_cols,
        ignore_index,
        label_smoothing,
        z_loss,
        COMPUTE_LOSS=compute_loss,
        WRITE_GRAD=write_grad,
        BLOCK_V=block_v,
        num_warps=num_warps,
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_logits(logits: torch.Tensor, labels: torch.Tensor):
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    if logits.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"cross_entropy kernel supports fp16/bf16/fp32 logits, got {logits.dtype}")


# ----------------------------------------------------------------------------------------------------------------------
# cross_entropy on given logits


def _cross_entropy_fwd_fake(logits, labels, ignore_index, label_smoothing, z_loss):
    loss = logits.new_empty(logits.shape[:1], dtype=torch.float32)
    return loss, torch.empty_like(loss)


@kernel_op("fat5::cross_entropy_fwd", _cross_entropy_fwd_fake)
def _cross_entropy_fwd_op(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, label_smoothing: float, z_loss: float
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_logits(logits, labels)
    logits = _rows(logits)
    labels = labels.contiguous()
    loss = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(loss)
    _launch(logits, labels, loss, lse, loss, logits, ignore_index, label_smoothing, z_loss, True, False)
    return loss, lse


def _cross_entropy_bwd_fake(dloss, logits, labels, lse, ignore_index, label_smoothing, z_loss):
    return logits.new_empty(logits.shape)


@kernel_op("fat5::cross_entropy_bwd", _cross_entropy_bwd_fake)
def _cross_entropy_bwd_op(
    dloss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
) -> torch.Tensor:
    logits = _rows(logits)
    labels = labels.contiguous()
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    _launch(logits, labels, lse, lse, dloss, grad, ignore_index, label_smoothing, z_loss, False, True)
    return grad


def _ce_setup_context(ctx, inputs, output):
    logits, labels, ignore_index, label_smoothing, z_loss = inputs
    _, lse = output
    ctx.save_for_backward(logits, labels, lse)
    ctx.args = (ignore_index, label_smoothing, z_loss)


def _ce_backward(ctx, dloss, _dlse):
    logits, labels, lse = ctx.saved_tensors
    grad = torch.ops.fat5.cross_entropy_bwd(dloss, logits, labels, lse, *ctx.args)
    return grad, None, None, None, None


_cross_entropy_fwd_op.register_autograd(_ce_backward, setup_context=_ce_setup_context)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy (+ z-loss) of `logits` (..., V) against `labels` (...), fp32 result, any float input dtype.

    reduction: "mean" (over non-ignored rows; 0 when there is none), "sum", or "none" (per row, 0 on ignored rows).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    n_cols = logits.shape[-1]
    row_loss, _ = torch.ops.fat5.cross_entropy_fwd(
        logits.reshape(-1, n_cols), labels.reshape(-1), int(ignore_index), float(label_smoothing), float(z_loss)
    )
    if reduction == "none":
        return row_loss.view(labels.shape)
    if reduction == "sum":
        return row_loss.sum()
    n_valid = (labels != ignore_index).sum().clamp(min=1)
    return row_loss.sum() / n_valid


# ----------------------------------------------------------------------------------------------------------------------
# linear_cross_entropy: the LM-head matmul and the loss, chunked over tokens

_MM_OUT_DTYPE_OK: dict[str, bool] = {}


def _mm_out_dtype_ok(device: torch.device) -> bool:
    """Whether `torch.mm/addmm(..., out_dtype=float32)` (fp32 result of half inputs, no half copy) work here."""
    key = device.type
    if key not in _MM_OUT_DTYPE_OK:
        try:
            a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
            c = torch.zeros(2, 2, dtype=torch.float32, device=device)
            r = torch.addmm(c, a, a, out_dtype=torch.float32) + torch.mm(a, a, out_dtype=torch.float32)
            _MM_OUT_DTYPE_OK[key] = bool(r.dtype == torch.float32 and float(r[0, 0]) == 4.0)
        except Exception:
            _MM_OUT_DTYPE_OK[key] = False
    return _MM_OUT_DTYPE_OK[key]


# Accumulate dweight over token chunks in fp32 when the weight is half (set False to accumulate in its dtype).
DW_FP32_ACCUMULATION = True


def default_chunk_size(n_tokens: int, vocab_size: int) -> int:
    """Tokens per chunk: about 2**28 logits (512 MiB in bf16) per chunk, a multiple of 128."""
    return max(128, min((1 << 28) // max(vocab_size, 1) // 128 * 128, triton.cdiv(max(n_tokens, 1), 128) * 128))


@torch.library.custom_op("fat5::linear_cross_entropy_fwd", mutates_args=())
def _linear_cross_entropy_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    scale: float,
    sum_reduction: bool,
    chunk_size: int,
    grad_hidden: bool,
    grad_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dloss/dhidden, dloss/dweight): the gradients are empty tensors when not asked for."""
    if (
        hidden.dim() != 2
        or weight.dim() != 2
        or hidden.shape[1] != weight.shape[1]
        or labels.shape != hidden.shape[:1]
    ):
        raise ValueError(
            f"linear_cross_entropy: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, "
            f"labels {tuple(labels.shape)} do not fit"
        )
    if hidden.dtype != weight.dtype or hidden.dtype not in _KERNEL_DTYPES:
        raise TypeError(
            f"linear_cross_entropy: hidden {hidden.dtype} and weight {weight.dtype} must share a float dtype"
        )
    n_tokens = hidden.shape[0]
    device = hidden.device
    labels = labels.contiguous()
    write_grad = grad_hidden or grad_weight
    if sum_reduction:
        inv_n = torch.ones((), dtype=torch.float32, device=device)
    else:
        inv_n = 1.0 / (labels != ignore_index).sum().clamp(min=1).to(torch.float32)
    row_loss = torch.empty(n_tokens, dtype=torch.float32, device=device)
    lse = torch.empty_like(row_loss)
    dhidden = torch.empty_like(hidden) if grad_hidden else hidden.new_empty(0)
    n_chunks = triton.cdiv(n_tokens, chunk_size)
    dw_dtype = weight.dtype
    if grad_weight and DW_FP32_ACCUMULATION and weight.dtype != torch.float32 and n_chunks > 1:
        dw_dtype = torch.float32
    dweight = None
    for start in range(0, n_tokens, chunk_size):
        end = min(start + chunk_size, n_tokens)
        h = hidden[start:end]
        if scale != 1.0:
            h = h * scale
        logits = h @ weight.t()
        _launch(
            logits,
            labels[start:end],
            row_loss[start:end],
            lse[start:end],
            inv_n,
            logits,
            ignore_index,
            label_smoothing,
            z_loss,
            True,
            write_grad,
        )
        if grad_hidden:
            dh = dhidden[start:end]
            torch.mm(logits, weight, out=dh)
            if scale != 1.0:
                dh.mul_(scale)
        if grad_weight:
            if dweight is None:
                if dw_dtype != logits.dtype and _mm_out_dtype_ok(device):
                    dweight = torch.mm(logits.t(), h, out_dtype=torch.float32)
                else:
                    dweight = torch.mm(logits.t(), h).to(dw_dtype)
            elif dweight.dtype == logits.dtype:
                dweight.addmm_(logits.t(), h)
            elif _mm_out_dtype_ok(device):
                dweight = torch.addmm(dweight, logits.t(), h, out_dtype=torch.float32)
            else:
                dweight += torch.mm(logits.t(), h).to(torch.float32)
    if grad_weight:
        dweight = torch.zeros_like(weight) if dweight is None else dweight.to(weight.dtype)
    else:
        dweight = weight.new_empty(0)
    loss = row_loss.sum() * inv_n
    return loss, dhidden, dweight


@_linear_cross_entropy_op.register_fake
def _(hidden, weight, labels, ignore_index, label_smoothing, z_loss, scale, sum_reduction, chunk_size, gh, gw):
    loss = hidden.new_empty((), dtype=torch.float32)
    dhidden = hidden.new_empty(hidden.shape) if gh else hidden.new_empty(0)
    dweight = weight.new_empty(weight.shape) if gw else weight.new_empty(0)
    return loss, dhidden, dweight


def _lce_setup_context(ctx, inputs, output):
    _, dhidden, dweight = output
    ctx.save_for_backward(dhidden, dweight)


def _lce_backward(ctx, dloss, _ddhidden, _ddweight):
    dhidden, dweight = ctx.saved_tensors
    gh = dhidden * dloss if ctx.needs_input_grad[0] else None
    gw = dweight * dloss if ctx.needs_input_grad[1] else None
    return gh, gw, None, None, None, None, None, None, None, None, None


_linear_cross_entropy_op.register_autograd(_lce_backward, setup_context=_lce_setup_context)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
    scale: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """`cross_entropy((hidden * scale) @ weight.T, labels, ...)` without materialising the (tokens, V) logits.

    hidden (..., D), weight (V, D) (an `nn.Linear(D, V)` weight, e.g. the LM head), labels (...). `scale` multiplies
    hidden first (T5 with tied embeddings: `d_model ** -0.5`). The matmuls run in the input dtype (under autocast:
    the autocast dtype), the loss and the logsumexp in fp32. reduction: "mean" or "sum". Returns an fp32 scalar.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"linear_cross_entropy supports reduction 'mean' or 'sum', got {reduction!r}")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif hidden.dtype != weight.dtype:
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    hidden2 = hidden.reshape(-1, hidden.shape[-1])
    labels1 = labels.reshape(-1)
    if chunk_size is None:
        chunk_size = default_chunk_size(hidden2.shape[0], weight.shape[0])
    grad = torch.is_grad_enabled()
    loss, _, _ = torch.ops.fat5.linear_cross_entropy_fwd(
        hidden2,
        weight,
        labels1,
        int(ignore_index),
        float(label_smoothing),
        float(z_loss),
        1.0 if scale is None else float(scale),
        reduction == "sum",
        int(chunk_size),
        grad and hidden2.requires_grad,
        grad and weight.requires_grad,
    )
    return loss


__all__ = ["cross_entropy", "default_chunk_size", "linear_cross_entropy"]
