"""The Protocols of mmrag's pluggable parts: embedders, vector indexes, the multi-vector store, text indexes, answerers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from mmrag.types import Answer, Hit, RetrievedPage


@runtime_checkable
class ImageEmbedder(Protocol):
    """Images and texts into one normalised single-vector space (CLIP)."""

    model_id: str  # what produced the vectors, recorded per page and in index manifests
    dim: int

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        ...


@runtime_checkable
class MultiVectorEmbedder(Protocol):
    """Late-interaction page embeddings (ColPali family): one vector per image patch / query token."""

    model_id: str
    dim: int

    def embed_images(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """One (tokens, dim) float32 array per image; padding tokens removed."""
        ...

    def embed_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One (tokens, dim) float32 array per query; padding tokens removed."""
        ...


@runtime_checkable
class TextEmbedder(Protocol):
    """Dense text embeddings (sentence-transformers)."""

    model_id: str
    dim: int

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        ...


@runtime_checkable
class VectorIndex(Protocol):
    """Single-vector index keyed by SQL page ids; inner product on normalised vectors."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: Iterable[int]) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]: ...

    def ids(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

    def flush(self) -> None:
        """Make everything added so far durable, atomically."""
        ...


@runtime_checkable
class MultiVectorStore(Protocol):
    """Token embeddings per page keyed by SQL page ids, searched with exact MaxSim."""

    def add(self, ids: Sequence[int], vectors: Sequence[np.ndarray]) -> None: ...

    def remove(self, ids: Iterable[int]) -> int: ...

    def search(self, query: np.ndarray, k: int) -> list[Hit]: ...

    def ids(self) -> np.ndarray: ...

    @property
    def uid(self) -> str:
        """Names this store's contents for good: derived data saved beside it is tagged with it."""
        ...

    @property
    def version(self) -> int:
        """Changes to the live pages through this object so far: derived data is current while it is unchanged."""
        ...

    def __len__(self) -> int: ...

    def flush(self) -> None: ...

    def compact(self) -> None: ...

    def stats(self) -> dict[str, int]:
        """At least `pages` (live) and `tombstoned_pages`."""
        ...


@runtime_checkable
class LexicalIndex(Protocol):
    """A lexical (BM25) index over page text, derived from SQL (rebuilt from it, or updated with what changed)."""

    def rebuild(self, pages: Iterable[tuple[int, str]]) -> None: ...

    def search(self, query: str, k: int) -> list[Hit]: ...

    def __len__(self) -> int: ...


@runtime_checkable
class Answerer(Protocol):
    """Answers a question from retrieved pages, citing them; says so when they do not answer it."""

    name: str

    def answer(self, question: str, pages: Sequence[RetrievedPage]) -> Answer: ...

    def stream(self, question: str, pages: Sequence[RetrievedPage]) -> Iterator[str | Answer]:
        """Text chunks as they are generated, then the final Answer (with checked citations) last."""
        ...
