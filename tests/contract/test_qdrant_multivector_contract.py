"""The MultiVectorStore contract for QdrantMultiVectorStore on both embedded engines (Qdrant's own, qdrant-edge, and
qdrant-client's local mode), checked against a brute-force numpy MaxSim oracle, searched exactly and through its
centroid prefetch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmrag.config import IndexSettings, QdrantSettings
from mmrag.errors import IndexError_, ManifestMismatchError
from mmrag.index import open_multivector_store
from mmrag.index.qdrant_index import QdrantMultiVectorStore, close_clients
from mmrag.protocols import MultiVectorStore
from tests.contract.oracles import MaxSimOracle, topic_pages
# The local store's suite's pages and queries (the same data, so the two suites check the same thing)
from tests.contract.test_multivector_contract import DIM, MODEL, N_PAGES, corpus, page_ids, queries  # noqa: F401

K = 10
CANDIDATES = 40  # a third of the pages: the prefetch must find the top 10 among them


@pytest.fixture(params=["edge", "client"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param
    close_clients()


@pytest.fixture(params=["exact", "candidates"])
def search(request: pytest.FixtureRequest, engine: str) -> str:
    return f"{request.param}:{engine}"


def open_store(directory: Path, search: str, *, model: str = MODEL, dim: int = DIM, read_only: bool = False,
               reopen: bool = True) -> MultiVectorStore:
    """The store of `directory`; `reopen` starts a new client first, so the engine reads what it persisted."""
    if reopen:
        close_clients()
    mode, engine = search.split(":")
    settings = IndexSettings(
        backend="qdrant", multivector_search=mode, multivector_candidates=CANDIDATES,
        qdrant=QdrantSettings(path=directory / "qdrant", embedded=engine),
    )
    return open_multivector_store(settings, directory / "colpali", model=model, dim=dim, read_only=read_only)


def assert_matches(store: MultiVectorStore, oracle: MaxSimOracle, exact: MaxSimOracle, queries, search: str,
                   k: int = K) -> None:
    """Exact search: the oracle's ranking on what is stored (fp16). Candidates: recall@k >= 0.95 over the queries.
    Every score returned is the page's MaxSim (within fp16 error of the float32 truth)."""
    recalls = []
    for query in queries:
        hits = store.search(query, k)
        expected = oracle.search(query, k)
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)
        assert len({hit.page_id for hit in hits}) == len(hits)
        truth = dict(exact.search(query, len(exact.pages)))
        for hit in hits:
            assert hit.score == pytest.approx(truth[hit.page_id], rel=1e-2, abs=1e-2)
        if search.startswith("exact"):
            # Qdrant's engine scores float16 storage with the query in float16 too (~4e-5 relative off the oracle),
            # so pages whose scores are that close may trade places: each rank holds a page as good as the oracle's.
            stored = dict(oracle.search(query, len(oracle.pages)))
            np.testing.assert_allclose([stored[hit.page_id] for hit in hits], [score for _, score in expected],
                                       rtol=1e-4, atol=5e-4)
            np.testing.assert_allclose(scores, [score for _, score in expected], rtol=1e-4, atol=5e-4)
            assert len(hits) == len(expected)
        else:
            recalls.append(len({hit.page_id for hit in hits} & {p for p, _ in expected}) / max(1, len(expected)))
    if recalls:
        assert np.mean(recalls) >= 0.95, f"recall@{k} {np.mean(recalls):.3f}"


def filled(tmp_path: Path, search: str, corpus) -> tuple[MultiVectorStore, MaxSimOracle, MaxSimOracle]:
    pages, _, _ = corpus
    store = open_store(tmp_path, search)
    oracle, exact = MaxSimOracle(as_stored=True), MaxSimOracle(as_stored=False)
    ids = page_ids(N_PAGES)
    for start in range(0, N_PAGES, 16):
        store.add(ids[start : start + 16], pages[start : start + 16])
        oracle.add(ids[start : start + 16], pages[start : start + 16])
        exact.add(ids[start : start + 16], pages[start : start + 16])
    return store, oracle, exact


def test_implements_the_protocol(tmp_path: Path, search: str) -> None:
    store = open_store(tmp_path, search)
    assert isinstance(store, MultiVectorStore) and isinstance(store, QdrantMultiVectorStore)


def test_empty_store(tmp_path: Path, search: str, queries) -> None:
    store = open_store(tmp_path, search)
    assert len(store) == 0 and len(store.ids()) == 0
    assert store.search(queries[0], K) == []
    assert store.stats() == {"pages": 0, "tombstoned_pages": 0}


def test_search_matches_the_oracle(tmp_path: Path, search: str, corpus, queries) -> None:
    store, oracle, exact = filled(tmp_path, search, corpus)
    assert len(store) == N_PAGES
    np.testing.assert_array_equal(store.ids(), sorted(page_ids(N_PAGES)))
    assert_matches(store, oracle, exact, queries, search)
    if search.startswith("exact"):
        assert_matches(store, oracle, exact, queries, search, k=N_PAGES + 5)  # every page once


