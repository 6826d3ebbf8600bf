"""Documents and pages as the query service shows them: scoped listing and lookup, search hits with snippets, page
images and thumbnails, and uploaded bytes stored by their sha256.

Scoping: every function that reads by id takes `collections`, the names the caller may read (None: any). An id in
another collection is reported as not found, exactly like an id that does not exist, so a caller cannot learn what
other collections hold.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from stat import S_ISREG
from collections.abc import Collection as Names
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, ImageDraw, UnidentifiedImageError
from sqlalchemy.orm import Session

from mmrag.digest import new_digest
from mmrag.errors import (
    CorruptFileError,
    InputError,
    ModelUnavailableError,
    NotFoundError,
    TooLargeError,
    UnsupportedTypeError,
)
from mmrag import layout
from mmrag.indexing import delete_documents
from mmrag.ingest import count_pdf_pages, load_image, sniff_bytes
from mmrag.ingest.discover import SNIFF_BYTES
from mmrag.ingest.passwords import PasswordBook
from mmrag.layout import Region
from mmrag.retrieval import looked_at, search
from mmrag.retrievers import RETRIEVERS
from mmrag.services import Services
from mmrag.store import repository
from mmrag.store.db import transaction
from mmrag.store.models import Document
from mmrag.store.repository import FailedPage
from mmrag.types import DocumentKind, DocumentStatus, SearchFilters, SearchResult

log = logging.getLogger(__name__)

SNIPPET_CHARS = 240
# Statuses a listing shows; a deleted document is a tombstone kept for history, not something a client can read.
VISIBLE_STATUSES = (DocumentStatus.PENDING, DocumentStatus.INDEXED, DocumentStatus.FAILED)
SUFFIX_BY_MIME = {
    "application/pdf": ".pdf",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/apng": ".png",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "image/gif": ".gif",
}


@dataclass(frozen=True)
class DocumentInfo:
    id: int
    collection: str
    sha256: str
    kind: str
    mime: str
    size_bytes: int
    page_count: int | None
    status: str
    error: str | None
    paths: list[str]
    metadata: dict[str, Any]
    created_at: datetime
    indexed_at: datetime | None


@dataclass(frozen=True)
class PageInfo:
    id: int
    document_id: int
    page_number: int
    width: int
    height: int
    text_source: str
    has_image: bool
    renderer: str | None = None  # what drew a PDF page: pypdfium2 | pdf2image (None: an image, or not recorded)


@dataclass(frozen=True)
class DocumentPages:
    """A document as GET /v1/documents/{id} shows it: its pages, and the pages it could not have (its other pages
    are indexed; Document.page_count counts both)."""

    document: DocumentInfo
    pages: list[PageInfo]
    failed_pages: list[FailedPage]

    @property
    def renderers(self) -> dict[str, int]:
        """Renderer → how many of the pages it drew (pages without a recorded renderer left out)."""
        counts: dict[str, int] = {}
        for page in self.pages:
            if page.renderer is not None:
                counts[page.renderer] = counts.get(page.renderer, 0) + 1
        return counts


@dataclass(frozen=True)
class DocumentListing:
    items: list[DocumentInfo]
    total: int


@dataclass(frozen=True)
class PageHit:
    """A search result with the collection it came from and a snippet of its text around the query."""

    result: SearchResult
    collection: str
    snippet: str
    # the boxes of its words that match the query, then where a similarity map points (a text query's only)
    highlights: tuple[Region, ...] = ()


@dataclass(frozen=True)
class StoredUpload:
    path: Path  # under the data dir, named by content
    sha256: str
    size_bytes: int
    kind: str
    mime: str
    name: str  # the client's file name, for messages and metadata only; never part of a path


@dataclass(frozen=True)
class IndexSizes:
    documents: dict[tuple[str, str], int]  # (collection, status) → documents
    pages: dict[str, int]  # collection → pages
    vectors: dict[tuple[str, str], int]  # (collection, retriever) → pages with vectors
    failed_pages: dict[str, int] = field(default_factory=dict)  # collection → pages its documents could not have
    pages_without_text: dict[str, int] = field(default_factory=dict)  # collection → pages with no text


# --- collections ---------------------------------------------------------------------------------------------


def collection_names(services: Services) -> list[str]:
    with services.sessions() as session:
        return sorted(repository.collection_names(session).values())


# --- listing and lookup --------------------------------------------------------------------------------------


def list_documents(
    services: Services,
    collections: Sequence[str],
    *,
    status: str | None = None,
    filters: SearchFilters | None = None,
    limit: int = 50,
    offset: int = 0,
) -> DocumentListing:
    """Documents of `collections` (existing ones; others hold nothing) in id order, `limit` from `offset`."""
    statuses = [status] if status else list(VISIBLE_STATUSES)
    with services.sessions() as session:
        names = repository.collection_names(session)
        ids = [collection_id for collection_id, name in names.items() if name in set(collections)]
        rows, total = repository.list_documents(
            session, ids, statuses=statuses, filters=filters, limit=limit, offset=offset
        )
        paths = repository.paths_of_documents(session, [row.id for row in rows])
        items = [_info(row, names[row.collection_id], paths[row.id]) for row in rows]
    return DocumentListing(items=items, total=total)


def get_document(services: Services, document_id: int, collections: Names[str] | None) -> DocumentPages:
    """One document with its pages and the pages it could not have."""
    with services.sessions() as session:
        document, collection = _visible_document(session, document_id, collections)
        paths = repository.paths_of_documents(session, [document.id])[document.id]
        pages = [
            PageInfo(p.id, p.document_id, p.page_number, p.width, p.height, p.text_source, p.image_path is not None,
                     p.renderer)
            for p in repository.pages_of_document(session, document.id)
        ]
        failed = repository.failed_pages_of_documents(session, [document.id])[document.id]
        return DocumentPages(_info(document, collection, paths), pages, failed)


@dataclass(frozen=True)
class OriginalFile:
    path: Path
    mime: str
    name: str  # the file name it was uploaded as, else its path's last part


def original_file(services: Services, document_id: int, collections: Names[str] | None) -> OriginalFile:
    """The file an indexed document was read from, where it still is as it was indexed: the first of its recorded
    paths whose size and modification time are those the job recorded (a file edited since holds other bytes than
    the pages show). Only paths the indexer recorded are ever opened; none comes from the caller."""
    with services.sessions() as session:
        document, _ = _visible_document(session, document_id, collections)
        if document.status != DocumentStatus.INDEXED:
            raise NotFoundError(f"document {document_id} is {document.status.value}, not indexed")
        recorded = repository.recorded_paths(session, document.id)
        name = (document.user_metadata or {}).get("filename")
        mime = document.mime
    for path, size, mtime in recorded:
        try:
            found = os.stat(path)
        except OSError:
            continue
        if S_ISREG(found.st_mode) and found.st_size == size and found.st_mtime == mtime:
            return OriginalFile(Path(path), mime, str(name or Path(path).name))
    raise NotFoundError(f"document {document_id}: its file is no longer where it was indexed, or changed since")


def delete_document(services: Services, document_id: int, collections: Names[str] | None) -> None:
    """Delete one document, its pages and their vectors (see mmrag.indexing.delete_documents)."""
    with services.sessions() as session:
        _, collection = _visible_document(session, document_id, collections)
    delete_documents(services, collection, document_ids=[document_id])


def _visible_document(session: Session, document_id: int, collections: Names[str] | None) -> tuple[Document, str]:
    document = session.get(Document, document_id)
    if document is not None and document.status != DocumentStatus.DELETED:
        collection = repository.collection_names(session, [document.collection_id])[document.collection_id]
        if collections is None or collection in collections:
            return document, collection
    raise NotFoundError(f"document {document_id} does not exist")


def _info(row: Document, collection: str, paths: list[str]) -> DocumentInfo:
    return DocumentInfo(
        id=row.id,
        collection=collection,
        sha256=row.sha256,
        kind=row.kind,
        mime=row.mime,
        size_bytes=row.size_bytes,
        page_count=row.page_count,
        status=row.status,
        error=row.error,
        paths=paths,
        metadata=dict(row.user_metadata or {}),
        created_at=row.created_at,
        indexed_at=row.indexed_at,
    )


def set_metadata(services: Services, document_ids: Sequence[int], metadata: dict[str, Any]) -> None:
    """Merge `metadata` into each document's user metadata (what search filters match on)."""
    with transaction(services.sessions) as session:
        for document_id in document_ids:
            document = repository.get_document(session, document_id)
            document.user_metadata = {**(document.user_metadata or {}), **metadata}


