"""Benchmark (and check at real sizes) FAT5's Triton RMSNorm and cross-entropy kernels on a CUDA GPU.

    PYTHONPATH=src python benchmarks/bench_kernels_norm_loss.py [--out results.json] [--quick]

RMSNorm: forward + backward of T5's layer norm on bf16 activations and bf16 weight, T = 16384..65536 tokens,
D = 768 / 1024, against transformers' eager `T5LayerNorm` and `torch.compile` of it; the same for the residual-add
fusion. GB/s counts the fewest bytes each pass must move (forward: read x, write y; backward: read x and dy, write dx;
with the residual: one more read and one more write each way).

Cross-entropy: the LM loss of T = 16384 tokens, D = 768, V = 32128 (T5) and 250112 (mT5), label smoothing 0.1 and
z-loss 1e-4, forward + backward through the LM-head matmul: PyTorch as upstream (bf16 logits, `.float()`,
`F.cross_entropy` + z-loss; eager and compiled), the Triton loss on materialised bf16 logits, and the fused chunked
`linear_cross_entropy`; time and peak memory above the inputs.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from fat5.models.flash_t5.kernels import cross_entropy as CE
from fat5.models.flash_t5.kernels import rms_norm as RMS


def t5_layer_norm(x, weight, eps=1e-6):
    """transformers' T5LayerNorm.forward."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        x = x.to(weight.dtype)
    return weight * x


def eager_add_norm(x, residual, weight, eps=1e-6):
    h = residual + x
    return t5_layer_norm(h, weight, eps), h


# Set by --cuda-graphs: time calls replayed from a CUDA graph, the GPU's time without the host's (eager calls of these
# small ops are bound by the host).
TIME_CUDA_GRAPHS = False


def bench(fn, warmup=25, rep=200):
    if TIME_CUDA_GRAPHS:
        return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median")
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


# ----------------------------------------------------------------------------------------------------------------------


def norm_case(tokens, dim, fused_residual, compiled_norm, compiled_add):
    dev = "cuda"
    x = torch.randn(tokens, dim, device=dev, dtype=torch.bfloat16)
    r = torch.randn(tokens, dim, device=dev, dtype=torch.bfloat16)
    w = (1 + 0.1 * torch.randn(dim, device=dev)).to(torch.bfloat16)
    dy = torch.randn(tokens, dim, device=dev, dtype=torch.bfloat16)
    dh = torch.randn(tokens, dim, device=dev, dtype=torch.bfloat16)
    if fused_residual:
        impls = {
            "eager": eager_add_norm,
            "compile": compiled_add,
            "triton": lambda x, r, w: RMS.add_rms_norm(x, r, w, 1e-6),
        }
        elems_fwd, elems_bwd = 4, 5  # read x, r; write y, h | read x(h), dy, dh; write dx (returned twice)
    else:
        impls = {
            "eager": lambda x, r, w: (t5_layer_norm(x, w),),
            "compile": lambda x, r, w: (compiled_norm(x, w),),
            "triton": lambda x, r, w: (RMS.rms_norm(x, w, 1e-6),),
        }
        elems_fwd, elems_bwd = 2, 3

    def fwd_bwd(impl):
        def run():
            # Leaves made in the call and gradients returned: a CUDA graph then captures the whole backward (leaves
            # made outside would tie it to the stream that made them).
            leaves = tuple(t.detach().requires_grad_() for t in (x, r, w))
            outs = impl(*leaves)
            torch.autograd.grad(outs, leaves, (dy, dh)[: len(outs)], allow_unused=True)

        return run

    # correctness at this size: Triton vs the eager bf16 formula, both against fp32 math on the same inputs
    results = {}
    outs_t = RMS.add_rms_norm(x, r, w, 1e-6) if fused_residual else (RMS.rms_norm(x, w, 1e-6),)
    xf, rf, wf = (t.detach().float() for t in (x, r, w))
    want = t5_layer_norm(rf + xf if fused_residual else xf, wf)
    results["rel_err_triton"] = rel(outs_t[0], want)
    outs_e = impls["eager"](x, r, w)
    results["rel_err_eager"] = rel(outs_e[0], want)
    results["finite"] = bool(torch.isfinite(outs_t[0]).all())

    bytes_fwd = elems_fwd * tokens * dim * 2
    bytes_both = (elems_fwd + elems_bwd) * tokens * dim * 2
    for name, impl in impls.items():
        with torch.no_grad():
            t_fwd = bench(lambda: impl(x, r, w))
        t_both = bench(fwd_bwd(impl))
        results[name] = {
            "fwd_ms": t_fwd,
            "fwd_bwd_ms": t_both,
            "fwd_GBps": bytes_fwd / t_fwd / 1e6,
            "fwd_bwd_GBps": bytes_both / t_both / 1e6,
        }
    return results


