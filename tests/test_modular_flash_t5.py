"""`utils/modular_flash_t5.py`: what it does to the converter's output, and its refusal of a folder that is not a
transformers checkout. The conversion itself needs transformers' repository (its `utils/`), which CI does not have:
`docs/upstream_checks.md` records the in-tree check that the exported modular and modeling files agree."""

import importlib.util
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("fat5_modular_script", REPO_ROOT / "utils" / "modular_flash_t5.py")
modular = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(modular)


def test_plugin_form_names_the_modular_file_by_its_repository_path_and_imports_the_config_as_a_sibling():
    generated = (
        f"#           This file was automatically generated from {modular.MODULAR_FILE}.\n"
        "import torch\n\nfrom ...models.flash_t5.configuration_flash_t5 import FlashT5Config\n"
    )
    assert modular.plugin_form(generated) == (
        "#           This file was automatically generated from src/fat5/models/flash_t5/modular_flash_t5.py.\n"
        "import torch\n\nfrom .configuration_flash_t5 import FlashT5Config\n"
    )


def test_the_committed_modeling_file_is_in_plugin_form():
    modeling = modular.MODELING_FILE.read_text(encoding="utf-8")
    assert modular.plugin_form(modeling) == modeling
    assert str(REPO_ROOT) not in modeling


def test_refuses_a_folder_without_the_converter(tmp_path):
    with pytest.raises(SystemExit, match="not a transformers checkout"):
        modular.load_converter(tmp_path)
