"""The HTTP edge's pydantic models (requests and responses) and the mapping from mmrag's plain types onto them."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    TypeAdapter,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from mmrag.documents import DocumentInfo, DocumentPages, FailedPage, PageHit
from mmrag.errors import ConfigError
from mmrag.jobs import JobStatus
from mmrag.layout import Region
from mmrag.near_duplicates import SimilarPages
from mmrag.retrievers import RETRIEVERS
from mmrag.types import Answer, Citation, RetrievedPage, SearchFilters


def _clean(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded for any database: refuse both here,
    # as a 422 naming the field, instead of failing deep in a query.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return value


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # SQLite drops the zone; we wrote UTC


Text = Annotated[str, AfterValidator(_clean)]
NonBlank = Annotated[str, StringConstraints(min_length=1, max_length=2000), AfterValidator(_clean)]
CollectionName = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_clean)]
MetadataKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
# An encrypted PDF's password: never echoed (a 422 names the field and the rule it breaks, not the value)
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_clean)]


class _RetrieverName:
    """A retriever's name, checked against the registry (mmrag.retrievers) when a request is validated and listed
    as the schema's enum when the OpenAPI document is built, so a retriever registered by a plug-in is served and
    documented with no change here."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(cls._check, core_schema.str_schema())

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "enum": RETRIEVERS.names()}

    @staticmethod
    def _check(value: str) -> str:
        try:
            RETRIEVERS.check([value])
        except ConfigError as exc:  # pydantic turns a ValueError into a 422 naming the field
            raise ValueError(str(exc)) from None
        return value


Retriever = Annotated[str, _RetrieverName]
Kind = Literal["image", "pdf"]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Question = Annotated[NonBlank, AfterValidator(_not_blank)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors --------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    type: str = Field(description="stable snake_case error kind, e.g. not_found, too_large, invalid")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


# --- search --------------------------------------------------------------------------------------------------


Metadata = Annotated[dict[MetadataKey, Annotated[Text, StringConstraints(max_length=1000)]], Field(max_length=20)]
METADATA = TypeAdapter(Metadata)
TagName = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_clean)]


