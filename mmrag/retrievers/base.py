"""The Retriever contract: what a retriever embeds from a page and from a query, its store, its fusion weight.

A retriever is one way of ranking pages for a query. Built-in ones: `clip` (page images and photos, text or image
queries), `colpali` (late interaction over page images), `text` (a dense model over page text) and `lexical` (BM25
over page text, derived from SQL by the collection's writer). A new one subclasses `Retriever` (or
`SingleVectorRetriever` for a model with one vector per page in a FAISS-style index) and registers itself:

    @RETRIEVERS.register
    class MyRetriever(SingleVectorRetriever):
        name = "mine"
        modality = "text"
        def load(self, settings): ...

From then on the job embeds every page with it, the search path queries and fuses it, and the API and CLI accept
its name; no other module names it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
from PIL import Image

from mmrag.errors import ConfigError
from mmrag.types import Hit

if TYPE_CHECKING:
    from mmrag.layout import Region
    from mmrag.config import Settings
    from mmrag.protocols import LexicalIndex

Modality = Literal["image", "text"]  # what a retriever reads from a page: its image, or its text
QueryKind = Literal["text", "image"]


@dataclass(frozen=True)
class PageBatch:
    """The pages of one batch, as a retriever's embedder may want them. Images are opened (and prepared inputs
    made from the stored image) only when a retriever asks."""

    ids: np.ndarray  # int64 SQL page ids
    texts: list[str]
    images: Callable[[], list[Image.Image]]
    # The prepared model inputs of this retriever's InputSpec, one per page (made by the workers, or from the stored
    # page image for pages that came without); None when the retriever asked for none.
    inputs: Callable[[], list[Any]] | None = None


@dataclass(frozen=True)
class Embedded:
    """One retriever's vectors for a batch: ids, vectors (an (n, dim) array, or one (tokens, dim) array per page for
    a multi-vector retriever) and how many vectors each page got (recorded in SQL)."""

    ids: np.ndarray
    vectors: Any
    counts: list[int]


@dataclass(frozen=True)
class Query:
    """A search query: exactly one of a text and an image."""

    text: str | None = None
    image: Image.Image | None = None

    @property
    def kind(self) -> QueryKind:
        return "image" if self.image is not None else "text"


class SearchContext(Protocol):
    """What a retriever's search may need from its collection beyond its own store; the collection provides it,
    read-only (derived indexes are kept current by the collection's writer)."""

    settings: Settings
    # The pages the search's filters allow (SQL's ids), when few enough to hand to the stores; None: any page.
    # A store that can (protocols.SearchesWithin) searches among them only; the others' hits are filtered after.
    within: np.ndarray | None

    def lexical(self) -> LexicalIndex: ...

    def candidates(self, retriever: str) -> Any | None:
        """The candidate index over a retriever's multi-vector store (the scalable multi-vector path)."""
        ...

    def stage(self, retriever: str) -> tuple[Any, Any | None] | None:
        """Another retriever's model and its store in this collection (None: nothing committed yet), loaded and
        opened if they are not yet: a candidate stage (index.multivector_search = "bipage"). None when it is off."""
        ...


@dataclass(frozen=True)
class ModelRecord:
    """What SQL records of the model that embedded a page (page_embeddings)."""

    model: str
    revision: str
    dim: int


class Retriever:
    """Base of every retriever. Subclasses set the class attributes and override what applies."""

    name: ClassVar[str]
    modality: ClassVar[Modality] = "image"
    query_kinds: ClassVar[frozenset[QueryKind]] = frozenset({"text"})
    weight: ClassVar[float] = 1.0  # its default fusion weight; settings.retrieval.weights overrides it
    # False for a retriever with no model of its own whose index is derived from SQL (BM25): it has no store to
    # write, nothing to embed, and is always on.
    embeds: ClassVar[bool] = True
    # True for a retriever whose page vectors can be laid back on the page (looked_at): a similarity map.
    similarity_maps: ClassVar[bool] = False

    def enabled(self, settings: Settings) -> bool:
        """Whether settings turn it on (a model that cannot load switches it off anyway, with its reason)."""
        return True

    def load(self, settings: Settings) -> Any:
        """Its embedder, from settings; raises ModelUnavailableError (with how to provide the weights) when it
        cannot load. Never downloads, never falls back to random weights."""
        raise NotImplementedError

    def worker_modules(self, settings: Settings) -> tuple[str, ...]:
        """Modules the job's worker processes import ahead (the fork server) for this retriever's inputs."""
        return ()

    def input_spec(self, embedder: Any, settings: Settings, data_dir: Path) -> Any | None:
        """What the ingest workers should make for its embedder from each page (mmrag.inputs), or None: it embeds
        PIL images (or text) in the job's own process."""
        return None

    def open_store(self, embedder: Any, directory: Path, settings: Settings, *, writable: bool) -> Any | None:
        """Open (or, writable, create) its store in the collection's vectors directory; None when a reader finds
        none committed yet. The store states its dimension from the model (`embedder.dim`)."""
        return None

    def drop_store(self, directory: Path, settings: Settings) -> None:
        """Delete its store of a collection (`directory`: the collection's vectors directory), vectors of a model no
        longer configured (`mmrag index --reembed`). SQL still vouches for them: the job's recovery finds them lost
        and re-embeds every page from its stored image or text. The caller is the collection's writer."""
        raise ConfigError(f"retriever {self.name!r} cannot delete its store; remove it by hand under {directory}")

    def embed_pages(self, embedder: Any, pages: PageBatch, settings: Settings) -> Embedded | None:
        """Vectors for the pages it embeds (nothing written anywhere); None when it embeds none of them."""
        return None

    def add(self, store: Any, embedded: Embedded) -> None:
        """Add embedded vectors to its store (durable at the store's next flush)."""
        store.add(embedded.ids, embedded.vectors)

    def search(self, embedder: Any, store: Any, query: Query, depth: int, context: SearchContext) -> list[Hit]:
        """Its own ranking of the collection for `query`, `depth` deep, best first."""
        raise NotImplementedError

    def looked_at(
        self, embedder: Any, store: Any, text: str, pages: Mapping[int, tuple[int, int]]
    ) -> dict[int, list[Region]]:
        """Where its model's similarity map for the text query points on each page it holds of `pages` (page id →
        the width and height of its stored image, what was embedded): regions of source similarity_map. {} for a
        retriever whose vectors cannot be laid back on the page."""
        return {}

    def model_record(self, embedder: Any) -> ModelRecord:
        return ModelRecord(model=embedder.model_id, revision=embedder.revision, dim=embedder.dim)

    def pages_it_embeds(self, texts: Sequence[str]) -> list[bool]:
        """Which pages (by their text) it embeds: a text retriever skips pages without text."""
        if self.modality == "text":
            return [bool(text.strip()) for text in texts]
        return [True] * len(texts)


class SingleVectorRetriever(Retriever):
    """A retriever with one normalised vector per page in a single-vector index (FAISS, or the configured backend)
    named after it, searched by inner product. Image-modality retrievers embed page images (`embed_images`), text
    ones page text (`embed_texts`); queries go through `embed_texts` (and `embed_images` for image queries)."""

    def open_store(self, embedder: Any, directory: Path, settings: Settings, *, writable: bool) -> Any | None:
        from mmrag.index import build_vector_index

        return build_vector_index(settings.index, directory, name=self.name, model=embedder.model_id, dim=embedder.dim)

    def drop_store(self, directory: Path, settings: Settings) -> None:
        drop_store(settings, directory, self.name, files=[f"{self.name}.faiss", f"{self.name}.faiss.journal",
                                                          f"{self.name}.manifest.json"])

    def embed_pages(self, embedder: Any, pages: PageBatch, settings: Settings) -> Embedded | None:
        if self.modality == "text":
            keep = self.pages_it_embeds(pages.texts)
            if not any(keep):
                return None
            ids = pages.ids[np.array(keep, dtype=bool)]
            vectors = embedder.embed_texts([text for text, k in zip(pages.texts, keep, strict=True) if k])
        elif pages.inputs is not None:
            ids, vectors = pages.ids, embedder.embed_inputs(pages.inputs())
        else:
            ids, vectors = pages.ids, embedder.embed_images(pages.images())
        return Embedded(ids=ids, vectors=vectors, counts=[1] * len(ids))

    def search(self, embedder: Any, store: Any, query: Query, depth: int, context: SearchContext) -> list[Hit]:
        from mmrag.protocols import SearchesWithin

        if query.image is not None:
            vectors = embedder.embed_images([query.image])
        else:
            vectors = embedder.embed_texts([query.text])
        if context.within is not None and isinstance(store, SearchesWithin):
            return store.search_within(vectors, depth, context.within)[0]
        return store.search(vectors, depth)[0]


@dataclass(init=False)
class Embedders:
    """The loaded models, by retriever name; a retriever whose model could not be loaded (or that settings turn
    off) is absent, with its reason in `off`. Retrievers that embed nothing (BM25) need no model and are not here."""

    models: dict[str, Any] = field(default_factory=dict)
    off: dict[str, str] = field(default_factory=dict)
    # True for the tiny-random profile: plumbing only, every score is meaningless.
    meaningless: bool = False

    def __init__(
        self, models: dict[str, Any] | None = None, *, off: dict[str, str] | None = None, meaningless: bool = False,
        **by_name: Any,
    ) -> None:
        # Embedders(clip=model, colpali=None, off={...}): None means not loaded.
        merged = {**(models or {}), **by_name}
        self.models = {name: model for name, model in merged.items() if model is not None}
        self.off = dict(off or {})
        self.meaningless = meaningless

    def get(self, name: str) -> Any | None:
        return self.models.get(name)

    def why_off(self, names: Sequence[str]) -> str:
        """Why these retrievers have no model: the reason alone for one, "name: reason" for several."""
        reasons = {name: self.off.get(name, "not loaded") for name in names}
        if len(reasons) == 1:
            return next(iter(reasons.values()))
        return "; ".join(f"{name}: {reason}" for name, reason in reasons.items())

    def on(self) -> list[str]:
        """The retrievers with a loaded model, in registry order."""
        from mmrag.retrievers import RETRIEVERS

        return [name for name in RETRIEVERS.names() if name in self.models]

    def serving(self) -> list[str]:
        """Every retriever that serves, in registry order: those with a loaded model, and those that need none (BM25,
        dates). What a job's summary and GET /ready name as on."""
        from mmrag.retrievers import RETRIEVERS

        return [r.name for r in RETRIEVERS if not r.embeds or r.name in self.models]

    def only(self, name: str) -> Embedders:
        """These embedders with just one retriever's model (a repair of that retriever's vectors)."""
        return Embedders({name: self.models[name]}, off=self.off, meaningless=self.meaningless)


def drop_store(settings: Settings, directory: Path, name: str, *, files: Sequence[str]) -> None:
    """Delete the store `name` of the collection whose vectors directory this is: its Qdrant collection, or its
    `files` (a directory among them is removed whole) for the local backends."""
    backend = settings.index.backend
    if backend == "qdrant":
        from mmrag.index.qdrant_index import drop_collection

        drop_collection(settings.index.qdrant, directory, name)
        return
    if backend != "faiss":
        raise ConfigError(f"deleting a store of the {backend} backend is not supported; remove {name!r} by hand")
    for file in files:
        path = directory / file
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
