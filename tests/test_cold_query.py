"""A one-shot query (the CLI's `mmrag search`, `mmrag ask`) loads only the models it uses: those of the retrievers
the query runs that the collection holds vectors of. A BM25-only search loads none and imports no torch; the
rankings are the same as those of a process that loaded every model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.cli import app
from mmrag import Settings, build_services, load_image, search
from mmrag.errors import ConfigError
from tests.conftest import cli_environment
from tests.factories import make_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def indexed_without_colpali(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A collection indexed with ColPali off (its pages have CLIP, text and BM25 data, no ColPali vectors); ColPali
    is on again for the queries that follow."""
    cli_environment(monkeypatch, tmp_path, database_url)
    files = make_corpus(tmp_path / "corpus", images=3, pdfs=2)
    monkeypatch.setenv("MMRAG_EMBEDDERS__COLPALI__ENABLED", "false")
    indexed = CliRunner().invoke(app, ["index", str(tmp_path / "corpus")])
    assert indexed.exit_code == 0, indexed.output
    monkeypatch.delenv("MMRAG_EMBEDDERS__COLPALI__ENABLED")
    return files


def _ranking(results: list) -> list[tuple[int, float]]:
    return [(result.page_id, round(result.score, 9)) for result in results]


def test_a_query_loads_only_the_models_it_uses(indexed_without_colpali: dict[str, Path]) -> None:
    cold = build_services(Settings())
    warm = build_services(Settings())
    try:
        lexical = search(cold, "default", text="invoice number 1001", retrievers=["lexical"])
        assert lexical and lexical[0].path.endswith("doc0.pdf")
        assert cold.embedders(()).models == {} and cold.embedders(()).off == {}  # BM25 needs no model

        fused = search(cold, "default", text="invoice number 1001")
        loaded = cold.embedders(())
        # CLIP runs for a text query; the collection holds no ColPali vectors, and the dense text retriever weighs 0
        # in fusion by default: neither is loaded, nor counted as off.
        assert set(loaded.models) == {"clip"} and loaded.off == {}
        assert "clip" in fused[0].scores and "lexical" in fused[0].scores

        everything = warm.embedders()  # a process with every model loaded (the service), ColPali included
        assert {"clip", "colpali", "text"} <= set(everything.models)
        assert _ranking(search(warm, "default", text="invoice number 1001")) == _ranking(fused)
        assert _ranking(search(warm, "default", text="invoice number 1001", retrievers=["lexical"])) == _ranking(
            lexical
        )

        # Loading them all later keeps those loaded already and adds the rest.
        clip_before = loaded.models["clip"]
        assert cold.embedders().models["clip"] is clip_before and "colpali" in cold.embedders().models
    finally:
        cold.close()
        warm.close()


def test_an_image_query_on_a_collection_without_image_vectors_says_why(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_environment(monkeypatch, tmp_path, database_url)
    files = make_corpus(tmp_path / "corpus", images=2, pdfs=0)
    monkeypatch.setenv("MMRAG_EMBEDDERS__CLIP__ENABLED", "false")
    assert CliRunner().invoke(app, ["index", str(tmp_path / "corpus")]).exit_code == 0
    monkeypatch.delenv("MMRAG_EMBEDDERS__CLIP__ENABLED")
    services = build_services(Settings())
    try:
        picture = load_image(files["img0"], max_pixels=services.settings.ingest.max_pixels)
        with pytest.raises(ConfigError, match="the collection holds no vectors of it"):
            search(services, "default", image=picture)
        assert "clip" not in services.embedders(()).models
    finally:
        services.close()


def test_a_bm25_search_from_the_command_line_imports_no_torch(indexed_without_colpali: dict[str, Path]) -> None:
    # A fresh interpreter, as a user's shell starts one: what the CLI imports for a BM25 search is what it costs.
    script = (
        "import sys\n"
        "from indexer.cli import main\n"
        "sys.argv = ['mmrag', 'search', 'invoice number 1001', '-r', 'lexical', '-k', '3']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, capture_output=True,
        text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "doc0.pdf" in done.stdout
    assert "torch imported: False" in done.stdout
