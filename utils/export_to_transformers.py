#!/usr/bin/env python
"""Export FAT5's model folder into a transformers source tree, as the upstream pull request adds it.

    python utils/export_to_transformers.py TRANSFORMERS_SRC

TRANSFORMERS_SRC is a checkout (or an unpacked sdist) of transformers >=5.17,<6. The command writes:

- `src/transformers/models/flash_t5/`: the configuration, the modular file and the modeling file generated from it,
  the config-conversion helpers the configuration reads, the T5 -> FAT5 conversion script and an in-tree lazy
  `__init__.py`. Imports of `transformers` become the relative imports in-tree code uses, and every `fat5`
  reference is removed or rewritten: the plugin's hooks (top-level functions and methods named `fat5_*`, and the
  `if`s that call the functions) go, so the attention layers call the attention interface as in-tree models do, with
  a dense position bias; the plugin's version shims become the names of the tree's version. The Triton `kernels/`
  folder is NOT exported: in-tree, the model runs eager /
  sdpa / flex_attention in pure PyTorch, and the kernels are meant to ship as a Hub kernel loaded through the
  `kernels` library (the command says so);
- the auto mappings (`models/auto/auto_mappings.py` or `configuration_auto.py` for the config, `modeling_auto.py` for
  the heads, `tokenization_auto.py` for the T5 tokenizer), the model's line in `models/__init__.py`, and the load-time
  renamings of reference FAT5 checkpoints written inline in `conversion_mapping.py` (from the plugin's
  `weight_conversion.py`, which is not exported), with the `Reshape` op they use in `core_model_loading.py`;
- `tests/models/flash_t5/`: FAT5's model tests with in-tree imports (kernel tests, kernel-only test functions and the
  plugin's own tests, among them those of the reference checkpoints' recorded outputs, are left out);
- `docs/source/en/model_doc/flash_t5.md` and its `_toctree.yml` entry, when the tree has a `docs/` folder.

Running it twice gives the same tree. Also importable: `export(transformers_root) -> ExportResult`.
"""

import argparse
import ast
import datetime
import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_SRC = REPO_ROOT / "src" / "fat5" / "models" / "flash_t5"
# Not exported: its renamings and op go into transformers' own conversion_mapping.py and core_model_loading.py.
WEIGHT_CONVERSION_SRC = MODEL_SRC / "weight_conversion.py"
TESTS_SRC = REPO_ROOT / "tests" / "models" / "flash_t5"
DOC_SRC = REPO_ROOT / "docs" / "source" / "en" / "model_doc" / "flash_t5.md"

MODEL_TYPE = "flash_t5"
DOC_TITLE = "FAT5"
MIN_VERSION, MAX_VERSION = (5, 17), (6,)  # >=5.17,<6
# Model files exported, in this order; anything else in the folder (kernels/, format notes) stays in fat5.
MODEL_FILES = (
    "configuration_flash_t5.py",
    "modular_flash_t5.py",
    "modeling_flash_t5.py",
    "checkpoint_conversion.py",
    "convert_t5_to_flash_t5.py",
)
# Auto mappings: (file under models/auto, dict name) -> class name. The config goes to CONFIG_MAPPING_NAMES, wherever
# the tree defines it (auto_mappings.py from 5.x, configuration_auto.py before).
MODELING_AUTO_ENTRIES = {
    "MODEL_MAPPING_NAMES": "FlashT5Model",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES": "FlashT5ForConditionalGeneration",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "FlashT5ForSequenceClassification",
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": "FlashT5ForQuestionAnswering",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": "FlashT5ForTokenClassification",
    "MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES": "FlashT5EncoderModel",
}
KERNELS_NOTE = (
    "Not exported: src/fat5/models/flash_t5/kernels/ (Triton attention with the in-kernel T5 bias, RMSNorm, "
    "cross-entropy). In-tree, FAT5 runs eager / sdpa / flex_attention in pure PyTorch. Upstream, the kernels belong "
    "on the Hugging Face Hub as a kernel repository loaded with the `kernels` library (e.g. "
    '`attn_implementation="<org>/fat5-kernels"`, registered through `AttentionInterface` / '
    "`AttentionMaskInterface`, with the RMSNorm and loss as `kernelize` layers), not in the transformers tree."
)
CONVERSION_MARKER = "# FAT5 (flash_t5): the reference implementation's module names, and FIRE's scalars"
# What transformers' repository checks need to know about a new model, as (file under utils/, list or dict name,
# the entry FAT5 needs, the entry of the T5 model it goes next to). T5's stack and its config's `feed_forward_proj`
# (read by the config to derive the activation, never as `config.feed_forward_proj` in the modeling file) are listed
# there; FAT5's are the same.
REPO_CHECK_ENTRIES = (
    ("check_repo.py", "PRIVATE_MODELS", '    "FlashT5Stack",\n', '    "T5Stack",\n'),
    (
        "check_config_attributes.py",
        "SPECIAL_CASES_TO_ALLOW",
        '    "FlashT5Config": ["feed_forward_proj"],\n',
        '    "T5Config": ["feed_forward_proj"],\n',
    ),
)
# The dates line of transformers' model pages, as `utils/add_dates.py` checks it: the release date of the model (FAT5
# has no paper: its official release with weights and technical report), and the day it is added to transformers.
DATES_LINE = re.compile(r"^\*This model was released on (?P<released>\S+?)(?: and [^\n]*)?\.\*$", re.MULTILINE)
# `fat5` as a word of its own (not `fat5_model`, not `flan-t5-base-fat5`).
FAT5_WORD = re.compile(r"(?<![\w-])fat5(?![\w-])")


class ExportError(RuntimeError):
    pass


