"""Bm25Index: the BM25 lexical index over page text (bm25s), its tokenizer, and its saved form.

Why bm25s rather than the database's full-text search: it is real BM25 (Lucene's variant: IDF, k1 saturation,
length normalisation), it scores identically whether SQL is SQLite or PostgreSQL (their FTS engines rank
differently and SQLite's FTS5 is not always compiled in), and it takes our own tokenizer, which matters because
receipts and invoices are searched by numbers, dates and amounts that stock tokenizers split or stem away.
It is a derived index: SQL holds the text, `rebuild` recreates it, and the saved manifest carries a fingerprint
of the page ids so the caller can tell when it is stale.

Saved layout
    <dir>/CURRENT        name of the live generation directory; replaced atomically, so a crash mid-save leaves
                         the previous generation live
    <dir>/bm25-<n>/      bm25s files of the word model (params/vocab/csc arrays), page_ids.npy, manifest.json;
                         grams/ holds the character n-gram model's bm25s files
    <dir>/manifest.json  a readable copy of the live generation's manifest (never read back by load)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
import unicodedata
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

# bm25s runs a JAX top-k at import when JAX is installed, and JAX then takes 75% of the GPU's memory for itself
# (seen on an H200 machine with jax[cuda]: 107 GB gone before a model or a store was loaded). mmrag never uses JAX,
# so it stays on the CPU unless the deployment says otherwise.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

from mmrag.errors import IndexError_  # noqa: E402
from mmrag.index.manifest import Manifest, atomic_write_bytes, fsync_dir  # noqa: E402
from mmrag.types import Hit  # noqa: E402

if TYPE_CHECKING:
    import bm25s

# bm25s itself (and JAX with it, where installed: 1.3 s on the H200 machine) is imported where an index is built or
# loaded, not here: a process that only checks whether the saved index is current never pays for it.

log = logging.getLogger(__name__)

# Bump when tokenize() changes, ANALYZER_VERSION when analyze(), char_ngrams() or the saved layout change: an index
# saved with another version then fails its manifest check on load (and Services.lexical rebuilds it from SQL).
TOKENIZER_VERSION = "mmrag-tokenize-1"
ANALYZER_VERSION = "dates-ngram3-ocrdigits-1"
MODEL = f"bm25s+{TOKENIZER_VERSION}+{ANALYZER_VERSION}"
METRIC = "bm25"
KIND = "bm25"
CURRENT_FILE = "CURRENT"
_GENERATION_PREFIX = "bm25-"
_GRAMS_DIR = "grams"
DATE_PREFIX = "date:"
NGRAM = 3
# The character n-gram ranking keeps only pages holding at least this share of the query's distinct n-grams
# (Lucene's minimum_should_match): a page sharing "ing" with "zeppelin hiring" is no match.
NGRAM_MIN_MATCH = 0.3
# Reciprocal-rank constant for merging the word and n-gram rankings (the usual 60; on SROIE any k in 1..60
# gave the same recall, see bench/sroie.py).
NGRAM_RRF_K = 60

_TOKEN = re.compile(
    r"""
      (?P<number>\d+(?:[.,/:\-]\d+)*)             # 12.50  1,234.56  2018-03-04  03/04/2018  10:30
    | (?P<glued>[^\W\d_]+\d+(?:[.,]\d+)*)         # letters glued to an amount: RM9.00  USD12  A4
    | (?P<word>[^\W_]+)                           # any other run of letters/digits, in any script
    """,
    re.VERBOSE,
)
_LETTERS_THEN_NUMBER = re.compile(r"([^\W\d_]+)(.*)")
_COMPOUND_SEPARATORS = re.compile(r"[/:\-]")


def tokenize(text: str) -> list[str]:
    """Split text into lowercase search tokens, keeping numbers, dates and amounts whole.

    - NFKC-normalised and case-folded, so full-width digits, ligatures and case do not matter.
    - Words are runs of Unicode letters/digits; punctuation separates them ("e-mail" -> "e", "mail").
    - A number keeps its inner separators: "12.50", "1,234.56", "2018-03-04", "03/04/2018", "10:30" stay single
      tokens. Dates, times and ranges ("-", "/", ":") also yield their parts ("2018", "03", "04") so a query for
      the year finds them; amounts ("." and ",") do not, as "12" and "50" would match unrelated prices.
    - Letters glued to a number yield the whole token plus both halves: "RM9.00" -> "rm9.00", "rm", "9.00".
    - No stemming and no stop words: BM25's IDF already discounts common words, and stemmers mangle numbers.
    """
    tokens: list[str] = []
    # No token spans whitespace, so the text's whitespace-separated chunks are tokenized one by one, and a chunk
    # seen before (pages repeat their words) comes from a cache: most of a BM25 rebuild's time went here.
    for chunk in unicodedata.normalize("NFKC", text).casefold().split():
        tokens.extend(_tokenize_chunk(chunk))
    return tokens


@functools.lru_cache(maxsize=1 << 16)
def _tokenize_chunk(chunk: str) -> tuple[str, ...]:
    tokens: list[str] = []
    for match in _TOKEN.finditer(chunk):
        token = match.group(0)
        tokens.append(token)
        if match.lastgroup == "number":
            if _COMPOUND_SEPARATORS.search(token):
                tokens.extend(part for part in re.split(r"[.,/:\-]", token) if part)
        elif match.lastgroup == "glued":
            letters_then_number = _LETTERS_THEN_NUMBER.match(token)
            assert letters_then_number is not None
            tokens.extend(letters_then_number.groups())
    return tuple(tokens)


# English months, full and abbreviated; longest alternatives first so "sept" is not read as "sep" + "t".
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
            ("july", "jul"), ("august", "aug"), ("september", "sept", "sep"), ("october", "oct"),
            ("november", "nov"), ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")(?![^\W\d_])\.?"
_NUMERIC_DATE = re.compile(r"(?<![\d.,/:\-])(\d{1,4})([./\-])(\d{1,2})\2(\d{4}|\d{2})(?!\d|[.,/:\-]\d)")
_DAY_MONTH_YEAR = re.compile(
    r"(?<![\d.,/:\-])(\d{1,2})(?:st|nd|rd|th)?[\s.,/\-]*" + _MONTH + r"[\s.,/\-]*(\d{4}|\d{2})(?!\d)"
)
_MONTH_DAY_YEAR = re.compile(
    r"(?<![^\W\d_])" + _MONTH + r"[\s.,/\-]*(\d{1,2})(?:st|nd|rd|th)?[\s.,/\-]+(\d{4}|\d{2})(?!\d)"
)

# Query words that say how a question is asked, not what it is about. Removed from queries only: BM25's idf already
# discounts them in long documents, but on short pages (receipts, forms) "did", "at" or "i" are rare enough to
# outweigh a company name. A query made only of these words keeps them.
QUERY_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be been before being below between both but by
    can could did do does doing down during each few for from further had has have having he her here hers herself
    him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only
    or other our ours ourselves out over own please same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were what when where which
    while who whom whose why will with would you your yours yourself yourselves much many
    """.split()
)


