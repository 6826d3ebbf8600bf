"""The MultiVectorStore contract for ShardedMultiVectorStore, checked against a brute-force numpy MaxSim oracle."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mmrag.errors import IndexError_, ManifestMismatchError
from mmrag.index import journal
from mmrag.index.multivector import ShardedMultiVectorStore
from mmrag.index.multivector_codec import JOURNAL_FILE, OFFSETS_FILE, ShardFiles
from mmrag.protocols import MultiVectorStore
from tests.contract.oracles import MaxSimOracle, topic_pages, topic_query

MODEL = "test-colpali"
DIM = 24
N_PAGES = 120
K = 10

# (shard_rows, chunk_rows): one big shard searched in one chunk, and many small shards searched in small chunks,
# so that page boundaries, shard boundaries and chunk boundaries all get crossed.
LAYOUTS = {"one-shard": (1_000_000, None), "many-shards": (400, 150)}


@pytest.fixture(params=list(LAYOUTS), ids=str)
def layout(request: pytest.FixtureRequest) -> tuple[int, int | None]:
    return LAYOUTS[request.param]


@pytest.fixture(scope="module")
def corpus() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    return topic_pages(N_PAGES, DIM, seed=11)


@pytest.fixture(scope="module")
def queries(corpus) -> list[np.ndarray]:
    _, _, centres = corpus
    return [topic_query(centres, topic % len(centres), n_tokens=5 + topic, seed=topic) for topic in range(12)]


def open_store(directory: Path, layout: tuple[int, int | None], *, model: str = MODEL, dim: int = DIM, **kwargs):
    shard_rows, chunk_rows = layout
    return ShardedMultiVectorStore(directory, dim, model, shard_rows=shard_rows, chunk_rows=chunk_rows, **kwargs)


def page_ids(n: int) -> list[int]:
    return [1000 + 3 * i for i in range(n)]  # SQL-like ids, not row positions


@dataclass
class Checked:
    """A store and the oracles that get every change it gets: one on the fp16 values it keeps, one exact."""

    store: ShardedMultiVectorStore
    as_stored: MaxSimOracle = field(default_factory=lambda: MaxSimOracle(as_stored=True))
    exact: MaxSimOracle = field(default_factory=lambda: MaxSimOracle(as_stored=False))

    def add(self, ids: list[int], pages: list[np.ndarray]) -> None:
        self.store.add(ids, pages)
        self.as_stored.add(ids, pages)
        self.exact.add(ids, pages)

    def remove(self, ids: list[int]) -> int:
        self.as_stored.remove(ids)
        self.exact.remove(ids)
        return self.store.remove(ids)

    def reopened(self, store: ShardedMultiVectorStore) -> Checked:
        return Checked(store, self.as_stored, self.exact)

    def assert_matches(self, queries: list[np.ndarray], k: int = K) -> None:
        """Same ranking as the oracle on what is stored (fp16); scores within fp16 error of the float32 truth."""
        for query, hits in zip(queries, self.store.search_batch(queries, k), strict=True):
            expected = self.as_stored.search(query, k)
            assert [hit.page_id for hit in hits] == [page_id for page_id, _ in expected]
            np.testing.assert_allclose(
                [hit.score for hit in hits], [score for _, score in expected], rtol=1e-5, atol=1e-4
            )
            truth = dict(self.exact.search(query, len(self.exact.pages)))
            for hit in hits:
                assert hit.score == pytest.approx(truth[hit.page_id], rel=1e-2, abs=1e-2)


def shard_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("shard-*.f16"))


def test_implements_the_protocol(tmp_path: Path, layout) -> None:
    assert isinstance(open_store(tmp_path, layout), MultiVectorStore)


def test_version_counts_changes_to_the_live_pages(tmp_path: Path, layout, corpus) -> None:
    pages = corpus[0][:4]
    store = open_store(tmp_path, layout)
    versions = [store.version]
    store.add(page_ids(4), pages)
    versions.append(store.version)
    store.flush()
    store.remove([1])  # not a page: nothing changed
    versions.append(store.version)
    store.remove(page_ids(1))
    versions.append(store.version)
    store.compact()  # the same live pages, rewritten
    versions.append(store.version)
    assert versions[0] < versions[1] == versions[2] < versions[3] == versions[4]


def test_empty_store(tmp_path: Path, layout, queries) -> None:
    store = open_store(tmp_path, layout)
    assert len(store) == 0 and len(store.ids()) == 0
    assert store.search(queries[0], K) == []
    assert store.search_batch(queries[:2], K) == [[], []]
    store.flush()
    assert open_store(tmp_path, layout).search(queries[0], K) == []


def test_search_matches_the_oracle(tmp_path: Path, layout, corpus, queries) -> None:
    pages, _, _ = corpus
    checked = Checked(store := open_store(tmp_path, layout))
    ids = page_ids(N_PAGES)
    for start in range(0, N_PAGES, 16):
        checked.add(ids[start : start + 16], pages[start : start + 16])
    assert len(store) == N_PAGES
    np.testing.assert_array_equal(store.ids(), sorted(ids))
    checked.assert_matches(queries)
    checked.assert_matches(queries, k=N_PAGES + 5)  # k beyond the store: every page once


def test_pages_about_the_query_topic_rank_first(tmp_path: Path, layout, corpus, queries) -> None:
    pages, page_topics, _ = corpus
    store = open_store(tmp_path, layout)
    store.add(page_ids(N_PAGES), pages)
    topic = 3
    hits = store.search(queries[topic], 5)
    ids = page_ids(N_PAGES)
    assert all(page_topics[ids.index(hit.page_id)] == topic for hit in hits)


def test_search_batch_equals_single_searches(tmp_path: Path, layout, corpus, queries) -> None:
    pages, _, _ = corpus
    store = open_store(tmp_path, layout)
    store.add(page_ids(N_PAGES), pages)
    batch = store.search_batch(queries, K)
    for query, hits in zip(queries, batch, strict=True):
        single = store.search(query, K)
        assert [hit.page_id for hit in hits] == [hit.page_id for hit in single]
        np.testing.assert_allclose([hit.score for hit in hits], [hit.score for hit in single], rtol=1e-6)


def test_shards_roll_over(tmp_path: Path, corpus, queries) -> None:
    pages, _, _ = corpus
    checked = Checked(store := open_store(tmp_path, (300, 100)))
    checked.add(page_ids(N_PAGES), pages)
    huge = np.random.default_rng(5).standard_normal((700, DIM)).astype(np.float32)  # more than shard_rows
    checked.add([7], [huge])
    store.flush()
    shards = sorted(tmp_path.glob("shard-*.f16"))
    assert len(shards) > 5
    row_bytes = DIM * 2
    sizes = [path.stat().st_size // row_bytes for path in shards]
    assert sum(sizes) == sum(len(page) for page in pages) + 700
    assert max(sizes) == 700, "a page larger than shard_rows gets a shard of its own"
    assert all(size <= 300 for size in sizes if size != 700)
    checked.assert_matches(queries)
    checked.reopened(open_store(tmp_path, (300, 100))).assert_matches(queries)


def test_remove_re_add_and_compact(tmp_path: Path, layout, corpus, queries) -> None:
    pages, _, _ = corpus
    checked = Checked(store := open_store(tmp_path, layout))
    ids = page_ids(N_PAGES)
    checked.add(ids, pages)
    store.flush()
    size_before = shard_bytes(tmp_path)

    removed = ids[::2]
    assert checked.remove(removed) == len(removed)
    assert store.remove(removed[:3]) == 0
    assert len(store) == N_PAGES - len(removed)
    gone = set(removed)
    for hits in store.search_batch(queries, N_PAGES):
        assert not gone & {hit.page_id for hit in hits}
    checked.assert_matches(queries)

    # Re-adding a live page replaces it: the old entry is tombstoned, no duplicate appears.
    replacement = [pages[0][:2] * -1.0, topic_pages(1, DIM, seed=99)[0][0]]  # not copies of live pages: no ties
    checked.add([ids[1], ids[3]], replacement)
    assert len(store) == N_PAGES - len(removed)
    for hits in store.search_batch(queries, N_PAGES):
        assert len({hit.page_id for hit in hits}) == len(hits)
    checked.assert_matches(queries)
    before = store.search_batch(queries, K)

    store.compact()
    assert store.stats()["tombstoned_pages"] == 0
    assert shard_bytes(tmp_path) < size_before
    after = store.search_batch(queries, K)
    for hits_before, hits_after in zip(before, after, strict=True):
        assert [hit.page_id for hit in hits_after] == [hit.page_id for hit in hits_before]
        np.testing.assert_allclose([hit.score for hit in hits_after], [hit.score for hit in hits_before], rtol=1e-6)
    reopened = checked.reopened(open_store(tmp_path, layout))
    assert len(reopened.store) == len(store)
    reopened.assert_matches(queries)
    # Writing after a compaction continues in fresh shards.
    reopened.add([5], [topic_pages(1, DIM, seed=98)[0][0]])  # fresh tokens: a copy would tie
    reopened.store.flush()
    reopened.assert_matches(queries)


def test_flush_and_reopen(tmp_path: Path, layout, corpus, queries) -> None:
    pages, _, _ = corpus
    checked = Checked(store := open_store(tmp_path, layout))
    checked.add(page_ids(N_PAGES), pages)
    checked.remove(page_ids(N_PAGES)[:7])
    store.flush()
    mtime = (tmp_path / OFFSETS_FILE).stat().st_mtime_ns
    store.flush()  # nothing changed: no rewrite
    assert (tmp_path / OFFSETS_FILE).stat().st_mtime_ns == mtime
    store.close()
    reopened = checked.reopened(open_store(tmp_path, layout))
    assert len(reopened.store) == N_PAGES - 7
    np.testing.assert_array_equal(reopened.store.ids(), sorted(page_ids(N_PAGES)[7:]))
    reopened.assert_matches(queries)
    np.testing.assert_array_equal(reopened.store.tokens(page_ids(N_PAGES)[9]), pages[9].astype(np.float16))


def test_rows_past_the_commit_point_are_discarded_after_a_crash(tmp_path: Path, layout, corpus, queries) -> None:
    pages, _, _ = corpus
    ids = page_ids(N_PAGES)
    checked = Checked(store := open_store(tmp_path, layout))
    checked.add(ids[:60], pages[:60])
    store.flush()
    committed_bytes = shard_bytes(tmp_path)
    committed_shards = sorted(path.name for path in tmp_path.glob("shard-*.f16"))
    # Appended and then "crashed": rows and maybe new shard files on disk, no commit.
    store.add(ids[60:], pages[60:])
    store.remove(ids[:5])
    assert shard_bytes(tmp_path) > committed_bytes
    (tmp_path / f".{OFFSETS_FILE}.crash.tmp").write_bytes(b"half a commit")
    del store
    gc.collect()

    reopened = checked.reopened(open_store(tmp_path, layout))
    assert len(reopened.store) == 60
    assert shard_bytes(tmp_path) == committed_bytes, "garbage rows are truncated"
    assert sorted(path.name for path in tmp_path.glob("shard-*.f16")) == committed_shards
    reopened.assert_matches(queries)

    # Adding the same pages again gives each exactly one entry.
    reopened.add(ids[50:], pages[50:])
    reopened.store.flush()
    final = checked.reopened(open_store(tmp_path, layout))
    assert len(final.store) == N_PAGES
    for hits in final.store.search_batch(queries, N_PAGES):
        assert len(hits) == N_PAGES and len({hit.page_id for hit in hits}) == N_PAGES
    final.assert_matches(queries)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_crash_during_compaction_keeps_the_old_state(tmp_path: Path, layout, corpus, queries, monkeypatch) -> None:
    pages, _, _ = corpus
    ids = page_ids(N_PAGES)
    checked = Checked(store := open_store(tmp_path, layout))
    checked.add(ids, pages)
    checked.remove(ids[::3])
    store.flush()
    old_shards = sorted(path.name for path in tmp_path.glob("shard-*.f16"))

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(journal, "atomic_write", crash)  # new shards written, the commit never happens
    with pytest.raises(OSError, match="disk vanished"):
        store.compact()
    monkeypatch.undo()
    assert len(list(tmp_path.glob("shard-*.f16"))) > len(old_shards)
    del store
    gc.collect()

    reopened = checked.reopened(open_store(tmp_path, layout))
    assert sorted(path.name for path in tmp_path.glob("shard-*.f16")) == old_shards, "orphans of the crash removed"
    assert reopened.store.stats()["tombstoned_pages"] == len(ids[::3])
    reopened.assert_matches(queries)


def test_a_crash_after_the_compaction_commit_keeps_the_new_state(
    tmp_path: Path, layout, corpus, queries, monkeypatch
) -> None:
    pages, _, _ = corpus
    ids = page_ids(N_PAGES)
    checked = Checked(store := open_store(tmp_path, layout))
    checked.add(ids, pages)
    checked.remove(ids[::3])
    store.flush()
    old_shards = {path.name for path in tmp_path.glob("shard-*.f16")}

    def crash(self: ShardFiles, serial: int) -> None:
        raise KeyboardInterrupt  # killed right after the commit, before the old shards are deleted

    monkeypatch.setattr(ShardFiles, "delete", crash)
    with pytest.raises(KeyboardInterrupt):
        store.compact()
    monkeypatch.undo()

    reopened = checked.reopened(open_store(tmp_path, layout))
    remaining = {path.name for path in tmp_path.glob("shard-*.f16")}
    assert not remaining & old_shards, "old shards are unreferenced after the commit and removed on open"
    assert reopened.store.stats()["tombstoned_pages"] == 0
    reopened.assert_matches(queries)


def test_reopening_with_another_model_or_dim_raises(tmp_path: Path, layout, corpus) -> None:
    pages, _, _ = corpus
    store = open_store(tmp_path, layout)
    store.add(page_ids(3), pages[:3])
    store.flush()
    with pytest.raises(ManifestMismatchError, match=r"(?s)'test-colpali'.*'other'"):
        open_store(tmp_path, layout, model="other")
    with pytest.raises(ManifestMismatchError, match=r"(?s)\b24\b.*\b128\b"):
        open_store(tmp_path, layout, dim=128)
    assert len(open_store(tmp_path, layout)) == 3


def test_read_only_open_ignores_uncommitted_rows_and_refuses_writes(tmp_path: Path, layout, corpus, queries) -> None:
    pages, _, _ = corpus
    ids = page_ids(N_PAGES)
    writer = open_store(tmp_path, layout)
    writer.add(ids[:40], pages[:40])
    writer.flush()
    writer.add(ids[40:], pages[40:])  # in flight in the "indexer"; the reader must neither see nor damage it
    size_in_flight = shard_bytes(tmp_path)
    reader = open_store(tmp_path, layout, read_only=True)
    assert len(reader) == 40
    assert {hit.page_id for hit in reader.search(queries[0], N_PAGES)} <= set(ids[:40])
    assert shard_bytes(tmp_path) == size_in_flight
    for write in (lambda: reader.add([1], [pages[0]]), lambda: reader.remove([ids[0]]), reader.flush, reader.compact):
        with pytest.raises(IndexError_, match="read-only"):
            write()
    writer.flush()
    assert len(open_store(tmp_path, layout, read_only=True)) == N_PAGES


def test_a_read_only_store_catches_up_with_its_writer(tmp_path: Path, layout, corpus, queries) -> None:
    """Commits, then a compaction that replaces the shards: the reader follows each, the same as a fresh open."""
    pages, _, _ = corpus
    ids = page_ids(N_PAGES)
    writer = Checked(open_store(tmp_path, layout))
    writer.add(ids[:30], pages[:30])
    writer.store.flush()
    reader = open_store(tmp_path, layout, read_only=True)
    version = reader.version
    assert reader.catch_up() and reader.version == version  # nothing committed since
    writer.add(ids[30:], pages[30:])
    writer.remove(ids[:20])
    assert reader.catch_up() and len(reader) == 30  # not committed yet
    writer.store.flush()
    assert reader.catch_up() and reader.version > version
    writer.reopened(reader).assert_matches(queries)
    writer.store.compact()  # new shard files, the old ones deleted
    assert reader.catch_up()
    writer.reopened(reader).assert_matches(queries)
    assert not writer.store.catch_up()  # a writer follows no one


def test_add_rejects_malformed_pages(tmp_path: Path, layout, corpus) -> None:
    pages, _, _ = corpus
    store = open_store(tmp_path, layout)
    with pytest.raises(ValueError):
        store.add([1], [pages[0][:, :-1]])  # wrong dim
    with pytest.raises(ValueError):
        store.add([1], [np.zeros((0, DIM), np.float32)])  # a page without tokens cannot be scored
    with pytest.raises(ValueError):
        store.add([1, 2], [pages[0]])
    with pytest.raises(ValueError):
        store.add([1], [np.full((2, DIM), 1e6, np.float32)])  # overflows fp16
    with pytest.raises(ValueError):
        store.search(pages[0][0], K)  # a query is a (tokens, dim) matrix
    assert len(store) == 0


def _journal(directory: Path) -> Path:
    return directory / JOURNAL_FILE


def _forty_pages_flushed(tmp_path: Path, layout, corpus) -> tuple[Checked, list[np.ndarray], list[int]]:  # noqa: ANN001
    """A store whose first flush (its snapshot) holds 40 pages, with its oracles; the corpus pages and ids."""
    pages, _, _ = corpus
    ids = page_ids(N_PAGES)
    checked = Checked(open_store(tmp_path, layout))
    checked.add(ids[:40], pages[:40])
    checked.store.flush()
    return checked, pages, ids


def _changes_in_flushes(checked: Checked, pages: list[np.ndarray], ids: list[int], flushes: int) -> None:
    """Per flush: new pages, a removal and a re-add with other tokens (the old entry tombstoned)."""
    for step in range(flushes):
        first = 40 + 10 * step
        checked.add(ids[first : first + 10], pages[first : first + 10])
        checked.remove([ids[step]])
        checked.add([ids[first - 1]], [pages[(first + 57) % len(pages)]])
        checked.store.flush()


def test_flushes_append_to_the_journal_and_opening_replays_it(tmp_path: Path, layout, corpus, queries) -> None:
    from mmrag.index.manifest import file_identity

    checked, pages, ids = _forty_pages_flushed(tmp_path, layout, corpus)  # the first flush writes the snapshot
    snapshot = file_identity(tmp_path / OFFSETS_FILE)
    assert not _journal(tmp_path).exists()
    sizes = []
    for flushes in range(4):
        _changes_in_flushes(checked, pages[10 * flushes :] + pages[: 10 * flushes], ids[10 * flushes :], 1)
        sizes.append(_journal(tmp_path).stat().st_size)
    assert file_identity(tmp_path / OFFSETS_FILE) == snapshot  # not rewritten: each flush appended a record
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    checked.assert_matches(queries)
    for read_only in (False, True):
        reopened = checked.reopened(open_store(tmp_path, layout, read_only=read_only))
        assert len(reopened.store) == len(checked.store)
        reopened.assert_matches(queries)


def test_a_torn_or_corrupt_journal_record_is_not_committed(tmp_path: Path, layout, corpus, queries) -> None:
    checked, pages, ids = _forty_pages_flushed(tmp_path, layout, corpus)
    _changes_in_flushes(checked, pages, ids, 1)
    committed = _journal(tmp_path).stat().st_size
    state = checked.reopened(open_store(tmp_path, layout, read_only=True))  # the oracle as of that record
    state = Checked(state.store, MaxSimOracle(as_stored=True), MaxSimOracle(as_stored=False))
    for page_id in state.store.ids():
        state.as_stored.add([int(page_id)], [state.store.tokens(int(page_id))])
        state.exact.add([int(page_id)], [state.store.tokens(int(page_id)).astype(np.float32)])
    for damage in ("torn", "corrupt"):
        store = open_store(tmp_path, layout)
        store.add(ids[60:70], pages[60:70])
        store.remove(ids[:3])
        store.flush()
        data = _journal(tmp_path).read_bytes()
        assert len(data) > committed
        if damage == "torn":
            data = data[:-7]  # the last record's end never reached the disk
        else:
            data = data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:]  # nor did one byte of it, right
        _journal(tmp_path).write_bytes(data)
        del store
        gc.collect()
        reader = state.reopened(open_store(tmp_path, layout, read_only=True))
        assert len(reader.store) == len(state.store.ids())
        reader.assert_matches(queries)
        writer = state.reopened(open_store(tmp_path, layout))  # cuts the damaged record off
        assert _journal(tmp_path).stat().st_size == committed
        writer.assert_matches(queries)
    writer.add(ids[70:80], pages[70:80])  # and appends after the last good record
    writer.store.flush()
    writer.reopened(open_store(tmp_path, layout, read_only=True)).assert_matches(queries)


def test_a_journal_of_an_older_snapshot_is_ignored(tmp_path: Path, layout, corpus, queries) -> None:
    checked, pages, ids = _forty_pages_flushed(tmp_path, layout, corpus)
    _changes_in_flushes(checked, pages, ids, 2)
    old_journal = _journal(tmp_path).read_bytes()
    checked.store.compact()  # a new snapshot; its journal starts empty
    assert not _journal(tmp_path).exists()
    _journal(tmp_path).write_bytes(old_journal)  # as if the crash came before the old journal's deletion
    checked.reopened(open_store(tmp_path, layout, read_only=True)).assert_matches(queries)
    reopened = checked.reopened(open_store(tmp_path, layout))
    assert not _journal(tmp_path).exists()  # the writer removes it
    reopened.assert_matches(queries)


def test_a_journal_outgrowing_its_snapshot_is_folded_into_a_new_one(
    tmp_path: Path, layout, corpus, queries, monkeypatch
) -> None:
    from mmrag.index.manifest import file_identity

    monkeypatch.setattr(journal, "JOURNAL_MIN_BYTES", 0)
    checked, pages, ids = _forty_pages_flushed(tmp_path, layout, corpus)
    snapshot = file_identity(tmp_path / OFFSETS_FILE)
    snapshots = 0
    for step in range(6):
        _changes_in_flushes(checked, pages[10 * step :] + pages[: 10 * step], ids[10 * step :], 1)
        if file_identity(tmp_path / OFFSETS_FILE) != snapshot:
            snapshot, snapshots = file_identity(tmp_path / OFFSETS_FILE), snapshots + 1
            assert not _journal(tmp_path).exists()
        else:
            assert _journal(tmp_path).stat().st_size <= (tmp_path / OFFSETS_FILE).stat().st_size
    assert snapshots >= 1
    checked.reopened(open_store(tmp_path, layout)).assert_matches(queries)


def test_a_reader_follows_the_journal_without_reading_the_snapshot_again(
    tmp_path: Path, layout, corpus, queries, monkeypatch
) -> None:
    writer, pages, ids = _forty_pages_flushed(tmp_path, layout, corpus)
    reader = open_store(tmp_path, layout, read_only=True)

    def no_full_load() -> None:
        raise AssertionError("the reader read the whole entry table again")

    monkeypatch.setattr(reader, "_load", no_full_load)
    for step in range(3):
        _changes_in_flushes(writer, pages, ids, step + 1)
        version = reader.version
        assert reader.catch_up() and reader.version > version
        writer.reopened(reader).assert_matches(queries)
        assert reader.catch_up() and reader.version == version + 1  # nothing new: nothing read


def test_search_within_given_pages_matches_the_oracle_on_them(tmp_path: Path, layout, corpus, queries) -> None:
    """The pages a search's filters allow, ranked alone (protocols.SearchesWithin)."""
    from mmrag.protocols import SearchesWithin

    pages, _, _ = corpus
    store = open_store(tmp_path, layout)
    ids = page_ids(N_PAGES)
    store.add(ids, pages)
    store.remove(ids[:3])
    allowed = np.array(ids[::4] + [10**9], dtype=np.int64)  # a removed page and an unknown id are simply absent
    wanted = [i for i in ids[::4] if i not in ids[:3]]
    kept = MaxSimOracle(as_stored=True)
    kept.add(wanted, [pages[ids.index(i)] for i in wanted])
    assert isinstance(store, SearchesWithin)
    for query in queries:
        hits = store.search_within(query, K, allowed)
        assert [hit.page_id for hit in hits] == [page_id for page_id, _ in kept.search(query, K)]
    assert store.search_within(queries[0], 0, allowed) == [] and store.search_within(queries[0], K, allowed[:0]) == []
