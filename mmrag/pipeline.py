"""The bulk indexing job: discover → decode/render/OCR in worker processes → embed → write vectors and SQL.

It lives in the library, not in indexer/, because the API's background jobs run the same code and api/ must
not depend on indexer/; the CLI there adds only the progress display.

Crash consistency (kill -9 at any moment, then re-run) rests on one ordering:
  1. a document and its pages are committed to SQL with status `pending`;
  2. their vectors are added to every store and the stores are flushed (each flush is atomic);
  3. one SQL transaction records the embeddings, marks the documents `indexed` and the job items done.
On start, `recover` deletes `pending` documents with their pages and removes from each store every id SQL does
not vouch for (orphans of a crash between 2 and 3), and forgets SQL records whose vectors a store lacks so they
are re-embedded from the stored page image. Vector ids are SQL page ids, never reused (AUTOINCREMENT), so a
stale vector can never be mistaken for a new page.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image
from sqlalchemy import bindparam, func, insert, literal_column, select, update
from sqlalchemy.orm import Session

from mmrag.config import IngestSettings, Settings
from mmrag.device import is_cuda_device, resolve_device
from mmrag.errors import CollectionBusyError, NotFoundError
from mmrag.index.manifest import atomic_write_bytes, file_identity
from mmrag.ingest import check_ocr, discover, shared
from mmrag.inputs import InputSpec, prepare_from_file
from mmrag.ingest.results import FileFailure, LoadedFile
from mmrag.ingest.worker import (
    FileTask,
    init_worker,
    load_file,
    load_files,
    load_files_shared,
    warm_up,
)
from mmrag.services import CollectionStores, Embedders, Services
from mmrag.store import repository
from mmrag.store.db import refresh_statistics, transaction
from mmrag.store.models import Document, DocumentPath, Job, JobItem, Page, PageEmbedding, utcnow
from mmrag.types import DocumentStatus, ItemState, JobState

log = logging.getLogger(__name__)

T = TypeVar("T")


class Progress(Protocol):
    """What the job reports as it goes; the CLI draws it, the API stores it, tests ignore it."""

    def start(self, total_files: int) -> None: ...

    def advance(self, files: int = 1, pages: int = 0) -> None: ...


class _NoProgress:
    def start(self, total_files: int) -> None:
        pass

    def advance(self, files: int = 1, pages: int = 0) -> None:
        pass


@dataclass(frozen=True)
class JobReport:
    job_id: int
    collection: str
    resumed: bool
    counts: dict[str, int]
    failures: list[tuple[str, str]]
    retrievers_on: list[str]
    retrievers_off: dict[str, str]
    meaningless: bool
    seconds: float
    pages_indexed: int
    recovered: dict[str, int] = field(default_factory=dict)
    # Where the job's time went, in seconds (see _process_items): which stage bounds a bulk job's speed.
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def pages_per_second(self) -> float:
        return self.pages_indexed / self.seconds if self.seconds > 0 else 0.0


def sha256_of(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# --- recovery ------------------------------------------------------------------------------------------------


AGREED_FILE = "agreed.json"  # in a collection's vectors directory: see record_agreement


def recover(
    services: Services, collection_id: int, stores: CollectionStores, *, compare: bool = True
) -> dict[str, int]:
    """Bring SQL and every store back into agreement after a crash; returns what it had to fix. Without `compare`
    (the stores are as the last finished write left them: stores_agree) only pending documents are dropped."""
    fixed = {"incomplete_documents": 0, "orphan_vectors": 0, "lost_vectors": 0}
    with transaction(services.sessions) as session:
        for document in repository.incomplete_documents(session, collection_id):
            repository.drop_pages(session, [document.id])
            session.delete(document)
            fixed["incomplete_documents"] += 1
    if not compare:
        return fixed
    with transaction(services.sessions) as session:
        for name, store in stores.by_retriever().items():
            vouched = repository.embedded_page_ids(session, collection_id, name)
            stored = set(int(i) for i in store.ids())
            orphans = stored - vouched
            lost = vouched - stored
            if orphans:
                store.remove(sorted(orphans))
                fixed["orphan_vectors"] += len(orphans)
            if lost:
                # The next step (repair) re-embeds these pages from their stored images.
                repository.forget_embeddings(session, lost, name)
                fixed["lost_vectors"] += len(lost)
        stores.flush()
    if any(fixed.values()):
        log.warning("recovered collection %s: %s", collection_id, fixed)
    return fixed


def _agreement(services: Services, collection_id: int, stores: CollectionStores) -> dict[str, Any] | None:
    """What record_agreement writes: the collection's generation, the retrievers whose stores are loaded, and the
    identity (inode, size, mtime) of every file that holds them. None for a backend whose files it cannot name."""
    files: dict[str, list[list[int] | None]] = {}
    for name, store in stores.by_retriever().items():
        paths = getattr(store, "files", None)
        if paths is None:
            return None
        # lists, as the JSON it is compared with reads back
        files[name] = [list(identity) if (identity := file_identity(path)) else None for path in paths()]
    return {"generation": services.generation(collection_id), "retrievers": sorted(files), "files": files}


def record_agreement(services: Services, collection_id: int, stores: CollectionStores) -> None:
    """Note, once a job or delete has finished with every store flushed, that SQL and the stores agree as they are
    now. The next job skips comparing them (stores_agree) while nothing has changed since: comparing reads every
    page id SQL vouches for and every id each store holds, and finding pages without vectors scans every page, about
    15 s a job at a million pages with three retrievers."""
    agreement = _agreement(services, collection_id, stores)
    path = stores.directory / AGREED_FILE
    if agreement is None:
        path.unlink(missing_ok=True)
        return
    atomic_write_bytes(path, json.dumps(agreement).encode())


def stores_agree(services: Services, collection_id: int, stores: CollectionStores) -> bool:
    """Whether SQL and the stores are as record_agreement last found them agreeing. Any write since changes the
    generation (SQL vouched for vectors or deleted a document) or a store's files (vectors flushed that SQL never
    vouched for: a crash in between), and a store restored from a copy has other files; then they are compared."""
    try:
        recorded = json.loads((stores.directory / AGREED_FILE).read_bytes())
    except (OSError, ValueError):
        return False
    return recorded == _agreement(services, collection_id, stores)


# --- embedding and writing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PendingPage:
    page_id: int
    image_path: str | None  # relative to the data dir
    text: str
    # retriever → the input its embedder asked the workers for (InputSpecs); absent: made from the stored image
    inputs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class _Batch:
    pages: list[_PendingPage] = field(default_factory=list)
    document_ids: list[int] = field(default_factory=list)
    item_pages: dict[int, tuple[int, int]] = field(default_factory=dict)  # job item id → (document id, pages)
    duplicate_item_ids: list[int] = field(default_factory=list)
    loaded: list[tuple[int, LoadedFile]] = field(default_factory=list)  # (document id, file) whose pages await SQL


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


@dataclass
class _Embedded:
    """A batch's vectors, computed and not yet in any store: retriever → (page ids, vectors)."""

    vectors: dict[str, tuple[np.ndarray, Any]] = field(default_factory=dict)


