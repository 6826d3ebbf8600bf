"""The single-vector `bipage` retriever in a real job: a tiny BiQwen2 checkpoint loaded by the default profile from a
local directory beside a tiny ColQwen2, pages indexed into its FAISS store keyed by SQL ids, text searches held to a
brute-force oracle over the stored vectors, fused with ColPali's; and ColPali searched through it as its candidate
stage (index.multivector_search = "bipage"), whose scores stay exact MaxSim. Real SQL (SQLite and PostgreSQL), real
FAISS, the real multi-vector store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from mmrag.config import (
    BipageSettings,
    ClipSettings,
    ColpaliSettings,
    DatabaseSettings,
    EmbedderSettings,
    IndexSettings,
    IngestSettings,
    Settings,
    TextEmbedderSettings,
)
from mmrag.embedders.bi import BiPageEmbedder
from mmrag.embedders.tiny import save_tiny_colqwen2
from mmrag.errors import ConfigError
from mmrag.indexing import run_index
from mmrag.protocols import HoldsVectors
from mmrag.retrieval import retrieve, search
from mmrag.retrievers import RETRIEVERS, Embedders, load_embedders
from mmrag.services import Services, build_services
from mmrag.store.models import Page, PageEmbedding
from tests.embedders.tiny_bi import save_tiny_bi
from tests.factories import make_corpus

QUERIES = ("invoice number 1011", "total 2.50 EUR", "a red square", "document 1 page 2")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    models = tmp_path_factory.mktemp("models")
    # Names that claim each other's family: config.json decides.
    return save_tiny_bi("biqwen2", models / "colqwen2-v1.0"), save_tiny_colqwen2(models / "biqwen2-v0.1")


def bipage_settings(data_dir: Path, database_url: str, dirs: tuple[Path, Path], **index: object) -> Settings:
    bi_dir, col_dir = dirs
    return Settings(
        data_dir=data_dir,
        database=DatabaseSettings(url=database_url),
        embedders=EmbedderSettings(
            profile="default", device="cpu", bipage=BipageSettings(enabled=True, model=str(bi_dir)),
            colpali=ColpaliSettings(model=str(col_dir)), clip=ClipSettings(enabled=False),
            text=TextEmbedderSettings(enabled=False),
        ),
        ingest=IngestSettings(workers=0, ocr="never"),
        index=IndexSettings(**index),
        batch_pages=4,
    )  # fmt: skip


@pytest.fixture(scope="module")
def embedders(model_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Embedders:
    loaded = load_embedders(bipage_settings(tmp_path_factory.mktemp("unused"), "sqlite://", model_dirs))
    assert loaded.on() == ["colpali", "bipage"], loaded.off
    return loaded


@pytest.fixture
def indexed(
    tmp_path: Path, database_url: str, model_dirs: tuple[Path, Path], embedders: Embedders
) -> Iterator[Services]:
    services = build_services(bipage_settings(tmp_path / "data", database_url, model_dirs), embedders=embedders)
    corpus = tmp_path / "corpus"
    make_corpus(corpus, images=8, pdfs=2)
    report = run_index(services, [corpus])
    assert report.counts["indexed"] == 10 and report.pages_indexed == 12
    assert "bipage" in report.retrievers_on
    yield services
    services.close()


def stored_vectors(services: Services) -> dict[int, np.ndarray]:
    store = services.collections.stores(1).get("bipage")
    assert isinstance(store, HoldsVectors)
    ids = sorted(int(i) for i in store.ids())
    return dict(zip(ids, store.vectors(ids), strict=True))


def test_the_retriever_is_registered_off_by_default_and_weighs_like_clip(tmp_path: Path) -> None:
    retriever = RETRIEVERS.get("bipage")
    assert retriever.modality == "image" and retriever.query_kinds == {"text"}
    assert retriever.weight == RETRIEVERS.get("clip").weight == 1.0
    off = load_embedders(Settings(data_dir=tmp_path), names=["bipage"]).off
    assert off == {"bipage": "disabled in settings"}
    on_without_model = Settings(data_dir=tmp_path, embedders=EmbedderSettings(bipage=BipageSettings(enabled=True)))
    assert "no Bi* checkpoint is set" in load_embedders(on_without_model, names=["bipage"]).off["bipage"]


def test_a_job_indexes_page_images_into_the_bipage_store_keyed_by_sql_ids(
    indexed: Services, embedders: Embedders, model_dirs: tuple[Path, Path]
) -> None:
    embedder = embedders.get("bipage")
    assert isinstance(embedder, BiPageEmbedder) and not embedder.meaningless
    assert embedder.model_id == f"bi:local-dir:{model_dirs[0]}" and embedder.family.model_class == "BiQwen2"
    store = indexed.collections.stores(1).get("bipage")
    assert store.manifest().model == embedder.model_id and store.dim == embedder.dim == 64
    with indexed.sessions() as session:
        page_ids = set(session.scalars(select(Page.id)))
        vouched = set(session.scalars(select(PageEmbedding.page_id).where(PageEmbedding.retriever == "bipage")))
        image_path = {page.id: page.image_path for page in session.scalars(select(Page))}
    vectors = stored_vectors(indexed)
    assert set(vectors) == page_ids == vouched and len(page_ids) == 12
    np.testing.assert_allclose(np.linalg.norm(np.stack(list(vectors.values())), axis=1), 1.0, atol=1e-5)
    # each stored vector is the model's vector of that page's stored image, at its SQL id
    from PIL import Image

    some = sorted(page_ids)[:3]
    images = [Image.open(indexed.storage_dir / image_path[page_id]).convert("RGB") for page_id in some]
    again = embedder.embed_images(images)
    for page_id, vector in zip(some, again, strict=True):
        assert float(vector @ vectors[page_id]) == pytest.approx(1.0, abs=1e-3)


def test_text_search_ranks_as_the_brute_force_oracle_and_fuses(indexed: Services, embedders: Embedders) -> None:
    embedder = embedders.get("bipage")
    vectors = stored_vectors(indexed)
    ids = np.array(list(vectors))
    matrix = np.stack(list(vectors.values()))
    for text in QUERIES:
        oracle = matrix @ embedder.embed_queries([text])[0]
        hits = search(indexed, "default", text=text, k=len(ids), retrievers=["bipage"])
        assert [hit.page_id for hit in hits][:1] == [int(ids[np.argmax(oracle)])]  # the best-matching page first
        assert [hit.page_id for hit in hits] == [int(i) for i in ids[np.argsort(-oracle, kind="stable")]]
        for hit in hits:
            assert hit.scores["bipage"] == pytest.approx(float(oracle[ids == hit.page_id][0]), abs=1e-4)
    fused = search(indexed, "default", text=QUERIES[0], k=5)
    assert all({"bipage", "colpali"} <= set(hit.scores) for hit in fused[:3])
    assert {hit.page_id for hit in fused} <= set(vectors)


def exact_maxsim(services: Services, embedders: Embedders, text: str, k: int) -> list[tuple[int, float]]:
    tokens = embedders.get("colpali").embed_queries([text])[0]
    return [(hit.page_id, hit.score) for hit in services.collections.stores(1).get("colpali").search(tokens, k)]


def test_colpali_through_the_bipage_candidate_stage_scores_exact_maxsim(
    indexed: Services, embedders: Embedders, model_dirs: tuple[Path, Path]
) -> None:
    settings = indexed.settings
    for count in (12, 100):  # every page a candidate: the same top 10 as the exact search, with its scores
        staged = build_services(
            settings.model_copy(update={"index": IndexSettings(multivector_search="bipage",
                                                               multivector_candidates=count)}),
            embedders=embedders, migrate=False,
        )  # fmt: skip
        try:
            for text in QUERIES:
                exact = exact_maxsim(indexed, embedders, text, 10)
                hits = search(staged, "default", text=text, k=10, retrievers=["colpali"])
                assert [hit.page_id for hit in hits] == [page_id for page_id, _ in exact]
                for hit, (_, score) in zip(hits, exact, strict=True):
                    assert hit.scores["colpali"] == pytest.approx(score, abs=1e-4)
        finally:
            staged.close()

    # Fewer candidates than pages, asked 3 deep (candidates are at least the depth): the hits are the Bi* model's top
    # pages, each scored by exact MaxSim.
    few = build_services(
        settings.model_copy(update={"index": IndexSettings(multivector_search="bipage", multivector_candidates=3)}),
        embedders=embedders, migrate=False,
    )
    try:
        for text in QUERIES:
            bipage_top = retrieve(indexed, 1, text=text, depth=3, retrievers=["bipage"])[0].hits
            all_exact = dict(exact_maxsim(indexed, embedders, text, 12))
            hits = retrieve(few, 1, text=text, depth=3, retrievers=["colpali"])[0].hits
            assert {hit.page_id for hit in hits} == {hit.page_id for hit in bipage_top}
            for hit in hits:
                assert hit.score == pytest.approx(all_exact[hit.page_id], abs=1e-4)
            assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    finally:
        few.close()


def test_the_candidate_stage_without_the_bipage_retriever_is_a_clear_error(
    indexed: Services, embedders: Embedders
) -> None:
    settings = indexed.settings.model_copy(update={"index": IndexSettings(multivector_search="bipage")})
    without = build_services(
        settings, embedders=Embedders({"colpali": embedders.get("colpali")}, off={"bipage": "disabled in settings"}),
        migrate=False,
    )
    try:
        with pytest.raises(ConfigError, match="multivector_search = 'bipage' needs the bipage retriever"):
            search(without, "default", text=QUERIES[0], k=5, retrievers=["colpali"])
    finally:
        without.close()
