"""Zero-shot tags for photos (mmrag.tags): written by real jobs with the photos' CLIP vectors, shown in hits, filtered
and counted, tagged again with another list, and consistent after a crash. Real SQL (SQLite and PostgreSQL), real
FAISS; the CLIP is a stand-in that fits the ImageEmbedder protocol and sees colours, so the right tags are known."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from mmrag.errors import ConfigError, ModelUnavailableError
from mmrag.indexing import run_index
from mmrag.retrieval import search
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.store import bulk
from mmrag.store.models import Document, Page, PageTag
from mmrag.tags import DEFAULT_LABELS, TagCount, Tagger, clean_labels, read_labels, retag, tag_counts
from mmrag.types import SearchFilters, Tag
from tests.factories import make_pdf
from tests.test_pipeline import make_settings

PALETTE = {"red": (220, 20, 20), "green": (20, 180, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}
AXES = [*PALETTE, "other"]
SYNONYMS = {"verde": "green"}


class ColourClip:
    """A stand-in CLIP (ImageEmbedder): an image's vector is the share of its pixels nearest each palette colour,
    a text's is the axis of the first colour word it holds (`other` for none). So a red photo's vector equals the
    text vector of "a photo of a red.", and a half red, half green one is as near to both."""

    model_id, revision, dim, meaningless, logit_scale = "test:colour-clip", "1", len(AXES), False, 100.0

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls, self.fail_on_call = 0, fail_on_call

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("device lost")
        palette = np.array(list(PALETTE.values()), dtype=np.float32)
        rows = []
        for image in images:
            pixels = np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float32).reshape(-1, 3)
            nearest = np.argmin(((pixels[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
            shares = np.bincount(nearest, minlength=len(AXES)).astype(np.float32)
            rows.append(shares / np.linalg.norm(shares))
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            words = [SYNONYMS.get(w, w) for w in text.lower().replace(".", " ").split()]
            axis = next((AXES.index(w) for w in words if w in PALETTE), AXES.index("other"))
            rows.append(np.eye(self.dim, dtype=np.float32)[axis])
        return np.stack(rows)


def photo(path: Path, *colours: str, height: int = 40) -> Path:
    """A photo in vertical bands of equal width, one per colour (`height` tells apart photos of the same colours)."""
    width = 60
    image = Image.new("RGB", (width, height))
    band = width // len(colours)
    for i, colour in enumerate(colours):
        image.paste(PALETTE[colour], (i * band, 0, (i + 1) * band, height))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# name → its colours; what tags each must get follows from them (expected_tags), not from the code under test
PHOTOS = {
    "red-1.png": ("red",), "red-2.png": ("red",), "green-1.png": ("green",), "blue-1.png": ("blue",),
    "red-green-1.png": ("red", "green"), "red-green-2.png": ("green", "red"),
}


def make_corpus(root: Path) -> None:
    for i, (name, colours) in enumerate(PHOTOS.items()):
        photo(root / name, *colours, height=40 + i)
    # A document page: white, which the stand-in sees as nearest yellow; pages of documents are never tagged.
    make_pdf(root / "letter.pdf", ["a letter, not a photo"])


def expected_tags(colours: Sequence[str], labels: Sequence[str]) -> set[str]:
    """The labels a photo keeps: the colours it is made of that the list names (each an equal share of it), or,
    when the list names none of them, every label (an equal share each: the softmax is a forced choice)."""
    named = {SYNONYMS.get(label, label): label for label in labels}
    kept = {named[c] for c in colours if c in named}
    return kept or set(labels)


LABELS = ["red", "green", "blue", "yellow"]


@pytest.fixture
def services(tmp_path: Path, database_url: str) -> Iterator[Services]:
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# colours\nred\ngreen\n\nblue  # primary\nyellow\nRed\n", encoding="utf-8")
    settings = make_settings(tmp_path, database_url)
    settings.tags.labels_file = labels_file
    services = build_services(settings, embedders=Embedders(clip=ColourClip()))
    yield services
    services.close()


def stored_tags(services: Services) -> dict[str, dict[str, float]]:
    """File name → its tags and scores, as SQL holds them."""
    with services.sessions() as session:
        rows = session.execute(
            select(Page.id, PageTag.tag, PageTag.score).join(PageTag, PageTag.page_id == Page.id)
        ).all()
        names = _names(services)
    found: dict[str, dict[str, float]] = {}
    for page_id, tag, score in rows:
        found.setdefault(names[page_id], {})[tag] = score
    return found


def _names(services: Services) -> dict[int, str]:
    from mmrag.store.models import DocumentPath

    with services.sessions() as session:
        rows = session.execute(
            select(Page.id, DocumentPath.path).join(DocumentPath, DocumentPath.document_id == Page.document_id)
        ).all()
    return {page_id: Path(path).name for page_id, path in rows}


def found(services: Services, **filters: object) -> list[str]:
    hits = search(services, "default", text="a photo", k=50, retrievers=["clip"], filters=SearchFilters(**filters))
    return sorted(Path(hit.path).name for hit in hits)


def test_a_job_tags_each_photo_with_its_labels_and_scores(services: Services, tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    report = run_index(services, [tmp_path / "corpus"])
    assert report.counts["indexed"] == len(PHOTOS) + 1
    tags = stored_tags(services)
    assert set(tags) == set(PHOTOS)  # the PDF page is no photo: no tags, though its CLIP vector is "yellow"
    for name, colours in PHOTOS.items():
        assert set(tags[name]) == expected_tags(colours, LABELS), name
        share = 1 / len(colours)
        assert all(score == pytest.approx(share, abs=0.02) for score in tags[name].values()), (name, tags[name])
    # hits carry their tags, best first
    hits = search(services, "default", text="red", k=50, retrievers=["clip"])
    by_name = {Path(hit.path).name: hit for hit in hits}
    assert by_name["red-1.png"].tags == (Tag("red", pytest.approx(1.0, abs=1e-6)),)
    assert by_name["letter.pdf"].tags == ()
    mixed = by_name["red-green-1.png"].tags
    assert {t.name for t in mixed} == {"red", "green"} and mixed[0].score >= mixed[1].score


def test_the_tags_filter_and_the_counts_agree_with_a_brute_force_oracle(services: Services, tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    run_index(services, [tmp_path / "corpus"])
    truth = {name: expected_tags(colours, LABELS) for name, colours in PHOTOS.items()}
    for wanted in [("red",), ("green",), ("blue",), ("yellow",), ("red", "green"), ("red", "blue"), ("nothing",)]:
        oracle = sorted(name for name, tags in truth.items() if set(wanted) <= tags)  # all-of
        assert found(services, tags=wanted) == oracle, wanted
    assert found(services, tags=("red",), kind="pdf") == []
    assert found(services, tags=("red",), path_prefix=str((tmp_path / "corpus" / "red-1").resolve())) == ["red-1.png"]
    # counts: over the whole collection, and over what a filter keeps
    counted = Counter(tag for tags in truth.values() for tag in tags)
    oracle_counts = sorted(counted.items(), key=lambda item: (-item[1], item[0]))
    assert tag_counts(services, ["default"]) == [TagCount(tag, n) for tag, n in oracle_counts]
    with_red = Counter(tag for tags in truth.values() if "red" in tags for tag in tags)
    assert tag_counts(services, ["default"], SearchFilters(tags=("red",))) == [
        TagCount(tag, n) for tag, n in sorted(with_red.items(), key=lambda item: (-item[1], item[0]))
    ]
    assert tag_counts(services, ["default"], limit=1) == [TagCount(*oracle_counts[0])]
    assert tag_counts(services, ["default"], SearchFilters(kind="pdf")) == []


def test_retagging_replaces_the_tags_and_the_list_stays_the_collections(services: Services, tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    run_index(services, [tmp_path / "corpus"])
    new_labels = ["red", "verde", "blue"]
    report = retag(services, "default", new_labels)
    assert (report.labels, report.photos, report.tagged) == (3, len(PHOTOS), len(PHOTOS))
    assert report.source == "stored vectors"  # FAISS gives its vectors back: no image read
    tags = stored_tags(services)
    for name, colours in PHOTOS.items():
        assert set(tags[name]) == expected_tags(colours, new_labels), name
    assert "green" not in {tag for found in tags.values() for tag in found}  # replaced, not added to
    # The collection keeps its list: a photo indexed later is tagged with it.
    photo(tmp_path / "more" / "green-2.png", "green")
    run_index(services, [tmp_path / "more"])
    assert set(stored_tags(services)["green-2.png"]) == {"verde"}
    # Back to the settings' list.
    retag(services, "default", reset=True)
    assert set(stored_tags(services)["green-2.png"]) == {"green"}
    with services.sessions() as session:
        rows = session.scalar(select(func.count()).select_from(PageTag))
    assert rows == sum(len(expected_tags(c, LABELS)) for c in PHOTOS.values()) + 1


def test_a_crash_in_the_commit_leaves_no_tags_behind_and_the_resumed_job_writes_each_once(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tags are written in the transaction that marks the photos indexed: a crash before its commit loses both,
    the resumed job writes them once (batch_pages=3: the second batch's commit fails)."""
    make_corpus(tmp_path / "corpus")
    real, calls = bulk.set_items_indexed, []

    def failing(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed mid-commit")
        real(*args, **kwargs)

    monkeypatch.setattr(bulk, "set_items_indexed", failing)
    with pytest.raises(RuntimeError, match="killed mid-commit"):
        run_index(services, [tmp_path / "corpus"])
    with services.sessions() as session:
        tagged_pending = session.scalar(
            select(func.count()).select_from(PageTag).join(Page, Page.id == PageTag.page_id)
            .join(Document, Document.id == Page.document_id).where(Document.status != "indexed")
        )
    assert tagged_pending == 0  # a page that has tags is indexed
    assert 0 < len(stored_tags(services)) < len(PHOTOS)
    monkeypatch.setattr(bulk, "set_items_indexed", real)
    report = run_index(services, [tmp_path / "corpus"])
    assert report.resumed
    tags = stored_tags(services)
    assert set(tags) == set(PHOTOS)
    for name, colours in PHOTOS.items():
        assert set(tags[name]) == expected_tags(colours, LABELS), name
    with services.sessions() as session:
        rows = session.scalar(select(func.count()).select_from(PageTag))
        orphans = session.scalar(
            select(func.count()).select_from(PageTag).where(PageTag.page_id.not_in(select(Page.id)))
        )
    assert rows == sum(len(expected_tags(c, LABELS)) for c in PHOTOS.values()) and orphans == 0


def test_an_embedding_error_then_resume_tags_every_photo(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url)
    settings.tags.labels_file = tmp_path / "labels.txt"
    settings.tags.labels_file.write_text("\n".join(LABELS), encoding="utf-8")
    make_corpus(tmp_path / "corpus")
    services = build_services(settings, embedders=Embedders(clip=ColourClip(fail_on_call=2)))
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            run_index(services, [tmp_path / "corpus"])
    finally:
        services.close()
    services = build_services(settings, embedders=Embedders(clip=ColourClip()))
    try:
        assert run_index(services, [tmp_path / "corpus"]).resumed
        tags = stored_tags(services)
        assert {name: set(t) for name, t in tags.items()} == {
            name: expected_tags(colours, LABELS) for name, colours in PHOTOS.items()
        }
    finally:
        services.close()


def test_no_tags_without_clip_or_when_turned_off(tmp_path: Path, database_url: str, tiny_embedders: Embedders) -> None:
    settings = make_settings(tmp_path, database_url)
    make_corpus(tmp_path / "corpus")
    services = build_services(settings, embedders=Embedders(text=tiny_embedders.get("text")))
    try:
        run_index(services, [tmp_path / "corpus"])
        assert stored_tags(services) == {}
        with pytest.raises(ModelUnavailableError, match="CLIP"):
            retag(services, "default")
    finally:
        services.close()
    settings.tags.enabled = False
    services = build_services(settings, embedders=Embedders(clip=ColourClip()))
    try:
        photo(tmp_path / "more" / "red-3.png", "red")
        run_index(services, [tmp_path / "more"])
        assert stored_tags(services) == {}
    finally:
        services.close()


def test_the_tiny_random_clip_tags_through_the_real_model_code(
    tmp_path: Path, database_url: str, tiny_embedders: Embedders
) -> None:
    """Real open_clip code (random weights, so which labels win means nothing): the scores are the softmax shares of
    its own logit scale, recomputed here from its vectors."""
    settings = make_settings(tmp_path, database_url)
    settings.tags.min_score = 0.001
    services = build_services(settings, embedders=Embedders(clip=tiny_embedders.get("clip"), meaningless=True))
    try:
        make_corpus(tmp_path / "corpus")
        run_index(services, [tmp_path / "corpus"])
        clip = tiny_embedders.get("clip")
        label_vectors = clip.embed_texts([f"a photo of a {label}." for label in DEFAULT_LABELS])
        scale = float(clip.model.logit_scale.detach().exp())
        store = services.collections.stores(1).get("clip")
        names = _names(services)
        tags = stored_tags(services)
        assert set(tags) == set(PHOTOS)
        for page_id in store.ids():
            name = names[int(page_id)]
            if name not in PHOTOS:
                continue
            logits = scale * store.vectors(np.array([page_id]))[0] @ label_vectors.T
            shares = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            best = np.argsort(-shares, kind="stable")[:5]
            assert tags[name] == {DEFAULT_LABELS[i]: pytest.approx(shares[i], abs=1e-4) for i in best}
    finally:
        services.close()


def test_labels_are_cleaned_and_bad_lists_refused(tmp_path: Path) -> None:
    assert clean_labels(["  hot   dog ", "Dog", "dog", "", "cat"]) == ("hot dog", "Dog", "cat")
    with pytest.raises(ConfigError, match="no labels"):
        clean_labels(["", "  "])
    with pytest.raises(ConfigError, match="longer than"):
        clean_labels(["x" * 101])
    with pytest.raises(ConfigError, match="cannot be read"):
        read_labels(tmp_path / "missing.txt")
    from mmrag.config import TagSettings
    from mmrag.tags import build_tagger

    for prompt in ("a photo", "a {thing} of {label}", "a {label"):
        with pytest.raises(ConfigError, match="tags.prompt"):
            build_tagger(TagSettings(prompt=prompt), ColourClip(), ["red"])
    tagger = Tagger(("a", "b"), np.eye(2, dtype=np.float32), 100.0, 0.1, 1)
    assert tagger.tag(np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)) == [
        [("a", pytest.approx(1.0))], [("b", pytest.approx(1 / (1 + np.exp(-20.0))))]
    ]


