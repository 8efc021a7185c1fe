#!/usr/bin/env python
"""Exports FAT5 into a transformers checkout and reports what transformers' own checks find that only FAT5 causes.

    python utils/check_upstream.py PATH/TO/transformers [--checks ruff_check,repo,...] [--skip-tests]

PATH/TO/transformers is a git checkout of transformers (it has `utils/checkers.py`, the runner of `make check-repo`)
with no FAT5 in it yet. The command runs every checker of that runner once before the export and once after it, then
the exported tests (`pytest tests/models/flash_t5`) in the tree, and prints one line per check:

    PASS  ruff_check
    FAIL  repo: <the complaints that appear only after the export>

A checker that already fails before the export passes here as long as the export adds no complaint of its own; the
exported tests are SKIPped when the tree cannot collect T5's own tests (a failure there says nothing about FAT5). The
exit status is 1 when anything fails. Checkers run with the interpreter running this script (its `bin/` first on
PATH, so that its `ruff` and `ty` are used) and with the tree's `src/` first on PYTHONPATH: that interpreter needs
the packages the checkers import (torch, libcst, GitPython, ruff, ty, ...). The checkers that call the network
(add_dates asks GitHub and the Hub) see what they see offline; docs/upstream_checks.md keeps the last output.
"""

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKER_TIMEOUT_S = 1800
TESTS_TIMEOUT_S = 3600
MAX_COMPLAINTS_SHOWN = 3
# Lines of the checkers' runner that change from run to run without saying anything about the tree (matched once
# durations read `<t>`): its verdict line says "FAILED (<t>)" when it ran the checker and "... (cached)" when it
# reused an earlier result for unchanged files.
# Traceback frames go too: their line numbers move when the export adds a line to the checker's own file (check_repo.py,
# check_config_attributes.py), and the exception line below them says what the complaint is.
NOISE = re.compile(
    r"^(?:\$ .*|(?:OK|FAILED) \(<t>\)|.* \(cached\)|Traceback \(most recent call last\):|File \".*\", line \d+.*|[~^ ]+)$"
)
DURATION = re.compile(r"\b\d+(?:\.\d+)?\s*(?:s|ms|seconds)\b")


class NotATransformersCheckout(ValueError):
    pass


@dataclass
class CheckRun:
    returncode: int
    output: str


def check_checkout(root: Path) -> Path:
    """`root`, resolved; `NotATransformersCheckout` when it is not a git checkout of transformers without FAT5."""
    root = Path(root).resolve()
    if not (root / "src" / "transformers" / "__init__.py").is_file() or not (root / "utils" / "checkers.py").is_file():
        raise NotATransformersCheckout(
            f"{root} is not a transformers checkout: it needs src/transformers/__init__.py and utils/checkers.py "
            "(a git clone of transformers; the sdist has no utils/)"
        )
    if not (root / ".git").exists():
        raise NotATransformersCheckout(f"{root} is not a git checkout: add_dates and the `make` checks read git")
    if (root / "src" / "transformers" / "models" / "flash_t5").exists():
        raise NotATransformersCheckout(
            f"{root} already has src/transformers/models/flash_t5: the run before the export must see a tree without "
            "FAT5 (use a fresh checkout or worktree)"
        )
    return root


def complaint_lines(output: str) -> list[str]:
    """The lines of a checker's output that say something about the tree (durations and runner lines dropped)."""
    lines = []
    for line in output.splitlines():
        line = DURATION.sub("<t>", line.strip())
        if line and not NOISE.match(line):
            lines.append(line)
    return lines


def new_complaints(before: str, after: str) -> list[str]:
    """The lines of `after` that `before` does not have (as many times as they are new), in `after`'s order."""
    remaining = Counter(complaint_lines(before))
    new = []
    for line in complaint_lines(after):
        if remaining[line]:
            remaining[line] -= 1
        else:
            new.append(line)
    return new


def verdict(name: str, before: CheckRun, after: CheckRun) -> tuple[bool, str]:
    """(passed, the line to print) for one checker run before and after the export."""
    if after.returncode == 0:
        return True, f"PASS  {name}"
    added = new_complaints(before.output, after.output)
    if before.returncode != 0 and not added:
        return True, f"PASS  {name} (fails before the export too, with the same complaints)"
    shown = added[:MAX_COMPLAINTS_SHOWN] or complaint_lines(after.output)[-MAX_COMPLAINTS_SHOWN:]
    shown = shown or [f"exit status {after.returncode}, no output"]
    more = f" (+{len(added) - len(shown)} more)" if len(added) > len(shown) else ""
    return False, f"FAIL  {name}: " + " | ".join(shown) + more


