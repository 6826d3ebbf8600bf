"""Near-duplicates (mmrag.near_duplicates): photos generated here, with re-encoded, resized and cropped copies, are
indexed by the real job into real SQL (SQLite and PostgreSQL) and a real FAISS store, and grouped with their
originals; distinct photos are not. The grouping is checked against a brute-force oracle over every pair.

The image vectors come from mmrag.embedders.perceptual, a deterministic stand-in for CLIP passed in through the
ImageEmbedder contract, NOT CLIP: the tiny-random profile's random weights put a copy no closer to its original than
any other photo, so they cannot show that grouping works. `python -m bench near-duplicates` measures it on real
photos (and with real CLIP where its weights are present)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mmrag.config import DatabaseSettings, EmbedderSettings, IngestSettings, Settings
from mmrag.embedders.perceptual import PerceptualImageEmbedder
from mmrag.errors import ConfigError, ModelUnavailableError, NotFoundError
from mmrag.indexing import delete_documents, run_index
from mmrag.near_duplicates import near_duplicate_groups, similar_pages
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.store import repository
from mmrag.types import SearchFilters

THRESHOLD = 0.9  # the stand-in's copies below score >= 0.97 with their originals; distinct photos <= 0.45
ORIGINALS = 4
LONERS = 2
COPIES = ("jpeg", "half", "crop")


def make_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like picture that differs per seed: a smooth random colour field with a few discs on it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(5):
        x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(10, 50))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def save_copies(image: Image.Image, folder: Path, stem: str) -> list[Path]:
    """The original (PNG) and its copies: re-encoded as JPEG quality 35, resized to half, cropped to 90% each side."""
    width, height = image.size
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}{suffix}" for suffix in (".png", "-jpeg.jpg", "-half.png", "-crop.png")]
    image.save(paths[0])
    image.save(paths[1], quality=35)
    image.resize((width // 2, height // 2), Image.Resampling.LANCZOS).save(paths[2])
    image.crop((width // 20, height // 20, width - width // 20, height - height // 20)).save(paths[3])
    return paths


def make_photos(root: Path) -> dict[str, set[str]]:
    """ORIGINALS photos with their copies, and LONERS photos without; returns each original's group of file names."""
    groups = {}
    for seed in range(ORIGINALS):
        groups[f"p{seed}"] = {p.name for p in save_copies(make_photo(seed), root / "photos", f"p{seed}")}
    for seed in range(ORIGINALS, ORIGINALS + LONERS):
        make_photo(seed).save(root / "photos" / f"lone{seed}.png")
    return groups


def make_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database=DatabaseSettings(url=database_url),
        embedders=EmbedderSettings(profile="tiny-random"),  # unused: the embedders are passed in
        ingest=IngestSettings(workers=0, ocr="never"),
        batch_pages=5,
    )


def stand_in() -> Embedders:
    return Embedders(clip=PerceptualImageEmbedder())


@pytest.fixture
def services(tmp_path: Path, database_url: str) -> Iterator[Services]:
    services = build_services(make_settings(tmp_path, database_url), embedders=stand_in())
    yield services
    services.close()


@pytest.fixture
def indexed(services: Services, tmp_path: Path) -> dict[str, set[str]]:
    groups = make_photos(tmp_path / "corpus")
    report = run_index(services, [tmp_path / "corpus"])
    assert report.counts["indexed"] == ORIGINALS * (1 + len(COPIES)) + LONERS, report.counts
    return groups


def page_ids_by_name(services: Services) -> dict[str, int]:
    with services.sessions() as session:
        collection = repository.get_collection(session, "default")
        ids = repository.filtered_page_ids(session, collection.id, SearchFilters(), limit=1000)
        rows = repository.describe_pages(session, ids)
    return {Path(row.path).name: page_id for page_id, row in rows.items()}


def clip_store(services: Services):  # noqa: ANN201 - the FaissIndex
    with services.sessions() as session:
        collection_id = repository.get_collection(session, "default").id
    return services.collections.stores(collection_id).get("clip")


