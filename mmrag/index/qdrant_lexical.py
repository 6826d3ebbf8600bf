"""BM25 in Qdrant: the qdrant backend's lexical index, sparse vectors built by mmrag's analyzer and weighted by
Qdrant's IDF modifier, so the lexical path lives where the vectors do and every API replica reads the same one.

One Qdrant collection per mmrag collection (`<prefix>-c<id>-lexical`), point id = SQL page id, three sparse vectors
a page, their dimensions the terms (32 bits of a term's blake2b hash):

    words      BM25's term weight tf / (tf + k1 * (1 - b + b * len / avg_len)), its IDF from Qdrant at query time
               (idf = ln(1 + (N - df + 0.5) / (df + 0.5)), the Lucene form mmrag.index.bm25 uses)
    grams      the same over the terms' character n-grams
    gram_hits  1 for each n-gram a page holds: a query scores the number of its n-grams a page shares, which keeps the
               n-gram ranking to pages holding NGRAM_MIN_MATCH of them, as the local index does

and a payload `fields`: the page's typed terms (dates, amounts), for pages_holding. A search ranks words and n-grams
and merges them by reciprocal rank exactly as mmrag.index.lexical.Bm25Index does. One difference remains: Qdrant
keeps the weights a page was written with, so its length is normalised by the average length when it was added
(kept in the collection's metadata), where the local index uses the average over the live pages at query time. The
pages of one job share an average; `rebuild` makes them all share today's. (`python -m bench sroie` with
MMRAG_INDEX__BACKEND=qdrant measures the effect beside the local index.)

The collection is derived from SQL like the local index: the collection's writer brings it up to date at the end of
a job and after a delete (mmrag.derived), adding the pages it lacks and deleting the ones SQL no longer has.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mmrag.analysis import NGRAM, analyze, char_ngrams, query_terms
from mmrag.config import IndexSettings
from mmrag.index.lexical import B, K1, MODEL, NGRAM_MIN_MATCH, fingerprint_of, merged_by_rank
from mmrag.index.manifest import as_page_ids
from mmrag.index.qdrant_index import _IDS_PER_REQUEST, _Collection, _only, _qdrant
from mmrag.types import Hit

log = logging.getLogger(__name__)

KIND = "qdrant-bm25"
_WORDS, _GRAMS, _GRAM_HITS = "words", "grams", "gram_hits"
_PAGES_PER_UPSERT = 256
# The n-gram ranking's candidates: the pages sharing the most of a query's n-grams (at least NGRAM_MIN_MATCH of
# them), then ranked by BM25 over n-grams. Past this many, the pages sharing fewer are not ranked.
GRAM_CANDIDATES = 2_000
TIE_MARGIN = 64  # hits fetched beyond k, so that a run of equal scores at the cut is cut by page id


def term_index(term: str) -> int:
    """A term's sparse dimension: 32 bits of its blake2b hash (stable across processes and releases)."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "little")


# Every page holds this term (no analyzer term has a NUL in it, and no query asks for it): Qdrant's engine counts a
# page in IDF's N only when its sparse vector is not empty, while BM25 counts every page, a page without text too.
PRESENT = "\x00page"


def _sparse(weights: dict[str, float], models: Any) -> Any:
    merged: dict[int, float] = {}
    for term, weight in weights.items():  # two terms on one hash share its dimension (rare: 32 bits)
        index = term_index(term)
        merged[index] = merged.get(index, 0.0) + weight
    return models.SparseVector(indices=list(merged), values=list(merged.values()))


