#!/usr/bin/env python
"""Generates `modeling_flash_t5.py` from `modular_flash_t5.py` with transformers' modular converter, or checks that
they agree.

    python utils/modular_flash_t5.py PATH/TO/transformers          # regenerate the modeling file
    python utils/modular_flash_t5.py PATH/TO/transformers --check  # exit status 1 (and a diff) if it is stale

The modular file is the source of the model: it inherits from T5 what FAT5 shares with it, and the converter writes
the single-file model transformers asks of every in-tree model (`docs/source/en/modular_transformers.md`). The
converter, `utils/modular_model_converter.py`, ships with transformers' repository, not its wheel: PATH/TO/transformers
is a checkout of it whose converter matches the installed transformers (see the README's "Proposing the model
upstream"). This interpreter needs libcst and ruff. The generated file is written in the plugin's form (absolute
`transformers` imports), its header naming the modular file by its path in this repository.
"""

import argparse
import difflib
import importlib
import subprocess
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO_ROOT / "src" / "fat5" / "models" / "flash_t5"
MODULAR_FILE = MODEL_DIR / "modular_flash_t5.py"
MODELING_FILE = MODEL_DIR / "modeling_flash_t5.py"
PACKAGE = "fat5"


def load_converter(checkout: Path):
    """transformers' modular converter from `checkout`, set up to convert a file of the `fat5` package."""
    utils = Path(checkout).resolve() / "utils"
    if not (utils / "modular_model_converter.py").is_file():
        raise SystemExit(f"{checkout} has no utils/modular_model_converter.py: it is not a transformers checkout.")
    sys.path.insert(0, str(utils))
    converter = importlib.import_module("modular_model_converter")
    # The converter knows external packages by the files of theirs it must not read; FAT5 has none.
    converter.EXCLUDED_EXTERNAL_FILES.setdefault(PACKAGE, [])
    return converter


def plugin_form(generated: str) -> str:
    """The converter's output as this repository keeps it: the header names the modular file by its path here, not by
    the absolute path of this checkout, and the config comes from its sibling module."""
    generated = generated.replace(str(MODULAR_FILE), MODULAR_FILE.relative_to(REPO_ROOT).as_posix())
    return generated.replace(
        "from ...models.flash_t5.configuration_flash_t5 import", "from .configuration_flash_t5 import"
    )


def ruff_format(text: str) -> str:
    """`text` fixed and formatted by ruff with this repository's configuration, as `make style` would."""
    for command in (["check", "--fix", "--quiet"], ["format", "--quiet"]):
        text = subprocess.run(
            ["ruff", *command, "--stdin-filename", str(MODELING_FILE), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
        ).stdout
    return text


def generate(checkout: Path) -> str:
    converter = load_converter(checkout)
    converted = converter.convert_modular_file(str(MODULAR_FILE), source_library=PACKAGE)
    if set(converted) != {"modeling"}:
        raise SystemExit(
            f"The converter wrote {sorted(converted)} from {MODULAR_FILE.name}; expected the modeling only."
        )
    return ruff_format(plugin_form(converted["modeling"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a checkout of transformers' repository (for its utils/)")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    generated = generate(args.checkout)
    current = MODELING_FILE.read_text()
    if not args.check:
        if generated != current:
            MODELING_FILE.write_text(generated)
        print(f"{MODELING_FILE.relative_to(REPO_ROOT)}: {'regenerated' if generated != current else 'up to date'}")
        return
    if generated != current:
        sys.stdout.writelines(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                generated.splitlines(keepends=True),
                f"{MODELING_FILE.name} (on disk)",
                f"{MODELING_FILE.name} (from {MODULAR_FILE.name})",
            )
        )
        raise SystemExit(f"{MODELING_FILE.name} is stale: run `python utils/modular_flash_t5.py {args.checkout}`.")
    print(f"{MODELING_FILE.relative_to(REPO_ROOT)}: up to date with {MODULAR_FILE.name}")


if __name__ == "__main__":
    main()
