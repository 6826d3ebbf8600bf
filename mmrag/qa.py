"""Question answering over the index: retrieve pages for a question, answer from them, keep only honest citations.

Used by the API (`POST /v1/ask`) and the CLI (`mmrag ask`). Retrieval happens here, in the library, so both get
the same pages for the same question, and so an answerer is only ever shown pages that were retrieved.

Whatever an answerer returns, `check_citations` holds it to the retrieved pages: a citation of a page that was not
retrieved is dropped (and its `[n]` marker with it), a quote the cited page's text does not contain is blanked, and
an answer left with no citation is not supported.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from mmrag.answer.prompt import NOT_ANSWERED, not_answered
from mmrag.layout import Region, locate, value_region
from mmrag.protocols import Answerer
from mmrag.retrieval import retrieved_pages, search
from mmrag.services import Services
from mmrag.types import Answer, Citation, RetrievedPage, SearchFilters

log = logging.getLogger(__name__)

# Called with ("retrieval" | "generation", seconds); the API feeds its metrics from it.
Observer = Callable[[str, float], None]


@dataclass(frozen=True)
class Retrieved:
    """First event of a streamed answer: the pages the answer may use."""

    pages: list[RetrievedPage]


@dataclass(frozen=True)
class Token:
    """A piece of the answer text as it is generated."""

    text: str


@dataclass(frozen=True)
class Answered:
    """Last event: the whole answer with its checked citations."""

    answer: Answer


AskEvent = Retrieved | Token | Answered

__all__ = [
    "NOT_ANSWERED",
    "Answered",
    "AskEvent",
    "Observer",
    "Retrieved",
    "Token",
    "ask",
    "ask_stream",
    "check_citations",
    "retrieve",
]


def retrieve(
    services: Services,
    question: str,
    collections: Sequence[str],
    *,
    k: int = 5,
    filters: SearchFilters | None = None,
    retrievers: Sequence[str] | None = None,
    observe: Observer | None = None,
) -> list[RetrievedPage]:
    """The top `k` pages of `collections` for `question`, as answerer input (text + stored image path)."""
    if not collections:
        return []
    began = time.perf_counter()
    results = search(services, collections, text=question, k=k, filters=filters, retrievers=retrievers)
    pages = retrieved_pages(services, results, question)
    if observe is not None:
        observe("retrieval", time.perf_counter() - began)
    return pages


def ask(
    services: Services,
    answerer: Answerer,
    question: str,
    collections: Sequence[str],
    *,
    k: int = 5,
    filters: SearchFilters | None = None,
    retrievers: Sequence[str] | None = None,
    observe: Observer | None = None,
) -> tuple[Answer, list[RetrievedPage]]:
    """Retrieve, answer, check the citations; returns the answer and the pages it was given."""
    pages = retrieve(services, question, collections, k=k, filters=filters, retrievers=retrievers, observe=observe)
    if not pages:
        return not_answered(answerer.name), pages
    began = time.perf_counter()
    answer = answerer.answer(question, pages)
    if observe is not None:
        observe("generation", time.perf_counter() - began)
    return check_citations(answer, pages), pages


def ask_stream(
    services: Services,
    answerer: Answerer,
    question: str,
    collections: Sequence[str],
    *,
    k: int = 5,
    filters: SearchFilters | None = None,
    retrievers: Sequence[str] | None = None,
    observe: Observer | None = None,
) -> Iterator[AskEvent]:
    """Retrieved (the pages), then Token events as the answerer writes, then Answered (checked) last.

    Retrieval runs when the first event is asked for, so a caller can pull that event before committing to a
    streamed response and still report a bad request (unknown collection, bad filter) as an error.
    """
    pages = retrieve(services, question, collections, k=k, filters=filters, retrievers=retrievers, observe=observe)
    yield Retrieved(pages)
    if not pages:
        yield Answered(not_answered(answerer.name))
        return
    began = time.perf_counter()
    final: Answer | None = None
    for item in answerer.stream(question, pages):
        if isinstance(item, Answer):
            final = item
            break
        if item:
            yield Token(item)
    if observe is not None:
        observe("generation", time.perf_counter() - began)
    if final is None:
        log.error("answerer %s ended its stream without an Answer; treating it as not answered", answerer.name)
        final = not_answered(answerer.name)
    yield Answered(check_citations(final, pages))


_MARKER = re.compile(r"\s*\[(\d+)\]")


def check_citations(answer: Answer, pages: Sequence[RetrievedPage]) -> Answer:
    """`answer` with only citations of retrieved pages, each described from the retrieved page itself.

    Markers `[n]` in the text refer to citations[n - 1] (the answerers' contract); when a citation goes, its
    markers go and the rest are renumbered so every marker still points at the citation it meant.
    """
    if not answer.supported:
        return replace(answer, citations=[]) if answer.citations else answer
    by_id = {page.page_id: page for page in pages}
    kept: list[Citation] = []
    new_number: dict[int, int] = {}
    for number, citation in enumerate(answer.citations, start=1):
        page = by_id.get(citation.page_id)
        if page is None:
            log.warning("%s cited page %s, which was not retrieved; dropped", answer.answerer, citation.page_id)
            continue
        quote = citation.quote if _quoted_from(citation.quote, page.text) else ""
        if citation.quote and not quote:
            log.warning("%s quoted text page %s does not hold; quote dropped", answer.answerer, page.page_id)
        kept.append(
            Citation(
                document_id=page.document_id,
                page_id=page.page_id,
                page_number=page.page_number,
                path=page.path,
                score=page.score,
                quote=quote,
                regions=_regions(quote, page, answer.value if not kept else ""),
                name=page.name,
            )
        )
        new_number[number] = len(kept)
    if not kept:
        return not_answered(answer.answerer)
    if len(kept) == len(answer.citations):
        return replace(answer, citations=kept)

    def renumber(match: re.Match[str]) -> str:
        number = new_number.get(int(match.group(1)))
        return match.group(0).replace(f"[{match.group(1)}]", f"[{number}]") if number else ""

    return replace(answer, text=_MARKER.sub(renumber, answer.text).strip(), citations=kept)


def _regions(quote: str, page: RetrievedPage, value: str) -> tuple[Region, ...]:
    """Where the quote is on the page (layout.locate), led by the box of the answer's `value` on its line where
    the answer has one (given for the first citation only: the value is read off its evidence line). A page
    without words has its similarity map's regions for the question instead, when a retriever gave them."""
    if not page.words:
        return page.looked_at
    if not quote:
        return ()
    lines = locate(quote, page.words, page.words_source)
    found = value_region(value, lines, page.words, page.words_source)
    return (found, *lines) if found is not None else tuple(lines)


def _quoted_from(quote: str, text: str) -> bool:
    """Whether `quote` comes from `text`, ignoring whitespace and a trailing ellipsis a shortened quote ends with."""
    if not quote:
        return True
    needle = " ".join(quote.removesuffix("…").split()).casefold()
    return needle in " ".join(text.split()).casefold()
