"""search(): filters (kind, path prefix, metadata, indexed time), pagination, weighted fusion, several collections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from mmrag.config import DatabaseSettings, EmbedderSettings, IngestSettings, RetrievalSettings, Settings
from mmrag.indexing import collection_writer, delete_documents, run_index
from mmrag.retrieval import RetrieverHits, fuse, retrieved_pages, search
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.store import repository
from mmrag.store.db import refresh_statistics, transaction
from mmrag.types import Hit, SearchFilters
from tests.factories import make_image, make_pdf


@pytest.fixture
def services(tmp_path: Path, database_url: str, tiny_embedders: Embedders) -> Services:
    settings = Settings(
        data_dir=tmp_path / "data",
        database=DatabaseSettings(url=database_url),
        embedders=EmbedderSettings(profile="tiny-random"),
        ingest=IngestSettings(workers=0, ocr="never"),
        retrieval=RetrievalSettings(depth=2),  # shallow, so filters must make search dig deeper
    )
    services = build_services(settings, embedders=tiny_embedders)
    corpus = tmp_path / "corpus"
    # Eight one-page PDFs that all match "quarterly report", with a growing number of repeats so BM25 ranks them.
    for i in range(8):
        folder = "finance" if i % 2 else "legal"
        make_pdf(corpus / folder / f"r{i}.pdf", [" ".join(["quarterly report"] * (i + 1)) + f" filler {i}"])
    make_image(corpus / "photos" / "p0.png", 0)
    run_index(services, [corpus])
    with transaction(services.sessions) as session:
        for path in (corpus / "finance" / "r1.pdf", corpus / "legal" / "r6.pdf"):
            found = repository.find_path(session, 1, str(path.resolve()))
            repository.set_user_metadata(session, found.document_id, {"team": "audit", "year": "2024"})
    yield services
    services.close()


def lexical(services: Services, **kwargs: object) -> list[str]:
    hits = search(services, "default", text="quarterly report", retrievers=["lexical"], **kwargs)
    return [Path(hit.path).name for hit in hits]


def test_ranking_and_pagination(services: Services) -> None:
    everything = lexical(services, k=8)
    assert everything == [f"r{i}.pdf" for i in range(7, -1, -1)]  # more repeats, higher BM25
    pages = [lexical(services, k=3, offset=offset) for offset in (0, 3, 6)]
    assert sum(pages, []) == everything  # pages tile the ranking: no gaps, no overlaps
    assert lexical(services, k=3, offset=8) == []


def test_filters_dig_deeper_than_the_first_ranking(services: Services) -> None:
    # depth=2 and k=1 fetch 5 hits first; r0 is last of 8, so finding it needs a deeper second round.
    assert lexical(services, k=1, filters=SearchFilters(path_prefix=str(Path(services.storage_dir).parent / "corpus" / "legal" / "r0"))) == ["r0.pdf"]
    assert lexical(services, k=8, filters=SearchFilters(path_prefix=str(Path(services.storage_dir).parent / "corpus" / "finance"))) == [
        "r7.pdf", "r5.pdf", "r3.pdf", "r1.pdf"
    ]
    assert lexical(services, k=8, filters=SearchFilters(metadata={"team": "audit"})) == ["r6.pdf", "r1.pdf"]
    assert lexical(services, k=8, filters=SearchFilters(metadata={"team": "audit", "year": "2023"})) == []
    assert lexical(services, k=8, filters=SearchFilters(kind="image")) == []
    hits = search(services, "default", text="quarterly report", k=20, filters=SearchFilters(kind="image"))
    assert [Path(h.path).name for h in hits] == ["p0.png"]  # only the image, found by the CLIP text tower
    now = datetime.now(UTC)
    assert len(lexical(services, k=8, filters=SearchFilters(indexed_after=now - timedelta(hours=1)))) == 8
    assert lexical(services, k=8, filters=SearchFilters(indexed_before=now - timedelta(hours=1))) == []


def test_a_narrow_filter_s_pages_are_all_the_multi_vector_store_ranks(services: Services) -> None:
    """The local multi-vector store searches among the pages a narrow filter allows (protocols.SearchesWithin):
    with depth 2, its ranking holds the two audit pages and nothing else."""
    import numpy as np

    from mmrag.retrieval import WITHIN_MAX_PAGES, retrieve

    audit = SearchFilters(metadata={"team": "audit"})
    with services.sessions() as session:
        allowed = repository.filtered_page_ids(session, 1, audit, limit=WITHIN_MAX_PAGES)
    assert allowed is not None and len(allowed) == 2
    rankings = {r.retriever: r.hits for r in retrieve(services, 1, text="quarterly report", depth=2,
                                                        within=np.asarray(allowed))}
    assert {hit.page_id for hit in rankings["colpali"]} == set(allowed)
    hits = search(services, "default", text="quarterly report", k=5, retrievers=["colpali"], filters=audit)
    assert sorted(Path(hit.path).name for hit in hits) == ["r1.pdf", "r6.pdf"]


def test_weighted_fusion_keeps_per_retriever_scores() -> None:
    strong = RetrieverHits("lexical", [Hit(1, 9.0), Hit(2, 5.0)])
    weak = RetrieverHits("text", [Hit(2, 0.9), Hit(1, 0.8)])
    even = fuse([strong, weak], RetrievalSettings(weights={"lexical": 1.0, "text": 1.0}))
    assert even[0][1] == pytest.approx(even[1][1])  # symmetric ranks, equal weights: a tie
    weighted = fuse([strong, weak], RetrievalSettings(weights={"lexical": 1.0, "text": 0.25}))
    assert [page for page, _, _ in weighted] == [1, 2]
    assert weighted[0][2] == {"lexical": 9.0, "text": 0.8}


def test_several_collections_and_answerer_input(services: Services, tmp_path: Path) -> None:
    other = tmp_path / "other"
    make_pdf(other / "memo.pdf", ["quarterly report " * 20])
    run_index(services, [other], collection="second")
    both = search(services, ["default", "second"], text="quarterly report", retrievers=["lexical"], k=3)
    # fused scores are rank-based, so collections interleave by rank: each one's best comes first
    assert {Path(h.path).name for h in both[:2]} == {"memo.pdf", "r7.pdf"}
    only_default = search(services, "default", text="quarterly report", retrievers=["lexical"], k=20)
    assert "memo.pdf" not in {Path(h.path).name for h in only_default}
    pages = retrieved_pages(services, both)
    assert all(page.image_path is not None and page.image_path.is_file() for page in pages)
    assert all("quarterly report" in page.text for page in pages)


def test_candidate_multivector_search_matches_exact_when_candidates_cover_the_collection(
    services: Services,
) -> None:
    exact = search(services, "default", text="quarterly report", retrievers=["colpali"], k=5)
    services.settings.index.multivector_search = "candidates"
    try:
        scalable = search(services, "default", text="quarterly report", retrievers=["colpali"], k=5)
        candidates = services.collections.derived.candidate_index(1, "colpali")
        assert candidates is not None and len(candidates) == 9
        assert services.collections.derived.candidate_index(1, "colpali") is candidates  # kept while the store is unchanged
        store = services.collections.stores(1).get("colpali")
        store.remove([int(store.ids()[0])])
        assert services.collections.derived.candidate_index(1, "colpali") is candidates and len(candidates) == 8  # updated after a change
    finally:
        services.settings.index.multivector_search = "exact"
    assert [h.page_id for h in scalable] == [h.page_id for h in exact]
    assert [h.scores["colpali"] for h in scalable] == pytest.approx([h.scores["colpali"] for h in exact], abs=1e-4)


def test_the_candidate_index_is_saved_and_another_process_loads_it_reading_no_token(
    services: Services, tiny_embedders: Embedders, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmrag.derived
    from mmrag.index.multivector import ShardedMultiVectorStore

    monkeypatch.setattr(mmrag.derived, "CANDIDATES_SAVE_MIN_PAGES", 0)
    built = services.collections.derived.candidate_index(1, "colpali")
    assert built is not None and not services.collections.derived.candidates_path(1, "colpali").exists()  # built here; a search saves nothing
    with collection_writer(services, 1, "default"):
        pass  # the collection's writer (a job or a delete) as it ends
    assert services.collections.derived.candidates_path(1, "colpali").is_file() and services.collections.derived.candidate_index(1, "colpali") is built  # saved by the writer
    read: list[int] = []
    tokens = ShardedMultiVectorStore.tokens
    monkeypatch.setattr(ShardedMultiVectorStore, "tokens", lambda store, page_id: read.append(page_id) or tokens(
        store, page_id))
    other = build_services(services.settings, embedders=tiny_embedders)  # the query service starting
    try:
        loaded = other.collections.derived.candidate_index(1, "colpali")
        assert loaded is not None and len(loaded) == len(built) and read == []
        query = np.random.default_rng(0).normal(size=(4, built.dim)).astype(np.float32)
        assert list(loaded.candidates(query, 9)) == list(built.candidates(query, 9))
    finally:
        other.close()


def test_a_candidate_index_saved_before_they_were_named_by_retriever_is_loaded_then_replaced(
    services: Services, tiny_embedders: Embedders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection from before candidates-<retriever>.npz has its index as candidates.npz: a reader loads it
    (reading no token), and the writer's next save replaces it with the new name."""
    import mmrag.derived
    from mmrag.index.multivector import ShardedMultiVectorStore

    derived = services.collections.derived
    store = services.collections.stores(1).get("colpali")
    legacy = services.collections.directory(1) / "candidates.npz"
    derived.candidate_index(1, "colpali").save(legacy, source=store.uid)  # as the previous release saved it
    read: list[int] = []
    tokens = ShardedMultiVectorStore.tokens
    monkeypatch.setattr(ShardedMultiVectorStore, "tokens", lambda store, page_id: read.append(page_id) or tokens(
        store, page_id))
    other = build_services(services.settings, embedders=tiny_embedders)  # the query service after the upgrade
    try:
        loaded = other.collections.derived.candidate_index(1, "colpali")
        assert loaded is not None and len(loaded) == 9 and read == []
        assert not other.collections.derived.candidates_path(1, "colpali").exists()  # a reader wrote nothing
        monkeypatch.setattr(mmrag.derived, "CANDIDATES_SAVE_MIN_PAGES", -1)
        monkeypatch.setattr(mmrag.derived, "CANDIDATES_SAVE_SHARE", -1.0)
        with collection_writer(other, 1, "default"):
            other.collections.stores(1)  # the collection's next writer (its stores open), as it ends
        assert other.collections.derived.candidates_path(1, "colpali").is_file() and not legacy.exists()
    finally:
        other.close()


