"""ExtractiveAnswerer: answers by quoting the retrieved pages' best-matching lines, with no generative model.

How a line is chosen
    The question's content terms (lexical tokenizer, so "9.02", "2024-01-17" and "INV-2024-0117" stay whole; stop
    words and question words removed) are weighted by BM25 idf over all lines of the retrieved pages: a term on
    every line counts for little, a term on no line counts most. A page *answers* when the terms it holds carry at
    least MIN_COVERAGE of the question's total weight. Lines of answering pages are scored by the weight of the terms
    they hold; the best MAX_LINES lines scoring at least RELATIVE_LINE_CUTOFF of the best are quoted, each with its
    page's citation.

Which line is the evidence: when the question asks for a kind of value (an amount: "how much", "total",
"price"...; a date: "when", "date"), the line that holds a value of that kind the question does not already hold,
and shares most question weight, is quoted first and becomes its page's citation quote, even if a header line
matches rarer terms. This is the answer-type step of classic question answering (e.g. TREC QA systems):
the question's wording says what shape the answer has, and the evidence must have that shape.

A question term counts as held by a page that prints it, or, for a word of MISREAD_MIN letters or more, a page
word OCR misread by one letter ("FEORIST" for "florist"): a receipt's header is misread as often as its other lines.

Why coverage is per page, not per line: a receipt puts "STARBUCKS" in the header and "Total 9.02" at the bottom,
so "what was the total at Starbucks?" is answered by the page even though no one line holds both terms. Why 0.5:
on receipts and invoices it accepts questions whose distinctive terms the page holds and refuses those that share
only a generic word with it ("what is the tip amount?" against an invoice with "Amount due"): the missing term,
held by no line, has the highest idf and so outweighs the matched one.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
import re
from dataclasses import dataclass
from itertools import pairwise

from mmrag.analysis import date_keys, one_edit, tokenize, without_dates
from mmrag.answer.prompt import (
    STOPWORDS,
    bm25_idf,
    citation_for,
    content_terms,
    not_answered,
    page_segments,
    trim_quote,
)
from mmrag.types import Answer, RetrievedPage

log = logging.getLogger(__name__)

MIN_COVERAGE = 0.5

# Question wording → the kind of value that answers it.
AMOUNT_CUES = frozenset(
    "amount amounts cost costs price prices total totals sum fee fees balance due spent spend paid pay charged".split()
)
DATE_CUES = frozenset("date day".split())
# A lookup that names a bill and asks nothing ("the Gin Kee receipt from 18/10/2017", "receipt 99 Speed Mart
# 2017-11-01") is answered with what the bill comes to.
BILL_CUES = frozenset("receipt receipts bill bills invoice invoices".split())
WH_WORDS = frozenset("what which when where who whom whose why how".split())
# Words documents use to label the field that holds each kind of value.
FIELD_LABELS = {
    "amount": frozenset("total amount amt due paid payable balance grand net nett sum".split()),
    "date": frozenset("date dated issued".split()),
}
# 9.00, 1,234.56, 12,50; not a time ("8.08:53"), an id ("0017361544.36": more than 7 digits before the point),
# nor part of a longer number
# Words that make a labelled amount a part of the bill, or what was handed over, not what it came to: a line holding
# one gets no label bonus ("Total Sales (Excluding GST): 94.34", "GST Summary Amount 58.11", "Cash 50.00"), and
# reading a line's amount stops at one ("TOTAL 42.35 CASH 50.00").
# Words that mark a labelled amount as the final one: after tax, rounded, what is due ("Total Inclusive GST: 83.00"
# over "Type: 2 Total 84.00"; "Total Amt Payable 12.00" over "Paid Amount 20.00", the cash handed over).
FINAL_TOTAL = frozenset("inc incl inclusive included including rounded grand net nett payable due after".split())
ADJUSTMENT = frozenset("adj adjust adjustment adjustments".split())
NOT_THE_TOTAL = frozenset(
    "excl excluding exclusive sub subtotal summary cash change tendered rounding round discount saving savings "
    "points qty quantity received".split()
)
# A tax named on a line makes its amount the tax ("Total GST Amt: 2.40", "GST payable (6%): 3.49"), unless the line
# says the tax is included ("Total Incl. GST 37.10"), which labels a total even where OCR lost the word "total"
# ("(Inclusive of GST): 599.45").
TAX_WORDS = frozenset("tax gst vat sst".split())
INCLUDED = frozenset("inc incl inclusive included including with".split())
# (and not the start of a code: "7.23SH01ZJ42"; a tax code's one letter may follow, "RM4.65s"), nor a rate or a unit
# price after "@" ("GST @6.00%", "2 x @17.90")
AMOUNT_PATTERN = re.compile(r"(?<![\d.,:@])(?<!@ )(?:\d{1,3}(?:,\d{3})+|\d{1,7})[.,]\d{2}(?![\d:]|[.,]\d|[^\W\d_]{2})")
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
        # a possessive's "s" ("Nando's") is no term: as one letter it matches every "S" a receipt prints
        terms = _with_dates(content_terms(_POSSESSIVE.sub("", question)), question)
        kind = expected_value(question)
        lines = [
            _Line(page_index, line_index, text, frozenset(tokenize(text)) | frozenset(date_keys(text)))
            for page_index, page in enumerate(pages)
            for line_index, text in enumerate(page_segments(page.text))
        ]
        if not terms or not lines:
            return not_answered(self.name)
        doc_freq = Counter(token for line in lines for token in line.tokens)
        weight = {term: bm25_idf(doc_freq[term], len(lines)) for term in terms}
        # What an amount question asks with ("spent", "paid"; "receipt" in a bare lookup) is no content a page
        # must hold; in "which card paid at Starbucks?" (no amount asked) "paid" is.
        asking = _asking_words(question) if kind == "amount" else frozenset()
        about = [term for term in terms if term not in asking] or terms
        question_weight = sum(weight[term] for term in about)

        answering_pages = set()
        for page_index in range(len(pages)):
            page_tokens = frozenset().union(*(line.tokens for line in lines if line.page_index == page_index))
            coverage = sum(weight[term] for term in about if _held(term, page_tokens)) / question_weight
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
        evidence = self._typed_evidence(kind, question, lines, answering_pages, weight, next_line, label_tokens)
        value = ""
        if evidence is not None:
            chosen = [evidence, *[s for s in chosen if s.line != evidence.line]][: self.max_lines]
            value = value_in(evidence.quote, kind, question) if kind is not None else ""
            if kind == "amount" and value:
                value = paid_after_rounding(value, [line.text for line in lines
                                                    if line.page_index == evidence.line.page_index])
        return self._compose(chosen, pages, value)

    def _typed_evidence(
        self,
        kind: str | None,
        question: str,
        lines: list[_Line],
        answering_pages: set[int],
        weight: dict[str, float],
        next_line: dict[tuple[int, int], _Line],
        label_tokens: set[str],
    ) -> _ScoredLine | None:
        """On the best answering page that has one, the line holding a value of the asked-for kind.

        Lines are ranked by the question weight they share plus, for each field label they carry ("total",
        "amount due", "date"), half the weight of the question's strongest term: a question may name the value
        only by a verb ("how much did I pay") while documents label it, yet a line holding what the question
        does name ("how much VAT") still outranks a mere label. Ties go to the largest amount (a total is
        at least any part it sums), then to the later line."""
        if kind is None:
            return None
        bonus = 0.5 * max(weight.values())
        labels = FIELD_LABELS[kind]
        # A date in an amount question says which bill, never which of its amounts: the date line ("21/02/18 11.19",
        # a time read as an amount) is not the evidence for sharing it.
        naming = _date_terms(question) if kind == "amount" else frozenset()
        previous = {(b.page_index, b.line_index): a for a, b in pairwise(lines) if a.page_index == b.page_index}

        def label_before(line: _Line) -> _Line | None:
            """A label-only line ("Amount due") right above a value line ("$ 131.45"): two-column layouts."""
            before = previous.get((line.page_index, line.line_index))
            if before is not None and before.tokens & labels and not any(c.isdigit() for c in before.text):
                return before
            return None

        reread: set[_Line] = set()

        def rank(line: _Line) -> tuple[float, int, bool, float, int]:
            label = label_before(line)
            tokens = line.tokens | (label.tokens if label is not None else frozenset())
            shared = sum(w for term, w in weight.items() if term in tokens and term not in naming)
            tokens = tokens.union(*(_as_read(token) for token in tokens))  # "Tota! inclusive" is a total line
            # Among equals, an amount question prefers the line that labels its amount as final (and more labels),
            # then the largest amount: a total is at least any part it sums (subtotal, tax, discount); a date
            # question prefers the later line.
            size = _largest_amount(line.text) if kind == "amount" else 0.0
            if kind != "amount":
                return shared + (bonus if tokens & labels else 0.0), 0, True, size, line.line_index
            # the total, rounded ("Rounding RM 45.35"), not the adjustment ("Rounding Adj: 0.02", read "6.00")
            rounded = bool(tokens & {"round", "rounded", "rounding"}) and size >= 1.0 and not tokens & ADJUSTMENT
            parts = tokens & NOT_THE_TOTAL - set(weight) - ({"round", "rounding"} if rounded else set())
            taxed = tokens & TAX_WORDS - set(weight)
            included = bool(taxed and tokens & INCLUDED)
            if taxed and not included:
                parts |= taxed
            labelled = bool(tokens & labels or rounded or included) and not parts
            # a part of the bill or the cash handed over ranks below a line that says nothing of what it is
            score = shared + (bonus if labelled else -0.5 * bonus if parts else 0.0)
            # a rounded total is the last word on what was paid: it outranks "Total Sales (Inclusive GST)" above it
            final = len(tokens & labels) + len(tokens & FINAL_TOTAL) + 3 * rounded if labelled else 0
            return score, final, line not in reread, size, line.line_index

        for page_index in sorted(answering_pages):
            typed = [line for line in lines if line.page_index == page_index and _holds_value(line.text, kind, question)]
            if typed:
                reread = _read_again(typed)
                best = max(typed, key=rank)
                label = label_before(best)
                if label is not None:
                    return _ScoredLine(best, rank(best)[0], trim_quote(f"{label.text} {best.text}"))
                following = next_line.get((best.page_index, best.line_index))
                return _ScoredLine(best, rank(best)[0], _quote(best, following, label_tokens))
        return None

    def stream(self, question: str, pages: Sequence[RetrievedPage]) -> Iterator[str | Answer]:
        answer = self.answer(question, pages)
        yield answer.text
        yield answer

    def _compose(self, chosen: list[_ScoredLine], pages: Sequence[RetrievedPage], value: str = "") -> Answer:
        """Lines grouped by page (best page first), in reading order within a page, each ending in its citation;
        led by the `value` the question asks for, cited to the page of its line (the first), when there is one."""
        page_order = list(dict.fromkeys(s.line.page_index for s in chosen))
        text_lines: list[str] = []
        citations = []
        for number, page_index in enumerate(page_order, start=1):
            page_lines = [s for s in chosen if s.line.page_index == page_index]
            # chosen is in evidence order: the page's first chosen line is its best evidence
            citations.append(citation_for(pages[page_index], page_lines[0].quote))
            text_lines.extend(f"{s.quote} [{number}]" for s in sorted(page_lines, key=lambda s: s.line.line_index))
        if value:
            text_lines.insert(0, f"{value} [1]")
        return Answer(text="\n".join(text_lines), citations=citations, supported=True, answerer=self.name,
                      value=value)


def _quote(line: _Line, following: _Line | None, label_tokens: set[str]) -> str:
    """The line, joined with the next one when it holds only question words and no number: a label ("Amount due")
    whose value ("131.45") a two-column layout put on the next line."""
    is_label = line.tokens <= label_tokens and not any(char.isdigit() for char in line.text)
    if following is not None and is_label:
        return trim_quote(f"{line.text} {following.text}")
    return trim_quote(line.text)


ASKING_VERBS = frozenset("spent spend paid pay charged".split())


def _asking_words(question: str) -> frozenset[str]:
    """The question's words that say what it asks for, not what the page is about: a verb of paying, and the kind
    of document a bare lookup names ("receipt Gin Kee 18/10/2017")."""
    words = re.findall(r"[a-z]+", question.lower())
    lookup = not WH_WORDS.intersection(words)
    return ASKING_VERBS | (BILL_CUES if lookup else frozenset())


def _with_dates(terms: list[str], question: str) -> list[str]:
    """The question's terms with its dates as the analyzer reads them ("date:2017-05-05", which a page printing
    "05-05-17" holds too) in place of the dates as typed."""
    dates = date_keys(question)
    if not dates:
        return terms
    return [t for t in terms if not date_keys(t)] + list(dict.fromkeys(dates))


_POSSESSIVE = re.compile(r"(?<=[^\W\d_])['’]s\b", re.IGNORECASE)


def _date_terms(question: str) -> frozenset[str]:
    """The question's terms that write its dates ("21", "02", "18", "mar") and the dates as the analyzer reads them."""
    written = frozenset(tokenize(question)) - frozenset(tokenize(without_dates(question)))
    return frozenset(date_keys(question)) | written


