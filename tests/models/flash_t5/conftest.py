# Copyright 2026 The FAT5 Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
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
