"""Background index jobs for a long-running process (the API): created at once so their id is a handle to poll,
then run one at a time on a worker thread through mmrag.indexing.run_index.

One at a time, because run_index starts by recovering its collection from a crash, which drops documents another
job still has pending. A job is a row in SQL before it runs, with its files as items, so one that a restart
interrupted resumes when the same paths are submitted again (run_index picks up the unfinished job).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Container, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mmrag.errors import NotFoundError
from mmrag.ingest import discover
from mmrag.ingest.passwords import PasswordBook
from mmrag.indexing import JobReport, JobSummary, run_index
from mmrag.services import Services
from mmrag.store import repository
from mmrag.store.db import transaction
from mmrag.store.models import Job, JobItem
from mmrag.store.repository import FailedPage
from mmrag.types import ItemState, JobState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobItemInfo:
    path: str
    state: str
    document_id: int | None
    pages: int
    error: str | None
    attempts: int  # runs that took the file up (a resumed job's second run counts again)
    failed_pages: list[FailedPage] = field(default_factory=list)  # the pages its document could not have


@dataclass(frozen=True)
class JobStatus(JobSummary):
    """A job as a client polling it sees it: the summary a report gives, its state and times, a page of items,
    and the pages it could not have in the documents it indexed (path, page number, reason): the first ones of
    counts["failed_pages"]."""

    state: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    items: list[JobItemInfo]
    items_total: int
    failed_pages: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def id(self) -> int:
        return self.job_id


def create_job(services: Services, paths: Sequence[Path], collection: str) -> int:
    """The job that will index `paths` into `collection`: an unfinished one over the same paths, or a new one."""
    roots = [str(Path(p).resolve()) for p in paths]  # as run_index writes them, so it finds this job
    with transaction(services.sessions) as session:
        collection_id = repository.get_or_create_collection(session, collection).id
        job = repository.find_unfinished_job(session, collection_id, roots)
        if job is None:
            job = repository.create_job(session, collection_id, roots)
        return job.id


def run_job(
    services: Services,
    job_id: int,
    *,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    confine_to: Path | None = None,
    passwords: PasswordBook | None = None,
) -> JobReport:
    """Run a job made by create_job; `metadata` (path → fields) is merged into the documents those paths became.

    With `confine_to`, a file whose real path is outside that folder (reached through a symlink in the tree, which
    discover follows) fails with a reason instead of being read. `passwords` open encrypted PDFs (run_index's; held
    in memory only). Any error fails the job with its message, so a client polling the job sees why.
    """
    try:
        with services.sessions() as session:
            job = repository.get_job(session, job_id)
            roots = list(job.roots.get("paths", []))
            collection = repository.collection_names(session, [job.collection_id])[job.collection_id]
        found = [str(p) for p in discover(Path(r) for r in roots)]
        outside = [p for p in found if confine_to is not None and not Path(p).resolve().is_relative_to(confine_to)]
        with transaction(services.sessions) as session:
            # run_index adds items only to a job it creates; this one it resumes, so its items are added here
            # (idempotent: paths already there are skipped).
            repository.add_job_items(session, job_id, found)
            if outside:
                items = session.scalars(
                    select(JobItem.id).where(JobItem.job_id == job_id, JobItem.path.in_(outside))
                ).all()
                repository.set_items(
                    session, items, state=ItemState.FAILED, error="a symbolic link leads outside the job root"
                )
        # The metadata goes on before the job is marked done: a client that polls until "done" then reads it.
        apply = (lambda done_id: _apply_metadata(services, done_id, metadata)) if metadata else None
        return run_index(services, [Path(r) for r in roots], collection=collection, passwords=passwords,
                         before_done=apply)
    except Exception as exc:
        log.exception("index job %s failed", job_id)
        with transaction(services.sessions) as session:
            job = session.get(Job, job_id)
            if job is not None:
                repository.finish_job(session, job, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise


def _apply_metadata(services: Services, job_id: int, metadata: Mapping[str, Mapping[str, Any]]) -> None:
    from mmrag.documents import set_metadata

    with services.sessions() as session:
        collection_id = repository.get_job(session, job_id).collection_id
        documents = repository.documents_at_paths(session, collection_id, metadata)
    for path, fields in metadata.items():
        if path in documents and fields:
            set_metadata(services, [documents[path]], dict(fields))


def job_status(
    services: Services,
    job_id: int,
    collections: Container[str] | None,
    *,
    items_limit: int = 100,
    items_offset: int = 0,
    failures_limit: int | None = None,
    failed_pages_limit: int = 20,
) -> JobStatus:
    """A job's state, counts, failures (the first `failures_limit`; all without one), its first
    `failed_pages_limit` failed pages and one page of its items; a job of a collection not in `collections` is
    reported as not found."""
    with services.sessions() as session:
        job = session.get(Job, job_id)
        collection = None
        if job is not None:
            collection = repository.collection_names(session, [job.collection_id])[job.collection_id]
        if job is None or (collections is not None and collection not in collections):
            raise NotFoundError(f"job {job_id} does not exist")
        return _status(session, job, collection, items_limit, items_offset, failures_limit, failed_pages_limit)


def latest_job_status(
    services: Services, *, items_limit: int = 0, failures_limit: int | None = None, failed_pages_limit: int = 20
) -> JobStatus | None:
    """The status of the job created last, in any collection; None before the first (limits: see job_status)."""
    with services.sessions() as session:
        job = repository.latest_job(session)
        if job is None:
            return None
        collection = repository.collection_names(session, [job.collection_id])[job.collection_id]
        return _status(session, job, collection, items_limit, 0, failures_limit, failed_pages_limit)


def _status(
    session: Session,
    job: Job,
    collection: str,
    items_limit: int,
    items_offset: int,
    failures_limit: int | None,
    failed_pages_limit: int,
) -> JobStatus:
    items, total = repository.job_items(session, job.id, limit=items_limit, offset=items_offset)
    failed_pages = repository.failed_pages_of_documents(session, [d for _, d in items if d is not None])
    retrievers = job.retrievers or {}
    return JobStatus(
        job_id=job.id,
        collection=collection,
        state=job.state,
        counts=repository.job_counts(session, job.id),
        failures=repository.job_failures(session, job.id, limit=failures_limit),
        retrievers_on=list(retrievers.get("on", [])),
        retrievers_off=dict(retrievers.get("off") or {}),
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        items=[
            JobItemInfo(i.path, i.state, document_id, i.pages, i.error, i.attempts, failed_pages.get(document_id, []))
            for i, document_id in items
        ],
        items_total=total,
        failed_pages=repository.job_failed_pages(session, job.id, limit=failed_pages_limit),
    )


class JobRunner:
    """Runs jobs one at a time on a worker thread; `submit` returns the job id at once."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmrag-job")
        self._lock = threading.RLock()  # a future that is already done runs its callback inside submit
        self._queued: dict[int, Future[JobReport]] = {}

    def submit(
        self,
        paths: Sequence[Path],
        collection: str,
        *,
        metadata: Mapping[str, Mapping[str, Any]] | None = None,
        confine_to: Path | None = None,
        passwords: PasswordBook | None = None,
    ) -> int:
        """The job that indexes `paths` into `collection`, queued to run; `passwords` (an upload's: see
        mmrag.documents.upload_passwords) stay in memory with the queued run, never in SQL."""
        job_id = create_job(self.services, paths, collection)
        with self._lock:
            # The same paths submitted again while queued: one run does both. It has the passwords the files need,
            # whichever were given: an upload's password is checked against its files before they are submitted.
            if job_id not in self._queued:
                future = self._executor.submit(
                    run_job, self.services, job_id, metadata=metadata, confine_to=confine_to, passwords=passwords
                )
                self._queued[job_id] = future
                future.add_done_callback(lambda _, job_id=job_id: self._forget(job_id))
        return job_id

    def _forget(self, job_id: int) -> None:
        with self._lock:
            self._queued.pop(job_id, None)

    def wait(self, timeout: float | None = None) -> None:
        """Until every job submitted so far has run (for tests and an orderly shutdown)."""
        with self._lock:
            futures = list(self._queued.values())
        for future in futures:
            try:
                future.result(timeout=timeout)
            except Exception:  # noqa: BLE001 - run_job logged it and recorded it on the job
                pass

    def close(self) -> None:
        """Finish the running job, drop the queued ones (they stay pending in SQL and resume when resubmitted)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
