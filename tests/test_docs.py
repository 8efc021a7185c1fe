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
"""Runs the code blocks of the documentation, so that the docs stay honest.

Every fenced code block of each page below either runs or is preceded by a marker with its reason::

    <!-- no-test: downloads a checkpoint from the Hub -->
    ```py
    ...
    ```

The Python blocks (```py / ```python) of a page run in order, in one namespace (like a notebook), from the repository
root. A block in another language (bash, ...) must carry a marker.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_PAGES = ["docs/source/en/model_doc/flash_t5.md", "docs/source/en/flash_t5_usage.md"]
# What `.ci/run` does before the README's install commands: strict mode, the repository root, pip without progress bars.
CI_SETUP = ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "export PIP_QUIET=1"]
PYTHON_LANGUAGES = {"py", "python"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
MARKER = re.compile(r"^[ \t]*<!--\s*no-test(?::\s*(?P<reason>.*?))?\s*-->[ \t]*$")


@dataclass
class CodeBlock:
    page: str
    line: int  # 1-based line of the first line of code
    language: str
    code: str
    skip_reason: str | None


def extract_code_blocks(text: str, page: str = "<doc>") -> list[CodeBlock]:
    """The fenced code blocks of a markdown page, with the reason of the `<!-- no-test: ... -->` marker before each."""
    lines = text.splitlines()
    blocks, pending_marker, i = [], None, 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        fence = FENCE.match(lines[i])
        if marker:
            if pending_marker is not None:
                raise ValueError(f"{page}:{pending_marker[0]}: `no-test` marker not followed by a code block")
            reason = (marker.group("reason") or "").strip()
            if not reason:
                raise ValueError(f"{page}:{i + 1}: a `no-test` marker must give its reason: <!-- no-test: why -->")
            pending_marker = (i + 1, reason)
        elif fence:
            indent, start = fence.group("indent"), i + 1
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            if i == len(lines):
                raise ValueError(f"{page}:{start}: unterminated code block")
            code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[start:i])
            language = fence.group("lang").lower()
            blocks.append(CodeBlock(page, start + 1, language, code, pending_marker and pending_marker[1]))
            pending_marker = None
        elif lines[i].strip() and pending_marker is not None:
            raise ValueError(f"{page}:{pending_marker[0]}: `no-test` marker not followed by a code block")
        i += 1
    if pending_marker is not None:
        raise ValueError(f"{page}:{pending_marker[0]}: `no-test` marker not followed by a code block")
    return blocks


def test_extract_code_blocks():
    text = "\n".join(
        [
            "# Title",
            "```py",
            "x = 1",
            "```",
            "<!-- no-test: needs a GPU -->",
            "```python",
            "y = 2",
            "```",
            "",
            "```bash",
            "echo hi",
            "```",
        ]
    )
    blocks = extract_code_blocks(text)
    assert [(b.line, b.language, b.code, b.skip_reason) for b in blocks] == [
        (3, "py", "x = 1", None),
        (7, "python", "y = 2", "needs a GPU"),
        (11, "bash", "echo hi", None),
    ]
    with pytest.raises(ValueError, match="must give its reason"):
        extract_code_blocks("<!-- no-test -->\n```py\nx\n```")
    with pytest.raises(ValueError, match="not followed by a code block"):
        extract_code_blocks("<!-- no-test: why -->\nsome text\n```py\nx\n```")


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_code_blocks_run(page, monkeypatch):
    path = REPO_ROOT / page
    blocks = extract_code_blocks(path.read_text(encoding="utf-8"), page)
    runnable = [b for b in blocks if b.skip_reason is None]
    not_python = [
        f"{page}:{b.line} ({b.language or 'no language'})" for b in runnable if b.language not in PYTHON_LANGUAGES
    ]
    assert not not_python, (
        "code blocks that are not Python must say why they are not tested (<!-- no-test: reason --> before the block): "
        + ", ".join(not_python)
    )
    assert runnable, f"{page} has no code block that the tests run"

    monkeypatch.chdir(REPO_ROOT)
    namespace = {"__name__": "__doc__"}
    for block in runnable:
        # Pad with newlines so that tracebacks give the line number in the markdown page.
        source = "\n" * (block.line - 1) + block.code
        try:
            exec(compile(source, str(path), "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the code block at {page}:{block.line} failed: {type(e).__name__}: {e}") from e


def shell_commands(script: str) -> list[str]:
    """The command lines of a shell script: no blank lines, comments or shebang."""
    return [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]


def readme_install_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n## Install\n" in readme, "the README has no `## Install` section"
    section = readme.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in extract_code_blocks(section, "README.md, Install") if b.language == "bash"]
    assert len(blocks) == 1, "the README's Install section must have exactly one bash block: the commands CI runs"
    return shell_commands(blocks[0].code)


def test_ci_runs_the_readme_install_commands():
    """`.ci/run` installs and tests exactly as the README tells a new user to, so that the two cannot drift apart."""
    ci_commands = shell_commands((REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert ci_commands == CI_SETUP + readme_install_commands()
