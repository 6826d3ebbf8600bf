"""Near-duplicates: pages whose CLIP image vectors are at least a cosine threshold apart, one page's or a whole
collection's in groups (beyond the exact-bytes dedup of documents by content hash).

Read-only, like a search: the queries are the vectors the clip store already holds (protocols.HoldsVectors), so no
model runs and nothing is written. SQL stays the truth: pages a store still holds after their document was deleted
(not swept yet) are left out.

    similar_pages(services, page_id, scope)        the pages closest to one page, at the threshold, best first
    near_duplicate_groups(services, "photos")      the collection's groups, largest first (`mmrag status --duplicates`)

Grouping rule: each page is linked to those of its `neighbours` nearest pages (settings.retrieval.
near_duplicate_neighbours) at or above the threshold, and a group is a connected component of those links (single
linkage). A copy of a copy is therefore grouped with the original even when the two are further apart than the
threshold; `similarity` in a group is each page's to the group's first page (its lowest id, usually the one indexed
first). The neighbour searches are the store's own k-nearest searches in batches (exact for a flat index, the index's
approximation for ivf and hnsw), so a collection of n pages costs n searches in C, never n^2 comparisons in Python.

Pages without a CLIP vector: `similar_pages` raises NotFoundError saying so (the page exists, but it has nothing to
compare: indexed while clip was off, or its vector not committed yet); grouping leaves them out and says how many
pages it compared. With clip off there is nothing to compare at all: ModelUnavailableError, like an image search.
The stand-in embedder for tests and benchmarks is mmrag.embedders.perceptual (not CLIP: random tiny CLIP weights put
near-duplicates no closer than any two images).
"""

from __future__ import annotations

import logging
from collections.abc import Collection as Names
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

from mmrag.errors import ConfigError, ModelUnavailableError, NotFoundError
from mmrag.protocols import HoldsVectors
from mmrag.services import Services
from mmrag.store import repository
from mmrag.types import DocumentStatus, SearchFilters

log = logging.getLogger(__name__)

RETRIEVER = "clip"  # the image vectors compared: CLIP's (a page image or a photo, one vector each)
BATCH = 1024  # pages whose neighbours one store search finds, when a collection is grouped
ALL_PAGES = 2**62  # "no limit" for repository.filtered_page_ids


@dataclass(frozen=True)
class SimilarPage:
    page_id: int
    document_id: int
    page_number: int
    path: str
    name: str  # its document's name to show: the file name an upload was sent with, else its path's last part
    similarity: float  # cosine of the two CLIP image vectors, 0-1 for near-duplicates


@dataclass(frozen=True)
class SimilarPages:
    """The pages near one page (`page_id`, of `collection`), at `threshold`, most similar first."""

    page_id: int
    collection: str
    threshold: float
    pages: list[SimilarPage]


@dataclass(frozen=True)
class DuplicateGroup:
    """One group of near-duplicates: its pages, the first (lowest id) first, each with its similarity to the first."""

    pages: list[SimilarPage]


@dataclass(frozen=True)
class DuplicatesReport:
    """A collection grouped into near-duplicates: `sizes` of every group (largest first), the `largest` in full."""

    collection: str
    threshold: float
    compared: int  # pages with a CLIP vector, each compared with its nearest neighbours
    without_vector: int  # indexed pages the clip store holds no vector for (left out)
    sizes: list[int]
    largest: list[DuplicateGroup]

    @property
    def groups(self) -> int:
        return len(self.sizes)

    @property
    def pages_in_groups(self) -> int:
        return sum(self.sizes)


def similar_pages(
    services: Services,
    page_id: int,
    collections: Names[str] | None,
    *,
    threshold: float | None = None,
    limit: int = 20,
) -> SimilarPages:
    """The pages of `page_id`'s collection whose CLIP vectors have cosine >= `threshold` (default: settings.retrieval.
    near_duplicate_threshold) with its own, most similar first, at most `limit`, the page itself left out.
    `collections`: the names the caller may read (None: any); a page in another is not found, like a missing one."""
    threshold = _checked_threshold(services, threshold)
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    with services.sessions() as session:
        found = repository.page_with_document(session, page_id)
        if found is None or found[1].status != DocumentStatus.INDEXED:
            raise NotFoundError(f"page {page_id} does not exist")
        collection_id = found[1].collection_id
        collection = repository.collection_names(session, [collection_id])[collection_id]
        generation = repository.collection_generation(session, collection_id)
    if collections is not None and collection not in collections:
        raise NotFoundError(f"page {page_id} does not exist")
    store = _clip_store(services, collection_id, generation)
    if store is None or page_id not in store:
        raise NotFoundError(
            f"page {page_id} has no {RETRIEVER} vector to compare (indexed while {RETRIEVER} was off, or not "
            f"committed yet): the next `mmrag index` of collection {collection!r} embeds it"
        )
    query = store.vectors([page_id])
    depth = limit + 1
    while True:
        hits = store.search(query, depth)[0]
        near = {hit.page_id: hit.score for hit in hits if hit.score >= threshold and hit.page_id != page_id}
        with services.sessions() as session:
            rows = repository.describe_pages(session, list(near))  # SQL is the truth: deleted pages drop out
        # Done when enough pass, or when the ranking ran out: the store holds no more, or the last hit is below
        # the threshold already (every one after it is too).
        if len(rows) >= limit or len(hits) < depth or not hits or hits[-1].score < threshold:
            break
        depth *= 4
    ranked = sorted(rows, key=lambda pid: (-near[pid], pid))[:limit]
    return SimilarPages(page_id, collection, threshold, _described(services, ranked, near))


