"""Dependencies point one way: api/ → mmrag/ ← indexer/; mmrag/ never imports FastAPI, Typer, api or indexer; and the
layering contracts lint-imports checks in CI fail when an import breaks them."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_LIBRARY = {"api", "indexer", "fastapi", "typer", "starlette", "uvicorn"}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_imports_no_service_or_cli_layer() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_top_levels(path) & FORBIDDEN_IN_LIBRARY)
        for path in (ROOT / "mmrag").rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_indexer_and_api_do_not_import_each_other() -> None:
    for package, other in (("indexer", "api"), ("api", "indexer")):
        for path in (ROOT / package).rglob("*.py"):
            assert other not in _imported_top_levels(path), f"{path} imports {other}"


def _lint_copy(tmp_path: Path, edit: tuple[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """lint-imports (import-linter, as scripts/test runs it in CI) over a copy of the three packages, one file
    changed by `edit` (a path and a line added to it)."""
    for package in ("mmrag", "api", "indexer"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    if edit is not None:
        target = tmp_path / edit[0]
        target.write_text(target.read_text() + f"\n{edit[1]}\n")
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=tmp_path, env=env, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "broken"),
    [
        (("mmrag/types.py", "import fastapi  # noqa"), "mmrag never imports"),  # the library reaches the HTTP edge
        (("mmrag/store/db.py", "import mmrag.retrieval  # noqa"), "mmrag layers"),  # SQL reaches up to a use case
        (("api/deps.py", "import indexer.cli  # noqa"), "api and indexer are independent"),
    ],
)
def test_breaking_a_layering_contract_fails_the_lint(tmp_path: Path, edit: tuple[str, str], broken: str) -> None:
    assert _lint_copy(tmp_path / "clean").returncode == 0
    done = _lint_copy(tmp_path / "broken", edit)
    assert done.returncode != 0 and "BROKEN" in done.stdout and broken in done.stdout, done.stdout[-2000:]
