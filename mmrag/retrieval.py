"""search(): run a query through every loaded retriever of a collection and fuse the rankings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from mmrag.errors import ConfigError
from mmrag.services import Services
from mmrag.store import repository
from mmrag.types import Hit, SearchResult

log = logging.getLogger(__name__)

RRF_K = 60  # the constant of Cormack et al. (2009); damps the head of each ranking


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
) -> list[RetrieverHits]:
    """Each loaded retriever's own ranking, `depth` deep. Text goes to every retriever; an image to CLIP."""
    if (text is None) == (image is None):
        raise ConfigError("give exactly one of a text query or an image query")
    wanted = set(retrievers) if retrievers else {"clip", "colpali", "text", "lexical"}
    embedders = services.embedders()
    stores = services.stores(collection_id)
    results: list[RetrieverHits] = []
    if image is not None:
        if embedders.clip is None or stores.clip is None:
            raise ConfigError(f"image search needs the CLIP retriever, which is off: {embedders.off.get('clip')}")
        vectors = embedders.clip.embed_images([image])
        return [RetrieverHits("clip", stores.clip.search(vectors, depth)[0])]
    assert text is not None
    if "clip" in wanted and embedders.clip is not None and stores.clip is not None:
        results.append(RetrieverHits("clip", stores.clip.search(embedders.clip.embed_texts([text]), depth)[0]))
    if "colpali" in wanted and embedders.colpali is not None and stores.colpali is not None:
        query = embedders.colpali.embed_queries([text])[0]
        results.append(RetrieverHits("colpali", stores.colpali.search(query, depth)))
    if "text" in wanted and embedders.text is not None and stores.text is not None:
        results.append(RetrieverHits("text", stores.text.search(embedders.text.embed_texts([text]), depth)[0]))
    if "lexical" in wanted:
        results.append(RetrieverHits("lexical", services.lexical(collection_id).search(text, depth)))
    return results


def fuse(rankings: Sequence[RetrieverHits]) -> list[tuple[int, float, dict[str, float]]]:
    """Reciprocal-rank fusion: (page id, fused score, per-retriever raw scores), best first."""
    fused: dict[int, float] = {}
    raw: dict[int, dict[str, float]] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking.hits, start=1):
            fused[hit.page_id] = fused.get(hit.page_id, 0.0) + 1.0 / (RRF_K + rank)
            raw.setdefault(hit.page_id, {})[ranking.retriever] = hit.score
    order = sorted(fused, key=lambda page_id: (-fused[page_id], page_id))
    return [(page_id, fused[page_id], raw[page_id]) for page_id in order]


def search(
    services: Services,
    collection: str,
    *,
    text: str | None = None,
    image: Image.Image | None = None,
    k: int = 10,
    retrievers: Sequence[str] | None = None,
) -> list[SearchResult]:
    """Top-k pages of a collection for a text or image query, with fused and per-retriever scores."""
    with services.sessions() as session:
        collection_id = repository.get_collection(session, collection).id
    rankings = retrieve(services, collection_id, text=text, image=image, depth=max(k * 5, 50), retrievers=retrievers)
    fused = fuse(rankings)
    retriever_name = "+".join(r.retriever for r in rankings)
    with services.sessions() as session:
        # SQL is the truth: a vector whose page was deleted (and not yet swept from a store) is dropped here.
        rows = repository.describe_pages(session, [page_id for page_id, _, _ in fused[: k * 2]])
    results = []
    for page_id, score, scores in fused:
        row = rows.get(page_id)
        if row is None:
            continue
        results.append(
            SearchResult(
                page_id=page_id,
                document_id=row.document_id,
                page_number=row.page_number,
                path=row.path,
                score=score,
                retriever=retriever_name,
                text=row.text,
                scores=scores,
            )
        )
        if len(results) == k:
            break
    return results