@dataclass
class ExportResult:
    root: Path
    version: str
    written: list[Path] = field(default_factory=list)  # files (re)created by the export
    edited: list[Path] = field(default_factory=list)  # files of the tree that got FAT5 entries (new ones only)
    left_out: list[str] = field(default_factory=list)  # what was not exported, and why
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------------
# The target tree


def parse_version(text: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        raise ExportError(f"cannot parse the transformers version {text!r}")
    return tuple(int(part) for part in match.groups(default="0"))


def transformers_tree_version(root: Path) -> str:
    """The version of the transformers tree at `root`; an `ExportError` if `root` is not a transformers tree."""
    root = Path(root)
    package = root / "src" / "transformers"
    if not (package / "__init__.py").is_file() or not (package / "models" / "auto" / "modeling_auto.py").is_file():
        raise ExportError(
            f"{root} is not a transformers source tree (no src/transformers/__init__.py and "
            "src/transformers/models/auto/modeling_auto.py)"
        )
    pattern = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
    match = pattern.search((package / "__init__.py").read_text(encoding="utf-8"))
    if match is None and (root / "setup.py").is_file():
        match = re.search(r"""\bversion\s*=\s*["']([^"']+)["']""", (root / "setup.py").read_text(encoding="utf-8"))
    if match is None:
        raise ExportError(f"cannot find the version of the transformers tree at {root}")
    return match.group(1)


def check_tree(root: Path) -> str:
    version = transformers_tree_version(root)
    parsed = parse_version(version)
    if not (MIN_VERSION <= parsed < MAX_VERSION):
        raise ExportError(
            f"the transformers tree at {root} is version {version}; FAT5 supports transformers >=5.17,<6"
        )
    return version


def _write(path: Path, content: str | bytes, result: ExportResult) -> None:
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)
    result.written.append(path)


def _edit(path: Path, new_text: str, result: ExportResult) -> None:
    if path.read_text(encoding="utf-8") != new_text:
        path.write_text(new_text, encoding="utf-8")
        result.edited.append(path)


# --------------------------------------------------------------------------------------------------------------------
# Source rewriting


def _delete_lines(text: str, spans: list[tuple[int, int]]) -> str:
    """Deletes the 1-based inclusive line spans of `text`."""
    lines = text.splitlines(keepends=True)
    drop = set()
    for start, end in spans:
        drop.update(range(start - 1, end))
    return "".join(line for i, line in enumerate(lines) if i not in drop)


def _node_span(node: ast.AST, lines: list[str], with_comments: bool = False) -> tuple[int, int]:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    if with_comments:  # the comment lines right above the statement go with it
        while start > 1 and lines[start - 2].lstrip().startswith("#"):
            start -= 1
    return start, node.end_lineno


def _squeeze_blank_lines(text: str) -> str:
    return re.sub(r"\n{4,}", "\n\n\n", text)


def _replace_import_prefix(text: str, node: ast.ImportFrom, new_module: str) -> str:
    """Rewrites `from <node.module> import` on the first line of `node` into `from <new_module> import`."""
    lines = text.splitlines(keepends=True)
    line = lines[node.lineno - 1]
    pattern = re.compile(r"^(\s*from\s+)" + r"\.*" + re.escape(node.module or "") + r"(\s+import\b)")
    new_line, count = pattern.subn(lambda m: m.group(1) + new_module + m.group(2), line, count=1)
    if count != 1:
        raise ExportError(f"cannot rewrite the import on line {node.lineno}: {line.strip()}")
    lines[node.lineno - 1] = new_line
    return "".join(lines)


def _import_as_relative_from(text: str, node: ast.Import, filename: str) -> str:
    """`import transformers.a.b as c` (the form modular files take in the plugin: transformers' converter refuses
    `from transformers import b`) becomes in-tree `from ...a import b as c`."""
    names = [alias for alias in node.names if alias.name.split(".")[0] == "transformers"]
    if not names:
        return text
    if len(node.names) != 1 or names[0].asname is None or "." not in names[0].name:
        raise ExportError(f"{filename}:{node.lineno}: only `import transformers.<module> as <name>` can be rewritten")
    package, _, module = names[0].name[len("transformers.") :].rpartition(".")
    lines = text.splitlines(keepends=True)
    indent = lines[node.lineno - 1][: node.col_offset]
    lines[node.lineno - 1] = f"{indent}from ...{package} import {module} as {names[0].asname}\n"
    return "".join(lines)


def _rewrite_docstring_examples(text: str) -> str:
    """`import fat5` lines go (the model is part of transformers), `from fat5 import` comes from transformers."""
    text = re.sub(r"^[ \t]*(?:>>> )?import fat5\b[^\n]*\n", "", text, flags=re.MULTILINE)
    text = re.sub(r"\bfrom fat5 import\b", "from transformers import", text)
    return re.sub(r"\bfat5\.models\.flash_t5\b", "transformers.models.flash_t5", text)


def _is_fat5_module(module: str | None) -> bool:
    return module is not None and (module == "fat5" or module.startswith("fat5."))


