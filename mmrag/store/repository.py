"""The SQL queries the rest of mmrag calls; every function takes a Session and the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from mmrag.errors import NotFoundError
from mmrag.store.models import Collection, Document, DocumentPath, Job, JobItem, Page, PageEmbedding, utcnow
from mmrag.types import DocumentStatus, ItemState, JobState, SearchFilters


def get_or_create_collection(session: Session, name: str) -> Collection:
    collection = session.scalar(select(Collection).where(Collection.name == name))
    if collection is None:
        collection = Collection(name=name)
        session.add(collection)
        session.flush()
    return collection


def get_collection(session: Session, name: str) -> Collection:
    collection = session.scalar(select(Collection).where(Collection.name == name))
    if collection is None:
        known = session.scalars(select(Collection.name).order_by(Collection.name)).all()
        raise NotFoundError(f"collection {name!r} does not exist; known: {', '.join(known) or '(none)'}")
    return collection


def list_collections(session: Session) -> Sequence[Collection]:
    return session.scalars(select(Collection).order_by(Collection.id)).all()


# --- documents and paths -------------------------------------------------------------------------------------


def find_path(session: Session, collection_id: int, path: str) -> DocumentPath | None:
    return session.scalar(
        select(DocumentPath).where(DocumentPath.collection_id == collection_id, DocumentPath.path == path)
    )


def find_document_by_sha(session: Session, collection_id: int, sha256: str) -> Document | None:
    return session.scalar(
        select(Document).where(Document.collection_id == collection_id, Document.sha256 == sha256)
    )


def get_document(session: Session, document_id: int) -> Document:
    document = session.get(Document, document_id)
    if document is None:
        raise NotFoundError(f"document {document_id} does not exist")
    return document


def page_ids_of_documents(session: Session, document_ids: Iterable[int]) -> list[int]:
    ids = list(document_ids)
    if not ids:
        return []
    return list(session.scalars(select(Page.id).where(Page.document_id.in_(ids)).order_by(Page.id)))


def drop_pages(session: Session, document_ids: Iterable[int]) -> list[int]:
    """Delete the pages (and their embedding records) of these documents; returns the page ids removed."""
    page_ids = page_ids_of_documents(session, document_ids)
    if page_ids:
        session.execute(delete(PageEmbedding).where(PageEmbedding.page_id.in_(page_ids)))
        session.execute(delete(Page).where(Page.id.in_(page_ids)))
    return page_ids


def mark_deleted(session: Session, document: Document) -> list[int]:
    """Tombstone a document: its pages and paths go, the row stays (status deleted) for history."""
    page_ids = drop_pages(session, [document.id])
    session.execute(delete(DocumentPath).where(DocumentPath.document_id == document.id))
    document.status = DocumentStatus.DELETED
    document.page_count = 0
    document.error = None
    return page_ids


def incomplete_documents(session: Session, collection_id: int) -> Sequence[Document]:
    """Documents a crash left half-written: their pages exist but their vectors were never confirmed."""
    return session.scalars(
        select(Document).where(
            Document.collection_id == collection_id, Document.status == DocumentStatus.PENDING
        )
    ).all()


def embedded_page_ids(session: Session, collection_id: int, retriever: str) -> set[int]:
    rows = session.scalars(
        select(PageEmbedding.page_id)
        .join(Page, Page.id == PageEmbedding.page_id)
        .join(Document, Document.id == Page.document_id)
        .where(Document.collection_id == collection_id, PageEmbedding.retriever == retriever)
    )
    return set(rows)


def pages_missing_embedding(session: Session, collection_id: int, retriever: str) -> Sequence[Page]:
    """Indexed pages with no vectors for `retriever` (a retriever turned on later, or a lost store)."""
    has = select(PageEmbedding.page_id).where(PageEmbedding.retriever == retriever)
    return session.scalars(
        select(Page)
        .join(Document, Document.id == Page.document_id)
        .where(
            Document.collection_id == collection_id,
            Document.status == DocumentStatus.INDEXED,
            Page.id.not_in(has),
        )
        .order_by(Page.id)
    ).all()


def forget_embeddings(session: Session, page_ids: Iterable[int], retriever: str) -> None:
    ids = list(page_ids)
    if ids:
        session.execute(
            delete(PageEmbedding).where(PageEmbedding.page_id.in_(ids), PageEmbedding.retriever == retriever)
        )


def page_texts(session: Session, collection_id: int) -> list[tuple[int, str]]:
    rows = session.execute(
        select(Page.id, Page.text)
        .join(Document, Document.id == Page.document_id)
        .where(Document.collection_id == collection_id, Document.status == DocumentStatus.INDEXED)
        .order_by(Page.id)
    )
    return [(page_id, text) for page_id, text in rows]


@dataclass(frozen=True)
class PageRow:
    page_id: int
    document_id: int
    page_number: int
    path: str
    text: str


def describe_pages(
    session: Session, page_ids: Sequence[int], *, filters: SearchFilters | None = None
) -> dict[int, PageRow]:
    """Page id → where it came from (first recorded path), for indexed pages that pass the filters."""
    result: dict[int, PageRow] = {}
    ids = list(page_ids)
    first_path = (
        select(DocumentPath.document_id, func.min(DocumentPath.path).label("path"))
        .group_by(DocumentPath.document_id)
        .subquery()
    )
    for start in range(0, len(ids), 1000):  # bounded IN lists
        query = (
            select(Page.id, Page.document_id, Page.page_number, first_path.c.path, Page.text)
            .join(first_path, first_path.c.document_id == Page.document_id)
            .join(Document, Document.id == Page.document_id)
            .where(Page.id.in_(ids[start : start + 1000]), Document.status == DocumentStatus.INDEXED)
        )
        if filters is not None:
            query = _filtered(query, filters)
        for r in session.execute(query):
            result[r[0]] = PageRow(r[0], r[1], r[2], r[3], r[4])
    return result


def _filtered(query: Select, filters: SearchFilters) -> Select:
    if filters.kind:
        query = query.where(Document.kind == filters.kind)
    if filters.path_prefix:
        # Any recorded path of the document may match, not only the one shown; % and _ match themselves.
        matching = select(DocumentPath.document_id).where(
            DocumentPath.path.startswith(filters.path_prefix, autoescape=True)
        )
        query = query.where(Document.id.in_(matching))
    for key, value in filters.metadata.items():
        query = query.where(Document.user_metadata[key].as_string() == value)
    if filters.indexed_after:
        query = query.where(Document.indexed_at >= filters.indexed_after)
    if filters.indexed_before:
        query = query.where(Document.indexed_at < filters.indexed_before)
    return query


def set_user_metadata(session: Session, document_id: int, metadata: dict[str, Any]) -> None:
    get_document(session, document_id).user_metadata = dict(metadata)


def page_image_paths(session: Session, page_ids: Sequence[int]) -> dict[int, str | None]:
    ids = list(page_ids)
    if not ids:
        return {}
    return dict(session.execute(select(Page.id, Page.image_path).where(Page.id.in_(ids))).all())


# --- jobs --------------------------------------------------------------------------------------------------


def create_job(session: Session, collection_id: int, roots: list[str]) -> Job:
    job = Job(collection_id=collection_id, roots={"paths": roots}, state=JobState.PENDING)
    session.add(job)
    session.flush()
    return job


def find_unfinished_job(session: Session, collection_id: int, roots: list[str]) -> Job | None:
    """The newest job over the same paths that never finished (killed): re-running it resumes it."""
    candidates = session.scalars(
        select(Job)
        .where(Job.collection_id == collection_id, Job.state.in_([JobState.PENDING, JobState.RUNNING]))
        .order_by(Job.id.desc())
    )
    for job in candidates:
        if job.roots.get("paths") == roots:
            return job
    return None


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist")
    return job


def latest_job(session: Session) -> Job | None:
    return session.scalar(select(Job).order_by(Job.id.desc()).limit(1))


def add_job_items(session: Session, job_id: int, paths: Iterable[str]) -> int:
    existing = set(session.scalars(select(JobItem.path).where(JobItem.job_id == job_id)))
    new = [JobItem(job_id=job_id, path=p) for p in paths if p not in existing]
    session.add_all(new)
    return len(new)


def pending_items(session: Session, job_id: int) -> Sequence[JobItem]:
    return session.scalars(
        select(JobItem).where(JobItem.job_id == job_id, JobItem.state == ItemState.PENDING).order_by(JobItem.id)
    ).all()


def job_counts(session: Session, job_id: int) -> dict[str, int]:
    rows = session.execute(
        select(JobItem.state, func.count(), func.coalesce(func.sum(JobItem.pages), 0))
        .where(JobItem.job_id == job_id)
        .group_by(JobItem.state)
    )
    counts = {state.value: 0 for state in ItemState}
    pages = 0
    for state, n, n_pages in rows:
        counts[state] = n
        pages += int(n_pages)
    counts["pages"] = pages
    return counts


def job_failures(session: Session, job_id: int) -> list[tuple[str, str]]:
    rows = session.execute(
        select(JobItem.path, JobItem.error)
        .where(JobItem.job_id == job_id, JobItem.state == ItemState.FAILED)
        .order_by(JobItem.path)
    )
    return [(path, error or "") for path, error in rows]


def set_items(session: Session, item_ids: Iterable[int], **values: Any) -> None:
    ids = list(item_ids)
    if ids:
        session.execute(update(JobItem).where(JobItem.id.in_(ids)).values(updated_at=utcnow(), **values))


def finish_job(session: Session, job: Job, state: JobState, error: str | None = None) -> None:
    job.state = state
    job.error = error
    job.finished_at = utcnow()


def started(job: Job, when: datetime | None = None) -> None:
    job.state = JobState.RUNNING
    job.started_at = job.started_at or when or utcnow()
