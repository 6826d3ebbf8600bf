"""The indexing job's set-based SQL: one statement per table for a whole chunk or batch, never one per row.

Plain rows and bulk statements, not ORM objects: an UPDATE per job item, or an ORM object loaded and flushed per
path, made a re-run over many unchanged files spend most of its time here. Every function takes a Session and the
caller owns the transaction (as in mmrag.store.repository, whose per-object queries the job also uses).

Inserts are plain executemany statements followed by a select of the new ids by a unique key: SQLite cannot
promise RETURNING's row order for a multi-row insert, so SQLAlchemy would send one INSERT per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, literal_column, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from mmrag.store.models import (
    Document, DocumentPath, JobItem, Page, PageDate, PageEmbedding, PageFailure, PageTag, PageWords,
)
from mmrag.types import DocumentKind, DocumentStatus, ItemState

# --- planning: what SQL knows about the files of a chunk ------------------------------------------------------


def known_paths(session: Session, collection_id: int, paths: Sequence[str]) -> dict[str, Row[Any]]:
    """Path → its row (id, path, document_id, size_bytes, mtime), for those of `paths` SQL knows."""
    if not paths:
        return {}
    rows = session.execute(
        select(DocumentPath.id, DocumentPath.path, DocumentPath.document_id, DocumentPath.size_bytes,
               DocumentPath.mtime)
        .where(DocumentPath.collection_id == collection_id, DocumentPath.path.in_(paths))
    )
    return {row.path: row for row in rows}


def documents_by_id(session: Session, document_ids: Iterable[int]) -> dict[int, Row[Any]]:
    """Document id → its row (id, status, error, sha256, ingest_version)."""
    ids = set(document_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(Document.id, Document.status, Document.error, Document.sha256, Document.ingest_version)
        .where(Document.id.in_(ids))
    )
    return {row.id: row for row in rows}


def documents_by_sha(session: Session, collection_id: int, shas: Iterable[str]) -> dict[str, Row[Any]]:
    """sha256 → the collection's document with those bytes (sha256, id, status, error, ingest_version)."""
    shas = set(shas)
    if not shas:
        return {}
    rows = session.execute(
        select(Document.sha256, Document.id, Document.status, Document.error, Document.ingest_version)
        .where(Document.collection_id == collection_id, Document.sha256.in_(shas))
    )
    return {row.sha256: row for row in rows}


def record_paths_seen(session: Session, seen: Sequence[tuple[int, int, int, float]], now: datetime) -> None:
    """Paths of unchanged files (item id, path id, size, mtime) seen now, with the size and mtime on disk (a
    touched file's new mtime)."""
    if seen:
        paths = DocumentPath.__table__
        session.connection().execute(
            update(paths).where(paths.c.id == bindparam("path_id")),
            [{"path_id": path_id, "size_bytes": size, "mtime": mtime, "last_seen": now}
             for _, path_id, size, mtime in seen],
        )


def set_item_states(
    session: Session, items: Sequence[tuple[int, ItemState, int | None, str | None]], now: datetime
) -> None:
    """Job items (item id, state, document id, error) whose state was decided."""
    if items:
        table = JobItem.__table__
        session.connection().execute(
            update(table).where(table.c.id == bindparam("item_id")),
            [{"item_id": item_id, "state": state, "document_id": document_id, "error": error, "updated_at": now}
             for item_id, state, document_id, error in items],
        )


def insert_documents(
    session: Session, collection_id: int, new: Sequence[tuple[str, int]], now: datetime
) -> dict[str, int]:
    """Pending documents for new bytes (sha256, size); returns sha256 → the new document's id."""
    if not new:
        return {}
    session.connection().execute(
        # The empty metadata is one SQL literal, not a JSON encoding per row.
        insert(Document.__table__).values(user_metadata=literal_column("'{}'")),
        [{"collection_id": collection_id, "sha256": sha, "kind": "unknown", "mime": "", "size_bytes": size,
          "status": DocumentStatus.PENDING, "created_at": now, "updated_at": now}
         for sha, size in new],
    )
    rows = session.execute(
        select(Document.sha256, Document.id).where(
            Document.collection_id == collection_id, Document.sha256.in_([sha for sha, _ in new])
        )
    )
    return {sha: document_id for sha, document_id in rows}


def insert_paths(
    session: Session, collection_id: int, paths: Sequence[tuple[int, str, int, float]], now: datetime
) -> None:
    """Paths (document id, path, size, mtime) first seen now."""
    if paths:
        session.connection().execute(
            insert(DocumentPath.__table__),
            [{"collection_id": collection_id, "document_id": document_id, "path": path, "size_bytes": size,
              "mtime": mtime, "first_seen": now, "last_seen": now}
             for document_id, path, size, mtime in paths],
        )


