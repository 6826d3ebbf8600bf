"""search(): run a query through every loaded retriever of the collections, fuse the rankings, filter, page."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from mmrag.config import RetrievalSettings
from mmrag.errors import ConfigError
from mmrag.services import Services
from mmrag.store import repository
from mmrag.types import Hit, RetrievedPage, SearchFilters, SearchResult

log = logging.getLogger(__name__)

RETRIEVER_NAMES = ("clip", "colpali", "text", "lexical")


@dataclass(frozen=True)
class RetrieverHits:
    retriever: str
    hits: list[Hit]


def retrieve(
    services: Services,
    collection_id: int,
    *,
    text: str | None = None,
    image: Image.Image | None = None,
    depth: int = 50,
    retrievers: Sequence[str] | None = None,
    generation: int | None = None,
) -> list[RetrieverHits]:
    """Each loaded retriever's own ranking, `depth` deep. Text goes to every retriever; an image to CLIP.
    `generation`: the collection's, when the caller has just read it (saves the BM25 retriever a round trip)."""
    if (text is None) == (image is None):
        raise ConfigError("give exactly one of a text query or an image query")
    unknown = set(retrievers or ()) - set(RETRIEVER_NAMES)
    if unknown:
        raise ConfigError(f"unknown retrievers {sorted(unknown)}; known: {', '.join(RETRIEVER_NAMES)}")
    wanted = set(retrievers) if retrievers else set(RETRIEVER_NAMES)
    embedders = services.embedders()
    collections = services.collections
    stores = collections.stores(collection_id, generation=generation)
    if image is not None:
        if embedders.clip is None or stores.clip is None:
            raise ConfigError(f"image search needs the CLIP retriever, which is off: {embedders.off.get('clip')}")
        vectors = embedders.clip.embed_images([image])
        return [RetrieverHits("clip", stores.clip.search(vectors, depth)[0])]
    assert text is not None
    results: list[RetrieverHits] = []
    if "clip" in wanted and embedders.clip is not None and stores.clip is not None:
        results.append(RetrieverHits("clip", stores.clip.search(embedders.clip.embed_texts([text]), depth)[0]))
    if "colpali" in wanted and embedders.colpali is not None and stores.colpali is not None:
        query = embedders.colpali.embed_queries([text])[0]
        index_settings = services.settings.index
        use_candidates = index_settings.multivector_search == "candidates"
        candidates = collections.derived.candidate_index(collection_id) if use_candidates else None
        if candidates is not None:
            count = max(index_settings.multivector_candidates, depth)
            hits = candidates.search(query, stores.colpali, depth, candidates=count)
        else:
            hits = stores.colpali.search(query, depth)
        results.append(RetrieverHits("colpali", hits))
    if "text" in wanted and embedders.text is not None and stores.text is not None:
        results.append(RetrieverHits("text", stores.text.search(embedders.text.embed_texts([text]), depth)[0]))
    if "lexical" in wanted:
        index = collections.derived.lexical(collection_id, generation=generation)
        results.append(RetrieverHits("lexical", index.search(text, depth)))
    return results


def fuse(
    rankings: Sequence[RetrieverHits], settings: RetrievalSettings | None = None
) -> list[tuple[int, float, dict[str, float]]]:
    """Weighted reciprocal-rank fusion: (page id, fused score, per-retriever raw scores), best first.

    Ranks, not raw scores, are fused because cosine, MaxSim sums and BM25 live on unrelated scales; the
    weights (settings.retrieval.weights) let a weak retriever count for less instead of dragging good ones down.
    """
    settings = settings or RetrievalSettings()
    fused: dict[int, float] = {}
    raw: dict[int, dict[str, float]] = {}
    for ranking in rankings:
        weight = settings.weights.get(ranking.retriever, 1.0)
        for rank, hit in enumerate(ranking.hits, start=1):
            fused[hit.page_id] = fused.get(hit.page_id, 0.0) + weight / (settings.rrf_k + rank)
            raw.setdefault(hit.page_id, {})[ranking.retriever] = hit.score
    order = sorted(fused, key=lambda page_id: (-fused[page_id], page_id))
    return [(page_id, fused[page_id], raw[page_id]) for page_id in order]


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
    wanted = offset + k
    depth = max(settings.depth, 5 * wanted)
    while True:
        fused: list[tuple[int, float, dict[str, float]]] = []
        rankings_used: list[str] = []
        exhausted = True
        for collection_id, generation in generations.items():
            rankings = retrieve(services, collection_id, text=text, image=image, depth=depth, retrievers=retrievers,
                                generation=generation)
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
        )
        for page_id, score, scores in passing[offset:wanted]
    ]


def retrieved_pages(services: Services, results: Sequence[SearchResult]) -> list[RetrievedPage]:
    """Search results as answerer input: text plus the absolute path of each stored page image."""
    with services.sessions() as session:
        image_paths = repository.page_image_paths(session, [r.page_id for r in results])
    return [
        RetrievedPage(
            page_id=r.page_id,
            document_id=r.document_id,
            page_number=r.page_number,
            path=r.path,
            score=r.score,
            text=r.text,
            image_path=(services.data_dir / image_paths[r.page_id]).resolve() if image_paths.get(r.page_id) else None,
        )
        for r in results
    ]
