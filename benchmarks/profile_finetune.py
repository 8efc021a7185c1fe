"""Where a training step of `bench_finetune.py`'s seq2seq job spends its GPU time, by kind of kernel. Needs a CUDA GPU.

    cd benchmarks && PYTHONPATH=../src python profile_finetune.py [--compile-mode default]

One step (bf16 autocast, gradient clipping at 1.0 and fused AdamW, as `Trainer` runs it) averaged over profiled
steps after a warm-up, eager or compiled (`--compile-mode default` is what `torch_compile=True` does; the batches are
then those of the first batch's shape, so that one compilation serves them), for FAT5 on packed rows with and without
attention dropout and upstream mT5 with rows padded to the job's maximum (the shape its compiled run uses). Kernel
times are summed per category (attention, matmul, elementwise and copies, softmax and loss, optimizer, reductions):
what compilation can fuse away (elementwise) and what it cannot (attention, matmul). The wall time of a step
(synchronised at the ends of the profiled steps only) against the GPU's kernel time says how much the host leaves the
GPU waiting.
"""

import argparse
import collections
import time

import bench_finetune
import torch
from torch.profiler import ProfilerActivity, profile


CATEGORIES = {
    "attention": ("_forward_kernel", "_backward_kv", "_backward_q", "_backward_delta", "fmha", "flash", "attention"),
    "matmul": ("gemm", "nvjet", "xmma", "cutlass", "splitk"),
    "optimizer": ("multi_tensor", "adam", "foreach", "norm"),
    "softmax/loss": ("softmax", "cross_entropy", "nll"),
    "reduce": ("reduce",),
    "elementwise/copy": ("elementwise", "copy", "fill", "index", "scatter", "gather", "embedding", "dropout"),
}


VARIANTS = {
    # name: (label, upstream, dropout)
    "fat5": ("FAT5, packed rows, dropout 0.1", False, 0.1),
    "fat5_no_dropout": ("FAT5, packed rows, dropout 0.0", False, 0.0),
    "upstream": ("upstream mT5, rows padded to the maximum, dropout 0.1", True, 0.1),
}


def category(kernel_name: str) -> str:
    name = kernel_name.lower()
    return next((kind for kind, parts in CATEGORIES.items() if any(part in name for part in parts)), "other")


def train_step(model, optimizer, batch: dict) -> None:
    batch = {key: value.cuda() for key, value in batch.items()}
    with torch.autocast("cuda", torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def profile_variant(
    label: str, upstream: bool, dropout: float, steps: int, warmup_steps: int, compile_mode: str | None
) -> None:
    model = bench_finetune.build_model("seq2seq", upstream, dropout, "cuda")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    collator = bench_finetune.job_collator("seq2seq", packed=not upstream, padded_to_maximum=upstream)
    size = bench_finetune.BATCH_SIZE
    examples = bench_finetune.synthetic_examples("seq2seq", 4 * (warmup_steps + steps) * size)
    batches = [collator(examples[start : start + size]) for start in range(0, len(examples), size)]
    if compile_mode is not None:
        model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
        shapes = [{key: value.shape for key, value in batch.items()} for batch in batches]
        batches = [batch for batch, shape in zip(batches, shapes) if shape == shapes[0]]
        label += f", compiled ({compile_mode})"
    batches = batches[: warmup_steps + steps]
    if len(batches) < warmup_steps + steps:
        raise RuntimeError(f"{label}: only {len(batches)} batches of one shape; ask for fewer steps")

    start = time.perf_counter()
    for batch in batches[:warmup_steps]:
        train_step(model, optimizer, batch)
    torch.cuda.synchronize()
    warmup_seconds = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        start = time.perf_counter()
        for batch in batches[warmup_steps:]:
            train_step(model, optimizer, batch)
        torch.cuda.synchronize()
        wall_milliseconds = (time.perf_counter() - start) / steps * 1e3
    by_category, by_kernel = collections.Counter(), collections.Counter()
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            milliseconds = event.device_time / steps / 1e3
            by_category[category(event.name)] += milliseconds
            by_kernel[event.name[:90]] += milliseconds
    rows = tuple(batches[warmup_steps]["input_ids"].shape)
    print(
        f"== {label}: GPU kernel time {sum(by_category.values()):.1f} ms a step of {size} examples, wall "
        f"{wall_milliseconds:.1f} ms, input {rows}"
    )
    print(f"   warm-up {warmup_seconds:.0f} s; " + ", ".join(f"{k} {v:.1f}" for k, v in by_category.most_common()))
    for name, milliseconds in by_kernel.most_common(12):
        print(f"   {milliseconds:6.2f} ms  {name}")
    del model, optimizer
    torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
        help="profile the model compiled in this mode (compilation in the warm-up); eager without it",
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    for name in args.variants:
        label, upstream, dropout = VARIANTS[name]
        profile_variant(label, upstream, dropout, args.steps, args.warmup_steps, args.compile_mode)


if __name__ == "__main__":
    main()
