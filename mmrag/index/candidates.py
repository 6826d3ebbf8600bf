"""The scalable multi-vector path: FAISS over a few centroids per page picks candidates, exact MaxSim reranks them.

Exact MaxSim reads every stored token per query (≈256 KB a page in fp16), which is what makes it slow at a
million pages. Here each page is also folded into `vectors_per_page` centroids (spherical k-means over its
tokens) kept in a FAISS index. A query token searches that index; a page's approximate score is, per query
token, the best similarity among its centroids that came back, or — when none came back — the lowest similarity
that did (the XTR-style imputation: the page cannot be better than what was cut off). The top `candidates` pages
by that score are re-scored exactly from the memory-mapped store, so the final scores are exact MaxSim and only
the candidate set is approximate (measured as recall@10 against exact search by `python -m bench search`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import faiss
import numpy as np
import torch

from mmrag.index.multivector import ShardedMultiVectorStore
from mmrag.types import Hit

log = logging.getLogger(__name__)


def page_centroids(pages: Sequence[np.ndarray], count: int, iterations: int = 6) -> list[np.ndarray]:
    """`count` unit-norm centroids per page (spherical k-means, deterministic init), pages of one length batched."""
    result: list[np.ndarray | None] = [None] * len(pages)
    by_length: dict[int, list[int]] = {}
    for position, page in enumerate(pages):
        by_length.setdefault(len(page), []).append(position)
    for length, positions in by_length.items():
        for start in range(0, len(positions), 256):
            batch = positions[start : start + 256]
            x = torch.from_numpy(np.stack([np.asarray(pages[i], dtype=np.float32) for i in batch]))
            centroids = spherical_kmeans(x, min(count, length), iterations)
            for i, position in enumerate(batch):
                result[position] = centroids[i].numpy()
    return [r for r in result if r is not None]


def spherical_kmeans(x: torch.Tensor, k: int, iterations: int = 6) -> torch.Tensor:
    """(pages, k, dim) unit centroids of each page's (tokens, dim) vectors in x (pages, tokens, dim), on x's device.

    Evenly spaced tokens seed the centroids: patches come in reading order, so the seeds spread over the page."""
    x = torch.nn.functional.normalize(x.to(torch.float32), dim=2)
    length = x.shape[1]
    centroids = x[:, torch.linspace(0, length - 1, k, device=x.device).long()].clone()
    for _ in range(iterations):
        assignment = torch.bmm(x, centroids.transpose(1, 2)).argmax(dim=2)  # (pages, tokens)
        one_hot = torch.nn.functional.one_hot(assignment, k).to(x.dtype)  # (pages, tokens, k)
        sums = torch.bmm(one_hot.transpose(1, 2), x)  # (pages, k, dim)
        empty = sums.norm(dim=2, keepdim=True) == 0
        centroids = torch.nn.functional.normalize(torch.where(empty, centroids, sums), dim=2)
    return centroids


class PooledCandidateIndex:
    """Centroid vectors of every page in one FAISS index; `search` returns exact MaxSim scores of the best pages."""

    def __init__(self, dim: int, *, vectors_per_page: int = 8, hnsw_m: int | None = 32, ef_search: int = 128) -> None:
        self.dim = dim
        self.vectors_per_page = vectors_per_page
        inner = (
            faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            if hnsw_m
            else faiss.IndexFlatIP(dim)
        )
        if hnsw_m:
            inner.hnsw.efSearch = ef_search
        self._index = faiss.IndexIDMap2(inner)
        self._lock = threading.Lock()
        self._pages: set[int] = set()

    def __len__(self) -> int:
        return len(self._pages)

    def add(self, ids: Sequence[int], token_matrices: Sequence[np.ndarray]) -> None:
        vectors, vector_ids = [], []
        for page_id in ids:
            if int(page_id) in self._pages:
                raise ValueError(f"page {page_id} is already indexed (HNSW cannot replace; rebuild instead)")
        for page_id, centroids in zip(ids, page_centroids(token_matrices, self.vectors_per_page), strict=True):
            vectors.append(centroids)
            vector_ids.append(int(page_id) * self.vectors_per_page + np.arange(len(centroids), dtype=np.int64))
        if not vectors:
            return
        with self._lock:
            self._index.add_with_ids(np.concatenate(vectors).astype(np.float32), np.concatenate(vector_ids))
            self._pages.update(int(i) for i in ids)

    @classmethod
    def build(cls, store: ShardedMultiVectorStore, **options: int | None) -> PooledCandidateIndex:
        """Derived data: built from the stored tokens, so it can always be rebuilt from the store."""
        index = cls(store.dim, **options)  # type: ignore[arg-type]
        ids = [int(i) for i in store.ids()]
        for start in range(0, len(ids), 1024):
            chunk = ids[start : start + 1024]
            index.add(chunk, [store.tokens(page_id) for page_id in chunk])
        return index

    def candidates(self, query: np.ndarray, count: int, *, per_token: int = 1024) -> np.ndarray:
        """Page ids of the `count` best pages by the centroid approximation of MaxSim."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        with self._lock:
            if not self._pages:
                return np.zeros(0, dtype=np.int64)
            similarities, vector_ids = self._index.search(query, min(per_token, self._index.ntotal))
        found = vector_ids >= 0
        pages = np.where(found, vector_ids // self.vectors_per_page, -1)
        # Per query token: the best similarity per page, and the cut-off imputed for pages that did not come back.
        floor = np.where(found, similarities, np.inf).min(axis=1)
        unique_pages, column = np.unique(pages[found], return_inverse=True)
        best = np.tile(floor[:, None], (1, len(unique_pages)))
        rows = np.nonzero(found)[0]
        np.maximum.at(best, (rows, column), similarities[found])
        approximate = best.sum(axis=0)
        if len(unique_pages) > count:
            keep = np.argpartition(-approximate, count - 1)[:count]
            return unique_pages[keep]
        return unique_pages

    def search(
        self, query: np.ndarray, store: ShardedMultiVectorStore, k: int, *, candidates: int = 256, per_token: int = 1024
    ) -> list[Hit]:
        """Top-k pages with exact MaxSim scores, found among the approximate top `candidates`."""
        chosen = self.candidates(query, max(candidates, k), per_token=per_token)
        return store.score_subset(query, chosen.tolist())[:k]
