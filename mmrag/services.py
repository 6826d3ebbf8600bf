"""build_services(settings): the one composition root shared by the CLI, the API and the tests."""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mmrag.config import Settings
from mmrag.device import resolve_device
from mmrag.errors import IndexError_, ModelUnavailableError
from mmrag.protocols import ImageEmbedder, LexicalIndex, MultiVectorEmbedder, MultiVectorStore, TextEmbedder, VectorIndex
from mmrag.store.db import build_engine, build_sessionmaker, upgrade

if TYPE_CHECKING:
    from mmrag.index.candidates import PooledCandidateIndex

log = logging.getLogger(__name__)

RETRIEVERS = ("clip", "colpali", "text")
# The candidate index is saved once this many of its pages changed since (and this share of it): saving writes
# 2 KB a page, loading it instead of building it saves reading every stored token (about 3 ms a page on CPU).
CANDIDATES_SAVE_MIN_PAGES = 1000
CANDIDATES_SAVE_SHARE = 0.1


@dataclass
class Embedders:
    """The loaded models; a retriever whose model could not be loaded is None, with its reason in `off`."""

    clip: ImageEmbedder | None = None
    colpali: MultiVectorEmbedder | None = None
    text: TextEmbedder | None = None
    off: dict[str, str] = field(default_factory=dict)
    # True for the tiny-random profile: plumbing only, every score is meaningless.
    meaningless: bool = False

    def on(self) -> list[str]:
        return [name for name in RETRIEVERS if getattr(self, name) is not None]


def load_embedders(settings: Settings) -> Embedders:
    """Load every enabled embedder; one that cannot load is switched off with its reason (never faked)."""
    from mmrag.embedders import IMAGE_EMBEDDERS, MULTIVECTOR_EMBEDDERS, TEXT_EMBEDDERS

    group = settings.embedders
    embedders = Embedders(meaningless=group.profile == "tiny-random")
    table = {
        "clip": (group.clip.enabled, IMAGE_EMBEDDERS),
        "colpali": (group.colpali.enabled, MULTIVECTOR_EMBEDDERS),
        "text": (group.text.enabled, TEXT_EMBEDDERS),
    }
    for name, (enabled, registry) in table.items():
        if not enabled:
            embedders.off[name] = "disabled in settings"
            continue
        try:
            setattr(embedders, name, registry.create(group.profile, group))
        except ModelUnavailableError as exc:
            log.info("retriever %s is off: %s", name, exc)  # callers report it (the CLI prints a table)
            embedders.off[name] = str(exc)
    return embedders


@dataclass
class CollectionStores:
    """The vector stores of one collection, each keyed by SQL page ids."""

    directory: Path
    clip: VectorIndex | None = None
    text: VectorIndex | None = None
    colpali: MultiVectorStore | None = None
    # Opened by the collection's writer (Services.writing); a reader's multi-vector store is read-only.
    writable: bool = True
    # The collection's generation these stores are known to hold (Collection.generation), and when they were opened
    # or last caught up (index.reader_refresh_seconds counts from then).
    generation: int = 0
    refreshed_at: float = 0.0

    def by_retriever(self) -> dict[str, VectorIndex | MultiVectorStore]:
        return {name: store for name in RETRIEVERS if (store := getattr(self, name)) is not None}

    def flush(self) -> None:
        if not self.writable:
            return  # a reader's stores hold nothing to write
        for store in self.by_retriever().values():
            store.flush()

    def catch_up(self, *, expect_colpali: bool) -> bool:
        """A reader's stores follow what the collection's writer has made durable since, each reading only what is
        new where it can (FaissIndex.catch_up, ShardedMultiVectorStore.catch_up). False when one cannot, or when the
        multi-vector store that had not been committed at the open now may be: open them again then."""
        if expect_colpali and self.colpali is None:
            return False
        for store in self.by_retriever().values():
            catch_up = getattr(store, "catch_up", None)  # a backend that cannot follow (chroma) is opened again
            if catch_up is None or not catch_up():
                return False
        return True

    def remove(self, page_ids: list[int]) -> None:
        """Drop these pages' vectors from every store (durable at the next flush)."""
        for store in self.by_retriever().values():
            store.remove(page_ids)

    def compact_if_worthwhile(self, tombstone_ratio: float) -> bool:
        """Rewrite the multi-vector shards when deleted pages take more than `tombstone_ratio` of them."""
        if self.colpali is None:
            return False
        stats = self.colpali.stats()
        total = stats["pages"] + stats["tombstoned_pages"]
        if total == 0 or stats["tombstoned_pages"] / total <= tombstone_ratio:
            return False
        self.colpali.compact()
        return True


