"""Segmented BM25: inverted indexes in immutable segments with per-segment deletions, scored at query time.

Why not bm25s's eager index: it stores each (term, page) pair's final BM25 score, and that score depends on the
whole collection (the term's document frequency, the average page length). So adding a hundred pages to a large
collection meant rebuilding everything from the text in SQL after every job.
Here a segment stores term frequencies and page lengths only; the collection-wide statistics are summed over the
segments at query time, for the query's terms alone. A job adds one small segment; a delete flags rows.

Scores equal bm25s's "lucene" method over the live pages exactly as if they had been indexed in one go (the tests
hold both to that): idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)) and, per occurrence of t in the query,
idf(t) * tf / (tf + k1 * (1 - b + b * len / avg_len)), with N, df and avg_len over live pages only. (Lucene itself
counts deleted documents until a merge; counting live pages keeps the ranking independent of the history.)

Segments merge like a binary counter (the newest into the one before it while it is at least half its size), so a
collection of n pages added in batches of m has about log2(n/m) segments and each page is rewritten about that
many times; a segment with more than half its rows deleted is rewritten without them. Merges work on the arrays
(no text is read or tokenized again).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

MERGE_FACTOR = 2  # merge the newest segment into the previous one while newest * MERGE_FACTOR >= previous
DELETED_SHARE = 0.5  # rewrite a segment once more than this share of its rows are deleted
_MEMO_TERMS = 100_000  # deleted-row counts kept per segment and analyzer
_ARRAYS = ("indptr", "rows", "tfs", "lengths")


@dataclass(frozen=True, eq=False)
class Postings:
    """One segment's inverted index for one analyzer: for term id t, rows[indptr[t]:indptr[t+1]] are the segment rows
    holding it (ascending) and tfs the number of times each holds it; lengths[row] is the row's number of terms."""

    terms: list[str]
    lookup: dict[str, int]
    indptr: np.ndarray  # (terms + 1,) int64
    rows: np.ndarray  # (postings,) int32
    tfs: np.ndarray  # (postings,) float32
    lengths: np.ndarray  # (rows,) int32

    @classmethod
    def build(cls, docs: Sequence[Sequence[str]]) -> Postings:
        lookup: dict[str, int] = {}
        flat: list[int] = []
        lengths = np.zeros(len(docs), dtype=np.int64)
        for row, doc in enumerate(docs):
            lengths[row] = len(doc)
            flat.extend([lookup.setdefault(term, len(lookup)) for term in doc])
        n_rows = len(docs)
        if not flat:
            return cls._from_keys([], lookup, np.zeros(0, np.int64), np.zeros(0, np.float32), n_rows, lengths)
        keys, counts = np.unique(
            np.asarray(flat, dtype=np.int64) * n_rows + np.repeat(np.arange(n_rows, dtype=np.int64), lengths),
            return_counts=True,
        )
        return cls._from_keys(list(lookup), lookup, keys, counts.astype(np.float32), n_rows, lengths)

    @classmethod
    def merge(cls, parts: Sequence[tuple[Postings, np.ndarray]]) -> Postings:
        """One Postings over the kept rows of each part (`keep`: a bool mask over its rows), in order: part 0's kept
        rows first. Terms left with no row are dropped."""
        lookup: dict[str, int] = {}
        n_rows = int(sum(int(keep.sum()) for _, keep in parts))
        stride = max(n_rows, 1)  # keys are term_id * stride + row
        keys, tfs, lengths = [], [], []
        offset = 0
        for postings, keep in parts:
            new_row = np.cumsum(keep, dtype=np.int64) - 1 + offset
            remap = np.fromiter(
                (lookup.setdefault(term, len(lookup)) for term in postings.terms), np.int64, len(postings.terms)
            )
            term_of = np.repeat(np.arange(len(postings.terms), dtype=np.int64), np.diff(postings.indptr))
            live = keep[postings.rows]
            keys.append(remap[term_of[live]] * stride + new_row[postings.rows[live]])
            tfs.append(postings.tfs[live])
            lengths.append(postings.lengths[keep])
            offset += int(keep.sum())
        all_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        order = np.argsort(all_keys)
        sorted_keys = all_keys[order]
        all_terms = list(lookup)
        term_ids = sorted_keys // stride
        used = np.unique(term_ids)  # terms whose every row was deleted go
        terms = [all_terms[i] for i in used]
        renumbered = np.searchsorted(used, term_ids) * stride + sorted_keys % stride
        return cls._from_keys(
            terms,
            dict(zip(terms, range(len(terms)))),
            renumbered,
            np.concatenate(tfs)[order] if tfs else np.zeros(0, np.float32),
            n_rows,
            np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
        )

    @classmethod
    def _from_keys(
        cls, terms: list[str], lookup: dict[str, int], keys: np.ndarray, tfs: np.ndarray, n_rows: int,
        lengths: np.ndarray,
    ) -> Postings:
        """From sorted, distinct keys term_id * n_rows + row."""
        n_rows = max(n_rows, 1)
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys // n_rows, minlength=len(terms)), out=indptr[1:])
        return cls(terms, lookup, indptr, (keys % n_rows).astype(np.int32), tfs.astype(np.float32),
                   lengths.astype(np.int32))

    def save(self, directory: Path, prefix: str) -> None:
        if any("\n" in term for term in self.terms):
            raise ValueError("a BM25 term holds a newline")  # analyze() splits on whitespace: never happens
        (directory / f"{prefix}.terms").write_text("\n".join(self.terms), encoding="utf-8")
        for name in _ARRAYS:
            np.save(directory / f"{prefix}.{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, directory: Path, prefix: str) -> Postings:
        text = (directory / f"{prefix}.terms").read_text(encoding="utf-8")
        terms = text.split("\n") if text else []
        # Memory-mapped, read-only: a collection's postings need not fit in RAM (the page cache keeps what queries
        # touch), and a file a later save deletes stays readable while mapped.
        arrays = {name: np.load(directory / f"{prefix}.{name}.npy", mmap_mode="r") for name in _ARRAYS}
        if len(arrays["indptr"]) != len(terms) + 1 or arrays["indptr"][-1] != len(arrays["rows"]):
            raise ValueError(f"{directory}: {prefix} postings do not match their terms")
        return cls(terms, dict(zip(terms, range(len(terms)))), **arrays)


@dataclass(frozen=True, eq=False)  # compared by identity: a segment's arrays are its content
class Segment:
    """Pages indexed together: row r is page page_ids[r]; `deleted` flags rows removed since. `name` is the
    directory it was saved to (None until saved); `deleted_file` the file holding its deletions as saved."""

    page_ids: np.ndarray  # (rows,) int64
    models: dict[str, Postings]  # analyzer name -> postings over the same rows
    deleted: np.ndarray  # (rows,) bool
    name: str | None = None
    deleted_file: str | None = None
    _memo: dict = field(default_factory=dict, compare=False, repr=False)  # a segment never changes: see with_deleted

    @classmethod
    def build(cls, page_ids: np.ndarray, models: dict[str, Postings]) -> Segment:
        return cls(np.asarray(page_ids, dtype=np.int64), models, np.zeros(len(page_ids), dtype=bool))

    @property
    def rows(self) -> int:
        return len(self.page_ids)

    @property
    def live(self) -> int:
        if "live" not in self._memo:
            self._memo["live"] = self.rows - int(self.deleted.sum())
        return self._memo["live"]

    def live_length(self, model: str) -> int:
        """Total terms of the live rows under `model`."""
        key = ("length", model)
        if key not in self._memo:
            lengths = self.models[model].lengths
            self._memo[key] = int(lengths.sum(dtype=np.int64) - lengths[self.deleted].sum(dtype=np.int64))
        return self._memo[key]

    def norms(self, model: str, k1: float, b: float, average_length: float) -> np.ndarray:
        """k1 * (1 - b + b * length / average_length) of each row, float32: BM25's length normalisation, kept
        for the last average (it changes only when the collection does)."""
        key = ("norms", model)
        cached = self._memo.get(key)
        if cached is None or cached[0] != (k1, b, average_length):
            lengths = self.models[model].lengths.astype(np.float64)
            norms = (k1 * ((1 - b) + b * lengths / average_length)).astype(np.float32)
            self._memo[key] = cached = ((k1, b, average_length), norms)
        return cached[1]

    def deleted_holding(self, model: str, term: str, rows: np.ndarray) -> int:
        """How many deleted rows hold `term` (`rows`: its postings), memoised per term: queries repeat their common
        terms, whose long postings made this count a third of a search's time."""
        counts = self._memo.setdefault(("deleted", model), {})
        count = counts.get(term)
        if count is None:
            if len(counts) >= _MEMO_TERMS:
                counts.clear()
            count = counts[term] = int(np.count_nonzero(self.deleted[rows]))
        return count

    def with_deleted(self, rows: np.ndarray) -> Segment:
        """A copy with these rows also deleted (readers of the old one keep a consistent view)."""
        deleted = self.deleted.copy()
        deleted[rows] = True
        return replace(self, deleted=deleted, deleted_file=None, _memo={})

    def live_ids(self) -> np.ndarray:
        return self.page_ids[~self.deleted]


def merge_segments(segments: Sequence[Segment]) -> Segment:
    """One new segment holding the live rows of these, in order."""
    keeps = [~segment.deleted for segment in segments]
    models = {
        model: Postings.merge([(segment.models[model], keep) for segment, keep in zip(segments, keeps)])
        for model in segments[0].models
    }
    return Segment.build(np.concatenate([s.page_ids[keep] for s, keep in zip(segments, keeps)]), models)


def settle(segments: list[Segment]) -> list[Segment]:
    """The merge policy, run after each change: drop emptied segments, rewrite mostly-deleted ones, then merge the
    newest into the one before while it is at least 1/MERGE_FACTOR of its size."""
    settled = []
    for segment in segments:
        if segment.live == 0:
            continue
        settled.append(merge_segments([segment]) if segment.rows - segment.live > DELETED_SHARE * segment.rows
                       else segment)
    while len(settled) >= 2 and settled[-1].live * MERGE_FACTOR >= settled[-2].live:
        settled[-2:] = [merge_segments(settled[-2:])]
    return settled


def rank(
    segments: Sequence[Segment], model: str, terms: Sequence[str], k: int, *, k1: float, b: float,
    min_match: int = 1,
) -> list[tuple[int, float]]:
    """(page id, BM25 score) of the top k live pages holding at least `min_match` distinct query terms; best first,
    ties by page id. A term repeated in the query counts once per occurrence, as in bm25s."""
    live_pages = sum(segment.live for segment in segments)
    if k <= 0 or live_pages == 0:
        return []
    average_length = sum(segment.live_length(model) for segment in segments) / live_pages
    if average_length == 0:
        return []
    weight = Counter(terms)
    # Each term's postings in each segment, as stored: deleted rows are left in (copying the postings without them
    # cost more than the rest of the search) and are only subtracted from the document frequencies, then zeroed.
    hits: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    frequency: Counter[str] = Counter()
    for segment in segments:
        postings = segment.models[model]
        found = {}
        for term in weight:
            term_id = postings.lookup.get(term)
            if term_id is None:
                continue
            start, end = postings.indptr[term_id], postings.indptr[term_id + 1]
            rows = postings.rows[start:end]
            found[term] = (rows, postings.tfs[start:end])
            frequency[term] += len(rows)
            if segment.live != segment.rows:
                frequency[term] -= segment.deleted_holding(model, term, rows)
        hits.append(found)
    idf = {term: math.log(1 + (live_pages - df + 0.5) / (df + 0.5)) for term, df in frequency.items()}
    page_ids, scores = [], []
    for segment, found in zip(segments, hits):
        if not found:
            continue
        norms = segment.norms(model, k1, b, average_length)
        # All the query terms' postings at once: one gather, one pass of arithmetic and one bincount per segment.
        rows = np.concatenate([rows for rows, _ in found.values()])
        tfs = np.concatenate([tfs for _, tfs in found.values()])
        weights = np.repeat(
            np.array([weight[term] * idf[term] for term in found], dtype=np.float32),
            [len(term_rows) for term_rows, _ in found.values()],
        )
        score = np.bincount(rows, weights=tfs / (norms[rows] + tfs) * weights, minlength=segment.rows)
        if segment.live != segment.rows:
            score[segment.deleted] = 0
        if min_match > 1:
            candidates = np.flatnonzero((score > 0) & (np.bincount(rows, minlength=segment.rows) >= min_match))
        else:
            candidates = np.flatnonzero(score > 0)
        page_ids.append(segment.page_ids[candidates])
        scores.append(score[candidates])
    if not page_ids:
        return []
    ids, values = np.concatenate(page_ids), np.concatenate(scores)
    if len(ids) > k:
        top = np.argpartition(-values, k - 1)[:k]
        # Rows tied with the k-th score outside `top` would make the cut arbitrary: keep every row at that score.
        ids, values = _with_ties(ids, values, top)
    order = np.lexsort((ids, -values))[:k]
    return [(int(ids[i]), float(values[i])) for i in order]


def _with_ties(ids: np.ndarray, values: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = values >= values[top].min()
    return ids[keep], values[keep]