def embed_pages(
    embedders: Embedders,
    stores: CollectionStores,
    pages: Sequence[_PendingPage],
    data_dir: Path,
    *,
    pool_factor: int = 1,
    specs: dict[str, InputSpec] | None = None,
) -> _Embedded:
    """Embed pages with every loaded retriever that has a store; nothing is written anywhere.

    A retriever whose embedder takes prepared inputs (`specs`) gets them from the workers, or, for pages that came
    without (repair, long PDFs), makes them from the stored page image the same way; others get PIL images.
    """
    embedded = _Embedded()
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


def store_vectors(embedders: Embedders, stores: CollectionStores, embedded: _Embedded) -> list[dict[str, Any]]:
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


def _write_batch(
    services: Services,
    collection_id: int,
    stores: CollectionStores,
    embedders: Embedders,
    batch: _Batch,
    embedded: _Embedded,
) -> None:
    """Vectors into the stores, the stores flushed, then one SQL transaction vouches for them."""
    records = store_vectors(embedders, stores, embedded)
    stores.flush()  # vectors durable before SQL vouches for them
    with transaction(services.sessions) as session:
        # Bulk statements: one per table for the whole batch, not one per page or document.
        if records:
            session.connection().execute(insert(PageEmbedding.__table__), records)
        now = utcnow()
        if batch.document_ids:
            session.execute(
                update(Document)
                .where(Document.id.in_(batch.document_ids))
                .values(status=DocumentStatus.INDEXED, indexed_at=now, updated_at=now)
            )
            repository.bump_generation(session, collection_id)
        if batch.item_pages:
            items = JobItem.__table__
            session.connection().execute(
                update(items).where(items.c.id == bindparam("item_id")),
                [
                    {"item_id": item_id, "state": ItemState.INDEXED, "document_id": document_id, "pages": pages,
                     "updated_at": now}
                    for item_id, (document_id, pages) in batch.item_pages.items()
                ],
            )
        repository.set_items(session, batch.duplicate_item_ids, state=ItemState.DUPLICATE)


def repair(services: Services, collection_id: int, stores: CollectionStores, embedders: Embedders) -> int:
    """Embed indexed pages that lack vectors for a loaded retriever, from their stored page images."""
    repaired = 0
    specs = input_specs(embedders, services.data_dir, colpali=colpali_inputs_in_workers(services.settings))
    for name in embedders.on():
        with services.sessions() as session:
            missing = repository.pages_missing_embedding(session, collection_id, name)
            work = [(p.id, p.image_path, p.text) for p in missing]
        if name == "text":
            work = [w for w in work if w[2].strip()]
        if not work:
            continue
        log.info("re-embedding %d pages for retriever %s", len(work), name)
        only = Embedders(off=embedders.off, meaningless=embedders.meaningless, **{name: getattr(embedders, name)})
        size = services.settings.batch_pages
        for start in range(0, len(work), size):
            chunk = work[start : start + size]
            pages = [_PendingPage(pid, path, text) for pid, path, text in chunk]
            embedded = embed_pages(
                only, stores, pages, services.data_dir,
                pool_factor=services.settings.index.multivector_pool_factor, specs=specs,
            )
            records = store_vectors(only, stores, embedded)
            stores.flush()
            with transaction(services.sessions) as session:
                if records:
                    session.connection().execute(insert(PageEmbedding.__table__), records)
            repaired += len(chunk)
    return repaired


def _open_page_image(data_dir: Path, relative: str | None) -> Image.Image:
    if relative is None:
        raise NotFoundError("page has no stored image to re-embed from")
    with Image.open(data_dir / relative) as image:
        return image.convert("RGB")


