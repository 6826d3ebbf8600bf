"""search(): run a query through every loaded retriever of the collections, fuse the rankings, filter, page."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmrag.config import RetrievalSettings, Settings
from mmrag import layout
from mmrag.errors import ConfigError
from mmrag.protocols import LexicalIndex
from mmrag.retrievers import RETRIEVERS, Embedders, Query
from mmrag.services import Services
from mmrag.store import repository
from mmrag.types import Hit, RetrievedPage, SearchFilters, SearchResult

log = logging.getLogger(__name__)

# A search's filters allowing at most this many pages of a collection hand their ids to the stores that search
# among given pages (protocols.SearchesWithin); more, and the hits are filtered after, retrievers asked deeper.
WITHIN_MAX_PAGES = 10_000


@dataclass(frozen=True)
class RetrieverHits:
    retriever: str
    hits: list[Hit]


@dataclass(frozen=True)
class _CollectionContext:
    """What a retriever's search reads of its collection beyond its own store (retrievers.SearchContext)."""

    services: Services
    collection_id: int
    generation: int | None
    within: np.ndarray | None = None

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def lexical(self) -> LexicalIndex:
        return self.services.collections.derived.lexical(self.collection_id, generation=self.generation)

    def candidates(self, retriever: str) -> Any | None:
        return self.services.collections.derived.candidate_index(self.collection_id, retriever)

    def stage(self, retriever: str) -> tuple[Any, Any | None] | None:
        embedder = self.services.embedders([retriever]).get(retriever)
        if embedder is None:
            return None
        stores = self.services.collections.stores(
            self.collection_id, generation=self.generation, retrievers=[retriever]
        )
        return embedder, stores.get(retriever)


def retrieve(
    services: Services,
    collection_id: int,
    *,
    text: str | None = None,
    image: Image.Image | None = None,
    depth: int = 50,
    retrievers: Sequence[str] | None = None,
    generation: int | None = None,
    within: np.ndarray | None = None,
) -> list[RetrieverHits]:
    """Each loaded retriever's own ranking, `depth` deep, in registry order: a text query goes to every retriever,
    an image to those that take image queries. Unless `retrievers` names them, retrievers whose fusion weight is 0
    are not run. `generation`: the collection's, when the caller has just read it
    (saves the derived indexes a round trip). `within`: the only pages wanted (a search's filters, from SQL); the
    stores that can search among them only do, the others rank the whole collection."""
    if (text is None) == (image is None):
        raise ConfigError("give exactly one of a text query or an image query")
    RETRIEVERS.check(retrievers or ())
    query = Query(text=text, image=image)
    chosen = [
        retriever for retriever in RETRIEVERS
        if (not retrievers or retriever.name in retrievers) and query.kind in retriever.query_kinds
        # one that weighs nothing in fusion is not run at all (no model call, no query embedding)
        and (retrievers or fusion_weight(retriever.name, services.settings.retrieval) > 0)
    ]
    embedders, unused = _models_for(services, collection_id, [r.name for r in chosen if r.embeds])
    stores = services.collections.stores(collection_id, generation=generation, retrievers=list(embedders.models))
    context = _CollectionContext(services, collection_id, generation, within)
    results: list[RetrieverHits] = []
    for retriever in chosen:
        embedder = embedders.get(retriever.name)
        store = stores.get(retriever.name)
        if retriever.embeds and (embedder is None or store is None):
            continue  # off, or nothing committed to search yet
        results.append(RetrieverHits(retriever.name, retriever.search(embedder, store, query, depth, context)))
    if image is not None and not results:
        takes = RETRIEVERS.taking("image")
        if retrievers and not set(takes) & set(retrievers):
            raise ConfigError(
                f"an image query needs a retriever that takes images ({', '.join(takes)}); asked for: "
                f"{', '.join(retrievers)}"
            )
        reasons = {
            name: "the collection holds no vectors of it" if name in unused else embedders.why_off([name])
            for name in takes
        }
        said = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        raise ConfigError(
            f"image search needs a retriever that takes images ({', '.join(takes)}), and none is on: "
            f"{next(iter(reasons.values())) if len(reasons) == 1 else said}"
        )
    return results


