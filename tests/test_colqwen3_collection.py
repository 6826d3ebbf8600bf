"""A collection indexed with a 320-dimension late-interaction model (a tiny ColQwen3, as tomoro-colqwen3-embed gives
320-dimension vectors) loaded by the default profile from a local directory: its store holds 320-dimension vectors,
searches agree with a brute-force MaxSim oracle, and a kill -9 mid-job then a resume leaves every file indexed once.
Real SQL (SQLite and PostgreSQL), the real multi-vector store, the real `mmrag index` process."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from mmrag.config import (
    ClipSettings,
    ColpaliSettings,
    DatabaseSettings,
    EmbedderSettings,
    IngestSettings,
    Settings,
    TextEmbedderSettings,
)
from mmrag.embedders.colpali import ColPaliEmbedder
from mmrag.indexing import run_index
from mmrag.ingest import cleanup
from mmrag.retrieval import search
from mmrag.retrievers import Embedders, load_embedders
from mmrag.services import Services, build_services
from mmrag.store.models import Page, PageEmbedding
from tests.embedders.tiny_families import save_tiny_family
from tests.factories import make_corpus
from tests.leftovers import backdate, mapped, semaphores
from tests.test_crash import (
    ROOT,
    _kill_when,
    _start,
    assert_each_file_indexed_once,
    crash_corpus_page_ids,
    make_crash_corpus,
)

DIM = 320


@pytest.fixture(scope="module")
def colqwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_family("colqwen3", tmp_path_factory.mktemp("models") / "colqwen3-embed")


def colqwen3_settings(data_dir: Path, database_url: str, model_dir: Path, **ingest: object) -> Settings:
    """The default profile (real checkpoints only) with the ColPali model from a local directory; CLIP and the text
    model off, so the collection's only vectors are the late-interaction ones."""
    return Settings(
        data_dir=data_dir,
        database=DatabaseSettings(url=database_url),
        embedders=EmbedderSettings(
            profile="default", device="cpu", colpali=ColpaliSettings(model=str(model_dir)),
            clip=ClipSettings(enabled=False), text=TextEmbedderSettings(enabled=False),
        ),
        ingest=IngestSettings(**{"workers": 0, "ocr": "never", **ingest}),
        batch_pages=3,
    )  # fmt: skip


