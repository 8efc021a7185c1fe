"""Attention with T5's relative-position bias on a CUDA GPU: the `fat5` Triton kernel against the anchors, one run.

    PYTHONPATH=src python benchmarks/bench_attention.py [--lengths 1024 2048 ...] [--head-dims 64 128] [--out FILE]

For each N at B*N = 32768 tokens, H = 12 heads, bf16, encoder (bidirectional) attention:

- `fat5`: the Triton kernel; the T5 bucket of (key - query) is computed in the kernel from the (buckets x heads)
  table, whose gradient the backward reduces in the kernel.
- `sdpa`: `scaled_dot_product_attention` without any bias (the flash backend): the ceiling.
- `sdpa+bias`: as upstream T5 does it: the (N, N) bucket matrix through an `nn.Embedding` gives a (1, H, N, N) bias,
  built at every call, its gradient flowing back into the table.
- `flex`: FlexAttention with the T5 bucket computed in `score_mod` and the table captured with its gradient
  (only up to --flex-max-length: its backward serialises on the table gradient).

TF/s counts 4*B*H*N^2*D for the forward and 3.5 times that for forward + backward. "extra GB" is the peak memory
above the inputs and their gradients. Before timing, each N measures the relative error of the output and of every
gradient against an fp64 computation on the same bf16 inputs: `fat5` and dense-bias SDPA with the T5 bias, and `fat5`
and SDPA's flash kernel without a bias (the same algorithm: the like-for-like pair). The run fails if `fat5` is off
by more than a few times the dense-bias route's error (the table's gradient: twice the error that the bf16 output
alone brings to it), or by more than SDPA's flash kernel's without a bias.

    --sweep [--sweep-kernels backward_kv ...] [--sweep-length N]  first time candidate tiles at N (default 4096) and
        keep the fastest
"""

import argparse
import dataclasses
import json
import math

import torch
import torch.nn.functional as F
from triton.testing import do_bench, do_bench_cudagraph

from fat5.models.flash_t5.kernels import attention
from fat5.models.flash_t5.kernels.attention import fat5_attention
from fat5.models.flash_t5.modeling_flash_t5 import relative_position_bucket


TOKENS = 32768
HEADS = 12
NUM_BUCKETS = 32
MAX_DISTANCE = 128


class EncoderAttention(torch.nn.Module):
    is_causal = False


def make_inputs(batch, length, head_dim):
    generator = torch.Generator(device="cuda").manual_seed(length + head_dim)
    shape = (batch, length, HEADS, head_dim)
    # transformers' layout: (batch, heads, length, head_dim) views of (batch, length, heads, head_dim) tensors.
    q, k, v = (
        torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator).transpose(1, 2).requires_grad_()
        for _ in range(3)
    )
    table = (torch.randn(NUM_BUCKETS, HEADS, device="cuda", generator=generator) * 0.5).requires_grad_()
    grad_out = torch.randn(batch, length, HEADS, head_dim, device="cuda", dtype=torch.bfloat16, generator=generator)
    return q, k, v, table, grad_out


def run_fat5(q, k, v, table):
    # query_offset 0: in `check`, the queries are the first rows of the sequence whose keys are all given.
    out, _ = fat5_attention(
        EncoderAttention(),
        q,
        k,
        v,
        None,
        scaling=1.0,
        relative_attention_bias=table,
        relative_attention_num_buckets=NUM_BUCKETS,
        relative_attention_max_distance=MAX_DISTANCE,
        bidirectional=True,
        query_offset=0,
    )
    return out


def run_fat5_no_bias(q, k, v, table):
    return fat5_attention(EncoderAttention(), q, k, v, None, scaling=1.0)[0]


def dense_t5_bias(table, length, queries=None):
    position = torch.arange(length, device="cuda")
    relative = position[None, :] - position[: queries or length, None]
    buckets = relative_position_bucket(relative, True, NUM_BUCKETS, MAX_DISTANCE)
    return F.embedding(buckets, table).permute(2, 0, 1).unsqueeze(0)


def run_sdpa_bias(q, k, v, table):
    bias = dense_t5_bias(table, k.shape[2], q.shape[2]).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0).transpose(1, 2)