ROUNDING_WORDS = frozenset("round rounded rounding rnd".split())


def paid_after_rounding(value: str, page_lines: Sequence[str]) -> str:
    """An amount as paid: `value` rounded to the nearest 0.05 when its page shows a rounding adjustment that is not
    zero ("Rounding Adj -0.02", as receipts print where the smallest coins are 5 cents: Malaysia, Singapore, New
    Zealand...), so the total before it becomes what was paid even when OCR lost or misread the rounded total's line.
    `value` as is for an amount already a multiple of 0.05, or a page whose rounding line reads zero ("Rounding:
    0.00") or shows no figure."""
    cents = round(float(value.replace(",", "")) * 100)
    if cents % 5 == 0:
        return value
    for text in page_lines:
        words = re.findall(r"[^\W\d_]+", text.lower())
        if not any(word in ROUNDING_WORDS or _as_read(word) & ROUNDING_WORDS for word in words):
            continue
        # the adjustment as printed ("-0.02", "0,00", "$. 61": OCR's reading of a figure); none but digits: unsure
        figures = re.findall(r"\d*[.,]\s?\d{2}(?!\d)", text) or [char for char in text if char.isdigit()]
        if any(char not in "0., " for figure in figures for char in figure):
            rounded = 5 * round(cents / 5)
            return f"{rounded / 100:,.2f}" if "," in value else f"{rounded / 100:.2f}"
    return value


