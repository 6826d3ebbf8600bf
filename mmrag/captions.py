"""Captions (alt text) of pages: the configured VLM answerer says what a page shows, once per content, searchably.

    describe_page(services, answerer, page_id, collections=None, force=False)    → Described (POST .../describe)
    describe_pages(services, answerer, collection=..., page_ids=..., limit=..., force=..., on_page=...)
                                                                                → DescribeReport (`mmrag describe`)

A caption belongs to a page's content, not to the page row: it is keyed by the page's document's sha256 and its page
number (1 for a photo; a PDF page is its document's bytes and its number, whatever DPI drew it). A copy of a file,
at another path or in another collection, is the same key, so it is never described twice (`force` describes it
again), and a copy indexed later has its caption the moment it is indexed. The answerer must describe images
(protocols.Describes: the transformers and openai ones); the extractive one has no model, and asking it raises
CaptionsUnavailableError (the API's 503).

Captions are searchable text: BM25 indexes a page's text and its caption (repository.page_texts). Writing one is a
writer's change: its transaction moves the generation of every collection holding that content, then each of those
collections' BM25 indexes the pages again under its writer lock (DerivedIndexes.rewrite_lexical), since a page
that already had text keeps its id and a reader could not tell otherwise. A collection busy with a job is left to
its readers (they add newly captioned photos by following SQL) and logged. The dense text retriever does not embed
captions: its vectors are made by index jobs, and re-embedding pages from here is a job's work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mmrag.errors import CaptionsUnavailableError, CollectionBusyError, NotFoundError
from mmrag.protocols import Describes
from mmrag.store import repository
from mmrag.store.db import transaction

if TYPE_CHECKING:
    from PIL import Image

    from mmrag.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Described:
    page_id: int
    caption: str
    model: str  # the answerer that wrote it
    cached: bool  # found for its content, not written now


@dataclass(frozen=True)
class DescribeReport:
    pages: list[Described] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (page id, why): no stored image, unreadable

    @property
    def described(self) -> int:
        """Pages the model described now."""
        return sum(1 for page in self.pages if not page.cached)

    @property
    def cached(self) -> int:
        return sum(1 for page in self.pages if page.cached)


def captioner(answerer: object) -> Describes:
    """The answerer as one that describes images, or CaptionsUnavailableError naming it."""
    if not isinstance(answerer, Describes):
        raise CaptionsUnavailableError(str(getattr(answerer, "name", type(answerer).__name__)))
    return answerer


def describe_page(
    services: Services,
    answerer: object,
    page_id: int,
    collections: Container[str] | None = None,
    *,
    force: bool = False,
) -> Described:
    """The caption of one indexed page: its content's cached one, else the model's, written and made searchable.
    `collections` (an API key's scope; None: any) hides other collections' pages as if they did not exist."""
    describer = captioner(answerer)
    with services.sessions() as session:
        target = repository.caption_targets(session, [page_id]).get(page_id)
        names = repository.collection_names(session, [target.collection_id]) if target is not None else {}
    if target is None or (collections is not None and names[target.collection_id] not in collections):
        raise NotFoundError(f"page {page_id} does not exist")
    described = _describe(services, describer, target, force=force)
    if not described.cached:
        _make_searchable(services, [(target.sha256, target.page_number)])
    return described


def describe_pages(
    services: Services,
    answerer: object,
    *,
    collection: str | None = None,
    page_ids: Sequence[int] = (),
    limit: int | None = None,
    force: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_page: Callable[[Described | None], None] | None = None,
    searchable_every: int = 32,
) -> DescribeReport:
    """Describe pages: `page_ids` (of `collection` when one is given), else the photos of `collection` (default:
    "default") whose content has no caption; at most `limit`. `on_start(total)` then `on_page(Described, or None
    for a page that failed)` report progress. Captions are written one page at a time (a run cut short keeps what
    it wrote, and running it again goes on from there) and made searchable every `searchable_every` pages.

    A failure of the answer server (AnswererError) ends the run: every following page would fail the same way."""
    describer = captioner(answerer)
    with services.sessions() as session:
        collection_id = None
        if collection is not None or not page_ids:
            collection_id = repository.get_collection(session, collection or "default").id
        if page_ids:
            targets = repository.caption_targets(session, page_ids)
            missing = [i for i in page_ids if i not in targets or (
                collection_id is not None and targets[i].collection_id != collection_id)]
            if missing:
                where = f" in collection {collection!r}" if collection_id is not None else ""
                raise NotFoundError(f"no indexed page {', '.join(map(str, missing[:10]))}{where}")
            ids = list(dict.fromkeys(page_ids))[:limit]
        else:
            assert collection_id is not None
            ids = repository.photos_to_describe(session, collection_id, limit=limit if limit is not None else 2**62)
            targets = repository.caption_targets(session, ids)
    if on_start is not None:
        on_start(len(ids))
    report = DescribeReport()
    written: list[tuple[str, int]] = []
    try:
        for page_id in ids:
            target = targets[page_id]
            try:
                described = _describe(services, describer, target, force=force)
            except (NotFoundError, OSError) as exc:  # this page's image: the others may be fine
                log.warning("page %s not described: %s", page_id, exc)
                report.failed.append((page_id, str(exc)))
                if on_page is not None:
                    on_page(None)
                continue
            report.pages.append(described)
            if not described.cached:
                written.append((target.sha256, target.page_number))
            if len(written) >= searchable_every:
                _make_searchable(services, written)
                written = []
            if on_page is not None:
                on_page(described)
    finally:
        _make_searchable(services, written)  # what was written is searchable, whatever ended the run
    log.info("described %d pages (%d from cache, %d failed)", report.described, report.cached, len(report.failed))
    return report


def _describe(
    services: Services, describer: Describes, target: repository.CaptionTarget, *, force: bool
) -> Described:
    """The caption of the target's content: cached, or the model's, written (with the generation of every
    collection holding that content moved) in one transaction."""
    key = (target.sha256, target.page_number)
    if not force:
        with services.sessions() as session:
            cached = repository.get_caption(session, *key)
            if cached is not None:
                return Described(target.page_id, cached.caption, cached.model, cached=True)
    with _page_image(services, target) as image:
        caption = describer.describe(image)
    with transaction(services.sessions) as session:
        repository.set_caption(session, *key, caption, describer.name)
        for collection_id in repository.pages_with_content(session, [key]):
            repository.bump_generation(session, collection_id)
    log.info("page %s (%s p.%d) described by %s: %r", target.page_id, target.sha256[:12], target.page_number,
             describer.name, caption)  # fmt: skip
    return Described(target.page_id, caption, describer.name, cached=False)


def _page_image(services: Services, target: repository.CaptionTarget) -> Image.Image:
    """The page's stored image, opened (a context manager); NotFoundError when it has none inside the data dir."""
    from PIL import Image

    root = services.storage_dir.resolve()
    path = (root / target.image_path).resolve() if target.image_path else None
    if path is None or not path.is_relative_to(root) or not path.is_file():
        raise NotFoundError(f"page {target.page_id} has no stored image to describe")
    return Image.open(path)


def _make_searchable(services: Services, keys: Iterable[tuple[str, int]]) -> None:
    """Every collection holding a page of these contents indexes those pages' text again (with their captions),
    as that collection's writer."""
    from mmrag.indexing.run import collection_writer

    keys = list(keys)
    if not keys:
        return
    with services.sessions() as session:
        affected = repository.pages_with_content(session, keys)
        names = repository.collection_names(session, list(affected))
    for collection_id, page_ids in affected.items():
        try:
            with collection_writer(services, collection_id, names[collection_id]):
                services.collections.derived.rewrite_lexical(collection_id, page_ids)
        except CollectionBusyError:
            log.warning("collection %r is being written by another process: its BM25 takes the new captions of "
                        "%d pages when it next follows SQL (photos) or `mmrag describe --force` runs again",
                        names[collection_id], len(page_ids))  # fmt: skip