def near_duplicate_groups(
    services: Services,
    collection: str,
    *,
    threshold: float | None = None,
    neighbours: int | None = None,
    largest: int = 10,
) -> DuplicatesReport:
    """The collection's near-duplicate groups (the module docstring's rule), largest first; the first `largest` of
    them with their pages described. Raises ModelUnavailableError when clip is off."""
    threshold = _checked_threshold(services, threshold)
    neighbours = neighbours if neighbours is not None else services.settings.retrieval.near_duplicate_neighbours
    if neighbours < 1:
        raise ConfigError(f"neighbours must be >= 1, got {neighbours}")
    with services.sessions() as session:
        collection_row = repository.get_collection(session, collection)
        collection_id, generation = collection_row.id, collection_row.generation
        indexed = np.asarray(
            repository.filtered_page_ids(session, collection_id, SearchFilters(), limit=ALL_PAGES), dtype=np.int64
        )
    store = _clip_store(services, collection_id, generation)
    held = store.ids() if store is not None else np.zeros(0, dtype=np.int64)
    ids = np.intersect1d(held, indexed)  # sorted; deleted pages a store still holds are left out
    without_vector = len(np.setdiff1d(indexed, held))
    if store is None or len(ids) < 2:
        return DuplicatesReport(collection, threshold, len(ids), without_vector, [], [])
    sources, targets = _links(store, ids, threshold, neighbours)
    labels = _components(len(ids), sources, targets)
    counts = np.bincount(labels, minlength=len(ids))
    grouped = np.flatnonzero(counts >= 2)
    # Largest first, then by the group's first page; a group's label is its lowest position, i.e. its first page.
    order = sorted(grouped.tolist(), key=lambda label: (-int(counts[label]), label))
    sizes = [int(counts[label]) for label in order]
    groups = []
    for label in order[:largest]:
        members = ids[labels == label]
        vectors = store.vectors(members)
        similarity = {int(pid): float(score) for pid, score in zip(members, vectors @ vectors[0], strict=True)}
        groups.append(DuplicateGroup(_described(services, [int(pid) for pid in members], similarity)))
    log.info("collection %s: %d near-duplicate groups of %d pages among %d compared (threshold %.3f)",
             collection, len(sizes), sum(sizes), len(ids), threshold)
    return DuplicatesReport(collection, threshold, len(ids), without_vector, sizes, groups)


# --- internals -------------------------------------------------------------------------------------------------


def _checked_threshold(services: Services, threshold: float | None) -> float:
    if threshold is None:
        return services.settings.retrieval.near_duplicate_threshold
    if not 0 < threshold <= 1:
        raise ConfigError(f"a near-duplicate threshold is a cosine similarity in (0, 1], got {threshold}")
    return float(threshold)


def _clip_store(services: Services, collection_id: int, generation: int) -> Any | None:
    """The collection's clip store (None: nothing committed yet). ModelUnavailableError when clip is off, ConfigError
    when the configured backend cannot give its vectors back."""
    embedders = services.embedders([RETRIEVER])  # CLIP alone: its store's manifest names its model and dimension
    if embedders.get(RETRIEVER) is None:
        why = embedders.why_off([RETRIEVER])
        raise ModelUnavailableError(RETRIEVER, f"near-duplicates compare its image vectors; {why}")
    store = services.collections.stores(collection_id, generation=generation, retrievers=[RETRIEVER]).get(RETRIEVER)
    if store is not None and not isinstance(store, HoldsVectors):
        raise ConfigError(
            f"near-duplicates read the {RETRIEVER} store's vectors, which index.backend="
            f"{services.settings.index.backend!r} does not give back; the faiss backend does"
        )
    return store


def _links(store: Any, ids: np.ndarray, threshold: float, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Each page's links (positions in `ids`) to those of its nearest neighbours at or above the threshold."""
    sources: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        rankings = store.search(store.vectors(batch), neighbours + 1)
        for offset, hits in enumerate(rankings):
            near = np.fromiter((hit.page_id for hit in hits if hit.score >= threshold), dtype=np.int64)
            positions = np.searchsorted(ids, near)
            known = (positions < len(ids)) & (ids[np.minimum(positions, len(ids) - 1)] == near)
            positions = positions[known & (positions != start + offset)]
            sources.append(np.full(len(positions), start + offset, dtype=np.int64))
            targets.append(positions)
    return np.concatenate(sources), np.concatenate(targets)


def _components(n: int, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Connected components of n nodes and these undirected links: each node's label is its component's lowest node.
    Min-label propagation with pointer jumping, vectorised over the links (no Python loop per link)."""
    labels = np.arange(n, dtype=np.int64)
    if len(sources) == 0:
        return labels
    while True:
        lowest = labels.copy()
        np.minimum.at(lowest, sources, labels[targets])
        np.minimum.at(lowest, targets, labels[sources])
        while True:  # pointer jumping: follow each label to its own label until it points at itself
            jumped = lowest[lowest]
            if np.array_equal(jumped, lowest):
                break
            lowest = jumped
        if np.array_equal(lowest, labels):
            return labels
        labels = lowest


def _described(services: Services, page_ids: Sequence[int], similarity: dict[int, float]) -> list[SimilarPage]:
    """These pages, in this order, as SimilarPage (pages SQL no longer holds as indexed are left out)."""
    with services.sessions() as session:
        rows = repository.describe_pages(session, list(page_ids))
        uploaded = repository.uploaded_names(session, {row.document_id for row in rows.values()})
    return [
        SimilarPage(
            page_id=pid,
            document_id=rows[pid].document_id,
            page_number=rows[pid].page_number,
            path=rows[pid].path,
            name=uploaded.get(rows[pid].document_id) or PurePath(rows[pid].path).name,
            similarity=min(similarity[pid], 1.0),  # float32 rounding can put a copy's cosine a hair above 1
        )
        for pid in page_ids
        if pid in rows
    ]