class _Committer:
    """Embeds and commits batches behind the job's thread, in two stages with a thread each, in submission order:

        job thread ──batch──▶ embed thread (collate, copy to the device, forward) ──vectors──▶ write thread
                                                               (store adds, flush, one SQL transaction)

    so that while batch N runs on the device, batch N+1 is decoded and written to SQL by the job thread and
    batch N-1's vectors are flushed and vouched for (torch, FAISS I/O and the database driver release the GIL).
    Every change to the stores happens on the write thread, in order: the stores are not thread-safe, and the
    crash ordering (vectors flushed, then SQL vouches) holds per batch exactly as if it ran inline. At most
    `depth` batches wait at each stage, which bounds memory; an error stops the job at the next submit or at close.
    """

    def __init__(
        self,
        embed: Callable[[_Batch], _Embedded],
        write: Callable[[_Batch, _Embedded], None],
        stores: CollectionStores,
        *,
        depth: int = 2,
    ) -> None:
        self._embed = embed
        self._write = write
        self._stores = stores
        self._to_embed: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=depth)
        self._to_write: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        # Busy seconds of each stage, and how long submit() blocked on a full embed queue (the device is behind).
        self.seconds = {"embed": 0.0, "write": 0.0, "waiting_on_embed": 0.0}
        self._threads = [
            threading.Thread(target=self._run_embed, name="mmrag-embed", daemon=True),
            threading.Thread(target=self._run_write, name="mmrag-write", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _run_embed(self) -> None:
        while (task := self._to_embed.get()) is not None:
            kind, payload = task
            if self._error is None and kind == "batch":
                began = time.perf_counter()
                try:
                    task = ("batch", (payload, self._embed(payload)))
                except BaseException as exc:  # noqa: BLE001 - re-raised in the job's thread
                    self._error = exc
                self.seconds["embed"] += time.perf_counter() - began
            self._to_write.put(task)  # removals pass through, keeping their order among the batches
        self._to_write.put(None)

    def _run_write(self) -> None:
        while (task := self._to_write.get()) is not None:
            if self._error is not None:
                continue  # drain without working, so no stage blocks on a dead consumer
            kind, payload = task
            began = time.perf_counter()
            try:
                if kind == "batch":
                    self._write(*payload)
                else:
                    self._stores.remove(payload)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the job's thread
                self._error = exc
            self.seconds["write"] += time.perf_counter() - began

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, batch: _Batch) -> None:
        self._raise_if_failed()
        began = time.perf_counter()
        self._to_embed.put(("batch", batch))
        self.seconds["waiting_on_embed"] += time.perf_counter() - began

    def remove(self, page_ids: list[int]) -> None:
        """Drop vectors of pages SQL already forgot (durable at the next flush)."""
        self._raise_if_failed()
        self._to_embed.put(("remove", page_ids))

    def close(self) -> None:
        """Wait for every submitted batch; raises the first error any of them met."""
        self._to_embed.put(None)
        for thread in self._threads:
            thread.join()
        self._raise_if_failed()


# --- the job -------------------------------------------------------------------------------------------------


def _file_state(path: str) -> tuple[int, float] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime


def _attach_path(
    session: Session, collection_id: int, document: Document, path: str, size: int, mtime: float
) -> list[int]:
    """Record that `path` holds `document`'s bytes. A path that held other bytes (a changed file) moves, and the
    old document, if no other path holds it, is deleted; returns the page ids whose vectors must go."""
    existing = repository.find_path(session, collection_id, path)
    if existing is not None and existing.document_id == document.id:
        existing.size_bytes, existing.mtime, existing.last_seen = size, mtime, utcnow()
        return []
    removed: list[int] = []
    if existing is not None:
        old_document_id = existing.document_id
        session.delete(existing)
        session.flush()
        removed = _delete_if_orphaned(session, old_document_id)
    session.add(
        DocumentPath(collection_id=collection_id, document_id=document.id, path=path, size_bytes=size, mtime=mtime)
    )
    return removed


def _delete_if_orphaned(session: Session, document_id: int) -> list[int]:
    remaining = session.scalar(select(func.count()).where(DocumentPath.document_id == document_id))
    document = session.get(Document, document_id)
    if remaining or document is None or document.status == DocumentStatus.DELETED:
        return []
    return repository.mark_deleted(session, document)


def _worker_context(warm_modules: Sequence[str]) -> multiprocessing.context.BaseContext:
    """Workers come from a fork server: a clean process (never this one, whose CUDA context and torch thread pools
    a fork would copy in a broken state) that imports the worker module and `warm_modules` once, then forks every
    worker. Measured on the H200 machine: 14 spawned workers each importing colpali-engine took 34 s to deliver
    the first page. The server starts with the first pool of this process and keeps its preload list after."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mmrag.ingest.worker", *warm_modules])
    return context


def _warm_modules(settings: Settings) -> list[str]:
    """What the workers import before their first file: CLIP's inputs (ClipPixels) and Qwen2-VL-based models'
    (QwenPixels) are resized with torch there; other ColPali families import colpali-engine in each worker at its
    first page (their processor runs there)."""
    colpali_prep = settings.embedders.colpali.enabled and colpali_inputs_in_workers(settings)
    return ["torch"] if colpali_prep or settings.embedders.clip.enabled else []


def start_worker_server(settings: Settings) -> None:
    """Start the fork server that bulk jobs' workers come from, now, in the background (it returns in
    milliseconds): its imports (torch: 2-3 s) then happen beside whatever the caller does next, typically loading
    the models, instead of before a job's first page. A job started later finds it running; calling this is only
    ever an optimisation."""
    if settings.ingest.workers > 0:
        context = _worker_context(_warm_modules(settings))
        if context.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()


def _start_workers(pool: ProcessPoolExecutor, workers: int, modules: tuple[str, ...]) -> None:
    try:
        for _ in range(workers):
            pool.submit(warm_up, modules)
    except RuntimeError:  # the job ended (and shut the pool down) before its workers had started
        pass


class _Loader:
    """Runs `load_file` in worker processes with a bounded number in flight, so memory stays bounded."""

    def __init__(self, workers: int, *, warm_modules: Sequence[str] = (), shared_memory: bool = True) -> None:
        self.workers = workers
        self.limit = max(2, 2 * workers)
        self.generation = 0  # which pool a future came from: a broken pool is replaced once, not per future
        self._context = _worker_context(warm_modules)
        self._pool: ProcessPoolExecutor | None = self._new_pool(workers) if workers > 0 else None
        # Workers hand page inputs back through shared memory where the system has it (see mmrag.ingest.shared).
        self.shared_prefix: str | None = None
        self._warned_unshared = False
        if self._pool is not None and shared_memory and shared.available():
            shared.remove_orphans()  # left by a job killed mid-way
            self.shared_prefix = shared.new_prefix()
        if self._pool is not None and warm_modules:
            # Start every worker now, from a thread of its own: the first fork waits for the fork server to import
            # `warm_modules` (seconds for torch), which would otherwise hold up this thread's model loading and
            # recovery. The server imported them once, unless it was started earlier in this process with another
            # list (or spawn is used): then each worker imports them here. A warm-up that fails only means the
            # first file pays for the import.
            threading.Thread(
                target=_start_workers, args=(self._pool, workers, tuple(warm_modules)), name="mmrag-warm", daemon=True
            ).start()

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=self._context, initializer=init_worker)

    def replace_broken_pool(self, generation: int) -> None:
        """A worker died (a crash inside a native decoder, the OOM killer) and broke its pool: start another."""
        if self._pool is not None and generation == self.generation:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool(self.workers)
            self.generation += 1

    def run_alone(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` in a process of its own, so that if it kills its worker again, nothing else is lost."""
        with self._new_pool(1) as pool:
            return pool.submit(fn, *args).result()

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        if self._pool is None:
            future: Future[T] = Future()
            try:
                future.set_result(fn(*args))
            except Exception as exc:  # noqa: BLE001 - handed to the caller through the future, like a pool would
                future.set_exception(exc)
            return future
        return self._pool.submit(fn, *args)

    def load(
        self, files: list[FileTask], settings: IngestSettings, data_dir: str, specs: tuple[InputSpec, ...]
    ) -> Future[list[LoadedFile | FileFailure] | shared.SharedResults]:
        """Load `files` in a worker; the future's value goes through `received`."""
        # load_file is looked up here, not bound at import: tests swap in one that crashes its worker
        if self.shared_prefix is None:
            return self.submit(load_files, files, settings, data_dir, specs, load_file)
        return self.submit(
            load_files_shared, files, settings, data_dir, specs, load_file, self.shared_prefix, shared.MIN_SHARED_BYTES
        )

    def received(self, value: list[LoadedFile | FileFailure] | shared.SharedResults) -> list[LoadedFile | FileFailure]:
        if not isinstance(value, shared.SharedResults):
            return value
        if value.unshared is not None and not self._warned_unshared:
            self._warned_unshared = True  # once per job: every task after it would say the same
            log.warning("worker inputs go through the pipe, which is slower: %s (see MMRAG_INGEST__SHARED_MEMORY; "
                        "a container needs a larger shm_size)", value.unshared)
        return shared.receive(value)

    def close(self) -> None:
        """Stop the workers and wait for them to exit; closing twice is harmless."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self.shared_prefix is not None:
            shared.remove_segments(self.shared_prefix)  # tasks cancelled, or whose worker died, left their files


def run_index(
    services: Services,
    paths: Iterable[Path],
    *,
    collection: str = "default",
    progress: Progress | None = None,
) -> JobReport:
    """Index files and folders into a collection; re-running the same command resumes an unfinished job."""
    progress = progress or _NoProgress()
    began = time.perf_counter()
    roots = [str(Path(p).resolve()) for p in paths]
    for root in roots:
        if not Path(root).exists():
            raise NotFoundError(f"path {root!r} does not exist")
    if services.settings.ingest.ocr != "never":
        # A missing Tesseract is a setup problem, not a bad file: say so once instead of failing every file.
        check_ocr(services.settings.ingest.ocr_lang)

    with transaction(services.sessions) as session:
        collection_id = repository.get_or_create_collection(session, collection).id
    with collection_writer(services, collection_id, collection):
        return _run_locked(services, roots, collection, collection_id, progress, began)


@contextmanager
def collection_writer(services: Services, collection_id: int, name: str) -> Iterator[None]:
    """One writer per collection at a time, across processes on this host.

    A job's first step (recover) drops every pending document of its collection, and each process holds the
    collection's vector stores in memory: two writers at once would destroy each other's work. The lock:
    Services.writer_lock.
    """
    with services.writer_lock(collection_id) as acquired:
        if not acquired:
            raise CollectionBusyError(
                f"collection {name!r} is being written by another process (indexing or deleting); "
                "wait for it to finish, or index into another collection"
            )
        with services.writing(collection_id):
            yield


@contextmanager
def _objects_frozen() -> Iterator[None]:
    """Keep the objects alive now (models, modules, stores: millions) out of the garbage collector's full passes
    while files stream through: a bulk job allocates per page, and each full collection traversed them all."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run_locked(
    services: Services, roots: list[str], collection: str, collection_id: int, progress: Progress, began: float
) -> JobReport:
    # The worker pool starts first, so its processes start (and import) while this one walks the folders, loads
    # the models and recovers the stores.
    ingest = services.settings.ingest
    loader = _Loader(ingest.workers, warm_modules=_warm_modules(services.settings), shared_memory=ingest.shared_memory)
    try:
        # Frozen from the job's start, not only while files stream: listing 8,000 new job items spent 0.2 s in
        # one full collection over the models' objects.
        with _objects_frozen():
            with transaction(services.sessions) as session:
                job = repository.find_unfinished_job(session, collection_id, roots)
                resumed = job is not None
                if job is None:
                    job = repository.create_job(session, collection_id, roots)
                repository.started(job)
                job_id = job.id
            if not resumed:
                with transaction(services.sessions) as session:
                    repository.add_job_items(session, job_id, (str(p) for p in discover(Path(r) for r in roots)))
            return _index_with(services, roots, collection, collection_id, progress, began, job_id, resumed, loader)
    finally:
        loader.close()


