"""Dependencies point one way: api/ → mmrag/ ← indexer/; mmrag/ never imports FastAPI, Typer, api or indexer."""

from __future__ import annotations

import ast
from pathlib import Path

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