def _environment(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(root / "src"), env.get("PYTHONPATH", "")] if p)
    env.pop("TRITON_INTERPRET", None)
    return env


def _run(command: list[str], root: Path, timeout: int) -> CheckRun:
    try:
        proc = subprocess.run(
            command,
            cwd=root,
            env=_environment(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        return CheckRun(124, output + f"\ntimed out after {timeout}s")
    return CheckRun(proc.returncode, proc.stdout)


def list_checkers(root: Path) -> list[str]:
    """The names `utils/checkers.py --list` gives: every checker of `make check-repo` and more."""
    run = _run([sys.executable, "utils/checkers.py", "all", "--list"], root, 300)
    names = [line.split()[0] for line in run.output.splitlines() if line.startswith("  ") and line.strip()]
    if run.returncode != 0 or not names:
        raise NotATransformersCheckout(f"`python utils/checkers.py --list` failed in {root}: {run.output[-2000:]}")
    return names


def run_checkers(root: Path, names: list[str]) -> dict[str, CheckRun]:
    runs = {}
    for name in names:
        print(f"  {name} ...", file=sys.stderr, flush=True)
        runs[name] = _run([sys.executable, "utils/checkers.py", name, "--no-cache"], root, CHECKER_TIMEOUT_S)
    return runs


def _load_exporter():
    spec = importlib.util.spec_from_file_location("fat5_export", REPO_ROOT / "utils" / "export_to_transformers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tests_line(run: CheckRun, control: CheckRun) -> tuple[bool, str]:
    """The line for the exported tests; `control` is T5's tests collected in the same tree before the export.

    When the tree cannot even collect T5's tests (its conftest.py against the installed torch, a missing test
    dependency), a failure of FAT5's tests says nothing about FAT5: the line says SKIP and why.
    """
    summary = next((line for line in reversed(run.output.splitlines()) if line.strip()), "no output")
    if run.returncode != 0 and control.returncode != 0:
        errors = [line for line in control.output.splitlines() if line.startswith("E ")] or [summary]
        return True, f"SKIP  pytest tests/models/flash_t5: the tree cannot run T5's tests either: {errors[-1]}"
    if run.returncode == 0:
        return True, f"PASS  pytest tests/models/flash_t5: {summary.strip('= ')}"
    failed = [line for line in run.output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    shown = failed[:MAX_COMPLAINTS_SHOWN] or [summary]
    more = f" (+{len(failed) - len(shown)} more)" if len(failed) > len(shown) else ""
    return False, "FAIL  pytest tests/models/flash_t5: " + " | ".join(shown) + more


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Export FAT5 into a transformers checkout, run transformers' checkers before and after the export "
        "and the exported tests, and print what fails only because of flash_t5."
    )
    parser.add_argument(
        "transformers_checkout", type=Path, help="root of a git checkout of transformers, without FAT5"
    )
    parser.add_argument("--checks", help="comma-separated checker names (default: all of utils/checkers.py --list)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest tests/models/flash_t5")
    args = parser.parse_args(argv)
    try:
        root = check_checkout(args.transformers_checkout)
        names = args.checks.split(",") if args.checks else list_checkers(root)
    except NotATransformersCheckout as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print("checkers before the export:", file=sys.stderr, flush=True)
    before = run_checkers(root, names)
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    control = _run([*pytest, "--collect-only", "tests/models/t5"], root, TESTS_TIMEOUT_S)
    exporter = _load_exporter()
    try:
        result = exporter.export(root)
    except exporter.ExportError as e:
        print(f"FAIL  export: {e}")
        return 1
    print(f"exported FAT5 into transformers {result.version}; checkers after the export:", file=sys.stderr, flush=True)
    after = run_checkers(root, names)

    lines = [verdict(name, before[name], after[name]) for name in names]
    if not args.skip_tests:
        print("pytest tests/models/flash_t5 ...", file=sys.stderr, flush=True)
        lines.append(tests_line(_run([*pytest, "tests/models/flash_t5"], root, TESTS_TIMEOUT_S), control))
    for _, line in lines:
        print(line)
    return 0 if all(passed for passed, _ in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