def path_count(session: Session, document_id: int) -> int:
    """How many paths hold the document's bytes."""
    return session.scalar(select(func.count()).where(DocumentPath.document_id == document_id)) or 0


# --- loading and writing ---------------------------------------------------------------------------------------


def insert_pages(
    session: Session,
    documents: Sequence[dict[str, Any]],
    pages: Sequence[dict[str, Any]],
    now: datetime,
    failed_pages: Sequence[dict[str, Any]] = (),
) -> dict[tuple[int, int], int]:
    """Record the loaded documents' kind, mime, page count and ingest version (rows with `document_id`, `kind`,
    `mime`, `page_count`, `ingest_version`), insert their pages (rows of Page's columns) and the pages they could not
    have (rows of PageFailure's columns); returns (document id, page number) → page id."""
    table = Document.__table__
    session.connection().execute(
        update(table).where(table.c.id == bindparam("document_id")),
        [{**row, "updated_at": now} for row in documents],
    )
    if failed_pages:
        session.connection().execute(insert(PageFailure.__table__), [{**row, "created_at": now} for row in failed_pages])
    if not pages:
        return {}
    session.connection().execute(insert(Page.__table__), [{**row, "created_at": now} for row in pages])
    rows = session.execute(
        select(Page.id, Page.document_id, Page.page_number).where(
            Page.document_id.in_([row["document_id"] for row in documents])
        )
    )
    return {(document_id, number): page_id for page_id, document_id, number in rows}


def insert_page_dates(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """The dates pages hold (rows of PageDate's columns)."""
    if rows:
        session.connection().execute(insert(PageDate.__table__), list(rows))


def insert_page_words(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Where pages' words are (rows of PageWords' columns)."""
    if rows:
        session.connection().execute(insert(PageWords.__table__), list(rows))


def photo_page_ids(session: Session, page_ids: Sequence[int]) -> set[int]:
    """Those of `page_ids` that are photos (the page of an image document): the pages tags are for."""
    ids = [int(page_id) for page_id in page_ids]
    if not ids:
        return set()
    return set(session.scalars(
        select(Page.id).join(Document, Document.id == Page.document_id)
        .where(Page.id.in_(ids), Document.kind == DocumentKind.IMAGE)
    ))


def replace_page_tags(session: Session, page_ids: Sequence[int], rows: Sequence[dict[str, Any]]) -> None:
    """The tags of these pages become `rows` (rows of PageTag's columns): a page written again (a resumed job, a
    re-tag) never holds two sets."""
    ids = [int(page_id) for page_id in page_ids]
    for start in range(0, len(ids), 1000):
        session.execute(delete(PageTag).where(PageTag.page_id.in_(ids[start : start + 1000])))
    if rows:
        session.connection().execute(insert(PageTag.__table__), list(rows))


def insert_embeddings(session: Session, records: Sequence[dict[str, Any]]) -> None:
    """Rows that vouch for vectors now durable in their stores."""
    if records:
        session.connection().execute(insert(PageEmbedding.__table__), records)


def mark_indexed(session: Session, document_ids: Sequence[int], now: datetime) -> None:
    if document_ids:
        session.execute(
            update(Document)
            .where(Document.id.in_(document_ids))
            .values(status=DocumentStatus.INDEXED, indexed_at=now, updated_at=now)
        )


def set_items_indexed(session: Session, item_pages: dict[int, tuple[int, int]], now: datetime) -> None:
    """Job items indexed: item id → (document id, pages)."""
    if item_pages:
        items = JobItem.__table__
        session.connection().execute(
            update(items).where(items.c.id == bindparam("item_id")),
            [{"item_id": item_id, "state": ItemState.INDEXED, "document_id": document_id, "pages": pages,
              "updated_at": now}
             for item_id, (document_id, pages) in item_pages.items()],
        )


def fail_document(session: Session, document_id: int, reason: str, ingest_version: str | None) -> None:
    """The document failed, for `reason`, under that ingestion (see Document.ingest_version)."""
    document = session.get(Document, document_id)
    if document is not None:
        document.status = DocumentStatus.FAILED
        document.error = reason
        document.ingest_version = ingest_version


def count_attempts(session: Session, job_id: int) -> None:
    """One more attempt for each of the job's pending items: a run is taking them up (a run killed before it
    settles an item leaves the count behind, so a file that keeps killing its runs shows it)."""
    items = JobItem.__table__
    session.execute(
        update(items)
        .where(items.c.job_id == job_id, items.c.state == ItemState.PENDING)
        .values(attempts=items.c.attempts + 1)
    )