def _index_with(
    services: Services,
    roots: list[str],
    collection: str,
    collection_id: int,
    progress: Progress,
    began: float,
    job_id: int,
    resumed: bool,
    loader: _Loader,
) -> JobReport:
    embedders = services.embedders()
    stores = services.stores(collection_id)
    with transaction(services.sessions) as session:
        job = session.get(Job, job_id)
        job.retrievers = {"on": embedders.on(), "off": embedders.off}

    agree = stores_agree(services, collection_id, stores)
    recovered = recover(services, collection_id, stores, compare=not agree)
    recovered["repaired_pages"] = 0 if agree else repair(services, collection_id, stores, embedders)

    with services.sessions() as session:
        items = repository.pending_items(session, job_id)
    progress.start(len(items))

    gc.freeze()  # the models and stores loaded just now join the frozen objects (_run_locked thaws them all)
    stages = {"start": time.perf_counter() - began}  # walking the folders, models, recovery: before any file
    cpu_began = time.process_time()
    pages_indexed, texts_changed = _process_items(
        services, collection_id, items, stores, embedders, progress, loader, stages
    )
    finishing = time.perf_counter()
    stores.compact_if_worthwhile(services.settings.index.compact_tombstone_ratio)
    if texts_changed or recovered["incomplete_documents"]:
        # BM25 current now (a worker built it ahead), not at the first query. A job of photos alone leaves it as it
        # was, and skips reading the ids of every page with text (about 3 s at a million pages).
        services.refresh_lexical(collection_id)
    refresh_statistics(services.engine)  # query plans for the collection as it is now
    stages["finish"] = time.perf_counter() - finishing
    # CPU seconds of this process (all its threads, not the workers) from the first file to the end: at GPU speed
    # a bulk job is bound by this process's share of each page as soon as it nears one core.
    stages["process_cpu"] = time.process_time() - cpu_began

    with transaction(services.sessions) as session:
        job = session.get(Job, job_id)
        repository.finish_job(session, job, JobState.DONE)
    stores.flush()
    record_agreement(services, collection_id, stores)
    with services.sessions() as session:
        counts = repository.job_counts(session, job_id)
        failures = repository.job_failures(session, job_id)
    return JobReport(
        job_id=job_id,
        collection=collection,
        resumed=resumed,
        counts=counts,
        failures=failures,
        retrievers_on=embedders.on(),
        retrievers_off=embedders.off,
        meaningless=embedders.meaningless,
        seconds=time.perf_counter() - began,
        pages_indexed=pages_indexed,
        recovered=recovered,
        stages=stages,
    )


