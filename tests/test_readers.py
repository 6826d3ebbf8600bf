"""A query process beside an indexing process (`mmrag serve` and `mmrag index` on one database and data dir): the
reader sees the writer's pages at its next query, never touches the writer's work in progress, and a job the reader
runs later starts from the stores on disk, not from its stale copy. SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mmrag.ingest import load_image
from mmrag.indexing import JobStages, collection_writer, run_index
from mmrag.retrieval import search
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.store import repository
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
    stores = reader.collections.stores(1)
    assert not stores.writable and stores.get("colpali") is not None and stores.get("colpali").read_only

    later = make_image(tmp_path / "b" / "b0.png", 40)
    run_index(writer, [tmp_path / "b"])
    assert top_path(reader, later) == "b0.png"  # the generation moved: the reader followed
    assert len(reader.collections.stores(1).get("clip")) == 4
    # It read only what was new: the same store objects, brought up to date from the journal and the offsets.
    assert reader.collections.stores(1) is stores and stores.get("colpali") is not None and len(stores.get("colpali")) == 4


def test_a_reader_never_truncates_the_writers_uncommitted_rows(pair, tmp_path: Path) -> None:
    reader, writer = pair
    make_image(tmp_path / "a" / "a0.png", 0)
    run_index(writer, [tmp_path / "a"])
    with collection_writer(writer, 1, "default"):
        store = writer.collections.stores(1).get("colpali")
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
            assert reopened.collections.stores(1).get("colpali").tokens(999).shape == (5, store.dim)
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


def test_a_reader_follows_a_writer_at_work_in_memory_saving_nothing(
    pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a job runs elsewhere its pages are in SQL before its BM25 index is saved (at its end). A reader brings
    its copy of the saved index up to date in memory at its next query, without waiting for the writer and without
    saving anything; the writer's next job saves it."""
    from mmrag.index.lexical import Bm25Index
    from tests.factories import make_pdf

    reader, writer = pair
    make_pdf(tmp_path / "a" / "a.pdf", ["alpha invoice 1001"])
    run_index(writer, [tmp_path / "a"])
    assert len(reader.collections.derived.lexical(1)) == 1

    # A job whose end (the saved index) has not come yet: its pages are in SQL, the saved index is the old one.
    with monkeypatch.context() as patches:
        patches.setattr(writer.collections.derived, "refresh_lexical", lambda collection_id: None)
        make_pdf(tmp_path / "b" / "b.pdf", ["beta invoice 2002"])
        run_index(writer, [tmp_path / "b"], stages=JobStages(lexical_ahead=lambda *args: None))
    saved = Bm25Index.saved_fingerprint(reader.collections.derived.lexical_dir(1))
    before = data_files(reader)
    with lock_held_elsewhere(writer.collections.writer_lock_path(1)):  # the writer, still at work
        hits = search(reader, "default", text="beta 2002", retrievers=["lexical"])
        assert [Path(hit.path).name for hit in hits] == ["b.pdf"] and len(reader.collections.derived.lexical(1)) == 2
    assert Bm25Index.saved_fingerprint(reader.collections.derived.lexical_dir(1)) == saved and data_files(reader) == before
    # The writer's next job saves it, covering the pages its last one left out.
    make_pdf(tmp_path / "c" / "c.pdf", ["gamma invoice 3003"])
    run_index(writer, [tmp_path / "c"])
    assert len(Bm25Index.saved_ids(reader.collections.derived.lexical_dir(1))) == 3
    assert [Path(hit.path).name for hit in search(reader, "default", text="gamma 3003", retrievers=["lexical"])] == [
        "c.pdf"
    ]


def data_files(services: Services) -> dict[str, tuple[int, int]]:
    """Every file and directory under the data dir with its mtime and size: a process that writes none leaves it
    equal."""
    root = services.storage_dir
    return {str(path.relative_to(root)): (path.stat().st_mtime_ns, path.stat().st_size) for path in root.rglob("*")}


@contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[None]:
    """Another process holds the collection's writer lock (its flock) for the duration, and this process records
    every flock it calls meanwhile: a search that took the lock would wait for that process, or find it busy."""
    import fcntl

    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; lock = open(sys.argv[1], 'a+'); fcntl.flock(lock, fcntl.LOCK_EX); "
         "print('held', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    flock, calls = fcntl.flock, []
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        fcntl.flock = lambda *args: calls.append(args) or flock(*args)
        began = time.monotonic()
        yield
        assert time.monotonic() - began < 30 and calls == []  # the lock was never taken, nor tried
    finally:
        fcntl.flock = flock
        holder.communicate("", timeout=30)


@pytest.mark.parametrize("saved", ["stale", "none"])
def test_a_search_on_stale_derived_indexes_is_right_and_only_reads(
    pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved: str
) -> None:
    """The BM25 and candidate indexes saved behind what SQL and the multi-vector store hold (a job that died before
    its end), or none saved at all (a collection from before they were saved): a search's hits are those of indexes
    built from scratch, while another process holds the writer lock, and it writes no file; the next writer saves
    them."""
    import mmrag.derived
    from mmrag.index.candidates import PooledCandidateIndex
    from mmrag.index.lexical import Bm25Index
    from tests.factories import make_pdf

    reader, writer = pair
    for services in pair:
        services.settings.index.multivector_search = "candidates"
    monkeypatch.setattr(mmrag.derived, "CANDIDATES_SAVE_MIN_PAGES", 0)
    for i in range(3):
        make_pdf(tmp_path / "a" / f"a{i}.pdf", [f"alpha invoice {1000 + i}"])
    run_index(writer, [tmp_path / "a"])
    assert writer.collections.derived.candidates_path(1, "colpali").is_file() and len(Bm25Index.saved_ids(writer.collections.derived.lexical_dir(1))) == 3
    assert search(reader, "default", text="alpha", k=3)  # the reader holds the saved ones, then they fall behind
    with monkeypatch.context() as patches:  # a job that dies before its end saves neither
        patches.setattr(writer.collections.derived, "refresh_lexical", lambda collection_id: None)
        patches.setattr(writer.collections.derived, "after_writing", lambda collection_id: None)
        make_pdf(tmp_path / "b" / "b.pdf", ["beta invoice 2002"])
        run_index(writer, [tmp_path / "b"], stages=JobStages(lexical_ahead=lambda *args: None))
    if saved == "none":
        shutil.rmtree(writer.collections.derived.lexical_dir(1))
        writer.collections.derived.candidates_path(1, "colpali").unlink()
        reader.close()
        reader = build_services(writer.settings, embedders=writer.embedders())  # a query service starting

    before = data_files(reader)
    with lock_held_elsewhere(writer.collections.writer_lock_path(1)):
        lexical = search(reader, "default", text="beta invoice 2002", retrievers=["lexical"], k=4)
        scalable = search(reader, "default", text="beta invoice 2002", retrievers=["colpali"], k=4)
    assert data_files(reader) == before
    store = reader.collections.stores(1).get("colpali")
    with reader.sessions() as session:
        rebuilt = Bm25Index()
        rebuilt.rebuild(repository.page_texts(session, 1))
    assert [hit.page_id for hit in lexical] == [hit.page_id for hit in rebuilt.search("beta invoice 2002", 4)]
    assert Path(lexical[0].path).name == "b.pdf"
    assert len(reader.collections.derived.candidate_index(1, "colpali")) == len(store) == 4  # the page the saved one lacks too
    reader.settings.index.multivector_search = "exact"
    exact = search(reader, "default", text="beta invoice 2002", retrievers=["colpali"], k=4)
    assert [hit.page_id for hit in scalable] == [hit.page_id for hit in exact] and len(exact) == 4

    # The next writer saves them, current with what SQL and the store hold.
    with collection_writer(writer, 1, "default"):
        writer.collections.derived.refresh_lexical(1)
    with writer.sessions() as session:
        assert Bm25Index.saved_ids(writer.collections.derived.lexical_dir(1)).tolist() == sorted(repository.text_page_ids(session, 1))
    assert len(PooledCandidateIndex.load(writer.collections.derived.candidates_path(1, "colpali"), store)) == 4
    if saved == "none":
        reader.close()