def run_sdpa(q, k, v, table):
    return F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2)


RUNNERS = {"fat5": run_fat5, "sdpa_bias": run_sdpa_bias, "fat5_no_bias": run_fat5_no_bias, "sdpa": run_sdpa}


def make_flex():
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)

    def run_flex(q, k, v, table):
        def score_mod(score, batch, head, query_index, key_index):
            bucket = relative_position_bucket(key_index - query_index, True, NUM_BUCKETS, MAX_DISTANCE)
            return score + table[bucket, head].to(score.dtype)

        return compiled(q, k, v, score_mod=score_mod, scale=1.0).transpose(1, 2)

    return run_flex


def relative_error(x, reference):
    return ((x.double() - reference).norm() / reference.norm()).item()


def table_grad_with_bf16_row_term(probabilities, value, out, grad, bias, table):
    """The table's gradient in fp64 but for the softmax gradient's row term, sum(dO * O), taken from the bf16-rounded
    output as flash-style kernels take it (fat5, SDPA's flash kernel): the error this alone brings to the bias
    gradient."""
    grad = grad.double().transpose(1, 2)
    row_term = (grad * out.to(torch.bfloat16).double()).sum(-1, keepdim=True)
    score_grad = probabilities * (grad @ value.transpose(-1, -2) - row_term)
    return torch.autograd.grad(bias, table, score_grad)[0]


def check(q, k, v, table):
    """Errors against an fp64 computation on the same bf16 inputs, the output and each gradient: one batch row, its
    first 1024 queries against every key (so that it fits at any N). With the T5 bias (q, k, v and the bucket table):
    fat5 and dense-bias SDPA, and the table gradient's error from the bf16 row term alone. Without a bias (q, k, v):
    fat5 and SDPA's flash kernel, the like-for-like pair (the dense-bias route runs another SDPA backend)."""
    leaves = [q[:1, :, :1024].detach(), k[:1].detach(), v[:1].detach(), table.detach()]
    leaves = [t.clone().requires_grad_() for t in leaves]
    grad = torch.randn(1, leaves[0].shape[2], HEADS, q.shape[-1], device="cuda", dtype=torch.bfloat16)
    q1, k1, v1, table1 = (t.double().detach().requires_grad_() for t in leaves)
    errors = {}
    for with_bias, candidates in ((True, ("fat5", "sdpa_bias")), (False, ("fat5_no_bias", "sdpa"))):
        scores = q1 @ k1.transpose(-1, -2)
        if with_bias:
            bias = dense_t5_bias(table1, k.shape[2], q1.shape[2])
            scores = scores + bias
        inputs = (q1, k1, v1, table1) if with_bias else (q1, k1, v1)
        probabilities = scores.softmax(-1)
        out = probabilities @ v1
        reference = out.transpose(1, 2)
        reference_grads = torch.autograd.grad(reference, inputs, grad.double(), retain_graph=with_bias)
        if with_bias:
            row_term_grad = table_grad_with_bf16_row_term(
                probabilities.detach(), v1.detach(), out.detach(), grad, bias, table1
            )
            errors["bf16_row_term"] = {"dtable": relative_error(row_term_grad, reference_grads[3])}
            del bias
        del scores, probabilities, out
        for name in candidates:
            out = RUNNERS[name](*leaves)
            grads = torch.autograd.grad(out, leaves[: len(inputs)], grad)
            errors[name] = {"out": relative_error(out, reference)}
            for grad_name, actual, expected in zip(("dq", "dk", "dv", "dtable"), grads, reference_grads):
                errors[name][grad_name] = relative_error(actual, expected)
    return {"errors": errors}


def measure(fn, q, k, v, table, grad_out, backward, cuda_graphs=False):
    inputs = (q, k, v, table)
    base = torch.cuda.memory_allocated()

    def step():
        out = fn(*inputs)
        if backward:
            torch.autograd.grad(out, inputs, grad_out, allow_unused=True)

    try:
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        extra_gb = (torch.cuda.max_memory_allocated() - base) / 1e9
        if cuda_graphs:
            ms = do_bench_cudagraph(step, rep=100, return_mode="median")
        else:
            ms = do_bench(step, warmup=25, rep=100, return_mode="median")
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"oom": True}
    return {"ms": ms, "extra_gb": extra_gb}