def _imports_kernels(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [alias.name for alias in node.names]
            if "kernels" in module.split(".") or (node.level > 0 and not module and "kernels" in names):
                return True
        elif isinstance(node, ast.Import) and any("kernels" in a.name.split(".") for a in node.names):
            if any(_is_fat5_module(a.name) for a in node.names):
                return True
    return False


def _remove_unused_import(text: str, name: str) -> str:
    """Removes a one-line `from x import name` / `import name` when `name` is used nowhere else."""
    if len(re.findall(rf"\b{re.escape(name)}\b", text)) != 1:
        return text
    return re.sub(
        rf"^(?:from [\w.]+ import {re.escape(name)}|import {re.escape(name)})[ \t]*(?:#[^\n]*)?\n",
        "",
        text,
        count=1,
        flags=re.MULTILINE,
    )


def _kernel_hook_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    """Top-level functions that exist for the `fat5` attention implementation (they name it, or are named `fat5_*`)."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("fat5_"):
            found.append(node)
        elif isinstance(node, ast.FunctionDef):
            body = ast.Module(body=node.body, type_ignores=[])
            if any(isinstance(n, ast.Constant) and n.value == "fat5" for n in ast.walk(body)):
                found.append(node)
    return found


def tree_renamed_cache(package: Path) -> bool:
    """Whether the tree's model outputs call the cache `cache` (transformers renamed it from `past_key_values`)."""
    outputs = (package / "modeling_outputs.py").read_text(encoding="utf-8")
    seq2seq_output = re.search(r"^class Seq2SeqLMOutput\b.*?(?=^class )", outputs, re.M | re.S)
    return seq2seq_output is not None and re.search(r"^    cache: ", seq2seq_output.group(0), re.M) is not None


# The plugin's shims over the cache's rename (`_CACHE_RENAMED` and what derives from it), and their comment.
CACHE_SHIM_LINES = re.compile(
    r"^(?:# transformers renamed the cache argument.*\n(?:# .*\n)*)?_(?:CACHE_RENAMED|CACHE_OUTPUT_FIELD|"
    r"PAST_KEY_VALUES_REMOVAL) = .*\n",
    re.M,
)


def resolve_cache_shims(text: str, filename: str, cache_renamed: bool) -> str:
    """The plugin supports transformers before and after the cache's rename; in-tree code targets one version: the
    shims become the names of the tree's version."""
    field = "cache" if cache_renamed else "past_key_values"
    text = CACHE_SHIM_LINES.sub("", text)
    text = text.replace("_PAST_KEY_VALUES_REMOVAL", '"5.40.0"' if cache_renamed else '"5.0.0"')
    text = re.sub(r"\*\*\{_CACHE_OUTPUT_FIELD: getattr\((\w+), _CACHE_OUTPUT_FIELD\)\}", rf"{field}=\1.{field}", text)
    text = re.sub(r"\*\*\{_CACHE_OUTPUT_FIELD: (\w+)\}", rf"{field}=\1", text)
    leftover = re.findall(r"\b_(?:CACHE_RENAMED|CACHE_OUTPUT_FIELD|PAST_KEY_VALUES_REMOVAL)\b", text)
    if leftover:
        raise ExportError(f"{filename}: a cache-version shim the export cannot resolve is left: {leftover[0]}")
    return text


def rewrite_model_file(text: str, filename: str, cache_renamed: bool = True) -> str:
    """In-tree version of one file of the model folder, for a tree whose outputs call the cache `cache` or not."""
    text = resolve_cache_shims(text, filename, cache_renamed)
    tree = ast.parse(text)
    if _imports_kernels(tree):
        raise ExportError(f"{filename} imports the Triton kernels package; the in-tree model must not")

    # 1. Code that only serves the `fat5` (Triton) attention: the hook functions, the `if`s that call them, and the
    # methods named `fat5_*` (called from those `if`s only).
    hooks = _kernel_hook_functions(tree)
    hook_names = {fn.name for fn in hooks}
    hook_methods = [
        node
        for cls in tree.body
        if isinstance(cls, ast.ClassDef)
        for node in cls.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("fat5_")
    ]
    lines = text.splitlines(keepends=True)
    spans = [_node_span(fn, lines) for fn in hooks + hook_methods]
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and not node.orelse:
            if any(isinstance(n, ast.Name) and n.id in hook_names for n in ast.walk(node.test)):
                spans.append(_node_span(node, lines, with_comments=True))
    # 2. Helper modules keep no `__all__`: in-tree, `__all__` puts names in the top-level `transformers` namespace.
    # The modular file keeps it: the converter takes the modeling file's `__all__` from it.
    if not filename.startswith(("configuration_", "modular_", "modeling_")):
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                spans.append(_node_span(node, lines))
    text = _delete_lines(text, spans)
    left = sorted(name for name in hook_names | {m.name for m in hook_methods} if re.search(rf"\b{name}\b", text))
    if left:
        raise ExportError(f"{filename}: the plugin hook {left[0]} is still called outside an `if` that calls a hook")
    # The error message that lists the attention implementations no longer offers the Triton one.
    text = text.replace("use 'fat5' (Triton kernels), ", "use ")

    # 3. Imports: transformers -> relative, fat5's own modules -> the model folder. Conversion scripts keep absolute
    # `transformers` imports, as in-tree `convert_*.py` scripts do (they are run as scripts).
    is_script = filename.startswith("convert_")
    tree = ast.parse(text)
    for node in sorted(
        (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))), key=lambda n: -n.lineno
    ):
        if isinstance(node, ast.Import):
            if not is_script:
                text = _import_as_relative_from(text, node, filename)
            bad = [a.name for a in node.names if a.name.split(".")[0] == "fat5"]
            if bad:
                raise ExportError(f"{filename}:{node.lineno}: `import {bad[0]}` has no in-tree relative form")
            continue
        if node.level:
            continue
        module = node.module or ""
        if module.startswith("transformers.models.") and not is_script:
            # Another model's module, as in-tree modular files import it: `from ..t5.modeling_t5 import`.
            text = _replace_import_prefix(text, node, ".." + module[len("transformers.models.") :])
        elif (module == "transformers" or module.startswith("transformers.")) and not is_script:
            text = _replace_import_prefix(text, node, "..." + module[len("transformers.") :])
        elif module == "fat5.models.flash_t5" or module.startswith("fat5.models.flash_t5."):
            text = _replace_import_prefix(text, node, "." + module[len("fat5.models.flash_t5.") :])
        elif _is_fat5_module(module):
            raise ExportError(f"{filename}:{node.lineno}: `from {module} import` has no in-tree equivalent")
    text = _rewrite_docstring_examples(text)
    # The generated modeling file names its modular source by its path in the tree.
    text = text.replace(
        f"generated from src/fat5/models/{MODEL_TYPE}/", f"generated from src/transformers/models/{MODEL_TYPE}/"
    )
    for module in ("importlib.util", "importlib"):  # unused once the kernel hooks are gone
        if len(re.findall(r"\bimportlib\b", text)) == 1:
            text = re.sub(rf"^import {re.escape(module)}\n", "", text, flags=re.MULTILINE)
    text = _squeeze_blank_lines(text)

    leftover = [line.strip() for line in text.splitlines() if FAT5_WORD.search(line)]
    if leftover:
        raise ExportError(f"{filename} still references fat5 after rewriting: {leftover[:3]}")
    ast.parse(text)
    return text


