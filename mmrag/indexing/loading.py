"""Loading files in worker processes: the pool and its fork server, tasks of several small files, a long PDF's
pages in ranges rendered by several workers, and the file that kills its worker retried alone."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from mmrag.config import IngestSettings, Settings
from mmrag.retrievers import RETRIEVERS
from mmrag.ingest import cleanup, shared
from mmrag.inputs import InputSpec
from mmrag.ingest.worker import (
    MAX_INPUT_BYTES_PER_FILE,
    FileFailure,
    FileTask,
    LoadedFile,
    _nbytes,
    init_worker,
    load_file,
    load_files,
    load_files_shared,
    warm_up,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

FILES_PER_TASK = 16
SMALL_FILE_BYTES = 1024 * 1024  # files above this (PDFs, large scans) go to a worker one per task
PDF_PAGES_PER_TASK = 8

LoadFile = Callable[..., LoadedFile]  # what a worker runs per file: mmrag.ingest.worker.load_file's signature


@dataclass(frozen=True)
class FileToLoad:
    """A job item whose file goes to a worker, or one range of a PDF's pages."""

    item_id: int
    document_id: int
    path: str
    sha256: str
    pages: tuple[int, int] | None = None  # a PDF's page range (first, last; 1-based, inclusive)
    # to try on an encrypted PDF (mmrag.indexing.passwords); kept out of repr so no log or traceback shows them
    passwords: tuple[str, ...] = field(default=(), repr=False)

    def task(self) -> FileTask:
        return (self.path, self.sha256, self.pages, self.passwords)


@dataclass
class PageRanges:
    """A PDF being rendered in ranges by several workers: the ranges back so far, how many are still out, and
    whether one failed (which fails the document; later ranges are dropped as they come back)."""

    pending: int
    loaded: list[LoadedFile] = field(default_factory=list)
    failed: bool = False


