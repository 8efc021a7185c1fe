#!/usr/bin/env python
"""FAT5's repository consistency checks (the model-folder subset of what transformers' `utils/check_repo.py` and
`utils/check_config_attributes.py` enforce in-tree).

Every public class of the model folder (the `__all__` of `configuration_flash_t5.py` and `modeling_flash_t5.py`) must be:

1. exported by the `fat5` package (`fat5.__all__`);
2. registered with an Auto class: the config with `AutoConfig`, every model class except the `PreTrainedModel` base in
   `fat5.AUTO_CLASSES`;
3. documented with `[[autodoc]] <Class>` in `docs/source/en/model_doc/flash_t5.md`;
4. covered by an `all_model_classes` of `tests/models/flash_t5/test_modeling_flash_t5.py` (model classes).

The modeling file must say it is generated from `modular_flash_t5.py` and define every class and function that file
defines (`utils/modular_flash_t5.py` regenerates it, given a transformers checkout).

And every attribute of `FlashT5Config` (its annotated fields) must be read as `config.<attr>` in the modeling file,
directly, through an `attribute_map` alias or through a config property that reads it; or be one that transformers
itself reads (generation and loading flags, see `ATTRIBUTES_USED_BY_TRANSFORMERS`); or be documented as legacy (its
entry in the config's docstring says "legacy": kept only so that older checkpoints load).

    python utils/check_repo.py      # prints each violation; exit status 1 if there is any
"""

import ast
import re
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO_ROOT / "src" / "fat5" / "models" / "flash_t5"
CONFIG_FILE = MODEL_DIR / "configuration_flash_t5.py"
MODELING_FILE = MODEL_DIR / "modeling_flash_t5.py"
MODULAR_FILE = MODEL_DIR / "modular_flash_t5.py"
DOC_FILE = REPO_ROOT / "docs" / "source" / "en" / "model_doc" / "flash_t5.md"
TEST_FILE = REPO_ROOT / "tests" / "models" / "flash_t5" / "test_modeling_flash_t5.py"
MODEL_TYPE = "flash_t5"