def _process_items(
    services: Services,
    collection_id: int,
    items: list[tuple[int, str]],
    stores: CollectionStores,
    embedders: Embedders,
    progress: Progress,
    loader: _Loader,
    stages: dict[str, float],
) -> tuple[int, bool]:
    """Index `items`; returns the pages indexed, and whether the collection's text changed (a page with text
    indexed, or pages removed). Fills `stages` with seconds: `files` (the whole loop), `waiting_on_workers` (this
    thread idle until a worker task finished), `waiting_on_embed` (blocked on a full embed queue), and the `embed`
    and `write` threads' busy time. Whichever wait dominates names the bottleneck."""
    settings = services.settings
    specs = input_specs(embedders, services.data_dir, colpali=colpali_inputs_in_workers(settings))
    spec_names = list(specs)
    spec_values = tuple(specs.values())
    pool_factor = settings.index.multivector_pool_factor
    committer = _Committer(
        lambda batch: embed_pages(embedders, stores, batch.pages, services.data_dir, pool_factor=pool_factor,
                                  specs=specs),
        lambda batch, embedded: _write_batch(services, collection_id, stores, embedders, batch, embedded),
        stores,
        depth=settings.ingest.batches_ahead,
    )
    data_dir = str(services.data_dir.resolve())
    # One worker task carries several small files: the pool costs the main process ~0.1 ms of GIL per task
    # (queueing, pickling, waking threads), as much as everything else it does for a photo.
    in_flight: deque[tuple[list[_File], Future[list[LoadedFile | FileFailure] | shared.SharedResults], int]]
    in_flight = deque()
    task: list[_File] = []
    ranges: dict[int, _Ranges] = {}  # PDFs whose pages several workers are rendering, by document id
    ranges_to_send: deque[list[_File]] = deque()
    loading: set[int] = set()  # documents whose file a worker holds
    waiting_on: dict[int, list[int]] = {}  # document id → items that are its duplicates in this job
    batch = _Batch()
    batch_pages = 0
    pages_indexed = 0
    texts_changed = False  # pages with text indexed, or pages removed: BM25 has something to follow

    def finish(item_id: int, state: ItemState, *, document_id: int | None, error: str | None = None,
               pages: int = 0) -> None:
        with transaction(services.sessions) as session:
            repository.set_items(session, [item_id], state=state, document_id=document_id, error=error, pages=pages)
        progress.advance(1, pages)

    def send_task() -> None:
        nonlocal task
        if task:
            submit(task)
            task = []
        while ranges_to_send:  # a long PDF's other pages, found by a drain (which may find more)
            submit(ranges_to_send.popleft())

    def submit(files: list[_File]) -> None:
        while len(in_flight) >= loader.limit:
            drain_one()
        future = loader.load([(f.path, f.sha256, f.pages) for f in files], settings.ingest, data_dir, spec_values)
        in_flight.append((files, future, loader.generation))

    def drain_one() -> None:
        files, future, generation = in_flight.popleft()
        try:
            began = time.perf_counter()
            value = future.result()
            stages["waiting_on_workers"] = stages.get("waiting_on_workers", 0.0) + time.perf_counter() - began
            results = loader.received(value)
        except BrokenProcessPool:
            # Every task the dead pool held lands here; each file is retried alone, so only the culprit fails.
            loader.replace_broken_pool(generation)
            results = [load_alone(file) for file in files]
        except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot cross the pipe; the job goes on
            log.exception("unexpected error in a worker task")
            results = [FileFailure(f"internal error: {type(exc).__name__}: {exc}") for _ in files]
        for file, result in zip(files, results, strict=True):
            if file.pages is not None:
                result = collect_range(file, result)
                if result is None:
                    continue  # more of this PDF's pages to come, or it has failed already
            loading.discard(file.document_id)
            if isinstance(result, LoadedFile):
                accept(file.item_id, file.document_id, result)
                continue
            _fail_document(services, file.document_id, result.reason)
            finish(file.item_id, ItemState.FAILED, document_id=file.document_id, error=result.reason)
            for dup in waiting_on.pop(file.document_id, []):
                finish(dup, ItemState.FAILED, document_id=file.document_id, error=result.reason)

    def collect_range(file: _File, result: LoadedFile | FileFailure) -> LoadedFile | FileFailure | None:
        """One range of a PDF's pages came back: the whole document once every range has (None until then), or
        its first failure. The first range tells the page count; the rest go to other workers at once."""
        assert file.pages is not None
        parts = ranges.get(file.document_id)
        if parts is None:  # the first range
            if isinstance(result, FileFailure) or result.page_total <= file.pages[1]:
                return result  # a failure, or the whole document already
            rest = [
                dataclasses.replace(file, pages=(first, min(first + PDF_PAGES_PER_TASK - 1, result.page_total)))
                for first in range(file.pages[1] + 1, result.page_total + 1, PDF_PAGES_PER_TASK)
            ]
            ranges_to_send.extend([part] for part in rest)
            parts = ranges[file.document_id] = _Ranges(pending=len(rest))
        else:
            parts.pending -= 1
        if parts.pending == 0:
            del ranges[file.document_id]  # every range is back
        if parts.failed:
            return None  # the document failed with an earlier range: the rest are dropped as they come back
        if isinstance(result, FileFailure):
            parts.failed = True
            return result
        parts.loaded.append(result)
        return _merged(parts.loaded) if parts.pending == 0 else None

    def load_alone(file: _File) -> LoadedFile | FileFailure:
        """Run one file in a process of its own, so that if it kills its worker again, nothing else is lost."""
        try:
            [result] = loader.run_alone(load_files, [(file.path, file.sha256, file.pages)], settings.ingest,
                                        data_dir, spec_values, load_file)
        except BrokenProcessPool:
            return FileFailure(
                f"{file.path}: the worker process died decoding this file (a crash in a decoder, or out of memory)"
            )
        return result

    def accept(item_id: int, document_id: int, loaded: LoadedFile) -> None:
        nonlocal batch_pages, pages_indexed
        batch.loaded.append((document_id, loaded))
        batch.document_ids.append(document_id)
        batch.item_pages[item_id] = (document_id, len(loaded.pages))
        duplicates = waiting_on.pop(document_id, [])
        batch.duplicate_item_ids += duplicates
        progress.advance(1 + len(duplicates), len(loaded.pages))
        pages_indexed += len(loaded.pages)
        batch_pages += len(loaded.pages)
        if batch_pages >= settings.batch_pages:
            hand_over()

    def hand_over() -> None:
        """Write the batch's pages to SQL (one transaction) and give it to the committer."""
        nonlocal batch, batch_pages, texts_changed
        page_ids = _write_pages(services, batch.loaded)
        for (_, loaded), ids in zip(batch.loaded, page_ids, strict=True):
            batch.pages += [
                _PendingPage(pid, page.image_path, page.text, _named_inputs(spec_names, page.inputs))
                for pid, page in zip(ids, loaded.pages, strict=True)
            ]
        batch.loaded = []
        texts_changed = texts_changed or any(page.text.strip() for page in batch.pages)
        committer.submit(batch)
        batch, batch_pages = _Batch(), 0

    chunk_size = max(DECIDE_CHUNK_FILES, 2 * loader.limit)
    began = time.perf_counter()
    try:
        with ThreadPoolExecutor(max(1, min(8, settings.ingest.workers)), thread_name_prefix="mmrag-hash") as hasher:
            chunks = [items[start : start + chunk_size] for start in range(0, len(items), chunk_size)]
            plans = deque([_plan_chunk(services, collection_id, chunks[0], hasher)] if chunks else [])
            for index, chunk in enumerate(chunks):
                if index + 1 < len(chunks):  # the next chunk hashes while this one's files go to the workers
                    plans.append(_plan_chunk(services, collection_id, chunks[index + 1], hasher))
                decisions = _decide_planned(services, collection_id, plans.popleft())
                per_task = _files_per_task(sum(d.state is None for d in decisions.values()), loader.workers)
                for item_id, path_str in chunk:
                    decision = decisions[item_id]
                    if decision.removed_pages:
                        # SQL already forgot these pages; the stores follow (durable at the next flush).
                        committer.remove(list(decision.removed_pages))
                        texts_changed = True
                    if decision.state is not None:
                        if decision.waits_for is not None and decision.waits_for in loading:
                            waiting_on.setdefault(decision.waits_for, []).append(item_id)
                        elif decision.waits_for is not None:
                            # Loaded already, its vectors in this batch or one ahead of it: batches commit in
                            # order, so marking the duplicate with this batch never runs ahead of its original.
                            batch.duplicate_item_ids.append(item_id)
                            progress.advance(1, 0)
                        else:  # a final state (FINAL_STATES), recorded with the decision (_record_final)
                            progress.advance(1, 0)
                        continue
                    loading.add(decision.document_id)
                    pdf = path_str.lower().endswith(".pdf")
                    # A PDF comes back in ranges of pages: the first tells how many it has, and other workers
                    # render the rest meanwhile (one 500-page PDF kept one worker busy for the whole job).
                    pages = (1, PDF_PAGES_PER_TASK) if pdf else None
                    task.append(_File(item_id, decision.document_id, path_str, decision.sha256, pages))
                    if decision.size > SMALL_FILE_BYTES or pdf or len(task) >= per_task:
                        # A large file, or a PDF (even a small one renders several pages), travels alone: sixteen
                        # 8-page PDFs in one task kept a worker busy for seconds before the first page came back.
                        send_task()
                send_task()
        while in_flight or ranges_to_send:
            send_task()
            if in_flight:
                drain_one()
        if batch.loaded or batch.duplicate_item_ids:
            hand_over()
        if texts_changed:
            _build_lexical_ahead(services, collection_id, loader)
    finally:
        try:
            # Workers gone before the job says it is done: a caller that sees "done" may take the collection's lock.
            loader.close()
        finally:
            committer.close()
            stages["files"] = time.perf_counter() - began
            stages.update(committer.seconds)
    return pages_indexed, texts_changed