class Services:
    """Everything a caller needs, built once per process from Settings; models load lazily, once, under a lock."""

    def __init__(
        self, settings: Settings, engine: Engine, *, embedders: Embedders | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions: sessionmaker[Session] = build_sessionmaker(engine)
        self._embedders = embedders
        self._stores: dict[int, CollectionStores] = {}
        # collection → (store version, index, pages changed since it was last saved)
        self._candidates: dict[int, tuple[int, PooledCandidateIndex, int]] = {}
        # collection → (its generation, BM25 index, checked against SQL: False while another writer was at work)
        self._lexical: dict[int, tuple[int, LexicalIndex, bool]] = {}
        self._writing: set[int] = set()  # collections this process is writing (Services.writing)
        self._lock = threading.Lock()
        self._lexical_lock = threading.Lock()
        # Its own lock: an update of the candidate index reads the new pages' tokens (seconds for a large job), and
        # searches that do not use it (every one takes _lock for its stores) must not wait for it.
        self._candidates_lock = threading.Lock()

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def embedders(self) -> Embedders:
        with self._lock:
            if self._embedders is None:
                self._embedders = load_embedders(self.settings)
            return self._embedders

    def collection_dir(self, collection_id: int) -> Path:
        return self.data_dir / "collections" / str(collection_id)

    def stores(self, collection_id: int, *, generation: int | None = None) -> CollectionStores:
        """The collection's vector stores for the loaded models; manifests are checked on open.

        While this process writes the collection (inside `writing`), the stores it writes. Otherwise a reader's,
        opened so as never to touch what another process is writing (the multi-vector store read-only: a writable
        open truncates uncommitted rows and deletes unreferenced shards, which are another writer's work in
        progress). Given `generation` (the collection's, just read), a reader's stores that another process has
        changed since are opened again, at most every index.reader_refresh_seconds.
        """
        embedders = self.embedders()
        with self._lock:
            cached = self._stores.get(collection_id)
            if cached is not None and (
                collection_id in self._writing
                or generation is None
                or cached.generation == generation
                or time.monotonic() - cached.refreshed_at < self.settings.index.reader_refresh_seconds
            ):
                return cached
            if generation is None:
                generation = self.generation(collection_id)
            # `generation` was read before the stores are brought up to date: a change landing meanwhile makes them
            # newer than it says, and the next call looks again; never older.
            expect_colpali = embedders.colpali is not None
            if cached is not None and not cached.writable and cached.catch_up(expect_colpali=expect_colpali):
                cached.generation, cached.refreshed_at = generation, time.monotonic()
                return cached
            if cached is not None:
                log.info("collection %s changed (generation %d -> %d): opening its stores again",
                         collection_id, cached.generation, generation)
            stores = self._open_stores(collection_id, embedders, writable=collection_id in self._writing)
            stores.generation = generation
            self._stores[collection_id] = stores
            self._candidates.pop(collection_id, None)  # derived from the stores just replaced
            return stores

    @contextmanager
    def writing(self, collection_id: int) -> Iterator[None]:
        """This process writes the collection for the duration (its caller holds the collection's lock,
        pipeline.collection_writer). Stores opened for reading, or before another process last wrote, are opened
        again first: a writer working from a stale copy would overwrite the other's vectors (the next job's recovery
        finds them lost and re-embeds every one) and its shard rows."""
        generation = self.generation(collection_id)
        with self._lock:
            cached = self._stores.get(collection_id)
            if cached is not None and (not cached.writable or cached.generation != generation):
                del self._stores[collection_id]
                self._candidates.pop(collection_id, None)
            self._writing.add(collection_id)
        try:
            yield
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

    def generation(self, collection_id: int) -> int:
        """The collection's generation now (Collection.generation)."""
        from mmrag.store import repository

        with self.sessions() as session:
            return repository.collection_generation(session, collection_id)

    def _open_stores(self, collection_id: int, embedders: Embedders, *, writable: bool) -> CollectionStores:
        from mmrag.index import build_vector_index, open_multivector_store

        directory = self.collection_dir(collection_id) / "vectors"
        directory.mkdir(parents=True, exist_ok=True)
        stores = CollectionStores(directory=directory, writable=writable, refreshed_at=time.monotonic())
        index_settings = self.settings.index
        if embedders.clip is not None:
            stores.clip = build_vector_index(
                index_settings, directory, name="clip", model=embedders.clip.model_id, dim=embedders.clip.dim
            )
        if embedders.text is not None:
            stores.text = build_vector_index(
                index_settings, directory, name="text", model=embedders.text.model_id, dim=embedders.text.dim
            )
        if embedders.colpali is not None:
            colpali_dir = directory / "colpali"
            if writable or colpali_dir.exists():
                try:
                    stores.colpali = open_multivector_store(
                        index_settings,
                        colpali_dir,
                        model=embedders.colpali.model_id,
                        dim=embedders.colpali.dim,
                        device=resolve_device(self.settings.embedders.device),
                        read_only=not writable,
                    )
                except IndexError_:
                    if writable:
                        raise
                    # Its writer has not committed it yet: nothing to search until the collection changes again.
                    log.info("collection %s has no committed multi-vector store yet", collection_id)
        return stores

    def candidate_index(self, collection_id: int) -> PooledCandidateIndex | None:
        """The scalable multi-vector path's centroid index (derived data, updated when the store's pages change)."""
        from mmrag.index.candidates import PooledCandidateIndex

        store = self.stores(collection_id).colpali
        if store is None:
            return None
        with self._candidates_lock:
            cached = self._candidates.get(collection_id)
            # By the store's version, not by comparing its page ids: that cost every query 37 ms at a million pages,
            # twenty times the search. Read before the update: a page added meanwhile means one more update, never a
            # stale index.
            version = store.version
            if cached is None:
                # Saved by this or another process: then only the pages changed since are read.
                index = PooledCandidateIndex.load(self.candidates_path(collection_id), store)
                if index is None:
                    log.info("building the candidate index of collection %s (%d pages)", collection_id, len(store))
                    index = PooledCandidateIndex.build(store)
                    changed = len(index)
                else:
                    changed = sum(index.update(store))
                cached = (version, index, changed)
            elif cached[0] != version:
                # Brought up to date, reading only the pages added since: building it again read every stored token
                # (about 3 ms a page on CPU), after every job and every catch-up of a reader.
                added, removed = cached[1].update(store)
                log.info("candidate index of collection %s: %d pages added, %d removed", collection_id, added, removed)
                cached = (version, cached[1], cached[2] + added + removed)
            if cached[2] > max(CANDIDATES_SAVE_MIN_PAGES, CANDIDATES_SAVE_SHARE * len(cached[1])):
                try:
                    cached[1].save(self.candidates_path(collection_id), source=store.uid)
                    cached = (cached[0], cached[1], 0)
                except OSError as exc:  # derived data: the next process builds it again
                    log.warning("could not save the candidate index of collection %s: %s", collection_id, exc)
            self._candidates[collection_id] = cached
            return cached[1]

    def candidates_path(self, collection_id: int) -> Path:
        """Where the candidate index is saved (derived data, tagged with its store's uid)."""
        return self.collection_dir(collection_id) / "candidates.npz"

    def lexical(self, collection_id: int, *, generation: int | None = None, writer: bool = False) -> LexicalIndex:
        """The BM25 index over the collection's page text, current with SQL as of `generation` (read here if None).

        Kept in memory from one call to the next while the collection's generation (one integer in SQL) is
        unchanged, whichever process indexes or deletes. Reading SQL's pages and loading the index on every query
        cost 104 ms at 10k pages and 423 ms at 50k, against 2-5 ms for the search itself.

        Only the collection's writer (`writer`: the caller holds its lock), or a caller that can take the lock at
        once, updates and saves it. While another process (or a job of this one) writes, the index its last job
        saved serves, and is looked at again each call until the writer is done (reading only the segments it does
        not hold): an update per batch of that job would race the index the job itself saves when it ends.
        """
        if generation is None:
            generation = self.generation(collection_id)
        with self._lexical_lock:  # one load or rebuild at a time, not one per waiting query
            cached = self._lexical.get(collection_id)
            if cached is not None and cached[0] == generation and cached[2]:
                return cached[1]
            # The generation is read first: a change landing during the load leaves this index newer than the
            # generation it is kept under, and the next call loads again. Never older.
            with self._derived_data_writable(collection_id, writer=writer) as may_write:
                index = self._current_lexical(
                    collection_id, cached[1] if cached else None, may_write=may_write, generation=generation
                )
            self._lexical[collection_id] = (generation, index, may_write)
            return index

    @contextmanager
    def _derived_data_writable(self, collection_id: int, *, writer: bool) -> Iterator[bool]:
        """Whether this caller may rebuild and save what is derived from the collection (its BM25 index): it is the
        collection's writer, or it holds the writer lock for the duration, taken without waiting."""
        if writer:
            yield True
            return
        if collection_id in self._writing:
            yield False  # a job of this process is writing it, on another thread
            return
        with self.writer_lock(collection_id) as acquired:
            yield acquired

    @contextmanager
    def writer_lock(self, collection_id: int) -> Iterator[bool]:
        """Try the collection's writer lock without waiting; yields whether this caller holds it, and releases it
        after. An flock on a file in the collection's directory: one holder across processes on this host, and the
        kernel releases it even after kill -9."""
        path = self.writer_lock_path(collection_id)
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

    def writer_lock_path(self, collection_id: int) -> Path:
        """The file whose flock makes a process the collection's one writer (pipeline.collection_writer)."""
        return self.collection_dir(collection_id) / "writer.lock"

    def _current_lexical(
        self, collection_id: int, cached: LexicalIndex | None, *, may_write: bool, generation: int | None = None
    ) -> LexicalIndex:
        """The saved BM25 index when it covers SQL's indexed pages with text, else that index brought up to date
        (the pages added since read from SQL and indexed, the ones gone deleted) and saved; rebuilt from SQL when none
        is saved or it cannot be read. Without `may_write`: the saved one as it is (`cached` when that is it), or
        an empty one if none is saved.

        A saved index marked current with `generation` (read before this call) is taken as it is: reading the id of
        every page with text took about 3 s at a million pages, at the first query after each job."""
        from mmrag.index.lexical import Bm25Index, id_changes
        from mmrag.store import repository

        directory = self.lexical_dir(collection_id)
        saved = Bm25Index.saved_fingerprint(directory)
        index = cached if isinstance(cached, Bm25Index) else None
        if saved is None:
            index = None if may_write else index  # nothing saved to add to: a writer builds it from SQL
        elif index is None or index.fingerprint != saved:
            try:
                index = Bm25Index.load(directory, reuse=index)  # reads only the segments it does not hold
            except IndexError_ as exc:  # damaged or from another tokenizer version: it is derived, rebuild it
                log.warning("BM25 index of collection %s unreadable: %s", collection_id, exc)
                index = None if may_write else index
        if not may_write:
            return index if index is not None else Bm25Index()  # its writer's first job saves one when it ends
        if index is not None and generation is not None and Bm25Index.saved_generation(directory) == generation:
            return index  # marked current with this very generation: no page id read
        with self.sessions() as session:
            page_ids = repository.text_page_ids(session, collection_id)
        if index is not None and index.is_current(page_ids):
            if generation is not None:
                Bm25Index.mark_current(directory, generation)
            return index
        if index is None:
            index = Bm25Index()
        added, removed = id_changes(index.ids(), page_ids)
        # Only the pages added since the saved index are read and tokenized; deleted ones are flagged in it.
        with self.sessions() as session:
            pages = repository.page_texts(session, collection_id, page_ids=added)
        index.remove(removed)
        index.add(pages)
        index.save(directory, generation=generation)
        return index

    def refresh_lexical(self, collection_id: int) -> None:
        """Bring the BM25 index up to date and save it unless the saved one already covers SQL's indexed pages
        with text, decided from page ids and the saved commit alone (no index and no page text are loaded when it
        does), and marks it current with the collection's generation, so that the first query after the job reads
        no page id. For the collection's writer, which holds its lock: a job calls it as it ends."""
        from mmrag.index.lexical import Bm25Index
        from mmrag.store import repository

        generation = self.generation(collection_id)  # before the ids: see _current_lexical
        with self.sessions() as session:
            page_ids = repository.text_page_ids(session, collection_id)
        if not self.lexical_covers(collection_id, page_ids):
            self.lexical(collection_id, generation=generation, writer=True)
        elif Bm25Index.saved_in(self.lexical_dir(collection_id)):
            Bm25Index.mark_current(self.lexical_dir(collection_id), generation)

    def lexical_covers(self, collection_id: int, page_ids: list[int]) -> bool:
        """Whether the collection's saved BM25 index covers exactly these pages with text (SQL's), from its commit
        alone. No index saved and no page with text (a photo collection) needs none either: the first query builds
        an empty one."""
        from mmrag.index.lexical import Bm25Index, fingerprint_of

        saved = Bm25Index.saved_fingerprint(self.lexical_dir(collection_id))
        return not page_ids if saved is None else saved == fingerprint_of(page_ids)

    def lexical_dir(self, collection_id: int) -> Path:
        return self.collection_dir(collection_id) / "lexical"

    def close(self) -> None:
        for stores in self._stores.values():
            stores.flush()  # a writer's; a reader's hold nothing to write
        self._stores.clear()
        self.engine.dispose()


def build_services(settings: Settings, *, embedders: Embedders | None = None, migrate: bool = True) -> Services:
    """The composition root. `embedders` lets tests pass tiny models in; `migrate` runs Alembic to head."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = build_engine(settings.database_url(), echo=settings.database.echo)
    if migrate:
        upgrade(engine)
    return Services(settings, engine, embedders=embedders)