# Config attributes read by transformers itself (PreTrainedModel, generation, caches, tying), not by the modeling file.
ATTRIBUTES_USED_BY_TRANSFORMERS = {
    "bos_token_id",
    "decoder_start_token_id",
    "eos_token_id",
    "is_decoder",
    "is_encoder_decoder",
    "pad_token_id",
    "tie_word_embeddings",
    "use_cache",
}


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def module_all(source: str) -> list[str]:
    """The names of a module's literal `__all__`."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [ast.literal_eval(element) for element in node.value.elts]
    return []


def public_classes(config_source: str, modeling_source: str) -> list[str]:
    return module_all(config_source) + module_all(modeling_source)


def is_config(name: str) -> bool:
    return name.endswith("Config")


def is_base_model_class(name: str) -> bool:
    return name.endswith("PreTrainedModel")


def model_classes(public: list[str]) -> list[str]:
    """Public classes that are models one instantiates (not the config, not the `PreTrainedModel` base)."""
    return [name for name in public if not is_config(name) and not is_base_model_class(name)]


def check_exports(public: list[str], package_all: list[str]) -> list[str]:
    return [f"{name} is public in the model folder but not exported by `fat5` (fat5.__all__)" for name in public
            if name not in package_all]  # fmt: skip


def check_auto_registration(public: list[str], auto_registered: set[str], config_registered: set[str]) -> list[str]:
    """`auto_registered`: class names that are values of `fat5.AUTO_CLASSES`; `config_registered`: config class names
    that `AutoConfig` resolves for the model type."""
    errors = []
    for name in public:
        if is_config(name):
            if name not in config_registered:
                errors.append(f"{name} is not registered with AutoConfig for model type `{MODEL_TYPE}`")
        elif not is_base_model_class(name) and name not in auto_registered:
            errors.append(f"{name} is not registered with any Auto class (fat5.AUTO_CLASSES)")
    return errors


def documented_classes(doc_text: str) -> set[str]:
    return set(re.findall(r"^\[\[autodoc\]\]\s+(\w+)", doc_text, flags=re.MULTILINE))


def check_documented(public: list[str], doc_text: str, doc_name: str = _rel(DOC_FILE)) -> list[str]:
    documented = documented_classes(doc_text)
    return [f"{name} has no `[[autodoc]] {name}` in {doc_name}" for name in public if name not in documented]


def tested_classes(test_source: str) -> set[str]:
    """Class names listed in any `all_model_classes = (...)` of a test module."""
    found = set()
    for node in ast.walk(ast.parse(test_source)):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "all_model_classes" for t in targets) and node.value:
                found.update(n.id for n in ast.walk(node.value) if isinstance(n, ast.Name))
    return found


def check_tested(public: list[str], test_source: str, test_name: str = _rel(TEST_FILE)) -> list[str]:
    tested = tested_classes(test_source)
    return [f"{name} is not in any `all_model_classes` of {test_name}" for name in model_classes(public)
            if name not in tested]  # fmt: skip


def _config_class(config_source: str) -> ast.ClassDef:
    for node in ast.parse(config_source).body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "model_type" for t in n.targets)
            for n in node.body
        ):
            return node
    raise ValueError("no config class (a class with a `model_type`) in the configuration file")


def config_attributes(config_source: str) -> list[str]:
    """The annotated fields of the config class, in order."""
    return [n.target.id for n in _config_class(config_source).body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]  # fmt: skip


def _attribute_map(cls: ast.ClassDef) -> dict[str, str]:
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "attribute_map" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return {}


def _property_reads(cls: ast.ClassDef) -> dict[str, set[str]]:
    """For each `@property` of the config class, the `self.<attr>` it reads."""
    reads = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list
        ):
            reads[node.name] = {
                n.attr
                for n in ast.walk(node)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
            }
    return reads


def legacy_documented_attributes(config_source: str) -> set[str]:
    """Attributes whose entry in the config docstring calls them legacy."""
    docstring = ast.get_docstring(_config_class(config_source)) or ""
    legacy, current = set(), None
    for line in docstring.splitlines():
        entry = re.match(r"^(\w+) \(`", line)
        if entry:
            current = entry.group(1)
        elif not line.strip() or not line.startswith(" "):
            current = None
        if current and re.search(r"\blegacy\b", line, flags=re.IGNORECASE):
            legacy.add(current)
    return legacy


def check_config_attributes(
    config_source: str, modeling_source: str, modeling_name: str = _rel(MODELING_FILE)
) -> list[str]:
    cls = _config_class(config_source)
    read = set(re.findall(r"\bconfig\.(\w+)", modeling_source))
    aliases = {}
    for alias, attribute in _attribute_map(cls).items():
        aliases.setdefault(attribute, set()).add(alias)
    for prop, attributes in _property_reads(cls).items():
        if prop in read:
            read.update(attributes)
    legacy = legacy_documented_attributes(config_source)
    errors = []
    for attribute in config_attributes(config_source):
        if attribute in read or aliases.get(attribute, set()) & read:
            continue
        if attribute in ATTRIBUTES_USED_BY_TRANSFORMERS or attribute in legacy:
            continue
        errors.append(
            f"{cls.name}.{attribute} is never read as `config.{attribute}` in {modeling_name} and is not documented "
            "as legacy in the config docstring"
        )
    return errors


def installed_registrations() -> tuple[list[str], set[str], set[str]]:
    """(`fat5.__all__`, class names in `fat5.AUTO_CLASSES`, config class names AutoConfig resolves for flash_t5)."""
    from transformers import AutoConfig

    import fat5

    try:
        config_names = {type(AutoConfig.for_model(MODEL_TYPE)).__name__}
    except ValueError:
        config_names = set()
    return list(fat5.__all__), {cls.__name__ for cls in fat5.AUTO_CLASSES.values()}, config_names


def top_level_definitions(source: str) -> set[str]:
    return {
        node.name
        for node in ast.parse(source).body
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    }


def check_generated(modular_source: str, modeling_source: str) -> list[str]:
    """The modeling file comes from the modular one (`utils/modular_flash_t5.py` regenerates it, where a transformers
    checkout is at hand): its header says so, and it defines every class and function the modular file defines, a
    sign that it was regenerated since they were added."""
    errors = []
    if f"generated from {_rel(MODULAR_FILE)}" not in modeling_source.split("\n\n", 1)[0]:
        errors.append(f"{_rel(MODELING_FILE)} does not say it is generated from {_rel(MODULAR_FILE)}")
    missing = sorted(top_level_definitions(modular_source) - top_level_definitions(modeling_source))
    errors += [
        f"{name} is defined in {_rel(MODULAR_FILE)} but not in {_rel(MODELING_FILE)}: run utils/modular_flash_t5.py"
        for name in missing
    ]
    return errors


def run_checks(
    config_source: str | None = None,
    modeling_source: str | None = None,
    modular_source: str | None = None,
    doc_text: str | None = None,
    test_source: str | None = None,
    registrations: tuple[list[str], set[str], set[str]] | None = None,
) -> list[str]:
    """All violations (empty when the repository is consistent). Arguments replace the repository's files."""
    config_source = config_source if config_source is not None else CONFIG_FILE.read_text(encoding="utf-8")
    modeling_source = modeling_source if modeling_source is not None else MODELING_FILE.read_text(encoding="utf-8")
    modular_source = modular_source if modular_source is not None else MODULAR_FILE.read_text(encoding="utf-8")
    doc_text = doc_text if doc_text is not None else DOC_FILE.read_text(encoding="utf-8")
    test_source = test_source if test_source is not None else TEST_FILE.read_text(encoding="utf-8")
    package_all, auto_registered, config_registered = registrations or installed_registrations()
    public = public_classes(config_source, modeling_source)
    if not public:
        return [f"no public class: {_rel(CONFIG_FILE)} and {_rel(MODELING_FILE)} define no `__all__`"]
    return (
        check_exports(public, package_all)
        + check_auto_registration(public, auto_registered, config_registered)
        + check_documented(public, doc_text)
        + check_tested(public, test_source)
        + check_config_attributes(config_source, modeling_source)
        + check_generated(modular_source, modeling_source)
    )


def main() -> int:
    errors = run_checks()
    for error in errors:
        print(error)
    if errors:
        print(f"check_repo: {len(errors)} violation(s)", file=sys.stderr)
        return 1
    print("check_repo: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