def oracle_groups(services: Services, threshold: float) -> list[set[int]]:
    """Connected components over every pair of pages at or above the threshold, by brute force."""
    store = clip_store(services)
    ids = [int(i) for i in store.ids()]
    vectors = store.vectors(ids)
    similarity = vectors @ vectors.T
    parent = list(range(len(ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if similarity[i, j] >= threshold:
                parent[root(j)] = root(i)
    components: dict[int, set[int]] = {}
    for i, page_id in enumerate(ids):
        components.setdefault(root(i), set()).add(page_id)
    return [members for members in components.values() if len(members) >= 2]


def test_copies_are_grouped_with_their_originals_and_distinct_photos_are_not(
    services: Services, indexed: dict[str, set[str]]
) -> None:
    report = near_duplicate_groups(services, "default", threshold=THRESHOLD, largest=100)
    assert report.compared == ORIGINALS * (1 + len(COPIES)) + LONERS and report.without_vector == 0
    assert report.sizes == [1 + len(COPIES)] * ORIGINALS
    assert (report.groups, report.pages_in_groups) == (ORIGINALS, ORIGINALS * (1 + len(COPIES)))
    found = sorted(sorted(Path(page.path).name for page in group.pages) for group in report.largest)
    assert found == sorted(sorted(names) for names in indexed.values())
    for group in report.largest:
        first, *rest = group.pages
        assert first.similarity == pytest.approx(1.0, abs=1e-5) and first.page_id < min(p.page_id for p in rest)
        assert all(THRESHOLD <= page.similarity <= 1.0 for page in rest)
    # largest=1 describes one group and still counts them all
    one = near_duplicate_groups(services, "default", threshold=THRESHOLD, largest=1)
    assert (len(one.largest), one.groups) == (1, ORIGINALS)


@pytest.mark.parametrize("threshold", [0.3, 0.6, THRESHOLD, 0.995])
def test_grouping_matches_a_brute_force_oracle(services: Services, indexed: object, threshold: float) -> None:
    # With every page a neighbour, the rule is exactly "connected components of all pairs at the threshold".
    report = near_duplicate_groups(services, "default", threshold=threshold, neighbours=100, largest=100)
    got = sorted(sorted(page.page_id for page in group.pages) for group in report.largest)
    want = sorted(sorted(group) for group in oracle_groups(services, threshold))
    assert got == want
    assert report.sizes == sorted((len(group) for group in want), reverse=True)


def test_similar_pages_of_a_photo_are_its_copies_most_similar_first(
    services: Services, indexed: dict[str, set[str]]
) -> None:
    ids = page_ids_by_name(services)
    store = clip_store(services)
    found = similar_pages(services, ids["p1.png"], None, threshold=THRESHOLD)
    assert (found.page_id, found.collection, found.threshold) == (ids["p1.png"], "default", THRESHOLD)
    assert {Path(page.path).name for page in found.pages} == indexed["p1"] - {"p1.png"}  # never the page itself
    similarities = [page.similarity for page in found.pages]
    assert similarities == sorted(similarities, reverse=True)
    own = store.vectors([ids["p1.png"]])[0]
    for page in found.pages:
        assert page.similarity == pytest.approx(float(store.vectors([page.page_id])[0] @ own), abs=1e-5)
        assert page.name == Path(page.path).name and page.page_number == 1 and page.document_id > 0
    # limit keeps the best; a copy finds its original and the other copies
    assert [p.page_id for p in similar_pages(services, ids["p1.png"], None, threshold=THRESHOLD, limit=2).pages] == [
        p.page_id for p in found.pages[:2]
    ]
    of_copy = similar_pages(services, ids["p1-crop.png"], {"default"}, threshold=THRESHOLD)
    assert {Path(p.path).name for p in of_copy.pages} == indexed["p1"] - {"p1-crop.png"}
    assert similar_pages(services, ids["lone4.png"], None, threshold=THRESHOLD).pages == []
    # the default threshold comes from settings
    default = services.settings.retrieval.near_duplicate_threshold
    assert similar_pages(services, ids["p1.png"], None).threshold == default


def test_unknown_pages_other_collections_and_bad_arguments_are_refused(services: Services, indexed: object) -> None:
    ids = page_ids_by_name(services)
    with pytest.raises(NotFoundError, match="page 999999 does not exist"):
        similar_pages(services, 999999, None)
    with pytest.raises(NotFoundError, match=f"page {ids['p0.png']} does not exist"):
        similar_pages(services, ids["p0.png"], {"someone-else"})  # not in the caller's collections: not found
    with pytest.raises(ConfigError, match="threshold"):
        similar_pages(services, ids["p0.png"], None, threshold=0.0)
    with pytest.raises(ConfigError, match="limit"):
        similar_pages(services, ids["p0.png"], None, limit=0)
    with pytest.raises(NotFoundError, match="collection 'nope' does not exist"):
        near_duplicate_groups(services, "nope")


def test_deleted_pages_drop_out_of_similar_pages_and_groups(services: Services, indexed: object) -> None:
    ids = page_ids_by_name(services)
    with services.sessions() as session:
        document_id = repository.describe_pages(session, [ids["p2.png"]])[ids["p2.png"]].document_id
    delete_documents(services, "default", document_ids=[document_id])
    names = {Path(p.path).name for p in similar_pages(services, ids["p2-jpeg.jpg"], None, threshold=THRESHOLD).pages}
    assert names == {"p2-half.png", "p2-crop.png"}
    report = near_duplicate_groups(services, "default", threshold=THRESHOLD)
    assert report.sizes == [4, 4, 4, 3]
    with pytest.raises(NotFoundError):
        similar_pages(services, ids["p2.png"], None)


def test_pages_without_a_clip_vector_and_clip_off(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url)
    make_photos(tmp_path / "corpus")
    without_clip = build_services(settings, embedders=Embedders(off={"clip": "disabled in settings"}))
    try:
        run_index(without_clip, [tmp_path / "corpus"])  # indexed (BM25 only): no page gets a clip vector
        page_id = next(iter(page_ids_by_name(without_clip).values()))
        with pytest.raises(ModelUnavailableError, match="disabled in settings"):
            similar_pages(without_clip, page_id, None)
        with pytest.raises(ModelUnavailableError, match="disabled in settings"):
            near_duplicate_groups(without_clip, "default")
    finally:
        without_clip.close()
    with_clip = build_services(settings, embedders=stand_in())
    try:
        with pytest.raises(NotFoundError, match=f"page {page_id} has no clip vector"):
            similar_pages(with_clip, page_id, None)
        report = near_duplicate_groups(with_clip, "default")
        assert (report.compared, report.without_vector, report.groups) == (0, ORIGINALS * 4 + LONERS, 0)
    finally:
        with_clip.close()


def test_status_lists_the_near_duplicate_groups(
    services: Services, indexed: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from indexer import cli

    monkeypatch.setattr(cli, "_services", lambda profile=None: services)
    monkeypatch.setattr(services, "close", lambda: None)  # the fixture closes it
    monkeypatch.setattr(cli.console, "width", 300)
    plain = CliRunner().invoke(cli.app, ["status"])
    assert plain.exit_code == 0, plain.output
    assert "near-duplicates" not in plain.output  # opt-in: grouping loads the models and reads every vector
    result = CliRunner().invoke(cli.app, ["status", "--duplicates", "--threshold", str(THRESHOLD)])
    assert result.exit_code == 0, result.output
    assert f"near-duplicates in default (clip cosine >= {THRESHOLD:g}): {ORIGINALS} groups, 16 pages, of 18 compared" \
        in result.output
    listed = [line for line in result.output.splitlines() if ".png" in line or ".jpg" in line]
    assert len(listed) == ORIGINALS * 4 and any("p3-crop.png" in line for line in listed)


def test_the_stand_in_embedder_is_deterministic_and_normalised() -> None:
    embedder = PerceptualImageEmbedder()
    photo = make_photo(7)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=35)
    vectors = embedder.embed_images([photo, Image.open(buffer), Image.new("RGB", (40, 30), (128, 128, 128))])
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors, PerceptualImageEmbedder().embed_images([photo, Image.open(buffer),
                                                                           Image.new("RGB", (40, 30), (128,) * 3)]))
    assert vectors[0] @ vectors[1] > 0.99  # a re-encoded copy
    texts = embedder.embed_texts(["a dog", "a dog", "a cat"])
    assert np.array_equal(texts[0], texts[1]) and np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_a_backend_that_cannot_give_its_vectors_back_is_a_config_error(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url)
    settings.index.backend = "chroma"  # its store searches, but does not hand back the vectors it holds
    (tmp_path / "corpus").mkdir()
    make_photo(1).save(tmp_path / "corpus" / "a.png")
    services = build_services(settings, embedders=stand_in())
    try:
        run_index(services, [tmp_path / "corpus"])
        (page_id,) = page_ids_by_name(services).values()
        with pytest.raises(ConfigError, match="index.backend='chroma' does not give back; the faiss backend does"):
            similar_pages(services, page_id, None)
    finally:
        services.close()