def _drop_fat5_attention_tests(text: str) -> tuple[str, list[str]]:
    """Removes the test functions/methods that run `attn_implementation="fat5"` (the Triton kernels)."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    spans, names = [], []
    candidates = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        candidates += [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for fn in candidates:
        uses_fat5 = any(
            isinstance(n, ast.keyword)
            and n.arg == "attn_implementation"
            and isinstance(n.value, ast.Constant)
            and n.value.value == "fat5"
            for n in ast.walk(fn)
        ) or any(isinstance(n, ast.Name) and n.id.endswith("kernels_available") for n in ast.walk(fn))
        if uses_fat5:
            spans.append(_node_span(fn, lines, with_comments=True))
            names.append(fn.name)
    return _delete_lines(text, spans), names


def _add_pipeline_tester_mixin(text: str, filename: str) -> str:
    """The test classes that declare `pipeline_model_mapping` take transformers' `PipelineTesterMixin` in-tree, as
    T5's do. The plugin's tests cannot import it: its module reads files of a transformers checkout at import."""
    tree = ast.parse(text)
    classes = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(
            isinstance(item, ast.Assign)
            and any(getattr(t, "id", None) == "pipeline_model_mapping" for t in item.targets)
            for item in node.body
        )
    ]
    if not classes:
        return text
    lines = text.splitlines(keepends=True)
    for node in classes:
        header = lines[node.lineno - 1]
        if header.count("unittest.TestCase)") != 1:
            raise ExportError(f"{filename}:{node.lineno}: cannot add PipelineTesterMixin to `{header.strip()}`")
        lines[node.lineno - 1] = header.replace("unittest.TestCase)", "PipelineTesterMixin, unittest.TestCase)")
    text = "".join(lines)
    anchor = re.search(r"^from \.\.\.test_modeling_common import .*\n", text, re.M)
    if anchor is None:
        raise ExportError(
            f"{filename}: no `from ...test_modeling_common import` line to put the pipeline import after"
        )
    return text[: anchor.end()] + "from ...test_pipeline_mixin import PipelineTesterMixin\n" + text[anchor.end() :]


def rewrite_test_file(text: str, filename: str) -> tuple[str, list[str]]:
    """In-tree version of one test module of tests/models/flash_t5; also returns the names of the tests left out."""
    text, dropped = _drop_fat5_attention_tests(text)
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    spans = []
    # The loop that adds FAT5 to the auto mappings of an installed transformers: in-tree, the mappings have it.
    for node in tree.body:
        if isinstance(node, ast.For) and f'.setdefault("{MODEL_TYPE}"' in ast.get_source_segment(text, node):
            spans.append(_node_span(node, lines, with_comments=True))
    for node in tree.body:
        if isinstance(node, ast.Import) and all(_is_fat5_module(a.name) for a in node.names):
            spans.append(_node_span(node, lines))
    text = _delete_lines(text, spans)

    tree = ast.parse(text)
    for node in sorted((n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)), key=lambda n: -n.lineno):
        module = node.module or ""
        if node.level:
            continue
        if module == "transformers_tests" or module.startswith("transformers_tests."):
            # tests/models/flash_t5/x.py -> the `tests` package is three levels up
            text = _replace_import_prefix(text, node, "..." + module[len("transformers_tests.") :])
        elif module == "fat5":
            text = _replace_import_prefix(text, node, "transformers")
        elif module.startswith("fat5.models.flash_t5"):
            text = _replace_import_prefix(text, node, "transformers" + module[len("fat5") :])
        elif _is_fat5_module(module):
            raise ExportError(f"{filename}:{node.lineno}: `from {module} import` has no in-tree equivalent")
    if any(isinstance(n, ast.Import) and any(_is_fat5_module(a.name) for a in n.names) for n in ast.walk(tree)):
        raise ExportError(f"{filename} imports fat5 inside a function; the export cannot rewrite that")
    text = _remove_unused_import(text, "modeling_auto")
    text = _add_pipeline_tester_mixin(text, filename)
    text = _rewrite_docstring_examples(text)
    text = _squeeze_blank_lines(text)
    if re.search(r"(?<![\w.])fat5\.\w", text):
        raise ExportError(f"{filename} still uses the fat5 package after rewriting")
    ast.parse(text)
    return text, dropped


def rewrite_doc_page(text: str) -> str:
    """In-tree version of the model doc page."""
    lines = text.splitlines(keepends=True)
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        # a quote block (a TIP, a NOTE) about installing/importing the fat5 package
        if line.startswith(">"):
            j = i
            while j < len(lines) and lines[j].startswith(">"):
                j += 1
            block = "".join(lines[i:j])
            if FAT5_WORD.search(block):
                if out and not out[-1].strip() and j < len(lines) and not lines[j].strip():
                    j += 1  # do not leave two blank lines behind
                i = j
                continue
        # the table row of the Triton attention implementation
        if line.startswith("|") and '`"fat5"`' in line:
            i += 1
            continue
        out.append(line)
        i += 1
    text = _rewrite_docstring_examples("".join(out))

    # `fat5.Name` in a code block: `Name` comes from transformers
    def fix_block(match: re.Match) -> str:
        block = match.group(0)
        names = sorted(set(re.findall(r"(?<![\w.])fat5\.(\w+)", block)))
        if not names:
            return block
        block = re.sub(r"(?<![\w.])fat5\.(\w+)", r"\1", block)
        imports = re.search(r"^from transformers import ([\w, ]+)$", block, flags=re.MULTILINE)
        if imports:
            merged = sorted({n.strip() for n in imports.group(1).split(",")} | set(names))
            return block[: imports.start()] + "from transformers import " + ", ".join(merged) + block[imports.end() :]
        first_line_end = block.index("\n") + 1
        return block[:first_line_end] + f"from transformers import {', '.join(names)}\n" + block[first_line_end:]

    text = re.sub(r"^```py(?:thon)?\n.*?^```$", fix_block, text, flags=re.MULTILINE | re.DOTALL)
    leftover = [line.strip() for line in text.splitlines() if FAT5_WORD.search(line)]
    if leftover:
        raise ExportError(f"the doc page still references the fat5 package after rewriting: {leftover[:3]}")
    return text


INIT_TEMPLATE = """{header}from typing import TYPE_CHECKING