SWEEP_CANDIDATES = {
    "forward": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 4)],
    "backward_kv": [
        (32, 64, 4, 5, True),
        (32, 64, 4, 4, True),
        (32, 64, 4, 3, True),
        (32, 128, 4, 5, True),
        (32, 128, 4, 4, True),
        (32, 128, 8, 3, True, True),
        (32, 128, 8, 3, True),
        (32, 128, 8, 2, True),
        (16, 128, 8, 3, True),
        (64, 128, 8, 2, True),
        (32, 64, 8, 3, True),
        (16, 64, 4, 3, True),
        (64, 64, 4, 3, True),
        (32, 128, 4, 3, True),
        (64, 128, 8, 3, True),
        (32, 128, 4, 3),
        (32, 128, 8, 3),
        (32, 128, 8, 2),
        (64, 128, 8, 3),
        (64, 128, 8, 2),
        (128, 128, 8, 2),
        (64, 64, 4, 3, False, True),
        (64, 64, 4, 3),
        (64, 64, 8, 3),
        (64, 64, 8, 2),
        (32, 64, 4, 3),
        (32, 64, 8, 3),
        (32, 64, 4, 4),
        (16, 64, 4, 3),
    ],
    "backward_q": [
        (128, 32, 8, 3),
        (128, 32, 4, 5),
        (128, 32, 4, 4),
        (128, 32, 4, 3),
        (64, 64, 4, 3),
        (128, 64, 8, 4),
        (128, 64, 8, 3),
        (64, 32, 4, 3),
        (128, 64, 8, 2),
    ],
}


