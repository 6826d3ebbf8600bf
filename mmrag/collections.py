"""Collections: each one's open stores, a reader's refresh by generation, the writer lock and the writing context."""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mmrag.config import Settings
from mmrag.derived import DerivedIndexes
from mmrag.errors import ManifestMismatchError, ModelMismatchError
from mmrag.protocols import MultiVectorStore
from mmrag.retrievers import RETRIEVERS, Embedders, RetrieverRegistry

log = logging.getLogger(__name__)


@dataclass
class CollectionStores:
    """The vector stores of one collection by retriever name (mmrag.retrievers), each keyed by SQL page ids."""

    directory: Path
    stores: dict[str, Any] = field(default_factory=dict)
    # Opened by the collection's writer (Collections.writing); a reader's multi-vector store is read-only.
    writable: bool = True
    # The collection's generation these stores are known to hold (Collection.generation), and when they were opened
    # or last caught up (index.reader_refresh_seconds counts from then).
    generation: int = 0
    refreshed_at: float = 0.0
    # Pages removed through these stores since the BM25 index was last refreshed: the writer brings that index up
    # to date before it lets go of the collection (DerivedIndexes.after_writing).
    pages_removed: bool = False
    # Retrievers with a model loaded whose store a reader found not yet committed: opened again once it may be.
    missing: frozenset[str] = frozenset()

    def get(self, retriever: str) -> Any | None:
        return self.stores.get(retriever)

    def by_retriever(self) -> dict[str, Any]:
        return dict(self.stores)

    def flush(self) -> None:
        if not self.writable:
            return  # a reader's stores hold nothing to write
        for store in self.stores.values():
            store.flush()

    def catch_up(self) -> bool:
        """A reader's stores follow what the collection's writer has made durable since, each reading only what is
        new where it can (FaissIndex.catch_up, ShardedMultiVectorStore.catch_up). False when one cannot, or when a
        store that had not been committed at the open now may be: open them again then."""
        if self.missing:
            return False
        return all(store.catch_up() for store in self.stores.values())  # chroma cannot: opened again

    def remove(self, page_ids: list[int]) -> None:
        """Drop these pages' vectors from every store (durable at the next flush)."""
        for store in self.stores.values():
            store.remove(page_ids)
        self.pages_removed = self.pages_removed or bool(page_ids)

    def compact_if_worthwhile(self, tombstone_ratio: float) -> bool:
        """Rewrite each multi-vector store's shards when deleted pages take more than `tombstone_ratio` of them."""
        compacted = False
        for store in self.stores.values():
            if not isinstance(store, MultiVectorStore):
                continue
            stats = store.stats()
            total = stats["pages"] + stats["tombstoned_pages"]
            if total and stats["tombstoned_pages"] / total > tombstone_ratio:
                store.compact()
                compacted = True
        return compacted