def test_the_cli_tags_again_and_searches_by_tag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> None:
    """`mmrag tag --labels` with the tiny-random profile (its tags mean nothing: what is checked is that the
    command, the table and the filter agree with SQL)."""
    from typer.testing import CliRunner

    from indexer.cli import app
    from tests.conftest import cli_environment

    cli_environment(monkeypatch, tmp_path, database_url)
    monkeypatch.setenv("MMRAG_TAGS__MIN_SCORE", "0.001")
    make_corpus(tmp_path / "corpus")
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(tmp_path / "corpus")]).exit_code == 0
    labels = tmp_path / "mine.txt"
    labels.write_text("cat\ndog\nbird\n", encoding="utf-8")
    tagged = runner.invoke(app, ["tag", "--labels", str(labels)])
    assert tagged.exit_code == 0, tagged.output
    assert f"{len(PHOTOS)} photos tagged with 3 labels from their stored vectors" in tagged.output
    settings = make_settings(tmp_path, database_url)
    services = build_services(settings, embedders=Embedders())
    try:
        tags = stored_tags(services)
        counts = tag_counts(services, ["default"])
    finally:
        services.close()
    assert set(tags) == set(PHOTOS) and {t for found in tags.values() for t in found} <= {"cat", "dog", "bird"}
    for count in counts:
        assert f"{count.tag}" in tagged.output
    chosen = counts[-1].tag
    hits = runner.invoke(app, ["search", "a photo", "-r", "clip", "-k", "20", "--tag", chosen])
    assert hits.exit_code == 0, hits.output
    shown = {name for name in PHOTOS if name in hits.output}
    assert shown == {name for name, found in tags.items() if chosen in found}
    assert "tags" in hits.output and "letter.pdf" not in hits.output
    refused = runner.invoke(app, ["tag", "--labels", str(labels), "--reset"])
    assert refused.exit_code != 0
