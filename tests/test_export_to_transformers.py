"""`utils/export_to_transformers.py` turns a transformers source tree into one that ships FAT5 natively.

The tree is the transformers sdist matching the installed version (cached by `utils/fetch_transformers_tests.py`),
unpacked into a temporary folder. After the export, a fresh interpreter whose `transformers` is that tree imports the
model without `fat5`, and the exported `tests/models/flash_t5/test_modeling_flash_t5.py` passes there against the
in-tree model. Set FAT5_EXPORT_ALL_TESTS=1 to run every exported test module (slower).
"""

import ast
import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch = _load("fat5_fetch_transformers_tests", REPO_ROOT / "utils" / "fetch_transformers_tests.py")
exporter = _load("fat5_export_to_transformers", REPO_ROOT / "utils" / "export_to_transformers.py")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _tree_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(tree / "src"), str(tree)]), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
    )
    return env


REPO_CHECK_PY = 'PRIVATE_MODELS = [\n    "LongT5Stack",\n    "T5Stack",\n    "MT5Stack",\n]\n'
CHECK_CONFIG_ATTRIBUTES_PY = (
    'SPECIAL_CASES_TO_ALLOW = {\n    "T5Config": ["feed_forward_proj"],\n    "MT5Config": ["feed_forward_proj"],\n}\n'
)


@pytest.fixture(scope="module")
def exported_tree(tmp_path_factory):
    tree = fetch.unpack_sdist(tmp_path_factory.mktemp("transformers_src"))
    # transformers' checkout has a docs/ folder; its sdist has not: give the tree a minimal table of contents
    toctree = tree / "docs" / "source" / "en" / "_toctree.yml"
    toctree.parent.mkdir(parents=True)
    toctree.write_text(
        "- sections:\n"
        "  - isExpanded: false\n"
        "    sections:\n"
        "    - local: model_doc/falcon\n"
        "      title: Falcon\n"
        "    - local: model_doc/flan-t5\n"
        "      title: FLAN-T5\n"
        "    - local: model_doc/flaubert\n"
        "      title: FlauBERT\n"
        "    - local: model_doc/t5\n"
        "      title: T5\n"
        "    title: Text models\n"
    )
    # transformers' checkout has the repository checks in utils/; its sdist has not: the lists a new model joins
    (tree / "utils").mkdir()
    (tree / "utils" / "check_repo.py").write_text(REPO_CHECK_PY)
    (tree / "utils" / "check_config_attributes.py").write_text(CHECK_CONFIG_ATTRIBUTES_PY)
    result = exporter.export(tree)
    # the three modules transformers' common tests import and its sdist lacks (and the package __init__ files)
    fetch.install_stand_ins(tree / "tests")
    # The pipeline tests' list of transformers' tiny Hub models, which the checkout has and the sdist lacks: FAT5 has
    # none, so its pipeline tests skip, as they do in a checkout.
    (tree / "tests" / "utils").mkdir(exist_ok=True)
    (tree / "tests" / "utils" / "tiny_model_summary.json").write_text("{}")
    return tree, result


