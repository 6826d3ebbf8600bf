"""Embedding pages: what the workers prepare for each embedder, the vectors of a batch, and adding them to stores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmrag.config import Settings
from mmrag.device import is_cuda_device, resolve_device
from mmrag.errors import NotFoundError
from mmrag.inputs import InputSpec, prepare_from_file
from mmrag.services import CollectionStores, Embedders
from mmrag.store.models import utcnow


@dataclass(frozen=True)
class PendingPage:
    """A page committed to SQL (pending) whose vectors are still to be made."""

    page_id: int
    image_path: str | None  # relative to the data dir
    text: str
    # retriever → the input its embedder asked the workers for (InputSpecs); absent: made from the stored image
    inputs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class Embedded:
    """A batch's vectors, computed and not yet in any store: retriever → (page ids, vectors)."""

    vectors: dict[str, tuple[np.ndarray, Any]] = field(default_factory=dict)


def colpali_inputs_in_workers(settings: Settings) -> bool:
    """Whether workers run the ColPali processor (see IngestSettings.colpali_inputs_in_workers)."""
    choice = settings.ingest.colpali_inputs_in_workers
    if choice == "auto":
        return is_cuda_device(resolve_device(settings.embedders.device))
    return choice == "always"


def input_specs(embedders: Embedders, data_dir: Path, *, colpali: bool = True) -> dict[str, InputSpec]:
    """Retriever → what the workers should make for its embedder, for embedders that take prepared inputs;
    `colpali=False` leaves ColPali's inputs to this process (made from the stored page image)."""
    specs: dict[str, InputSpec] = {}
    clip_spec = getattr(embedders.clip, "input_spec", None)
    if clip_spec is not None and hasattr(embedders.clip, "embed_inputs"):
        spec = clip_spec()
        if spec is not None:
            specs["clip"] = spec
    colpali_spec = getattr(embedders.colpali, "input_spec", None)
    if colpali and colpali_spec is not None and hasattr(embedders.colpali, "embed_inputs"):
        specs["colpali"] = colpali_spec(data_dir.resolve())
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
    pool_factor: int = 1,
    specs: dict[str, InputSpec] | None = None,
) -> Embedded:
    """Embed pages with every loaded retriever that has a store; nothing is written anywhere.

    A retriever whose embedder takes prepared inputs (`specs`) gets them from the workers, or, for pages that came
    without (repair, long PDFs), makes them from the stored page image the same way; others get PIL images.
    """
    embedded = Embedded()
    if not pages:
        return embedded
    specs = specs or {}
    ids = np.array([p.page_id for p in pages], dtype=np.int64)
    opened: list[Image.Image] | None = None

    def images() -> list[Image.Image]:
        nonlocal opened
        if opened is None:
            opened = [_open_page_image(data_dir, p.image_path) for p in pages]
        return opened

    def inputs(name: str) -> list[Any]:
        spec = specs[name]
        return [p.inputs[name] if name in p.inputs else _input_from_stored(data_dir, p.image_path, spec) for p in pages]

    if embedders.clip is not None and stores.clip is not None:
        if "clip" in specs:
            vectors = embedders.clip.embed_inputs(inputs("clip"))  # type: ignore[attr-defined]
        else:
            vectors = embedders.clip.embed_images(images())
        embedded.vectors["clip"] = (ids, vectors)
    if embedders.colpali is not None and stores.colpali is not None:
        if "colpali" in specs:
            multi = embedders.colpali.embed_inputs(inputs("colpali"))  # type: ignore[attr-defined]
        else:
            multi = embedders.colpali.embed_images(images())
        if pool_factor > 1:
            from mmrag.index.compression import pool_tokens

            multi = pool_tokens(multi, pool_factor)
        embedded.vectors["colpali"] = (ids, multi)
    if embedders.text is not None and stores.text is not None:
        with_text = [p for p in pages if p.text.strip()]
        if with_text:
            text_ids = np.array([p.page_id for p in with_text], dtype=np.int64)
            embedded.vectors["text"] = (text_ids, embedders.text.embed_texts([p.text for p in with_text]))
    return embedded


def store_vectors(embedders: Embedders, stores: CollectionStores, embedded: Embedded) -> list[dict[str, Any]]:
    """Add embedded vectors to their stores (durable at the next flush); returns the SQL rows that vouch for them."""
    records: list[dict[str, Any]] = []
    for name, (ids, vectors) in embedded.vectors.items():
        if name == "colpali":
            stores.colpali.add(ids.tolist(), vectors)
            counts = [len(m) for m in vectors]
        else:
            getattr(stores, name).add(ids, vectors)
            counts = [1] * len(ids)
        records += _records(ids, name, getattr(embedders, name), counts)
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


def _records(ids: np.ndarray, retriever: str, embedder: object, counts: list[int]) -> list[dict[str, Any]]:
    model = getattr(embedder, "model_id")
    revision = getattr(embedder, "revision", "")
    dim = getattr(embedder, "dim")
    now = utcnow()
    return [
        {"page_id": int(i), "retriever": retriever, "model": model, "revision": revision, "dim": dim,
         "n_vectors": int(n), "created_at": now}
        for i, n in zip(ids, counts, strict=True)
    ]