def _models_for(services: Services, collection_id: int, names: Sequence[str]) -> tuple[Embedders, list[str]]:
    """The loaded models, with those of `names` the collection holds vectors of loaded first if they are not yet
    (a one-shot CLI query loads no model it does not use: a BM25-only search none), and the names of `names` left
    unloaded because the collection holds no vectors of theirs. A process that has every model loaded already (the
    service) asks SQL nothing."""
    loaded = services.embedders(())
    untried = [name for name in names if name not in loaded.models and name not in loaded.off]
    if not untried:
        return loaded, []
    with services.sessions() as session:
        held = repository.retrievers_with_vectors(session, collection_id, untried)
    return services.embedders(held), [name for name in untried if name not in held]


def fuse(
    rankings: Sequence[RetrieverHits], settings: RetrievalSettings | None = None
) -> list[tuple[int, float, dict[str, float]]]:
    """Weighted reciprocal-rank fusion: (page id, fused score, per-retriever raw scores), best first.

    Ranks, not raw scores, are fused because cosine, MaxSim sums and BM25 live on unrelated scales; the
    weights (settings.retrieval.weights) let a weak retriever count for less instead of dragging good ones down.
    Hits with equal scores in one ranking share its rank (dense ranking: the next score takes the next rank).
    """
    settings = settings or RetrievalSettings()
    fused: dict[int, float] = {}
    raw: dict[int, dict[str, float]] = {}
    for ranking in rankings:
        weight = fusion_weight(ranking.retriever, settings)
        rank, previous = 0, None
        for hit in ranking.hits:
            if hit.score != previous:  # equal scores share a rank (the dates retriever's are all ties)
                rank, previous = rank + 1, hit.score
            fused[hit.page_id] = fused.get(hit.page_id, 0.0) + weight / (settings.rrf_k + rank)
            raw.setdefault(hit.page_id, {})[ranking.retriever] = hit.score
    order = sorted(fused, key=lambda page_id: (-fused[page_id], page_id))
    return [(page_id, fused[page_id], raw[page_id]) for page_id in order]


def fusion_weight(name: str, settings: RetrievalSettings) -> float:
    """A retriever's weight in fusion: settings.retrieval.weights where it names one, else the retriever's own."""
    if name in settings.weights:
        return settings.weights[name]
    return RETRIEVERS.get(name).weight if name in RETRIEVERS else 1.0


def search(
    services: Services,
    collections: str | Sequence[str],
    *,
    text: str | None = None,
    image: Image.Image | None = None,
    k: int = 10,
    offset: int = 0,
    retrievers: Sequence[str] | None = None,
    filters: SearchFilters | None = None,
) -> list[SearchResult]:
    """Hits offset..offset+k of one or more collections for a text or image query.

    Each hit carries the fused score and each retriever's own score. Several collections are fused each on
    its own and merged by fused score, which is rank-based, so they interleave rank by rank. Filters are applied against SQL after
    fusion; when they remove too much, the retrievers are asked again, deeper, until enough hits pass or the
    collection is exhausted, so a narrow filter still gets its full page of results.
    """
    names = [collections] if isinstance(collections, str) else list(collections)
    filters = filters or SearchFilters()
    settings = services.settings.retrieval
    with services.sessions() as session:
        generations = {
            collection.id: collection.generation
            for collection in (repository.get_collection(session, name) for name in names)
        }
        # A narrow filter's pages, read from SQL, go to the stores that can search among them only (Qdrant): their
        # best pages come first, however far down the whole collection's ranking they are.
        within: dict[int, np.ndarray | None] = {collection_id: None for collection_id in generations}
        if filters != SearchFilters():
            for collection_id in generations:
                allowed = repository.filtered_page_ids(session, collection_id, filters, limit=WITHIN_MAX_PAGES)
                within[collection_id] = None if allowed is None else np.asarray(allowed, dtype=np.int64)
    generations = {cid: g for cid, g in generations.items() if within[cid] is None or len(within[cid])}
    wanted = offset + k
    depth = max(settings.depth, 5 * wanted)
    while True:
        fused: list[tuple[int, float, dict[str, float]]] = []
        rankings_used: list[str] = []
        exhausted = True
        for collection_id, generation in generations.items():
            rankings = retrieve(services, collection_id, text=text, image=image, depth=depth, retrievers=retrievers,
                                generation=generation, within=within[collection_id])
            exhausted &= all(len(r.hits) < depth for r in rankings)
            rankings_used += [r.retriever for r in rankings if r.retriever not in rankings_used]
            fused += fuse(rankings, settings)
        fused.sort(key=lambda item: (-item[1], item[0]))
        with services.sessions() as session:
            # SQL is the truth: pages deleted (and not yet swept from a store) or filtered out are dropped here.
            rows = repository.describe_pages(session, [page_id for page_id, _, _ in fused], filters=filters)
        passing = [item for item in fused if item[0] in rows]
        if len(passing) >= wanted or exhausted:
            break
        depth *= 4
    retriever_name = "+".join(rankings_used)
    shown = passing[offset:wanted]
    with services.sessions() as session:
        uploaded = repository.uploaded_names(session, {rows[page_id].document_id for page_id, _, _ in shown})
        tagged = repository.page_tags(session, [page_id for page_id, _, _ in shown])
        captions = repository.page_captions(session, [page_id for page_id, _, _ in shown])
    return [
        SearchResult(
            page_id=page_id,
            document_id=rows[page_id].document_id,
            page_number=rows[page_id].page_number,
            path=rows[page_id].path,
            score=score,
            retriever=retriever_name,
            text=rows[page_id].text,
            scores=scores,
            name=uploaded.get(rows[page_id].document_id) or PurePath(rows[page_id].path).name,
            tags=tagged.get(page_id, ()),
            caption=captions.get(page_id),
        )
        for page_id, score, scores in shown
    ]


