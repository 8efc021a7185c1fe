"""pytest set-up shared by all FAT5 tests.

Makes transformers' common model tests importable as the package `transformers_tests`, taken from the transformers
sdist matching the installed version (see `utils/fetch_transformers_tests.py`; the cache lives in the git-ignored
`.cache/transformers_tests/<version>/`)::

    from transformers_tests.test_configuration_common import ConfigTester
    from transformers_tests.test_modeling_common import ModelTesterMixin, ids_tensor

The first run downloads the sdist once (about 10 MB from PyPI); later runs, and every pytest-xdist worker, only put
the cached folder on `sys.path`.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
FETCH_SCRIPT = REPO_ROOT / "utils" / "fetch_transformers_tests.py"

# Stand-ins copied next to transformers' common tests; not FAT5 tests themselves.
collect_ignore = ["transformers_stubs"]

# Nothing outside the package registries is reachable from the project's machines: never wait on the Hugging Face
# Hub (set these to 0 to allow it). Same defaults as transformers' own test-suite for the rest.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "true")


def _load_fetch_module():
    spec = importlib.util.spec_from_file_location("fat5_fetch_transformers_tests", FETCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _install_transformers_tests() -> Path:
    fetch = _load_fetch_module()
    try:
        root = fetch.ensure_transformers_tests()
    except Exception as e:
        raise pytest.UsageError(
            f"transformers' common tests are not available ({e}).\n"
            "Run `python utils/fetch_transformers_tests.py` (it needs PyPI once per transformers version), "
            "or copy a prepared `.cache/transformers_tests/<version>/` folder here."
        ) from e
    root_str = str(root)
    if root_str in sys.path:
        sys.path.remove(root_str)
    sys.path.insert(0, root_str)
    return root


TRANSFORMERS_TESTS_ROOT = _install_transformers_tests()


def pytest_configure(config):
    # Markers used by transformers' ModelTesterMixin (registered by transformers' own conftest upstream).
    for marker in (
        "accelerate_tests: tests that need accelerate",
        "flash_attn_test: tests that need flash-attention 2",
        "flash_attn_3_test: tests that need flash-attention 3",
        "flash_attn_4_test: tests that need flash-attention 4",
        "torch_compile_test: tests that run torch.compile",
        "slow: slow tests (run with RUN_SLOW=1)",
        "generate: tests of `generate`",
        "is_training_test: tests that train",
    ):
        config.addinivalue_line("markers", marker)


def pytest_report_header(config):
    return f"transformers common tests: {TRANSFORMERS_TESTS_ROOT}"
