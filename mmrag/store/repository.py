"""The SQL queries the rest of mmrag calls; every function takes a Session and the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from mmrag.errors import NotFoundError
from mmrag.store.models import (
    Caption, Collection, Document, DocumentPath, Job, JobItem, Page, PageDate, PageEmbedding, PageFailure, PageTag, PageWords,
    TagLabel, utcnow,
)
from mmrag.types import DocumentKind, DocumentStatus, ItemState, JobState, SearchFilters, Tag


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
    """Delete the pages (and their embedding records) and the failed pages of these documents; returns the page ids
    removed."""
    document_ids = list(document_ids)
    if document_ids:
        session.execute(delete(PageFailure).where(PageFailure.document_id.in_(document_ids)))
    page_ids = page_ids_of_documents(session, document_ids)
    if page_ids:
        session.execute(delete(PageDate).where(PageDate.page_id.in_(page_ids)))
        session.execute(delete(PageWords).where(PageWords.page_id.in_(page_ids)))
        session.execute(delete(PageTag).where(PageTag.page_id.in_(page_ids)))
        session.execute(delete(PageEmbedding).where(PageEmbedding.page_id.in_(page_ids)))
        session.execute(delete(Page).where(Page.id.in_(page_ids)))
    return page_ids


def bump_generation(session: Session, collection_id: int) -> None:
    """Record a change to which pages of the collection are indexed (Collection.generation). Every such change
    calls this in its own transaction: a batch of documents marked indexed, a document deleted."""
    session.execute(
        update(Collection).where(Collection.id == collection_id).values(generation=Collection.generation + 1)
    )


def collection_generation(session: Session, collection_id: int) -> int:
    generation = session.scalar(select(Collection.generation).where(Collection.id == collection_id))
    if generation is None:
        raise NotFoundError(f"collection {collection_id} does not exist")
    return generation


def mark_deleted(session: Session, document: Document) -> list[int]:
    """Tombstone a document: its pages and paths go, the row stays (status deleted) for history."""
    if document.status == DocumentStatus.INDEXED:
        bump_generation(session, document.collection_id)
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


def retrievers_with_vectors(session: Session, collection_id: int, retrievers: Iterable[str]) -> list[str]:
    """Which of `retrievers` have vectors of at least one page of the collection (one indexed lookup each)."""
    held = []
    for name in retrievers:
        first = session.scalar(
            select(PageEmbedding.page_id)
            .join(Page, Page.id == PageEmbedding.page_id)
            .join(Document, Document.id == Page.document_id)
            .where(Document.collection_id == collection_id, PageEmbedding.retriever == name)
            .limit(1)
        )
        if first is not None:
            held.append(name)
    return held


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


IN_LIST = 1000  # values per IN (...) list: bounded, whatever the number asked for


def _in_lists(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """`values` in slices of at most IN_LIST, one statement each."""
    for start in range(0, len(values), IN_LIST):
        yield values[start : start + IN_LIST]


def _collection_pages(
    query: Select[Any], collection_id: int, *, with_pending: bool = False, with_text: bool = False
) -> Select[Any]:
    """`query` over pages, kept to the collection's indexed documents (and pending ones: a job's documents whose
    vectors are still on their way), and with `with_text` to pages that have text."""
    statuses = [DocumentStatus.INDEXED, DocumentStatus.PENDING] if with_pending else [DocumentStatus.INDEXED]
    query = query.join(Document, Document.id == Page.document_id).where(
        Document.collection_id == collection_id, Document.status.in_(statuses)
    )
    if not with_text:
        return query
    # A page's caption (mmrag.captions) is searchable text too: a photo with one has text to index.
    return _with_captions(query).where(or_(Page.text != "", Caption.caption.is_not(None)))


def _with_captions(query: Select[Any]) -> Select[Any]:
    """`query` over pages joined with their documents, outer-joined with the captions of their content."""
    return query.outerjoin(
        Caption, and_(Caption.sha256 == Document.sha256, Caption.page_number == Page.page_number)
    )


def searchable_text(text: str, caption: str | None) -> str:
    """What BM25 indexes for a page: its text, then its caption."""
    return f"{text}\n{caption}" if text and caption else text or caption or ""


def text_page_ids(session: Session, collection_id: int, *, with_pending: bool = False) -> list[int]:
    """Ids of the pages page_texts returns, without their text."""
    return list(session.scalars(_collection_pages(select(Page.id), collection_id, with_pending=with_pending,
                                                  with_text=True)))


def page_texts(
    session: Session, collection_id: int, *, with_pending: bool = False, page_ids: Sequence[int] | None = None
) -> list[tuple[int, str]]:
    """(page id, text) of the collection's indexed documents that have text, and with `with_pending` of its pending
    ones, by page id; with `page_ids` of those pages only (a BM25 update reads the pages added since it was saved).
    Pages without text (photos) are left out: they match no query, and the BM25 index over a photo collection
    would otherwise be rebuilt, every page read back, after each job that added photos."""
    query = _collection_pages(
        select(Page.id, Page.text, Caption.caption), collection_id, with_pending=with_pending, with_text=True
    )
    if page_ids is None:
        rows = session.execute(query.order_by(Page.id))
        return [(page_id, searchable_text(text, caption)) for page_id, text, caption in rows]
    pages: list[tuple[int, str]] = []
    for chunk in _in_lists(sorted({int(page_id) for page_id in page_ids})):
        rows = session.execute(query.where(Page.id.in_(chunk)).order_by(Page.id))
        pages.extend((page_id, searchable_text(text, caption)) for page_id, text, caption in rows)
    return pages


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
    # Correlated, so it looks up the hits' documents by index; a grouped subquery joined in was evaluated over every
    # path of every collection on each query, which cost more than the search itself.
    first_path = (
        select(func.min(DocumentPath.path)).where(DocumentPath.document_id == Page.document_id).scalar_subquery()
    )
    for chunk in _in_lists(ids):
        query = (
            select(Page.id, Page.document_id, Page.page_number, first_path, Page.text)
            .join(Document, Document.id == Page.document_id)
            .where(Page.id.in_(chunk), Document.status == DocumentStatus.INDEXED)
        )
        if filters is not None:
            query = _filtered(query, filters, pages=True)
        for r in session.execute(query):
            if r[3] is not None:  # an indexed document always has a path; the join this replaces implied it
                result[r[0]] = PageRow(r[0], r[1], r[2], r[3], r[4])
    return result


def filtered_page_ids(
    session: Session, collection_id: int, filters: SearchFilters, *, limit: int
) -> list[int] | None:
    """The ids of the collection's indexed pages that pass `filters`, or None when more than `limit` do (then a
    search filters what its retrievers return instead). Reads at most limit + 1 ids."""
    query = (
        select(Page.id)
        .join(Document, Document.id == Page.document_id)
        .where(Document.collection_id == collection_id, Document.status == DocumentStatus.INDEXED)
    )
    ids = list(session.scalars(_filtered(query, filters, pages=True).limit(limit + 1)))
    return None if len(ids) > limit else ids


def uploaded_names(session: Session, document_ids: Iterable[int]) -> dict[int, str]:
    """Document id → the file name it was uploaded as (its metadata's "filename"), for those that have one."""
    ids = list(document_ids)
    if not ids:
        return {}
    name = Document.user_metadata["filename"].as_string()
    rows = session.execute(select(Document.id, name).where(Document.id.in_(ids), name.is_not(None)))
    return {document_id: str(value) for document_id, value in rows}


def _filtered(query: Select, filters: SearchFilters, *, pages: bool = False) -> Select:
    """`query` (over documents, or over pages joined to their documents with `pages`) narrowed by `filters`."""
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
    if filters.date_from is not None or filters.date_to is not None:
        dated = select(PageDate.page_id)
        if filters.date_from is not None:
            dated = dated.where(PageDate.date >= filters.date_from)
        if filters.date_to is not None:
            dated = dated.where(PageDate.date <= filters.date_to)
        # a page query keeps the pages with such a date; a document query the documents with such a page
        query = query.where(Page.id.in_(dated)) if pages else query.where(
            Document.id.in_(select(Page.document_id).where(Page.id.in_(dated)))
        )
    if filters.tags:
        wanted = sorted(set(filters.tags))
        tagged = (  # every tag asked for: a second tag chosen narrows, as a faceted search does
            select(PageTag.page_id).where(PageTag.tag.in_(wanted))
            .group_by(PageTag.page_id).having(func.count() == len(wanted))
        )
        query = query.where(Page.id.in_(tagged)) if pages else query.where(
            Document.id.in_(select(Page.document_id).where(Page.id.in_(tagged)))
        )
    return query


# --- tags (mmrag.tags) ------------------------------------------------------------------------------------------


def page_tags(session: Session, page_ids: Sequence[int]) -> dict[int, tuple[Tag, ...]]:
    """Page id → its tags, best first, for the pages that have any."""
    found: dict[int, list[Tag]] = {}
    for chunk in _in_lists(sorted({int(page_id) for page_id in page_ids})):
        rows = session.execute(
            select(PageTag.page_id, PageTag.tag, PageTag.score).where(PageTag.page_id.in_(chunk))
            .order_by(PageTag.page_id, PageTag.score.desc(), PageTag.tag)
        )
        for page_id, tag, score in rows:
            found.setdefault(page_id, []).append(Tag(tag, float(score)))
    return {page_id: tuple(tags) for page_id, tags in found.items()}


def tag_counts(
    session: Session, collection_ids: Sequence[int], filters: SearchFilters, *, limit: int | None = None
) -> list[tuple[str, int]]:
    """(tag, how many of the collections' indexed pages passing `filters` hold it), most first, then by name."""
    if not collection_ids:
        return []
    count = func.count(PageTag.page_id)
    query = (
        select(PageTag.tag, count)
        .join(Page, Page.id == PageTag.page_id)
        .join(Document, Document.id == Page.document_id)
        .where(Document.collection_id.in_(list(collection_ids)), Document.status == DocumentStatus.INDEXED)
    )
    query = _filtered(query, filters, pages=True).group_by(PageTag.tag).order_by(count.desc(), PageTag.tag)
    if limit is not None:
        query = query.limit(limit)
    return [(tag, int(n)) for tag, n in session.execute(query)]


def photos_to_tag(
    session: Session, collection_id: int, retriever: str, *, after: int = 0, limit: int = 1000
) -> list[tuple[int, str | None]]:
    """(page id, stored image path) of the collection's indexed photos with a vector of `retriever`, by page id
    after `after`: what a re-tag goes through, `limit` at a time."""
    embedded = select(PageEmbedding.page_id).where(PageEmbedding.retriever == retriever)
    rows = session.execute(
        _collection_pages(select(Page.id, Page.image_path), collection_id)
        .where(Document.kind == DocumentKind.IMAGE, Page.id > after, Page.id.in_(embedded))
        .order_by(Page.id).limit(limit)
    )
    return [(page_id, path) for page_id, path in rows]


def collection_labels(session: Session, collection_id: int) -> list[str]:
    """The collection's own tag labels, in order; [] when it uses the settings' list."""
    return list(session.scalars(
        select(TagLabel.label).where(TagLabel.collection_id == collection_id).order_by(TagLabel.position)
    ))


def set_collection_labels(session: Session, collection_id: int, labels: Sequence[str]) -> None:
    session.execute(delete(TagLabel).where(TagLabel.collection_id == collection_id))
    if labels:
        session.execute(insert(TagLabel), [
            {"collection_id": collection_id, "position": position, "label": label}
            for position, label in enumerate(labels)
        ])


# --- captions (mmrag.captions) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionTarget:
    """A page as a caption sees it: what keys its caption (its document's sha256 and its page number), where its
    stored image is, whose it is."""

    page_id: int
    sha256: str
    page_number: int
    image_path: str | None
    collection_id: int
    kind: str


def caption_targets(session: Session, page_ids: Sequence[int]) -> dict[int, CaptionTarget]:
    """Page id → its CaptionTarget, for the pages of indexed documents among `page_ids`."""
    found: dict[int, CaptionTarget] = {}
    for chunk in _in_lists(sorted({int(page_id) for page_id in page_ids})):
        rows = session.execute(
            select(Page.id, Document.sha256, Page.page_number, Page.image_path, Document.collection_id, Document.kind)
            .join(Document, Document.id == Page.document_id)
            .where(Page.id.in_(chunk), Document.status == DocumentStatus.INDEXED)
        )
        for row in rows:
            found[row[0]] = CaptionTarget(*row)
    return found


def photos_to_describe(session: Session, collection_id: int, *, after: int = 0, limit: int = 100) -> list[int]:
    """Ids of the collection's indexed photos whose content has no caption, by page id after `after`."""
    query = _with_captions(_collection_pages(select(Page.id), collection_id))
    rows = session.scalars(
        query.where(Document.kind == DocumentKind.IMAGE, Caption.caption.is_(None), Page.id > after)
        .order_by(Page.id).limit(limit)
    )
    return list(rows)


def get_caption(session: Session, sha256: str, page_number: int) -> Caption | None:
    return session.get(Caption, (sha256, page_number))


def set_caption(session: Session, sha256: str, page_number: int, caption: str, model: str) -> None:
    """Write (or replace) the caption of this content."""
    session.execute(delete(Caption).where(Caption.sha256 == sha256, Caption.page_number == page_number))
    session.execute(insert(Caption), [
        {"sha256": sha256, "page_number": page_number, "caption": caption, "model": model, "created_at": utcnow()}
    ])


def pages_with_content(session: Session, keys: Iterable[tuple[str, int]]) -> dict[int, list[int]]:
    """Collection id → the ids of its indexed pages whose content is one of these (sha256, page number) keys: the
    pages, in every collection, that a caption written for them now describes."""
    wanted = sorted(set(keys))
    found: dict[int, list[int]] = {}
    for chunk in _in_lists(wanted):
        by_sha: dict[str, list[int]] = {}
        for sha256, number in chunk:
            by_sha.setdefault(sha256, []).append(number)
        rows = session.execute(
            select(Document.collection_id, Page.id, Document.sha256, Page.page_number)
            .join(Document, Document.id == Page.document_id)
            .where(Document.sha256.in_(list(by_sha)), Document.status == DocumentStatus.INDEXED)
            .order_by(Page.id)
        )
        for collection_id, page_id, sha256, number in rows:
            if number in by_sha[sha256]:
                found.setdefault(collection_id, []).append(page_id)
    return found


def page_captions(session: Session, page_ids: Sequence[int]) -> dict[int, str]:
    """Page id → the caption of its content, for the pages that have one."""
    found: dict[int, str] = {}
    for chunk in _in_lists(sorted({int(page_id) for page_id in page_ids})):
        rows = session.execute(
            _with_captions(select(Page.id, Caption.caption).join(Document, Document.id == Page.document_id))
            .where(Page.id.in_(chunk), Caption.caption.is_not(None))
        )
        found.update((page_id, caption) for page_id, caption in rows)
    return found


def set_user_metadata(session: Session, document_id: int, metadata: dict[str, Any]) -> None:
    get_document(session, document_id).user_metadata = dict(metadata)


def page_image_paths(session: Session, page_ids: Sequence[int]) -> dict[int, str | None]:
    ids = list(page_ids)
    if not ids:
        return {}
    return dict(session.execute(select(Page.id, Page.image_path).where(Page.id.in_(ids))).all())


def page_words(session: Session, page_ids: Sequence[int]) -> dict[int, tuple[bytes, str]]:
    """Page id → its stored words (mmrag.layout.encode_words) and its text_source, for the pages that have words."""
    ids = list(page_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(PageWords.page_id, PageWords.words, Page.text_source)
        .join(Page, Page.id == PageWords.page_id)
        .where(PageWords.page_id.in_(ids))
    )
    return {page_id: (words, source) for page_id, words, source in rows}


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
    now = utcnow()
    rows = [
        {"job_id": job_id, "path": p, "state": ItemState.PENDING, "attempts": 0, "pages": 0, "updated_at": now}
        for p in dict.fromkeys(paths) if p not in existing
    ]
    if rows:
        # One executemany, not an ORM object per file: a 30k-file job spent seconds here before its first page.
        session.connection().execute(insert(JobItem.__table__), rows)
    return len(rows)


def pending_items(session: Session, job_id: int) -> list[tuple[int, str]]:
    """(item id, path) of a job's pending files, in order; plain rows, not ORM objects (a job has 100k of them)."""
    rows = session.execute(
        select(JobItem.id, JobItem.path)
        .where(JobItem.job_id == job_id, JobItem.state == ItemState.PENDING)
        .order_by(JobItem.id)
    )
    return [(item_id, path) for item_id, path in rows]


def job_counts(session: Session, job_id: int) -> dict[str, int]:
    """Files per item state, pages indexed, pages that could not be had (`failed_pages`, see job_failed_pages) and
    indexed pages that ended with no text (`pages_without_text`: photos, and pages OCR read nothing on): kept on the
    row of a done job (settle_job), counted from the items of any other."""
    job = session.get(Job, job_id)
    if job is not None and job.counts is not None:
        # a job settled before pages could fail has no failed_pages count: it had none
        return {state.value: 0 for state in ItemState} | {"pages": 0, "failed_pages": 0, "pages_without_text": 0} | (
            job.counts
        )
    return _counted_items(session, job_id)


def _counted_items(session: Session, job_id: int) -> dict[str, int]:
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
    counts["failed_pages"] = session.scalar(_job_failed_pages(job_id, func.count())) or 0
    counts["pages_without_text"] = session.scalar(
        _job_documents_rows(job_id, Page, func.count()).where(Page.text == "")
    ) or 0
    return counts


def job_failures(session: Session, job_id: int, *, limit: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) of the job's failed files by path; the first `limit` of them with a limit (counts["failed"]
    says how many there are in all)."""
    rows = session.execute(
        select(JobItem.path, JobItem.error)
        .where(JobItem.job_id == job_id, JobItem.state == ItemState.FAILED)
        .order_by(JobItem.path)
        .limit(limit)
    )
    return [(path, error or "") for path, error in rows]


@dataclass(frozen=True)
class FailedPage:
    """A page of a document that could not be had (a PageFailure): its number, 1-based, and why."""

    page_number: int
    reason: str


def _job_failed_pages(job_id: int, *columns: Any) -> Select[Any]:
    # A duplicate's or an unchanged file's failed pages were counted by the job that indexed its document.
    return _job_documents_rows(job_id, PageFailure, *columns)


def _job_documents_rows(job_id: int, model: type[Page] | type[PageFailure], *columns: Any) -> Select[Any]:
    """`columns` over the rows of `model` (a table of documents' pages) of the documents this job indexed (an
    indexed item records its document)."""
    return (
        select(*columns)
        .select_from(JobItem)
        .join(model, model.document_id == JobItem.document_id)
        .where(JobItem.job_id == job_id, JobItem.state == ItemState.INDEXED)
    )


def job_failed_pages(session: Session, job_id: int, *, limit: int | None = None) -> list[tuple[str, int, str]]:
    """(path, page number, reason) of the pages the job could not have in the documents it indexed (their other
    pages are indexed), by path and page; the first `limit` with a limit (counts["failed_pages"] says how many)."""
    rows = session.execute(
        _job_failed_pages(job_id, JobItem.path, PageFailure.page_number, PageFailure.reason)
        .order_by(JobItem.path, PageFailure.page_number)
        .limit(limit)
    )
    return [(path, page_number, reason) for path, page_number, reason in rows]


def failed_pages_of_documents(session: Session, document_ids: Iterable[int]) -> dict[int, list[FailedPage]]:
    """Document id → the pages it could not have, by page number (an empty list for a document that has none)."""
    ids = sorted(set(document_ids))
    result: dict[int, list[FailedPage]] = {document_id: [] for document_id in ids}
    for chunk in _in_lists(ids):
        rows = session.execute(
            select(PageFailure.document_id, PageFailure.page_number, PageFailure.reason)
            .where(PageFailure.document_id.in_(chunk))
            .order_by(PageFailure.document_id, PageFailure.page_number)
        )
        for document_id, page_number, reason in rows:
            result[document_id].append(FailedPage(page_number, reason))
    return result


def set_items(session: Session, item_ids: Iterable[int], **values: Any) -> None:
    ids = list(item_ids)
    if ids:
        session.execute(update(JobItem).where(JobItem.id.in_(ids)).values(updated_at=utcnow(), **values))


def finish_job(session: Session, job: Job, state: JobState, error: str | None = None) -> None:
    job.state = state
    job.error = error
    job.finished_at = utcnow()
    if state == JobState.DONE:
        settle_job(session, job)


def settle_job(session: Session, job: Job) -> None:
    """Keep a done job's counts on its row and delete its unchanged items. Every run over a folder writes an item
    per file, for resuming; once the job is done an unchanged file's item tells nothing its count does not, and
    keeping them grew the database with every run over the same files. Indexed, duplicate and failed items stay: they are what the job did, and why a file failed."""
    job.counts = _counted_items(session, job.id)
    session.execute(delete(JobItem).where(JobItem.job_id == job.id, JobItem.state == ItemState.UNCHANGED))


def started(job: Job, when: datetime | None = None) -> None:
    job.state = JobState.RUNNING
    job.started_at = job.started_at or when or utcnow()


# --- the query service: listing, scoping and sizes -------------------------------------------------------------


def collection_names(session: Session, collection_ids: Iterable[int] | None = None) -> dict[int, str]:
    """Collection id → name, for `collection_ids` or every collection."""
    query = select(Collection.id, Collection.name)
    if collection_ids is not None:
        query = query.where(Collection.id.in_(list(collection_ids)))
    return dict(session.execute(query).all())


def list_documents(
    session: Session,
    collection_ids: Sequence[int],
    *,
    statuses: Sequence[str],
    filters: SearchFilters | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[Sequence[Document], int]:
    """One page of the collections' documents in id order, and how many match in all."""
    query = select(Document).where(Document.collection_id.in_(list(collection_ids)), Document.status.in_(statuses))
    if filters is not None:
        query = _filtered(query, filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Document.id).limit(limit).offset(offset)).all()
    return rows, total


