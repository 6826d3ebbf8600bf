"""ExtractiveAnswerer: answers by quoting the retrieved pages' best-matching lines, with no generative model.

How a line is chosen
    The question's content terms (lexical tokenizer, so "9.02", "2024-01-17" and "INV-2024-0117" stay whole; stop
    words and question words removed) are weighted by BM25 idf over all lines of the retrieved pages: a term on
    every line counts for little, a term on no line counts most. A page *answers* when the terms it holds carry at
    least MIN_COVERAGE of the question's total weight. Lines of answering pages are scored by the weight of the terms
    they hold; the best MAX_LINES lines scoring at least RELATIVE_LINE_CUTOFF of the best are quoted, each with its
    page's citation.

Why coverage is per page, not per line: a receipt puts "STARBUCKS" in the header and "Total 9.02" at the bottom,
so "what was the total at Starbucks?" is answered by the page even though no one line holds both terms. Why 0.5:
on receipts and invoices it accepts questions whose distinctive terms the page holds and refuses those that share
only a generic word with it ("what is the tip amount?" against an invoice with "Amount due"): the missing term,
held by no line, has the highest idf and so outweighs the matched one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

from mmrag.answer.prompt import (
    STOPWORDS,
    bm25_idf,
    citation_for,
    content_terms,
    not_answered,
    page_segments,
    tokenize,
    trim_quote,
)
from mmrag.types import Answer, RetrievedPage

log = logging.getLogger(__name__)

MIN_COVERAGE = 0.5
MAX_LINES = 3
RELATIVE_LINE_CUTOFF = 0.5


@dataclass(frozen=True)
class _Line:
    page_index: int
    line_index: int
    text: str
    tokens: frozenset[str]


@dataclass(frozen=True)
class _ScoredLine:
    line: _Line
    score: float
    quote: str


class ExtractiveAnswerer:
    """An Answerer that quotes page lines; always available, used when no generative model is."""

    name = "extractive"

    def __init__(
        self,
        *,
        min_coverage: float = MIN_COVERAGE,
        max_lines: int = MAX_LINES,
        relative_line_cutoff: float = RELATIVE_LINE_CUTOFF,
    ) -> None:
        self.min_coverage = min_coverage
        self.max_lines = max_lines
        self.relative_line_cutoff = relative_line_cutoff

    def answer(self, question: str, pages: Sequence[RetrievedPage]) -> Answer:
        terms = content_terms(question)
        lines = [
            _Line(page_index, line_index, text, frozenset(tokenize(text)))
            for page_index, page in enumerate(pages)
            for line_index, text in enumerate(page_segments(page.text))
        ]
        if not terms or not lines:
            return not_answered(self.name)
        doc_freq = Counter(token for line in lines for token in line.tokens)
        weight = {term: bm25_idf(doc_freq[term], len(lines)) for term in terms}
        question_weight = sum(weight.values())

        answering_pages = set()
        for page_index in range(len(pages)):
            page_tokens = frozenset().union(*(line.tokens for line in lines if line.page_index == page_index))
            coverage = sum(weight[term] for term in terms if term in page_tokens) / question_weight
            if coverage >= self.min_coverage:
                answering_pages.add(page_index)
        if not answering_pages:
            log.debug("extractive: no page covers %.0f%% of the question's terms %s", 100 * self.min_coverage, terms)
            return not_answered(self.name)

        question_tokens = set(tokenize(question))
        label_tokens = question_tokens | STOPWORDS
        next_line = {(a.page_index, a.line_index): b for a, b in pairwise(lines) if a.page_index == b.page_index}
        scored = [
            _ScoredLine(line, score, _quote(line, next_line.get((line.page_index, line.line_index)), label_tokens))
            for line in lines
            if line.page_index in answering_pages and (score := sum(weight[t] for t in terms if t in line.tokens)) > 0
        ]
        # Ties go to a line holding a value the question lacks (an amount, a date, an id: what receipt questions
        # ask for), then to retrieval order between pages and reading order within one.
        scored.sort(key=lambda s: (-s.score, not _holds_new_value(s.line, question_tokens), s.line.page_index,
                                   s.line.line_index))  # fmt: skip
        chosen = [s for s in scored[: self.max_lines] if s.score >= self.relative_line_cutoff * scored[0].score]
        return self._compose(chosen, pages)

    def stream(self, question: str, pages: Sequence[RetrievedPage]) -> Iterator[str | Answer]:
        answer = self.answer(question, pages)
        yield answer.text
        yield answer

    def _compose(self, chosen: list[_ScoredLine], pages: Sequence[RetrievedPage]) -> Answer:
        """Lines grouped by page (best page first), in reading order within a page, each ending in its citation."""
        page_order = list(dict.fromkeys(s.line.page_index for s in chosen))
        text_lines: list[str] = []
        citations = []
        for number, page_index in enumerate(page_order, start=1):
            page_lines = [s for s in chosen if s.line.page_index == page_index]
            best = max(page_lines, key=lambda s: s.score)  # chosen is sorted, so max keeps the first of equals
            citations.append(citation_for(pages[page_index], best.quote))
            text_lines.extend(f"{s.quote} [{number}]" for s in sorted(page_lines, key=lambda s: s.line.line_index))
        return Answer(text="\n".join(text_lines), citations=citations, supported=True, answerer=self.name)


def _quote(line: _Line, following: _Line | None, label_tokens: set[str]) -> str:
    """The line, joined with the next one when it holds only question words and no number: a label ("Amount due")
    whose value ("131.45") a two-column layout put on the next line."""
    is_label = line.tokens <= label_tokens and not any(char.isdigit() for char in line.text)
    if following is not None and is_label:
        return trim_quote(f"{line.text} {following.text}")
    return trim_quote(line.text)


def _holds_new_value(line: _Line, question_tokens: set[str]) -> bool:
    return any(any(char.isdigit() for char in token) for token in line.tokens - question_tokens)