@pytest.fixture(scope="module")
def colqwen3_embedders(colqwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Embedders:
    settings = colqwen3_settings(tmp_path_factory.mktemp("unused"), "sqlite://", colqwen3_dir)
    embedders = load_embedders(settings)
    assert embedders.on() == ["colpali"], embedders.off
    return embedders


@pytest.fixture
def services(
    tmp_path: Path, database_url: str, colqwen3_dir: Path, colqwen3_embedders: Embedders
) -> Iterator[Services]:
    services = build_services(
        colqwen3_settings(tmp_path / "data", database_url, colqwen3_dir), embedders=colqwen3_embedders
    )
    yield services
    services.close()


def test_the_default_profile_loads_the_directory_as_a_320_dimension_colqwen3(
    colqwen3_embedders: Embedders, colqwen3_dir: Path
) -> None:
    embedder = colqwen3_embedders.get("colpali")
    assert isinstance(embedder, ColPaliEmbedder)
    assert (embedder.family, embedder.dim) == ("ColQwen3", DIM)
    assert embedder.model_id == f"colpali:local-dir:{colqwen3_dir}" and not embedder.meaningless


def test_a_collection_stores_and_searches_320_dimension_vectors(
    tmp_path: Path, services: Services, colqwen3_embedders: Embedders
) -> None:
    corpus = tmp_path / "corpus"
    make_corpus(corpus, images=4, pdfs=2)
    report = run_index(services, [corpus])
    assert report.counts["indexed"] == 6 and report.pages_indexed == 8
    assert "colpali" in report.retrievers_on

    store = services.collections.stores(1).get("colpali")
    assert store.dim == DIM and store.manifest().dim == DIM
    with services.sessions() as session:
        page_ids = set(session.scalars(select(Page.id)))
        vouched = set(session.scalars(select(PageEmbedding.page_id).where(PageEmbedding.retriever == "colpali")))
    assert {int(i) for i in store.ids()} == page_ids == vouched and len(page_ids) == 8
    tokens = {page_id: store.tokens(page_id).astype(np.float32) for page_id in page_ids}
    assert all(t.ndim == 2 and t.shape[1] == DIM for t in tokens.values())

    # A page's own vectors as the query: MaxSim of unit vectors is at most one per query token, reached only by the
    # page itself, so it comes first.
    for page_id, own in tokens.items():
        hits = store.search(own, k=len(tokens))
        assert hits[0].page_id == page_id
        assert hits[0].score == pytest.approx(len(own), rel=1e-3)

    # A text query through search(), against the brute-force oracle over the stored vectors.
    embedder = colqwen3_embedders.get("colpali")
    for text in ("invoice number 1011", "total 2.50 EUR", "a red square"):
        query = embedder.embed_queries([text])[0]
        oracle = {page_id: float((query @ t.T).max(axis=1).sum()) for page_id, t in tokens.items()}
        hits = search(services, "default", text=text, k=len(tokens), retrievers=["colpali"])
        assert [hit.page_id for hit in hits] == sorted(oracle, key=oracle.__getitem__, reverse=True)
        for hit in hits:
            assert hit.scores["colpali"] == pytest.approx(oracle[hit.page_id], abs=1e-2)


@pytest.mark.slow
def test_kill_9_then_resume_with_a_320_dimension_model_indexes_every_file_once(
    tmp_path: Path, database_url: str, colqwen3_dir: Path, colqwen3_embedders: Embedders
) -> None:
    corpus = tmp_path / "corpus"
    files = make_crash_corpus(corpus)
    system_temp = Path(tempfile.mkdtemp(prefix="sys-"))  # short: a socket's path below it must stay under 108 bytes
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MMRAG_DATA_DIR": str(tmp_path / "data"),
        "MMRAG_DATABASE__URL": database_url,
        "MMRAG_EMBEDDERS__PROFILE": "default",
        "MMRAG_EMBEDDERS__DEVICE": "cpu",
        "MMRAG_EMBEDDERS__COLPALI__MODEL": str(colqwen3_dir),
        "MMRAG_EMBEDDERS__CLIP__ENABLED": "false",
        "MMRAG_EMBEDDERS__TEXT__ENABLED": "false",
        "MMRAG_INGEST__WORKERS": "1",
        # the workers resize pages for the model (QwenPixels, 16-pixel patches): the path a GPU job takes
        "MMRAG_INGEST__COLPALI_INPUTS_IN_WORKERS": "always",
        "MMRAG_INGEST__OCR": "never",
        "MMRAG_BATCH_PAGES": "2",
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(system_temp),
    }
    semaphores_before = semaphores()
    try:
        for at_least in (1, 12):
            seen = _kill_when(_start(corpus, env), database_url, at_least)
            assert seen < len(files), "the kill came too late to test anything"
        # The killed pools' semaphores, mapped by no one: aged so the resume removes them (see test_crash).
        for path in {path for path in semaphores() - semaphores_before if not mapped(path)}:
            backdate(path, cleanup.UNREADABLE_MAX_AGE_S + 60)
        final = _start(corpus, env)
        _, stderr = final.communicate(timeout=300)
        assert final.returncode == 0, stderr.decode()[-3000:]
    finally:
        shutil.rmtree(system_temp, ignore_errors=True)

    settings = colqwen3_settings(tmp_path / "data", database_url, colqwen3_dir)
    services = build_services(settings, embedders=colqwen3_embedders)
    try:
        with services.sessions() as session:
            assert_each_file_indexed_once(session, files)
            page_ids = crash_corpus_page_ids(session)
            vouched = set(session.scalars(select(PageEmbedding.page_id).where(PageEmbedding.retriever == "colpali")))
        assert vouched == page_ids
        stores = services.collections.stores(1).by_retriever()
        assert set(stores) >= {"colpali"} and "clip" not in stores
        store = stores["colpali"]
        ids = [int(i) for i in store.ids()]
        assert len(ids) == len(set(ids)) and set(ids) == page_ids
        assert store.dim == DIM and all(store.tokens(page_id).shape[1] == DIM for page_id in ids)
        # the vectors are the model's own for the stored page images, whichever run wrote them
        embedder = colqwen3_embedders.get("colpali")
        from PIL import Image

        with services.sessions() as session:
            some = session.execute(select(Page.id, Page.image_path).order_by(Page.id).limit(4)).all()
        for page_id, image_path in some:
            with Image.open(services.storage_dir / image_path) as image:
                [expected] = embedder.embed_images([image.convert("RGB")])
            np.testing.assert_allclose(store.tokens(page_id).astype(np.float32), expected, atol=2e-3)
    finally:
        services.close()
