"""BM25 as Qdrant sparse vectors (mmrag.index.qdrant_lexical) against the local index it stands in for
(Bm25Index, itself held to bm25s's scores): the same pages in the same order, the same typed-term lookups."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmrag.config import IndexSettings, QdrantSettings
from mmrag.errors import ManifestMismatchError
from mmrag.index.lexical import Bm25Index
from mmrag.index.qdrant_index import close_clients
from mmrag.index.qdrant_lexical import QdrantLexicalIndex
from mmrag.protocols import LexicalIndex
from tests.index.test_bm25_segments import _page, _query


@pytest.fixture(params=["edge", "client"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexSettings]:
    yield IndexSettings(backend="qdrant", qdrant=QdrantSettings(path=tmp_path / "qdrant", embedded=request.param))
    close_clients()


RECEIPTS = [
    (11, "GIN KEE HARDWARE receipt 18/10/2017 total RM 15.00 cash"),
    (12, "GIN KEE HARDWARE receipt 19/10/2017 total RM 9.00"),
    (13, "Popular Book Co. 2017-10-18 Total incl. GST 23.50"),
    (14, "SANYU STATIONERY 03 February 2016 amount 7.20"),
    (15, "menu coffee tea cake"),
    (16, ""),
]


def assert_same(qdrant: QdrantLexicalIndex, local: Bm25Index, queries: list[str], k: int = 10) -> None:
    for query in queries:
        got, expected = qdrant.search(query, k), local.search(query, k)
        assert [hit.page_id for hit in got] == [hit.page_id for hit in expected], query
        assert [hit.score for hit in got] == pytest.approx([hit.score for hit in expected], rel=1e-6), query


def test_one_batch_ranks_as_the_local_index(tmp_path: Path, settings: IndexSettings) -> None:
    rng = random.Random(5)
    pages = [(3 * i + 7, _page(rng)) for i in range(300)] + RECEIPTS
    qdrant = QdrantLexicalIndex.open(settings, tmp_path / "collections" / "1" / "vectors")
    assert isinstance(qdrant, LexicalIndex)
    qdrant.add(pages)
    local = Bm25Index()
    local.add(pages)
    queries = [_query(rng) for _ in range(60)] + [
        "gin kee 18 October 2017", "Gin Kee receipt", "recipt totl", "RM9.00", "2018-03-04", "nothing-like-this",
        "w1 w1 total", "cafe",
    ]
    assert_same(qdrant, local, queries)
    for k in (1, 3, 50):
        assert_same(qdrant, local, queries[:10], k=k)
    dates = ["date:2017-10-18", "date:--10-18", "date:2016-02-03", "date:1999-01-01"]
    assert qdrant.pages_holding(dates) == local.pages_holding(dates) and qdrant.pages_holding(dates)
    assert len(qdrant) == len(local) and qdrant.is_current([page_id for page_id, _ in pages])


def test_deletes_replacements_and_a_rebuild(tmp_path: Path, settings: IndexSettings) -> None:
    rng = random.Random(6)
    pages = [(i, _page(rng)) for i in range(1, 121)] + [(200 + i, text) for i, text in RECEIPTS]
    qdrant = QdrantLexicalIndex.open(settings, tmp_path / "collections" / "1" / "vectors")
    qdrant.add(pages)
    gone = [page_id for page_id, _ in pages[::4]]
    assert qdrant.remove(gone) == len(gone) and qdrant.remove(gone) == 0
    replaced = [(2, "GIN KEE HARDWARE receipt 18/10/2017"), (3, "w5 w5 w5")]
    qdrant.add(replaced)
    live = {page_id: text for page_id, text in pages if page_id not in gone} | dict(replaced)
    assert set(qdrant.ids().tolist()) == set(live)
    queries = [_query(rng) for _ in range(40)] + ["gin kee 18/10/2017", "w5"]
    for query in queries:  # whatever the weights were written with: only live pages, each once
        hits = qdrant.search(query, 200)
        assert {hit.page_id for hit in hits} <= set(live) and len({hit.page_id for hit in hits}) == len(hits)
    assert 2 in qdrant.pages_holding(["date:2017-10-18"])
    # A rebuild weighs every page by today's average length: the local index's ranking again.
    qdrant.rebuild(live.items())
    local = Bm25Index()
    local.add(live.items())
    assert_same(qdrant, local, queries)


def test_a_reader_finds_nothing_before_its_writer_made_it(tmp_path: Path, settings: IndexSettings) -> None:
    directory = tmp_path / "collections" / "2" / "vectors"
    reader = QdrantLexicalIndex.open(settings, directory, read_only=True)
    assert reader.search("receipt", 5) == [] and reader.pages_holding(["date:2017-10-18"]) == {} and len(reader) == 0
    QdrantLexicalIndex.open(settings, directory).add(RECEIPTS)
    assert {hit.page_id for hit in reader.search("gin kee", 5)[:2]} == {11, 12}


def test_an_index_of_another_analyzer_is_refused(tmp_path: Path, settings: IndexSettings,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "collections" / "3" / "vectors"
    QdrantLexicalIndex.open(settings, directory).add(RECEIPTS)
    monkeypatch.setattr("mmrag.index.qdrant_lexical.MODEL", "mmrag-bm25+another-analyzer")
    with pytest.raises(ManifestMismatchError, match="another-analyzer"):
        QdrantLexicalIndex.open(settings, directory)
