"""Per-kernel GPU time of one attention forward+backward on a CUDA GPU: where the `fat5` kernels' time goes.

    cd benchmarks && PYTHONPATH=../src python profile_attention.py [--runners fat5 fat5_no_bias sdpa] [--out FILE]

The inputs and runners are `bench_attention.py`'s (B*N = 32768 tokens, H = 12, bf16, T5 bias with 32 buckets and max
distance 128). For each head dim and N, three warm-up steps, then ten forward+backward steps under the profiler; each
CUDA kernel's time is summed by name and divided by ten.
"""

import argparse
import collections
import json

import bench_attention as bench
import torch
from torch.profiler import ProfilerActivity, profile


STEPS = 10


def kernel_times(runner, q, k, v, table, grad_out, leaves):
    """ms per forward+backward step of each CUDA kernel that `runner` launches; the gradient is that of `leaves`."""

    def step():
        out = runner(q, k, v, table)
        torch.autograd.grad(out, leaves, grad_out)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
    times = collections.Counter()
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            times[event.name[:90]] += event.device_time / 1000 / STEPS
    return dict(times.most_common())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--runners", nargs="+", default=["fat5", "fat5_no_bias", "sdpa"], choices=list(bench.RUNNERS))
    parser.add_argument("--out", default="profile_attention.json")
    args = parser.parse_args()

    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    results = {}
    for head_dim in args.head_dims:
        for length in args.lengths:
            q, k, v, table, grad_out = bench.make_inputs(bench.TOKENS // length, length, head_dim)
            for name in args.runners:
                # Only the T5-bias runners take the table's gradient.
                leaves = (q, k, v, table) if name in ("fat5", "sdpa_bias") else (q, k, v)
                times = kernel_times(bench.RUNNERS[name], q, k, v, table, grad_out, leaves)
                key = f"D{head_dim} N{length} {name}"
                results[key] = {kernel: round(ms, 4) for kernel, ms in times.items()}
                print(f"{key}: {sum(times.values()):.3f} ms", flush=True)
                for kernel, ms in list(times.items())[:6]:
                    print(f"  {ms:8.3f} ms  {kernel}", flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