def recorded_paths(session: Session, document_id: int) -> list[tuple[str, int, float]]:
    """(path, size in bytes, modification time) of each path a document's bytes were seen at, sorted by path."""
    rows = session.execute(
        select(DocumentPath.path, DocumentPath.size_bytes, DocumentPath.mtime)
        .where(DocumentPath.document_id == document_id)
        .order_by(DocumentPath.path)
    )
    return [(str(path), int(size), float(mtime)) for path, size, mtime in rows]


def paths_of_documents(session: Session, document_ids: Sequence[int]) -> dict[int, list[str]]:
    """Document id → every path its bytes were seen at, sorted."""
    result: dict[int, list[str]] = {document_id: [] for document_id in document_ids}
    ids = list(document_ids)
    for chunk in _in_lists(ids):
        rows = session.execute(
            select(DocumentPath.document_id, DocumentPath.path)
            .where(DocumentPath.document_id.in_(chunk))
            .order_by(DocumentPath.path)
        )
        for document_id, path in rows:
            result[document_id].append(path)
    return result


def pages_of_document(session: Session, document_id: int) -> Sequence[Page]:
    return session.scalars(select(Page).where(Page.document_id == document_id).order_by(Page.page_number)).all()


def page_with_document(session: Session, page_id: int) -> tuple[Page, Document] | None:
    row = session.execute(
        select(Page, Document).join(Document, Document.id == Page.document_id).where(Page.id == page_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


def documents_collections(session: Session, document_ids: Iterable[int]) -> dict[int, int]:
    """Document id → its collection id."""
    ids = list(document_ids)
    if not ids:
        return {}
    return dict(session.execute(select(Document.id, Document.collection_id).where(Document.id.in_(ids))).all())


def job_items(
    session: Session, job_id: int, *, limit: int, offset: int
) -> tuple[list[tuple[JobItem, int | None]], int]:
    """One page of a job's items, each with the document its path holds now (the indexing job records a document id
    on failed and duplicate items only, so the path is the link for indexed ones)."""
    job = get_job(session, job_id)
    total = session.scalar(select(func.count()).where(JobItem.job_id == job_id)) or 0
    rows = session.execute(
        select(JobItem, DocumentPath.document_id)
        .outerjoin(
            DocumentPath,
            (DocumentPath.path == JobItem.path) & (DocumentPath.collection_id == job.collection_id),
        )
        .where(JobItem.job_id == job_id)
        .order_by(JobItem.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return [(item, item.document_id or document_id) for item, document_id in rows], total


def documents_at_paths(session: Session, collection_id: int, paths: Iterable[str]) -> dict[str, int]:
    """Path → the document its bytes are now, for those of `paths` that hold one in the collection."""
    wanted = list(dict.fromkeys(paths))
    result: dict[str, int] = {}
    for chunk in _in_lists(wanted):
        rows = session.execute(
            select(DocumentPath.path, DocumentPath.document_id).where(
                DocumentPath.collection_id == collection_id, DocumentPath.path.in_(chunk)
            )
        )
        result.update({path: document_id for path, document_id in rows})
    return result


def collection_sizes(
    session: Session,
) -> tuple[dict[tuple[str, str], int], dict[str, int], dict[tuple[str, str], int], dict[str, int]]:
    """(collection, status) → documents, collection → pages, (collection, retriever) → pages with vectors, and
    collection → pages with no text (photos, and pages OCR read nothing on: BM25 cannot find them; counted in the
    pages' one pass)."""
    documents = {
        (name, status): n
        for name, status, n in session.execute(
            select(Collection.name, Document.status, func.count())
            .join(Document, Document.collection_id == Collection.id)
            .group_by(Collection.name, Document.status)
        )
    }
    pages: dict[str, int] = {}
    without_text: dict[str, int] = {}
    for name, n, textless in session.execute(
        select(Collection.name, func.count(Page.id), func.count(Page.id).filter(Page.text == ""))
        .join(Document, Document.collection_id == Collection.id)
        .join(Page, Page.document_id == Document.id)
        .group_by(Collection.name)
    ):
        pages[name] = n
        if textless:
            without_text[name] = textless
    vectors = {
        (name, retriever): n
        for name, retriever, n in session.execute(
            select(Collection.name, PageEmbedding.retriever, func.count())
            .join(Document, Document.collection_id == Collection.id)
            .join(Page, Page.document_id == Document.id)
            .join(PageEmbedding, PageEmbedding.page_id == Page.id)
            .group_by(Collection.name, PageEmbedding.retriever)
        )
    }
    return documents, pages, vectors, without_text


def collection_models(session: Session) -> dict[tuple[str, str], list[tuple[str, int, int]]]:
    """(collection, retriever) → (model, dim, pages) for each model that made vectors of the collection's pages."""
    models: dict[tuple[str, str], list[tuple[str, int, int]]] = {}
    for name, retriever, model, dim, n in session.execute(
        select(Collection.name, PageEmbedding.retriever, PageEmbedding.model, PageEmbedding.dim, func.count())
        .join(Document, Document.collection_id == Collection.id)
        .join(Page, Page.document_id == Document.id)
        .join(PageEmbedding, PageEmbedding.page_id == Page.id)
        .group_by(Collection.name, PageEmbedding.retriever, PageEmbedding.model, PageEmbedding.dim)
        .order_by(Collection.name, PageEmbedding.retriever, func.count().desc())
    ):
        models.setdefault((name, retriever), []).append((model, int(dim), int(n)))
    return models


def collection_failed_pages(session: Session) -> dict[str, int]:
    """Collection → pages its documents could not have (PageFailure rows; a deleted document keeps none)."""
    return {
        name: n
        for name, n in session.execute(
            select(Collection.name, func.count(PageFailure.id))
            .join(Document, Document.collection_id == Collection.id)
            .join(PageFailure, PageFailure.document_id == Document.id)
            .group_by(Collection.name)
        )
    }