def value_in(quote: str, kind: str, question: str) -> str:
    """The value of `kind` the evidence line `quote` gives, as printed, that the question does not already hold.

    An amount: the first after the first field label ("Rounding 0.02 Total 12.30": 12.30; "TOTAL 42.35 CASH 50.00":
    42.35), else the largest (a total is at least any part it sums). A date: the first word that reads as one."""
    if kind == "amount":
        amounts = [m for m in AMOUNT_PATTERN.finditer(quote) if m.group() not in question]
        if not amounts:
            return ""
        words = [(m.start(), m.end(), _as_read(m.group())) for m in re.finditer(r"[^\W\d_]+", quote.lower())]
        labelled = [end for _, end, read in words if read & FIELD_LABELS["amount"]]
        if labelled:
            # the amounts after the first label, up to a word that starts another field ("CASH 50.00"); of those,
            # the largest: a table row gives the amount, its tax and then their total
            start = min(labelled)
            stopping = NOT_THE_TOTAL - set(tokenize(question))
            end = min((begin for begin, _, read in words if begin >= start and read & stopping), default=len(quote))
            after = [m for m in amounts if start <= m.start() < end]
            if after:
                return _plain_amount(max(after, key=lambda m: _largest_amount(m.group())).group())
        return _plain_amount(max(amounts, key=lambda m: _largest_amount(m.group())).group())
    asked = set(date_keys(question))
    for word in quote.split():
        word = word.strip(",;()[]")
        if set(date_keys(word)) - asked:
            return word
    return ""


