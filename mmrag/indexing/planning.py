"""Planning a job's files, a chunk at a time: stat, hash, and decide each one unchanged, a duplicate, failed to
read, or new (to load), recording the decision in SQL with set-based statements (mmrag.store.bulk)."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from mmrag.digest import sha256_of
from mmrag.ingest import ingest_version
from mmrag.ingest.passwords import PasswordBook
from mmrag.ingest.pdf import NEEDS_PASSWORD
from mmrag.services import Services
from mmrag.store import bulk, repository
from mmrag.store.db import transaction
from mmrag.store.models import Document, DocumentPath, utcnow
from mmrag.types import DocumentStatus, ItemState

FINAL_STATES = (ItemState.UNCHANGED, ItemState.DUPLICATE, ItemState.FAILED)  # job item states decided before loading
DECIDE_CHUNK_FILES = 256  # job items decided (stat, SQL, hash) per transaction
HASH_FILES_PER_TASK = 32  # a chunk of 256 files is one task per hashing thread


@dataclass(frozen=True)
class Retry:
    """Which failed documents a job loads again. Always those that failed under another ingestion than this one
    (an older mmrag or decoder, or before versions were kept: mmrag.ingest.ingest_version); those that failed for
    want of a password when the job has passwords for their path; and with `failed`, every one."""

    failed: bool = False
    passwords: PasswordBook | None = None

    def settled(self, document: Any, path: str) -> bool:
        """Whether the job is done with `document` (a row or a Document) seen at `path`."""
        if document.status == DocumentStatus.INDEXED:
            return True
        if document.status != DocumentStatus.FAILED or self.failed or document.ingest_version != ingest_version():
            return False
        wants_password = NEEDS_PASSWORD in (document.error or "")
        return not (wants_password and self.passwords and self.passwords.for_path(path))


@dataclass(frozen=True)
class Decision:
    """What the job does with one item's file."""

    state: ItemState | None  # None: load it
    document_id: int | None
    sha256: str = ""
    error: str | None = None
    waits_for: int | None = None  # a document being indexed in this very job
    removed_pages: tuple[int, ...] = ()  # pages of the document a changed file used to hold
    size: int = 0  # bytes, for files to load


@dataclass(frozen=True)
class Plan:
    """A chunk of job items half decided (plan_chunk): unchanged files and vanished ones are settled, the rest are
    being hashed on the hashing threads; decide_planned finishes it."""

    decisions: dict[int, Decision]
    states: dict[int, tuple[str, int, float]]  # item id → path, size, mtime
    known: dict[str, Any]  # path → its DocumentPath row (id, path, document_id, size_bytes, mtime), where SQL has it
    documents: dict[int, Any]  # document id → (id, status, error, sha256) of the known paths' documents
    to_hash: list[int]
    hashing: list[Future[list[tuple[str | None, str | None]]]] = field(compare=False)
    retry: Retry = Retry()


def _file_state(path: str) -> tuple[int, float] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime


def _hash_files(paths: list[str]) -> list[tuple[str | None, str | None]]:
    return [_hash_file(path) for path in paths]


def _hash_file(path: str) -> tuple[str | None, str | None]:
    """(sha256, None) or (None, the reason it could not be read); runs on the hashing threads (hashlib and file
    reads release the GIL, so hashing a chunk of files overlaps with the rest of the main process)."""
    try:
        return sha256_of(path), None
    except OSError as exc:
        return None, f"{path}: cannot read: {exc.strerror}"


