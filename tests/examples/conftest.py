"""Puts `examples/` on `sys.path` (the example scripts are modules there) and builds one tiny checkpoint per worker."""

import sys
from pathlib import Path

import pytest


EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLES_DIR))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny FlashT5ForConditionalGeneration + tokenizer trained on the shipped corpus for a few steps."""
    import pretrain

    return pretrain.pretrain(
        tmp_path_factory.mktemp("pretrained") / "fat5-tiny", size="tiny", steps=3, batch_size=8, quiet=True
    )
