"""A query process beside an indexing process (`mmrag serve` and `mmrag index` on one database and data dir): the
reader sees the writer's pages at its next query, never touches the writer's work in progress, and a job the reader
runs later starts from the stores on disk, not from its stale copy. SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmrag.ingest import load_image
from mmrag.indexing import JobStages, collection_writer, run_index
from mmrag.retrieval import search
from mmrag.services import Embedders, Services, build_services
from tests.factories import make_image
from tests.test_pipeline import assert_stores_agree_with_sql, make_settings


@pytest.fixture
def pair(tmp_path: Path, database_url: str, tiny_embedders: Embedders):
    """Two Services on one database and data dir, as two processes have: (reader, writer)."""
    settings = make_settings(tmp_path, database_url)
    settings.index.reader_refresh_seconds = 0  # every change seen at the next query
    reader = build_services(settings, embedders=tiny_embedders)
    writer = build_services(settings, embedders=tiny_embedders)
    yield reader, writer
    writer.close()
    reader.close()


def top_path(services: Services, image: Path) -> str:
    hits = search(services, "default", image=load_image(image, max_pixels=10**7), k=1)
    return Path(hits[0].path).name


def test_a_reader_sees_another_process_index_at_its_next_query(pair, tmp_path: Path) -> None:
    reader, writer = pair
    first = [make_image(tmp_path / "a" / f"a{i}.png", i) for i in range(3)]
    run_index(writer, [tmp_path / "a"])
    assert top_path(reader, first[1]) == "a1.png"
    stores = reader.stores(1)
    assert not stores.writable and stores.colpali is not None and stores.colpali.read_only

    later = make_image(tmp_path / "b" / "b0.png", 40)
    run_index(writer, [tmp_path / "b"])
    assert top_path(reader, later) == "b0.png"  # the generation moved: the reader followed
    assert len(reader.stores(1).clip) == 4
    # It read only what was new: the same store objects, brought up to date from the journal and the offsets.
    assert reader.stores(1) is stores and stores.colpali is not None and len(stores.colpali) == 4


def test_a_reader_never_truncates_the_writers_uncommitted_rows(pair, tmp_path: Path) -> None:
    reader, writer = pair
    make_image(tmp_path / "a" / "a0.png", 0)
    run_index(writer, [tmp_path / "a"])
    with collection_writer(writer, 1, "default"):
        store = writer.stores(1).colpali
        rows = np.random.default_rng(0).standard_normal((5, store.dim)).astype(np.float32)
        store.add([999], [rows])  # written to a shard, not yet committed
        shards = sorted((store.directory).glob("shard-*"))
        sizes = [path.stat().st_size for path in shards]
        search(reader, "default", text="anything", k=1)  # the reader opens the stores meanwhile
        assert [path.stat().st_size for path in shards] == sizes
        store.flush()
    reopened = build_services(writer.settings, embedders=writer.embedders())
    try:
        with collection_writer(reopened, 1, "default"):
            assert reopened.stores(1).colpali.tokens(999).shape == (5, store.dim)
    finally:
        reopened.close()


def test_a_job_in_the_reader_starts_from_the_stores_on_disk(pair, tmp_path: Path) -> None:
    reader, writer = pair
    make_image(tmp_path / "a" / "a0.png", 0)
    run_index(writer, [tmp_path / "a"])
    search(reader, "default", text="anything", k=1)  # the reader holds the stores as they were
    make_image(tmp_path / "b" / "b0.png", 1)
    run_index(writer, [tmp_path / "b"])
    make_image(tmp_path / "c" / "c0.png", 2)
    report = run_index(reader, [tmp_path / "c"])  # e.g. an upload to the API
    assert report.counts["indexed"] == 1
    # A stale copy took the writer's vectors for lost (and re-embedded them) and overwrote its files.
    assert report.recovered == {"incomplete_documents": 0, "orphan_vectors": 0, "lost_vectors": 0,
                                "repaired_pages": 0}
    assert_stores_agree_with_sql(reader)
    fresh = build_services(writer.settings, embedders=writer.embedders())
    try:
        assert_stores_agree_with_sql(fresh)  # what is on disk, read by a third process
    finally:
        fresh.close()


def test_bm25_is_neither_rebuilt_nor_saved_by_a_reader_while_another_process_writes(
    pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a job runs elsewhere its pages are in SQL before its BM25 index is saved (at its end). A reader keeps
    serving the saved index meanwhile (a rebuild per batch would race the writer's own save), looks again at each
    query, and once the writer is gone brings the index up to date itself."""
    import fcntl

    from mmrag.index.lexical import Bm25Index
    from tests.factories import make_pdf

    reader, writer = pair
    make_pdf(tmp_path / "a" / "a.pdf", ["alpha invoice 1001"])
    run_index(writer, [tmp_path / "a"])
    assert len(reader.lexical(1)) == 1

    # A job whose end (the saved index) has not come yet: its pages are in SQL, the saved index is the old one.
    monkeypatch.setattr(writer, "refresh_lexical", lambda collection_id: None)
    make_pdf(tmp_path / "b" / "b.pdf", ["beta invoice 2002"])
    run_index(writer, [tmp_path / "b"], stages=JobStages(lexical_ahead=lambda *args: None))
    saved = Bm25Index.saved_fingerprint(reader.lexical_dir(1))
    with open(writer.writer_lock_path(1), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the writer, still at work
        assert len(reader.lexical(1)) == 1
        assert [hit.path for hit in search(reader, "default", text="beta 2002", retrievers=["lexical"])] == []
        assert Bm25Index.saved_fingerprint(reader.lexical_dir(1)) == saved  # nothing saved by the reader
        fcntl.flock(lock, fcntl.LOCK_UN)
    # The writer is gone without saving (it crashed, say): the reader's next query brings the index up to date.
    hits = search(reader, "default", text="beta 2002", retrievers=["lexical"])
    assert [Path(hit.path).name for hit in hits] == ["b.pdf"] and len(reader.lexical(1)) == 2
