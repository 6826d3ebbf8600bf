"""The ColPali-family retriever: late interaction (MaxSim) over page-image patch vectors, in the multi-vector store,
searched exactly or through the candidate index (settings.index.multivector_search)."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrag import layout
from mmrag.errors import ConfigError, IndexError_
from mmrag.protocols import MappedMultiVectorEmbedder, PreparedMultiVectorEmbedder
from mmrag.retrievers import RETRIEVERS
from mmrag.retrievers.base import Embedded, PageBatch, Query, Retriever, SearchContext, drop_store
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


QUERIES_KEPT = 64  # query token matrices kept from searches, for the similarity maps of their hits (looked_at)


@RETRIEVERS.register
class ColpaliRetriever(Retriever):
    name = "colpali"
    modality = "image"
    similarity_maps = True

    def __init__(self) -> None:
        # (embedder, query) → its token matrix: a search's hits get their similarity maps without a second forward
        # pass. The embedder is held weakly, so a closed collection's model is not kept alive by its last queries.
        self._queries: OrderedDict[tuple[int, str], tuple[weakref.ref[Any], np.ndarray]] = OrderedDict()
        self._queries_lock = threading.Lock()

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

        try:
            return open_multivector_store(
                settings.index, directory / self.name, model=embedder.model_id, dim=embedder.dim,
                device=resolve_device(settings.embedders.device), read_only=not writable,
            )
        except IndexError_:
            if writable:
                raise
            return None  # its writer has not committed it yet: nothing to search until the collection changes

    def drop_store(self, directory: Path, settings: Settings) -> None:
        drop_store(settings, directory, self.name, files=[self.name])  # the multi-vector store owns a directory

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
        from mmrag.protocols import SearchesWithin

        tokens = self._query_tokens(embedder, str(query.text))
        if context.within is not None and isinstance(store, SearchesWithin):
            return store.search_within(tokens, depth, context.within)
        if context.settings.index.multivector_search == "bipage":
            return self._search_bipage_candidates(tokens, store, query, depth, context)
        use_candidates = context.settings.index.multivector_search == "candidates"
        candidates = context.candidates(self.name) if use_candidates else None
        if candidates is not None:
            count = max(context.settings.index.multivector_candidates, depth)
            return candidates.search(tokens, store, depth, candidates=count)
        return store.search(tokens, depth)

    def _search_bipage_candidates(
        self, tokens: np.ndarray, store: Any, query: Query, depth: int, context: SearchContext
    ) -> list[Hit]:
        """The single-vector Bi* retriever's top pages (index.multivector_candidates of them, at least `depth`) by
        one vector each, reranked by exact MaxSim over every token: only the candidate set is approximate."""
        stage = context.stage("bipage")
        if stage is None:
            raise ConfigError(
                "index.multivector_search = 'bipage' needs the bipage retriever on "
                "(MMRAG_EMBEDDERS__BIPAGE__ENABLED=true and a Bi* checkpoint in MMRAG_EMBEDDERS__BIPAGE__MODEL)"
            )
        bi_embedder, bi_store = stage
        if bi_store is None:
            return store.search(tokens, depth)  # no page of it committed yet: every page is a candidate
        count = max(context.settings.index.multivector_candidates, depth)
        candidates = bi_store.search(bi_embedder.embed_texts([str(query.text)]), count)[0]  # its query side
        if not candidates:
            return []
        return store.search_within(tokens, depth, np.array([hit.page_id for hit in candidates], dtype=np.int64))

    def looked_at(
        self, embedder: Any, store: Any, text: str, pages: Mapping[int, tuple[int, int]]
    ) -> dict[int, list[layout.Region]]:
        """Each held page's similarity map for the query's own tokens (layout.looked_at). A page whose stored
        sequence does not match its grid (pooled at index time: multivector_pool_factor > 1) gets none."""
        held = [page_id for page_id in pages if page_id in store]
        if not held or not isinstance(embedder, MappedMultiVectorEmbedder):
            return {}
        tokens = self._query_tokens(embedder, text)
        own = embedder.query_words(text)
        if len(own) == len(tokens) and own.any():
            tokens = tokens[own]
        found: dict[int, list[layout.Region]] = {}
        for page_id in held:
            grid = embedder.patch_grid(*pages[page_id])
            if grid is None:
                continue
            vectors = store.tokens(page_id)
            if len(vectors) != grid.length:
                continue
            patches = vectors[list(grid.positions)].astype(np.float32)
            found[page_id] = layout.looked_at(tokens, patches, grid.rows, grid.cols)
        return found

    def _query_tokens(self, embedder: Any, text: str) -> np.ndarray:
        key = (id(embedder), text)
        with self._queries_lock:
            kept = self._queries.get(key)
            if kept is not None and kept[0]() is embedder:  # not another embedder at a reused address
                self._queries.move_to_end(key)
                return kept[1]
        tokens = embedder.embed_queries([text])[0]
        with self._queries_lock:
            self._queries[key] = (weakref.ref(embedder), tokens)
            while len(self._queries) > QUERIES_KEPT:
                self._queries.popitem(last=False)
        return tokens
