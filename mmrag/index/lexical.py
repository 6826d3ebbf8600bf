"""Bm25Index: the BM25 lexical index over page text and its saved form (the analyzer is mmrag.analysis).

Why BM25 of our own rather than the database's full-text search: it is real BM25 (Lucene's variant: IDF, k1
saturation, length normalisation), it scores identically whether SQL is SQLite or PostgreSQL (their FTS engines rank
differently and SQLite's FTS5 is not always compiled in), and it takes our own tokenizer, which matters because
receipts and invoices are searched by numbers, dates and amounts that stock tokenizers split or stem away. It scores
as bm25s's "lucene" method does (the tests compare the two), but in segments a job can add to (mmrag/index/bm25.py):
bm25s bakes collection-wide statistics into every stored score, so each job rebuilt it from all the text in SQL.
It is a derived index: SQL holds the text, `rebuild` recreates it, and the saved commit carries a fingerprint of the
page ids so the caller can tell when it is stale.

Saved layout
    <dir>/CURRENT             name of the live commit file; replaced atomically, so a crash mid-save leaves the
                              previous commit live
    <dir>/commit-<n>.json     manifest, fingerprint, parameters and the segments: [{name, rows, deleted}]
    <dir>/seg-<n>-<i>/        one segment, written once: page_ids.npy, and per model (words, grams) its terms (one
                              per line) and postings arrays (indptr, rows, tfs, lengths .npy)
    <dir>/seg-<n>-<i>.deleted-<m>.npy   the segment's deleted rows as of commit m (the latest one named is live)
    <dir>/manifest.json       a readable copy of the live commit (never read back)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from mmrag.analysis import ANALYZER_VERSION, NGRAM, TOKENIZER_VERSION, analyze, char_ngrams, query_terms
from mmrag.errors import IndexError_
from mmrag.index.bm25 import Postings, Segment, rank, settle
from mmrag.index.manifest import Manifest, atomic_write, atomic_write_bytes, fsync_dir
from mmrag.types import Hit

log = logging.getLogger(__name__)

# The analyzer's versions (mmrag.analysis) and the saved layout's are in MODEL: an index saved with another
# version then fails its manifest check on load (and Services.lexical rebuilds it from SQL). Bump the "segments-"
# part when the saved layout changes.
MODEL = f"mmrag-bm25+{TOKENIZER_VERSION}+{ANALYZER_VERSION}+segments-1"
METRIC = "bm25"
KIND = "bm25"
CURRENT_FILE = "CURRENT"
_COMMIT_PREFIX = "commit-"
_SEGMENT_PREFIX = "seg-"
_NUMBERED = re.compile(r"^(?:commit-|seg-)(\d{6,})")
# The character n-gram ranking keeps only pages holding at least this share of the query's distinct n-grams
# (Lucene's minimum_should_match): a page sharing "ing" with "zeppelin hiring" is no match.
NGRAM_MIN_MATCH = 0.3
# Reciprocal-rank constant for merging the word and n-gram rankings: the usual 60 (recall is insensitive to it).
NGRAM_RRF_K = 60

# BM25's term-frequency saturation and length normalisation (Lucene's defaults), here and in Qdrant's BM25.
K1 = 1.5
B = 0.75


def merged_by_rank(rankings: Sequence[Sequence[int]], k: int) -> list[Hit]:
    """The word and n-gram rankings (page ids, best first) merged by reciprocal rank: the top k, ties by page id."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for position, page_id in enumerate(ranking, start=1):
            fused[page_id] = fused.get(page_id, 0.0) + 1.0 / (NGRAM_RRF_K + position)
    order = sorted(fused, key=lambda page_id: (-fused[page_id], page_id))[:k]
    return [Hit(page_id, fused[page_id]) for page_id in order]


def update_saved(directory: str, pages: list[tuple[int, str]], removed: list[int]) -> int:
    """Load the index saved under `directory` (an empty one where none is), add these pages, remove these ids and
    save it (a bulk job runs this in a worker process while its last batches are embedded); returns the pages it
    covers. Only the job's new pages are tokenized: the pages already indexed stay in their segments."""
    path = Path(directory)
    index = Bm25Index.load(path) if Bm25Index.saved_fingerprint(path) is not None else Bm25Index()
    index.remove(removed)
    index.add(pages)
    index.save(path)
    return len(index)


