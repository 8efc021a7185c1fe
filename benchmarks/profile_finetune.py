"""Where a training step of `bench_finetune.py`'s seq2seq job spends its GPU time, by kind of kernel. Needs a CUDA GPU.

    cd benchmarks && PYTHONPATH=../src python profile_finetune.py

One eager step (bf16 autocast, fused AdamW, as `Trainer` runs it without `torch_compile`) averaged over profiled
steps after a warm-up, for FAT5 on packed rows with and without attention dropout and upstream mT5 with rows padded
to the job's maximum (the shape its compiled run uses). Kernel times are summed per category (attention, matmul,
elementwise and copies, softmax and loss, optimizer, reductions): what compilation can fuse away (elementwise) and
what it cannot (attention, matmul).
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
    "optimizer": ("multi_tensor", "adam"),
    "softmax/loss": ("softmax", "cross_entropy", "nll"),
    "reduce": ("reduce",),
    "elementwise/copy": ("elementwise", "copy", "fill", "index", "scatter", "gather", "embedding", "dropout"),
}


def category(kernel_name: str) -> str:
    name = kernel_name.lower()
    return next((kind for kind, parts in CATEGORIES.items() if any(part in name for part in parts)), "other")


def train_step(model, optimizer, batch: dict) -> None:
    batch = {key: value.cuda() for key, value in batch.items()}
    with torch.autocast("cuda", torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def profile_variant(label: str, upstream: bool, dropout: float, steps: int, warmup_steps: int) -> None:
    model = bench_finetune.build_model("seq2seq", upstream, dropout, "cuda")
    model.train()
    collator = bench_finetune.job_collator("seq2seq", packed=not upstream, padded_to_maximum=upstream)
    size = bench_finetune.BATCH_SIZE
    examples = bench_finetune.synthetic_examples("seq2seq", (warmup_steps + steps) * size)
    batches = [collator(examples[start : start + size]) for start in range(0, len(examples), size)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    start = time.perf_counter()
    for batch in batches[:warmup_steps]:
        train_step(model, optimizer, batch)
    torch.cuda.synchronize()
    warmup_seconds = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for batch in batches[warmup_steps:]:
            train_step(model, optimizer, batch)
        torch.cuda.synchronize()
    by_category, by_kernel = collections.Counter(), collections.Counter()
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            milliseconds = event.device_time / steps / 1e3
            by_category[category(event.name)] += milliseconds
            by_kernel[event.name[:90]] += milliseconds
    rows = tuple(batches[warmup_steps]["input_ids"].shape)
    print(f"== {label}: GPU kernel time {sum(by_category.values()):.1f} ms a step of {size} examples, input {rows}")
    print(f"   warm-up {warmup_seconds:.0f} s; " + ", ".join(f"{k} {v:.1f}" for k, v in by_category.most_common()))
    for name, milliseconds in by_kernel.most_common(12):
        print(f"   {milliseconds:6.2f} ms  {name}")
    del model, optimizer
    torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup-steps", type=int, default=4)
    args = parser.parse_args()
    profile_variant("FAT5, packed rows, dropout 0.1", False, 0.1, args.steps, args.warmup_steps)
    profile_variant("FAT5, packed rows, dropout 0.0", False, 0.0, args.steps, args.warmup_steps)
    profile_variant("upstream mT5, rows padded to the maximum, dropout 0.1", True, 0.1, args.steps, args.warmup_steps)


if __name__ == "__main__":
    main()