def plan_chunk(
    services: Services,
    collection_id: int,
    chunk: list[tuple[int, str]],
    hasher: ThreadPoolExecutor,
    *,
    retry: Retry = Retry(),
) -> Plan:
    """Unchanged (same path, size and mtime as SQL knows) or vanished, for a chunk of items in one transaction; the
    other files' hashing starts. The job plans the next chunk before it decides this one, so the hashing threads
    work while the job's thread hands files to the workers instead of waiting on each chunk's hashes."""
    decisions: dict[int, Decision] = {}
    states: dict[int, tuple[str, int, float]] = {}
    for item_id, path in chunk:
        state = _file_state(path)
        if state is None:
            decisions[item_id] = Decision(ItemState.FAILED, None, error=f"{path}: file vanished or unreadable")
        else:
            states[item_id] = (path, *state)
    with transaction(services.sessions) as session:
        known = bulk.known_paths(session, collection_id, [path for path, _, _ in states.values()])
        documents = bulk.documents_by_id(session, {row.document_id for row in known.values()})
        to_hash: list[int] = []
        now = utcnow()
        unchanged: list[tuple[int, int, int, float]] = []
        for item_id, (path, size, mtime) in states.items():
            seen = known.get(path)
            document = documents.get(seen.document_id) if seen is not None else None
            if (
                seen is not None and seen.size_bytes == size and seen.mtime == mtime and document is not None
                and retry.settled(document, path)
            ):
                decisions[item_id] = Decision(ItemState.UNCHANGED, document.id, error=document.error)
                unchanged.append((item_id, seen.id, size, mtime))
            else:
                to_hash.append(item_id)
        bulk.record_paths_seen(session, unchanged, now)
        _record_final(session, decisions, list(decisions), now)
    # A few files per thread-pool task: a Future per file cost this thread more than the hashing itself.
    paths = [states[i][0] for i in to_hash]
    hashing = [hasher.submit(_hash_files, paths[i : i + HASH_FILES_PER_TASK])
               for i in range(0, len(paths), HASH_FILES_PER_TASK)]
    return Plan(decisions, states, known, documents, to_hash, hashing, retry)


def _record_final(session: Session, decisions: dict[int, Decision], item_ids: list[int], now: datetime) -> None:
    """Those of `item_ids` whose state was decided without loading them (FINAL_STATES: unchanged, duplicate,
    failed to read), in one bulk statement."""
    bulk.set_item_states(
        session,
        [(item_id, decisions[item_id].state, decisions[item_id].document_id, decisions[item_id].error)  # type: ignore[misc]
         for item_id in item_ids if decisions[item_id].state in FINAL_STATES],
        now,
    )


@dataclass
class _Hashed:
    """A planned chunk's hashed files, sorted by what deciding them takes: (item id, path, size, mtime, sha256)."""

    fresh: list[tuple[int, str, int, float, str]] = field(default_factory=list)  # new bytes at a new path
    copies: list[tuple[int, str, int, float, str]] = field(default_factory=list)  # known bytes at a new path
    slow: list[tuple[int, str, int, float, str]] = field(default_factory=list)  # the rest: one at a time (decide)
    same: list[tuple[int, int, int, float]] = field(default_factory=list)  # (item, path id, size, mtime) unchanged


def _sort_hashed(
    plan: Plan, hashed: dict[int, tuple[str | None, str | None]], by_sha: dict[str, Any],
    decisions: dict[int, Decision],
) -> _Hashed:
    """Decides the files that failed to hash or whose bytes are the same as before; sorts the rest."""
    sorted_ = _Hashed()
    claimed: set[str] = set()
    for item_id in plan.to_hash:
        path, size, mtime = plan.states[item_id]
        sha, error = hashed[item_id]
        seen = plan.known.get(path)
        document = plan.documents.get(seen.document_id) if seen is not None else None
        holder = by_sha.get(sha) if sha is not None else None  # the document that already has these bytes
        if sha is None:
            decisions[item_id] = Decision(ItemState.FAILED, None, error=error)
        elif document is not None and document.sha256 == sha and plan.retry.settled(document, path):
            # Touched, or copied over with the same bytes: unchanged, not a duplicate of itself (else a re-run after
            # copying a folder back would report every file as a duplicate, each in a transaction of its own).
            decisions[item_id] = Decision(ItemState.UNCHANGED, document.id, error=document.error)
            sorted_.same.append((item_id, seen.id, size, mtime))
        elif seen is None and (
            sha in claimed
            or (holder is not None and holder.status != DocumentStatus.DELETED
                and (holder.status != DocumentStatus.FAILED or plan.retry.settled(holder, path)))
        ):
            sorted_.copies.append((item_id, path, size, mtime, sha))  # one statement for all, not one each
        elif seen is None and holder is None:
            claimed.add(sha)
            sorted_.fresh.append((item_id, path, size, mtime, sha))
        else:
            sorted_.slow.append((item_id, path, size, mtime, sha))
    return sorted_