# ----------------------------------------------------------------------------------------------------------------------


def torch_lm_loss(hidden, weight, labels, label_smoothing, z_loss):
    """The upstream path: logits in bf16, then the loss in fp32 (as FlashT5ForConditionalGeneration.lm_loss)."""
    logits = (hidden @ weight.t()).float()
    loss = F.cross_entropy(logits, labels, ignore_index=-100, label_smoothing=label_smoothing)
    labelled = (labels != -100).float()
    log_z = torch.logsumexp(logits, dim=-1)
    return loss + z_loss * (log_z.square() * labelled).sum() / labelled.sum().clamp(min=1.0)


def triton_loss_on_logits(hidden, weight, labels, label_smoothing, z_loss):
    return CE.cross_entropy(hidden @ weight.t(), labels, -100, label_smoothing, z_loss)


def measure(fn, hidden, weight):
    """Median time of forward + backward of `fn(hidden, weight)`, and the peak memory above what existed before."""

    def run():
        # Leaves made in the call and gradients returned, so that a CUDA graph captures the whole backward.
        leaves = (hidden.detach().requires_grad_(), weight.detach().requires_grad_())
        torch.autograd.grad(fn(*leaves), leaves)

    try:
        run()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        ms = bench(run, warmup=3, rep=300)
        return {"fwd_bwd_ms": ms, "peak_GiB": peak / 2**30}
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"fwd_bwd_ms": None, "peak_GiB": None, "error": "OOM"}


def ce_case(tokens, dim, vocab, label_smoothing, z_loss, compile_torch, chunk_sizes):
    dev = "cuda"
    torch.manual_seed(0)
    hidden = (torch.randn(tokens, dim, device=dev) * 0.5).to(torch.bfloat16).requires_grad_()
    weight = (torch.randn(vocab, dim, device=dev) * dim**-0.5).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), device=dev)
    labels[torch.rand(tokens, device=dev) < 0.1] = -100
    results = {"tokens": tokens, "dim": dim, "vocab": vocab}

    # correctness at this size: the fused loss and its gradients against the upstream PyTorch computation
    ref_loss = torch_lm_loss(hidden, weight, labels, label_smoothing, z_loss)
    ref_loss.backward()
    ref_gh, ref_gw = hidden.grad.float(), weight.grad.float()
    hidden.grad = weight.grad = None
    loss = CE.linear_cross_entropy(hidden, weight, labels, -100, label_smoothing, z_loss)
    loss.backward()
    results["check"] = {
        "loss_torch": ref_loss.item(),
        "loss_fused": loss.item(),
        "rel_err_dhidden": rel(hidden.grad, ref_gh),
        "rel_err_dweight": rel(weight.grad, ref_gw),
        "finite": bool(torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()),
    }
    del ref_gh, ref_gw
    hidden.grad = weight.grad = None
    torch.cuda.empty_cache()

    options = (labels, label_smoothing, z_loss)
    results["torch"] = measure(lambda h, w: torch_lm_loss(h, w, *options), hidden, weight)
    if compile_torch:
        compiled = torch.compile(torch_lm_loss)
        results["torch_compile"] = measure(lambda h, w: compiled(h, w, *options), hidden, weight)
    results["triton_ce_on_logits"] = measure(lambda h, w: triton_loss_on_logits(h, w, *options), hidden, weight)
    for chunk in chunk_sizes:
        label = f"fused_chunk{chunk or CE.default_chunk_size(tokens, vocab)}"
        results[label] = measure(
            lambda h, w, c=chunk: CE.linear_cross_entropy(h, w, labels, -100, label_smoothing, z_loss, chunk_size=c),
            hidden,
            weight,
        )
    CE.DW_FP32_ACCUMULATION = False
    results["fused_default_bf16_dw_accumulation"] = measure(
        lambda h, w: CE.linear_cross_entropy(h, w, labels, -100, label_smoothing, z_loss), hidden, weight
    )
    CE.DW_FP32_ACCUMULATION = True
    flops = 6 * tokens * dim * vocab
    results["matmul_floor_ms_at_800TFLOPs"] = flops / 800e12 * 1e3
    return results


