"""What generative answerers show the model (numbered pages, images, rules) and how their citations are checked.

Citation contract, shared by every answerer: in `Answer.text`, the marker `[k]` refers to `Answer.citations[k - 1]`.
A model cites pages by their number in the prompt (`[1]..[n]` for n retrieved pages); the checker keeps only numbers
that name a retrieved page, renumbers them in order of first use, drops the rest, and picks a supporting quote from
each cited page's text. An answer with no valid citation, or one that says CANNOT_DETERMINE, is not supported.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmrag.analysis import tokenize
from mmrag.types import Answer, Citation, RetrievedPage

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

CANNOT_DETERMINE = "CANNOT_DETERMINE"
NOT_ANSWERED = "The indexed pages do not answer this."

# Qwen2-VL merges 2x2 patches of 14 px, so one vision token covers 28x28 pixels; the image budget counts in these.
PIXELS_PER_VISION_TOKEN = 28 * 28
MAX_QUOTE_CHARS = 300
# OCR'd paragraphs can be one long "line"; past this length a line is split into sentences before quoting.
LONG_LINE_CHARS = 240

# Function words and question words: they match every page, so they say nothing about whether a page answers.
STOPWORDS = frozenset(
    """
    a about above after again all am an and any are as at be been before being below between both but by can could
    did do does doing down during each few for from further had has have having he her here hers herself him himself
    his how i if in into is it its itself just me more most my myself no nor not now of off on once only or other our
    ours ourselves out over own please same she should so some such than that the their theirs them themselves then
    there these they this those through to too under until up very was we were what when where which while who whom
    whose why will with would you your yours yourself yourselves tell show give find much many kind
    """.split()  # noqa: SIM905 - a word list reads better than 150 quoted strings
)

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
# A citation group: [3], [1, 2], [1;2], [page 2]. Numbers of up to 4 digits; a year in brackets is rare in answers
# and, like any number past the retrieved pages, is dropped rather than cited.
_MARKER = re.compile(r"\[\s*(?:pages?\s*)?(\d{1,4}(?:\s*[,;]\s*(?:pages?\s*)?\d{1,4})*)\s*\]", re.IGNORECASE)
_WHITESPACE_THEN_MARKER = re.compile(r"(\s*)" + _MARKER.pattern, re.IGNORECASE)
# What an unfinished citation can look like while it streams in: held back until it closes or grows too long.
_MARKER_PREFIX = re.compile(r"\[[\w\s,;]*\Z")
_MARKER_MAX_CHARS = 32
_CANNOT_DETERMINE = re.compile(r"cannot[\s_-]*determine", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")


def content_terms(text: str) -> list[str]:
    """Distinct tokens of `text` in order, stop words removed: what a question or claim is about."""
    return list(dict.fromkeys(token for token in tokenize(text) if token not in STOPWORDS))


def bm25_idf(doc_freq: int, docs: int) -> float:
    """BM25's (Lucene) idf: always positive, highest for a term no document holds."""
    return math.log(1.0 + (docs - doc_freq + 0.5) / (doc_freq + 0.5))


def page_segments(text: str) -> list[str]:
    """A page's text as quotable pieces: its non-empty lines, with long lines split into sentences."""
    segments: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if len(line) <= LONG_LINE_CHARS:
            segments.append(line)
        else:
            segments.extend(sentence for sentence in _SENTENCE_END.split(line) if sentence.strip())
    return segments


