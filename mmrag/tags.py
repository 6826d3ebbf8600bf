"""Zero-shot tags for photos: CLIP scores a label list against each photo's vector; the best labels are kept.

    tagger = build_tagger(settings.tags, clip_embedder, labels)   # the labels' text vectors, made once
    tagger.tag(image_vectors)                                     # → each photo's [(label, score)], best first

A job's writer tags each batch's photos from the CLIP vectors it has just made, in the transaction that vouches for
them (write_tags): a photo marked indexed has its tags, a crash leaves neither, and a page written again replaces
its tags. `retag` tags a collection again with another list (kept as the collection's own for its later jobs) from
the vectors its store holds, reading no image where the store gives its vectors back (HoldsVectors), else from
the stored page images (no file is ingested again). Only photos are tagged (pages of image documents): a
document page is no "photo of a dog".

Scores are CLIP's zero-shot classification: a softmax over the labels of the cosine similarities scaled by the
model's own trained logit scale (100 for the released CLIP weights). Chosen over a cosine threshold because
cosines are not comparable across models (a match is about 0.3 for one, 0.2 for another) while a softmax share is
what CLIP was trained and evaluated on; its price is that the scores are relative to the list: a photo of nothing
in the list still gives its nearest label most of the share, and a longer list spreads it thinner (settings
tags.min_score and tags.max_tags choose what is kept). Under the tiny-random profile the tags mean nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrag.config import TagSettings
from mmrag.errors import ConfigError, ModelUnavailableError, NotFoundError
from mmrag.protocols import HoldsVectors
from mmrag.store import bulk, repository
from mmrag.store.db import transaction
from mmrag.types import SearchFilters

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mmrag.services import Services

log = logging.getLogger(__name__)

TAGGED_BY = "clip"  # the retriever whose vectors tags are made from
# The trained value of every released CLIP (OpenAI's and open_clip's clamp it there): used for an embedder that
# does not say its own (a stand-in), whatever model it stands for.
CLIP_LOGIT_SCALE = 100.0
MAX_LABEL_CHARS = 100  # page_tags.tag's width
MAX_LABELS = 5000

# COCO's 80 categories, then common subjects of personal photos that COCO lacks.
DEFAULT_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
    "beach", "mountain", "forest", "lake", "river", "sea", "snow", "sunset", "city street", "building",
    "bridge", "garden", "flower", "tree", "sky", "night", "food", "drink", "baby", "child", "group of people",
    "selfie", "portrait", "wedding", "birthday party", "concert", "sports", "kitchen", "living room",
    "bathroom", "office", "classroom", "restaurant", "shop", "market", "airport", "train station", "road",
    "field", "farm", "park", "playground", "swimming pool", "museum", "church", "monument", "painting",
    "screenshot", "document", "receipt", "whiteboard", "map", "text", "fish", "insect", "butterfly",
)  # fmt: skip


def clean_labels(labels: Sequence[str], *, where: str = "labels") -> tuple[str, ...]:
    """Labels as tags are stored: stripped, blank ones and repeats (ignoring case) dropped, order kept."""
    seen: set[str] = set()
    cleaned: list[str] = []
    for raw in labels:
        label = " ".join(str(raw).split())
        if not label or label.casefold() in seen:
            continue
        if len(label) > MAX_LABEL_CHARS:
            raise ConfigError(f"{where}: label {label[:40]!r}... is longer than {MAX_LABEL_CHARS} characters")
        seen.add(label.casefold())
        cleaned.append(label)
    if not cleaned:
        raise ConfigError(f"{where}: no labels (one a line; '#' starts a comment)")
    if len(cleaned) > MAX_LABELS:
        raise ConfigError(f"{where}: {len(cleaned)} labels, more than {MAX_LABELS}")
    return tuple(cleaned)


def read_labels(path: Path) -> tuple[str, ...]:
    """A labels file: one label a line; blank lines and what follows '#' are ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"labels file {str(path)!r} cannot be read: {exc}") from exc
    return clean_labels([line.split("#", 1)[0] for line in text.splitlines()], where=f"labels file {str(path)!r}")


def settings_labels(settings: TagSettings) -> tuple[str, ...]:
    """The settings' list: tags.labels_file's, else DEFAULT_LABELS."""
    return read_labels(settings.labels_file) if settings.labels_file is not None else DEFAULT_LABELS


