"""Known-item test sets from a collection's own pages: one distinctive passage per sampled page, no labelling.

`mmrag eval --generate N` samples N pages with text and, from each, picks the passage (a line, a sentence, or a
window of a long one) that best singles the page out: the highest summed BM25 idf over its distinct words, among
passages that are mostly clean words (not OCR debris) and whose words occur together on no other page. The page
is the question's one relevant item, page-level, so multi-page PDFs are judged by page.

The passage becomes the query verbatim unless a QueryRewriter (a generative model) is given, which rewords it so
that the set does not only reward exact word overlap. Verbatim known-item queries are easy for lexical search and
say more about the dense retrievers' and the fusion's failures than about BM25's; the report says which was used.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mmrag.analysis import tokenize  # the BM25 tokenizer, so "distinctive" means what it means to BM25
from mmrag.evaluation import Question, Relevant
from mmrag.services import Services
from mmrag.store import repository

log = logging.getLogger(__name__)

MIN_WORDS = 4
MAX_WORDS = 10
# Share of a passage's words that must look like words or numbers: OCR of logos and stamps yields "|§~e!l" runs.
MIN_CLEAN_SHARE = 0.75

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_CLEAN_WORD = re.compile(r"[^\W_]{2,}|[^\W_]+(?:[.,/:\-'&][^\W_]+)+")
_LETTERS = re.compile(r"[^\W\d_]{3,}")


class QueryRewriter(Protocol):
    """Rewords a passage as a question or paraphrase a person might type (a generative model does this)."""

    name: str

    def rewrite(self, passage: str) -> str: ...


@dataclass(frozen=True)
class Passage:
    text: str
    score: float  # summed idf of its distinct tokens
    tokens: frozenset[str]


def passages(text: str, *, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Candidate passages of a page: sentences of its lines, long ones cut into overlapping word windows, short
    ones joined with the lines after them (OCR of forms and receipts puts two or three words on a line)."""
    pieces = [
        sentence.split()
        for line in text.splitlines()
        for sentence in _SENTENCE_END.split(line.strip())
        if sentence.strip()
    ]
    found: list[str] = []
    for index, words in enumerate(pieces):
        if len(words) > max_words:
            step = max(1, max_words // 2)
            for start in range(0, len(words) - min_words + 1, step):
                found.append(" ".join(words[start : start + max_words]))
                if start + max_words >= len(words):
                    break
            continue
        joined = list(words)
        for following in pieces[index + 1 :]:
            if len(joined) >= min_words or len(joined) + len(following) > max_words:
                break
            joined += following
        if len(joined) >= min_words:
            found.append(" ".join(joined))
    return list(dict.fromkeys(found))


def is_clean(passage: str, *, min_share: float = MIN_CLEAN_SHARE) -> bool:
    """Mostly real words or numbers, with at least two words of three or more letters."""
    words = passage.split()
    clean = sum(bool(_CLEAN_WORD.fullmatch(word.strip(".,;:!?()\"'"))) for word in words)
    return clean >= min_share * len(words) and len(_LETTERS.findall(passage)) >= 2


def best_passages(
    text: str, idf: dict[str, float], *, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS
) -> list[Passage]:
    """The page's clean passages, most distinctive first."""
    scored = []
    for passage in passages(text, min_words=min_words, max_words=max_words):
        if not is_clean(passage):
            continue
        tokens = frozenset(tokenize(passage))
        if tokens:
            scored.append(Passage(passage, sum(idf.get(token, 0.0) for token in tokens), tokens))
    scored.sort(key=lambda p: -p.score)
    return scored


def generate_questions(
    services: Services,
    n: int,
    *,
    collection: str = "default",
    seed: int = 0,
    rewriter: QueryRewriter | None = None,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
) -> list[Question]:
    """Up to `n` known-item questions from the collection's indexed pages (fewer when fewer pages qualify)."""
    with services.sessions() as session:
        collection_id = repository.get_collection(session, collection).id
        texts = dict(repository.page_texts(session, collection_id))
        rows = repository.describe_pages(session, list(texts))
    return generate_from_pages(
        [
            (page_id, rows[page_id].path, rows[page_id].page_number, text)
            for page_id, text in texts.items()
            if page_id in rows
        ],
        n,
        seed=seed,
        rewriter=rewriter,
        min_words=min_words,
        max_words=max_words,
    )


def generate_from_pages(
    pages: Sequence[tuple[int, str, int, str]],
    n: int,
    *,
    seed: int = 0,
    rewriter: QueryRewriter | None = None,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
) -> list[Question]:
    """Known-item questions from (page id, path, page number, text) rows; the page is the one relevant item."""
    page_tokens = {page_id: frozenset(tokenize(text)) for page_id, _, _, text in pages}
    postings: dict[str, set[int]] = {}
    for page_id, tokens in page_tokens.items():
        for token in tokens:
            postings.setdefault(token, set()).add(page_id)
    total = len(pages)
    # BM25's (Lucene) idf over pages, so a word on every page adds almost nothing to a passage's score.
    idf = {token: math.log(1 + (total - len(ids) + 0.5) / (len(ids) + 0.5)) for token, ids in postings.items()}

    order = list(pages)
    random.Random(seed).shuffle(order)
    questions: list[Question] = []
    seen_queries: Counter[str] = Counter()
    for page_id, path, page_number, text in order:
        if len(questions) >= n:
            break
        passage = _unique_passage(page_id, text, idf, postings, min_words, max_words)
        if passage is None:
            continue
        query = passage.text
        if rewriter is not None:
            query = rewriter.rewrite(passage.text).strip() or passage.text
        if seen_queries[query]:
            continue  # the same words on two pages cannot single out one of them
        seen_queries[query] += 1
        questions.append(Question(f"gen-{len(questions) + 1:04d}", query, (Relevant(path, page_number),), ()))
    if len(questions) < n:
        log.warning(
            "generated %d of %d questions: the other pages have no distinctive clean passage", len(questions), n
        )
    return questions


def _unique_passage(
    page_id: int,
    text: str,
    idf: dict[str, float],
    postings: dict[str, set[int]],
    min_words: int,
    max_words: int,
) -> Passage | None:
    """The most distinctive passage whose tokens occur together on this page only."""
    for passage in best_passages(text, idf, min_words=min_words, max_words=max_words):
        if _pages_holding(passage.tokens, postings) == {page_id}:
            return passage
    return None


def _pages_holding(tokens: Iterable[str], postings: dict[str, set[int]]) -> set[int]:
    holders: set[int] | None = None
    for token in sorted(tokens, key=lambda t: len(postings.get(t, ()))):  # rarest first: the set shrinks fastest
        ids = postings.get(token, set())
        holders = set(ids) if holders is None else holders & ids
        if not holders:
            break
    return holders or set()