def test_the_bm25_index_stays_loaded_and_follows_other_writers(
    services: Services, tmp_path: Path, tiny_embedders: Embedders
) -> None:
    """The query service keeps its BM25 index between queries and reads no page from SQL while nothing changed;
    a job or a delete in another process (another Services on the same database and data dir) is seen at the next
    query, through the collection's generation."""
    from sqlalchemy import event

    from mmrag.index.lexical import Bm25Index

    statements: list[str] = []
    event.listen(services.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    index = services.collections.derived.lexical(1)
    # The job that filled the collection marked its index current with the collection's generation: the first
    # query loads it without reading the id of every page with text from SQL.
    assert statements and not any("pages.text !=" in sql for sql in statements)
    statements.clear()
    assert services.collections.derived.lexical(1) is index
    assert lexical(services, k=8) == [f"r{i}.pdf" for i in range(7, -1, -1)]
    # Only the hits' pages were read (describe_pages), not the collection's pages with text (text_page_ids).
    assert statements and not any("pages.text !=" in sql for sql in statements)

    other = build_services(services.settings, embedders=tiny_embedders)  # as `mmrag index` beside `mmrag serve`
    try:
        extra = make_pdf(tmp_path / "later" / "r8.pdf", ["quarterly report " * 12])
        run_index(other, [extra.parent])
        statements.clear()
        assert lexical(services, k=1) == ["r8.pdf"] and len(services.collections.derived.lexical(1)) == len(index) + 1
        assert not any("pages.text !=" in sql for sql in statements)  # that job marked its index current
        r8_pages = set(services.collections.derived.lexical(1).ids().tolist()) - set(index.ids().tolist())
        delete_documents(other, "default", paths=[str(extra)])
        statements.clear()
        assert lexical(services, k=1) == ["r7.pdf"]
        # The delete moved the generation: looked at again, and r8's page deleted from the index and the saved one.
        assert len(r8_pages) == 1 and len(services.collections.derived.lexical(1)) == len(index)
        assert not r8_pages & set(services.collections.derived.lexical(1).ids().tolist())
        assert not r8_pages & set(Bm25Index.saved_ids(services.collections.derived.lexical_dir(1)).tolist())
        # The delete (the writer) saved it marked current with its generation: no id read by this query either.
        assert not any("pages.text !=" in sql for sql in statements)
        # It was saved marked with the delete's generation: another process's first query reads no id either.
        statements.clear()
        event.listen(other.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        assert other.collections.derived.lexical(1).fingerprint == services.collections.derived.lexical(1).fingerprint
        assert statements and not any("pages.text !=" in sql for sql in statements)
    finally:
        other.close()


def _hit_lookup_plan(services: Services, page_ids: list[int]) -> list[str]:
    """SQLite's plan for describe_pages over these ids, as the search runs it."""
    from sqlalchemy import event

    statements: list[tuple[str, object]] = []

    def remember(_connection, _cursor, sql, params, *_) -> None:  # noqa: ANN001
        statements.append((sql, params))

    event.listen(services.engine, "before_cursor_execute", remember)
    with services.sessions() as session:
        assert len(repository.describe_pages(session, page_ids)) == len(page_ids)
    event.remove(services.engine, "before_cursor_execute", remember)
    sql, params = statements[-1]
    with services.engine.connect() as connection:
        return [row[3] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]


def test_statistics_keep_the_hit_lookup_on_the_hits_page_ids(tmp_path: Path, tiny_embedders: Embedders) -> None:
    """Without statistics SQLite drives the hits' page lookup from the documents' status index, a scan of every
    document (20 ms a query at 50k pages); with them, from the hits' page ids. A job ends by taking them."""
    from bench.query import fill_collection

    settings = Settings(data_dir=tmp_path / "data", database=DatabaseSettings(url=f"sqlite:///{tmp_path / 'p.db'}"),
                        ingest=IngestSettings(workers=0, ocr="never"))
    services = build_services(settings, embedders=tiny_embedders)
    try:
        fill_collection(services, 3000, words_per_page=5, vocabulary=100)  # straight into SQL, as a bulk job would
        hits = list(range(1, 3000, 60))  # 50 hits, a search's depth
        assert _hit_lookup_plan(services, hits)[0].startswith("SEARCH documents USING COVERING INDEX")
        refresh_statistics(services.engine)
        assert _hit_lookup_plan(services, hits)[0].startswith("SEARCH pages USING INTEGER PRIMARY KEY")

        make_pdf(tmp_path / "corpus" / "d.pdf", ["one page"])
        with services.engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM sqlite_stat1")
        run_index(services, [tmp_path / "corpus"], collection="another")  # the filled one has no page images
        with services.engine.connect() as connection:
            analyzed = {row[0] for row in connection.exec_driver_sql("SELECT tbl FROM sqlite_stat1")}
        assert {"pages", "documents", "document_paths"} <= analyzed
    finally:
        services.close()


def test_a_delete_flags_the_pages_in_bm25_and_reads_no_page_text(services: Services) -> None:
    """A delete is applied to the saved index as flagged rows (a new commit naming the same segment), without
    reading any page's text back from SQL: a rebuild would read and analyze every page's. The ranking is that of
    an index over the pages left."""
    from sqlalchemy import event

    from mmrag.index.lexical import CURRENT_FILE, Bm25Index

    directory = services.collections.derived.lexical_dir(1)
    assert len(services.collections.derived.lexical(1)) == 8
    segments = sorted(path.name for path in directory.glob("seg-*") if path.is_dir())
    statements: list[str] = []
    event.listen(services.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    delete_documents(services, "default", paths=[str(_corpus(services) / "legal" / "r0.pdf")])
    assert len(services.collections.derived.lexical(1)) == 7
    assert [sql for sql in statements if "pages.text" in sql] == [  # the ids of pages with text, not their text
        sql for sql in statements if sql.startswith("SELECT pages.id \nFROM") and "pages.text !=" in sql
    ]
    assert sorted(path.name for path in directory.glob("seg-*") if path.is_dir()) == segments
    commit = (directory / CURRENT_FILE).read_text()
    assert len(list(directory.glob("seg-*.deleted-*.npy"))) == 1 and Bm25Index.load(directory).segment_sizes() == [7]
    assert sorted(lexical(services, k=8)) == sorted(f"r{i}.pdf" for i in range(1, 8))
    with services.sessions() as session:
        rebuilt = Bm25Index()
        rebuilt.rebuild(repository.page_texts(session, 1))
    for query in ("quarterly report", "report 3", "invoice"):
        assert services.collections.derived.lexical(1).search(query, 8) == rebuilt.search(query, 8)
    assert (directory / CURRENT_FILE).read_text() == commit  # nothing changed since: nothing saved


def _corpus(services: Services) -> Path:
    return Path(services.storage_dir).parent / "corpus"


def test_a_search_does_not_wait_for_the_candidate_index_to_update(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from mmrag.index.candidates import PooledCandidateIndex

    assert services.collections.derived.candidate_index(1, "colpali") is not None
    store = services.collections.stores(1).get("colpali")
    store.remove([int(store.ids()[0])])  # the next call updates the index
    updating, release = threading.Event(), threading.Event()
    update = PooledCandidateIndex.update

    def slow_update(index: PooledCandidateIndex, changed_store) -> tuple[int, int]:  # noqa: ANN001
        updating.set()
        release.wait(30)
        return update(index, changed_store)

    monkeypatch.setattr(PooledCandidateIndex, "update", slow_update)
    updater = threading.Thread(target=services.collections.derived.candidate_index, args=(1, "colpali"))
    updater.start()
    try:
        assert updating.wait(30)
        began = time.monotonic()
        hits = search(services, "default", text="quarterly report", retrievers=["lexical", "colpali"], k=3)
        assert hits and time.monotonic() - began < 10  # served while the update still reads pages (held for 30 s)
    finally:
        release.set()
        updater.join(30)
    assert len(services.collections.derived.candidate_index(1, "colpali")) == 8


def test_fusion_gives_equal_scores_one_rank() -> None:
    from mmrag.config import RetrievalSettings
    from mmrag.retrieval import RetrieverHits, fuse
    from mmrag.types import Hit

    settings = RetrievalSettings(rrf_k=10, weights={"lexical": 1.0, "dates": 1.0})
    dates = RetrieverHits("dates", [Hit(7, 2.0), Hit(8, 2.0), Hit(9, 1.0)])  # two pages hold the full date
    fused = {page_id: score for page_id, score, _ in fuse([dates], settings)}
    assert fused[7] == fused[8] == 1 / 11 and fused[9] == 1 / 12  # dense ranks: 1, 1, 2
    lexical = RetrieverHits("lexical", [Hit(8, 5.0), Hit(7, 4.0)])
    assert [page_id for page_id, _, _ in fuse([lexical, dates], settings)] == [8, 7, 9]
