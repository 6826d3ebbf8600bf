"""Similarity maps: where a late-interaction retriever's page patches answer a query, as regions of the page. The
grid is read back from the real processor, regions are merged from the map, and both reach search highlights, the
marked page image and the citations of a page without words. Real tiny ColQwen2 code; SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag import layout, qa
from mmrag.config import IndexSettings
from mmrag.documents import search_hits
from mmrag.embedders.colpali import ColPaliEmbedder
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.types import Answer, Citation, RetrievedPage
from tests.api.conftest import make_settings
from tests.conftest import database
from tests.factories import make_image, make_pdf


def test_touching_hot_patches_merge_into_one_rectangle_best_first() -> None:
    rows, cols, dim = 4, 6, 8
    patches = np.random.default_rng(0).normal(size=(rows * cols, dim)).astype(np.float32) * 0.01
    query = np.eye(2, dim, dtype=np.float32)  # two query tokens: dimensions 0 and 1
    patches[1 * cols + 2, 0], patches[1 * cols + 3, 0] = 0.9, 0.85  # token 0: two touching cells of row 1
    patches[3 * cols + 5, 1] = 0.8  # token 1: the bottom-right cell, apart
    regions = layout.looked_at(query, patches, rows, cols)
    assert [r.box for r in regions] == [(2 / 6, 1 / 4, 4 / 6, 2 / 4), (5 / 6, 3 / 4, 1.0, 1.0)]
    assert [r.score for r in regions] == [pytest.approx(0.9, abs=0.03), pytest.approx(0.8, abs=0.03)]
    assert {r.source for r in regions} == {"similarity_map"}
    assert layout.looked_at(query, patches, rows, cols, most=1) == regions[:1]
    # a patch just under the top share of the range stays out; diagonal neighbours do not merge
    patches[0, 1] = 0.5
    patches[2 * cols + 4, 0] = 0.88
    boxes = [r.box for r in layout.looked_at(query, patches, rows, cols)]
    assert (0.0, 0.0, 1 / 6, 1 / 4) not in boxes and (4 / 6, 2 / 4, 5 / 6, 3 / 4) in boxes
    # nothing to point at: a flat map, or vectors that are not the grid
    assert layout.looked_at(query, np.zeros((rows * cols, dim), np.float32), rows, cols) == []
    assert layout.looked_at(query, patches[:-1], rows, cols) == []
    assert layout.looked_at(query[:0], patches, rows, cols) == []


@pytest.fixture(scope="module")
def colqwen(tiny_embedders: Embedders) -> ColPaliEmbedder:
    embedder = tiny_embedders.get("colpali")
    assert isinstance(embedder, ColPaliEmbedder)
    return embedder


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (112, 84), (57, 640)])
def test_the_grid_covers_every_image_token_of_a_page(colqwen: ColPaliEmbedder, size: tuple[int, int]) -> None:
    grid = colqwen.patch_grid(*size)
    assert grid is not None
    (vectors,) = colqwen.embed_images([Image.new("RGB", size, (90, 90, 90))])
    assert len(vectors) == grid.length and grid.rows * grid.cols == len(grid.positions)
    assert grid.positions == tuple(range(grid.positions[0], grid.positions[0] + len(grid.positions)))  # one run
    assert (grid.rows > grid.cols) == (size[1] > size[0])  # rows follow the page's height


def test_a_grid_cell_holds_the_pixels_of_its_part_of_the_page(colqwen: ColPaliEmbedder) -> None:
    # 112x84 is a whole number of 28-pixel merged patches within the tiny processor's pixel bounds: not resized
    page = Image.new("RGB", (112, 84), (128, 128, 128))
    page.paste((255, 0, 0), (56, 28, 84, 56))  # the cell in row 1, column 2 of a 3 x 4 grid
    grid = colqwen.patch_grid(*page.size)
    assert grid is not None and (grid.rows, grid.cols) == (3, 4)
    pixels = colqwen.processor.process_images([page])["pixel_values"].numpy()
    merged = pixels.reshape(grid.rows * grid.cols, -1, 3, 2 * 14 * 14)  # 4 patches of (channel, time x 14 x 14)
    red = merged[..., 0, :].mean(axis=(1, 2)) - merged[..., 1, :].mean(axis=(1, 2))
    assert int(np.argmax(red)) == 1 * grid.cols + 2 and (red > 1).sum() == 1  # row-major, as positions say


def test_query_words_are_the_texts_own_tokens(colqwen: ColPaliEmbedder) -> None:
    text = "total 42.35"
    own = colqwen.query_words(text)
    (tokens,) = colqwen.embed_queries([text])
    assert own.dtype == bool and len(own) == len(tokens)
    ids = colqwen.processor.process_queries([text])["input_ids"][0].numpy()
    assert colqwen.processor.tokenizer.decode(ids[own]) == text  # not the augmentation padding
    assert not own[-1]


# --- through search and Q&A ---------------------------------------------------------------------------------


def _indexed(tmp_path: Path, database_url: str, embedders: Embedders, **index: int) -> Services:
    settings = make_settings(tmp_path / "data", database_url).model_copy(update={"index": IndexSettings(**index)})
    services = build_services(settings, embedders=embedders)
    corpus = tmp_path / "corpus"
    make_pdf(corpus / "receipt.pdf", ["Corner Bakery\n2 croissants 3.80\nTotal 9.02"])
    make_image(corpus / "photo.png", 3, size=(300, 200))
    run_index(services, [corpus])
    return services


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_embedders: Embedders
) -> Iterator[Services]:
    tmp_path = tmp_path_factory.mktemp("maps")
    with database(request.param, tmp_path) as database_url:
        services = _indexed(tmp_path, database_url, tiny_embedders)
        yield services
        services.close()


def _fresh_map(services: Services, colqwen: ColPaliEmbedder, image: Path, query: str) -> list[layout.Region]:
    """The oracle: the map from the stored page image embedded again, not from the store."""
    with Image.open(image) as opened:
        page = opened.convert("RGB")
    grid = colqwen.patch_grid(*page.size)
    assert grid is not None
    (vectors,) = colqwen.embed_images([page])
    tokens = colqwen.embed_queries([query])[0][colqwen.query_words(query)]
    return layout.looked_at(tokens, vectors[list(grid.positions)], grid.rows, grid.cols)


def test_hits_carry_where_the_map_points(services: Services, colqwen: ColPaliEmbedder) -> None:
    query = "corner bakery total"
    hits = search_hits(services, ["default"], text=query, k=5)
    assert len(hits) == 2
    for hit in hits:
        mapped = [r for r in hit.highlights if r.source == "similarity_map"]
        image = services.storage_dir / _image_path(services, hit.result.page_id)
        expected = _fresh_map(services, colqwen, image, query)
        assert 1 <= len(mapped) <= layout.SIMILARITY_REGIONS and len(mapped) == len(expected)
        for got, want in zip(mapped, expected, strict=True):
            assert got.box == want.box and got.score == pytest.approx(want.score, abs=0.02)  # stored as fp16
            assert all(0 <= v <= 1 for v in got.box) and got.box[0] < got.box[2] and got.box[1] < got.box[3]
    words = next(h for h in hits if h.result.path.endswith(".pdf")).highlights
    assert {r.text for r in words if r.source == "text_layer"} >= {"Corner", "Bakery", "Total"}
    off = search_hits(services, ["default"], text=query, k=5, highlight=False)
    assert all(h.highlights == () for h in off)


def test_a_cited_page_without_words_points_where_the_map_does(services: Services) -> None:
    question = "what is in the photo?"

    class CitesEveryPage:  # an Answerer (a VLM would) citing each page, quoting nothing
        name = "cites-every-page"

        def answer(self, question: str, pages: Sequence[RetrievedPage]) -> Answer:
            citations = [Citation(p.document_id, p.page_id, p.page_number, p.path, p.score, "") for p in pages]
            return Answer(" ".join(f"[{n}]" for n in range(1, len(pages) + 1)), citations, True, self.name)

        stream = answer

    answer, pages = qa.ask(services, CitesEveryPage(), question, ["default"], k=2)
    photo = next(p for p in pages if p.path.endswith(".png"))
    pdf = next(p for p in pages if p.path.endswith(".pdf"))
    assert photo.words == () and photo.looked_at and pdf.words and pdf.looked_at == ()  # only where needed
    by_page = {c.page_id: c for c in answer.citations}
    assert by_page[photo.page_id].regions == photo.looked_at
    assert {r.source for r in photo.looked_at} == {"similarity_map"}
    assert by_page[pdf.page_id].regions == ()  # it has words, and nothing quoted to find among them


def test_pooled_vectors_have_no_map(tmp_path: Path, tiny_embedders: Embedders) -> None:
    with database("sqlite", tmp_path) as database_url:
        services = _indexed(tmp_path, database_url, tiny_embedders, multivector_pool_factor=2)
        try:
            hits = search_hits(services, ["default"], text="corner bakery", k=5)
            assert hits and not any(r.source == "similarity_map" for h in hits for r in h.highlights)
            assert any(r.source == "text_layer" for h in hits for r in h.highlights)
        finally:
            services.close()


def _image_path(services: Services, page_id: int) -> str:
    from mmrag.store import repository

    with services.sessions() as session:
        path = repository.page_image_paths(session, [page_id])[page_id]
    assert path is not None
    return path


def test_the_maps_benchmark_runs_on_a_small_store(tmp_path: Path) -> None:
    import json

    from bench import maps

    out = tmp_path / "maps.json"
    assert maps.main(["--pages", "12", "--k", "3", "--repeat", "2", "--grid", "4", "6", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["k"] == 3 and row["tokens_per_page"] == 6 + 24 and row["search_p50_ms"] > 0
    assert 1 <= row["regions_per_hit"] <= layout.SIMILARITY_REGIONS  # random vectors still have a best patch