def _build_lexical_ahead(services: Services, collection_id: int, loader: _Loader) -> None:
    """Every page of the job is in SQL now, some batches still on the device: an idle worker brings the collection's
    BM25 index up to date and saves it meanwhile (the end of the job used to spend seconds on it, the GPU idle). Only
    the pages it lacks are read and tokenized, added as a new segment. It covers the pending documents too, which the
    last batches mark indexed; services.refresh_lexical() at the end keeps it if its fingerprint matches SQL's
    indexed pages then, and updates it otherwise (a batch failed), so this only ever saves time."""
    from mmrag.index.lexical import Bm25Index, id_changes, update_saved

    directory = services.lexical_dir(collection_id)
    with services.sessions() as session:
        wanted = repository.text_page_ids(session, collection_id, with_pending=True)
        if services.lexical_covers(collection_id, wanted):
            return  # the job added no page with text (photos): nothing to build
        held = Bm25Index.saved_ids(directory)  # None where none can be read: update_saved starts an empty one
        added, removed = id_changes(held if held is not None else np.zeros(0, np.int64), wanted)
        pages = repository.page_texts(session, collection_id, with_pending=True, page_ids=added)
    try:
        loader.submit(update_saved, str(directory), pages, removed.tolist()).result()
    except Exception:  # noqa: BLE001 - the update at the end of the job covers it
        log.warning("updating the BM25 index ahead failed; it is updated at the end of the job", exc_info=True)


FILES_PER_TASK = 16
FINAL_STATES = (ItemState.UNCHANGED, ItemState.DUPLICATE, ItemState.FAILED)  # job item states decided before loading
SETTLED_STATUSES = (DocumentStatus.INDEXED, DocumentStatus.FAILED)  # documents a job is done with
DECIDE_CHUNK_FILES = 256  # job items decided (stat, SQL, hash) per transaction
HASH_FILES_PER_TASK = 32  # a chunk of 256 files is one task per hashing thread
SMALL_FILE_BYTES = 1024 * 1024  # files above this (PDFs, large scans) go to a worker one per task
PDF_PAGES_PER_TASK = 8