def collection_labels(session: Session, collection_id: int, settings: TagSettings) -> tuple[str, ...]:
    """The list a collection is tagged with: its own (set by a re-tag), else the settings'."""
    own = repository.collection_labels(session, collection_id)
    return tuple(own) if own else settings_labels(settings)


def logit_scale(embedder: Any) -> float:
    """The temperature of the embedder's model: its trained logit scale (exp of the stored log), else CLIP's."""
    value = getattr(embedder, "logit_scale", None)
    if value is None:
        parameter = getattr(getattr(embedder, "model", None), "logit_scale", None)
        if parameter is not None:
            value = float(parameter.detach().float().exp().item())
    return float(value) if value is not None else CLIP_LOGIT_SCALE


@dataclass(frozen=True)
class Tagger:
    """A label list's text vectors and what decides which labels a photo keeps."""

    labels: tuple[str, ...]
    vectors: np.ndarray  # (len(labels), dim), L2-normalised
    scale: float
    min_score: float
    max_tags: int

    def scores(self, image_vectors: np.ndarray) -> np.ndarray:
        """(n, len(labels)) softmax shares of each label for each photo (rows sum to 1)."""
        image_vectors = np.asarray(image_vectors, dtype=np.float32).reshape(-1, self.vectors.shape[1])
        logits = self.scale * (image_vectors @ self.vectors.T).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        shares = np.exp(logits)
        return shares / shares.sum(axis=1, keepdims=True)

    def tag(self, image_vectors: np.ndarray) -> list[list[tuple[str, float]]]:
        """Each photo's kept labels and their shares, best first (ties by list order)."""
        tagged = []
        for row in self.scores(image_vectors):
            order = np.argsort(-row, kind="stable")[: self.max_tags]
            tagged.append([(self.labels[i], float(row[i])) for i in order if row[i] >= self.min_score])
        return tagged

    def rows(self, page_ids: Sequence[int], image_vectors: np.ndarray) -> list[dict[str, Any]]:
        """page_tags rows for these photos."""
        return [
            {"page_id": int(page_id), "tag": label, "score": score}
            for page_id, kept in zip(page_ids, self.tag(image_vectors), strict=True)
            for label, score in kept
        ]


def build_tagger(settings: TagSettings, embedder: Any, labels: Sequence[str]) -> Tagger:
    """The labels' text vectors (settings.prompt around each), made once for a job or a re-tag."""
    if "{label}" not in settings.prompt:
        raise ConfigError(f"tags.prompt {settings.prompt!r} must hold {{label}}")
    labels = clean_labels(labels)
    try:
        prompts = [settings.prompt.format(label=label) for label in labels]
    except (KeyError, IndexError, ValueError) as exc:  # another {field}, a stray brace
        raise ConfigError(f"tags.prompt {settings.prompt!r} cannot be filled with a label: {exc!r}") from None
    vectors = np.asarray(embedder.embed_texts(prompts), dtype=np.float32)
    return Tagger(labels, vectors, logit_scale(embedder), settings.min_score, settings.max_tags)


def job_tagger(services: Services, collection_id: int, embedders: Any) -> Tagger | None:
    """The tagger a job over the collection writes tags with, or None: tags are off, or CLIP is."""
    settings = services.settings.tags
    embedder = embedders.get(TAGGED_BY)
    if not settings.enabled or embedder is None:
        return None
    with services.sessions() as session:
        labels = collection_labels(session, collection_id, settings)
    return build_tagger(settings, embedder, labels)


def write_tags(session: Session, tagger: Tagger | None, page_ids: np.ndarray, image_vectors: np.ndarray) -> int:
    """In the caller's transaction (the one that vouches for these CLIP vectors): the photos among the pages get
    their tags, replacing any they had. Returns how many photos kept at least one tag."""
    if tagger is None or len(page_ids) == 0:
        return 0
    photos = bulk.photo_page_ids(session, [int(i) for i in page_ids])
    if not photos:
        return 0
    keep = np.array([int(i) in photos for i in page_ids], dtype=bool)
    ids = [int(i) for i in np.asarray(page_ids)[keep]]
    rows = tagger.rows(ids, np.asarray(image_vectors)[keep])
    bulk.replace_page_tags(session, ids, rows)
    return len({row["page_id"] for row in rows})