# --- search --------------------------------------------------------------------------------------------------


def search_hits(
    services: Services,
    collections: Sequence[str],
    *,
    text: str | None = None,
    image: bytes | None = None,
    max_image_pixels: int = 40_000_000,
    k: int = 10,
    offset: int = 0,
    retrievers: Sequence[str] | None = None,
    filters: SearchFilters | None = None,
    highlight: bool = True,
) -> list[PageHit]:
    """retrieval.search over `collections`, each hit with its collection, a snippet and (`highlight`, a text query)
    the boxes of its words that match the query; an image query is given as the uploaded bytes, sniffed and
    bounded in pixels before it is decoded."""
    picture = None
    if image is not None:
        picture = decode_query_image(services, image, max_pixels=max_image_pixels)
        takes_images = RETRIEVERS.taking("image")
        embedders = services.embedders(takes_images)
        if not any(embedders.get(name) is not None for name in takes_images):
            # A model the request needs is missing: that is the server's state, not the client's mistake.
            why = embedders.why_off(takes_images) or "none is registered"
            raise ModelUnavailableError("+".join(takes_images) or "an image retriever", why)
    if not collections:
        return []
    results = search(
        services, collections, text=text, image=picture, k=k, offset=offset, retrievers=retrievers, filters=filters
    )
    with services.sessions() as session:
        of_document = repository.documents_collections(session, [r.document_id for r in results])
        names = repository.collection_names(session, set(of_document.values()))
        words = repository.page_words(session, [r.page_id for r in results]) if highlight and text else {}
    on_map = {r.page_id: of_document[r.document_id] for r in results} if highlight and text else {}
    maps = looked_at(services, on_map, text or "")
    return [
        PageHit(r, names[of_document[r.document_id]], snippet(r.text, text),
                (*_highlights(text, words.get(r.page_id)), *maps.get(r.page_id, ())))
        for r in results
    ]