def test_pages_about_the_query_topic_rank_first(tmp_path: Path, search: str, corpus, queries) -> None:
    pages, page_topics, _ = corpus
    store, _, _ = filled(tmp_path, search, corpus)
    ids = page_ids(N_PAGES)
    assert all(page_topics[ids.index(hit.page_id)] == 3 for hit in store.search(queries[3], 5))


def test_remove_and_re_add(tmp_path: Path, search: str, corpus, queries) -> None:
    pages, _, _ = corpus
    store, oracle, exact = filled(tmp_path, search, corpus)
    ids = page_ids(N_PAGES)
    version = store.version
    removed = ids[::2]
    assert store.remove(removed) == len(removed)
    oracle.remove(removed)
    exact.remove(removed)
    assert store.version > version
    assert store.remove(removed[:3]) == 0 and store.remove([10**9]) == 0
    assert len(store) == N_PAGES - len(removed)
    gone = set(removed)
    for query in queries:
        assert not gone & {hit.page_id for hit in store.search(query, N_PAGES)}
    assert_matches(store, oracle, exact, queries, search)
    # Re-adding a page replaces it.
    replacement = [pages[0][:2] * -1.0, topic_pages(1, DIM, seed=99)[0][0]]
    store.add([ids[1], ids[3]], replacement)
    oracle.add([ids[1], ids[3]], replacement)
    exact.add([ids[1], ids[3]], replacement)
    assert len(store) == N_PAGES - len(removed)
    assert_matches(store, oracle, exact, queries, search)
    store.compact()  # Qdrant's optimizer reclaims deleted points itself: nothing changes
    assert_matches(store, oracle, exact, queries, search)


def test_reopen_gives_the_same_results_and_tokens(tmp_path: Path, search: str, corpus, queries) -> None:
    pages, _, _ = corpus
    store, oracle, exact = filled(tmp_path, search, corpus)
    store.remove(page_ids(N_PAGES)[:7])
    oracle.remove(page_ids(N_PAGES)[:7])
    exact.remove(page_ids(N_PAGES)[:7])
    store.flush()
    uid = store.uid
    reopened = open_store(tmp_path, search)
    assert reopened.uid == uid and len(reopened) == N_PAGES - 7
    np.testing.assert_array_equal(reopened.ids(), sorted(page_ids(N_PAGES)[7:]))
    assert_matches(reopened, oracle, exact, queries, search)
    np.testing.assert_array_equal(reopened.tokens(page_ids(N_PAGES)[9]), pages[9].astype(np.float16))
    assert page_ids(N_PAGES)[9] in reopened and page_ids(N_PAGES)[0] not in reopened
    with pytest.raises(KeyError):
        reopened.tokens(page_ids(N_PAGES)[0])


def test_reopening_with_another_model_or_dim_raises(tmp_path: Path, search: str, corpus) -> None:
    pages, _, _ = corpus
    store = open_store(tmp_path, search)
    store.add(page_ids(3), pages[:3])
    with pytest.raises(ManifestMismatchError, match=r"(?s)'test-colpali'.*'other'"):
        open_store(tmp_path, search, model="other")
    with pytest.raises(ManifestMismatchError, match=r"(?s)\b24\b.*\b128\b"):
        open_store(tmp_path, search, dim=128)
    assert len(open_store(tmp_path, search)) == 3


def test_a_reader_sees_nothing_before_its_writer_made_the_store_then_everything(
    tmp_path: Path, search: str, corpus, queries
) -> None:
    pages, _, _ = corpus
    with pytest.raises(IndexError_, match="does not exist yet"):
        open_store(tmp_path, search, read_only=True)
    writer = open_store(tmp_path, search)
    reader = open_store(tmp_path, search, read_only=True, reopen=False)
    writer.add(page_ids(10), pages[:10])
    assert reader.catch_up() and len(reader) == 10  # one collection, read as it is now
    assert {hit.page_id for hit in reader.search(queries[0], N_PAGES)} == set(page_ids(10))


def test_writes_are_durable_when_they_return(tmp_path: Path, search: str, corpus) -> None:
    """No flush point: what a killed job wrote is there when it resumes, for recovery to compare with SQL."""
    pages, _, _ = corpus
    store = open_store(tmp_path, search)
    store.add(page_ids(20), pages[:20])  # never flushed
    del store
    np.testing.assert_array_equal(open_store(tmp_path, search).ids(), page_ids(20))


def test_add_rejects_malformed_pages(tmp_path: Path, search: str, corpus) -> None:
    pages, _, _ = corpus
    store = open_store(tmp_path, search)
    with pytest.raises(ValueError):
        store.add([1], [pages[0][:, :-1]])  # wrong dim
    with pytest.raises(ValueError):
        store.add([1], [np.zeros((0, DIM), np.float32)])
    with pytest.raises(ValueError):
        store.add([1, 2], [pages[0]])
    with pytest.raises(ValueError):
        store.add([1], [np.full((2, DIM), 1e6, np.float32)])  # overflows fp16
    with pytest.raises(ValueError):
        store.search(pages[0][0], K)  # a query is a (tokens, dim) matrix
    assert len(store) == 0
