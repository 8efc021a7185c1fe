"""`utils/check_repo.py` passes on the repository and reports planted violations."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "utils" / "check_repo.py"


def _load_check_repo():
    spec = importlib.util.spec_from_file_location("fat5_check_repo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_repo = _load_check_repo()


@pytest.fixture(scope="module")
def sources():
    return {
        "config_source": check_repo.CONFIG_FILE.read_text(encoding="utf-8"),
        "modeling_source": check_repo.MODELING_FILE.read_text(encoding="utf-8"),
        "modular_source": check_repo.MODULAR_FILE.read_text(encoding="utf-8"),
        "doc_text": check_repo.DOC_FILE.read_text(encoding="utf-8"),
        "test_source": check_repo.TEST_FILE.read_text(encoding="utf-8"),
        "registrations": check_repo.installed_registrations(),
    }


def test_script_passes_on_the_repository():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check_repo: OK" in proc.stdout


def test_repository_sources_are_consistent(sources):
    assert check_repo.run_checks(**sources) == []
    public = check_repo.public_classes(sources["config_source"], sources["modeling_source"])
    assert "FlashT5Config" in public and "FlashT5ForQuestionAnswering" in public


def test_missing_autodoc_is_reported(sources):
    doc = sources["doc_text"].replace("[[autodoc]] FlashT5ForQuestionAnswering\n", "")
    errors = check_repo.run_checks(**{**sources, "doc_text": doc})
    assert errors == [f"FlashT5ForQuestionAnswering has no `[[autodoc]] FlashT5ForQuestionAnswering` in {_doc()}"]


def _doc():
    return check_repo._rel(check_repo.DOC_FILE)


def test_class_missing_from_all_model_classes_is_reported(sources):
    test_source = sources["test_source"].replace("        FlashT5ForTokenClassification,\n", "", 1)
    assert test_source != sources["test_source"]
    errors = check_repo.run_checks(**{**sources, "test_source": test_source})
    assert len(errors) == 1 and errors[0].startswith("FlashT5ForTokenClassification is not in any `all_model_classes`")


def test_unexported_and_unregistered_classes_are_reported(sources):
    package_all, auto_registered, config_registered = sources["registrations"]
    registrations = (
        [name for name in package_all if name != "FlashT5EncoderModel"],
        auto_registered - {"FlashT5EncoderModel"},
        set(),
    )
    errors = check_repo.run_checks(**{**sources, "registrations": registrations})
    assert sorted(errors) == sorted(
        [
            "FlashT5EncoderModel is public in the model folder but not exported by `fat5` (fat5.__all__)",
            "FlashT5EncoderModel is not registered with any Auto class (fat5.AUTO_CLASSES)",
            "FlashT5Config is not registered with AutoConfig for model type `flash_t5`",
        ]
    )


def test_unread_config_attribute_is_reported_unless_documented_as_legacy(sources):
    config = sources["config_source"].replace(
        "    is_decoder: bool = False\n", "    is_decoder: bool = False\n    unused_knob: int = 3\n", 1
    )
    assert config != sources["config_source"]
    errors = check_repo.run_checks(**{**sources, "config_source": config})
    assert len(errors) == 1 and errors[0].startswith("FlashT5Config.unused_knob is never read")

    documented = config.replace(
        "    classifier_dropout (`float`",
        "    unused_knob (`int`, *optional*, defaults to 3):\n"
        "        Legacy: kept so that older checkpoints load; the model ignores it.\n"
        "    classifier_dropout (`float`",
        1,
    )
    assert documented != config
    assert check_repo.run_checks(**{**sources, "config_source": documented}) == []


def test_attribute_read_through_alias_or_property_counts():
    config = '''
class DemoConfig:
    """
    Args:
    """

    model_type = "demo"
    attribute_map = {"d_model": "hidden_size"}
    hidden_size: int = 4
    feed_forward_proj: str = "relu"
    dropout: float = 0.1

    @property
    def is_gated_act(self):
        return self.feed_forward_proj.startswith("gated-")
'''
    modeling = "x = config.d_model\ny = self.config.is_gated_act\n"
    errors = check_repo.check_config_attributes(config, modeling, "modeling.py")
    assert [e.split(" ")[0] for e in errors] == ["DemoConfig.dropout"]


def test_modeling_file_not_regenerated_from_the_modular_one_is_reported(sources):
    modular = sources["modular_source"] + "\n\nclass FlashT5NewLayer(FlashT5LayerFF):\n    pass\n"
    errors = check_repo.run_checks(**{**sources, "modular_source": modular})
    assert len(errors) == 1 and errors[0].startswith("FlashT5NewLayer is defined in src/fat5/models/flash_t5/modular")
    hand_written = sources["modeling_source"].replace("automatically generated from", "written from")
    errors = check_repo.run_checks(**{**sources, "modeling_source": hand_written})
    assert errors == ["src/fat5/models/flash_t5/modeling_flash_t5.py does not say it is generated from "
                      "src/fat5/models/flash_t5/modular_flash_t5.py"]  # fmt: skip
