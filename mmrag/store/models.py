"""The SQL data model (SQLAlchemy 2 ORM): collections, documents and their paths, pages, embeddings, jobs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    LargeBinary,
    BigInteger,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite reuses the largest rowid after a delete unless AUTOINCREMENT is set; page ids are vector ids,
# so a reused id could meet a stale vector left by a crash. Never reuse them.
NO_ID_REUSE = {"sqlite_autoincrement": True}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Timestamp(TypeDecorator[datetime]):
    """DateTime(timezone=True) whose bind processing remembers its last value: a bulk statement binds the same
    `now` into every row, and SQLite's DateTime formats each one in Python (9% of a CLIP job's main thread)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        process = super().bind_processor(dialect)
        if process is None:
            return None
        last: tuple[Any, Any] = (None, None)

        def remembering(value: Any) -> Any:
            nonlocal last
            seen, result = last  # one tuple, swapped whole: threads sharing a statement read a consistent pair
            if value is seen and value is not None:  # datetimes are immutable: the same object formats the same
                return result
            result = process(value)
            last = (value, result)
            return result

        return remembering


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: Timestamp()}


class Collection(Base):
    __tablename__ = "collections"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Counts the changes to which pages are indexed (repository.bump_generation), in the same transaction as each:
    # whoever keeps something derived from them (the query service's BM25 index) reads one integer per query, not
    # the collection's pages, to know it is still current, whichever process wrote.
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("collection_id", "sha256"),
        Index("ix_documents_status", "status"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # image | pdf
    mime: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    page_count: Mapped[int | None] = mapped_column(Integer, default=None)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # The ingestion that settled it (mmrag.ingest.ingest_version()): a failed document whose version differs from
    # the running code's is tried again by the next job over its path. None: settled before versions were kept.
    ingest_version: Mapped[str | None] = mapped_column(String(100), default=None)
    user_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    indexed_at: Mapped[datetime | None] = mapped_column(default=None)

    paths: Mapped[list[DocumentPath]] = relationship(back_populates="document", cascade="all, delete-orphan")
    pages: Mapped[list[Page]] = relationship(
        back_populates="document", cascade="all, delete-orphan", order_by="Page.page_number"
    )
    failed_pages: Mapped[list[PageFailure]] = relationship(
        back_populates="document", cascade="all, delete-orphan", order_by="PageFailure.page_number"
    )


class DocumentPath(Base):
    """Where a document's bytes were seen; identical bytes at two paths are one document with two rows here."""

    __tablename__ = "document_paths"
    __table_args__ = (UniqueConstraint("collection_id", "path"), NO_ID_REUSE)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column()
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)

    document: Mapped[Document] = relationship(back_populates="paths")


class Page(Base):
    """A page of a PDF, or the single page of an image. Its id is the id of its vectors in every index."""

    __tablename__ = "pages"
    __table_args__ = (UniqueConstraint("document_id", "page_number"), NO_ID_REUSE)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    page_number: Mapped[int] = mapped_column(Integer)  # 1-based
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    image_path: Mapped[str | None] = mapped_column(Text, default=None)  # relative to the data dir
    text: Mapped[str] = mapped_column(Text, default="")
    # text_layer | none | the OCR path that gave the text (mmrag.ingest.text.ocr_page: "ocr", "ocr_smooth+rapid")
    text_source: Mapped[str] = mapped_column(String(32), default="none")
    # What drew a PDF page (pypdfium2 | pdf2image: the other one when the configured renderer refused it); None for
    # an image, and for pages indexed before renderers were recorded.
    renderer: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    document: Mapped[Document] = relationship(back_populates="pages")
    embeddings: Mapped[list[PageEmbedding]] = relationship(back_populates="page", cascade="all, delete-orphan")


class PageDate(Base):
    """A date a page's text holds (every reading of an ambiguous one, mmrag.analysis.page_dates): what the search
    filters date_from and date_to select on."""

    __tablename__ = "page_dates"
    __table_args__ = (Index("ix_page_dates_date", "date"),)

    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), primary_key=True)
    date: Mapped[date] = mapped_column(Date, primary_key=True)


class PageWords(Base):
    """Where a page's words are: mmrag.layout.encode_words of its words and their boxes, for search highlights and
    cited regions. A page indexed before word boxes were stored, or without text, has no row."""

    __tablename__ = "page_words"

    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), primary_key=True)
    words: Mapped[bytes] = mapped_column(LargeBinary)


class PageTag(Base):
    """A zero-shot tag of a photo (mmrag.tags): a label of its collection's list and its softmax share over the
    list, written with the photo's CLIP vector (or by a re-tag); what the search filter `tags` and tag counts use."""

    __tablename__ = "page_tags"
    __table_args__ = (Index("ix_page_tags_tag", "tag"),)

    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)
    score: Mapped[float] = mapped_column(Float)


class TagLabel(Base):
    """A collection's own label list for tags (`mmrag tag --labels`), in order; none: the settings' list."""

    __tablename__ = "tag_labels"

    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(100))


class Caption(Base):
    """A VLM's alt text for a page's content (mmrag.captions), keyed by what the page is, not where: its document's
    sha256 and its page number (1 for a photo). A copy of a file in another collection or at another path is the
    same key, so it is never described twice, and a page indexed later with these bytes has its caption at once.
    A page's caption is searchable: BM25 indexes it with the page's text (repository.page_texts)."""

    __tablename__ = "captions"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    page_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    caption: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)  # the answerer that wrote it: "openai:qwen2.5-vl", "transformers:..."
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PageFailure(Base):
    """A page of an indexed document that could not be had (neither renderer drew it, or its size is absurd): the
    document's other pages are indexed, and this says which one is missing and why."""

    __tablename__ = "page_failures"
    __table_args__ = (UniqueConstraint("document_id", "page_number"), NO_ID_REUSE)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    page_number: Mapped[int] = mapped_column(Integer)  # 1-based
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    document: Mapped[Document] = relationship(back_populates="failed_pages")


class PageEmbedding(Base):
    """Which embedder (retriever), model and revision put this page's vectors into which store."""

    __tablename__ = "page_embeddings"
    __table_args__ = (UniqueConstraint("page_id", "retriever"), Index("ix_page_embeddings_retriever", "retriever"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"))
    retriever: Mapped[str] = mapped_column(String(32))  # clip | colpali | text
    model: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(String(100), default="")
    dim: Mapped[int] = mapped_column(Integer)
    n_vectors: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    page: Mapped[Page] = relationship(back_populates="embeddings")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    roots: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"paths": [...]} as given
    retrievers: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"on": [...], "off": {name: reason}}
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # A done job's final counts (repository.job_counts), kept here because its unchanged items are then deleted:
    # a folder re-indexed daily would otherwise leave a row per file per run for good. None while it runs.
    counts: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)

    items: Mapped[list[JobItem]] = relationship(back_populates="job", cascade="all, delete-orphan")


class JobItem(Base):
    """One file of a job; its state lets a killed job resume where it stopped."""

    __tablename__ = "job_items"
    __table_args__ = (UniqueConstraint("job_id", "path"), Index("ix_job_items_job_state", "job_id", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    document_id: Mapped[int | None] = mapped_column(
        ForeignKey("documents.id", ondelete="SET NULL"), default=None
    )
    pages: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    job: Mapped[Job] = relationship(back_populates="items")
