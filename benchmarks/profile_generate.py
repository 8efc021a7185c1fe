"""Where a greedy decode step's time goes, upstream T5 against FAT5 (the setup of `bench_training.py`'s generate).

    PYTHONPATH=src python benchmarks/profile_generate.py [--batch 32] [--new-tokens 32] [--models fat5 t5_sdpa ...]

For each model: wall time and GPU kernel time per generated token, the host-GPU synchronisations per step, and the
CUDA kernels that take the most time. A step whose wall time exceeds its kernel time is bound by the host.
"""

import argparse
import time

import torch
from bench_training import build_fat5, build_upstream
from profile_training import kernel_time_us


def build_fat5_sdpa():
    model = build_fat5()
    model.set_attn_implementation("sdpa")
    return model


MODELS = {"t5_sdpa": build_upstream, "fat5": build_fat5, "fat5_sdpa": build_fat5_sdpa}
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaEventSynchronize")


def profile_model(name, model, input_ids, new_tokens, rows):
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model.generate(input_ids, **kwargs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(input_ids, **kwargs)
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3 / new_tokens
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profiler:
            model.generate(input_ids, **kwargs)
            torch.cuda.synchronize()
    events = profiler.key_averages()
    kernel_us = kernel_time_us(events)
    syncs = {event.key: event.count for event in events if event.key in SYNC_EVENTS}
    print(
        f"\n{name}: {wall_ms:.2f} ms wall per token (unprofiled), {kernel_us / 1e3 / new_tokens:.2f} ms of kernels "
        f"per token; host-GPU transfers/synchronisations over {new_tokens} tokens: {syncs}",
        flush=True,
    )
    print(events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70), flush=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=70), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["t5_sdpa", "fat5"], choices=list(MODELS))
    args = parser.parse_args()
    generator = torch.Generator("cuda").manual_seed(1)
    input_ids = torch.randint(2, 32000, (args.batch, 256), device="cuda", generator=generator)
    for name in args.models:
        profile_model(name, MODELS[name]().cuda().eval(), input_ids, args.new_tokens, args.rows)


if __name__ == "__main__":
    main()
