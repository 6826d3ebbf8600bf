"""The scalable multi-vector path and compressed tokens, held to exact MaxSim on structured synthetic pages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.synthetic import make_corpus
from mmrag.index.candidates import PooledCandidateIndex, page_centroids
from mmrag.index.compression import binarize, maxsim, pool_tokens, quantize_int8
from mmrag.index.multivector import ShardedMultiVectorStore


@pytest.fixture(scope="module")
def corpus_store(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    corpus = make_corpus(400, tokens_per_page=64, dim=32)
    store = ShardedMultiVectorStore(Path(tmp_path_factory.mktemp("mv")), 32, "synthetic")
    store.add([i + 1 for i in range(corpus.n_pages)], [tokens for _, tokens in corpus.pages()])
    store.flush()
    return corpus, store


def test_score_subset_equals_exact_search_scores(corpus_store) -> None:  # noqa: ANN001
    corpus, store = corpus_store
    query = corpus.query(17)
    exact = store.search(query, 400)
    chosen = [hit.page_id for hit in exact[5:40:3]]
    subset = store.score_subset(query, chosen + [99_999])  # an unknown id is ignored
    by_id = {hit.page_id: hit.score for hit in exact}
    assert [hit.page_id for hit in subset] == sorted(chosen, key=lambda p: -by_id[p])
    assert all(hit.score == pytest.approx(by_id[hit.page_id], abs=1e-4) for hit in subset)


def test_candidate_search_recalls_exact_top10_and_keeps_exact_scores(corpus_store) -> None:  # noqa: ANN001
    corpus, store = corpus_store
    for hnsw_m in (None, 16):
        index = PooledCandidateIndex.build(store, vectors_per_page=8, hnsw_m=hnsw_m)
        assert len(index) == 400
        recalls = []
        for q in range(20):
            query = corpus.query((q * 31) % 400, seed=q)
            exact = store.search(query, 10)
            approx = index.search(query, store, 10, candidates=80, per_token=128)
            recalls.append(len({h.page_id for h in exact} & {h.page_id for h in approx}) / 10)
            exact_scores = {h.page_id: h.score for h in store.search(query, 400)}
            assert all(h.score == pytest.approx(exact_scores[h.page_id], abs=1e-4) for h in approx)
        assert np.mean(recalls) >= 0.95, (hnsw_m, np.mean(recalls))


def test_page_centroids_are_unit_and_capped_by_tokens() -> None:
    rng = np.random.default_rng(0)
    pages = [rng.normal(size=(n, 16)).astype(np.float32) for n in (3, 40, 40)]
    centroids = page_centroids(pages, 8)
    assert [len(c) for c in centroids] == [3, 8, 8]
    assert all(np.allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5) for c in centroids)


def test_compressed_tokens_stay_close_to_exact_maxsim() -> None:
    corpus = make_corpus(30, tokens_per_page=48, dim=32, seed=4)
    pages = [tokens for _, tokens in corpus.pages()]
    query = corpus.query(3)
    exact = np.array([maxsim(query, page) for page in pages])
    int8 = np.array([maxsim(query, quantize_int8(page).decode()) for page in pages])
    assert np.abs(int8 - exact).max() < 0.05 * np.abs(exact).max()
    pooled = pool_tokens(pages, 2)
    assert all(len(p) <= len(page) // 2 + 1 for p, page in zip(pooled, pages, strict=True))
    pooled_scores = np.array([maxsim(query, page) for page in pooled])
    assert int(np.argmax(pooled_scores)) == int(np.argmax(exact))  # the known item stays on top
    assert binarize(pages[0]).shape == (48, 4)
    assert quantize_int8(pages[0]).nbytes() == 48 * 32 + 48 * 4


def test_exhaustive_candidates_rank_pages_by_maxsim_over_their_centroids(tmp_path: Path) -> None:
    """The exhaustive mode's order is exactly MaxSim over each page's centroids (short pages padded, not lost)."""
    rng = np.random.default_rng(7)
    pages = [rng.normal(size=(n, 16)).astype(np.float32) for n in (2, 5, 30, 30, 64, 9)]
    store = ShardedMultiVectorStore(tmp_path, 16, "m")
    store.add([11, 12, 13, 14, 15, 16], pages)
    index = PooledCandidateIndex.build(store, vectors_per_page=4)
    assert index.mode == "exhaustive" and len(index) == 6
    centroids = page_centroids([store.tokens(i) for i in (11, 12, 13, 14, 15, 16)], 4)
    query = rng.normal(size=(5, 16)).astype(np.float32)
    oracle = [maxsim(query.astype(np.float16).astype(np.float32), c.astype(np.float16).astype(np.float32))
              for c in centroids]  # fmt: skip
    expected = [11 + int(i) for i in np.argsort(-np.asarray(oracle), kind="stable")]
    assert list(index.candidates(query, 6)) == expected
    assert set(index.candidates(query, 3)) == set(expected[:3])
    with pytest.raises(ValueError, match="already indexed"):
        index.add([12], [pages[1]])


def _counting_tokens(store: ShardedMultiVectorStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    read: list[int] = []
    tokens = store.tokens

    def counted(page_id: int) -> np.ndarray:
        read.append(page_id)
        return tokens(page_id)

    monkeypatch.setattr(store, "tokens", counted)
    return read


@pytest.mark.parametrize("hnsw_m", [None, 8])
def test_update_follows_the_store_reading_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hnsw_m: int | None
) -> None:
    rng = np.random.default_rng(3)
    pages = {i: rng.normal(size=(int(rng.integers(3, 40)), 16)).astype(np.float32) for i in range(1, 91)}
    store = ShardedMultiVectorStore(tmp_path / "mv", 16, "m")
    store.add(list(range(1, 61)), [pages[i] for i in range(1, 61)])
    index = PooledCandidateIndex.build(store, vectors_per_page=4, hnsw_m=hnsw_m)
    read = _counting_tokens(store, monkeypatch)
    store.add(list(range(61, 91)), [pages[i] for i in range(61, 91)])
    store.remove(list(range(1, 11)))
    store.add([20, 21], [rng.normal(size=(9, 16)).astype(np.float32) for _ in range(2)])  # again, other tokens
    assert index.update(store) == (32, 10)
    assert sorted(read) == [20, 21, *range(61, 91)]  # the 48 pages unchanged were not read again
    assert len(index) == 80 and index.update(store) == (0, 0)
    fresh = PooledCandidateIndex.build(store, vectors_per_page=4, hnsw_m=hnsw_m)
    for seed in range(5):
        query = np.random.default_rng(seed).normal(size=(6, 16)).astype(np.float32)
        got = index.candidates(query, 80, per_token=400)
        assert not set(got.tolist()) & set(range(1, 11))  # removed pages never come back
        if hnsw_m is None:
            assert list(got) == list(fresh.candidates(query, 80))  # the same centroids, the same order
        else:
            assert set(got.tolist()) <= set(range(11, 91))


def test_update_compacts_slots_and_rereads_a_compacted_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    store = ShardedMultiVectorStore(tmp_path / "mv", 16, "m")
    store.add(list(range(1, 101)), [rng.normal(size=(12, 16)).astype(np.float32) for _ in range(100)])
    index = PooledCandidateIndex.build(store, vectors_per_page=4)
    store.remove(list(range(1, 41)))
    assert index.update(store) == (0, 40)
    assert index._slots == 60  # 40% dead: the slots were compacted
    store.compact()  # renumbers every entry: each page counts as new
    read = _counting_tokens(store, monkeypatch)
    assert index.update(store) == (60, 0) and len(read) == 60 and len(index) == 60
    query = rng.normal(size=(6, 16)).astype(np.float32)
    fresh = PooledCandidateIndex.build(store, vectors_per_page=4)
    assert list(index.candidates(query, 60)) == list(fresh.candidates(query, 60))


@pytest.mark.parametrize("hnsw_m", [None, 8])
def test_a_saved_index_loads_and_updates_reading_only_the_pages_changed_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hnsw_m: int | None
) -> None:
    rng = np.random.default_rng(5)
    store = ShardedMultiVectorStore(tmp_path / "mv", 16, "m")
    store.add(list(range(1, 61)), [rng.normal(size=(20, 16)).astype(np.float32) for _ in range(60)])
    store.flush()
    index = PooledCandidateIndex.build(store, vectors_per_page=4, hnsw_m=hnsw_m)
    store.remove([1, 2])
    index.update(store)  # a dead slot, or a dropped HNSW page, in what is saved
    path = tmp_path / "candidates.npz"
    index.save(path, source=store.uid)
    store.add([61, 62], [rng.normal(size=(20, 16)).astype(np.float32) for _ in range(2)])
    store.remove([3])
    store.flush()
    read = _counting_tokens(store, monkeypatch)
    loaded = PooledCandidateIndex.load(path, store, vectors_per_page=4)
    assert loaded is not None and loaded.mode == index.mode and len(loaded) == 58
    assert loaded.update(store) == (2, 1) and sorted(read) == [61, 62]
    query = rng.normal(size=(6, 16)).astype(np.float32)
    got = loaded.candidates(query, 59, per_token=400)
    assert set(got.tolist()) <= set(range(4, 63)) and not {1, 2, 3} & set(got.tolist())
    if hnsw_m is None:
        fresh = PooledCandidateIndex.build(store, vectors_per_page=4)
        assert list(got) == list(fresh.candidates(query, 59))
    # Not for another store at that path (deleted and indexed again), other options, or a damaged file.
    other = ShardedMultiVectorStore(tmp_path / "other", 16, "m")
    assert PooledCandidateIndex.load(path, other, vectors_per_page=4) is None
    assert PooledCandidateIndex.load(path, store, vectors_per_page=8) is None
    assert PooledCandidateIndex.load(tmp_path / "none.npz", store, vectors_per_page=4) is None
    path.write_bytes(path.read_bytes()[:100])
    assert PooledCandidateIndex.load(path, store, vectors_per_page=4) is None


def test_a_store_keeps_its_uid_across_snapshots_and_reopening(tmp_path: Path) -> None:
    store = ShardedMultiVectorStore(tmp_path / "mv", 16, "m")
    store.add([1], [np.ones((3, 16), dtype=np.float32)])
    store.flush()
    uid = store.uid
    store.remove([1])
    store.compact()  # a new snapshot
    assert store.uid == uid == ShardedMultiVectorStore(tmp_path / "mv", 16, "m", read_only=True).uid
    assert ShardedMultiVectorStore(tmp_path / "new", 16, "m").uid != uid


def test_a_store_from_before_uids_gets_one_at_its_writers_next_flush(tmp_path: Path) -> None:
    from mmrag.index.multivector_codec import OFFSETS_FILE
    from mmrag.index.multivector_codec import SNAPSHOT_HEADER as _HEADER

    store = ShardedMultiVectorStore(tmp_path, 16, "m")
    store.add([1], [np.ones((3, 16), dtype=np.float32)])
    store.flush()
    data = (tmp_path / OFFSETS_FILE).read_bytes()  # rewritten as an older version wrote it: no "store" key
    magic, header_len = _HEADER.unpack_from(data)
    header = json.loads(data[_HEADER.size : _HEADER.size + header_len])
    del header["store"]
    body = json.dumps(header, sort_keys=True).encode()
    (tmp_path / OFFSETS_FILE).write_bytes(_HEADER.pack(magic, len(body)) + body + data[_HEADER.size + header_len :])
    readers = {ShardedMultiVectorStore(tmp_path, 16, "m", read_only=True).uid for _ in range(2)}
    assert len(readers) == 2  # none on disk yet: each process makes its own
    writer = ShardedMultiVectorStore(tmp_path, 16, "m")
    writer.add([2], [np.ones((3, 16), dtype=np.float32)])
    writer.flush()  # a snapshot, not a journal record: it names the writer's uid
    assert ShardedMultiVectorStore(tmp_path, 16, "m", read_only=True).uid == writer.uid
    assert len(ShardedMultiVectorStore(tmp_path, 16, "m", read_only=True)) == 2