def trim_quote(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= MAX_QUOTE_CHARS:
        return text
    return text[: MAX_QUOTE_CHARS - 1].rsplit(" ", 1)[0] + "…"


def best_quote(page_text: str, claim: str, question: str = "") -> str:
    """The segment of `page_text` that best supports `claim`, by idf-weighted overlap of content terms.

    Terms of the claim weigh 1, terms only in the question 0.5 (a terse claim like "9.02 [1]" still leans on the
    question's "total"). idf is over the page's own segments, so a term on every line counts for little.
    Returns "" when the page has no text or no segment shares a term with the claim or the question: a quote that
    does not support the claim would mislead more than none.
    """
    segments = page_segments(page_text)
    if not segments:
        return ""
    weights = dict.fromkeys(content_terms(question), 0.5) | dict.fromkeys(content_terms(claim), 1.0)
    segment_tokens = [set(tokenize(segment)) for segment in segments]
    best_score, best_segment = 0.0, ""
    for segment, tokens in zip(segments, segment_tokens, strict=True):
        score = sum(
            weight * bm25_idf(sum(term in other for other in segment_tokens), len(segments))
            for term, weight in weights.items()
            if term in tokens
        )
        if score > best_score:  # strict: ties go to the earlier segment
            best_score, best_segment = score, segment
    return trim_quote(best_segment) if best_score > 0 else ""


def citation_for(page: RetrievedPage, quote: str) -> Citation:
    return Citation(
        document_id=page.document_id,
        page_id=page.page_id,
        page_number=page.page_number,
        path=page.path,
        score=page.score,
        quote=quote,
    )


def not_answered(answerer: str) -> Answer:
    return Answer(text=NOT_ANSWERED, citations=[], supported=False, answerer=answerer)


# ---------------------------------------------------------------------------------------------------------------------
# The prompt


@dataclass(frozen=True)
class PromptText:
    text: str


@dataclass(frozen=True)
class PromptImage:
    """Where the image of `pages[page_index]` goes; each backend puts its own form of the image there."""

    page_index: int


PromptPart = PromptText | PromptImage


def rules(page_count: int) -> str:
    return (
        "Answer the question using only the numbered pages below.\n"
        "- After each claim, cite the page it comes from by its number in square brackets, e.g. [1] or [2][3].\n"
        f"- Cite only pages [1] to [{page_count}]. Copy numbers, amounts, dates and names exactly as the page shows.\n"
        f"- If the pages do not answer the question, reply with exactly {CANNOT_DETERMINE} and nothing else.\n"
        "- Be brief: one to three sentences."
    )


def build_prompt(
    question: str, pages: Sequence[RetrievedPage], *, has_image: Sequence[bool], page_text_chars: int
) -> list[PromptPart]:
    """One user turn: the rules, each page as `Page [n]: path, page p` with its image and text, then the question.

    The rules come in the user turn, not a system turn, because some VLM chat templates (Idefics3/SmolVLM among
    them) have no system role or drop it.
    """
    if len(has_image) != len(pages):
        raise ValueError(f"has_image has {len(has_image)} entries for {len(pages)} pages")
    parts: list[PromptPart] = [PromptText(rules(len(pages)) + "\n\n")]
    for index, (page, with_image) in enumerate(zip(pages, has_image, strict=True)):
        number = index + 1
        parts.append(PromptText(f"Page [{number}]: {page.path}, page {page.page_number}\n"))
        if with_image:
            parts.append(PromptImage(index))
        after_image = "\n" if with_image else ""
        excerpt = _excerpt(page.text, page_text_chars)
        if excerpt:
            parts.append(PromptText(f"{after_image}Text of page [{number}]:\n{excerpt}\n\n"))
        else:
            parts.append(PromptText(after_image + "\n"))
    parts.append(PromptText(f"Question: {question.strip()}\nAnswer with [n] citations, or {CANNOT_DETERMINE}:"))
    return _merge_adjacent_text(parts)


def prompt_text(parts: Iterable[PromptPart], image_placeholder: str = "<image>") -> str:
    """The prompt as one string (for logs and tests), with a placeholder where each image goes."""
    return "".join(part.text if isinstance(part, PromptText) else image_placeholder for part in parts)


def _excerpt(text: str, limit: int) -> str:
    text = text.strip()
    if limit <= 0 or not text:
        return ""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    # End on a word boundary when one is near, so the model never sees half a number as if it were the whole.
    boundary = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:boundary] if boundary > limit // 2 else cut).rstrip() + " …"


def _merge_adjacent_text(parts: list[PromptPart]) -> list[PromptPart]:
    merged: list[PromptPart] = []
    for part in parts:
        if isinstance(part, PromptText) and merged and isinstance(merged[-1], PromptText):
            merged[-1] = PromptText(merged[-1].text + part.text)
        else:
            merged.append(part)
    return merged