# ----------------------------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--skip-norm", action="store_true")
    parser.add_argument("--skip-ce", action="store_true")
    parser.add_argument("--cuda-graphs", action="store_true", help="time calls replayed from a CUDA graph")
    args = parser.parse_args()
    global TIME_CUDA_GRAPHS
    TIME_CUDA_GRAPHS = args.cuda_graphs
    props = torch.cuda.get_device_properties(0)
    report = {
        "gpu": props.name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "mm_out_dtype_fp32": CE._mm_out_dtype_ok(torch.device("cuda")),
        "cuda_graphs": args.cuda_graphs,
    }
    print(json.dumps(report), flush=True)

    norm_rows = []
    if not args.skip_norm:
        compiled_norm = torch.compile(t5_layer_norm, dynamic=True)
        compiled_add = torch.compile(eager_add_norm, dynamic=True)
        token_counts = [16384, 65536] if args.quick else [16384, 32768, 65536]
        for dim in (768, 1024):
            for tokens in token_counts:
                for fused_residual in (False, True):
                    res = norm_case(tokens, dim, fused_residual, compiled_norm, compiled_add)
                    res.update(tokens=tokens, dim=dim, residual=fused_residual)
                    norm_rows.append(res)
                    print(json.dumps(res), flush=True)
    report["rms_norm"] = norm_rows

    ce_rows = []
    if not args.skip_ce:
        for vocab in (32128, 250112):
            chunks = [None] if args.quick else [None, 2 * CE.default_chunk_size(16384, vocab)]
            res = ce_case(16384, 768, vocab, 0.1, 1e-4, compile_torch=True, chunk_sizes=chunks)
            ce_rows.append(res)
            print(json.dumps(res), flush=True)
    report["cross_entropy"] = ce_rows

    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))

    # summary tables (markdown)
    print(f"\nGPU: {report['gpu']}, torch {report['torch']}, triton {report['triton']}\n")
    if norm_rows:
        print(
            "| op | T | D | eager fwd+bwd ms (GB/s) | compile fwd+bwd ms (GB/s) | Triton fwd+bwd ms (GB/s) |"
            " Triton fwd ms (GB/s) | speed-up vs eager / compile | rel err Triton / eager |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in norm_rows:
            e, c, t = r["eager"], r["compile"], r["triton"]
            op = "add+RMSNorm" if r["residual"] else "RMSNorm"
            print(
                f"| {op} | {r['tokens']} | {r['dim']} | {e['fwd_bwd_ms']:.3f} ({e['fwd_bwd_GBps']:.0f}) | "
                f"{c['fwd_bwd_ms']:.3f} ({c['fwd_bwd_GBps']:.0f}) | {t['fwd_bwd_ms']:.3f} ({t['fwd_bwd_GBps']:.0f}) | "
                f"{t['fwd_ms']:.3f} ({t['fwd_GBps']:.0f}) | {e['fwd_bwd_ms'] / t['fwd_bwd_ms']:.2f}x / "
                f"{c['fwd_bwd_ms'] / t['fwd_bwd_ms']:.2f}x | {r['rel_err_triton']:.1e} / {r['rel_err_eager']:.1e} |"
            )
    if ce_rows:
        print("\n| V | variant | fwd+bwd ms | peak GiB above inputs |")
        print("|---|---|---|---|")
        for r in ce_rows:
            for key, val in r.items():
                if isinstance(val, dict) and "fwd_bwd_ms" in val:
                    ms = "OOM" if val["fwd_bwd_ms"] is None else f"{val['fwd_bwd_ms']:.2f}"
                    mem = "OOM" if val["peak_GiB"] is None else f"{val['peak_GiB']:.2f}"
                    print(f"| {r['vocab']} | {key} | {ms} | {mem} |")
            chk = r["check"]
            print(
                f"| {r['vocab']} | check: loss torch {chk['loss_torch']:.5f} fused {chk['loss_fused']:.5f}, rel err "
                f"dhidden {chk['rel_err_dhidden']:.1e} dweight {chk['rel_err_dweight']:.1e} | "
                f"matmul floor {r['matmul_floor_ms_at_800TFLOPs']:.1f} ms | |"
            )
    ok = all(r["finite"] and r["rel_err_triton"] <= 2 * r["rel_err_eager"] + 1e-6 for r in norm_rows) and all(
        r["check"]["finite"]
        and math.isclose(r["check"]["loss_torch"], r["check"]["loss_fused"], rel_tol=1e-3)
        and r["check"]["rel_err_dhidden"] < 2e-2
        and r["check"]["rel_err_dweight"] < 2e-2
        for r in ce_rows
    )
    print("\nchecks:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
