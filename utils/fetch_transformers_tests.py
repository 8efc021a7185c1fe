#!/usr/bin/env python
"""Make transformers' common model tests importable for FAT5's test-suite.

transformers publishes `tests/test_modeling_common.py` (`ModelTesterMixin`, `ids_tensor`, ...) and
`tests/test_configuration_common.py` (`ConfigTester`) in its source distribution on PyPI, but not the three modules
they import (`tests/exporters/test_export.py`, `tests/generation/test_utils.py`, `tests/utils/test_configuration_utils.py`).

This script:

1. finds the installed transformers version (or takes `--version`),
2. downloads the matching sdist once (`pip download`, falling back to the PyPI JSON API) into
   `.cache/transformers_tests/sdist/` -- no network at all once it is there,
3. extracts the common test modules (and whatever sibling test modules they import that the sdist has) into the
   package `.cache/transformers_tests/<version>/transformers_tests/`,
4. copies FAT5's own stand-ins for the missing modules (`tests/transformers_stubs/`) beside them.

The package is named `transformers_tests` (not `tests`) so that it never clashes with FAT5's own `tests/` directory;
the upstream files only use relative imports between themselves, so nothing in them needs rewriting.
`tests/conftest.py` puts `.cache/transformers_tests/<version>` on `sys.path`, so a test module writes::

    from transformers_tests.test_modeling_common import ModelTesterMixin, ids_tensor

Usage::

    python utils/fetch_transformers_tests.py                  # installed transformers version
    python utils/fetch_transformers_tests.py --version 5.17.0 # e.g. to prepare a cache for another machine
    FAT5_TRANSFORMERS_SDIST=/path/transformers-X.tar.gz python utils/fetch_transformers_tests.py  # fully offline
"""

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
# Overridable (e.g. to share one cache between checkouts); the default is git-ignored.
CACHE_ROOT = Path(os.environ.get("FAT5_TRANSFORMERS_TESTS_CACHE", REPO_ROOT / ".cache" / "transformers_tests"))
STUBS_DIR = REPO_ROOT / "tests" / "transformers_stubs"
PACKAGE_NAME = "transformers_tests"
# Entry points we need; everything they import relatively is resolved from the sdist or from our stubs.
ENTRY_MODULES = ("test_modeling_common.py", "test_configuration_common.py")
PYPI_JSON_URL = "https://pypi.org/pypi/transformers/json"
# Bumped when the layout of an extracted version folder changes, to force a re-extraction.
LAYOUT_VERSION = 1


class FetchError(RuntimeError):
    pass


def installed_transformers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError as e:
        raise FetchError("transformers is not installed in this environment") from e


def version_root(version: str) -> Path:
    """The folder to put first on `sys.path` for `version`: it holds the `transformers_tests` package."""
    return CACHE_ROOT / version


def _sdist_name(version: str) -> str:
    return f"transformers-{version}.tar.gz"


def _download_with_pip(version: str, dest: Path) -> Path | None:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "--quiet", f"transformers=={version}", "-d", str(dest),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"[fetch_transformers_tests] pip download failed: {e}", file=sys.stderr)
        return None
    found = dest / _sdist_name(version)
    if proc.returncode != 0 or not found.is_file():
        tail = [line[:300] for line in (proc.stderr or proc.stdout).strip().splitlines()[-2:]]
        print("[fetch_transformers_tests] pip download failed:\n  " + "\n  ".join(tail), file=sys.stderr)
        return None
    return found