class QdrantLexicalIndex(_Collection):
    """The LexicalIndex of one mmrag collection in Qdrant (see the module's docstring)."""

    kind = KIND

    def __init__(self, client: Any, name: str, *, settings: IndexSettings, model: str, dim: int, uid: str,
                 exists: bool) -> None:
        super().__init__(client, name, settings=settings, model=model, dim=dim, uid=uid, exists=exists)
        self.k1, self.b, self.ngram = K1, B, NGRAM

    @classmethod
    def open(cls, settings: IndexSettings, directory: Path, *, read_only: bool = False) -> QdrantLexicalIndex:
        """The lexical collection of the mmrag collection whose vectors directory is `directory`; a reader's open of
        one not made yet searches to nothing until its writer makes it. The manifest's model names the analyzer
        (mmrag.index.lexical.MODEL): terms of another one never meet."""
        _, models = _qdrant()
        idf = models.SparseVectorParams(modifier=models.Modifier.IDF)
        return cls._open(settings, directory, "lexical", model=MODEL, dim=1, read_only=read_only, vectors={},
                         sparse={_WORDS: idf, _GRAMS: idf, _GRAM_HITS: models.SparseVectorParams()})

    @staticmethod
    def _created(qdrant: Any, client: Any, collection: str) -> None:
        _, models = _qdrant()
        if not client.local:  # qdrant-client's local mode filters without one (and warns)
            qdrant.create_payload_index(collection, field_name="fields", field_schema=models.PayloadSchemaType.KEYWORD)

    # ----------------------------------------------------------------------------------------------- writing

    def add(self, pages: Iterable[tuple[int, str]]) -> None:
        """Index these (page id, text) pairs, replacing a page already held; a repeated id keeps its last text."""
        _, models = _qdrant()
        texts: dict[int, str] = {}
        for page_id, text in pages:
            texts[int(as_page_ids([page_id])[0])] = text or ""
        if not texts:
            return
        analysed = []
        for page_id, text in texts.items():
            words = analyze(text)
            grams = char_ngrams(words, self.ngram) if self.ngram else []
            analysed.append((page_id, Counter(words), Counter(grams), len(words), len(grams)))
        averages = self._averages_with([(w, g) for *_, w, g in analysed])
        for start in range(0, len(analysed), _PAGES_PER_UPSERT):
            points = []
            for page_id, words, grams, n_words, n_grams in analysed[start : start + _PAGES_PER_UPSERT]:
                present = {PRESENT: 1.0}
                vectors = {_WORDS: _sparse(self._weights(words, n_words, averages[0]) | present, models)}
                if self.ngram:
                    vectors[_GRAMS] = _sparse(self._weights(grams, n_grams, averages[1]) | present, models)
                    vectors[_GRAM_HITS] = _sparse(dict.fromkeys(grams, 1.0), models)
                fields = sorted(term for term in words if ":" in term)  # typed terms: date:..., amount:...
                points.append(models.PointStruct(id=page_id, vector=vectors, payload={"fields": fields}))
            with self._client.using() as qdrant:
                qdrant.upsert(self.name, points=points, wait=True)
        self._version += 1

    def rebuild(self, pages: Iterable[tuple[int, str]]) -> None:
        """Replace the whole index with these pages, all weighted by their own average length."""
        pages = list(pages)
        # A new collection, not every point deleted: deleted points may count in the engine's IDF until it vacuums.
        with self._client.using() as qdrant:
            qdrant.delete_collection(self.name)
            self._create(qdrant, self._uid)
        self._exists = True
        self.add(pages)

    def _weights(self, counts: Counter[str], length: int, average: float) -> dict[str, float]:
        norm = self.k1 * (1 - self.b + self.b * length / average) if average > 0 else self.k1
        return {term: tf / (tf + norm) for term, tf in counts.items()}

    def _averages_with(self, lengths: list[tuple[int, int]]) -> tuple[float, float]:
        """The average page lengths (words, n-grams) over the pages written so far and these, recorded in the
        collection's metadata: these pages' weights are normalised by them."""
        with self._client.using() as qdrant:
            metadata = qdrant.get_collection(self.name).config.metadata or {}
            # Pages deleted since are out of the count, not out of the average: it moves slowly either way.
            before = min(int(metadata.get("mmrag_pages", 0)), int(qdrant.count(self.name, exact=True).count))
            words = (float(metadata.get("mmrag_words_avg", 0.0)) * before + sum(w for w, _ in lengths))
            grams = (float(metadata.get("mmrag_grams_avg", 0.0)) * before + sum(g for _, g in lengths))
            total = before + len(lengths)
            averages = (words / total, grams / total)
            qdrant.update_collection(self.name, metadata={
                "mmrag_pages": total, "mmrag_words_avg": averages[0], "mmrag_grams_avg": averages[1],
            })
        return averages

    # ----------------------------------------------------------------------------------------------- reading

    def search(self, query: str, k: int) -> list[Hit]:
        """Top-k pages, best first: the word ranking, merged by reciprocal rank with the n-gram ranking of pages
        holding NGRAM_MIN_MATCH of the query's n-grams (as Bm25Index.search)."""
        return self.search_within(query, k, None)

    def search_within(self, query: str, k: int, page_ids: np.ndarray | None) -> list[Hit]:
        """search() among these pages only (None: all); the statistics (IDF, lengths) stay the collection's."""
        _, models = _qdrant()
        terms = query_terms(query)
        if k <= 0 or not terms or not self._present():
            return []
        only = _only(page_ids, models)
        words = self._ranking(_sparse(Counter(terms), models), _WORDS, k, only=only)
        if not self.ngram:
            return words
        query_grams = list(dict.fromkeys(char_ngrams(terms, self.ngram)))
        min_match = math.ceil(NGRAM_MIN_MATCH * len(query_grams))
        held = models.Prefetch(
            query=_sparse(dict.fromkeys(query_grams, 1.0), models), using=_GRAM_HITS,
            score_threshold=min_match - 0.5, limit=max(GRAM_CANDIDATES, k), filter=only,
        )
        grams = self._ranking(_sparse(dict.fromkeys(query_grams, 1.0), models), _GRAMS, k, prefetch=held, only=only)
        return merged_by_rank([[hit.page_id for hit in words], [hit.page_id for hit in grams]], k)

    def _ranking(self, vector: Any, using: str, k: int, *, prefetch: Any = None, only: Any = None) -> list[Hit]:
        """The top k by one sparse vector, ties by page id as the local index breaks them: Qdrant cuts a run of
        equal scores at its limit anywhere, so it is asked for more (TIE_MARGIN) and the cut is made here."""
        with self._client.using() as qdrant:
            points = qdrant.query_points(
                self.name, query=vector, using=using, limit=int(k) + TIE_MARGIN, prefetch=prefetch,
                query_filter=only, with_payload=False,
            ).points
        hits = [Hit(int(point.id), float(point.score)) for point in points if point.score > 0]
        hits.sort(key=lambda hit: (-hit.score, hit.page_id))
        return hits[:k]

    def pages_holding(self, terms: Iterable[str]) -> dict[int, set[str]]:
        """The pages holding any of these typed terms ("date:2018-03-10"), each with the ones it holds."""
        _, models = _qdrant()
        wanted = list(dict.fromkeys(terms))
        if not wanted or not self._present():
            return {}
        held: dict[int, set[str]] = {}
        condition = models.Filter(must=[models.FieldCondition(key="fields", match=models.MatchAny(any=wanted))])
        offset = None
        while True:
            with self._client.using() as qdrant:
                points, offset = qdrant.scroll(
                    self.name, scroll_filter=condition, limit=_IDS_PER_REQUEST, offset=offset,
                    with_payload=["fields"], with_vectors=False,
                )
            for point in points:
                held[int(point.id)] = set(point.payload.get("fields", ())) & set(wanted)
            if offset is None:
                return held

    def is_current(self, ids: Iterable[int]) -> bool:
        """True when it holds exactly these page ids (SQL's pages with text). The counts are compared first: a job
        that added or removed pages is told so by one count, and the writer's next call (ids()) is then the only
        scroll of every id."""
        wanted = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
        if len(wanted) != len(self):
            return False
        return fingerprint_of(wanted) == fingerprint_of(self.ids())