from ...utils import _LazyModule
from ...utils.import_utils import define_import_structure


if TYPE_CHECKING:
{imports}
else:
    import sys

    _file = globals()["__file__"]
    sys.modules[__name__] = _LazyModule(__name__, _file, define_import_structure(_file), module_spec=__spec__)
"""


def _license_header(text: str) -> str:
    header = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        header.append(line)
    return "".join(header)


def model_init(module_names: list[str]) -> str:
    header = _license_header((MODEL_SRC / "__init__.py").read_text(encoding="utf-8"))
    imports = "\n".join(f"    from .{name} import *" for name in module_names)
    return INIT_TEMPLATE.format(header=header, imports=imports)


# --------------------------------------------------------------------------------------------------------------------
# Registration in the tree's own files


def _mapping_block(text: str, dict_name: str) -> tuple[int, int] | None:
    """(first entry line, closing line) indices of `DICT = OrderedDict(...)([` ... `])` in `text`'s lines."""
    lines = text.splitlines(keepends=True)
    start = None
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(dict_name)}\s*=\s*OrderedDict\b[^\n]*\($", line.rstrip()):
            start = i
            break
    if start is None or start + 1 >= len(lines) or lines[start + 1].strip() != "[":
        return None
    for j in range(start + 2, len(lines)):
        if lines[j].strip() == "]":
            return start + 2, j
    return None


def insert_mapping_entry(text: str, dict_name: str, key: str, value_src: str) -> str | None:
    """`text` with `("key", value_src),` in the OrderedDict `dict_name`, in alphabetical place; None if no such dict.

    An entry already there for `key` is replaced (so that running twice changes nothing).
    """
    block = _mapping_block(text, dict_name)
    if block is None:
        return None
    first, closing = block
    lines = text.splitlines(keepends=True)
    indent = re.match(r"^(\s*)", lines[first]).group(1) if first < closing else " " * 8
    entry = f'{indent}("{key}", {value_src}),\n'
    # top-level entries of the list: (line index of the entry, key, line index after the entry)
    entries = []
    i = first
    while i < closing:
        line = lines[i]
        if line.startswith(indent + "(") and not line.startswith(indent + " "):
            one_line = re.match(r'^\s*\(\s*"([^"]*)"', line)
            if one_line:
                j = i + 1
                key_found = one_line.group(1)
                if not line.rstrip().endswith(("),", ")")):  # an entry whose value spans several lines
                    while j < closing and not lines[j].startswith(indent + ")"):
                        j += 1
                    j += 1
            else:  # `(` alone: the key is on the next line
                key_match = re.match(r'^\s*"([^"]*)"', lines[i + 1]) if i + 1 < closing else None
                key_found = key_match.group(1) if key_match else ""
                j = i + 1
                while j < closing and not lines[j].startswith(indent + ")"):
                    j += 1
                j += 1
            entries.append((i, key_found, j))
            i = j
        else:
            i += 1
    for start, key_found, end in entries:
        if key_found == key:
            return "".join(lines[:start] + [entry] + lines[end:])
    position = closing
    for start, key_found, _ in entries:
        if key_found > key:
            position = start
            break
    return "".join(lines[:position] + [entry] + lines[position:])


def register_in_auto_mappings(package: Path, result: ExportResult) -> None:
    auto = package / "models" / "auto"
    # the config
    done = False
    for name in ("auto_mappings.py", "configuration_auto.py"):
        path = auto / name
        if not path.is_file():
            continue
        new = insert_mapping_entry(
            path.read_text(encoding="utf-8"), "CONFIG_MAPPING_NAMES", MODEL_TYPE, '"FlashT5Config"'
        )
        if new is not None:
            _edit(path, new, result)
            done = True
            break
    if not done:
        raise ExportError(
            f"no `CONFIG_MAPPING_NAMES = OrderedDict([...])` in {auto}/auto_mappings.py or configuration_auto.py"
        )
    # the display name, in trees that still have MODEL_NAMES_MAPPING
    for name in ("auto_mappings.py", "configuration_auto.py"):
        path = auto / name
        if path.is_file():
            new = insert_mapping_entry(
                path.read_text(encoding="utf-8"), "MODEL_NAMES_MAPPING", MODEL_TYPE, f'"{DOC_TITLE}"'
            )
            if new is not None:
                _edit(path, new, result)
                break
    else:
        result.notes.append("this tree has no MODEL_NAMES_MAPPING (transformers 5.x dropped it): nothing to add there")
    # the heads
    path = auto / "modeling_auto.py"
    text = path.read_text(encoding="utf-8")
    for dict_name, class_name in MODELING_AUTO_ENTRIES.items():
        new = insert_mapping_entry(text, dict_name, MODEL_TYPE, f'"{class_name}"')
        if new is None:
            raise ExportError(f"no `{dict_name} = OrderedDict([...])` in {path}")
        text = new
    _edit(path, text, result)
    # the tokenizer: FAT5 uses T5's, with the same value expression as the `t5` entry
    path = auto / "tokenization_auto.py"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        t5_entry = re.search(r'^\s*\("t5", (.+)\),$', text, flags=re.MULTILINE)
        new = (
            insert_mapping_entry(text, "TOKENIZER_MAPPING_NAMES", MODEL_TYPE, t5_entry.group(1)) if t5_entry else None
        )
        if new is None:
            result.notes.append("tokenization_auto.py: no TOKENIZER_MAPPING_NAMES entry for t5 to follow; skipped")
        else:
            _edit(path, new, result)


def register_in_models_init(package: Path, result: ExportResult) -> None:
    path = package / "models" / "__init__.py"
    text = path.read_text(encoding="utf-8")
    line = f"    from .{MODEL_TYPE} import *\n"
    if line in text:
        return
    lines = text.splitlines(keepends=True)
    listed = [
        (i, m.group(1)) for i, l in enumerate(lines) if (m := re.match(r"^    from \.(\w+) import \*$", l.rstrip()))
    ]
    if not listed:
        raise ExportError(f"{path} has no `from .<model> import *` lines to extend")
    position = next((i for i, name in listed if name > MODEL_TYPE), listed[-1][0] + 1)
    _edit(path, "".join(lines[:position] + [line] + lines[position:]), result)


def _load_weight_conversion():
    """The plugin's `weight_conversion` module: the source of the renamings and of `Reshape` written in-tree."""
    spec = importlib.util.spec_from_file_location("fat5_weight_conversion", WEIGHT_CONVERSION_SRC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class CheckpointConversion:
    mapping_block: str  # FAT5's entry of conversion_mapping.py's `_build_checkpoint_conversion_mapping`
    reshape_source: str  # the `Reshape` op, for core_model_loading.py


def checkpoint_conversion_sources() -> CheckpointConversion:
    text = WEIGHT_CONVERSION_SRC.read_text(encoding="utf-8")
    reshape = next(n for n in ast.parse(text).body if isinstance(n, ast.ClassDef) and n.name == "Reshape")
    start, end = _node_span(reshape, text.splitlines(keepends=True))
    reshape_source = "".join(text.splitlines(keepends=True)[start - 1 : end])
    return CheckpointConversion(conversion_mapping_block(_load_weight_conversion()), reshape_source)


def _raw_string(pattern: str) -> str:
    if '"' in pattern or pattern.endswith("\\"):
        raise ExportError(f"the renaming pattern {pattern!r} cannot be written as a raw string")
    return f'r"{pattern}"'


def conversion_mapping_block(weight_conversion) -> str:
    """FAT5's entry of `_build_checkpoint_conversion_mapping`, written out as the other models' are."""
    lines = [
        f"    {CONVERSION_MARKER}",
        "    # (0-dim in every checkpoint, one-element vectors in the model, which FSDP2 needs).",
        f'    mapping["{MODEL_TYPE}"] = [',
    ]
    for transform in weight_conversion.weight_conversions():
        source, target = transform._original_source_patterns[0], transform._original_target_patterns[0]
        if isinstance(transform, weight_conversion.WeightConverter):
            (reshape,) = transform.operations
            lines.append(
                f'        WeightConverter("{source}", "{target}", operations=[Reshape({reshape.saved_shape!r}, '
                f"{reshape.model_shape!r})]),"
            )
        else:
            lines.append(f"        WeightRenaming({_raw_string(source)}, {_raw_string(target)}),")
    return "\n".join([*lines, "    ]", "", ""])


def _add_to_import_list(text: str, module: str, name: str, path: Path) -> str:
    """`text` with `name` added, in order, to its parenthesized `from <module> import (...)`."""
    block = re.search(rf"^from {re.escape(module)} import \(\n((?:    \w+,\n)+)\)", text, re.M)
    if block is None:
        raise ExportError(f"cannot find `from {module} import (` in {path}")
    names = sorted({*re.findall(r"\w+", block.group(1)), name}, key=lambda n: (n.lower(), n))
    listed = "".join(f"    {n},\n" for n in names)
    return text[: block.start(1)] + listed + text[block.end(1) :]


def register_checkpoint_conversion(
    package: Path, conversion: CheckpointConversion, ruff: str | None, result: ExportResult
) -> None:
    """The reference checkpoints' renamings inline in `conversion_mapping.py`, and the `Reshape` they use beside the
    other conversion ops in `core_model_loading.py`, as transformers keeps every model's (formatted by `ruff`)."""

    def edit(path: Path, text: str) -> None:
        _edit(path, ruff_fix_and_format(ruff, path, text) if ruff else text, result)

    core_path = package / "core_model_loading.py"
    path = package / "conversion_mapping.py"
    for required in (core_path, path):
        if not required.is_file():
            raise ExportError(f"{required} is missing: reference FAT5 checkpoints could not load in this tree")
    core = core_path.read_text(encoding="utf-8")
    if "\nclass Reshape(ConversionOps):" not in core:
        anchor = core.find("\nclass WeightTransform:")
        if anchor == -1:
            raise ExportError(f"cannot find `class WeightTransform` in {core_path}")
        edit(core_path, core[: anchor + 1] + conversion.reshape_source + "\n\n" + core[anchor + 1 :])

    text = path.read_text(encoding="utf-8")
    if CONVERSION_MARKER in text:
        return
    text = _add_to_import_list(text, ".core_model_loading", "Reshape", path)
    anchor = re.search(r"^    for model_type, base_pattern in _MODEL_TO_CONVERSION_PATTERN\.items\(\):$", text, re.M)
    if anchor is None:
        function = re.search(
            r"^def _build_checkpoint_conversion_mapping\(\):\n(?:.*\n)*?^    return mapping$", text, re.M
        )
        if function is None:
            raise ExportError(f"cannot find `_build_checkpoint_conversion_mapping` in {path}")
        position = function.end() - len("    return mapping")
    else:
        position = anchor.start()
    edit(path, text[:position] + conversion.mapping_block + text[position:])
    result.notes.append(
        "in-tree, the reference checkpoints' renamings follow transformers' convention of reverting registered "
        "conversions on save: a model loaded from a reference checkpoint, or created from scratch, saves in the "
        "reference layout, one loaded from a native checkpoint saves native names (the plugin always saves native "
        "names)"
    )


def insert_toctree_entry(text: str) -> str | None:
    """`text` (a `_toctree.yml`) with FAT5's page among T5's siblings, in the order of `utils/check_doc_toc.py`.

    That checker sorts each section's model pages by lower-cased title ("FAT5" before "FLAN-T5"). None when the
    table lists no `model_doc/t5` page to find the section by; `text` itself when the entry is already there.
    """
    if f"local: model_doc/{MODEL_TYPE}\n" in text:
        return text
    lines = text.splitlines(keepends=True)
    entry = re.compile(r"^(\s*)- local: model_doc/(\S+)\s*$")
    t5_index = next((i for i, line in enumerate(lines) if (m := entry.match(line)) and m.group(2) == "t5"), None)
    if t5_index is None:
        return None
    indent = entry.match(lines[t5_index]).group(1)
    title_line = re.compile(rf"^{indent}  title: (.*)$")

    def sibling(i: int) -> tuple[str, int] | None:  # (title, lines taken) of the page entry starting at line i
        match = entry.match(lines[i]) if i < len(lines) else None
        if match is None or match.group(1) != indent or i + 1 >= len(lines):
            return None
        title = title_line.match(lines[i + 1].rstrip("\n"))
        return (title.group(1).strip(), 2) if title else None

    first = t5_index
    while first >= 2 and sibling(first - 2) is not None:
        first -= 2
    position = first
    while (page := sibling(position)) is not None and page[0].lower() < DOC_TITLE.lower():
        position += page[1]
    new_entry = [f"{indent}- local: model_doc/{MODEL_TYPE}\n", f"{indent}  title: {DOC_TITLE}\n"]
    return "".join(lines[:position] + new_entry + lines[position:])


def register_doc(root: Path, doc_text: str, result: ExportResult) -> None:
    docs = root / "docs" / "source" / "en"
    if not docs.is_dir():
        result.notes.append(f"{root} has no docs/source/en: the doc page was not exported")
        return
    page = docs / "model_doc" / f"{MODEL_TYPE}.md"
    _write(page, dates_line(doc_text, page), result)
    toctree = docs / "_toctree.yml"
    if not toctree.is_file():
        result.notes.append(f"{toctree} is missing: no table-of-contents entry added")
        return
    new = insert_toctree_entry(toctree.read_text(encoding="utf-8"))
    if new is None:
        result.notes.append(f"{toctree} lists no model_doc/t5 page: no entry added")
    else:
        _edit(toctree, new, result)


def register_in_repo_checks(root: Path, result: ExportResult) -> None:
    """The entries of `utils/check_*.py` that a new model needs, next to T5's (idempotent)."""
    for filename, list_name, entry, t5_entry in REPO_CHECK_ENTRIES:
        path = root / "utils" / filename
        if not path.is_file():
            result.notes.append(f"utils/{filename} is missing: add {entry.strip()} to its {list_name} by hand")
            continue
        text = path.read_text(encoding="utf-8")
        opening = re.search(rf"^{list_name}\s*=\s*[\[{{]\n", text, flags=re.MULTILINE)
        if opening is None:
            raise ExportError(f"utils/{filename} has no `{list_name}` to add {entry.strip()} to")
        if entry in text[opening.end() :]:
            continue
        t5_position = text.find(t5_entry, opening.end())
        position = t5_position + len(t5_entry) if t5_position != -1 else opening.end()
        _edit(path, text[:position] + entry + text[position:], result)


def find_ruff() -> str | None:
    """The ruff executable: on PATH, or beside the running interpreter (an unactivated virtual environment)."""
    beside = Path(sys.executable).parent / "ruff"
    return shutil.which("ruff") or (str(beside) if beside.is_file() else None)


def ruff_fix_and_format(ruff: str, path: Path, text: str) -> str:
    """`text` as `ruff check --fix` and `ruff format` leave it, with the configuration of the tree `path` is in.

    The rewritten imports are no longer in isort's order (relative imports sort apart from absolute ones), and
    transformers' `make style` would re-sort and re-format them: the export writes what `make style` would leave.
    """
    for command in (["check", "--fix", "--exit-zero", "--quiet"], ["format", "--quiet"]):
        proc = subprocess.run(
            [ruff, *command, "--stdin-filename", str(path), "-"],
            input=text,
            capture_output=True,
            text=True,
            cwd=path.parents[1] if path.parents[1].is_dir() else None,
            timeout=300,
        )
        if proc.returncode != 0:
            raise ExportError(f"`ruff {command[0]}` failed on {path.name}: {proc.stderr.strip()[-2000:]}")
        text = proc.stdout
    return text


def dates_line(doc_text: str, page: Path) -> str:
    """`doc_text` with the dates line `utils/add_dates.py` wants for a model added now.

    The added date is the day of the first export into this tree (kept when the page is exported again, so that the
    export stays idempotent), as add_dates writes today's date for a model that is not yet on transformers' main.
    """
    match = DATES_LINE.search(doc_text)
    if match is None:
        raise ExportError(f"{DOC_SRC.name} has no `*This model was released on YYYY-MM-DD ...*` line")
    added = datetime.date.today().isoformat()
    if page.is_file():
        previous = re.search(r"added to Hugging Face Transformers on (\d{4}-\d{2}-\d{2})\.\*", page.read_text("utf-8"))
        added = previous.group(1) if previous else added
    line = f"*This model was released on {match.group('released')} and added to Hugging Face Transformers on {added}.*"
    return doc_text[: match.start()] + line + doc_text[match.end() :]


# --------------------------------------------------------------------------------------------------------------------
# The export


# Test modules of the plugin's own tools, which stay in the plugin, with the reason.
PLUGIN_TESTS = {
    "test_convert_t5.py": "tests the conversion command line of the plugin (`python -m fat5...`)",
    "test_packing.py": "tests the plugin's packing collator (`fat5.DataCollatorWithPacking`) with the kernels",
    "test_initialization_flash_t5.py": "tests the initialisation of every plugin head against upstream T5",
    "test_checkpoint_compat.py": (
        "checks the reference implementation's checkpoints against outputs it recorded, fixtures of this repository "
        "(tests/fixtures/reference_fat5) that upstream would host on the Hub"
    ),
}


def exported_test_files() -> tuple[list[Path], list[str]]:
    """The test modules of tests/models/flash_t5 that make sense in-tree, and the reasons for the others."""
    keep, left_out = [], []
    for path in sorted(TESTS_SRC.glob("test_*.py")):
        if path.name.startswith("test_kernel") or _imports_kernels(ast.parse(path.read_text(encoding="utf-8"))):
            left_out.append(f"tests/models/flash_t5/{path.name}: tests the Triton kernels, which are not exported")
        elif path.name in PLUGIN_TESTS:
            left_out.append(f"tests/models/flash_t5/{path.name}: {PLUGIN_TESTS[path.name]}")
        else:
            keep.append(path)
    return keep, left_out


def export(transformers_root: Path) -> ExportResult:
    """Writes FAT5 into the transformers source tree at `transformers_root` (idempotent); see the module docstring."""
    root = Path(transformers_root).resolve()
    version = check_tree(root)
    result = ExportResult(root=root, version=version)
    package = root / "src" / "transformers"

    # Everything is rewritten before anything is written: a file the export cannot handle leaves the tree untouched.
    cache_renamed = tree_renamed_cache(package)
    model_files = {
        name: rewrite_model_file((MODEL_SRC / name).read_text(encoding="utf-8"), name, cache_renamed)
        for name in MODEL_FILES
    }
    conversion = checkpoint_conversion_sources()
    lazy_modules = [name[:-3] for name in MODEL_FILES if name.startswith(("configuration_", "modeling_"))]
    model_files["__init__.py"] = model_init(lazy_modules)
    test_paths, test_left_out = exported_test_files()
    test_files = {}
    for path in test_paths:
        test_files[path.name], dropped = rewrite_test_file(path.read_text(encoding="utf-8"), path.name)
        result.left_out += [f"{path.name}::{name}: runs the fat5 (Triton) attention" for name in dropped]
    result.left_out += test_left_out
    doc_text = rewrite_doc_page(DOC_SRC.read_text(encoding="utf-8")) if DOC_SRC.is_file() else None
    result.left_out.append(KERNELS_NOTE)

    model_dir = package / "models" / MODEL_TYPE
    tests_dir = root / "tests" / "models" / MODEL_TYPE
    ruff = find_ruff()
    if ruff is None:
        result.notes.append("ruff is not installed: run `make style` in the tree before committing the export")
    else:
        model_files = {name: ruff_fix_and_format(ruff, model_dir / name, text) for name, text in model_files.items()}
        test_files = {name: ruff_fix_and_format(ruff, tests_dir / name, text) for name, text in test_files.items()}
    shutil.rmtree(model_dir, ignore_errors=True)  # no stale file of an earlier export survives
    for name, content in model_files.items():
        _write(model_dir / name, content, result)

    shutil.rmtree(tests_dir, ignore_errors=True)
    _write(tests_dir / "__init__.py", "", result)
    for name, content in test_files.items():
        _write(tests_dir / name, content, result)

    register_in_auto_mappings(package, result)
    register_in_models_init(package, result)
    register_checkpoint_conversion(package, conversion, ruff, result)
    register_in_repo_checks(root, result)
    if doc_text is not None:
        register_doc(root, doc_text, result)
    else:
        result.notes.append(f"{DOC_SRC} is missing: no doc page exported")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Export FAT5 (model, auto mappings, tests, docs) into a transformers source tree (>=5.17,<6).",
    )
    parser.add_argument(
        "transformers_src", type=Path, help="root of the transformers checkout (holds src/transformers)"
    )
    args = parser.parse_args(argv)
    try:
        result = export(args.transformers_src)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Exported FAT5 into transformers {result.version} at {result.root}")
    for path in result.written:
        print(f"  wrote  {path.relative_to(result.root)}")
    for path in result.edited:
        print(f"  edited {path.relative_to(result.root)}")
    if not result.edited:
        print("  (the tree's registration files already had FAT5's entries)")
    for note in result.notes:
        print(f"note: {note}")
    for item in result.left_out:
        print(f"left out: {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
