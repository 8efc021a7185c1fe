"""Where a training step's GPU time goes: torch.profiler over a few steps of `bench_training.py`'s setup.

    PYTHONPATH=src python benchmarks/profile_training.py --length 1024 [--model fat5|t5_sdpa|...] [--cpu] [--sync-debug]

Prints a step's wall time (timed without the profiler) against the GPU time of its kernels (from the profile): a
step whose GPU time falls short of its wall time leaves the GPU waiting for the host. Then the CUDA kernels (or, with
--cpu, the host-side operators) that take the most time, summed over the steps.
With --sync-debug, every operation of the profiled steps that makes the host wait for the GPU prints a warning: a
step whose wall time exceeds its GPU time either launches too slowly or synchronises.
"""

import argparse
import time

import torch
from bench_training import VARIANTS, training_step


def kernel_time_us(events) -> float:
    """Total GPU kernel time of a profile's `key_averages()`, in microseconds."""
    return sum(event.self_device_time_total for event in events if event.device_type == torch.autograd.DeviceType.CUDA)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--model", default="fat5", choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument(
        "--cpu", action="store_true", help="also profile host time and sort by it (launch-bound steps)"
    )
    parser.add_argument("--sync-debug", action="store_true", help="warn at each host-GPU synchronisation")
    args = parser.parse_args()

    build, compiled = VARIANTS[args.model]
    step = training_step(build(), args.length, compile_model=compiled)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1e3 / args.steps
    activities = [torch.profiler.ProfilerActivity.CUDA]
    if args.cpu:
        activities.append(torch.profiler.ProfilerActivity.CPU)
    if args.sync_debug:
        torch.cuda.set_sync_debug_mode("warn")
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(args.steps):
            step()
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    events = profiler.key_averages()
    gpu_ms = kernel_time_us(events) / 1e3 / args.steps
    print(f"{args.model} L={args.length}: {wall_ms:.1f} ms wall a step, {gpu_ms:.1f} ms of GPU kernels a step")
    sort_by = "self_cpu_time_total" if args.cpu else "self_cuda_time_total"
    print(f"{args.model} L={args.length}: top {sort_by} over {args.steps} steps")
    table = events.table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=60)
    print(table)


if __name__ == "__main__":
    main()