_VOCABULARY = (
    FIELD_LABELS["amount"] | FIELD_LABELS["date"] | FINAL_TOTAL | NOT_THE_TOTAL | ADJUSTMENT | ROUNDING_WORDS
    | TAX_WORDS
)


@functools.lru_cache(maxsize=1 << 14)
def _as_read(word: str) -> frozenset[str]:
    """The field words `word` is, as printed or as OCR misread it by a letter ("tatal", "tota", "payabte",
    "adjustuent": words of four letters or more); empty for any other word."""
    if word in _VOCABULARY:
        return frozenset((word,))
    if len(word) < 4:
        return frozenset()
    if word.endswith("total") and word[:-5] in _VOCABULARY:
        return frozenset((word[:-5], "total"))  # printed as one word: "NetTotal", "GrandTotal"
    # OCR's classic confusions of letter pairs ("Indusive" for "Inclusive", "Arnount" for "Amount") first undone
    readings = {word, word.replace("d", "cl"), word.replace("rn", "m")}
    return frozenset(known for known in _VOCABULARY
                     if len(known) >= 4 and any(r == known or one_edit(r, known) for r in readings))


MISREAD_MIN = 5  # a question word this long counts as held by a page word OCR misread by one letter


def _held(term: str, page_tokens: frozenset[str]) -> bool:
    """Whether a page holds a question term: as written, or a word of MISREAD_MIN letters or more as OCR misread it
    by one letter ("FEORIST" for "florist"), for a page's header is as often misread as any other line."""
    if term in page_tokens:
        return True
    if len(term) < MISREAD_MIN or not term.isalpha():
        return False
    return any(abs(len(token) - len(term)) <= 1 and one_edit(term, token) for token in page_tokens)