@contextmanager
def try_flock(path: Path) -> Iterator[bool]:
    """Try an exclusive flock on `path` without waiting; yields whether this caller holds it, and releases it after.
    One holder across processes on this host, and the kernel releases it even after kill -9."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            acquired = False
        else:
            acquired = True
        try:
            yield acquired
        finally:
            if acquired:
                fcntl.flock(handle, fcntl.LOCK_UN)


class Collections:
    """The collections this process has open: their stores (a writer's or a reader's), the writer lock, and their
    derived indexes (`derived`: BM25 and the candidate index, saved by writers only)."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        models: Callable[[Iterable[str] | None], Embedders],
        registry: RetrieverRegistry = RETRIEVERS,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.sessions = sessions
        self._models = models  # loads them at the first call (Services.embedders)
        self._stores: dict[int, CollectionStores] = {}
        self._writing: set[int] = set()  # collections this process is writing (Collections.writing)
        self._lock = threading.Lock()
        self.derived = DerivedIndexes(self)

    def directory(self, collection_id: int) -> Path:
        return self.settings.storage_dir() / "collections" / str(collection_id)

    def name(self, collection_id: int) -> str:
        from mmrag.store import repository

        with self.sessions() as session:
            return repository.collection_names(session, [collection_id]).get(collection_id, str(collection_id))

    def generation(self, collection_id: int) -> int:
        """The collection's generation now (Collection.generation)."""
        from mmrag.store import repository

        with self.sessions() as session:
            return repository.collection_generation(session, collection_id)

    def cached_stores(self, collection_id: int) -> CollectionStores | None:
        """The stores this process has open for the collection, as they are (no refresh)."""
        with self._lock:
            return self._stores.get(collection_id)

    def stores(
        self, collection_id: int, *, generation: int | None = None, retrievers: Iterable[str] | None = None
    ) -> CollectionStores:
        """The collection's vector stores for the loaded models; manifests are checked on open. `retrievers`: load
        only these retrievers' models if they are not loaded yet (a one-shot query's; default: every model), and
        open their stores beside those open already.

        While this process writes the collection (inside `writing`), the stores it writes. Otherwise a reader's,
        opened so as never to touch what another process is writing (the multi-vector store read-only: a writable
        open truncates uncommitted rows and deletes unreferenced shards, which are another writer's work in
        progress). Given `generation` (the collection's, just read), a reader's stores that another process has
        changed since are opened again, at most every index.reader_refresh_seconds.
        """
        models = self._models(retrievers)
        with self._lock:
            cached = self._stores.get(collection_id)
            if cached is not None and (
                collection_id in self._writing
                or generation is None
                or cached.generation == generation
                or time.monotonic() - cached.refreshed_at < self.settings.index.reader_refresh_seconds
            ):
                return self._add_stores(collection_id, cached, models)
            if generation is None:
                generation = self.generation(collection_id)
            # `generation` was read before the stores are brought up to date: a change landing meanwhile makes them
            # newer than it says, and the next call looks again; never older.
            if cached is not None and not cached.writable and cached.catch_up():
                cached.generation, cached.refreshed_at = generation, time.monotonic()
                return self._add_stores(collection_id, cached, models)
            if cached is not None:
                log.info("collection %s changed (generation %d -> %d): opening its stores again",
                         collection_id, cached.generation, generation)
            # The candidate index derived from the stores replaced here is dropped at its next use (it knows its store).
            stores = self._open_stores(collection_id, models, writable=collection_id in self._writing)
            stores.generation = generation
            self._stores[collection_id] = stores
            return stores

    @contextmanager
    def writing(self, collection_id: int) -> Iterator[None]:
        """This process writes the collection for the duration (its caller holds the collection's lock,
        indexing.collection_writer). Stores opened for reading, or before another process last wrote, are opened
        again first: a writer working from a stale copy would overwrite the other's vectors (the next job's recovery
        finds them lost and re-embeds every one) and its shard rows. When the work ends without an error, the
        writer brings the derived indexes up to date and saves them (DerivedIndexes.after_writing): readers never
        save them."""
        generation = self.generation(collection_id)
        with self._lock:
            cached = self._stores.get(collection_id)
            if cached is not None and (not cached.writable or cached.generation != generation):
                del self._stores[collection_id]
            self._writing.add(collection_id)
        try:
            yield
            self.derived.after_writing(collection_id)
        finally:
            with self._lock:
                self._writing.discard(collection_id)
            # Everything written up to now was written through these stores: they hold the generation SQL has now.
            try:
                generation = self.generation(collection_id)
            except SQLAlchemyError:
                generation = -1  # unknown: the next reader or writer opens them again
            with self._lock:
                if (stores := self._stores.get(collection_id)) is not None:
                    stores.generation = generation

    @contextmanager
    def writer_lock(self, collection_id: int) -> Iterator[bool]:
        """Try the collection's writer lock without waiting; yields whether this caller holds it, and releases it
        after (an flock on a file in the collection's directory). Only writers take it: a search never does."""
        with try_flock(self.writer_lock_path(collection_id)) as acquired:
            yield acquired

    def writer_lock_path(self, collection_id: int) -> Path:
        """The file whose flock makes a process the collection's one writer (indexing.collection_writer)."""
        return self.directory(collection_id) / "writer.lock"

    def close(self) -> None:
        with self._lock:
            for stores in self._stores.values():
                stores.flush()  # a writer's; a reader's hold nothing to write
            self._stores.clear()

    def _open_stores(self, collection_id: int, models: Embedders, *, writable: bool) -> CollectionStores:
        directory = self.directory(collection_id) / "vectors"
        if writable:
            directory.mkdir(parents=True, exist_ok=True)  # a reader writes nothing: its stores open empty
        stores = CollectionStores(directory=directory, writable=writable, refreshed_at=time.monotonic())
        return self._add_stores(collection_id, stores, models)

    def _add_stores(self, collection_id: int, stores: CollectionStores, models: Embedders) -> CollectionStores:
        """`stores` with those of the loaded models not opened yet (a model loaded after they were) opened too."""
        missing = set(stores.missing)
        for retriever in self.registry:
            embedder = models.get(retriever.name)
            if embedder is None or retriever.name in stores.stores or retriever.name in stores.missing:
                continue  # off, a retriever without a model (BM25: its index is derived, see mmrag.derived), or open
            try:
                store = retriever.open_store(embedder, stores.directory, self.settings, writable=stores.writable)
            except ManifestMismatchError as exc:
                if isinstance(exc, ModelMismatchError) or exc.field not in ("model", "dim"):
                    raise
                raise ModelMismatchError(self.name(collection_id), retriever.name, str(exc)) from exc
            if store is None:
                # Its writer has not committed it yet: nothing to search until the collection changes again.
                log.info("collection %s has no committed %s store yet", collection_id, retriever.name)
                missing.add(retriever.name)
            else:
                stores.stores[retriever.name] = store
        stores.missing = frozenset(missing)
        return stores

