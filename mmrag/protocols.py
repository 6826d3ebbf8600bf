"""The Protocols of mmrag's pluggable parts: embedders, vector indexes, the multi-vector store, text indexes, answerers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from mmrag.types import Answer, Hit, PatchGrid, RetrievedPage

if TYPE_CHECKING:
    from mmrag.inputs import InputSpec


@runtime_checkable
class ImageEmbedder(Protocol):
    """Images and texts into one normalised single-vector space (CLIP)."""

    model_id: str  # what produced the vectors, recorded per page and in index manifests
    revision: str  # which weights of it (a hub commit, a pretrained tag, "local"), recorded per page
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
    revision: str
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
    revision: str
    dim: int

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        ...


@runtime_checkable
class PreparedImageEmbedder(ImageEmbedder, Protocol):
    """An ImageEmbedder that also embeds inputs the ingest workers prepared from each page (mmrag.inputs), so the
    job's own process does no per-pixel work."""

    def input_spec(self) -> InputSpec | None:
        """What the workers should make for it, or None when its preprocessing has no prepared form."""
        ...

    def embed_inputs(self, inputs: Sequence[Any]) -> np.ndarray: ...


@runtime_checkable
class PreparedMultiVectorEmbedder(MultiVectorEmbedder, Protocol):
    """A MultiVectorEmbedder that also embeds inputs the ingest workers prepared (its processor run there)."""

    def input_spec(self, cache_dir: Path) -> InputSpec:
        """What the workers should make for it; `cache_dir` holds what they need to load (its processor)."""
        ...

    def embed_inputs(self, inputs: Sequence[Any]) -> list[np.ndarray]: ...


@runtime_checkable
class MappedMultiVectorEmbedder(MultiVectorEmbedder, Protocol):
    """A MultiVectorEmbedder whose page vectors can be laid back on the page: a similarity map (mmrag.layout)."""

    def patch_grid(self, width: int, height: int) -> PatchGrid | None:
        """Where the patch vectors of a `width` x `height` page image sit in its token sequence; None when this
        model's layout of patches is not a single grid over the page."""
        ...

    def query_words(self, text: str) -> np.ndarray:
        """(tokens,) bool over embed_queries([text])[0]: the tokens of the text itself, not of the prompt prefix or
        the padding a query is augmented with."""
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

    def catch_up(self) -> bool:
        """A reader's copy follows what its writer made durable since, reading only what is new; False when it
        cannot (then it is opened again)."""
        ...

    def files(self) -> list[Path] | None:
        """The files that hold it (their identities tell a job whether another process changed them), or None for
        a backend whose files it cannot name."""
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

    def catch_up(self) -> bool: ...

    def files(self) -> list[Path] | None: ...

    def compact(self) -> None: ...

    def stats(self) -> dict[str, int]:
        """At least `pages` (live) and `tombstoned_pages`."""
        ...


@runtime_checkable
class SearchesWithin(Protocol):
    """A store that searches among given pages only (the pages a search's filters allow, read from SQL), so a
    narrow filter gets its best pages from the store itself rather than from a deeper unfiltered ranking. Its
    query is what its `search` takes: a (n, dim) matrix for a single-vector index (one ranking per row), a
    (tokens, dim) matrix for a multi-vector store, a text for a lexical index."""

    def search_within(self, query: Any, k: int, page_ids: np.ndarray) -> Any: ...


@runtime_checkable
class HoldsVectors(Protocol):
    """A single-vector index that gives back the vectors it holds (FaissIndex), so a page's own stored vector can be
    the query for its near-duplicates (mmrag.near_duplicates) without running its model again."""

    def vectors(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """(n, dim) float32 in the order of `ids`; an id it does not hold raises NotFoundError."""
        ...


@runtime_checkable
class LexicalIndex(Protocol):
    """A lexical (BM25) index over page text, derived from SQL (rebuilt from it, or updated with what changed)."""

    def rebuild(self, pages: Iterable[tuple[int, str]]) -> None: ...

    def search(self, query: str, k: int) -> list[Hit]: ...

    def pages_holding(self, terms: Iterable[str]) -> dict[int, set[str]]:
        """The pages holding any of these analyzer terms, each with the ones it holds (typed fields: dates)."""
        ...

    def __len__(self) -> int: ...


@runtime_checkable
class Answerer(Protocol):
    """Answers a question from retrieved pages, citing them; says so when they do not answer it."""

    name: str

    def answer(self, question: str, pages: Sequence[RetrievedPage]) -> Answer: ...

    def stream(self, question: str, pages: Sequence[RetrievedPage]) -> Iterator[str | Answer]:
        """Text chunks as they are generated, then the final Answer (with checked citations) last."""
        ...


@runtime_checkable
class Describes(Protocol):
    """An answerer that can also say what an image shows (a VLM's: transformers, openai): alt text for captions
    (mmrag.captions). The extractive answerer has no model and is not one."""

    name: str

    def describe(self, image: Image.Image) -> str:
        """One or two plain sentences saying what the image shows; AnswererError when the model fails."""
        ...