def _download_with_urllib(version: str, dest: Path) -> Path | None:
    try:
        with urllib.request.urlopen(PYPI_JSON_URL, timeout=120) as resp:
            data = json.load(resp)
        files = [f for f in data["releases"].get(version, []) if f.get("packagetype") == "sdist"]
        if not files:
            print(f"[fetch_transformers_tests] PyPI lists no sdist for transformers {version}", file=sys.stderr)
            return None
        info = files[0]
        url = urllib.parse.urljoin(PYPI_JSON_URL, info["url"])
        target = dest / _sdist_name(version)
        with urllib.request.urlopen(url, timeout=600) as resp, open(target, "wb") as out:
            shutil.copyfileobj(resp, out)
    except Exception as e:  # noqa: BLE001 - any network/parse problem just means "this way did not work"
        print(f"[fetch_transformers_tests] download from the PyPI JSON API failed: {e!r}", file=sys.stderr)
        return None
    expected = info.get("digests", {}).get("sha256")
    if expected and hashlib.sha256(target.read_bytes()).hexdigest() != expected:
        print("[fetch_transformers_tests] sha256 mismatch for the downloaded sdist", file=sys.stderr)
        return None
    return target


def ensure_sdist(version: str) -> Path:
    """Path of the cached sdist for `version`, downloading it if (and only if) it is not cached yet."""
    sdist_dir = CACHE_ROOT / "sdist"
    cached = sdist_dir / _sdist_name(version)
    if cached.is_file():
        return cached
    override = os.environ.get("FAT5_TRANSFORMERS_SDIST")
    sdist_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=sdist_dir) as tmp:
        tmp = Path(tmp)
        if override:
            got = Path(override)
            if not got.is_file():
                raise FetchError(f"FAT5_TRANSFORMERS_SDIST={override} is not a file")
        else:
            print(f"[fetch_transformers_tests] downloading the transformers {version} sdist from PyPI ...")
            got = _download_with_pip(version, tmp) or _download_with_urllib(version, tmp)
        if got is None:
            raise FetchError(
                f"could not download the source distribution of transformers {version} from PyPI "
                f"({_sdist_name(version)}). Check the network, or download it by hand and run\n"
                f"  FAT5_TRANSFORMERS_SDIST=/path/to/{_sdist_name(version)} python utils/fetch_transformers_tests.py"
                f" --version {version}"
            )
        staged = tmp / (_sdist_name(version) + ".part")
        shutil.copyfile(got, staged)
        os.replace(staged, cached)  # atomic: concurrent callers see either nothing or the whole file
    return cached


def _relative_imports(source: str, module_path: str) -> set[str]:
    """Package-relative file paths (e.g. `generation/test_utils.py`) that `source` imports with `from .x import`."""
    package_parts = module_path.split("/")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package_parts[: len(package_parts) - (node.level - 1)]
            if node.module:
                found.add("/".join(base + node.module.split(".")) + ".py")
            else:  # `from . import x`
                found.update("/".join(base + [alias.name]) + ".py" for alias in node.names)
    return found


