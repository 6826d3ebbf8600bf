"""A collection's derived indexes (BM25 over page text, the multi-vector candidate index): freshness, loading,
bringing them up to date, and saving, which only the collection's writer does.

Both are derived data: SQL (BM25) and the multi-vector store (candidates) are the truth, and either index can be
built again from them. A reader (a search) loads what its writer saved and brings an in-memory copy up to date,
reading only the pages added since; it never takes the writer lock and never writes a file. The writer saves them:
a job as it ends (refresh_lexical, and after_writing as it lets go of the collection) and a delete.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmrag.errors import IndexError_
from mmrag.protocols import LexicalIndex, MultiVectorStore

if TYPE_CHECKING:
    from mmrag.collections import Collections
    from mmrag.index.lexical import Bm25Index
    from mmrag.index.candidates import PooledCandidateIndex

log = logging.getLogger(__name__)

# A writer saves the candidate index once this many of its pages changed since it was saved (and this share of
# it): saving writes every page's centroids, while a reader loading it instead of building it saves reading every
# stored token.
CANDIDATES_SAVE_MIN_PAGES = 1000
CANDIDATES_SAVE_SHARE = 0.1


@dataclass
class _Lexical:
    """A BM25 index held in memory, current with SQL as of `generation`."""

    generation: int
    index: LexicalIndex
    # The key of the saved index it was loaded from (Bm25Index.saved_key: its fingerprint and rewrites; then
    # brought up to date in memory), or None: while the saved one is still that, a reader keeps its copy instead of
    # loading the saved one again.
    base: tuple[str, int] | None


def _empty_lexical() -> LexicalIndex:
    from mmrag.index.lexical import Bm25Index

    return Bm25Index()


@dataclass
class _Candidates:
    """A candidate index held in memory, derived from one multi-vector store object as of its `version`."""

    store: weakref.ref  # the store it derives from: stores opened again mean an index loaded again
    version: int
    index: PooledCandidateIndex
    unsaved: int  # pages changed since it was last saved (or loaded)


class DerivedIndexes:
    """The BM25 and candidate indexes of the collections of one Collections, kept in memory from one call to the
    next while what they derive from is unchanged."""

    def __init__(self, collections: Collections) -> None:
        self.collections = collections
        self._lexical: dict[int, _Lexical] = {}
        self._candidates: dict[tuple[int, str], _Candidates] = {}
        self._lexical_lock = threading.Lock()  # one load or update at a time, not one per waiting query
        # Its own lock: an update of the candidate index reads the new pages' tokens (seconds for a large job), and
        # searches that do not use it must not wait for it.
        self._candidates_lock = threading.Lock()

    @property
    def lexical_in_backend(self) -> bool:
        """Whether BM25 lives in the vector backend (qdrant), which readers never fill: then every job brings it up
        to date with SQL (comparing page ids), so a collection moved to the backend, or one whose BM25 was lost,
        gets it back at its next job."""
        return self.collections.settings.index.backend == "qdrant"

    def lexical_dir(self, collection_id: int) -> Path:
        return self.collections.directory(collection_id) / "lexical"

    def candidates_path(self, collection_id: int, retriever: str) -> Path:
        """Where the candidate index of a retriever's multi-vector store is saved (tagged with its store's uid)."""
        return self.collections.directory(collection_id) / f"candidates-{retriever}.npz"

    def _saved_candidates(self, collection_id: int, retriever: str) -> Path:
        """The saved candidate index to load: a collection saved before candidate indexes were named by retriever
        has its one index as candidates.npz (its store's uid tells whether it is this store's); the writer's next
        save replaces it."""
        path = self.candidates_path(collection_id, retriever)
        legacy = self.collections.directory(collection_id) / "candidates.npz"
        return legacy if not path.is_file() and legacy.is_file() else path

    # ----------------------------------------------------------------------------------------------- BM25

    def lexical(self, collection_id: int, *, generation: int | None = None, writer: bool = False) -> LexicalIndex:
        """The BM25 index over the collection's page text, current with SQL as of `generation` (read here if None).

        Kept in memory from one call to the next while the collection's generation (one integer in SQL) is
        unchanged, whichever process indexes or deletes: reading SQL's pages and loading the index on every query
        would cost far more than the search itself.

        A reader (the default) loads the index the collection's writer saved and brings its copy up to date in
        memory (the pages added since read from SQL, the ones gone deleted); it saves nothing and takes no lock
        but this object's, so it never waits for a writer. `writer` (the caller holds the collection's writer lock)
        also saves it, marked current with `generation`.
        """
        if self.lexical_in_backend:
            return self._qdrant_lexical(collection_id, writer=writer)
        if generation is None:
            generation = self.collections.generation(collection_id)
        with self._lexical_lock:
            cached = self._lexical.get(collection_id)
            if cached is not None and cached.generation == generation and not writer:
                return cached.index
            # The generation is read first: a change landing during the update leaves this index newer than the
            # generation it is kept under, and the next call looks again. Never older.
            current = self._current_lexical(collection_id, cached, generation=generation, writer=writer)
            self._lexical[collection_id] = current
            return current.index

    def _current_lexical(
        self, collection_id: int, cached: _Lexical | None, *, generation: int, writer: bool
    ) -> _Lexical:
        """`cached` (or the saved index) brought up to date with SQL's indexed pages with text as of `generation`,
        and for a writer saved. Built from SQL when none is saved or it cannot be read.

        A saved index marked current with `generation` is taken as it is: reading the id of every page with text
        is the costly part, at the first query after each job."""
        from mmrag.index.lexical import Bm25Index

        directory = self.lexical_dir(collection_id)
        # By key, not fingerprint alone: a writer that replaced pages' text in place (rewrite_lexical) saved an index
        # of the same pages that a reader's copy must not stand for.
        saved = Bm25Index.saved_key(directory)
        index = cached.index if cached is not None and isinstance(cached.index, Bm25Index) else None
        base = cached.base if cached is not None else None
        # A writer saving must start from the saved index itself; a reader keeps its copy of the one it loaded.
        stale_base = writer or saved != base
        if saved is not None and (index is None or (index.key != saved and stale_base)):
            try:
                index = Bm25Index.load(directory, reuse=index)  # reads only the segments it does not hold
            except IndexError_ as exc:  # damaged or from another tokenizer version: it is derived, rebuild it
                log.warning("BM25 index of collection %s unreadable: %s", collection_id, exc)
                index = None if writer else index
            base = saved  # a damaged one is not read again until a writer saves another
        if index is not None and index.key == saved and Bm25Index.saved_generation(directory) == generation:
            return _Lexical(generation, index, base)  # marked current with this very generation: no page id read
        index = self._lexical_following_sql(collection_id, index)
        if writer:
            if index.key == saved:
                Bm25Index.mark_current(directory, generation)
            else:
                index.save(directory, generation=generation)
            base = index.key
        return _Lexical(generation, index, base)

    def _qdrant_lexical(self, collection_id: int, *, writer: bool) -> LexicalIndex:
        """The qdrant backend's BM25 (mmrag.index.qdrant_lexical): a reader searches the collection as it is (the
        object is kept, nothing is loaded); a writer first brings it up to date with SQL. An index of another
        analyzer is derived data: the writer drops it and indexes every page again, a reader finds nothing in it
        meanwhile."""
        from mmrag.errors import ManifestMismatchError
        from mmrag.index.qdrant_lexical import QdrantLexicalIndex

        settings = self.collections.settings.index
        directory = self.collections.directory(collection_id) / "vectors"
        with self._lexical_lock:
            cached = self._lexical.get(collection_id)
            index = cached.index if cached is not None and isinstance(cached.index, QdrantLexicalIndex) else None
            if index is None:
                try:
                    index = QdrantLexicalIndex.open(settings, directory, read_only=not writer)
                except ManifestMismatchError as exc:
                    if not writer:
                        log.warning("BM25 of collection %s is being indexed again: %s", collection_id, exc)
                        return _empty_lexical()
                    from mmrag.index.qdrant_index import drop_collection

                    log.warning("BM25 of collection %s indexed again: %s", collection_id, exc)
                    drop_collection(settings.qdrant, directory, "lexical")
                    index = QdrantLexicalIndex.open(settings, directory)
                self._lexical[collection_id] = _Lexical(0, index, None)
            if writer:
                self._lexical_following_sql(collection_id, index)
            return index

    def _lexical_following_sql(self, collection_id: int, index: Bm25Index | None) -> Bm25Index:
        """`index` (an empty one if None) holding exactly SQL's indexed pages with text: only the pages it lacks
        are read and tokenized, and deleted ones are flagged in it. In memory: saving is the caller's."""
        from mmrag.index.lexical import Bm25Index, id_changes
        from mmrag.store import repository

        with self.collections.sessions() as session:
            page_ids = repository.text_page_ids(session, collection_id)
        if index is None:
            index = Bm25Index()
        if index.is_current(page_ids):
            return index
        added, removed = id_changes(index.ids(), page_ids)
        with self.collections.sessions() as session:
            pages = repository.page_texts(session, collection_id, page_ids=added)
        index.remove(removed)
        index.add(pages)
        return index

    def refresh_lexical(self, collection_id: int) -> None:
        """Bring the BM25 index up to date and save it unless the saved one already covers SQL's indexed pages
        with text, decided from page ids and the saved commit alone (no index and no page text are loaded when it
        does), and mark it current with the collection's generation, so that the first query after the job reads
        no page id. For the collection's writer, which holds its lock: a job calls it as it ends."""
        from mmrag.index.lexical import Bm25Index
        from mmrag.store import repository

        if (stores := self.collections.cached_stores(collection_id)) is not None:
            stores.pages_removed = False  # the pages removed so far are covered by what follows
        if self.lexical_in_backend:
            self.lexical(collection_id, writer=True)  # compares the collection's ids with SQL's, adds what it lacks
            return
        generation = self.collections.generation(collection_id)  # before the ids: see _current_lexical
        with self.collections.sessions() as session:
            page_ids = repository.text_page_ids(session, collection_id)
        if not self.lexical_covers(collection_id, page_ids):
            self.lexical(collection_id, generation=generation, writer=True)
        elif Bm25Index.saved_in(self.lexical_dir(collection_id)):
            Bm25Index.mark_current(self.lexical_dir(collection_id), generation)

    def rewrite_lexical(self, collection_id: int, page_ids: list[int]) -> None:
        """For the collection's writer (it holds the lock): these pages' searchable text changed in place (a caption
        written for them, mmrag.captions), after the transaction that changed it moved the generation. BM25 indexes
        them again (pages it held are replaced: its rewrites grow, so readers holding a copy of the same pages load
        the saved one) and is saved; then the generation moves again and the index is marked current with it, so a
        reader that followed SQL between the change and the save does not keep its copy under the new generation."""
        from mmrag.index.lexical import Bm25Index
        from mmrag.store import repository
        from mmrag.store.db import transaction

        if not page_ids:
            return
        index = self.lexical(collection_id, writer=True)  # up to date with SQL's page ids (new captioned photos)
        with self.collections.sessions() as session:
            pages = repository.page_texts(session, collection_id, page_ids=page_ids)
        index.add(pages)  # the qdrant backend replaces them where it is, readers search it there
        if self.lexical_in_backend or not isinstance(index, Bm25Index):
            return
        directory = self.lexical_dir(collection_id)
        with self._lexical_lock:
            index.save(directory)
            with transaction(self.collections.sessions) as session:
                repository.bump_generation(session, collection_id)
            generation = self.collections.generation(collection_id)
            Bm25Index.mark_current(directory, generation)
            self._lexical[collection_id] = _Lexical(generation, index, index.key)

    def lexical_covers(self, collection_id: int, page_ids: list[int]) -> bool:
        """Whether the collection's saved BM25 index covers exactly these pages with text (SQL's), from its commit
        alone. No index saved and no page with text (a photo collection) needs none either: a search finds an
        empty one."""
        from mmrag.index.lexical import Bm25Index, fingerprint_of

        saved = Bm25Index.saved_fingerprint(self.lexical_dir(collection_id))
        return not page_ids if saved is None else saved == fingerprint_of(page_ids)

    # ----------------------------------------------------------------------------------------------- candidates

    def candidate_index(self, collection_id: int, retriever: str) -> PooledCandidateIndex | None:
        """The scalable multi-vector path's centroid index over a retriever's multi-vector store, current with the
        store: loaded from what a writer saved, or built, and brought up to date in memory. Never saved here: a
        search calls it."""
        from mmrag.index.multivector import ShardedMultiVectorStore

        store = self.collections.stores(collection_id).get(retriever)
        if not isinstance(store, ShardedMultiVectorStore):
            return None  # none yet, or a store that picks its own candidates (Qdrant's prefetch)
        with self._candidates_lock:
            return self._current_candidates(collection_id, retriever, store).index

    def _current_candidates(self, collection_id: int, retriever: str, store: MultiVectorStore) -> _Candidates:
        from mmrag.index.candidates import PooledCandidateIndex

        key = (collection_id, retriever)
        cached = self._candidates.get(key)
        # By the store's version, not by comparing its page ids, which costs more than the search. Read before the
        # update: a page added meanwhile means one more update, never a stale index.
        version = store.version
        if cached is None or cached.store() is not store:
            # Saved by a writer: then only the pages changed since are read.
            index = PooledCandidateIndex.load(self._saved_candidates(collection_id, retriever), store)
            if index is None:
                log.info("building the candidate index of collection %s (%d pages)", collection_id, len(store))
                index = PooledCandidateIndex.build(store)
                unsaved = len(index)
            else:
                unsaved = sum(index.update(store))
            cached = _Candidates(weakref.ref(store), version, index, unsaved)
        elif cached.version != version:
            # Brought up to date, reading only the pages added since: building it again reads every stored token.
            added, removed = cached.index.update(store)
            log.info("candidate index of collection %s: %d pages added, %d removed", collection_id, added, removed)
            cached.version, cached.unsaved = version, cached.unsaved + added + removed
        self._candidates[key] = cached
        return cached

    def save_candidates(self, collection_id: int) -> bool:
        """For the collection's writer: bring the candidate index of each multi-vector store up to date and save it
        once enough of it changed since it was saved (CANDIDATES_SAVE_*), when one is in use: searches use
        candidates, this process holds one, or one is saved. Returns whether it saved any."""
        from mmrag.index.multivector import ShardedMultiVectorStore

        stores = self.collections.cached_stores(collection_id)  # none open: this process changed nothing
        saved = False
        for retriever, store in (stores.by_retriever() if stores is not None else {}).items():
            if isinstance(store, ShardedMultiVectorStore) and self._save_candidates(collection_id, retriever, store):
                saved = True
        return saved

    def _save_candidates(self, collection_id: int, retriever: str, store: MultiVectorStore) -> bool:
        path = self.candidates_path(collection_id, retriever)
        in_use = (
            self.collections.settings.index.multivector_search == "candidates"
            or (collection_id, retriever) in self._candidates
            or self._saved_candidates(collection_id, retriever).is_file()
        )
        if not in_use:
            return False
        with self._candidates_lock:
            cached = self._current_candidates(collection_id, retriever, store)
            if cached.unsaved <= max(CANDIDATES_SAVE_MIN_PAGES, CANDIDATES_SAVE_SHARE * len(cached.index)):
                return False
            try:
                cached.index.save(path, source=store.uid)
                (self.collections.directory(collection_id) / "candidates.npz").unlink(missing_ok=True)
            except OSError as exc:  # derived data: readers build it in memory, the next writer saves it
                log.warning("could not save the candidate index of collection %s: %s", collection_id, exc)
                return False
            cached.unsaved = 0
            return True

    # ----------------------------------------------------------------------------------------------- the writer

    def after_writing(self, collection_id: int) -> None:
        """The collection's writer, done with its work and still holding the lock: the BM25 index follows pages
        removed through the stores (a delete) that no refresh_lexical covered, and the candidate index is saved
        when enough of it changed. A failure leaves them as they were: readers still answer correctly (they bring
        their copies up to date in memory) and the next writer saves them."""
        stores = self.collections.cached_stores(collection_id)
        try:
            if stores is not None and stores.pages_removed:
                self.refresh_lexical(collection_id)
            self.save_candidates(collection_id)
        except (OSError, IndexError_) as exc:
            log.warning("derived indexes of collection %s not saved: %s", collection_id, exc)
