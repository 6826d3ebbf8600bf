"""run_index: one bulk indexing job from paths to a JobReport, under the collection's writer lock."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mmrag.collections import CollectionStores
from mmrag.config import Settings
from mmrag.errors import CollectionBusyError, ModelMismatchError, NotFoundError
from mmrag.indexing.job import IndexJob, JobStages, NoProgress, Progress
from mmrag.indexing.loading import Loader, warm_modules
from mmrag.indexing.recovery import record_agreement, recover, repair, stores_agree
from mmrag.ingest import check_ocr, check_rapidocr, discover
from mmrag.ingest.cleanup import TEMP_DIR_NAME
from mmrag.ingest.passwords import PasswordBook
from mmrag.retrievers import RETRIEVERS
from mmrag.services import Services
from mmrag.store import bulk, repository
from mmrag.store.db import refresh_statistics, transaction
from mmrag.store.models import Job
from mmrag.types import JobState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSummary:
    """What a job's report (at its end) and its status (polled) both say."""

    job_id: int
    collection: str
    counts: dict[str, int]
    failures: list[tuple[str, str]]
    retrievers_on: list[str]
    retrievers_off: dict[str, str]


@dataclass(frozen=True)
class JobReport(JobSummary):
    """What a finished job did (run_index's answer)."""

    resumed: bool
    meaningless: bool
    seconds: float
    pages_indexed: int
    recovered: dict[str, int] = field(default_factory=dict)
    # Where the job's time went, in seconds (see IndexJob.run): which stage bounds a bulk job's speed.
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def pages_per_second(self) -> float:
        return self.pages_indexed / self.seconds if self.seconds > 0 else 0.0


def run_index(
    services: Services,
    paths: Iterable[Path],
    *,
    collection: str = "default",
    progress: Progress | None = None,
    stages: JobStages | None = None,
    passwords: PasswordBook | None = None,
    retry_failed: bool = False,
    before_done: Callable[[int], None] | None = None,
    reembed: bool = False,
) -> JobReport:
    """Index files and folders into a collection; re-running the same command resumes an unfinished job.
    `stages` swaps the job's stages (a test's loader, say); by default the real ones. `passwords`: what to try on
    encrypted PDFs (never stored). A file that failed is loaded again when the ingestion that failed it has changed
    since (mmrag.ingest.ingest_version), and with `retry_failed` whatever failed it. `before_done(job id)` runs once
    every file is indexed and before the job is marked done (the API's upload metadata: a client that sees the job
    done sees it applied). `reembed`: a retriever whose vectors in the collection another model made (the
    configured model changed) has its store deleted, and every page is embedded again with the configured model
    from its stored page image or text; without it such a collection is a ModelMismatchError."""
    progress = progress or NoProgress()
    began = time.perf_counter()
    roots = [str(Path(p).resolve()) for p in paths]
    for root in roots:
        if not Path(root).exists():
            raise NotFoundError(f"path {root!r} does not exist")
    if services.settings.ingest.ocr != "never":
        # A missing Tesseract is a setup problem, not a bad file: say so once instead of failing every file.
        check_ocr(services.settings.ingest.ocr_lang)
        ingest = services.settings.ingest
        if ingest.second_ocr != "never" or ingest.ocr == "auto" and ingest.ocr_skip_photos:
            check_rapidocr()  # the second engine, and the text detector that tells photos from documents

    with transaction(services.sessions) as session:
        collection_id = repository.get_or_create_collection(session, collection).id
    with collection_writer(services, collection_id, collection):
        job = _Started(services, roots, collection, collection_id, progress, began, passwords, retry_failed,
                       before_done, reembed)
        return _run_locked(job, stages or default_stages(services.settings))


def _stores_of_the_models(services: Services, collection_id: int, *, reembed: bool) -> CollectionStores:
    """The collection's stores for the configured models. With `reembed`, the store of each retriever whose vectors
    another model made is deleted first (recover then finds its pages' vectors lost, and repair embeds them again)."""
    dropped: set[str] = set()
    while True:
        try:
            return services.collections.stores(collection_id)
        except ModelMismatchError as exc:
            if not reembed or exc.retriever in dropped:
                raise
            log.warning("collection %s: deleting its %s store to re-embed every page (%s)", exc.collection,
                        exc.retriever, exc.__cause__ or exc)
            RETRIEVERS.get(exc.retriever).drop_store(services.collections.directory(collection_id) / "vectors",
                                                     services.settings)
            dropped.add(exc.retriever)


def default_stages(settings: Settings) -> JobStages:
    """A job's stages as settings choose them: on the Ray cluster settings.ray.address names, else here."""
    if settings.ray.address is not None:
        from mmrag.indexing.distributed import ray_stages

        return ray_stages(settings)
    return JobStages()