def test_export_writes_the_model_and_its_registrations(exported_tree):
    tree, result = exported_tree
    package = tree / "src" / "transformers"
    model_dir = package / "models" / "flash_t5"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([*exporter.MODEL_FILES, "__init__.py"])
    assert not (model_dir / "kernels").exists()
    assert any("kernels" in item and "Hub" in item for item in result.left_out)
    for path in model_dir.glob("*.py"):
        text = path.read_text()
        assert "fat5" not in text.replace("FAT5", ""), path.name
    modeling = (model_dir / "modeling_flash_t5.py").read_text()
    assert "from ...modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel" in modeling
    assert "from ... import initialization as init" in modeling
    assert "from transformers" not in modeling.split('"""')[0]
    # Generated from the exported modular file, which imports T5 as in-tree modular files do.
    assert "generated from src/transformers/models/flash_t5/modular_flash_t5.py." in modeling
    # No version shim: the tree's outputs call the cache `cache` (transformers >= 5.2x), and so does the model.
    assert "_CACHE_RENAMED" not in modeling and "cache=decoder_outputs.cache," in modeling
    modular = (model_dir / "modular_flash_t5.py").read_text()
    assert "from ..t5.modeling_t5 import (" in modular and "from ... import initialization as init" in modular

    modeling_auto = (package / "models" / "auto" / "modeling_auto.py").read_text()
    for class_name in exporter.MODELING_AUTO_ENTRIES.values():
        assert f'        ("flash_t5", "{class_name}"),\n' in modeling_auto
    # alphabetical, next to flaubert
    assert '("flash_t5", "FlashT5Model"),\n        ("flaubert", "FlaubertModel"),' in modeling_auto
    assert '("flash_t5", "FlashT5Config"),' in (package / "models" / "auto" / "auto_mappings.py").read_text()
    assert (
        "    from .flash_t5 import *\n    from .flaubert import *\n"
        in (package / "models" / "__init__.py").read_text()
    )

    tests_dir = tree / "tests" / "models" / "flash_t5"
    assert (tests_dir / "test_modeling_flash_t5.py").is_file()
    assert not list(tests_dir.glob("test_kernel*"))
    test_text = (tests_dir / "test_modeling_flash_t5.py").read_text()
    assert "from ...test_modeling_common import ModelTesterMixin, ids_tensor" in test_text
    assert "fat5" not in test_text and "transformers_tests" not in test_text
    # As T5's tests, the classes with pipeline tasks take transformers' pipeline tests in-tree.
    assert "from ...test_pipeline_mixin import PipelineTesterMixin\n" in test_text
    assert (
        "class FlashT5ModelTest(ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase)"
        in test_text
    )
    assert "class FlashT5EncoderOnlyModelTest(ModelTesterMixin, PipelineTesterMixin, unittest.TestCase)" in test_text

    # The reference checkpoints' renamings inline in conversion_mapping.py, their op beside the others, and no
    # import of the model folder there.
    conversion_mapping = (package / "conversion_mapping.py").read_text()
    assert 'mapping["flash_t5"] = [' in conversion_mapping and "    Reshape,\n" in conversion_mapping
    assert "models.flash_t5" not in conversion_mapping
    assert "\nclass Reshape(ConversionOps):\n" in (package / "core_model_loading.py").read_text()
    assert not (model_dir / "weight_conversion.py").exists()

    doc = (tree / "docs" / "source" / "en" / "model_doc" / "flash_t5.md").read_text()
    assert "[[autodoc]] FlashT5ForConditionalGeneration" in doc and "import fat5" not in doc
    # utils/add_dates.py: FAT5's release, and the day it is added (today, for a model not yet on transformers' main)
    today = datetime.date.today().isoformat()
    assert f"\n*This model was released on 2025-01-10 and added to Hugging Face Transformers on {today}.*\n" in doc
    toctree = (tree / "docs" / "source" / "en" / "_toctree.yml").read_text()
    # utils/check_doc_toc.py sorts by lower-cased title: Falcon, FAT5, FLAN-T5, FlauBERT
    assert (
        "      title: Falcon\n    - local: model_doc/flash_t5\n      title: FAT5\n    - local: model_doc/flan-t5\n"
        in toctree
    )


def test_export_adds_the_repository_check_entries(exported_tree):
    tree, _ = exported_tree
    check_repo = (tree / "utils" / "check_repo.py").read_text()
    assert check_repo == REPO_CHECK_PY.replace('"T5Stack",\n', '"T5Stack",\n    "FlashT5Stack",\n')
    config_attributes = (tree / "utils" / "check_config_attributes.py").read_text()
    assert '    "T5Config": ["feed_forward_proj"],\n    "FlashT5Config": ["feed_forward_proj"],\n' in config_attributes


