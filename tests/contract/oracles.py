"""Brute-force numpy oracles and structured test data that every index backend is checked against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalise(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def clustered_vectors(n: int, dim: int, *, clusters: int = 12, spread: float = 0.2, seed: int = 0) -> np.ndarray:
    """Unit vectors drawn around `clusters` random centres: the shape real embeddings have, unlike isotropic noise
    (IVF and HNSW behave differently on it, and near neighbours are many and close)."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.standard_normal((clusters, dim)))
    members = rng.integers(0, clusters, n)
    return normalise(centres[members] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim) * 4)


def queries_near(vectors: np.ndarray, n: int, *, noise: float = 0.3, seed: int = 1) -> np.ndarray:
    """Queries close to stored vectors (the common case) plus a few uniform random ones."""
    rng = np.random.default_rng(seed)
    near = vectors[rng.integers(0, len(vectors), n - n // 4)]
    near = near + noise * rng.standard_normal(near.shape) / np.sqrt(vectors.shape[1])
    far = rng.standard_normal((n // 4, vectors.shape[1]))
    return normalise(np.concatenate([near, far]))


class VectorOracle:
    """Exact inner-product search over a dict of page id -> vector, with the VectorIndex add/remove semantics."""

    def __init__(self) -> None:
        self.vectors: dict[int, np.ndarray] = {}

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        for page_id, vector in zip(ids, vectors, strict=True):
            self.vectors[int(page_id)] = np.asarray(vector, dtype=np.float32)

    def remove(self, ids: Sequence[int]) -> int:
        return sum(self.vectors.pop(int(page_id), None) is not None for page_id in set(ids))

    def ids(self) -> np.ndarray:
        return np.array(sorted(self.vectors), dtype=np.int64)

    def scores(self, query: np.ndarray) -> dict[int, float]:
        if not self.vectors:
            return {}
        ids = list(self.vectors)
        matrix = np.stack([self.vectors[page_id] for page_id in ids])
        return dict(zip(ids, (matrix.astype(np.float64) @ query.astype(np.float64)).tolist(), strict=True))

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        ranked = sorted(self.scores(query).items(), key=lambda item: (-item[1], item[0]))
        return ranked[:k]


def maxsim(query: np.ndarray, page: np.ndarray) -> float:
    """ColBERT late interaction: sum over query tokens of the best dot product with any page token."""
    return float((query.astype(np.float64) @ page.astype(np.float64).T).max(axis=1).sum())


class MaxSimOracle:
    """Exact MaxSim over page id -> token matrix. `as_stored` rounds to fp16 first, as the store keeps them."""

    def __init__(self, *, as_stored: bool) -> None:
        self.as_stored = as_stored
        self.pages: dict[int, np.ndarray] = {}

    def add(self, ids: Sequence[int], pages: Sequence[np.ndarray]) -> None:
        for page_id, tokens in zip(ids, pages, strict=True):
            tokens = np.asarray(tokens, dtype=np.float32)
            self.pages[int(page_id)] = tokens.astype(np.float16).astype(np.float32) if self.as_stored else tokens

    def remove(self, ids: Sequence[int]) -> None:
        for page_id in ids:
            self.pages.pop(int(page_id), None)

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        scored = [(page_id, maxsim(query, tokens)) for page_id, tokens in self.pages.items()]
        return sorted(scored, key=lambda item: (-item[1], item[0]))[:k]


def topic_pages(
    n_pages: int, dim: int, *, topics: int = 8, min_tokens: int = 3, max_tokens: int = 60, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Pages of variable token counts, each about one topic, and the topic centres: (pages, page_topics, centres)."""
    rng = np.random.default_rng(seed)
    centres = normalise(rng.standard_normal((topics, dim)))
    page_topics = rng.integers(0, topics, n_pages)
    pages = []
    for topic in page_topics:
        n_tokens = int(rng.integers(min_tokens, max_tokens + 1))
        # Each page mixes tokens about its topic with background tokens, like patches of text and margin.
        about = centres[topic] + 0.7 * rng.standard_normal((n_tokens, dim)) / np.sqrt(dim)
        background = rng.standard_normal((n_tokens, dim))
        mix = rng.random((n_tokens, 1)) < 0.5
        pages.append(normalise(np.where(mix, about, background)))
    return pages, page_topics, centres


def topic_query(centres: np.ndarray, topic: int, *, n_tokens: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    return normalise(centres[topic] + 0.7 * rng.standard_normal((n_tokens, dim)) / np.sqrt(dim))