def _year(text: str) -> int:
    if len(text) == 4:
        return int(text)
    return 2000 + int(text) if int(text) < 69 else 1900 + int(text)  # POSIX strptime's %y pivot


def _date_key(year: int, month: int, day: int) -> str | None:
    try:
        return f"{DATE_PREFIX}{date(year, month, day).isoformat()}"
    except ValueError:
        return None


def date_keys(text: str) -> list[str]:
    """One "date:YYYY-MM-DD" term per reading of each date in `text`, whatever its format.

    "10-03-2018", "10/03/18", "10.03.2018", "10 Mar 2018", "March 10th, 2018" and "2018-03-10" all yield
    "date:2018-03-10", so a query and a page that write one date differently still share a term. A numeric date
    whose first two parts could both be the month ("03/04/2018") yields both readings (day-month and month-day):
    the order is a locale convention no text declares, and both sides of the match get the same pair of terms.
    Two-digit years pivot like strptime's %y. Impossible dates (31/02, 1.234.567) yield nothing.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    keys: list[str] = []
    for first, _, middle, last in _NUMERIC_DATE.findall(text):
        if len(first) == 4:
            readings = [(int(first), int(middle), int(last))] if len(last) <= 2 else []
        elif len(first) <= 2:
            year = _year(last)
            readings = [(year, int(middle), int(first)), (year, int(first), int(middle))]
        else:
            readings = []
        keys.extend(dict.fromkeys(key for reading in readings if (key := _date_key(*reading))))
    for day, month, year in _DAY_MONTH_YEAR.findall(text):
        if key := _date_key(_year(year), _MONTHS[month], int(day)):
            keys.append(key)
    for month, day, year in _MONTH_DAY_YEAR.findall(text):
        if key := _date_key(_year(year), _MONTHS[month], int(day)):
            keys.append(key)
    return keys


_LOOKALIKES = str.maketrans({"o": "0", "O": "0", "D": "0", "l": "1", "I": "1", "i": "1", "S": "5", "s": "5",
                              "B": "8", "Z": "2", "z": "2"})
_NUMERIC_LOOKING = re.compile(r"(?<![\w])(?=[\w.,/:-]*\d[\w.,/:-]*\d)[0-9oODlIiSsBZz]+(?:[.,/:-][0-9oODlIiSsBZz]+)+(?![\w])")


def repair_ocr_digits(text: str) -> str:
    """Numbers and dates with OCR's letter-for-digit slips read as digits ("O7/03/2O18" → "07/03/2018").

    Only inside runs that already hold two digits and separators (dates, amounts, codes), so words are untouched.
    """
    return _NUMERIC_LOOKING.sub(lambda match: match.group(0).translate(_LOOKALIKES), text)


def analyze(text: str) -> list[str]:
    """The word terms BM25 indexes and searches: tokenize()'s tokens plus one key per reading of each date.

    Both sides of a match go through this same function, so a date written two ways still meets. Numbers and
    dates with OCR letter-for-digit slips also yield their repaired reading's terms.
    """
    terms = tokenize(text) + date_keys(text)
    repaired = repair_ocr_digits(text)
    if repaired != text:
        seen = set(terms)
        terms += [term for term in tokenize(repaired) + date_keys(repaired) if term not in seen]
    return terms


def query_terms(text: str) -> list[str]:
    """analyze() without QUERY_STOPWORDS, unless nothing else is left."""
    terms = analyze(text)
    content = [term for term in terms if term not in QUERY_STOPWORDS]
    return content or terms


def char_ngrams(terms: Iterable[str], n: int = NGRAM) -> list[str]:
    """Character n-grams of each term, padded with "#" at both ends ("total" → "#to", "tot", "ota", "tal", "al#").

    Date keys stay whole: they are already normalised, and their digits would match every other date.
    """
    grams: list[str] = []
    for term in terms:
        if term.startswith(DATE_PREFIX):
            grams.append(term)
            continue
        grams.extend(_term_ngrams(term, n))
    return grams


@functools.lru_cache(maxsize=1 << 16)
def _term_ngrams(term: str, n: int) -> tuple[str, ...]:
    # Cached: a collection repeats its words page after page (this was most of a BM25 rebuild's time).
    padded = f"#{term}#"
    return tuple(padded[i : i + n] for i in range(max(1, len(padded) - n + 1)))


def build_and_save(pages: list[tuple[int, str]], directory: str) -> int:
    """Build the BM25 index of `pages` and save it under `directory` (a bulk job runs this in a worker process while
    its last batches are embedded); returns the number of pages. Loading checks the fingerprint against SQL."""
    index = Bm25Index()
    index.rebuild(pages)
    index.save(Path(directory))
    return len(pages)


def fingerprint_of(ids: Iterable[int]) -> str:
    """sha256 over the sorted, distinct page ids: equal exactly when two indexes cover the same set of pages.

    It does not see edited text under an unchanged id; callers that edit page text in place must rebuild."""
    array = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
    return hashlib.sha256(array.astype("<i8").tobytes()).hexdigest()


class Bm25Index:
    """A LexicalIndex: BM25 over page text, keyed by SQL page ids.

    Two BM25 models over the same pages, merged by reciprocal rank: one over word terms (analyze()), precise, and
    one over their character 3-grams, which still matches a word that OCR misread by a letter or two ("SPEED MART
    $/B", "AE0N"). On the SROIE receipt scans the pair found the right receipt first for 0.908 of the questions, words
    alone 0.892 (bench/sroie.py). A hit's score is the merged reciprocal-rank score; `ngram=0` keeps words only,
    and then a hit's score is its BM25 score.
    """

    def __init__(self, *, k1: float = 1.5, b: float = 0.75, ngram: int = NGRAM) -> None:
        self.k1 = k1
        self.b = b
        self.ngram = ngram
        self._lock = threading.RLock()
        self._retriever: bm25s.BM25 | None = None  # None while no page has any token
        self._grams: bm25s.BM25 | None = None  # None with ngram=0, or while no page has any token
        self._page_ids = np.zeros(0, dtype=np.int64)

    # ----------------------------------------------------------------------------------------------- LexicalIndex

    def rebuild(self, pages: Iterable[tuple[int, str]]) -> None:
        """Replace the whole index with these (page_id, text) pairs; a repeated page id keeps its last text."""
        texts: dict[int, str] = {}
        for page_id, text in pages:
            texts[int(page_id)] = text or ""
        page_ids = np.fromiter(texts.keys(), dtype=np.int64, count=len(texts))
        corpus_tokens = [analyze(text) for text in texts.values()]
        retriever = self._build(corpus_tokens) if any(corpus_tokens) else None
        grams = None
        if retriever is not None and self.ngram:
            grams = self._build([char_ngrams(tokens, self.ngram) for tokens in corpus_tokens])
        with self._lock:
            self._retriever, self._grams, self._page_ids = retriever, grams, page_ids
        log.info("BM25 index rebuilt over %d pages", len(page_ids))

    def search(self, query: str, k: int) -> list[Hit]:
        """Top-k pages, best first; only pages sharing a word term with the query or NGRAM_MIN_MATCH of its n-grams."""
        if k <= 0:
            return []
        terms = query_terms(query)
        with self._lock:
            retriever, grams, page_ids = self._retriever, self._grams, self._page_ids
        if retriever is None or not terms:
            return []
        words = _ranked(retriever, terms, k, page_ids)
        if grams is None:
            return [Hit(int(page_ids[row]), score) for row, score in words]
        query_grams = list(dict.fromkeys(char_ngrams(terms, self.ngram)))
        by_grams = _ranked(
            grams, query_grams, k, page_ids, min_match=math.ceil(NGRAM_MIN_MATCH * len(query_grams))
        )
        fused: dict[int, float] = {}
        for ranking in (words, by_grams):
            for rank, (row, _) in enumerate(ranking, start=1):
                fused[row] = fused.get(row, 0.0) + 1.0 / (NGRAM_RRF_K + rank)
        order = sorted(fused, key=lambda row: (-fused[row], page_ids[row]))[:k]
        return [Hit(int(page_ids[row]), fused[row]) for row in order]

    def __len__(self) -> int:
        return len(self._page_ids)

    def ids(self) -> np.ndarray:
        return np.sort(self._page_ids)

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self._page_ids)

    def is_current(self, ids: Iterable[int]) -> bool:
        """True when this index covers exactly these page ids (compare with the ids SQL has text for)."""
        return fingerprint_of(ids) == self.fingerprint

    def manifest(self) -> Manifest:
        return Manifest(model=MODEL, dim=0, metric=METRIC, count=len(self._page_ids), kind=KIND)

    # ----------------------------------------------------------------------------------------------- persistence

    def save(self, directory: Path) -> None:
        """Write a new generation under `directory`, then switch CURRENT to it atomically and delete the others."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            retriever, grams, page_ids = self._retriever, self._grams, self._page_ids.copy()
        generation = _next_generation(directory)
        target = directory / generation
        target.mkdir()
        if retriever is not None:
            retriever.save(str(target), show_progress=False)
        if grams is not None:
            grams.save(str(target / _GRAMS_DIR), show_progress=False)
        np.save(target / "page_ids.npy", page_ids.astype("<i8"))
        meta = {
            "manifest": Manifest(model=MODEL, dim=0, metric=METRIC, count=len(page_ids), kind=KIND).to_dict(),
            "fingerprint": fingerprint_of(page_ids),
            "k1": self.k1,
            "b": self.b,
            "ngram": self.ngram,
            "empty": retriever is None,
        }
        (target / "manifest.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _fsync_tree(target)
        atomic_write_bytes(directory / CURRENT_FILE, generation.encode())
        atomic_write_bytes(directory / "manifest.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        for stale in directory.iterdir():
            if stale.is_dir() and stale.name.startswith(_GENERATION_PREFIX) and stale.name != generation:
                shutil.rmtree(stale, ignore_errors=True)
        log.info("saved BM25 index (%d pages) to %s", len(page_ids), target)

    @staticmethod
    def saved_fingerprint(directory: Path) -> str | None:
        """The fingerprint of the index saved under `directory`, from its manifest alone (no index is read); None
        when there is none, it cannot be read, or it was built with another tokenizer or analyzer."""
        directory = Path(directory)
        try:
            source = directory / (directory / CURRENT_FILE).read_text().strip()
            meta = json.loads((source / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or (meta.get("manifest") or {}).get("model") != MODEL:
            return None
        fingerprint = meta.get("fingerprint")
        return fingerprint if isinstance(fingerprint, str) else None

    @staticmethod
    def saved_ids(directory: Path) -> np.ndarray | None:
        """The page ids of the index saved under `directory`, sorted, from its id file alone; None when there is
        none or it cannot be read (check saved_fingerprint first: it also says whether the analyzer matches)."""
        directory = Path(directory)
        try:
            source = directory / (directory / CURRENT_FILE).read_text().strip()
            return np.sort(np.load(source / "page_ids.npy").astype(np.int64))
        except (OSError, ValueError):
            return None

    @staticmethod
    def saved_in(directory: Path) -> bool:
        """Whether `save` has completed in `directory` (then `load` finds an index, or raises if it is damaged)."""
        return (Path(directory) / CURRENT_FILE).is_file()

    @classmethod
    def load(cls, directory: Path) -> Bm25Index:
        """Load what `save` wrote; ManifestMismatchError if it was built with another tokenizer or is damaged."""
        directory = Path(directory)
        try:
            generation = (directory / CURRENT_FILE).read_text().strip()
        except FileNotFoundError as exc:
            raise IndexError_(f"{directory}: no saved BM25 index ({CURRENT_FILE} missing)") from exc
        source = directory / generation
        try:
            meta = json.loads((source / "manifest.json").read_text())
            page_ids = np.load(source / "page_ids.npy").astype(np.int64)
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{source}: cannot read the saved BM25 index: {exc}") from exc
        manifest = Manifest.from_dict(meta.get("manifest"))
        manifest.check(MODEL, 0, METRIC, where=source)
        manifest.check_kind(KIND, where=source)
        manifest.check_count(len(page_ids), where=source)
        index = cls(k1=float(meta.get("k1", 1.5)), b=float(meta.get("b", 0.75)), ngram=int(meta.get("ngram", 0)))
        import bm25s

        try:
            if not meta.get("empty", False):
                index._retriever = bm25s.BM25.load(str(source), mmap=False, show_progress=False)
                if index.ngram:
                    index._grams = bm25s.BM25.load(str(source / _GRAMS_DIR), mmap=False, show_progress=False)
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{source}: cannot read the saved BM25 index: {exc}") from exc
        index._page_ids = page_ids
        if meta.get("fingerprint") != index.fingerprint:
            raise IndexError_(f"{source}: page ids do not match the saved fingerprint; the index is damaged")
        return index

    def _build(self, corpus_tokens: list[list[str]]) -> bm25s.BM25:
        import bm25s

        retriever = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        retriever.index(corpus_tokens, show_progress=False)
        return retriever


def _ranked(
    retriever: bm25s.BM25, terms: list[str], k: int, page_ids: np.ndarray, *, min_match: int = 1
) -> list[tuple[int, float]]:
    """(row, BM25 score) of the top k rows holding at least `min_match` distinct terms; best first, then by page id."""
    token_ids = retriever.get_tokens_ids(terms)
    if not token_ids:
        return []  # no query term occurs anywhere
    scores = retriever.get_scores_from_ids(token_ids)
    candidates = np.flatnonzero(scores > 0)
    if min_match > 1 and len(candidates):
        # Distinct terms each row holds, from the CSC score matrix (one column of rows per term): bm25s keeps it
        # as data/indices/indptr arrays, in memory and on disk alike.
        matrix = retriever.scores
        held = np.zeros(len(scores), dtype=np.int32)
        for token_id in set(token_ids):
            held[matrix["indices"][matrix["indptr"][token_id] : matrix["indptr"][token_id + 1]]] += 1
        candidates = candidates[held[candidates] >= min_match]
    if len(candidates) > k:
        candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
    order = np.lexsort((page_ids[candidates], -scores[candidates]))
    return [(int(candidates[i]), float(scores[candidates[i]])) for i in order]


def _next_generation(directory: Path) -> str:
    numbers = [
        int(path.name.removeprefix(_GENERATION_PREFIX))
        for path in directory.iterdir()
        if path.is_dir() and path.name.startswith(_GENERATION_PREFIX) and path.name[len(_GENERATION_PREFIX) :].isdigit()
    ]
    return f"{_GENERATION_PREFIX}{max(numbers, default=0) + 1:06d}"


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb") as file:
                os.fsync(file.fileno())
        elif path.is_dir():
            _fsync_tree(path)
    fsync_dir(directory)