def test_exported_python_files_are_ruff_clean(exported_tree):
    """transformers' `ruff check` (isort included) and `ruff format --check` with the tree's own configuration."""
    ruff = exporter.find_ruff()
    if ruff is None:
        pytest.skip("ruff is not installed")
    tree, _ = exported_tree
    folders = ["src/transformers/models/flash_t5", "tests/models/flash_t5"]
    for command in (["check"], ["format", "--check"]):
        proc = subprocess.run([ruff, *command, *folders], cwd=tree, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_toctree_entry_is_placed_by_title():
    toctree = "- sections:\n  - local: model_doc/bert\n    title: BERT\n  - local: model_doc/t5\n    title: T5\n"
    once = exporter.insert_toctree_entry(toctree)
    assert once == toctree.replace(
        "  - local: model_doc/t5", "  - local: model_doc/flash_t5\n    title: FAT5\n  - local: model_doc/t5"
    )
    assert exporter.insert_toctree_entry(once) == once
    assert exporter.insert_toctree_entry("- local: model_doc/bert\n  title: BERT\n") is None


def test_export_is_idempotent(exported_tree):
    tree, _ = exported_tree
    before = _snapshot(tree)
    result = exporter.export(tree)
    assert result.edited == []
    assert _snapshot(tree) == before


def test_in_tree_model_imports_and_auto_classes_resolve_without_fat5(exported_tree):
    tree, _ = exported_tree
    script = textwrap.dedent(
        """
        import json, sys
        import transformers
        import transformers.models.flash_t5
        from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoModelForSeq2SeqLM, AutoModelForTextEncoding
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        config = AutoConfig.for_model(
            "flash_t5", vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4
        )
        models = [auto.from_config(config) for auto in
                  (AutoModelForQuestionAnswering, AutoModelForSeq2SeqLM, AutoModelForTextEncoding)]

        # A reference FAT5 checkpoint (FIRE: renamed keys and reshaped scalars), loaded and saved again in-tree
        import tempfile, torch
        reference = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1]).eval()
        ids = torch.arange(2, 11)[None]
        logits = reference(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
        with tempfile.TemporaryDirectory() as folder:
            reference.save_pretrained(folder)
            resaved = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
            resaved_logits = resaved(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
        print(json.dumps({
            "transformers": transformers.__file__,
            "config": type(config).__module__ + "." + type(config).__name__,
            "models": [type(m).__module__ + "." + type(m).__name__ for m in models],
            "attn": models[0].config._attn_implementation,
            "renamings": len(get_checkpoint_conversion_mapping("flash_t5") or []),
            "fat5_modules": sorted(name for name in sys.modules if name == "fat5" or name.startswith("fat5.")),
            "top_level": hasattr(transformers, "FlashT5ForTokenClassification"),
            "helpers_stay_private": not hasattr(transformers, "legacy_config_to_native"),
            "reference_logits": logits.tolist(),
            "resaved_equal": torch.equal(logits, resaved_logits),
        }))
        """
    )
    fire_checkpoint = REPO_ROOT / "tests" / "fixtures" / "reference_fat5" / "fire"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(fire_checkpoint)],
        cwd=tree,
        env=_tree_env(tree),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    # The renamings and FIRE's reshape written into the tree's conversion_mapping.py load the reference checkpoint as
    # the plugin does, and a checkpoint saved in-tree loads back the same.
    import torch

    import fat5

    plugin = fat5.FlashT5ForConditionalGeneration.from_pretrained(fire_checkpoint).eval()
    ids = torch.arange(2, 11)[None]
    with torch.no_grad():
        expected = plugin(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
    torch.testing.assert_close(torch.tensor(info["reference_logits"]), expected, rtol=1e-5, atol=1e-5)
    assert info["resaved_equal"]
    assert Path(info["transformers"]).resolve().is_relative_to((tree / "src").resolve())
    assert info["config"] == "transformers.models.flash_t5.configuration_flash_t5.FlashT5Config"
    assert info["models"] == [
        "transformers.models.flash_t5.modeling_flash_t5.FlashT5ForQuestionAnswering",
        "transformers.models.flash_t5.modeling_flash_t5.FlashT5ForConditionalGeneration",
        "transformers.models.flash_t5.modeling_flash_t5.FlashT5EncoderModel",
    ]
    assert info["attn"] == "sdpa"
    assert info["renamings"] > 0  # reference FAT5 checkpoints keep loading in-tree
    assert info["fat5_modules"] == []
    assert info["top_level"] and info["helpers_stay_private"]


def test_exported_model_tests_pass_in_tree(exported_tree):
    tree, _ = exported_tree
    if os.environ.get("FAT5_EXPORT_ALL_TESTS") == "1":
        targets = ["tests/models/flash_t5"]
    else:
        targets = ["tests/models/flash_t5/test_modeling_flash_t5.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets]
    proc = subprocess.run(cmd, cwd=tree, env=_tree_env(tree), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_exported_tree_has_no_stale_files_after_reexport(exported_tree, tmp_path):
    tree, _ = exported_tree
    stale = tree / "src" / "transformers" / "models" / "flash_t5" / "stale_module.py"
    stale.write_text("x = 1\n")
    exporter.export(tree)
    assert not stale.exists()
    fetch.install_stand_ins(tree / "tests")


@pytest.mark.parametrize("case", ["not_a_tree", "too_old", "too_new"])
def test_export_refuses_wrong_folders(case, tmp_path):
    root = tmp_path / case
    if case != "not_a_tree":
        version = {"too_old": "5.16.2", "too_new": "6.0.0.dev0"}[case]
        (root / "src" / "transformers" / "models" / "auto").mkdir(parents=True)
        (root / "src" / "transformers" / "__init__.py").write_text(f'__version__ = "{version}"\n')
        (root / "src" / "transformers" / "models" / "auto" / "modeling_auto.py").write_text("")
    else:
        (root / "src").mkdir(parents=True)
    before = _snapshot(root)
    with pytest.raises(
        exporter.ExportError, match="not a transformers source tree" if case == "not_a_tree" else ">=5.17,<6"
    ):
        exporter.export(root)
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "utils" / "export_to_transformers.py"), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")
    assert _snapshot(root) == before  # nothing written


def test_version_from_setup_py(tmp_path):
    (tmp_path / "src" / "transformers" / "models" / "auto").mkdir(parents=True)
    (tmp_path / "src" / "transformers" / "__init__.py").write_text("")
    (tmp_path / "src" / "transformers" / "models" / "auto" / "modeling_auto.py").write_text("")
    (tmp_path / "setup.py").write_text('setup(\n    name="transformers",\n    version="5.20.1",\n)\n')
    assert exporter.check_tree(tmp_path) == "5.20.1"


def test_help():
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "utils" / "export_to_transformers.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "TRANSFORMERS_SRC" in proc.stdout.upper()


def test_mapping_insertion_is_alphabetical_and_replaces():
    text = 'X = OrderedDict(\n    [\n        ("bert", "B"),\n        ("gpt2", "G"),\n    ]\n)\n'
    once = exporter.insert_mapping_entry(text, "X", "flash_t5", '"F"')
    assert (
        once
        == 'X = OrderedDict(\n    [\n        ("bert", "B"),\n        ("flash_t5", "F"),\n        ("gpt2", "G"),\n    ]\n)\n'
    )
    assert exporter.insert_mapping_entry(once, "X", "flash_t5", '"F"') == once
    assert exporter.insert_mapping_entry(text, "Y", "flash_t5", '"F"') is None


def test_exported_auto_entries_match_the_package_registrations():
    from transformers.models.auto import modeling_auto

    import fat5

    exported = {}
    for auto_class, model_class in fat5.AUTO_CLASSES.items():
        names = auto_class._model_mapping._model_mapping
        dict_name = next(name for name, value in vars(modeling_auto).items() if value is names)
        exported[dict_name] = model_class.__name__
    assert exported == exporter.MODELING_AUTO_ENTRIES


def test_exported_model_folder_passes_mlinter(exported_tree):
    mlinter = shutil.which("mlinter")
    if mlinter is None:
        pytest.skip("transformers-mlinter is not installed")
    tree, _ = exported_tree
    proc = subprocess.run(
        [mlinter, str(tree / "src" / "transformers" / "models" / "flash_t5")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


upstream = _load("fat5_check_upstream", REPO_ROOT / "utils" / "check_upstream.py")


@pytest.mark.parametrize("case", ["no_utils", "no_git", "already_exported"])
def test_check_upstream_refuses_what_is_not_a_clean_transformers_checkout(case, tmp_path):
    (tmp_path / "src" / "transformers").mkdir(parents=True)
    (tmp_path / "src" / "transformers" / "__init__.py").write_text('__version__ = "5.24.0"\n')
    if case != "no_utils":
        (tmp_path / "utils").mkdir()
        (tmp_path / "utils" / "checkers.py").write_text("")
    if case != "no_git":
        (tmp_path / ".git").mkdir()
    if case == "already_exported":
        (tmp_path / "src" / "transformers" / "models" / "flash_t5").mkdir(parents=True)
    expected = {
        "no_utils": "not a transformers checkout",
        "no_git": "not a git checkout",
        "already_exported": "flash_t5",
    }
    before = _snapshot(tmp_path)
    with pytest.raises(upstream.NotATransformersCheckout, match=expected[case]):
        upstream.check_checkout(tmp_path)
    if case == "no_utils":  # the command line: exit status 2, the reason on stderr, nothing written
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT / "utils" / "check_upstream.py"), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and expected[case] in proc.stderr
    assert _snapshot(tmp_path) == before


def test_check_upstream_counts_only_the_complaints_the_export_adds():
    before = "Ruff linting\n$ ruff check src\nsrc/a.py:1:1: F401 unused\nFound 1 error.\nFAILED (1.20s)\n"
    after = (
        "Ruff linting\n$ ruff check src\nsrc/a.py:1:1: F401 unused\nsrc/transformers/models/flash_t5/x.py:3:1: I001\n"
        "Found 2 errors.\nFAILED (2.31s)\n"
    )
    assert upstream.new_complaints(before, after) == [
        "src/transformers/models/flash_t5/x.py:3:1: I001",
        "Found 2 errors.",
    ]
    assert upstream.new_complaints(before, before.replace("1.20s", "9.99s")) == []
    # the runner reuses a result for files it has checked before: no complaint either way
    assert upstream.new_complaints(before.replace("FAILED (1.20s)", "FAILED (cached)"), before) == []
    # a line that appears once more after the export is new
    assert upstream.new_complaints("x\n", "x\nx\n") == ["x"]

    passed, line = upstream.verdict("ruff_check", upstream.CheckRun(1, before), upstream.CheckRun(1, after))
    assert not passed and line.startswith(
        "FAIL  ruff_check: src/transformers/models/flash_t5/x.py:3:1: I001 | Found 2"
    )
    passed, line = upstream.verdict("ruff_check", upstream.CheckRun(1, before), upstream.CheckRun(1, before))
    assert passed and "fails before the export too" in line
    assert upstream.verdict("repo", upstream.CheckRun(1, before), upstream.CheckRun(0, "OK")) == (True, "PASS  repo")
    passed, line = upstream.verdict("doc_toc", upstream.CheckRun(0, "OK"), upstream.CheckRun(1, "FAILED (0.1s)"))
    assert not passed and line.startswith("FAIL  doc_toc")


def test_check_upstream_ignores_traceback_frames_and_skips_tests_the_tree_cannot_run():
    # the export adds a line to utils/check_repo.py: the frames move, the complaint is the same
    before = 'Traceback (most recent call last):\n  File "utils/check_repo.py", line 1424, in <module>\nException: X\n'
    assert upstream.new_complaints(before, before.replace("1424", "1425")) == []
    broken = upstream.CheckRun(4, "ImportError while loading conftest\nE   RuntimeError: TF32 flags\n")
    passed, line = upstream.tests_line(upstream.CheckRun(4, "E   RuntimeError: TF32 flags\n"), broken)
    assert passed and line.startswith("SKIP  pytest tests/models/flash_t5: the tree cannot run T5's tests either: E ")
    passed, line = upstream.tests_line(
        upstream.CheckRun(1, "FAILED tests/x.py::test_a\n1 failed"), upstream.CheckRun(0, "")
    )
    assert not passed and line == "FAIL  pytest tests/models/flash_t5: FAILED tests/x.py::test_a"
    assert upstream.tests_line(upstream.CheckRun(0, "3 passed in 1s"), upstream.CheckRun(0, ""))[0]


@pytest.mark.parametrize("cache_renamed", [True, False])
def test_cache_shims_become_the_names_of_the_tree_version(cache_renamed):
    """The plugin's modeling file works before and after transformers renamed `past_key_values` to `cache`; the
    exported one uses the names of its tree's version."""
    text = (exporter.MODEL_SRC / "modeling_flash_t5.py").read_text()
    assert "_CACHE_OUTPUT_FIELD" in text  # what is resolved below
    resolved = exporter.resolve_cache_shims(text, "modeling_flash_t5.py", cache_renamed)
    field, removal = ("cache", "5.40.0") if cache_renamed else ("past_key_values", "5.0.0")
    assert "_CACHE" not in resolved and "_PAST_KEY_VALUES" not in resolved and "renamed the cache" not in resolved
    assert f"{field}=decoder_outputs.{field}," in resolved
    assert f'@deprecate_kwarg("past_key_values", "{removal}", new_name="cache")' in resolved
    ast.parse(resolved)