def sweep(head_dim, kernels, length, cuda_graphs):
    """Time each kernel's candidate tiles (the others fixed at their best so far) and keep the fastest in place."""
    q, k, v, table, grad_out = make_inputs(TOKENS // length, length, head_dim)
    tuned = attention.TUNED_CONFIGS["wide" if head_dim > 64 else "narrow"]
    report = {
        "head_dim": head_dim,
        "length": length,
        "before": {kernel: dataclasses.astuple(config) for kernel, config in tuned.items()},
    }
    for kernel in kernels:
        timings = {}
        for candidate in SWEEP_CANDIDATES[kernel]:
            tuned[kernel] = attention.KernelConfig(*candidate)
            try:
                timings[candidate] = measure(run_fat5, q, k, v, table, grad_out, kernel != "forward", cuda_graphs)[
                    "ms"
                ]
            except Exception as error:  # a tile that does not fit (shared memory, registers) is not a candidate
                print(f"  {kernel} {candidate}: {type(error).__name__}", flush=True)
        best = min(timings, key=timings.get)
        tuned[kernel] = attention.KernelConfig(*best)
        report[kernel] = {"best": best, "ms": {str(c): round(t, 3) for c, t in timings.items()}}
    return report


def worst(row, name):
    return max(row["errors"][name].values())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--flex-max-length", type=int, default=2048)
    parser.add_argument("--dense-max-length", type=int, default=8192, help="dense-bias SDPA above this is OOM")
    parser.add_argument("--out", default="bench_attention.json")
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="time calls replayed from a CUDA graph: the GPU's time without the host's (which bounds eager calls at "
        "small N)",
    )
    parser.add_argument(
        "--sweep", action="store_true", help="first try tile configurations (at --sweep-length), keep the best"
    )
    parser.add_argument("--sweep-kernels", nargs="+", default=list(SWEEP_CANDIDATES), choices=list(SWEEP_CANDIDATES))
    parser.add_argument("--sweep-length", type=int, default=4096, help="N at which --sweep times the candidates")
    args = parser.parse_args()

    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    if args.sweep:
        for head_dim in args.head_dims:
            print(json.dumps(sweep(head_dim, args.sweep_kernels, args.sweep_length, args.cuda_graphs)), flush=True)
    run_flex = make_flex()
    results = []
    for head_dim in args.head_dims:
        for length in args.lengths:
            batch = max(1, TOKENS // length)
            q, k, v, table, grad_out = make_inputs(batch, length, head_dim)
            flops = 4 * batch * HEADS * length * length * head_dim
            row = {"head_dim": head_dim, "length": length, "batch": batch, **check(q, k, v, table)}
            candidates = {"fat5": run_fat5, "sdpa": run_sdpa}
            if length <= args.dense_max_length:
                candidates["sdpa+bias"] = run_sdpa_bias
            if length <= args.flex_max_length:
                candidates["flex"] = run_flex
            for name, fn in candidates.items():
                for backward in (False, True):
                    timing = measure(fn, q, k, v, table, grad_out, backward, args.cuda_graphs)
                    if "ms" in timing:
                        timing["tflops"] = flops * (3.5 if backward else 1.0) / (timing["ms"] * 1e-3) / 1e12
                    row[f"{name}/{'fwd+bwd' if backward else 'fwd'}"] = timing
            results.append(row)
            print(json.dumps(row), flush=True)
            del q, k, v, table, grad_out
            torch.cuda.empty_cache()

    with open(args.out, "w") as handle:
        json.dump(
            {
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "cuda_graphs": args.cuda_graphs,
                "rows": results,
            },
            handle,
        )

    def cell(row, key, field="tflops"):
        entry = row.get(key)
        if entry is None:
            return "-"
        return "OOM" if entry.get("oom") else f"{entry[field]:.1f}"

    def ratio(row, key, over):
        a, b = row.get(key, {}), row.get(over, {})
        return f"{a['tflops'] / b['tflops']:.2f}" if "tflops" in a and "tflops" in b else "-"

    print(
        "\n| D | N | fat5 fwd / fwd+bwd TF/s | sdpa (no bias) | sdpa+bias | flex | fat5/sdpa fwd, fwd+bwd | "
        "fat5/sdpa+bias fwd+bwd | extra GB fat5 / sdpa / sdpa+bias (fwd+bwd) | rel. err fat5 / sdpa+bias | "
        "rel. err without bias fat5 / sdpa |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        pair = [
            f"{cell(row, f'{n}/fwd')} / {cell(row, f'{n}/fwd+bwd')}" for n in ("fat5", "sdpa", "sdpa+bias", "flex")
        ]
        memory = " / ".join(cell(row, f"{n}/fwd+bwd", "extra_gb") for n in ("fat5", "sdpa", "sdpa+bias"))
        print(
            f"| {row['head_dim']} | {row['length']} | {' | '.join(pair)} | "
            f"{ratio(row, 'fat5/fwd', 'sdpa/fwd')}, {ratio(row, 'fat5/fwd+bwd', 'sdpa/fwd+bwd')} | "
            f"{ratio(row, 'fat5/fwd+bwd', 'sdpa+bias/fwd+bwd')} | {memory} | "
            f"{worst(row, 'fat5'):.1e} / {worst(row, 'sdpa_bias'):.1e} | "
            f"{worst(row, 'fat5_no_bias'):.1e} / {worst(row, 'sdpa'):.1e} |"
        )
    for row in results:
        for quantity, fat5_error in row["errors"]["fat5"].items():
            if quantity == "dtable":
                # The table gradient's error is the row term's: its far buckets sum one rounding error per query, a
                # sum whose size swings with the output's last bits (0.007 to 0.015 at N = 8192, D = 128, same inputs,
                # over kernel versions). Dense-bias SDPA takes its row term another way.
                bound = 2 * row["errors"]["bf16_row_term"]["dtable"] + 2e-3
            else:
                # bf16 inputs: fat5 within a few times the error of SDPA's own bf16 route on the same inputs.
                bound = 4 * row["errors"]["sdpa_bias"][quantity] + 2e-3
            assert math.isfinite(fat5_error) and fat5_error < bound, (row["length"], quantity)
        for quantity, fat5_error in row["errors"]["fat5_no_bias"].items():
            # The same algorithm as SDPA's flash kernel (bf16 probabilities and score gradients, the row term of the
            # softmax gradient from the bf16 output): the same error, give or take the order of the sums.
            sdpa_error = row["errors"]["sdpa"][quantity]
            assert fat5_error < 1.5 * sdpa_error + 5e-4, (row["length"], quantity, "without bias")


if __name__ == "__main__":
    main()