@contextmanager
def collection_writer(services: Services, collection_id: int, name: str) -> Iterator[None]:
    """One writer per collection at a time, across processes on this host.

    A job's first step (recover) drops every pending document of its collection, and each process holds the
    collection's vector stores in memory: two writers at once would destroy each other's work. The lock:
    Services.writer_lock.
    """
    with services.collections.writer_lock(collection_id) as acquired:
        if not acquired:
            raise CollectionBusyError(
                f"collection {name!r} is being written by another process (indexing or deleting); "
                "wait for it to finish, or index into another collection"
            )
        with services.collections.writing(collection_id):
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


@dataclass(frozen=True)
class _Started:
    """A job's inputs as run_index resolved them."""

    services: Services
    roots: list[str]
    collection: str
    collection_id: int
    progress: Progress
    began: float
    passwords: PasswordBook | None = None
    retry_failed: bool = False
    before_done: Callable[[int], None] | None = None
    reembed: bool = False


def _run_locked(started: _Started, stages: JobStages) -> JobReport:
    # The worker pool starts first, so its processes start (and import) while this one walks the folders, loads
    # the models and recovers the stores. It removes what killed jobs left, and its temporary directory at the end.
    services = started.services
    ingest = services.settings.ingest
    loader = stages.loader(
        ingest.workers, warm_modules=warm_modules(services.settings), shared_memory=ingest.shared_memory,
        load_file=stages.load_file, temp_root=services.settings.data_dir.resolve() / TEMP_DIR_NAME,
    )
    try:
        # Frozen from the job's start, not only while files stream: listing a job's new items would otherwise
        # run full collections over the models' objects.
        with _objects_frozen():
            with transaction(services.sessions) as session:
                job = repository.find_unfinished_job(session, started.collection_id, started.roots)
                resumed = job is not None
                if job is None:
                    job = repository.create_job(session, started.collection_id, started.roots)
                repository.started(job)
                job_id = job.id
            if not resumed:
                with transaction(services.sessions) as session:
                    found = (str(p) for p in discover(Path(r) for r in started.roots))
                    repository.add_job_items(session, job_id, found)
            return _index_with(started, job_id, resumed, loader, stages)
    finally:
        loader.close()


def _index_with(started: _Started, job_id: int, resumed: bool, loader: Loader, job_stages: JobStages) -> JobReport:
    services, collection_id = started.services, started.collection_id
    embedders = services.embedders()
    stores = _stores_of_the_models(services, collection_id, reembed=started.reembed)
    with transaction(services.sessions) as session:
        job = session.get(Job, job_id)
        job.retrievers = {"on": embedders.serving(), "off": embedders.off}

    agree = stores_agree(services, collection_id, stores)
    recovered = recover(services, collection_id, stores, compare=not agree)
    recovered["repaired_pages"] = 0 if agree else repair(services, collection_id, stores, embedders)

    with transaction(services.sessions) as session:
        items = repository.pending_items(session, job_id)
        bulk.count_attempts(session, job_id)
    started.progress.start(len(items))

    gc.freeze()  # the models and stores loaded just now join the frozen objects (_run_locked thaws them all)
    stages = {"start": time.perf_counter() - started.began}  # walking the folders, models, recovery: before any file
    cpu_began = time.process_time()
    indexing = IndexJob(
        services, collection_id, stores, embedders, started.progress, loader, job_stages,
        passwords=started.passwords, retry_failed=started.retry_failed,
    )
    pages_indexed, texts_changed = indexing.run(items)
    stages.update(indexing.stages)
    finishing = time.perf_counter()
    stores.compact_if_worthwhile(services.settings.index.compact_tombstone_ratio)
    if texts_changed or recovered["incomplete_documents"] or services.collections.derived.lexical_in_backend:
        # BM25 current now (a worker built it ahead), not at the first query. A job of photos alone leaves it as it
        # was, and skips reading the ids of every page with text.
        services.collections.derived.refresh_lexical(collection_id)
    refresh_statistics(services.engine)  # query plans for the collection as it is now
    stages["finish"] = time.perf_counter() - finishing
    # CPU seconds of this process (all its threads, not the workers) from the first file to the end: at GPU speed
    # a bulk job is bound by this process's share of each page as soon as it nears one core.
    stages["process_cpu"] = time.process_time() - cpu_began

    if started.before_done is not None:
        started.before_done(job_id)
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
        collection=started.collection,
        resumed=resumed,
        counts=counts,
        failures=failures,
        retrievers_on=embedders.serving(),
        retrievers_off=embedders.off,
        meaningless=embedders.meaningless,
        seconds=time.perf_counter() - started.began,
        pages_indexed=pages_indexed,
        recovered=recovered,
        stages=stages,
    )