# ----------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TagCount:
    tag: str
    count: int


def tag_counts(
    services: Services, collections: Sequence[str], filters: SearchFilters | None = None, *, limit: int | None = None
) -> list[TagCount]:
    """How many indexed pages of the collections passing `filters` hold each tag, most first: the counts beside a
    search's filter `tags` (with filters.tags given, the tags found together with those)."""
    with services.sessions() as session:
        ids = [repository.get_collection(session, name).id for name in collections]
        counts = repository.tag_counts(session, ids, filters or SearchFilters(), limit=limit)
    return [TagCount(tag, count) for tag, count in counts]


# ----------------------------------------------------------------------------------------------- re-tagging


@dataclass(frozen=True)
class RetagReport:
    collection: str
    labels: int  # the list's length
    photos: int  # photos tagged again
    tagged: int  # of which kept at least one tag
    source: str  # "stored vectors" or "page images": where the photos' vectors came from
    meaningless: bool  # tiny-random profile: the tags mean nothing


def retag(
    services: Services, collection: str, labels: Sequence[str] | None = None, *, reset: bool = False
) -> RetagReport:
    """Tag the collection's photos again: with `labels` (kept as the collection's own list for its later jobs),
    with the settings' list after `reset` (its own list forgotten), else with the list it has. Runs as the
    collection's writer; a photo's old tags are replaced in the transaction that writes its new ones, so a re-tag
    cut short leaves every photo with one set, and running it again finishes it."""
    from mmrag.indexing.run import collection_writer

    if labels is not None:
        labels = clean_labels(labels)
    embedders = services.embedders([TAGGED_BY])  # CLIP alone: the other models have nothing to do here
    embedder = embedders.get(TAGGED_BY)
    if embedder is None:
        raise ModelUnavailableError(TAGGED_BY, f"tags are made by CLIP, which is off: {embedders.why_off([TAGGED_BY])}")
    with services.sessions() as session:
        collection_id = repository.get_collection(session, collection).id
    with collection_writer(services, collection_id, collection):
        with transaction(services.sessions) as session:
            if labels is not None or reset:
                repository.set_collection_labels(session, collection_id, labels or ())
            chosen = collection_labels(session, collection_id, services.settings.tags)
        tagger = build_tagger(services.settings.tags, embedder, chosen)
        store = services.collections.stores(collection_id, retrievers=[TAGGED_BY]).get(TAGGED_BY)
        source = "stored vectors" if isinstance(store, HoldsVectors) else "page images"
        photos = tagged = 0
        after = 0
        chunk = max(1, services.settings.batch_pages) if store is None or source == "page images" else 1000
        while True:
            with services.sessions() as session:
                pages = repository.photos_to_tag(session, collection_id, TAGGED_BY, after=after, limit=chunk)
            if not pages:
                break
            ids = np.array([page_id for page_id, _ in pages], dtype=np.int64)
            vectors = _vectors(services, store, embedder, pages)
            with transaction(services.sessions) as session:
                tagged += write_tags(session, tagger, ids, vectors)
            photos += len(pages)
            after = pages[-1][0]
        log.info("re-tagged %d photos of collection %s with %d labels (%s)", photos, collection, len(chosen), source)
    return RetagReport(collection, len(chosen), photos, tagged, source, bool(embedders.meaningless))


def _vectors(services: Services, store: Any, embedder: Any, pages: list[tuple[int, str | None]]) -> np.ndarray:
    """The photos' CLIP vectors: given back by the store when it can, else made again from their stored images."""
    ids = np.array([page_id for page_id, _ in pages], dtype=np.int64)
    if isinstance(store, HoldsVectors):
        return np.asarray(store.vectors(ids), dtype=np.float32)
    from PIL import Image

    images = []
    for page_id, relative in pages:
        if relative is None:
            raise NotFoundError(f"photo page {page_id} has no stored image to tag from")
        with Image.open(services.storage_dir / relative) as image:
            images.append(image.convert("RGB"))
    return np.asarray(embedder.embed_images(images), dtype=np.float32)