def decide_planned(services: Services, collection_id: int, plan: Plan) -> dict[int, Decision]:
    """The rest of a planned chunk, once hashed, in one transaction: unchanged (same bytes at a known path), a copy
    of known bytes at a new path, or new. These take bulk statements for the whole chunk: new documents and paths
    one INSERT per table, copies one INSERT of paths, items whose state is final one UPDATE. What is left (a path
    whose bytes changed, a deleted document revived) goes through `decide`, one file at a time."""
    decisions = dict(plan.decisions)
    results = [result for part in plan.hashing for result in part.result()]
    hashed = dict(zip(plan.to_hash, results, strict=True))
    with transaction(services.sessions) as session:
        now = utcnow()
        by_sha = bulk.documents_by_sha(session, collection_id, {sha for sha, _ in hashed.values() if sha is not None})
        sorted_ = _sort_hashed(plan, hashed, by_sha, decisions)
        bulk.record_paths_seen(session, sorted_.same, now)
        id_of_sha = {sha: row.id for sha, row in by_sha.items()}
        id_of_sha.update(
            bulk.insert_documents(session, collection_id, [(sha, size) for _, _, size, _, sha in sorted_.fresh], now)
        )
        for item_id, _, size, _, sha in sorted_.fresh:
            decisions[item_id] = Decision(None, id_of_sha[sha], sha, size=size)
        for item_id, path, _, _, sha in sorted_.copies:
            original = by_sha.get(sha)
            document_id = id_of_sha[sha]
            if original is not None and plan.retry.settled(original, path):
                decisions[item_id] = Decision(ItemState.DUPLICATE, document_id, sha, error=original.error)
            else:  # its original is being indexed in this job (pending), perhaps from this very chunk
                decisions[item_id] = Decision(ItemState.PENDING, document_id, sha, waits_for=document_id)
        bulk.insert_paths(
            session, collection_id,
            [(id_of_sha[sha], path, size, mtime) for _, path, size, mtime, sha in sorted_.fresh + sorted_.copies], now,
        )
        for item_id, path, size, mtime, sha in sorted_.slow:
            decisions[item_id] = decide(session, collection_id, path, size, mtime, sha, plan.retry)
        _record_final(session, decisions, plan.to_hash, now)
    return decisions


def decide(
    session: Session, collection_id: int, path: str, size: int, mtime: float, sha256: str, retry: Retry = Retry()
) -> Decision:
    """One file whose bytes are known (by hash) but whose path or document needs a closer look."""
    document = repository.find_document_by_sha(session, collection_id, sha256)
    if document is not None and retry.settled(document, path):
        removed = _attach_path(session, collection_id, document, path, size, mtime)
        return Decision(ItemState.DUPLICATE, document.id, sha256, error=document.error, removed_pages=tuple(removed))
    if document is not None and document.status == DocumentStatus.PENDING:
        removed = _attach_path(session, collection_id, document, path, size, mtime)
        return Decision(ItemState.PENDING, document.id, sha256, waits_for=document.id, removed_pages=tuple(removed))
    if document is None:
        document = Document(collection_id=collection_id, sha256=sha256, kind="unknown", mime="", size_bytes=size)
        session.add(document)
        session.flush()
    document.status = DocumentStatus.PENDING  # also revives a deleted document with these bytes, or a failed one
    document.error = None
    removed = _attach_path(session, collection_id, document, path, size, mtime)
    return Decision(None, document.id, sha256, removed_pages=tuple(removed), size=size)


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
    remaining = bulk.path_count(session, document_id)
    document = session.get(Document, document_id)
    if remaining or document is None or document.status == DocumentStatus.DELETED:
        return []
    return repository.mark_deleted(session, document)