def _read_again(typed: Sequence[_Line]) -> set[_Line]:
    """The lines a later line of the page reads again with another value: the same words, other figures ("TOTAL
    INCL GST 62.06", then "TOTAL INCL GST 62.00"). A page's second OCR reading adds the lines it read otherwise after
    the first reading's (mmrag.ingest.text.lines_not_in), so of two readings of a line the later is the second
    engine's, which on the shared receipts misread a total's digits less often."""
    def words(line: _Line) -> frozenset[str]:
        return frozenset(token for token in line.tokens if token.isalpha())

    return {
        line for i, line in enumerate(typed)
        if words(line) and any(words(other) == words(line) and _largest_amount(other.text) != _largest_amount(line.text)
                               for other in typed[i + 1:])
    }


def _holds_new_value(line: _Line, question_tokens: set[str]) -> bool:
    return any(any(char.isdigit() for char in token) for token in line.tokens - question_tokens)


def expected_value(question: str) -> str | None:
    """"amount" or "date" when the question's wording asks for one, else None.

    The wh-word decides first ("when" wants a date, "how much" an amount), then the focus noun of "what is the X",
    then any cue word; "dated" only qualifies ("receipt dated 10-03-2018: what was the total?" wants an amount).
    """
    text = question.lower()
    words = re.findall(r"[a-z]+", text)
    if "when" in words:
        return "date"
    if re.search(r"\bhow (much|many)\b", text):
        return "amount"
    if words and words[0] in ("where", "who", "whom", "whose", "why"):
        return None  # a place, a person, a reason: not a value
    lookup = not WH_WORDS.intersection(words)  # no question word: a lookup ("receipt Gin Kee 18/10/2017")
    focus = re.search(r"\b(?:what|which)(?:'s| is| was| are| were)? (?:the |a |an )?(\w+)", text)
    if focus and words[0] == "which":
        words = [focus.group(1)]  # "which card paid ..." asks for a card, whatever else the question says
    for word in ([focus.group(1)] if focus else []) + words:
        if word in AMOUNT_CUES:
            return "amount"
        if word in DATE_CUES:
            return "date"
    if lookup and BILL_CUES.intersection(words):
        return "amount"
    return None


def _holds_value(text: str, kind: str, question: str) -> bool:
    """Whether `text` holds a value of `kind` that the question itself does not contain."""
    if kind == "amount":
        return any(value not in question for value in AMOUNT_PATTERN.findall(text))
    return bool(set(date_keys(text)) - set(date_keys(question)))



def _plain_amount(printed: str) -> str:
    """An amount as printed ("5,90", "1,234.50") written plainly: a point before its two decimals ("5.90",
    "1,234.50"); thousands separators kept."""
    return printed[:-3] + "." + printed[-2:] if printed[-3] == "," else printed


def _largest_amount(text: str) -> float:
    values = [float(v.replace(",", "")) if "." in v else float(v.replace(",", ".")) for v in AMOUNT_PATTERN.findall(text)]
    return max(values, default=0.0)
