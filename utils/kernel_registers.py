"""Registers and spills of the `fat5` attention kernels on a GPU architecture, found without that GPU.

    env -u TRITON_INTERPRET PYTHONPATH=src python utils/kernel_registers.py --head-dim 128 [--arch 90]

Compiles the forward and backward kernels as a bf16 call launches them (the tuned tiles; T5 bias by default, or
`--bias alibi|dense|none`, `--causal`, `--key-mask`, `--dropout P`, `--packed`; the gradient of a T5 or dense bias) for a CUDA architecture,
with Triton's compiler and its bundled `ptxas`, and prints each kernel's registers per thread, spill bytes and shared
memory. A kernel change can be screened here before a GPU call: at the 255-register limit, spills grow before the
time does. `--tiles backward_q=64,64,4,3` tries other tiles. Nothing runs, so no CUDA device or driver is needed; the
numbers are ptxas's, not a measurement.

`--ptx-dir DIR` also writes each kernel's PTX instructions (without its line and debug records) to DIR: a change whose
dump equals the committed tree's (`diff -r`) compiles to the same instructions and needs no GPU run to be timed.
"""

import argparse
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget

from fat5.models.flash_t5.kernels import attention


class CompileOnlyDriver:
    """The parts of Triton's active driver that compiling asks for: a target, a device index and a stream."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def compile_kernels(
    head_dim: int,
    bias: str = "t5",
    causal: bool = False,
    key_mask: bool = False,
    dropout: float = 0.0,
    packed: bool = False,
) -> list:
    """(name, compiled kernel) of each kernel that one forward and backward launches, with the bias's gradient."""
    compiled = []

    class CompileOnLaunch:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                compiled.append((self.kernel.fn.__name__, self.kernel.warmup(*args, grid=grid, **kwargs)))

            return launch

    attention.wrap_triton = CompileOnLaunch
    # The lengths are no compile-time constants: any length compiles the same kernels.
    heads, length = 2, 512
    q, k, v, out = (torch.randn(1, length, heads, head_dim, dtype=torch.bfloat16).transpose(1, 2) for _ in range(4))
    mask = torch.ones(1, length, dtype=torch.bool) if key_mask else None
    tiles = (None, None, None)
    # The kernels' max_distance as `fat5_attention` passes it.
    max_distance = 0
    if bias == "t5":
        bias_kind = attention.BIAS_RELATIVE
        bucketing = (32, 128, not causal)
        max_distance = attention.far_distance(*bucketing)
        bias_tensor = attention.relative_bias_by_distance(torch.randn(32, heads), *bucketing)
        configs = attention.kernel_configs(head_dim, torch.bfloat16)
        tiles = attention.relative_bias_tiles(bias_tensor, max_distance, 0, configs, torch.bfloat16)
    elif bias == "alibi":
        bias_kind, bias_tensor = attention.BIAS_ALIBI, torch.rand(heads)
    elif bias == "dense":
        bias_kind, bias_tensor = attention.BIAS_DENSE, torch.randn(1, heads, length, length, dtype=torch.bfloat16)
    else:
        bias_kind, bias_tensor = attention.BIAS_NONE, None
    options = (bias_kind, 1.0, causal, False, max_distance, 0)
    seed = torch.zeros(1, dtype=torch.int64) if dropout else None
    segments, starts = (None, None, None, None), (None, None)
    if packed:
        ids = torch.ones(1, length, dtype=torch.int32)
        starts = (attention.segment_starts(ids, length),) * 2
        segments = (ids, ids, *starts)
    attention._forward(q, k, v, mask, bias_tensor, tiles[0], *options, dropout, seed, *segments[:2], starts[1])
    lse = torch.zeros(1, heads, length)
    bias_grad = bias in ("t5", "dense")
    attention._backward(
        out, q, k, v, out, lse, mask, bias_tensor, tiles[1], tiles[2], *options, dropout, seed, bias_grad, *segments
    )
    return compiled


def ptxas_report(ptx: str, arch: int) -> str:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as f:
            f.write(ptx)
        arch_name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        command = [ptxas, "-v", "--gpu-name", arch_name, source, "-o", os.path.join(folder, "kernel.cubin")]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas exited with {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
        log = proc.stderr
    registers = re.search(r"Used (\d+) registers", log).group(1)
    stores, loads = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups()
    return f"{registers:>3} registers, spills {stores} B stored / {loads} B loaded"


def ptx_instructions(ptx: str) -> str:
    """The PTX without its source-line records, comments and debug sections: what two builds must share to run the
    same instructions."""
    kept = []
    for line in ptx.splitlines():
        stripped = line.strip()
        if stripped.startswith(".section") and ".debug" in stripped:
            break
        if stripped.startswith((".loc", ".file", "//")) or re.fullmatch(r"\$L__tmp\d+:", stripped):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability as one number: 90 for Hopper")
    parser.add_argument("--bias", choices=["t5", "alibi", "dense", "none"], default="t5")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--key-mask", action="store_true", help="with a key-padding mask")
    parser.add_argument("--dropout", type=float, default=0.0, help="with attention dropout of this probability")
    parser.add_argument("--packed", action="store_true", help="with segment ids (packed rows)")
    parser.add_argument(
        "--tiles",
        nargs="+",
        default=[],
        metavar="KERNEL=M,N,WARPS,STAGES[,KEYS_BY_ROW]",
        help="tiles to try instead of the tuned ones (kernel: forward, backward_kv or backward_q)",
    )
    parser.add_argument(
        "--ptx-dir", help="write each kernel's PTX instructions to this folder, to diff against another tree's"
    )
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")

    tuned = attention.TUNED_CONFIGS["wide" if args.head_dim > 64 else "narrow"]
    for choice in args.tiles:
        kernel, fields = choice.split("=")
        if kernel not in tuned:
            parser.error(f"--tiles: unknown kernel {kernel!r}, expected one of {', '.join(tuned)}")
        numbers = [int(x) for x in fields.split(",")]
        tuned[kernel] = attention.KernelConfig(*numbers[:4], *(bool(x) for x in numbers[4:]))
    triton.runtime.driver.set_active(CompileOnlyDriver(args.arch))

    print(f"D = {args.head_dim}, {args.bias} bias, sm_{args.arch}, triton {triton.__version__}")
    if args.ptx_dir:
        os.makedirs(args.ptx_dir, exist_ok=True)
    for name, kernel in compile_kernels(
        args.head_dim, args.bias, args.causal, args.key_mask, args.dropout, args.packed
    ):
        print(f"{name:24s} {ptxas_report(kernel.asm['ptx'], args.arch)}, {kernel.metadata.shared} B shared")
        if args.ptx_dir:
            with open(os.path.join(args.ptx_dir, f"{name}.ptx"), "w") as f:
                f.write(ptx_instructions(kernel.asm["ptx"]))


if __name__ == "__main__":
    main()
