"""Embedding pages: what the workers prepare for each retriever, a batch's vectors from every loaded retriever
(mmrag.retrievers), and adding them to their stores with the SQL rows that vouch for them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmrag.collections import CollectionStores
from mmrag.config import Settings
from mmrag.errors import NotFoundError
from mmrag.inputs import InputSpec, prepare_from_file
from mmrag.retrievers import RETRIEVERS, Embedded, Embedders, PageBatch, Retriever
from mmrag.store.models import utcnow


@dataclass(frozen=True)
class PendingPage:
    """A page committed to SQL (pending) whose vectors are still to be made."""

    page_id: int
    image_path: str | None  # relative to the data dir
    text: str
    # retriever → the input its embedder asked the workers for (InputSpecs); absent: made from the stored image
    inputs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


BatchVectors = dict[str, Embedded]  # a batch's vectors by retriever, computed and not yet in any store


def input_specs(embedders: Embedders, settings: Settings, data_dir: Path) -> dict[str, InputSpec]:
    """Retriever → what the workers should make for its embedder from each page (Retriever.input_spec), for the
    loaded retrievers that ask for prepared inputs; the others embed PIL images or text in this process."""
    specs: dict[str, InputSpec] = {}
    for retriever in RETRIEVERS:
        embedder = embedders.get(retriever.name)
        spec = retriever.input_spec(embedder, settings, data_dir) if embedder is not None else None
        if spec is not None:
            specs[retriever.name] = spec
    return specs


def named_inputs(names: list[str], inputs: tuple[Any, ...]) -> dict[str, Any]:
    """A worker's page inputs (in the order of `names`, the retrievers of input_specs) by retriever."""
    return {name: value for name, value in zip(names, inputs) if value is not None} if inputs else {}


def embed_pages(
    embedders: Embedders,
    stores: CollectionStores,
    pages: Sequence[PendingPage],
    data_dir: Path,
    *,
    settings: Settings,
    specs: dict[str, InputSpec] | None = None,
) -> BatchVectors:
    """Embed pages with every loaded retriever that has a store; nothing is written anywhere (see embed_with)."""
    vectors: BatchVectors = {}
    if not pages:
        return vectors
    specs = specs or {}
    images = _PageImages(data_dir, pages)  # opened once for every retriever that takes them
    for retriever in RETRIEVERS:
        embedder, store = embedders.get(retriever.name), stores.get(retriever.name)
        if embedder is None or store is None:
            continue
        embedded = embed_with(retriever, embedder, pages, data_dir, settings=settings,
                              spec=specs.get(retriever.name), images=images)
        if embedded is not None:
            vectors[retriever.name] = embedded
    return vectors


def embed_with(
    retriever: Retriever,
    embedder: Any,
    pages: Sequence[PendingPage],
    data_dir: Path,
    *,
    settings: Settings,
    spec: InputSpec | None = None,
    images: Callable[[], list[Image.Image]] | None = None,
) -> Embedded | None:
    """One retriever's vectors for pages (None: it embeds none of them). A retriever whose embedder takes prepared
    inputs (`spec`) gets them from the workers, or, for pages that came without (repair, long PDFs), makes them
    from the stored page image the same way; others get PIL images or the page text. A Ray actor runs this for its
    retriever (mmrag.indexing.distributed), this process for every retriever (embed_pages)."""
    inputs = None
    if spec is not None:
        name = retriever.name
        inputs = lambda: [  # noqa: E731 - read only if the retriever asks
            p.inputs[name] if name in p.inputs else _input_from_stored(data_dir, p.image_path, spec) for p in pages
        ]
    batch = PageBatch(
        ids=np.array([p.page_id for p in pages], dtype=np.int64), texts=[p.text for p in pages],
        images=images or _PageImages(data_dir, pages), inputs=inputs,
    )
    embedded = retriever.embed_pages(embedder, batch, settings)
    return embedded if embedded is not None and len(embedded.ids) else None


class _PageImages:
    """The pages' stored images, opened at the first call and kept for the next retriever that asks."""

    def __init__(self, data_dir: Path, pages: Sequence[PendingPage]) -> None:
        self._data_dir, self._pages = data_dir, pages
        self._opened: list[Image.Image] | None = None

    def __call__(self) -> list[Image.Image]:
        if self._opened is None:
            self._opened = [_open_page_image(self._data_dir, p.image_path) for p in self._pages]
        return self._opened


class LocalEmbedding:
    """A job's embedding stage in this process: every retriever's model here, one batch at a time (the default;
    mmrag.indexing.distributed.RayEmbedding is the other)."""

    batches_out = 0  # batches it keeps out beside the one it embeds: none

    def __init__(self, services: Any, embedders: Embedders, stores: CollectionStores,
                 specs: dict[str, InputSpec]) -> None:
        self.embedders, self.stores, self.specs = embedders, stores, specs
        self.settings: Settings = services.settings
        self.data_dir: Path = services.storage_dir

    def __call__(self, pages: Sequence[PendingPage]) -> BatchVectors:
        return embed_pages(self.embedders, self.stores, pages, self.data_dir, settings=self.settings, specs=self.specs)

    def close(self) -> None:
        pass


def store_vectors(embedders: Embedders, stores: CollectionStores, vectors: BatchVectors) -> list[dict[str, Any]]:
    """Add embedded vectors to their stores (durable at the next flush); returns the SQL rows that vouch for them."""
    records: list[dict[str, Any]] = []
    now = utcnow()
    for name, embedded in vectors.items():
        retriever = RETRIEVERS.get(name)
        retriever.add(stores.get(name), embedded)
        model = retriever.model_record(embedders.get(name))
        records += [
            {"page_id": int(i), "retriever": name, "model": model.model, "revision": model.revision, "dim": model.dim,
             "n_vectors": int(n), "created_at": now}
            for i, n in zip(embedded.ids, embedded.counts, strict=True)
        ]
    return records


def _input_from_stored(data_dir: Path, relative: str | None, spec: InputSpec) -> Any:
    if relative is None:
        raise NotFoundError("page has no stored image to re-embed from")
    return prepare_from_file(data_dir / relative, (spec,))[0]


def _open_page_image(data_dir: Path, relative: str | None) -> Image.Image:
    if relative is None:
        raise NotFoundError("page has no stored image to re-embed from")
    with Image.open(data_dir / relative) as image:
        return image.convert("RGB")
