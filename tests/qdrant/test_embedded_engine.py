"""The embedded engines serve one process: a second one is refused with a sentence, and the first keeps working."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmrag.config import IndexSettings, QdrantSettings
from mmrag.index import build_vector_index
from mmrag.index.qdrant_index import close_clients

ROOT = Path(__file__).resolve().parents[2]
SECOND = """
import sys
from pathlib import Path
from mmrag.config import IndexSettings, QdrantSettings
from mmrag.errors import IndexError_
from mmrag.index import build_vector_index
settings = IndexSettings(backend="qdrant", qdrant=QdrantSettings(path=Path(sys.argv[1]), embedded=sys.argv[2]))
try:
    build_vector_index(settings, Path(sys.argv[1]).parent / "collections" / "1" / "vectors", name="clip", model="m",
                       dim=4)
except IndexError_ as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.fixture(params=["edge", "client"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param
    close_clients()


def test_a_second_process_is_refused_and_the_first_goes_on(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "qdrant"
    settings = IndexSettings(backend="qdrant", qdrant=QdrantSettings(path=path, embedded=engine))
    index = build_vector_index(settings, tmp_path / "collections" / "1" / "vectors", name="clip", model="m", dim=4)
    index.add(np.array([1, 2]), np.eye(4, dtype=np.float32)[:2])
    second = subprocess.run([sys.executable, "-c", SECOND, str(path), engine], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 3, second.stderr[-2000:]
    assert "in use by another process" in second.stdout and "MMRAG_INDEX__QDRANT__URL" in second.stdout
    index.add(np.array([3]), np.eye(4, dtype=np.float32)[2:3])  # the holder is unharmed
    assert [hit.page_id for hit in index.search(np.eye(4, dtype=np.float32)[2:3], 1)[0]] == [3]
    close_clients()  # let go: now the other process may open it, and finds every write
    reopened = subprocess.run([sys.executable, "-c", SECOND + "\nprint('opened')", str(path), engine], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert reopened.returncode == 0 and "opened" in reopened.stdout, reopened.stderr[-2000:]


@pytest.mark.slow
def test_the_smoke_script_passes_on_the_embedded_engine_and_fails_in_a_sentence_without_a_server(
    tmp_path: Path,
) -> None:
    """scripts/qdrant-smoke as a user runs it; with --path it needs no server, which is how it is checked here."""
    passed = subprocess.run([str(ROOT / "scripts" / "qdrant-smoke"), "--path", str(tmp_path / "qdrant")],
                            capture_output=True, text=True, timeout=300)
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr[-3000:]
    assert "qdrant-smoke: passed" in passed.stdout and "FAIL" not in passed.stdout
    assert passed.stdout.count("\nok   ") >= 6
    down = subprocess.run([str(ROOT / "scripts" / "qdrant-smoke"), "http://127.0.0.1:9"], capture_output=True,
                          text=True, timeout=300)
    assert down.returncode == 1 and "Qdrant server at http://127.0.0.1:9" in down.stdout
    assert "Traceback" not in down.stdout + down.stderr
