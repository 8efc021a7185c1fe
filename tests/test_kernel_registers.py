"""The attention kernels compile for Hopper on a machine without a GPU (`utils/kernel_registers.py`).

The other CPU tests run the kernels through Triton's interpreter, which compiles nothing: this test is the one that
takes them through Triton's compiler and `ptxas` for sm_90a, the GPU the tiles are tuned on, checks that each fits in
a block's shared memory there and bounds the spills of the T5 path.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


triton = pytest.importorskip("triton", reason="the attention kernels are Triton kernels")

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "utils" / "kernel_registers.py"
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
KERNELS = {"_forward_kernel", "_backward_delta_kernel", "_backward_kv_kernel", "_backward_q_kernel"}
# The most shared memory one block may take on an H100 or H200 (227 KiB): a larger kernel fails to launch there.
MAX_SHARED = 232448
# The tuned T5 tiles spill at most 44 B; e84c31a's D = 128 key/value tiles, 8 % slower than the current ones, spilled
# 468 B (benchmarks/README.md).
MAX_T5_SPILL_STORES = 64
PATHS = [
    pytest.param(64, [], id="t5-64"),
    pytest.param(128, [], id="t5-128"),
    pytest.param(64, ["--bias", "dense", "--causal", "--key-mask"], id="dense-causal-padded-64"),
    pytest.param(128, ["--bias", "alibi"], id="alibi-128"),
    # Packed rows and attention dropout, the finetuning default, compile too (their spills are not tuned yet).
    pytest.param(64, ["--packed", "--dropout", "0.1", "--causal"], id="t5-packed-dropout-causal-64"),
    pytest.param(128, ["--packed", "--dropout", "0.1", "--key-mask"], id="t5-packed-dropout-128"),
]


@pytest.mark.skipif(not PTXAS.exists(), reason="this Triton build ships no ptxas to compile for CUDA GPUs with")
@pytest.mark.parametrize("head_dim, options", PATHS)
def test_kernels_compile_for_hopper(head_dim, options, tmp_path):
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")])
    command = [sys.executable, str(SCRIPT), "--head-dim", str(head_dim), *options, "--ptx-dir", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    pattern = r"^(_\w+_kernel)\s+\d+ registers, spills (\d+) B stored / \d+ B loaded, (\d+) B shared"
    kernels = {name: (int(stores), int(shared)) for name, stores, shared in re.findall(pattern, proc.stdout, re.M)}
    assert set(kernels) == KERNELS, proc.stdout
    assert max(shared for _, shared in kernels.values()) <= MAX_SHARED, proc.stdout
    if not options:
        assert max(stores for stores, _ in kernels.values()) <= MAX_T5_SPILL_STORES, proc.stdout

    # The dumps to diff between two trees: every kernel's entry, without the line records that any edit above it shifts.
    for name in KERNELS:
        ptx = (tmp_path / f"{name}.ptx").read_text()
        assert f".entry {name}(" in ptx
        assert not re.search(r"^\s*\.(loc|file)\b", ptx, re.M)
