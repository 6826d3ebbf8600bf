"""The package facade: a sorted __all__ whose every name resolves, and `import mmrag` stays light."""

from __future__ import annotations

import subprocess
import sys

import mmrag


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert mmrag.__all__ == sorted(mmrag.__all__)
    for name in mmrag.__all__:
        assert getattr(mmrag, name) is not None, name
    assert mmrag.search is __import__("mmrag.retrieval", fromlist=["search"]).search


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        mmrag.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("mmrag.no_such_name resolved")


def test_importing_the_facade_loads_no_model_library() -> None:
    code = "import sys, mmrag, mmrag.config; print(sorted(m for m in ('torch', 'transformers', 'faiss', 'fastapi') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
