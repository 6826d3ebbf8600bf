"""The bulk job, search, delete and crash recovery with every vector in Qdrant (its embedded engine): the same tests
the local stores pass, on both databases, with the collection's stores checked against SQL after each step."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mmrag.config import IndexSettings, QdrantSettings
from mmrag.index.qdrant_index import QdrantIndex, QdrantMultiVectorStore, close_clients
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from tests.test_pipeline import (  # noqa: F401 - collected here, on this module's `services`
    make_settings,
    test_index_reindex_change_delete,
    test_recover_removes_orphans_and_repairs_lost_vectors,
)


@pytest.fixture(params=["exact:edge", "candidates:edge", "candidates:client"])
def services(request: pytest.FixtureRequest, tmp_path: Path, database_url: str,
             tiny_embedders: Embedders) -> Iterator[Services]:
    search, engine = request.param.split(":")
    index = IndexSettings(backend="qdrant", multivector_search=search, multivector_candidates=4,
                          qdrant=QdrantSettings(embedded=engine))
    services = build_services(make_settings(tmp_path, database_url, index=index), embedders=tiny_embedders)
    yield services
    services.close()
    close_clients()


def test_the_stores_are_qdrant_collections_in_the_data_directory(services: Services, tmp_path: Path) -> None:
    from tests.factories import make_corpus
    from mmrag.indexing import run_index

    make_corpus(tmp_path / "corpus", images=2, pdfs=1)
    run_index(services, [tmp_path / "corpus"])
    stores = services.collections.stores(1).by_retriever()
    assert isinstance(stores["clip"], QdrantIndex) and isinstance(stores["text"], QdrantIndex)
    assert isinstance(stores["colpali"], QdrantMultiVectorStore)
    assert {store.name for store in stores.values()} == {"mmrag-c1-clip", "mmrag-c1-text", "mmrag-c1-colpali"}
    assert services.settings.index.qdrant.path == services.settings.data_dir / "qdrant"
    engine = services.settings.index.qdrant.embedded
    layout = {"edge": "collections/mmrag-c1-colpali/shard", "client": "collection/mmrag-c1-colpali"}[engine]
    assert (services.settings.data_dir / "qdrant" / layout).is_dir()
    # BM25 too: no vector or index file of the local backends
    from mmrag.index.qdrant_lexical import QdrantLexicalIndex

    lexical = services.collections.derived.lexical(1)
    assert isinstance(lexical, QdrantLexicalIndex) and lexical.name == "mmrag-c1-lexical" and len(lexical) == 2
    collection_dir = services.settings.data_dir / "collections" / "1"
    assert not list(collection_dir.rglob("*.faiss")) and not (collection_dir / "lexical").exists()


def test_a_collection_moved_to_qdrant_is_filled_by_its_next_job(tmp_path: Path, database_url: str,
                                                              tiny_embedders: Embedders) -> None:
    """The way from the embedded default to Qdrant: set the backend and run the job again. SQL is the truth: the
    vectors Qdrant lacks are embedded again from the stored page images, BM25 is filled from SQL's text, and no
    file is read or indexed twice."""
    from mmrag.indexing import run_index
    from mmrag.retrieval import search
    from tests.factories import make_corpus
    from tests.test_pipeline import assert_stores_agree_with_sql

    make_corpus(tmp_path / "corpus", images=2, pdfs=1)
    local = build_services(make_settings(tmp_path, database_url), embedders=tiny_embedders)
    try:
        assert run_index(local, [tmp_path / "corpus"]).counts["indexed"] == 3
    finally:
        local.close()
    moved = build_services(make_settings(tmp_path, database_url, index=IndexSettings(backend="qdrant")),
                           embedders=tiny_embedders)
    try:
        report = run_index(moved, [tmp_path / "corpus"])
        assert report.counts["indexed"] == 0 and report.counts["unchanged"] == 3
        # every page for clip and colpali (2 photos, 2 PDF pages), the PDF pages with text for the dense text model
        assert report.recovered["repaired_pages"] == 4 + 4 + 2
        assert_stores_agree_with_sql(moved)
        assert isinstance(moved.collections.stores(1).get("colpali"), QdrantMultiVectorStore)
        hits = search(moved, "default", text="invoice number 1001", k=3, retrievers=["lexical"])
        assert hits and hits[0].path.endswith("doc0.pdf") and hits[0].page_number == 1
    finally:
        moved.close()
        close_clients()