def files_per_task(files: int, workers: int, most: int = FILES_PER_TASK) -> int:
    """Small files per worker task: up to `most` (fewer tasks cost the main process less), but never so many that a
    small job leaves workers idle, one of them doing most of the job."""
    return max(1, min(most, -(-files // max(1, workers))))


def merge_ranges(parts: list[LoadedFile]) -> LoadedFile:
    """One document from its ranges, pages in order. Past MAX_INPUT_BYTES_PER_FILE of model inputs for the
    document, pages keep none (the memory bound a single worker keeps): the embedding thread makes those from the
    stored page images."""
    pages = sorted((page for part in parts for page in part.pages), key=lambda page: page.page_number)
    kept, total = [], 0
    for page in pages:
        total += sum(_nbytes(value) for value in page.inputs)
        kept.append(page.without_inputs() if page.inputs and total > MAX_INPUT_BYTES_PER_FILE else page)
    failed = tuple(sorted(failure for part in parts for failure in part.failed_pages))
    first = parts[0]
    return LoadedFile(first.path, first.sha256, first.kind, first.mime, kept, failed_pages=failed)


def _worker_context(warm_modules: Sequence[str]) -> multiprocessing.context.BaseContext:
    """Workers come from a fork server: a clean process (never this one, whose CUDA context and torch thread pools
    a fork would copy in a broken state) that imports the worker module and `warm_modules` once, then forks every
    worker, instead of each spawned worker importing the models' libraries itself before its first page. The
    server starts with the first pool of this process and keeps its preload list after."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mmrag.ingest.worker", *warm_modules])
    return context


def warm_modules(settings: Settings) -> list[str]:
    """What the workers import before their first file: CLIP's inputs (ClipPixels) and Qwen2-VL-based models'
    (QwenPixels) are resized with torch there; other ColPali families import colpali-engine in each worker at its
    first page (their processor runs there)."""
    return sorted({module for retriever in RETRIEVERS for module in retriever.worker_modules(settings)})


def start_worker_server(settings: Settings) -> None:
    """Start the fork server that bulk jobs' workers come from, now, in the background (it returns at once): its
    imports (torch) then happen beside whatever the caller does next, typically loading the models, instead of
    before a job's first page. A job started later finds it running; calling this is only ever an optimisation."""
    if settings.ingest.workers > 0:
        context = _worker_context(warm_modules(settings))
        if context.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()


def _start_workers(pool: ProcessPoolExecutor, workers: int, modules: tuple[str, ...]) -> None:
    try:
        for _ in range(workers):
            pool.submit(warm_up, modules)
    except RuntimeError:  # the job ended (and shut the pool down) before its workers had started
        pass


class Loader:
    """Runs `load_file` in worker processes with a bounded number in flight, so memory stays bounded.

    `load_file` is what a worker runs per file (a top-level function, so it pickles by name): tests pass one that
    crashes its worker or fails some files, a benchmark one that replays a file without decoding it."""

    def __init__(
        self,
        workers: int,
        *,
        warm_modules: Sequence[str] = (),
        shared_memory: bool = True,
        load_file: LoadFile = load_file,
        temp_root: Path | None = None,
    ) -> None:
        self.workers = workers
        self.load_file = load_file
        self.limit = max(2, 2 * workers)
        self.files_per_task = FILES_PER_TASK  # at most, small files per task (files_per_task)
        self.generation = 0  # which pool a future came from: a broken pool is replaced once, not per future
        # A job's temporary files (OCR's, a renderer's) go to a directory of its own under `temp_root`, removed by
        # close(); a killed job's, and its pool's semaphores, by the next job's start (see mmrag.ingest.cleanup).
        self.temp_dir: Path | None = None
        self._pool: ProcessPoolExecutor | None = None
        # Workers hand page inputs back through shared memory where the system has it (see mmrag.ingest.shared).
        self.shared_prefix: str | None = None
        self._warned_unshared = False
        if temp_root is not None:
            cleanup.remove_leftovers(temp_root)
            self.temp_dir = cleanup.make_temp_dir(temp_root)
        try:
            self._context = _worker_context(warm_modules)
            if workers > 0:
                self._pool = self._new_pool(workers)
        except BaseException:
            self.close()  # the temporary directory goes with the job that failed to start
            raise
        if self._pool is not None and shared_memory and shared.available():
            shared.remove_orphans()  # left by a job killed mid-way
            self.shared_prefix = shared.new_prefix()
        if self._pool is not None and warm_modules:
            # Start every worker now, from a thread of its own: the first fork waits for the fork server to import
            # `warm_modules`, which would otherwise hold up this thread's model loading and recovery. The server
            # imported them once, unless it was started earlier in this process with another list (or spawn is
            # used): then each worker imports them here. A warm-up that fails only means the first file pays for
            # the import.
            threading.Thread(
                target=_start_workers, args=(self._pool, workers, tuple(warm_modules)), name="mmrag-warm", daemon=True
            ).start()

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        temp_dir = None if self.temp_dir is None else str(self.temp_dir)
        return ProcessPoolExecutor(workers, mp_context=self._context, initializer=init_worker, initargs=(temp_dir,))

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
                with nullcontext() if self.temp_dir is None else cleanup.temp_files_in(self.temp_dir):
                    value = fn(*args)
                future.set_result(value)
            except Exception as exc:  # noqa: BLE001 - handed to the caller through the future, like a pool would
                future.set_exception(exc)
            return future
        return self._pool.submit(fn, *args)

    def load(
        self, files: list[FileTask], settings: IngestSettings, data_dir: str, specs: tuple[InputSpec, ...]
    ) -> Future[list[LoadedFile | FileFailure] | shared.SharedResults]:
        """Load `files` in a worker; the future's value goes through `received`."""
        if self.shared_prefix is None:
            return self.submit(load_files, files, settings, data_dir, specs, self.load_file)
        return self.submit(
            load_files_shared, files, settings, data_dir, specs, self.load_file, self.shared_prefix,
            shared.MIN_SHARED_BYTES,
        )

    def load_alone(
        self, files: list[FileTask], settings: IngestSettings, data_dir: str, specs: tuple[InputSpec, ...]
    ) -> list[LoadedFile | FileFailure]:
        """Load `files` in a process of their own (see run_alone)."""
        return self.run_alone(load_files, files, settings, data_dir, specs, self.load_file)

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
        if self.temp_dir is not None:
            cleanup.remove_temp_dir(self.temp_dir)  # the workers have exited: nothing writes there any more
            self.temp_dir = None