def fit_image(image: Image.Image, *, max_side: int, token_budget: int) -> Image.Image:
    """`image` as RGB, downscaled (never up) to `max_side` and to about `token_budget` vision tokens."""
    from PIL import Image as PilImage

    image = image.convert("RGB")
    width, height = image.size
    budget_scale = math.sqrt(token_budget * PIXELS_PER_VISION_TOKEN / (width * height))
    scale = min(1.0, max_side / max(width, height), budget_scale)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, PilImage.Resampling.LANCZOS)


def load_page_image(page: RetrievedPage, *, max_side: int, token_budget: int) -> Image.Image | None:
    """The page's stored image fitted to the budget, or None (logged) when it has none or it cannot be read.

    A missing image is not fatal: the page still reaches the model as text.
    """
    from PIL import Image as PilImage

    if page.image_path is None:
        return None
    try:
        with PilImage.open(page.image_path) as opened:
            return fit_image(opened, max_side=max_side, token_budget=token_budget)
    except (OSError, PilImage.DecompressionBombError) as exc:
        log.warning("page %s (%s p.%d): image %s unreadable, sent as text only: %s",
                    page.page_id, page.path, page.page_number, page.image_path, exc)  # fmt: skip
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Captions (alt text)

CAPTION_PROMPT = (
    "Write alt text for this image: one or two plain sentences saying what it shows (the subject, the setting, any "
    "clearly legible words). No preamble, no markdown."
)
CAPTION_MAX_TOKENS = 96  # two sentences; a caption is searchable text, not an essay
MAX_CAPTION_CHARS = 500
_CAPTION_PREAMBLE = re.compile(r"^\s*(?:alt[\s-]*text|caption|description)\s*:\s*", re.IGNORECASE)


def clean_caption(text: str) -> str:
    """A model's caption as stored: one line, a leading "Alt text:" and wrapping quotes dropped, at most
    MAX_CAPTION_CHARS (cut at a word)."""
    text = _CAPTION_PREAMBLE.sub("", " ".join(text.split()))
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if len(text) > MAX_CAPTION_CHARS:
        text = text[: MAX_CAPTION_CHARS - 1].rsplit(" ", 1)[0] + "…"
    return text


# ---------------------------------------------------------------------------------------------------------------------
# Citation checking