class Filters(Strict):
    kind: Kind | None = None
    path_prefix: Annotated[Text, StringConstraints(max_length=4096)] | None = Field(
        None, description="only documents seen at a path starting with this"
    )
    metadata: Metadata = Field(default_factory=dict, description="user metadata fields that must all be equal")
    indexed_after: UtcDatetime | None = Field(None, description="ISO 8601; a time without a zone is UTC")
    indexed_before: UtcDatetime | None = None
    date_from: date | None = Field(
        None, description="only pages whose text holds a date on or after this one (YYYY-MM-DD; dates are read "
        "from the page as printed, every reading of an ambiguous one such as 03/04/2018)"
    )
    date_to: date | None = Field(None, description="only pages whose text holds a date on or before this one")
    tags: list[TagName] = Field(
        default_factory=list, max_length=20,
        description="only photos holding every one of these zero-shot tags (all-of: a second tag narrows; "
        "GET /v1/tags counts the tags of what a filter keeps)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Filters:
        if self.date_from is not None and self.date_to is not None and self.date_from > self.date_to:
            raise ValueError("date_from is after date_to")
        return self

    def to_library(self) -> SearchFilters:
        return SearchFilters(
            kind=self.kind,
            path_prefix=self.path_prefix,
            metadata=dict(self.metadata),
            indexed_after=self.indexed_after,
            indexed_before=self.indexed_before,
            date_from=self.date_from,
            date_to=self.date_to,
            tags=tuple(dict.fromkeys(" ".join(tag.split()) for tag in self.tags)),
        )


class SearchRequest(Strict):
    query: Question
    collections: list[CollectionName] | None = Field(
        None, max_length=20, description="default: every collection the caller may read"
    )
    k: int = Field(10, ge=1, le=100)
    offset: int = Field(0, ge=0, le=1000)
    retrievers: list[Retriever] | None = Field(None, max_length=32, description="default: every loaded retriever")
    filters: Filters = Field(default_factory=Filters)
    highlight: bool = Field(
        True, description="give each hit the boxes of its words that match the query and where its similarity map "
        "points"
    )


class RegionOut(BaseModel):
    """A rectangle of a page image: (x0, y0, x1, y1), each 0-1 of the page image's width and height, origin at its
    top-left corner (the same for the full image and its thumbnail)."""

    box: tuple[float, float, float, float]
    source: str = Field(description="what located it: ocr | text_layer (word boxes) | similarity_map")
    score: float = Field(
        description="0-1: how well it matches (1 for a word matching a query term; a similarity map's best patch "
        "similarity)"
    )
    text: str = Field("", description="the words it holds")


def region(r: Region) -> RegionOut:
    return RegionOut(box=tuple(round(v, 5) for v in r.box), source=r.source, score=r.score, text=r.text)


class TagOut(BaseModel):
    """A zero-shot tag of a photo: a label of its collection's list and its share of CLIP's softmax over the list."""

    name: str
    score: float = Field(description="0-1, the label's softmax share over the collection's labels")


class TagCountOut(BaseModel):
    tag: str
    count: int = Field(description="indexed pages holding the tag among those the filters keep")


class TagCounts(BaseModel):
    tags: list[TagCountOut] = Field(description="most first, then by name")
    meaningless: bool = Field(description="true under the tiny-random profile: tags carry no meaning")


class SearchHit(BaseModel):
    page_id: int
    document_id: int
    collection: str
    page_number: int
    path: str
    name: str = Field("", description="the document's name to show: the file name it was uploaded as, else the last "
                      "part of its path (an upload's path is its content digest)")
    score: float = Field(description="fused score (weighted reciprocal-rank fusion)")
    scores: dict[str, float] = Field(description="each retriever's own score for this page")
    snippet: str
    image_url: str
    thumbnail_url: str
    highlights: list[RegionOut] = Field(
        default_factory=list,
        description="boxes of the page's words that match a text query (through the lexical analyzer: words, dates "
        "however written, amounts; source ocr or text_layer), then the regions a late-interaction retriever's "
        "similarity map points at (source similarity_map, score its best patch's similarity; colpali, at most 3); "
        "empty for an image query and with highlight=false; no word boxes for a page indexed before they were "
        "stored",
    )
    tags: list[TagOut] = Field(
        default_factory=list, description="its zero-shot tags, best first (photos only; none when CLIP is off)"
    )
    caption: str | None = Field(
        None, description="what the VLM said is on the page (POST /v1/pages/{id}/describe): its alt text; null until "
        "it is described"
    )


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    k: int
    offset: int
    meaningless: bool = Field(description="true under the tiny-random profile: scores carry no meaning")


# --- ask -----------------------------------------------------------------------------------------------------


class AskRequest(Strict):
    question: Question
    collections: list[CollectionName] | None = Field(None, max_length=20)
    k: int = Field(5, ge=1, le=20, description="pages retrieved and shown to the answerer")
    retrievers: list[Retriever] | None = Field(None, max_length=32)
    filters: Filters = Field(default_factory=Filters)
    stream: bool = Field(False, description="answer as Server-Sent Events: retrieved, token..., answer")


class CitationOut(BaseModel):
    document_id: int
    page_id: int
    page_number: int
    path: str
    name: str = Field("", description="the document's name to show: the file name it was uploaded as, else the last "
                      "part of its path (an upload's path is its content digest)")
    score: float
    quote: str = Field(description="text of the cited page that supports the answer; empty when none does")
    image_url: str
    regions: list[RegionOut] = Field(
        default_factory=list,
        description="where the quote is on the page: one box per line of it, located among the page's word boxes "
        "(a fuzzy match, scored by the share of the quote's words found); empty when the page has no word boxes",
    )


class RetrievedPageOut(BaseModel):
    page_id: int
    document_id: int
    page_number: int
    path: str
    name: str = Field("", description="the document's name to show: the file name it was uploaded as, else the last "
                      "part of its path (an upload's path is its content digest)")
    score: float
    image_url: str
    thumbnail_url: str


class AskResponse(BaseModel):
    answer: str
    supported: bool = Field(description="false: the indexed pages do not answer the question")
    answerer: str
    citations: list[CitationOut]
    pages: list[RetrievedPageOut] = Field(description="the pages retrieved for the question, best first")
    meaningless: bool


# --- documents, pages, jobs ----------------------------------------------------------------------------------


class DocumentOut(BaseModel):
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
    created_at: UtcDatetime
    indexed_at: UtcDatetime | None


class PageOut(BaseModel):
    id: int
    page_number: int
    width: int
    height: int
    text_source: str
    renderer: str | None = Field(
        description="what drew a PDF page: pypdfium2, or pdf2image (poppler) where PDFium could not; null for an "
        "image and for pages indexed before renderers were recorded"
    )
    image_url: str | None
    thumbnail_url: str | None


class FailedPageOut(BaseModel):
    page_number: int = Field(description="1-based")
    reason: str


class SimilarPageOut(BaseModel):
    page_id: int
    document_id: int
    page_number: int
    path: str
    name: str = Field("", description="the document's name to show: the file name it was uploaded as, else the last "
                      "part of its path")
    similarity: float = Field(description="cosine similarity of the two pages' CLIP image vectors")
    image_url: str
    thumbnail_url: str


class SimilarPagesOut(BaseModel):
    page_id: int
    collection: str
    threshold: float = Field(description="the cosine similarity every listed page reaches at least")
    pages: list[SimilarPageOut] = Field(description="most similar first; the page itself is not listed")
    meaningless: bool = Field(description="true under the tiny-random profile: similarities carry no meaning")


class CaptionOut(BaseModel):
    page_id: int
    caption: str = Field(description="alt text: one or two plain sentences saying what the page shows; searchable")
    model: str = Field(description="the answerer that wrote it")
    cached: bool = Field(description="true: its content (the same file, anywhere) was described before; no model ran")


class DocumentDetail(DocumentOut):
    pages: list[PageOut]
    failed_pages: list[FailedPageOut] = Field(
        description="pages that could not be had (neither renderer drew them, or their size is absurd); the other "
        "pages are indexed, and page_count counts both"
    )
    renderers: dict[str, int] = Field(description="renderer → how many of the pages it drew")


class DocumentList(BaseModel):
    items: list[DocumentOut]
    total: int
    limit: int
    offset: int


class Deleted(BaseModel):
    document_id: int
    status: Literal["deleted"] = "deleted"


class UploadedFile(BaseModel):
    name: str
    sha256: str
    size_bytes: int
    kind: str
    mime: str


class UploadAccepted(BaseModel):
    job_id: int
    collection: str
    files: list[UploadedFile]
    status_url: str = Field(description="poll this until state is done or failed")


class JobRequest(Strict):
    root: Annotated[Text, StringConstraints(min_length=1, max_length=100)] = Field(
        description="name of a server-side folder in MMRAG_API__JOB_ROOTS"
    )
    path: Annotated[Text, StringConstraints(max_length=4096)] = Field(
        "", description="file or folder relative to the root; empty: the whole root"
    )
    collection: CollectionName = "default"


class JobAccepted(BaseModel):
    job_id: int
    collection: str
    status_url: str


class JobFailure(BaseModel):
    path: str
    reason: str


class JobItemOut(BaseModel):
    path: str
    state: str
    document_id: int | None
    pages: int
    error: str | None
    attempts: int = Field(description="runs of the job that took this file up (a resumed job counts again)")
    failed_pages: list[FailedPageOut] = Field(
        description="the pages its document could not have (the others are indexed)"
    )


class JobOut(BaseModel):
    id: int
    collection: str
    state: str = Field(description="pending | running | done | failed")
    counts: dict[str, int] = Field(
        description="files per state (pending, indexed, unchanged, duplicate, failed), `pages` indexed, "
        "`failed_pages`: pages the documents it indexed could not have, and `pages_without_text`: pages it indexed "
        "that have no text (photos, and pages OCR read nothing on; search finds them by image only)"
    )
    failures: list[JobFailure]
    retrievers_on: list[str]
    retrievers_off: dict[str, str]
    error: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    items: list[JobItemOut]
    items_total: int


# --- health --------------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ModelInUse(BaseModel):
    model: str
    why: str = Field(description="why this model: set in the settings, or the default for the device")


class Ready(BaseModel):
    status: Literal["ready", "unavailable"]
    database: bool
    database_error: str | None = None
    vector_backend: str | None = Field(None, description="where the vectors are: local files, or a Qdrant")
    vector_backend_error: str | None = Field(None, description="why the vector backend cannot serve now")
    retrievers_on: list[str]
    retrievers_off: dict[str, str]
    models: dict[str, ModelInUse] = Field(default_factory=dict, description="each model retriever's model, and why")
    answerer: str | None
    answerer_off: str | None = Field(None, description="why the configured answerer is not the one in use")
    meaningless: bool


# --- mapping from mmrag's types ------------------------------------------------------------------------------


class Urls:
    """Builds the URLs responses carry, under the app's root path (set when it is mounted behind a prefix)."""

    def __init__(self, root_path: str = "") -> None:
        self.root = root_path.rstrip("/")

    def page_image(self, page_id: int) -> str:
        return f"{self.root}/v1/pages/{page_id}/image"

    def thumbnail(self, page_id: int) -> str:
        return f"{self.root}/v1/pages/{page_id}/image?size=thumbnail"

    def job(self, job_id: int) -> str:
        return f"{self.root}/v1/jobs/{job_id}"


def search_hit(hit: PageHit, urls: Urls) -> SearchHit:
    r = hit.result
    return SearchHit(
        page_id=r.page_id,
        document_id=r.document_id,
        collection=hit.collection,
        page_number=r.page_number,
        path=r.path,
        name=r.name,
        score=r.score,
        scores=r.scores,
        snippet=hit.snippet,
        image_url=urls.page_image(r.page_id),
        thumbnail_url=urls.thumbnail(r.page_id),
        highlights=[region(h) for h in hit.highlights],
        tags=[TagOut(name=t.name, score=round(t.score, 5)) for t in r.tags],
        caption=r.caption,
    )


def citation(c: Citation, urls: Urls) -> CitationOut:
    return CitationOut(
        document_id=c.document_id,
        page_id=c.page_id,
        page_number=c.page_number,
        path=c.path,
        name=c.name,
        score=c.score,
        quote=c.quote,
        image_url=urls.page_image(c.page_id),
        regions=[region(r) for r in c.regions],
    )


def retrieved_page(page: RetrievedPage, urls: Urls) -> RetrievedPageOut:
    return RetrievedPageOut(
        page_id=page.page_id,
        document_id=page.document_id,
        page_number=page.page_number,
        path=page.path,
        name=page.name,
        score=page.score,
        image_url=urls.page_image(page.page_id),
        thumbnail_url=urls.thumbnail(page.page_id),
    )


def ask_response(answer: Answer, pages: list[RetrievedPage], urls: Urls, *, meaningless: bool) -> AskResponse:
    return AskResponse(
        answer=answer.text,
        supported=answer.supported,
        answerer=answer.answerer,
        citations=[citation(c, urls) for c in answer.citations],
        pages=[retrieved_page(p, urls) for p in pages],
        meaningless=meaningless,
    )


def document(info: DocumentInfo) -> DocumentOut:
    return DocumentOut(**_fields(info))


def document_detail(found: DocumentPages, urls: Urls) -> DocumentDetail:
    return DocumentDetail(
        **_fields(found.document),
        pages=[
            PageOut(
                id=p.id,
                page_number=p.page_number,
                width=p.width,
                height=p.height,
                text_source=p.text_source,
                renderer=p.renderer,
                image_url=urls.page_image(p.id) if p.has_image else None,
                thumbnail_url=urls.thumbnail(p.id) if p.has_image else None,
            )
            for p in found.pages
        ],
        failed_pages=failed_pages_out(found.failed_pages),
        renderers=found.renderers,
    )


def failed_pages_out(pages: list[FailedPage]) -> list[FailedPageOut]:
    return [FailedPageOut(page_number=p.page_number, reason=p.reason) for p in pages]


def similar_pages(found: SimilarPages, urls: Urls, *, meaningless: bool) -> SimilarPagesOut:
    return SimilarPagesOut(
        page_id=found.page_id,
        collection=found.collection,
        threshold=found.threshold,
        pages=[
            SimilarPageOut(
                page_id=p.page_id, document_id=p.document_id, page_number=p.page_number, path=p.path, name=p.name,
                similarity=round(p.similarity, 6), image_url=urls.page_image(p.page_id),
                thumbnail_url=urls.thumbnail(p.page_id),
            )
            for p in found.pages
        ],
        meaningless=meaningless,
    )


def _fields(info: DocumentInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in DocumentOut.model_fields}


def job(status: JobStatus) -> JobOut:
    return JobOut(
        id=status.id,
        collection=status.collection,
        state=status.state,
        counts=status.counts,
        failures=[JobFailure(path=path, reason=reason) for path, reason in status.failures],
        retrievers_on=status.retrievers_on,
        retrievers_off=status.retrievers_off,
        error=status.error,
        created_at=status.created_at,
        started_at=status.started_at,
        finished_at=status.finished_at,
        items=[
            JobItemOut(**{**vars(item), "failed_pages": failed_pages_out(item.failed_pages)}) for item in status.items
        ],
        items_total=status.items_total,
    )


# --- OpenAPI: error responses ----------------------------------------------------------------------------------

_ERROR_DESCRIPTIONS = {
    400: "bad request (e.g. an unknown retriever or job root)",
    401: "an API key is required, or the one given is not valid",
    403: "the API key may not use that collection",
    404: "no such document, page, job or collection (or not the caller's)",
    413: "request, upload or image too large",
    415: "unsupported media type or file type",
    422: "invalid request or unusable file",
    502: "the answer server (vLLM and the like) refused the request or sent a broken reply",
    503: "a model or part the request needs is not loaded",
    504: "the answer server did not reply in time",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an operation can answer, all with the ErrorBody schema.

    Listing 422 here also stops FastAPI from documenting its own validation body, which we never send.
    """
    return {code: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[code]} for code in codes}
