"""A search's narrow filters reach Qdrant: the pages SQL says pass them are the only ones each Qdrant store ranks
(protocols.SearchesWithin), so a filtered search gets the best allowed pages however far down the whole
collection's ranking they are; SQL still has the last word on every hit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmrag.config import IndexSettings, QdrantSettings
from mmrag.index import build_vector_index, open_multivector_store
from mmrag.index.qdrant_index import close_clients
from mmrag.index.qdrant_lexical import QdrantLexicalIndex
from mmrag.indexing import run_index
from mmrag.protocols import SearchesWithin
from mmrag.retrieval import WITHIN_MAX_PAGES, retrieve, search
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.store import repository
from mmrag.types import SearchFilters
from tests.contract.oracles import MaxSimOracle, VectorOracle, clustered_vectors, queries_near, topic_pages
from tests.factories import make_corpus
from tests.test_pipeline import make_settings


@pytest.fixture(params=["edge", "client"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param
    close_clients()


def test_each_qdrant_store_ranks_the_given_pages_alone(tmp_path: Path, engine: str) -> None:
    settings = IndexSettings(backend="qdrant", qdrant=QdrantSettings(path=tmp_path / "q", embedded=engine))
    vectors_dir = tmp_path / "collections" / "1" / "vectors"
    ids = np.arange(300, dtype=np.int64) * 3 + 1
    allowed = ids[::7]
    vectors = clustered_vectors(300, 16, seed=2)
    index = build_vector_index(settings, vectors_dir, name="clip", model="m", dim=16)
    index.add(ids, vectors)
    oracle = VectorOracle()
    oracle.add(allowed, vectors[::7])
    assert isinstance(index, SearchesWithin)
    for query, hits in zip(queries_near(vectors, 10), index.search_within(queries_near(vectors, 10), 5, allowed),
                           strict=True):
        assert [hit.page_id for hit in hits] == [page_id for page_id, _ in oracle.search(query, 5)]

    pages, _, centres = topic_pages(120, 16, seed=3)
    store = open_multivector_store(settings, vectors_dir / "colpali", model="c", dim=16)
    page_ids = list(range(1000, 1120))
    store.add(page_ids, pages)
    kept = np.array(page_ids[::5], dtype=np.int64)
    maxsim = MaxSimOracle(as_stored=True)
    maxsim.add(kept.tolist(), pages[::5])
    for topic in range(4):
        query = pages[topic * 9][:4]
        got = [hit.page_id for hit in store.search_within(query, 5, kept)]
        assert got == [page_id for page_id, _ in maxsim.search(query, 5)]

    lexical = QdrantLexicalIndex.open(settings, vectors_dir)
    lexical.add([(1, "invoice total 12.50"), (2, "invoice total 99.00"), (3, "menu soup"), (4, "invoice")])
    assert [hit.page_id for hit in lexical.search("invoice total", 3)][:2] != [4]
    assert {hit.page_id for hit in lexical.search_within("invoice total", 3, np.array([3, 4]))} == {4}
    assert lexical.search_within("invoice", 3, np.array([], dtype=np.int64)) == []


@pytest.fixture
def services(tmp_path: Path, database_url: str, tiny_embedders: Embedders, engine: str) -> Iterator[Services]:
    index = IndexSettings(backend="qdrant", multivector_search="candidates", qdrant=QdrantSettings(embedded=engine))
    services = build_services(make_settings(tmp_path, database_url, index=index), embedders=tiny_embedders)
    make_corpus(tmp_path / "corpus", images=4, pdfs=2)
    run_index(services, [tmp_path / "corpus"])
    yield services
    services.close()


def test_a_filtered_search_hands_the_allowed_pages_to_every_qdrant_store(services: Services) -> None:
    only_images = SearchFilters(kind="image")
    with services.sessions() as session:
        allowed = repository.filtered_page_ids(session, 1, only_images, limit=WITHIN_MAX_PAGES)
        assert allowed is not None and len(allowed) == 4
        assert repository.filtered_page_ids(session, 1, only_images, limit=3) is None  # too many: filtered after
        assert repository.filtered_page_ids(session, 1, SearchFilters(metadata={"team": "none"}), limit=10) == []
    rankings = {r.retriever: r.hits for r in retrieve(services, 1, text="invoice number 1001", depth=50,
                                                        within=np.asarray(allowed))}
    # the image stores rank the four photos alone; BM25 finds no photo (they hold no text)
    assert {hit.page_id for hit in rankings["clip"]} == {hit.page_id for hit in rankings["colpali"]} == set(allowed)
    assert rankings["lexical"] == []
    with services.sessions() as session:
        pdf_pages = repository.filtered_page_ids(session, 1, SearchFilters(kind="pdf"), limit=10)
    rankings = {r.retriever: r.hits for r in retrieve(services, 1, text="invoice number 1001", depth=2,
                                                        within=np.asarray(pdf_pages))}
    for name in ("clip", "colpali", "lexical"):
        assert rankings[name] and {hit.page_id for hit in rankings[name]} <= set(pdf_pages), name
    # through search(): only photos, all four, even with the text naming a PDF's words
    hits = search(services, "default", text="invoice number 1001", k=10, filters=only_images)
    assert len(hits) == 4 and all(hit.path.endswith(".png") for hit in hits)
    assert search(services, "default", text="invoice", k=10, filters=SearchFilters(metadata={"team": "none"})) == []