class CitationChecker:
    """Checks a generated answer's citations, chunk by chunk as it streams or all at once.

    The checked text has valid markers renumbered (first cited page → [1]) and markers naming pages that were not
    retrieved dropped, with the space before them. `feed(chunk)` returns the checked text that may be shown now:
    nothing until the answer has cited a retrieved page (so an uncited or CANNOT_DETERMINE reply is never shown),
    and never trailing whitespace or an unfinished `[...`, which the next chunk decides. `finish()` returns the rest
    and the final Answer. Everything returned, joined, equals the Answer's text; the one exception is
    a reply that cites a page and then says CANNOT_DETERMINE: showing stops there, and the Answer is unsupported.
    """

    def __init__(self, question: str, pages: Sequence[RetrievedPage], *, answerer: str) -> None:
        self.question = question
        self.pages = list(pages)
        self.answerer = answerer
        self._raw = ""
        self._pending = ""  # raw text the next chunk may still change
        self._checked = ""  # the checked text so far
        self._shown_chars = 0  # how much of it has been returned
        self._shown_any = False
        self._claim_start = 0  # offset in the checked text where the claim now being written began
        self._last_claim = ""
        self._group: set[int] = set()  # prompt page numbers of the marker group the checked text ends with
        self._output_number: dict[int, int] = {}  # prompt page number → number in the checked text
        self._claims: dict[int, list[str]] = {}  # prompt page number → claims citing it
        self._dropped: list[int] = []
        self._cannot_determine = False

    @property
    def dropped(self) -> list[int]:
        """Page numbers the model cited that name no retrieved page."""
        return list(self._dropped)

    def feed(self, chunk: str) -> str:
        # Searched in the raw text so far, not the chunk: the marker may arrive split over several chunks.
        self._raw += chunk
        if _CANNOT_DETERMINE.search(self._raw):
            self._cannot_determine = True
        self._check(self._pending + chunk, final=False)
        return self._take()

    def finish(self) -> tuple[str, Answer]:
        self._check(self._pending, final=True)
        answer = self._answer()
        rest = self._take().rstrip()
        if not answer.supported and not self._shown_any:
            rest = answer.text  # so a client that only prints the chunks still says why there is no answer
        return rest, answer

    def _take(self) -> str:
        if self._cannot_determine or not self._output_number:
            return ""
        shown = self._checked[self._shown_chars :]
        self._shown_chars = len(self._checked)
        if not self._shown_any:
            shown = shown.lstrip()  # the Answer's text is stripped; the chunks add up to it exactly
            self._shown_any = bool(shown)
        return shown

    def _check(self, buffer: str, *, final: bool) -> None:
        hold_from = len(buffer) if final else _hold_point(buffer)
        self._pending = buffer[hold_from:]
        ready = buffer[:hold_from]
        position = 0
        for match in _WHITESPACE_THEN_MARKER.finditer(ready):
            self._checked += ready[position : match.start()]
            rewritten = self._rewrite_marker(match.group(1), match.group(2))
            if rewritten:
                self._checked += rewritten
                self._claim_start = len(self._checked)
            position = match.end()
        self._checked += ready[position:]

    def _rewrite_marker(self, leading_space: str, numbers_text: str) -> str:
        numbers = [int(n) for n in _NUMBER.findall(numbers_text)]
        valid = [n for n in dict.fromkeys(numbers) if 1 <= n <= len(self.pages)]
        self._dropped.extend(n for n in numbers if not 1 <= n <= len(self.pages))
        # A group right after another ("[1][2]", "[1] [1]") extends it: a page already in it is not repeated.
        follows_group = bool(self._checked) and len(self._checked) == self._claim_start
        if follows_group:
            valid = [n for n in valid if n not in self._group]
        if not valid:
            log.debug("dropped citation [%s]: %d pages were retrieved", numbers_text, len(self.pages))
            return ""  # the space before it goes too, so "total [7]." reads "total."
        self._group = (self._group if follows_group else set()) | set(valid)
        claim = self._checked[self._claim_start :]
        if not re.search(r"\w", claim):
            claim = self._last_claim  # "9.02. [1][2]": the second group cites the same claim
        self._last_claim = claim
        for number in valid:
            self._output_number.setdefault(number, len(self._output_number) + 1)
            self._claims.setdefault(number, []).append(claim)
        return leading_space + "".join(f"[{self._output_number[n]}]" for n in valid)

    def _answer(self) -> Answer:
        if self._dropped:
            log.info("%s cited pages %s of %d retrieved; those citations were dropped",
                     self.answerer, sorted(set(self._dropped)), len(self.pages))  # fmt: skip
        if self._cannot_determine or not self._output_number:
            return not_answered(self.answerer)
        citations = []
        for number in self._output_number:  # dicts keep insertion order: the order of first citation
            page = self.pages[number - 1]
            quote = best_quote(page.text, " ".join(self._claims[number]), self.question)
            citations.append(citation_for(page, quote))
        return Answer(text=self._checked.strip(), citations=citations, supported=True, answerer=self.answerer)


def check_answer(text: str, question: str, pages: Sequence[RetrievedPage], *, answerer: str) -> Answer:
    """A whole generated answer, checked as CitationChecker checks a stream."""
    checker = CitationChecker(question, pages, answerer=answerer)
    checker.feed(text)
    return checker.finish()[1]


def checked_stream(
    deltas: Iterable[str], question: str, pages: Sequence[RetrievedPage], *, answerer: str
) -> Iterator[str | Answer]:
    """A model's text deltas as an Answerer stream: checked text chunks, then the final Answer."""
    checker = CitationChecker(question, pages, answerer=answerer)
    for delta in deltas:
        if shown := checker.feed(delta):
            yield shown
    rest, answer = checker.finish()
    if rest:
        yield rest
    yield answer


def _hold_point(buffer: str) -> int:
    """Where the part of `buffer` the next chunk may still change begins: an open `[...` and the space before it."""
    hold = len(buffer)
    bracket = buffer.rfind("[")
    if bracket != -1 and len(buffer) - bracket <= _MARKER_MAX_CHARS and _MARKER_PREFIX.match(buffer, bracket):
        hold = bracket
    while hold > 0 and buffer[hold - 1].isspace():
        hold -= 1
    return hold
