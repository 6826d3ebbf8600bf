"""The ColPali-family retriever: late interaction (MaxSim) over page-image patch vectors, in the multi-vector store,
searched exactly or through the candidate index (settings.index.multivector_search)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrag.errors import IndexError_
from mmrag.protocols import PreparedMultiVectorEmbedder
from mmrag.retrievers import RETRIEVERS
from mmrag.retrievers.base import Embedded, PageBatch, Query, Retriever, SearchContext
from mmrag.types import Hit

if TYPE_CHECKING:
    from mmrag.config import Settings


def inputs_in_workers(settings: Settings) -> bool:
    """Whether the ingest workers run the ColPali processor (see IngestSettings.colpali_inputs_in_workers)."""
    from mmrag.device import is_cuda_device, resolve_device

    choice = settings.ingest.colpali_inputs_in_workers
    if choice == "auto":
        return is_cuda_device(resolve_device(settings.embedders.device))
    return choice == "always"


@RETRIEVERS.register
class ColpaliRetriever(Retriever):
    name = "colpali"
    modality = "image"

    def enabled(self, settings: Settings) -> bool:
        return settings.embedders.colpali.enabled

    def worker_modules(self, settings: Settings) -> tuple[str, ...]:
        return ("torch",) if self.enabled(settings) and inputs_in_workers(settings) else ()

    def load(self, settings: Settings) -> Any:
        from mmrag.embedders import MULTIVECTOR_EMBEDDERS

        return MULTIVECTOR_EMBEDDERS.create(settings.embedders.profile, settings.embedders)

    def input_spec(self, embedder: Any, settings: Settings, data_dir: Path) -> Any | None:
        if not isinstance(embedder, PreparedMultiVectorEmbedder) or not inputs_in_workers(settings):
            return None  # made in the job's process from the page image
        return embedder.input_spec(data_dir.resolve())

    def open_store(self, embedder: Any, directory: Path, settings: Settings, *, writable: bool) -> Any | None:
        from mmrag.device import resolve_device
        from mmrag.index import open_multivector_store

        store_dir = directory / self.name
        if not writable and not store_dir.exists():
            return None
        try:
            return open_multivector_store(
                settings.index, store_dir, model=embedder.model_id, dim=embedder.dim,
                device=resolve_device(settings.embedders.device), read_only=not writable,
            )
        except IndexError_:
            if writable:
                raise
            return None  # its writer has not committed it yet: nothing to search until the collection changes

    def embed_pages(self, embedder: Any, pages: PageBatch, settings: Settings) -> Embedded | None:
        multi = embedder.embed_inputs(pages.inputs()) if pages.inputs is not None else embedder.embed_images(
            pages.images()
        )
        factor = settings.index.multivector_pool_factor
        if factor > 1:
            from mmrag.index.compression import pool_tokens

            multi = pool_tokens(multi, factor)
        return Embedded(ids=pages.ids, vectors=multi, counts=[len(m) for m in multi])

    def add(self, store: Any, embedded: Embedded) -> None:
        store.add(embedded.ids.tolist(), embedded.vectors)

    def search(self, embedder: Any, store: Any, query: Query, depth: int, context: SearchContext) -> list[Hit]:
        tokens = embedder.embed_queries([query.text])[0]
        use_candidates = context.settings.index.multivector_search == "candidates"
        candidates = context.candidates(self.name) if use_candidates else None
        if candidates is not None:
            count = max(context.settings.index.multivector_candidates, depth)
            return candidates.search(tokens, store, depth, candidates=count)
        return store.search(tokens, depth)
