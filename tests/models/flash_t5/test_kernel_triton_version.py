# Copyright 2026 The FAT5 Authors. Licensed under the Apache License, Version 2.0.
"""The installed Triton's version is checked where the kernels are first asked for: one too old for them gives a
message that says what to install; newer ones (whatever a torch pins) are not capped."""

import re
from pathlib import Path

import pytest
import torch

import fat5
from fat5.models.flash_t5 import kernels
from fat5.models.flash_t5.kernels import utils


def test_the_triton_extra_has_the_kernels_minimum_and_no_cap():
    setup = (Path(__file__).resolve().parents[3] / "setup.py").read_text(encoding="utf-8")
    assert re.search(r'"triton": \["triton([^"]*)"\]', setup).group(1) == f">={utils.MIN_TRITON_VERSION}"


@pytest.mark.parametrize("version", ["3.3.0", "3.6.0", "3.7.1", "3.8.0", "3.9.0", "4.0.0", "3.4.0+git1a2b3c4", None])
def test_supported_or_unknown_versions_pass(version):
    assert utils.triton_version_problem(version) is None


@pytest.mark.parametrize("version", ["3.2.0", "3.1.0", "2.3.1"])
def test_too_old_versions_say_what_to_install(version):
    problem = utils.triton_version_problem(version)
    assert f"triton {version} is installed" in problem and f">= {utils.MIN_TRITON_VERSION}" in problem
    assert "attn_implementation='sdpa'" in problem


def test_a_too_old_triton_stops_the_kernels_with_the_message(monkeypatch):
    monkeypatch.setattr(utils, "_TRITON_PROBLEM", utils.triton_version_problem("3.2.0"))
    query = key = value = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ImportError, match=r"need triton >= 3\.3, but triton 3\.2\.0 is installed"):
        kernels.fat5_attention_forward(torch.nn.Module(), query, key, value, None)
    with pytest.raises(ImportError, match=r"triton 3\.2\.0 is installed"):
        fat5.kernelize(torch.nn.Module())