def _files_per_task(files: int, workers: int) -> int:
    """Small files per worker task: up to FILES_PER_TASK (fewer tasks cost the main process less), but never so
    many that a small job leaves workers idle: 20 receipts to OCR went 16 + 4 to two workers, and one of them
    did four fifths of the job."""
    return max(1, min(FILES_PER_TASK, -(-files // max(1, workers))))


@dataclass(frozen=True)
class _File:
    item_id: int
    document_id: int
    path: str
    sha256: str
    pages: tuple[int, int] | None = None  # a PDF's page range (first, last; 1-based, inclusive)


@dataclass
class _Ranges:
    """A PDF being rendered in ranges by several workers: the ranges back so far, how many are still out, and
    whether one failed (which fails the document; later ranges are dropped as they come back)."""

    pending: int
    loaded: list[LoadedFile] = field(default_factory=list)
    failed: bool = False


def _merged(parts: list[LoadedFile]) -> LoadedFile:
    """One document from its ranges, pages in order. Past MAX_INPUT_BYTES_PER_FILE of model inputs for the
    document, pages keep none (the memory bound a single worker keeps): the embedding thread makes those from the
    stored page images."""
    from mmrag.ingest.worker import MAX_INPUT_BYTES_PER_FILE, _nbytes

    pages = sorted((page for part in parts for page in part.pages), key=lambda page: page.page_number)
    kept, total = [], 0
    for page in pages:
        total += sum(_nbytes(value) for value in page.inputs)
        kept.append(page.without_inputs() if page.inputs and total > MAX_INPUT_BYTES_PER_FILE else page)
    first = parts[0]
    return LoadedFile(first.path, first.sha256, first.kind, first.mime, kept)


def _named_inputs(names: list[str], inputs: tuple[Any, ...]) -> dict[str, Any]:
    return {name: value for name, value in zip(names, inputs) if value is not None} if inputs else {}


@dataclass(frozen=True)
class _Decision:
    state: ItemState | None  # None: load it
    document_id: int | None
    sha256: str = ""
    error: str | None = None
    waits_for: int | None = None  # a document being indexed in this very job
    removed_pages: tuple[int, ...] = ()  # pages of the document a changed file used to hold
    size: int = 0  # bytes, for files to load


def _hash_files(paths: list[str]) -> list[tuple[str | None, str | None]]:
    return [_hash_file(path) for path in paths]


def _hash_file(path: str) -> tuple[str | None, str | None]:
    """(sha256, None) or (None, the reason it could not be read); runs on the hashing threads (hashlib and file
    reads release the GIL, so hashing a chunk of files overlaps with the rest of the main process)."""
    try:
        return sha256_of(path), None
    except OSError as exc:
        return None, f"{path}: cannot read: {exc.strerror}"


@dataclass
class _Plan:
    """A chunk of job items half decided (_plan_chunk): unchanged files and vanished ones are settled, the rest are
    being hashed on the hashing threads; _decide_planned finishes it."""

    decisions: dict[int, _Decision]
    states: dict[int, tuple[str, int, float]]  # item id → path, size, mtime
    known: dict[str, Any]  # path → its DocumentPath row (id, path, document_id, size_bytes, mtime), where SQL has it
    documents: dict[int, Any]  # document id → (id, status, error, sha256) of the known paths' documents
    to_hash: list[int]
    hashing: list[Future[list[tuple[str | None, str | None]]]]


def _plan_chunk(
    services: Services, collection_id: int, chunk: list[tuple[int, str]], hasher: ThreadPoolExecutor
) -> _Plan:
    """Unchanged (same path, size and mtime as SQL knows) or vanished, for a chunk of items in one transaction; the
    other files' hashing starts. The job plans the next chunk before it decides this one, so the hashing threads
    work while this thread hands files to the workers: waiting on each chunk's hashes took 0.96 s of a 6 s job."""
    decisions: dict[int, _Decision] = {}
    states: dict[int, tuple[str, int, float]] = {}
    for item_id, path in chunk:
        state = _file_state(path)
        if state is None:
            decisions[item_id] = _Decision(ItemState.FAILED, None, error=f"{path}: file vanished or unreadable")
        else:
            states[item_id] = (path, *state)
    with transaction(services.sessions) as session:
        # Plain rows and bulk statements, not ORM objects: a re-run of 16,000 unchanged photos spent 16 s in an
        # UPDATE per job item and 1 s loading and flushing an object per path.
        paths = [path for path, _, _ in states.values()]
        known = {
            row.path: row
            for row in session.execute(
                select(DocumentPath.id, DocumentPath.path, DocumentPath.document_id, DocumentPath.size_bytes,
                       DocumentPath.mtime)
                .where(DocumentPath.collection_id == collection_id, DocumentPath.path.in_(paths))
            )
        } if paths else {}
        documents = {
            row.id: row
            for row in session.execute(
                select(Document.id, Document.status, Document.error, Document.sha256)
                .where(Document.id.in_({row.document_id for row in known.values()}))
            )
        } if known else {}
        to_hash: list[int] = []
        now = utcnow()
        unchanged: list[tuple[int, int, int, float]] = []
        for item_id, (path, size, mtime) in states.items():
            seen = known.get(path)
            document = documents.get(seen.document_id) if seen is not None else None
            if (
                seen is not None and seen.size_bytes == size and seen.mtime == mtime and document is not None
                and document.status in SETTLED_STATUSES
            ):
                decisions[item_id] = _Decision(ItemState.UNCHANGED, document.id, error=document.error)
                unchanged.append((item_id, seen.id, size, mtime))
            else:
                to_hash.append(item_id)
        _record_paths_seen(session, unchanged, now)
        _record_final(session, decisions, list(decisions), now)
    # A few files per thread-pool task: a Future per file cost this thread more than the hashing itself.
    paths = [states[i][0] for i in to_hash]
    hashing = [hasher.submit(_hash_files, paths[i : i + HASH_FILES_PER_TASK])
               for i in range(0, len(paths), HASH_FILES_PER_TASK)]
    return _Plan(decisions, states, known, documents, to_hash, hashing)


def _record_paths_seen(session: Session, seen: list[tuple[int, int, int, float]], now: datetime) -> None:
    """Paths of unchanged files (item id, path id, size, mtime) seen now, with the size and mtime on disk (a touched
    file's new mtime), in one bulk statement."""
    if seen:
        paths = DocumentPath.__table__
        session.connection().execute(
            update(paths).where(paths.c.id == bindparam("path_id")),
            [{"path_id": path_id, "size_bytes": size, "mtime": mtime, "last_seen": now}
             for _, path_id, size, mtime in seen],
        )


def _record_final(session: Session, decisions: dict[int, _Decision], item_ids: list[int], now: datetime) -> None:
    """Those of `item_ids` whose state was decided without loading them (FINAL_STATES: unchanged, duplicate,
    failed to read), in one bulk statement: an UPDATE per item made a re-run of 16,000 unchanged photos take 16 s."""
    item_ids = [item_id for item_id in item_ids if decisions[item_id].state in FINAL_STATES]
    if item_ids:
        items = JobItem.__table__
        session.connection().execute(
            update(items).where(items.c.id == bindparam("item_id")),
            [
                {"item_id": item_id, "state": decisions[item_id].state, "document_id": decisions[item_id].document_id,
                 "error": decisions[item_id].error, "updated_at": now}
                for item_id in item_ids
            ],
        )


def _decide_planned(services: Services, collection_id: int, plan: _Plan) -> dict[int, _Decision]:
    """The rest of a planned chunk, once hashed, in one transaction: unchanged (same bytes at a known path), a copy
    of known bytes at a new path, or new. These take bulk statements for the whole chunk: new documents and paths
    one INSERT per table, copies one INSERT of paths, items whose state is final one UPDATE. What is left (a path
    whose bytes changed, a deleted document revived) goes through `_decide`, one file at a time."""
    decisions, states = plan.decisions, plan.states
    results = [result for part in plan.hashing for result in part.result()]
    hashed = dict(zip(plan.to_hash, results, strict=True))
    with transaction(services.sessions) as session:
        now = utcnow()
        shas = {sha for sha, _ in hashed.values() if sha is not None}
        by_sha = {
            row.sha256: row
            for row in session.execute(
                select(Document.sha256, Document.id, Document.status, Document.error)
                .where(Document.collection_id == collection_id, Document.sha256.in_(shas))
            )
        } if shas else {}
        fresh: list[tuple[int, str, int, float, str]] = []
        slow: list[tuple[int, str, int, float, str]] = []
        same: list[tuple[int, int, int, float]] = []
        copies: list[tuple[int, str, int, float, str]] = []  # new paths holding bytes a document already has
        claimed: set[str] = set()
        for item_id in plan.to_hash:
            path, size, mtime = states[item_id]
            sha, error = hashed[item_id]
            seen = plan.known.get(path)
            document = plan.documents.get(seen.document_id) if seen is not None else None
            holder = by_sha.get(sha) if sha is not None else None  # the document that already has these bytes
            if sha is None:
                decisions[item_id] = _Decision(ItemState.FAILED, None, error=error)
            elif (
                document is not None and document.sha256 == sha
                and document.status in SETTLED_STATUSES
            ):
                # Touched, or copied over with the same bytes: unchanged, not a duplicate of itself (a re-run after
                # copying a folder back reported every file as a duplicate, each in a transaction of its own).
                decisions[item_id] = _Decision(ItemState.UNCHANGED, document.id, error=document.error)
                same.append((item_id, seen.id, size, mtime))
            elif seen is None and (sha in claimed or (holder is not None and holder.status != DocumentStatus.DELETED)):
                # A copy: 4,000 of them took 5 s one at a time (a query, an ORM insert and a transaction each).
                copies.append((item_id, path, size, mtime, sha))
            elif seen is None and holder is None:
                claimed.add(sha)
                fresh.append((item_id, path, size, mtime, sha))
            else:
                slow.append((item_id, path, size, mtime, sha))
        _record_paths_seen(session, same, now)
        id_of_sha = {sha: row.id for sha, row in by_sha.items()}
        if fresh:
            # A plain executemany, then the ids by (collection, sha256), which is unique: SQLite cannot promise
            # RETURNING's row order for a multi-row insert, so SQLAlchemy would send one INSERT per document.
            session.connection().execute(
                # The empty metadata is one SQL literal, not a JSON encoding per row.
                insert(Document.__table__).values(user_metadata=literal_column("'{}'")),
                [
                    {"collection_id": collection_id, "sha256": sha, "kind": "unknown", "mime": "", "size_bytes": size,
                     "status": DocumentStatus.PENDING, "created_at": now, "updated_at": now}
                    for _, _, size, _, sha in fresh
                ],
            )
            rows = session.execute(
                select(Document.sha256, Document.id).where(
                    Document.collection_id == collection_id, Document.sha256.in_([f[4] for f in fresh])
                )
            )
            id_of_sha.update({sha: document_id for sha, document_id in rows})
            for item_id, _, size, _, sha in fresh:
                decisions[item_id] = _Decision(None, id_of_sha[sha], sha, size=size)
        for item_id, _, _, _, sha in copies:
            original = by_sha.get(sha)
            document_id = id_of_sha[sha]
            if original is not None and original.status in SETTLED_STATUSES:
                decisions[item_id] = _Decision(ItemState.DUPLICATE, document_id, sha, error=original.error)
            else:  # its original is being indexed in this job (pending), perhaps from this very chunk
                decisions[item_id] = _Decision(ItemState.PENDING, document_id, sha, waits_for=document_id)
        if fresh or copies:
            session.connection().execute(
                insert(DocumentPath.__table__),
                [
                    {"collection_id": collection_id, "document_id": id_of_sha[sha], "path": path, "size_bytes": size,
                     "mtime": mtime, "first_seen": now, "last_seen": now}
                    for _, path, size, mtime, sha in fresh + copies
                ],
            )
        for item_id, path, size, mtime, sha in slow:
            decisions[item_id] = _decide(session, collection_id, path, size, mtime, sha)
        _record_final(session, decisions, plan.to_hash, now)
    return decisions


def _decide(session: Session, collection_id: int, path: str, size: int, mtime: float, sha256: str) -> _Decision:
    """One file whose bytes are known (by hash) but whose path or document needs a closer look."""
    document = repository.find_document_by_sha(session, collection_id, sha256)
    if document is not None and document.status in SETTLED_STATUSES:
        removed = _attach_path(session, collection_id, document, path, size, mtime)
        return _Decision(ItemState.DUPLICATE, document.id, sha256, error=document.error,
                         removed_pages=tuple(removed))
    if document is not None and document.status == DocumentStatus.PENDING:
        removed = _attach_path(session, collection_id, document, path, size, mtime)
        return _Decision(ItemState.PENDING, document.id, sha256, waits_for=document.id,
                         removed_pages=tuple(removed))
    if document is None:
        document = Document(
            collection_id=collection_id, sha256=sha256, kind="unknown", mime="", size_bytes=size
        )
        session.add(document)
        session.flush()
    document.status = DocumentStatus.PENDING  # also revives a deleted document with these bytes
    document.error = None
    removed = _attach_path(session, collection_id, document, path, size, mtime)
    return _Decision(None, document.id, sha256, removed_pages=tuple(removed), size=size)


def _fail_document(services: Services, document_id: int, reason: str) -> None:
    with transaction(services.sessions) as session:
        document = session.get(Document, document_id)
        if document is not None:
            document.status = DocumentStatus.FAILED
            document.error = reason


def _write_pages(services: Services, loaded: list[tuple[int, LoadedFile]]) -> list[list[int]]:
    """Commit the documents' pages in one transaction (status stays pending until their vectors are durable);
    returns each document's page ids, in page order."""
    if not loaded:
        return []
    with transaction(services.sessions) as session:
        now = utcnow()
        documents = Document.__table__
        session.connection().execute(
            update(documents).where(documents.c.id == bindparam("document_id")),
            [{"document_id": document_id, "kind": file.kind, "mime": file.mime, "page_count": len(file.pages),
              "updated_at": now}
             for document_id, file in loaded],
        )
        rows = [
            {"document_id": document_id, "page_number": page.page_number, "width": page.width,
             "height": page.height, "image_path": page.image_path, "text": page.text,
             "text_source": page.text_source, "created_at": now}
            for document_id, file in loaded
            for page in file.pages
        ]
        if rows:
            # executemany, then the ids by (document, page number), which is unique (see _decide_planned for why)
            session.connection().execute(insert(Page.__table__), rows)
            id_of_page = {
                (document_id, number): page_id
                for page_id, document_id, number in session.execute(
                    select(Page.id, Page.document_id, Page.page_number).where(
                        Page.document_id.in_([document_id for document_id, _ in loaded])
                    )
                )
            }
        else:
            id_of_page = {}
    return [[id_of_page[(document_id, page.page_number)] for page in file.pages] for document_id, file in loaded]


# --- deletes -------------------------------------------------------------------------------------------------


def delete_documents(
    services: Services, collection: str, *, document_ids: Iterable[int] = (), paths: Iterable[str] = ()
) -> list[int]:
    """Delete documents by id or by a path they were seen at; SQL first, then the vectors (orphans of a crash
    between the two are removed by the next `recover`). Returns the deleted document ids."""
    targets: set[int] = set()
    with services.sessions() as session:
        collection_id = repository.get_collection(session, collection).id
        for document_id in document_ids:
            if repository.get_document(session, document_id).collection_id != collection_id:
                raise NotFoundError(f"document {document_id} is not in collection {collection!r}")
            targets.add(document_id)
        for path in paths:
            resolved = str(Path(path).resolve())
            found = repository.find_path(session, collection_id, resolved)
            if found is None:
                raise NotFoundError(f"no document was indexed from path {resolved!r} in collection {collection!r}")
            targets.add(found.document_id)
    with collection_writer(services, collection_id, collection):
        return _delete_locked(services, collection_id, sorted(targets))


def _delete_locked(services: Services, collection_id: int, document_ids: list[int]) -> list[int]:
    removed_pages: list[int] = []
    with transaction(services.sessions) as session:
        for document_id in document_ids:
            removed_pages += repository.mark_deleted(session, repository.get_document(session, document_id))
    if removed_pages:
        stores = services.stores(collection_id)
        stores.remove(removed_pages)
        stores.flush()
        stores.compact_if_worthwhile(services.settings.index.compact_tombstone_ratio)
        record_agreement(services, collection_id, stores)
    return document_ids
