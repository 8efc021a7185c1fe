"""Fixtures shared by the kernel tests.

Without the network (the GPU machine), skip the top-level conftest, which fetches transformers' common tests:
`pytest --confcutdir tests/models/flash_t5 tests/models/flash_t5/test_kernel_*.py`.
"""

import pytest
import torch


@pytest.fixture
def poison(monkeypatch):
    """Every float tensor made by torch.empty / empty_like starts as NaN: an element a kernel leaves unwritten fails."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(tensor):
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
        return tensor

    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: fill(empty(*args, **kwargs)))
    monkeypatch.setattr(torch, "empty_like", lambda *args, **kwargs: fill(empty_like(*args, **kwargs)))
