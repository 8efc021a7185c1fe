# Copyright 2026 The FAT5 Authors. Licensed under the Apache License, Version 2.0.
"""What every FAT5 Triton kernel module needs: where kernels can run, and a fix for Triton's CPU interpreter.

Importing this module never imports Triton.
"""

import importlib.metadata
import importlib.util
import os
from collections.abc import Callable

import torch
from packaging.version import Version


# Up to this many queries without autograd (a decode step against a cache), attention runs through SDPA with the bias
# of those rows: building it is cheap, and the model builds it once for the whole stack.
DECODE_MAX_QUERIES = 16


def is_decode_step(query_length: int) -> bool:
    return query_length <= DECODE_MAX_QUERIES and not torch.is_grad_enabled()


# The oldest Triton the kernels were tested with. Newer ones are not capped: each CUDA build of torch pins the Triton
# it was built with, and that one is the one to run.
MIN_TRITON_VERSION = "3.3"


def triton_version_problem(version: str | None) -> str | None:
    """Why Triton `version` cannot run FAT5's kernels, or None when it can (or when its version is unknown)."""
    if version is None or Version(version) >= Version(MIN_TRITON_VERSION):
        return None
    return (
        f"FAT5's Triton kernels need triton >= {MIN_TRITON_VERSION}, but triton {version} is installed: install the "
        "Triton that a current torch pins (`pip install --upgrade torch`, or `pip install triton==X` with X the "
        "version that the CUDA build of your torch requires), or use attn_implementation='sdpa'."
    )


def _installed_triton_version() -> str | None:
    """The installed Triton's version, read from its package metadata (importing Triton takes seconds). None without
    Triton, or for a build distributed under another name (such as torch nightlies' `pytorch-triton`)."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


# Looked up once: `find_spec` inside a compiled model would break its graph at every attention call.
_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
_TRITON_PROBLEM = triton_version_problem(_installed_triton_version()) if _TRITON_AVAILABLE else None


def is_triton_available() -> bool:
    """Whether Triton is installed. One too old for the kernels raises an ImportError that says what to install, where
    the kernels are first asked for, rather than an obscure error inside a kernel."""
    if _TRITON_PROBLEM is not None:
        raise ImportError(_TRITON_PROBLEM)
    return _TRITON_AVAILABLE


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (`TRITON_INTERPRET=1`), as the CPU tests do."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels_can_run(device: torch.device) -> bool:
    """Whether a Triton kernel can run on tensors of `device`: CUDA with Triton, or any device under the interpreter."""
    return is_triton_available() and (device.type == "cuda" or interpreting())


def fix_interpreter_loop_bounds():
    """Triton's CPU interpreter (3.x) turns a loop bound into a Python int with `int(array of shape (1,))`, which
    numpy >= 2.4 refuses: every `range(runtime_int)` in a kernel fails under `TRITON_INTERPRET=1`. Make it read
    the single element instead. Only touches the interpreter, and only when it is in use."""
    if not interpreting():
        return
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_fat5_fixed", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor._fat5_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor


def kernel_op(name: str, fake: Callable):
    """Declares a `fat5::` op whose implementation launches Triton kernels through `torch.library.wrap_triton`.

    On a GPU it is a `torch.library.triton_op`: torch.compile traces into it and launches its kernels from the
    compiled graph, with none of the Python that an opaque op costs at every call (a training step is otherwise
    bound by the host). The CPU interpreter's kernels cannot be traced, so there the op is an opaque `custom_op`
    and `fake` gives its outputs' shapes.
    """

    def register(implementation: Callable) -> torch.library.CustomOpDef:
        if interpreting():
            op = torch.library.custom_op(name, implementation, mutates_args=())
            op.register_fake(fake)
            return op
        return torch.library.triton_op(name, implementation, mutates_args=())

    return register