def _highlights(query: str | None, stored: tuple[bytes, str] | None) -> tuple[Region, ...]:
    if not query:
        return ()
    return tuple(layout.highlights(query, *layout.stored_words(stored)))


def decode_query_image(services: Services, data: bytes, *, max_pixels: int) -> Image.Image:
    """Uploaded query bytes → RGB image, through the same sniffing and pixel guard as indexed files."""
    label = Path("query image")
    kind, _ = sniff_bytes(data[:SNIFF_BYTES], label)
    if kind != DocumentKind.IMAGE:
        raise UnsupportedTypeError(f"{label}: a query image must be an image, not a {kind.value}")
    incoming = services.storage_dir / "uploads" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=incoming, suffix=".query") as handle:
        handle.write(data)
        handle.flush()
        try:
            return load_image(Path(handle.name), max_pixels=max_pixels)
        except InputError as exc:
            raise type(exc)(str(exc).replace(handle.name, str(label))) from None


_WORD = re.compile(r"\w{3,}")


def snippet(text: str, query: str | None, width: int = SNIPPET_CHARS) -> str:
    """About `width` characters of `text` around the first query word it holds (its start when none)."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    start = 0
    if query:
        lowered = flat.lower()
        found = [at for word in _WORD.findall(query.lower()) if (at := lowered.find(word)) >= 0]
        if found:
            start = max(0, min(found) - width // 4)
    end = min(len(flat), start + width)
    start = max(0, end - width)
    if start > 0 and (space := flat.find(" ", start, start + 20)) >= 0:
        start = space + 1  # begin on a word
    return ("…" if start > 0 else "") + flat[start:end] + ("…" if end < len(flat) else "")


# --- page images ---------------------------------------------------------------------------------------------


def page_image(
    services: Services, page_id: int, collections: Names[str] | None, *, thumbnail_side: int | None = None
) -> Path:
    """The stored image of a page (or a thumbnail of it, made once and kept), as a path inside the data dir."""
    with services.sessions() as session:
        found = repository.page_with_document(session, page_id)
        collection = None
        if found is not None:
            collection = repository.collection_names(session, [found[1].collection_id])[found[1].collection_id]
    if (
        found is None
        or found[1].status != DocumentStatus.INDEXED
        or (collections is not None and collection not in collections)
    ):
        raise NotFoundError(f"page {page_id} does not exist")
    page = found[0]
    root = services.storage_dir.resolve()
    full = (root / page.image_path).resolve() if page.image_path else None
    if full is None or not full.is_relative_to(root) or not full.is_file():
        raise NotFoundError(f"page {page_id} has no stored image")
    if thumbnail_side is None:
        return full
    thumbnail = (root / "thumbnails" / str(thumbnail_side) / page.image_path).resolve()
    if not thumbnail.is_relative_to(root / "thumbnails"):
        raise NotFoundError(f"page {page_id} has no stored image")
    if not thumbnail.is_file():
        _write_thumbnail(full, thumbnail, thumbnail_side)
    return thumbnail


MARKED_REGIONS = (255, 140, 0)  # orange: the regions a caller asked to see (a citation's)
MARKED_HIGHLIGHTS = (30, 144, 255)  # blue: the words matching a query


def marked_page_image(
    services: Services,
    page_id: int,
    collections: Names[str] | None,
    *,
    regions: Sequence[layout.Box] = (),
    highlight: str | None = None,
    thumbnail_side: int | None = None,
) -> bytes:
    """The page's image (or thumbnail) as JPEG bytes with `regions` (boxes 0-1 of the page, a citation's) drawn in
    orange and the boxes of its words that match `highlight` (a query), and where a similarity map for it points,
    in blue: a picture of the evidence for clients without a UI. A page without stored words gets no word boxes
    (drawn regions are the caller's)."""
    path = page_image(services, page_id, collections, thumbnail_side=thumbnail_side)
    marked: list[tuple[layout.Box, tuple[int, int, int]]] = [(box, MARKED_REGIONS) for box in regions]
    if highlight:
        with services.sessions() as session:
            stored = repository.page_words(session, [page_id]).get(page_id)
            found = repository.page_with_document(session, page_id)
        maps = looked_at(services, {page_id: found[1].collection_id}, highlight) if found is not None else {}
        for region in (*_highlights(highlight, stored), *maps.get(page_id, ())):
            marked.append((region.box, MARKED_HIGHLIGHTS))
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width, height = image.size
    line = max(2, round(min(width, height) / 300))
    for (x0, y0, x1, y1), colour in marked:
        # a little larger than the box, so the outline does not cover the ink it frames
        rect = (x0 * width - line, y0 * height - line, x1 * width + line, y1 * height + line)
        draw.rectangle(rect, fill=(*colour, 56), outline=(*colour, 255), width=line)
    picture = Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")
    encoded = io.BytesIO()
    picture.save(encoded, format="JPEG", quality=90)
    return encoded.getvalue()


def _write_thumbnail(source: Path, target: Path, side: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        # A private temporary name, then an atomic rename: two requests may make the same thumbnail at once.
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, format="JPEG", quality=85)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --- uploads -------------------------------------------------------------------------------------------------


def store_upload(
    services: Services,
    source: BinaryIO,
    *,
    name: str,
    max_bytes: int,
    max_pixels: int,
    password: str | None = None,
) -> StoredUpload:
    """Copy uploaded bytes into the data dir as uploads/<sha256[:2]>/<sha256>.<type>, checking them on the way.

    The bytes decide everything: the type is sniffed from them (the client's name and content type are ignored),
    an image's header must claim at most `max_pixels`, a PDF must open (an encrypted one with `password`, which is
    only tried here: see upload_passwords for the job's). The client's name only labels messages.
    """
    label = _label(name)
    incoming = services.storage_dir / "uploads" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=incoming, suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = new_digest()
        size = 0
        head = b""
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise TooLargeError(f"{label}: over the upload limit of {max_bytes} bytes")
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                digest.update(chunk)
                out.write(chunk)
        kind, mime = sniff_bytes(head, Path(label))
        try:
            if kind == DocumentKind.IMAGE:
                _check_pixels(tmp, label, max_pixels)
            else:
                # raises for a broken PDF, or an encrypted one `password` does not open, now, not later in the job
                # (the message never holds a password)
                count_pdf_pages(tmp, (password,) if password else ())
        except InputError as exc:
            raise type(exc)(str(exc).replace(str(tmp), label)) from None
        sha256 = digest.hexdigest()
        target = services.storage_dir / "uploads" / sha256[:2] / f"{sha256}{SUFFIX_BY_MIME.get(mime, '')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            tmp.unlink()  # the same bytes are already there; keeping the old file keeps its mtime, so no re-hash
        else:
            os.replace(tmp, target)
        return StoredUpload(target.resolve(), sha256, size, kind.value, mime, label)
    finally:
        tmp.unlink(missing_ok=True)


def upload_passwords(stored: Sequence[StoredUpload], password: str | None) -> PasswordBook | None:
    """The password an upload came with, for the job that indexes its PDFs (None without one). Held in memory only:
    a job queued when the process stops runs later without it, and an encrypted file then fails as needing one."""
    if not password:
        return None
    pdfs = [upload.path for upload in stored if upload.kind == DocumentKind.PDF]
    return PasswordBook.for_files(pdfs, password) or None


def _label(name: str) -> str:
    """A client's file name made safe to print: its last component, printable characters, bounded."""
    base = re.split(r"[\\/]", name or "")[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable())[:200]
    return cleaned or "upload"


def _check_pixels(path: Path, label: str, max_pixels: int) -> None:
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise TooLargeError(f"{label}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptFileError(f"{label}: not a decodable image ({type(exc).__name__})") from None
    if width * height > max_pixels:
        raise TooLargeError(f"{label}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels}")


# --- sizes ---------------------------------------------------------------------------------------------------


def index_sizes(services: Services) -> IndexSizes:
    with services.sessions() as session:
        documents, pages, vectors, without_text = repository.collection_sizes(session)
        failed_pages = repository.collection_failed_pages(session)
    return IndexSizes(documents, pages, vectors, failed_pages, without_text)


def indexed_models(services: Services) -> dict[tuple[str, str], list[tuple[str, int, int]]]:
    """(collection, retriever) → (model, dim, pages) of each model its vectors were made with: what each collection
    was indexed with, to hold against the configured models (`mmrag status`)."""
    with services.sessions() as session:
        return repository.collection_models(session)
