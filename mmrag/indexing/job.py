"""The job's loop over its items: plan chunks of files, send the files to the workers, collect what they load,
and hand batches to the committer. One object per job, its methods the loop's steps, sharing the loop's state."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mmrag.indexing.embedding import LocalEmbedding, PendingPage, input_specs, named_inputs
from mmrag.indexing.loading import (
    PDF_PAGES_PER_TASK,
    SMALL_FILE_BYTES,
    FileToLoad,
    Loader,
    LoadFile,
    PageRanges,
    files_per_task,
    merge_ranges,
)
from mmrag.indexing.planning import DECIDE_CHUNK_FILES, Decision, Retry, decide_planned, plan_chunk
from mmrag.indexing.writing import Batch, Committer, write_batch, write_pages
from mmrag.ingest import ingest_version, shared
from mmrag.ingest.passwords import PasswordBook
from mmrag.ingest.results import FileFailure, LoadedFile
from mmrag.ingest.worker import load_file
from mmrag.collections import CollectionStores
from mmrag.retrievers import Embedders
from mmrag.services import Services
from mmrag.store import bulk, repository
from mmrag.store.db import transaction
from mmrag.tags import job_tagger
from mmrag.types import ItemState

log = logging.getLogger(__name__)

Results = list[LoadedFile | FileFailure]


def build_lexical_ahead(services: Services, collection_id: int, loader: Loader) -> None:
    """Every page of the job is in SQL now, some batches still on the device: an idle worker brings the collection's
    BM25 index up to date and saves it meanwhile (instead of the end of the job doing it, the device idle). Only
    the pages it lacks are read and tokenized, added as a new segment. It covers the pending documents too, which the
    last batches mark indexed; services.collections.derived.refresh_lexical() at the end keeps it if its fingerprint matches SQL's
    indexed pages then, and updates it otherwise (a batch failed), so this only ever saves time."""
    from mmrag.index.lexical import Bm25Index, id_changes, update_saved

    if services.collections.derived.lexical_in_backend:
        return  # BM25 lives in Qdrant: the end of the job adds the pages (refresh_lexical), from this process
    directory = services.collections.derived.lexical_dir(collection_id)
    with services.sessions() as session:
        wanted = repository.text_page_ids(session, collection_id, with_pending=True)
        if services.collections.derived.lexical_covers(collection_id, wanted):
            return  # the job added no page with text (photos): nothing to build
        held = Bm25Index.saved_ids(directory)  # None where none can be read: update_saved starts an empty one
        added, removed = id_changes(held if held is not None else np.zeros(0, np.int64), wanted)
        pages = repository.page_texts(session, collection_id, with_pending=True, page_ids=added)
    try:
        loader.submit(update_saved, str(directory), pages, removed.tolist()).result()
    except Exception:  # noqa: BLE001 - the update at the end of the job covers it
        log.warning("updating the BM25 index ahead failed; it is updated at the end of the job", exc_info=True)


@dataclass(frozen=True)
class JobStages:
    """The job's stages and sizes; the defaults are the real ones, and a test or benchmark passes its own.

    `load_file` is what a worker runs per file (a top-level function: it is pickled by name); `loader` and
    `committer` are built like Loader and Committer; `lexical_ahead` runs once every page is in SQL."""

    load_file: LoadFile = load_file
    loader: Callable[..., Loader] = Loader
    committer: Callable[..., Committer] = Committer
    lexical_ahead: Callable[[Services, int, Loader], None] = build_lexical_ahead
    decide_chunk_files: int = DECIDE_CHUNK_FILES  # job items decided (stat, SQL, hash) per transaction
    # Built like LocalEmbedding: a batch's pages → their vectors (or a function that waits for them), and close().
    embedding: Callable[..., Any] = LocalEmbedding
    # The workers make every model input they can (ColPali's too, whatever colpali_inputs_in_workers says): for a
    # job whose models run elsewhere (Ray's actors), where this process would otherwise make them.
    inputs_in_workers: bool = False


class Progress(Protocol):
    """What the job reports as it goes; the CLI draws it, the API stores it, tests ignore it."""

    def start(self, total_files: int) -> None: ...

    def advance(self, files: int = 1, pages: int = 0) -> None: ...


class NoProgress:
    def start(self, total_files: int) -> None:
        pass

    def advance(self, files: int = 1, pages: int = 0) -> None:
        pass


class IndexJob:
    """Indexes a job's items (run); see run for the seconds it records in `stages`."""

    def __init__(
        self,
        services: Services,
        collection_id: int,
        stores: CollectionStores,
        embedders: Embedders,
        progress: Progress,
        loader: Loader,
        job_stages: JobStages,
        *,
        passwords: PasswordBook | None = None,
        retry_failed: bool = False,
    ) -> None:
        self.services = services
        self.settings = settings = services.settings
        self.collection_id = collection_id
        self.progress = progress
        self.loader = loader
        self.job_stages = job_stages
        self.passwords = passwords or PasswordBook()
        self.retry = Retry(failed=retry_failed, passwords=self.passwords)  # which failed documents load again
        spec_settings = settings
        if job_stages.inputs_in_workers and settings.ingest.colpali_inputs_in_workers == "auto":
            spec_settings = settings.model_copy(
                update={"ingest": settings.ingest.model_copy(update={"colpali_inputs_in_workers": "always"})}
            )
        specs = input_specs(embedders, spec_settings, services.storage_dir)
        self.spec_names = list(specs)
        self.spec_values = tuple(specs.values())
        tagger = job_tagger(services, collection_id, embedders)  # the labels' text vectors, made once per job
        self.embedding = job_stages.embedding(services, embedders, stores, specs)
        try:
            self.committer = job_stages.committer(
                lambda batch: self.embedding(batch.pages),
                lambda batch, embedded: write_batch(services, collection_id, stores, embedders, batch, embedded,
                                                    tagger),
                stores,
                depth=max(settings.ingest.batches_ahead, self.embedding.batches_out),
            )
        except BaseException:
            self.embedding.close()
            raise
        self.data_dir = str(services.storage_dir.resolve())
        self.stages: dict[str, float] = {}
        # One worker task carries several small files: each task costs the main process GIL time (queueing,
        # pickling, waking threads), as much as everything else it does for a photo.
        self.in_flight: deque[tuple[list[FileToLoad], Future[Results | shared.SharedResults], int]] = deque()
        self.task: list[FileToLoad] = []
        self.ranges: dict[int, PageRanges] = {}  # PDFs whose pages several workers are rendering, by document id
        self.ranges_to_send: deque[list[FileToLoad]] = deque()
        self.loading: set[int] = set()  # documents whose file a worker holds
        self.waiting_on: dict[int, list[int]] = {}  # document id → items that are its duplicates in this job
        self.batch = Batch()
        self.batch_pages = 0
        self.pages_indexed = 0
        self.texts_changed = False  # pages with text indexed, or pages removed: BM25 has something to follow

    def run(self, items: list[tuple[int, str]]) -> tuple[int, bool]:
        """Index `items`; returns the pages indexed, and whether the collection's text changed (a page with text
        indexed, or pages removed). Fills `stages` with seconds: `files` (the whole loop), `waiting_on_workers`
        (this thread idle until a worker task finished), `waiting_on_embed` (blocked on a full embed queue), and the
        `embed` and `write` threads' busy time. Whichever wait dominates names the bottleneck."""
        began = time.perf_counter()
        try:
            self._plan_and_send(items)
            while self.in_flight or self.ranges_to_send:
                self._send_task()
                if self.in_flight:
                    self._drain_one()
            if self.batch.loaded or self.batch.duplicate_item_ids:
                self._hand_over()
            if self.texts_changed:
                self.job_stages.lexical_ahead(self.services, self.collection_id, self.loader)
        finally:
            try:
                # Workers gone before the job says it is done: a caller that sees "done" may take the lock.
                self.loader.close()
            finally:
                try:
                    self.committer.close()
                finally:
                    self.embedding.close()
                self.stages["files"] = time.perf_counter() - began
                self.stages.update(self.committer.seconds)
        return self.pages_indexed, self.texts_changed

    def _plan_and_send(self, items: list[tuple[int, str]]) -> None:
        chunk_size = max(self.job_stages.decide_chunk_files, 2 * self.loader.limit)
        hashing_threads = max(1, min(8, self.settings.ingest.workers))
        with ThreadPoolExecutor(hashing_threads, thread_name_prefix="mmrag-hash") as hasher:
            chunks = [items[start : start + chunk_size] for start in range(0, len(items), chunk_size)]
            plans = deque([plan_chunk(self.services, self.collection_id, chunks[0], hasher, retry=self.retry)] if chunks else [])
            for index, chunk in enumerate(chunks):
                if index + 1 < len(chunks):  # the next chunk hashes while this one's files go to the workers
                    plans.append(plan_chunk(
                        self.services, self.collection_id, chunks[index + 1], hasher, retry=self.retry
                    ))
                decisions = decide_planned(self.services, self.collection_id, plans.popleft())
                to_load = sum(d.state is None for d in decisions.values())
                per_task = files_per_task(to_load, self.loader.workers, self.loader.files_per_task)
                for item_id, path in chunk:
                    self._route(item_id, path, decisions[item_id], per_task)
                self._send_task()

    def _route(self, item_id: int, path: str, decision: Decision, per_task: int) -> None:
        """One decided item: settled, waiting on its original, or into the next worker task."""
        if decision.removed_pages:
            # SQL already forgot these pages; the stores follow (durable at the next flush).
            self.committer.remove(list(decision.removed_pages))
            self.texts_changed = True
        if decision.state is not None:
            if decision.waits_for is not None and decision.waits_for in self.loading:
                self.waiting_on.setdefault(decision.waits_for, []).append(item_id)
            elif decision.waits_for is not None:
                # Loaded already, its vectors in this batch or one ahead of it: batches commit in order, so
                # marking the duplicate with this batch never runs ahead of its original.
                self.batch.duplicate_item_ids.append(item_id)
                self.progress.advance(1, 0)
            else:  # a final state (FINAL_STATES), recorded with the decision
                self.progress.advance(1, 0)
            return
        assert decision.document_id is not None
        self.loading.add(decision.document_id)
        pdf = path.lower().endswith(".pdf")
        # A PDF comes back in ranges of pages: the first tells how many it has, and other workers render the rest
        # meanwhile (else one long PDF keeps one worker busy for the whole job).
        pages = (1, PDF_PAGES_PER_TASK) if pdf else None
        self.task.append(
            FileToLoad(item_id, decision.document_id, path, decision.sha256, pages, self.passwords.for_path(path))
        )
        if decision.size > SMALL_FILE_BYTES or pdf or len(self.task) >= per_task:
            # A large file, or a PDF (even a small one renders several pages), travels alone: several PDFs in one
            # task keep a worker busy for long before the first page comes back.
            self._send_task()

    def _finish(self, item_id: int, state: ItemState, *, document_id: int | None, error: str | None = None,
                pages: int = 0) -> None:
        with transaction(self.services.sessions) as session:
            repository.set_items(session, [item_id], state=state, document_id=document_id, error=error, pages=pages)
        self.progress.advance(1, pages)

    def _send_task(self) -> None:
        if self.task:
            self._submit(self.task)
            self.task = []
        while self.ranges_to_send:  # a long PDF's other pages, found by a drain (which may find more)
            self._submit(self.ranges_to_send.popleft())

    def _submit(self, files: list[FileToLoad]) -> None:
        while len(self.in_flight) >= self.loader.limit:
            self._drain_one()
        future = self.loader.load([f.task() for f in files], self.settings.ingest, self.data_dir, self.spec_values)
        self.in_flight.append((files, future, self.loader.generation))

    def _drain_one(self) -> None:
        files, future, generation = self.in_flight.popleft()
        try:
            began = time.perf_counter()
            value = future.result()
            self.stages["waiting_on_workers"] = (
                self.stages.get("waiting_on_workers", 0.0) + time.perf_counter() - began
            )
            results = self.loader.received(value)
        except BrokenProcessPool:
            # Every task the dead pool held lands here; each file is retried alone, so only the culprit fails.
            self.loader.replace_broken_pool(generation)
            results = [self._load_alone(file) for file in files]
        except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot cross the pipe; the job goes on
            log.exception("unexpected error in a worker task")
            results = [FileFailure(f"internal error: {type(exc).__name__}: {exc}") for _ in files]
        for file, result in zip(files, results, strict=True):
            if file.pages is not None:
                result = self._collect_range(file, result)
                if result is None:
                    continue  # more of this PDF's pages to come, or it has failed already
            self.loading.discard(file.document_id)
            if isinstance(result, FileFailure):
                self._fail(file, result.reason)
            elif (reason := result.no_page_reason()) is not None:  # every page failed: so does the document
                self._fail(file, reason)
            else:
                self._accept(file.item_id, file.document_id, result)

    def _fail(self, file: FileToLoad, reason: str) -> None:
        with transaction(self.services.sessions) as session:
            bulk.fail_document(session, file.document_id, reason, ingest_version())
        self._finish(file.item_id, ItemState.FAILED, document_id=file.document_id, error=reason)
        for duplicate in self.waiting_on.pop(file.document_id, []):
            self._finish(duplicate, ItemState.FAILED, document_id=file.document_id, error=reason)

    def _collect_range(self, file: FileToLoad, result: LoadedFile | FileFailure) -> LoadedFile | FileFailure | None:
        """One range of a PDF's pages came back: the whole document once every range has (None until then), or
        its first failure. The first range tells the page count; the rest go to other workers at once."""
        assert file.pages is not None
        parts = self.ranges.get(file.document_id)
        if parts is None:  # the first range
            if isinstance(result, FileFailure) or result.page_total <= file.pages[1]:
                return result  # a failure, or the whole document already
            rest = [
                dataclasses.replace(file, pages=(first, min(first + PDF_PAGES_PER_TASK - 1, result.page_total)))
                for first in range(file.pages[1] + 1, result.page_total + 1, PDF_PAGES_PER_TASK)
            ]
            self.ranges_to_send.extend([part] for part in rest)
            parts = self.ranges[file.document_id] = PageRanges(pending=len(rest))
        else:
            parts.pending -= 1
        if parts.pending == 0:
            del self.ranges[file.document_id]  # every range is back
        if parts.failed:
            return None  # the document failed with an earlier range: the rest are dropped as they come back
        if isinstance(result, FileFailure):
            parts.failed = True
            return result
        parts.loaded.append(result)
        return merge_ranges(parts.loaded) if parts.pending == 0 else None

    def _load_alone(self, file: FileToLoad) -> LoadedFile | FileFailure:
        """Run one file in a process of its own, so that if it kills its worker again, nothing else is lost."""
        try:
            [result] = self.loader.load_alone([file.task()], self.settings.ingest, self.data_dir, self.spec_values)
        except BrokenProcessPool:
            return FileFailure(
                f"{file.path}: the worker process died decoding this file (a crash in a decoder, or out of memory)"
            )
        return result

    def _accept(self, item_id: int, document_id: int, loaded: LoadedFile) -> None:
        batch = self.batch
        batch.loaded.append((document_id, loaded))
        batch.document_ids.append(document_id)
        batch.item_pages[item_id] = (document_id, len(loaded.pages))
        duplicates = self.waiting_on.pop(document_id, [])
        batch.duplicate_item_ids += duplicates
        self.progress.advance(1 + len(duplicates), len(loaded.pages))
        self.pages_indexed += len(loaded.pages)
        self.batch_pages += len(loaded.pages)
        if self.batch_pages >= self.settings.batch_pages:
            self._hand_over()

    def _hand_over(self) -> None:
        """Write the batch's pages to SQL (one transaction) and give it to the committer."""
        batch = self.batch
        page_ids = write_pages(self.services, batch.loaded)
        for (_, loaded), ids in zip(batch.loaded, page_ids, strict=True):
            batch.pages += [
                PendingPage(pid, page.image_path, page.text, named_inputs(self.spec_names, page.inputs))
                for pid, page in zip(ids, loaded.pages, strict=True)
            ]
        batch.loaded = []
        self.texts_changed = self.texts_changed or any(page.text.strip() for page in batch.pages)
        self.committer.submit(batch)
        self.batch, self.batch_pages = Batch(), 0
