"""Plain frozen dataclasses passed between mmrag's parts (pydantic lives only at the HTTP edge)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path

from PIL import Image

from mmrag.layout import Region, Word


class DocumentKind(StrEnum):
    IMAGE = "image"
    PDF = "pdf"


class DocumentStatus(StrEnum):
    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"
    DELETED = "deleted"


class TextSource(StrEnum):
    """Where a page's text came from. An OCR'd page records the path that gave it (mmrag.ingest.text.ocr_page):
    the winning Tesseract reading ("ocr", or "ocr_block", "ocr_faint", "ocr_smooth", "ocr_crop" when a reading
    again won), then "+block" when lines of a one-block reading were added, "+rapid" when lines of the second
    engine's were: "ocr_smooth+block+rapid"."""

    TEXT_LAYER = "text_layer"
    OCR = "ocr"
    NONE = "none"


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ItemState(StrEnum):
    PENDING = "pending"
    INDEXED = "indexed"
    UNCHANGED = "unchanged"
    DUPLICATE = "duplicate"  # a new path for bytes already indexed: recorded on the existing document
    FAILED = "failed"


@dataclass(frozen=True)
class SourceFile:
    """A file found on disk, sniffed and hashed."""

    path: Path
    sha256: str
    size: int
    mtime: float
    kind: DocumentKind
    mime: str


@dataclass(frozen=True)
class PageContent:
    """One decoded page: the image to embed and its text."""

    page_number: int  # 1-based
    image: Image.Image
    text: str
    text_source: str  # a TextSource, or the OCR path that gave the text (see TextSource)
    renderer: str | None = None  # what drew a PDF page (mmrag.ingest.pdf.PDF_RENDERERS); None for an image
    words: tuple[Word, ...] = field(default=(), repr=False)  # where the text's words are on the image


@dataclass(frozen=True)
class Hit:
    page_id: int
    score: float


@dataclass(frozen=True)
class Tag:
    """A zero-shot tag of a photo (mmrag.tags): a label and its softmax share (0-1) over its collection's labels."""

    name: str
    score: float


@dataclass(frozen=True)
class SearchResult:
    page_id: int
    document_id: int
    page_number: int
    path: str
    score: float
    retriever: str
    text: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    # its document's name to show: the file name an upload was sent with, else its path's last part
    name: str = ""
    tags: tuple[Tag, ...] = ()  # its zero-shot tags, best first (photos only)
    caption: str | None = None  # what a VLM said is on it (mmrag.captions): its alt text; None until described


@dataclass(frozen=True)
class PatchGrid:
    """Where a late-interaction model's image-patch vectors sit in a page's stored token sequence, and how they
    tile the page: `positions[r * cols + c]` is the token of the patch in grid row r, column c (row-major, top-left
    first). `length` is the page's whole sequence (patches plus prompt tokens), which a stored page must match."""

    positions: tuple[int, ...]
    rows: int
    cols: int
    length: int


@dataclass(frozen=True)
class RetrievedPage:
    """A page handed to an answerer: its text for quoting and its stored image for a VLM."""

    page_id: int
    document_id: int
    page_number: int
    path: str
    score: float
    text: str
    image_path: Path | None  # absolute path of the stored page image
    words: tuple[Word, ...] = field(default=(), repr=False)  # where its words are on the image (none: not stored)
    words_source: str = "ocr"  # what read them: ocr | text_layer (a Region's source)
    # Where a late-interaction retriever's similarity map for the question points (source similarity_map): given
    # for a page without words, whose citations have no words to be located in.
    looked_at: tuple[Region, ...] = field(default=(), repr=False)
    name: str = ""  # its document's name to show (SearchResult.name)


@dataclass(frozen=True)
class Citation:
    document_id: int
    page_id: int
    page_number: int
    path: str
    score: float
    quote: str
    regions: tuple[Region, ...] = ()  # where the quote is on the page (mmrag.layout.locate)
    name: str = ""  # its document's name to show (SearchResult.name)


@dataclass(frozen=True)
class Answer:
    text: str
    citations: list[Citation]
    supported: bool  # False: the retrieved pages do not answer the question
    answerer: str  # e.g. "extractive", "openai:qwen2.5-vl", "transformers:HuggingFaceTB/SmolVLM-Instruct"
    # The value the question asks for (an amount, a date) where the answerer read one: what the text leads with,
    # and what exact match is scored on. "" when the question asks for no value or none was found.
    value: str = ""


@dataclass(frozen=True)
class SearchFilters:
    kind: str | None = None  # image | pdf
    path_prefix: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)  # user metadata key = value, all must match
    indexed_after: datetime | None = None
    indexed_before: datetime | None = None
    date_from: date | None = None  # pages holding a date in date_from..date_to (inclusive; either may be open)
    date_to: date | None = None
    tags: tuple[str, ...] = ()  # pages holding every one of these tags (mmrag.tags; all-of, so choices narrow)