def _stub_files() -> dict[str, bytes]:
    return {
        p.relative_to(STUBS_DIR).as_posix(): p.read_bytes()
        for p in sorted(STUBS_DIR.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def _write_if_changed(path: Path, content: bytes) -> None:
    if path.is_file() and path.read_bytes() == content:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    os.replace(tmp, path)  # atomic for readers in other (xdist) processes


def _add_package_inits(package_dir: Path) -> None:
    for sub in [package_dir, *[p for p in package_dir.rglob("*") if p.is_dir() and p.name != "__pycache__"]]:
        init = sub / "__init__.py"
        if not init.exists():
            init.write_bytes(b"")


def _extract(version: str, sdist: Path, stubs: dict[str, bytes]) -> Path:
    prefix = f"transformers-{version}/tests/"
    with tarfile.open(sdist, "r:gz") as tar:
        members = {m.name[len(prefix) :]: m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)}
        wanted, todo = {}, list(ENTRY_MODULES)
        for rel, content in stubs.items():  # the stand-ins may import upstream modules too
            todo.extend(_relative_imports(content.decode("utf-8"), rel))
        while todo:
            rel = todo.pop()
            if rel in wanted or rel in stubs:
                continue
            if rel not in members:
                raise FetchError(
                    f"transformers {version}'s common tests import `tests/{rel}`, which is neither in its sdist nor "
                    f"stubbed in {STUBS_DIR.relative_to(REPO_ROOT)}/ -- add a stand-in there."
                )
            wanted[rel] = tar.extractfile(members[rel]).read()
            todo.extend(_relative_imports(wanted[rel].decode("utf-8"), rel))
    root = version_root(version)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{version}-"))
    package_dir = staging / PACKAGE_NAME
    for rel, content in {**wanted, **stubs}.items():
        (package_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (package_dir / rel).write_bytes(content)
    # `tests/__init__.py` is not in the sdist either; test_configuration_common.py needs it to exist
    # (`direct_transformers_import(Path(__file__).parent)` executes it).
    _add_package_inits(package_dir)
    manifest = {"layout": LAYOUT_VERSION, "version": version, "sdist": sdist.name, "from_sdist": sorted(wanted)}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    try:
        os.rename(staging, root)
    except OSError:  # another process finished first (or a stale folder is in the way): keep whichever is valid
        shutil.rmtree(staging, ignore_errors=True)
        if not _is_complete(root):
            shutil.rmtree(root, ignore_errors=True)
            return _extract(version, sdist, stubs)
    return root


def _is_complete(root: Path) -> bool:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("layout") == LAYOUT_VERSION and all(
        (root / PACKAGE_NAME / rel).is_file() for rel in manifest.get("from_sdist", ())
    )


def ensure_transformers_tests(version: str | None = None) -> Path:
    """Make `.cache/transformers_tests/<version>/transformers_tests` ready and return its parent folder.

    Idempotent and offline when the cache is already there; the project's stand-ins are re-synced every time (cheap).
    """
    version = version or installed_transformers_version()
    stubs = _stub_files()
    root = version_root(version)
    if not _is_complete(root):
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
        root = _extract(version, ensure_sdist(version), stubs)
    for rel, content in stubs.items():
        _write_if_changed(root / PACKAGE_NAME / rel, content)
    return root


def unpack_sdist(dest: Path, version: str | None = None) -> Path:
    """Unpacks the whole (cached, else downloaded) sdist of `version` into `dest`; returns the tree's root.

    The root is `dest/transformers-<version>`: a transformers source tree (`src/transformers`, `tests/`, `setup.py`)
    that `utils/export_to_transformers.py` can export FAT5 into.
    """
    version = version or installed_transformers_version()
    sdist = ensure_sdist(version)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)  # noqa: S202 - our own cached sdist, checked against PyPI's sha256 when downloaded
    root = dest / f"transformers-{version}"
    if not (root / "src" / "transformers").is_dir():
        raise FetchError(f"{sdist.name} did not unpack to {root}/src/transformers")
    return root


def install_stand_ins(tests_dir: Path) -> None:
    """Makes the `tests/` folder of an unpacked sdist importable as transformers' own test package: copies FAT5's
    stand-ins for the modules the sdist lacks and adds the `__init__.py` files the sdist lacks (in `tests/` and in every
    folder under it that holds Python files, e.g. `tests/models/<model>/`)."""
    tests_dir = Path(tests_dir)
    for rel, content in _stub_files().items():
        _write_if_changed(tests_dir / rel, content)
    folders = {tests_dir}
    for path in tests_dir.rglob("*.py"):
        folder = path.parent
        while folder != tests_dir and tests_dir in folder.parents:
            folders.add(folder)
            folder = folder.parent
    for folder in sorted(folders):
        init = folder / "__init__.py"
        if not init.exists():
            init.write_bytes(b"")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", help="transformers version (default: the installed one)")
    parser.add_argument("--force", action="store_true", help="re-extract (the downloaded sdist is kept)")
    args = parser.parse_args(argv)
    version = args.version or installed_transformers_version()
    if args.force:
        shutil.rmtree(version_root(version), ignore_errors=True)
    try:
        root = ensure_transformers_tests(version)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
