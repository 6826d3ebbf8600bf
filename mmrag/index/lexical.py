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
    <dir>/bm25-<n>/      bm25s files (params/vocab/csc arrays), page_ids.npy, manifest.json
    <dir>/manifest.json  a readable copy of the live generation's manifest (never read back by load)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import bm25s
import numpy as np

from mmrag.errors import IndexError_
from mmrag.index.manifest import Manifest, atomic_write_bytes, fsync_dir
from mmrag.types import Hit

log = logging.getLogger(__name__)

# Bump when tokenize() changes: an index saved with another tokenizer then fails its manifest check on load.
TOKENIZER_VERSION = "mmrag-tokenize-1"
MODEL = f"bm25s+{TOKENIZER_VERSION}"
METRIC = "bm25"
KIND = "bm25"
CURRENT_FILE = "CURRENT"
_GENERATION_PREFIX = "bm25-"

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
    normalised = unicodedata.normalize("NFKC", text).casefold()
    tokens: list[str] = []
    for match in _TOKEN.finditer(normalised):
        token = match.group(0)
        tokens.append(token)
        if match.lastgroup == "number":
            if _COMPOUND_SEPARATORS.search(token):
                tokens.extend(part for part in re.split(r"[.,/:\-]", token) if part)
        elif match.lastgroup == "glued":
            letters_then_number = _LETTERS_THEN_NUMBER.match(token)
            assert letters_then_number is not None
            tokens.extend(letters_then_number.groups())
    return tokens


def fingerprint_of(ids: Iterable[int]) -> str:
    """sha256 over the sorted, distinct page ids: equal exactly when two indexes cover the same set of pages.

    It does not see edited text under an unchanged id; callers that edit page text in place must rebuild."""
    array = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
    return hashlib.sha256(array.astype("<i8").tobytes()).hexdigest()


class Bm25Index:
    """A LexicalIndex: BM25 over page text, keyed by SQL page ids."""

    def __init__(self, *, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._lock = threading.RLock()
        self._retriever: bm25s.BM25 | None = None  # None while no page has any token
        self._page_ids = np.zeros(0, dtype=np.int64)

    # ----------------------------------------------------------------------------------------------- LexicalIndex

    def rebuild(self, pages: Iterable[tuple[int, str]]) -> None:
        """Replace the whole index with these (page_id, text) pairs; a repeated page id keeps its last text."""
        texts: dict[int, str] = {}
        for page_id, text in pages:
            texts[int(page_id)] = text or ""
        page_ids = np.fromiter(texts.keys(), dtype=np.int64, count=len(texts))
        corpus_tokens = [tokenize(text) for text in texts.values()]
        retriever = self._build(corpus_tokens) if any(corpus_tokens) else None
        with self._lock:
            self._retriever, self._page_ids = retriever, page_ids
        log.info("BM25 index rebuilt over %d pages", len(page_ids))

    def search(self, query: str, k: int) -> list[Hit]:
        """Top-k pages by BM25, best first; only pages sharing at least one term with the query (score > 0)."""
        if k <= 0:
            return []
        query_tokens = tokenize(query)
        with self._lock:
            retriever, page_ids = self._retriever, self._page_ids
        if retriever is None or not query_tokens:
            return []
        token_ids = retriever.get_tokens_ids(query_tokens)
        if not token_ids:
            return []  # no query term occurs anywhere
        scores = retriever.get_scores_from_ids(token_ids)
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > k:
            candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        order = np.lexsort((page_ids[candidates], -scores[candidates]))
        return [Hit(page_id=int(page_ids[candidates[i]]), score=float(scores[candidates[i]])) for i in order]

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
            retriever, page_ids = self._retriever, self._page_ids.copy()
        generation = _next_generation(directory)
        target = directory / generation
        target.mkdir()
        if retriever is not None:
            retriever.save(str(target), show_progress=False)
        np.save(target / "page_ids.npy", page_ids.astype("<i8"))
        meta = {
            "manifest": Manifest(model=MODEL, dim=0, metric=METRIC, count=len(page_ids), kind=KIND).to_dict(),
            "fingerprint": fingerprint_of(page_ids),
            "k1": self.k1,
            "b": self.b,
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
        index = cls(k1=float(meta.get("k1", 1.5)), b=float(meta.get("b", 0.75)))
        if not meta.get("empty", False):
            index._retriever = bm25s.BM25.load(str(source), mmap=False, show_progress=False)
        index._page_ids = page_ids
        if meta.get("fingerprint") != index.fingerprint:
            raise IndexError_(f"{source}: page ids do not match the saved fingerprint; the index is damaged")
        return index

    def _build(self, corpus_tokens: list[list[str]]) -> bm25s.BM25:
        retriever = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        retriever.index(corpus_tokens, show_progress=False)
        return retriever


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
    fsync_dir(directory)