def id_changes(held: np.ndarray, wanted: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids to add, ids to remove), sorted, to take an index holding `held` to exactly `wanted`."""
    held = np.unique(np.asarray(held, dtype=np.int64))
    wanted = np.unique(np.asarray(wanted if isinstance(wanted, np.ndarray) else list(wanted), dtype=np.int64))
    return np.setdiff1d(wanted, held, assume_unique=True), np.setdiff1d(held, wanted, assume_unique=True)


def fingerprint_of(ids: Iterable[int]) -> str:
    """sha256 over the sorted, distinct page ids: equal exactly when two indexes cover the same set of pages.

    It does not see edited text under an unchanged id; callers that edit page text in place must rebuild."""
    array = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
    return hashlib.sha256(array.astype("<i8").tobytes()).hexdigest()


class Bm25Index:
    """A LexicalIndex: BM25 over page text, keyed by SQL page ids, in segments (mmrag/index/bm25.py).

    Two BM25 models over the same pages, merged by reciprocal rank: one over word terms (analyze()), precise, and
    one over their character 3-grams, which still matches a word that OCR misread by a letter or two ("SPEED MART
    $/B", "AE0N"): on receipt scans the pair finds the right page first more often than words alone. A hit's score
    is the merged reciprocal-rank score; `ngram=0` keeps words only, and then a hit's score is its BM25 score.

    `add` and `remove` change it in place at the cost of the pages they touch; `save` then writes only the new
    segments and deletions.
    """

    def __init__(self, *, k1: float = K1, b: float = B, ngram: int = NGRAM) -> None:
        self.k1 = k1
        self.b = b
        self.ngram = ngram
        self._lock = threading.RLock()
        self._segments: list[Segment] = []  # replaced, never changed in place: a search works on its snapshot
        self._fingerprint: str | None = None  # of the live ids, memoised until the next change
        # How many times `add` replaced the text of pages it held (a caption written for an indexed page): the
        # fingerprint sees page ids only, so this, saved beside it, tells a reader that a saved index with the same
        # pages holds other text (saved_key).
        self.rewrites = 0

    # ----------------------------------------------------------------------------------------------- LexicalIndex

    def rebuild(self, pages: Iterable[tuple[int, str]]) -> None:
        """Replace the whole index with these (page_id, text) pairs; a repeated page id keeps its last text."""
        segment = self._segment(pages)
        with self._lock:
            self._segments, self._fingerprint = ([segment] if segment is not None else []), None
        log.info("BM25 index rebuilt over %d pages", len(self))

    def add(self, pages: Iterable[tuple[int, str]]) -> None:
        """Index these (page_id, text) pairs in a new segment; a page id already held is replaced (its old row is
        deleted), a repeated one keeps its last text. Costs the pages added, plus the merges that follow."""
        segment = self._segment(pages)
        if segment is None:
            return
        with self._lock:
            segments = self._deleted(self._segments, segment.page_ids)
            if sum(s.live for s in segments) < sum(s.live for s in self._segments):
                self.rewrites += 1
            self._segments, self._fingerprint = settle([*segments, segment]), None

    def remove(self, page_ids: Iterable[int]) -> int:
        """Delete these pages (ids not held are ignored); returns how many were held."""
        ids = np.unique(np.asarray(list(page_ids), dtype=np.int64))
        if not len(ids):
            return 0
        with self._lock:
            before = len(self)
            self._segments, self._fingerprint = settle(self._deleted(self._segments, ids)), None
            return before - len(self)

    def search(self, query: str, k: int) -> list[Hit]:
        """Top-k pages, best first; only pages sharing a word term with the query or NGRAM_MIN_MATCH of its n-grams."""
        if k <= 0:
            return []
        terms = query_terms(query)
        with self._lock:
            segments = self._segments
        if not segments or not terms:
            return []
        words = rank(segments, _WORDS, terms, k, k1=self.k1, b=self.b)
        if not self.ngram:
            return [Hit(page_id, score) for page_id, score in words]
        query_grams = list(dict.fromkeys(char_ngrams(terms, self.ngram)))
        by_grams = rank(segments, _GRAMS, query_grams, k, k1=self.k1, b=self.b,
                        min_match=math.ceil(NGRAM_MIN_MATCH * len(query_grams)))
        return merged_by_rank([[page_id for page_id, _ in words], [page_id for page_id, _ in by_grams]], k)

    def pages_holding(self, terms: Iterable[str]) -> dict[int, set[str]]:
        """The live pages holding any of these word terms (as analyze() writes them: "date:2018-03-10"), each with
        the ones it holds: a typed field's exact matches, whatever their BM25 score."""
        wanted = list(dict.fromkeys(terms))
        with self._lock:
            segments = self._segments
        held: dict[int, set[str]] = {}
        for segment in segments:
            postings = segment.models[_WORDS]
            for term in wanted:
                index = postings.lookup.get(term)
                if index is None:
                    continue
                rows = np.asarray(postings.rows[postings.indptr[index] : postings.indptr[index + 1]])
                for page_id in segment.page_ids[rows[~segment.deleted[rows]]].tolist():
                    held.setdefault(page_id, set()).add(term)
        return held

    def __len__(self) -> int:
        with self._lock:
            return sum(segment.live for segment in self._segments)

    def ids(self) -> np.ndarray:
        with self._lock:
            segments = self._segments
        return np.sort(np.concatenate([segment.live_ids() for segment in segments] or [np.zeros(0, np.int64)]))

    @property
    def fingerprint(self) -> str:
        with self._lock:
            if self._fingerprint is None:
                self._fingerprint = fingerprint_of(self.ids())
            return self._fingerprint

    def is_current(self, ids: Iterable[int]) -> bool:
        """True when this index covers exactly these page ids (compare with the ids SQL has text for)."""
        return fingerprint_of(ids) == self.fingerprint

    def manifest(self) -> Manifest:
        return Manifest(model=MODEL, dim=0, metric=METRIC, count=len(self), kind=KIND)

    def segment_sizes(self) -> list[int]:
        """Live pages of each segment, oldest first."""
        with self._lock:
            return [segment.live for segment in self._segments]

    # ----------------------------------------------------------------------------------------------- persistence

    def save(self, directory: Path, *, generation: int | None = None) -> None:
        """Write the segments and deletions not saved yet and a new commit naming all of them, switch CURRENT to
        it atomically, then delete what neither it nor the commit before it names (a reader still loading the
        previous commit finds its files). `generation`: the collection's generation (SQL) this index is known to
        be current with, or None (see saved_generation)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            segments, fingerprint = list(self._segments), self.fingerprint
        number = _next_commit(directory)
        saved: list[Segment] = []
        for position, segment in enumerate(segments):
            if segment.name is None:
                name = f"{_SEGMENT_PREFIX}{number:06d}-{position:03d}"
                _write_segment(directory / name, segment)
                segment = replace(segment, name=name, deleted_file=None)
            if segment.deleted_file is None and segment.live != segment.rows:
                deleted_file = f"{segment.name}.deleted-{number:06d}.npy"
                rows = np.flatnonzero(segment.deleted).astype("<i4")
                atomic_write(directory / deleted_file, lambda file: np.save(file, rows))
                segment = replace(segment, deleted_file=deleted_file)
            saved.append(segment)
        meta = {
            "manifest": Manifest(
                model=MODEL, dim=0, metric=METRIC, count=sum(s.live for s in saved), kind=KIND
            ).to_dict(),
            "fingerprint": fingerprint,
            "k1": self.k1,
            "b": self.b,
            "ngram": self.ngram,
            "segments": [{"name": s.name, "rows": s.rows, "deleted": s.deleted_file} for s in saved],
            "generation": generation,
            "rewrites": self.rewrites,
        }
        _commit(directory, number, meta)
        with self._lock:
            if self._segments == segments:  # unchanged meanwhile (the same objects): keep the names for the next save
                self._segments = saved
        log.info("saved BM25 index (%d pages, %d segments) to %s", meta["manifest"]["count"], len(saved), directory)

    @staticmethod
    def saved_generation(directory: Path) -> int | None:
        """The collection generation the saved index was last known to be current with (save's or mark_current's),
        from its commit alone; None when not known. While SQL's generation still equals it, the index is current
        without reading a page id: every change to the indexed pages moves the generation."""
        meta = _read_commit(Path(directory))
        generation = meta.get("generation") if meta is not None else None
        return generation if isinstance(generation, int) else None

    @staticmethod
    def mark_current(directory: Path, generation: int) -> None:
        """Record in a new commit (naming the same files) that the saved index is current with this generation:
        the caller has checked its fingerprint against SQL's pages read after reading `generation`."""
        directory = Path(directory)
        meta = _read_commit(directory)
        if meta is None:
            raise IndexError_(f"{directory}: no saved BM25 index to mark")
        if meta.get("generation") != generation:
            _commit(directory, _next_commit(directory), {**meta, "generation": generation})

    @staticmethod
    def saved_fingerprint(directory: Path) -> str | None:
        """The fingerprint of the index saved under `directory`, from its commit alone (no index is read); None
        when there is none, it cannot be read, or it was built with another tokenizer, analyzer or layout."""
        meta = _read_commit(Path(directory))
        fingerprint = meta.get("fingerprint") if meta is not None else None
        return fingerprint if isinstance(fingerprint, str) else None

    @staticmethod
    def saved_key(directory: Path) -> tuple[str, int] | None:
        """What tells saved indexes apart, from one read of its commit: its fingerprint (its page ids) and its
        rewrites (texts replaced in place); None as saved_fingerprint."""
        meta = _read_commit(Path(directory))
        fingerprint = meta.get("fingerprint") if meta is not None else None
        if not isinstance(fingerprint, str):
            return None
        rewrites = meta.get("rewrites", 0)  # type: ignore[union-attr]
        return fingerprint, rewrites if isinstance(rewrites, int) else 0

    @property
    def key(self) -> tuple[str, int]:
        """This index's saved_key."""
        return self.fingerprint, self.rewrites

    @staticmethod
    def saved_ids(directory: Path) -> np.ndarray | None:
        """The page ids of the index saved under `directory`, sorted, from its id and deletion files alone; None when
        there is none or it cannot be read."""
        directory = Path(directory)
        meta = _read_commit(directory)
        if meta is None:
            return None
        try:
            parts = []
            for entry in meta["segments"]:
                ids = np.load(directory / entry["name"] / "page_ids.npy").astype(np.int64)
                if entry.get("deleted"):
                    ids = np.delete(ids, np.load(directory / entry["deleted"]))
                parts.append(ids)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
        return np.sort(np.concatenate(parts or [np.zeros(0, np.int64)]))

    @staticmethod
    def saved_in(directory: Path) -> bool:
        """Whether `save` has completed in `directory` (then `load` finds an index, or raises if it is damaged)."""
        return (Path(directory) / CURRENT_FILE).is_file()

    @classmethod
    def load(cls, directory: Path, *, reuse: Bm25Index | None = None) -> Bm25Index:
        """Load what `save` wrote; ManifestMismatchError if it was built with another tokenizer or is damaged.

        With `reuse` (an index loaded or saved here before), the segments it already holds are taken from it, not
        read again: a reader following a writer reads only the segments and deletion files of the jobs since."""
        directory = Path(directory)
        try:
            commit = (directory / CURRENT_FILE).read_text().strip()
        except FileNotFoundError as exc:
            raise IndexError_(f"{directory}: no saved BM25 index ({CURRENT_FILE} missing)") from exc
        try:
            meta = json.loads((directory / commit).read_text())
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{directory / commit}: cannot read the saved BM25 index: {exc}") from exc
        if not isinstance(meta, dict):
            raise IndexError_(f"{directory / commit}: not a BM25 index commit")
        manifest = Manifest.from_dict(meta.get("manifest"))
        manifest.check(MODEL, 0, METRIC, where=directory / commit)
        manifest.check_kind(KIND, where=directory / commit)
        index = cls(k1=float(meta.get("k1", 1.5)), b=float(meta.get("b", 0.75)), ngram=int(meta.get("ngram", 0)))
        held: dict[str, Segment] = {}
        if reuse is not None and reuse.ngram == index.ngram:
            with reuse._lock:
                held = {segment.name: segment for segment in reuse._segments if segment.name is not None}
        segments = []
        try:
            for entry in meta["segments"]:
                segment = held.get(entry["name"]) or _read_segment(directory, entry["name"], index.ngram)
                if entry.get("deleted") != segment.deleted_file:
                    base = replace(Segment.build(segment.page_ids, segment.models), name=entry["name"])
                    segment = base if not entry.get("deleted") else replace(
                        base.with_deleted(np.load(directory / entry["deleted"])), deleted_file=entry["deleted"]
                    )
                segments.append(segment)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise IndexError_(f"{directory / commit}: cannot read the saved BM25 index: {exc}") from exc
        index._segments = segments
        rewrites = meta.get("rewrites", 0)
        index.rewrites = rewrites if isinstance(rewrites, int) else 0
        manifest.check_count(len(index), where=directory / commit)
        if meta.get("fingerprint") != index.fingerprint:
            raise IndexError_(f"{directory / commit}: page ids do not match the saved fingerprint; it is damaged")
        return index

    # ----------------------------------------------------------------------------------------------- internals

    def _segment(self, pages: Iterable[tuple[int, str]]) -> Segment | None:
        texts: dict[int, str] = {}
        for page_id, text in pages:
            texts[int(page_id)] = text or ""
        if not texts:
            return None
        corpus_tokens = [analyze(text) for text in texts.values()]
        models = {_WORDS: Postings.build(corpus_tokens)}
        if self.ngram:
            models[_GRAMS] = Postings.build([char_ngrams(tokens, self.ngram) for tokens in corpus_tokens])
        return Segment.build(np.fromiter(texts.keys(), dtype=np.int64, count=len(texts)), models)

    @staticmethod
    def _deleted(segments: list[Segment], ids: np.ndarray) -> list[Segment]:
        changed = []
        for segment in segments:
            rows = np.flatnonzero(np.isin(segment.page_ids, ids) & ~segment.deleted)
            changed.append(segment.with_deleted(rows) if len(rows) else segment)
        return changed


_WORDS = "words"
_GRAMS = "grams"


def _read_segment(directory: Path, name: str, ngram: int) -> Segment:
    source = directory / name
    page_ids = np.load(source / "page_ids.npy").astype(np.int64)
    models = {model: Postings.load(source, model) for model in ([_WORDS, _GRAMS] if ngram else [_WORDS])}
    if any(len(postings.lengths) != len(page_ids) for postings in models.values()):
        raise ValueError(f"{source}: rows do not match its page ids")
    return replace(Segment.build(page_ids, models), name=name)


def _write_segment(target: Path, segment: Segment) -> None:
    target.mkdir()
    np.save(target / "page_ids.npy", segment.page_ids.astype("<i8"))
    for model, postings in segment.models.items():
        postings.save(target, model)
    for path in target.iterdir():
        with path.open("rb") as file:
            os.fsync(file.fileno())
    fsync_dir(target)


def _commit(directory: Path, number: int, meta: dict) -> None:
    """Write commit `number`, switch CURRENT to it, and delete what neither it nor the commit before names."""
    body = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    commit = f"{_COMMIT_PREFIX}{number:06d}.json"
    previous = _current_commit(directory)
    atomic_write_bytes(directory / commit, body)
    fsync_dir(directory)
    atomic_write_bytes(directory / CURRENT_FILE, commit.encode())
    atomic_write_bytes(directory / "manifest.json", body)
    _remove_unreferenced(directory, keep=[commit, previous])


def _current_commit(directory: Path) -> str | None:
    try:
        commit = (directory / CURRENT_FILE).read_text().strip()
    except OSError:
        return None
    return commit if commit.startswith(_COMMIT_PREFIX) else None  # not the single directory of an older layout


def _read_commit(directory: Path) -> dict | None:
    """The live commit's JSON, or None when there is none, it cannot be read or another MODEL wrote it."""
    commit = _current_commit(directory)
    if commit is None:
        return None
    try:
        meta = json.loads((directory / commit).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or (meta.get("manifest") or {}).get("model") != MODEL:
        return None
    return meta


def _next_commit(directory: Path) -> int:
    numbers = [int(match.group(1)) for path in directory.iterdir() if (match := _NUMBERED.match(path.name))]
    return max(numbers, default=0) + 1


def _remove_unreferenced(directory: Path, keep: list[str | None]) -> None:
    """Delete every file and directory under `directory` that the `keep` commits do not name: older commits,
    segments merged away, superseded deletion files, a save that died before switching CURRENT, and the single
    directory of an older layout."""
    named = {CURRENT_FILE, "manifest.json"}
    for commit in filter(None, keep):
        named.add(commit)
        try:
            meta = json.loads((directory / commit).read_text())
            for entry in meta.get("segments", []):
                named.update(filter(None, (entry.get("name"), entry.get("deleted"))))
        except (OSError, ValueError, AttributeError):
            continue
    for path in directory.iterdir():
        if path.name in named:
            continue  # the rest, temporary files too, are a dead save's or superseded: saves hold the writer lock
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