def looked_at(services: Services, pages: Mapping[int, int], text: str) -> dict[int, tuple[layout.Region, ...]]:
    """Page id → where the similarity maps of the loaded retrievers that have them (colpali) point for the text
    query on each of `pages` (page id → its collection id, which the callers have looked up already) they hold,
    best region first; pages without any are left out. A retriever with fusion weight 0 is not asked (its model is
    not run for a search either)."""
    if not pages or not text.strip():
        return {}
    embedders = services.embedders(())  # those the search used (a similarity map is of a ranking it made)
    mapping = [
        retriever for retriever in RETRIEVERS
        if retriever.similarity_maps and embedders.get(retriever.name) is not None
        and fusion_weight(retriever.name, services.settings.retrieval) > 0
    ]
    if not mapping:
        return {}
    with services.sessions() as session:
        image_paths = repository.page_image_paths(session, list(pages))
    by_collection: dict[int, dict[int, tuple[int, int]]] = {}
    for page_id, collection_id in pages.items():
        size = _stored_size(services, image_paths.get(page_id))
        if size is not None:
            by_collection.setdefault(collection_id, {})[page_id] = size
    found: dict[int, tuple[layout.Region, ...]] = {}
    for collection_id, sizes in by_collection.items():
        stores = services.collections.stores(collection_id)
        for retriever in mapping:
            store = stores.get(retriever.name)
            if store is None:
                continue
            for page_id, regions in retriever.looked_at(embedders.get(retriever.name), store, text, sizes).items():
                found[page_id] = (*found.get(page_id, ()), *regions)
    return found


def _stored_size(services: Services, image_path: str | None) -> tuple[int, int] | None:
    """The width and height of a stored page image, the pixels its vectors were made from (read from its header)."""
    if not image_path:
        return None
    try:
        with Image.open(services.storage_dir / image_path) as image:
            return image.size
    except (OSError, UnidentifiedImageError):
        log.warning("page image %s cannot be read; no similarity map for it", image_path)
        return None


def retrieved_pages(
    services: Services, results: Sequence[SearchResult], question: str | None = None
) -> list[RetrievedPage]:
    """Search results as answerer input: text, the absolute path of each stored page image, and its words. Given
    the `question`, a page without words carries where the similarity maps for it point (its citations' regions)."""
    with services.sessions() as session:
        image_paths = repository.page_image_paths(session, [r.page_id for r in results])
        stored = repository.page_words(session, [r.page_id for r in results])
        wordless = [r for r in results if r.page_id not in stored] if question else []
        of_document = repository.documents_collections(session, {r.document_id for r in wordless})
    on_map = {r.page_id: of_document[r.document_id] for r in wordless if r.document_id in of_document}
    maps = looked_at(services, on_map, question or "")
    pages = []
    for r in results:
        words, source = layout.stored_words(stored.get(r.page_id))
        pages.append(RetrievedPage(
            page_id=r.page_id,
            document_id=r.document_id,
            page_number=r.page_number,
            path=r.path,
            score=r.score,
            text=r.text,
            image_path=(services.storage_dir / image_paths[r.page_id]).resolve() if image_paths.get(r.page_id) else None,
            words=tuple(words),
            words_source=source,
            looked_at=maps.get(r.page_id, ()),
            name=r.name,
        ))
    return pages
