"""Bm25Index: ranking, save/load and the staleness fingerprint (the tokenizer's tests are in tests/test_analysis.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrag.errors import IndexError_, ManifestMismatchError
from mmrag.index import lexical
from mmrag.index.lexical import Bm25Index, fingerprint_of
from mmrag.protocols import LexicalIndex


PAGES = [
    (10, "Invoice 2018-03-04 from ACME Sdn Bhd. Total RM9.00 paid in cash."),
    (11, "Receipt: two coffees and a croissant, total 12.50 EUR, 03/04/2018."),
    (12, "Meeting notes about the quarterly roadmap and hiring plans."),
    (13, "Hotel invoice: 3 nights, total 1,234.56 EUR, check-out 2019-07-01."),
    (14, ""),
    (15, "Parking ticket, 4.00 EUR, valid until 18:00."),
]


@pytest.fixture
def index() -> Bm25Index:
    index = Bm25Index()
    index.rebuild(PAGES)
    return index


def test_implements_the_protocol(index: Bm25Index) -> None:
    assert isinstance(index, LexicalIndex)
    assert len(index) == len(PAGES)


@pytest.mark.parametrize(
    ("query", "best"),
    [
        ("RM9.00", 10),
        ("9.00", 10),
        ("total 12.50", 11),
        ("1,234.56", 13),
        ("hotel nights", 13),
        ("roadmap hiring", 12),
        ("2018-03-04", 10),
        ("03/04/2018", 11),
        ("parking 18:00", 15),
    ],
)
def test_the_right_page_ranks_first(index: Bm25Index, query: str, best: int) -> None:
    hits = index.search(query, 3)
    assert hits[0].page_id == best
    assert all(hit.score > 0 for hit in hits)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_only_matching_pages_are_returned(index: Bm25Index) -> None:
    assert index.search("zeppelin", 5) == []
    assert index.search("", 5) == []
    assert index.search("...", 5) == []
    assert {hit.page_id for hit in index.search("invoice", 10)} == {10, 13}
    assert index.search("invoice", 0) == []


def test_rebuild_replaces_everything() -> None:
    index = Bm25Index()
    index.rebuild(PAGES)
    index.rebuild([(99, "only this page about invoices"), (99, "only this page about receipts")])
    assert len(index) == 1
    assert index.search("invoice", 5) == []  # the old pages are gone
    assert [hit.page_id for hit in index.search("receipts", 5)] == [99]  # a repeated id keeps its last text
    empty = Bm25Index()
    empty.rebuild([])
    assert len(empty) == 0 and empty.search("anything", 3) == []


def test_save_and_load(index: Bm25Index, tmp_path: Path) -> None:
    assert not Bm25Index.saved_in(tmp_path)
    index.save(tmp_path)
    index.save(tmp_path)  # nothing changed: a new commit naming the same segment, which is not written again
    assert Bm25Index.saved_in(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "CURRENT", "commit-000001.json", "commit-000002.json", "manifest.json", "seg-000001-000"
    ]
    loaded = Bm25Index.load(tmp_path)
    assert len(loaded) == len(index)
    assert loaded.fingerprint == index.fingerprint
    for query in ("RM9.00", "total", "hotel invoice 2019-07-01"):
        assert loaded.search(query, 5) == index.search(query, 5)


def test_an_interrupted_save_leaves_the_previous_commit(index: Bm25Index, tmp_path: Path) -> None:
    index.save(tmp_path)
    (tmp_path / "seg-000007-000").mkdir()  # a save that died before switching CURRENT
    (tmp_path / "seg-000007-000" / "words.terms").write_text("total")
    (tmp_path / ".CURRENT.x1y2.tmp").write_text("commit-000007.json")
    assert Bm25Index.load(tmp_path).search("RM9.00", 1)[0].page_id == 10
    index.add([(16, "late page")])
    index.save(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "CURRENT", "commit-000001.json", "commit-000008.json", "manifest.json", "seg-000001-000", "seg-000008-001"
    ]
    assert Bm25Index.load(tmp_path).search("late", 1)[0].page_id == 16


def test_load_checks_the_manifest(index: Bm25Index, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(IndexError_, match="no saved BM25 index"):
        Bm25Index.load(tmp_path)
    index.save(tmp_path)
    monkeypatch.setattr(lexical, "MODEL", "mmrag-bm25+mmrag-tokenize-2")  # the tokenizer changed since the save
    with pytest.raises(ManifestMismatchError, match=r"mmrag-tokenize-1.*mmrag-tokenize-2"):
        Bm25Index.load(tmp_path)
    assert Bm25Index.saved_fingerprint(tmp_path) is None  # so the caller rebuilds it


def test_an_index_of_the_old_single_directory_layout_is_not_read_and_goes_at_the_next_save(tmp_path: Path) -> None:
    (tmp_path / "bm25-000003" / "grams").mkdir(parents=True)
    (tmp_path / "bm25-000003" / "manifest.json").write_text('{"manifest": {"model": "bm25s+mmrag-tokenize-1"}}')
    (tmp_path / "CURRENT").write_text("bm25-000003")
    assert Bm25Index.saved_fingerprint(tmp_path) is None and Bm25Index.saved_ids(tmp_path) is None
    with pytest.raises(IndexError_):
        Bm25Index.load(tmp_path)
    index = Bm25Index()
    index.rebuild(PAGES)
    index.save(tmp_path)
    assert not (tmp_path / "bm25-000003").exists()
    assert Bm25Index.load(tmp_path).fingerprint == index.fingerprint


def test_fingerprint_tells_when_the_index_is_stale(index: Bm25Index) -> None:
    ids = [page_id for page_id, _ in PAGES]
    assert index.fingerprint == fingerprint_of(ids) == fingerprint_of(reversed(ids))
    assert index.is_current(ids)
    assert not index.is_current(ids[:-1])
    assert not index.is_current([*ids, 16])
    assert fingerprint_of([1, 2]) != fingerprint_of([1, 3])
    assert fingerprint_of([]) == fingerprint_of(())


def test_saved_fingerprint_reads_the_manifest_only(tmp_path: Path) -> None:
    assert Bm25Index.saved_fingerprint(tmp_path / "none") is None
    index = Bm25Index()
    index.rebuild([(1, "total 12.50"), (2, "invoice")])
    index.save(tmp_path / "lexical")
    assert Bm25Index.saved_fingerprint(tmp_path / "lexical") == fingerprint_of([1, 2]) == index.fingerprint
    current = (tmp_path / "lexical" / lexical.CURRENT_FILE).read_text()
    (tmp_path / "lexical" / current).write_text("{not json")
    assert Bm25Index.saved_fingerprint(tmp_path / "lexical") is None


def test_a_saved_index_carries_the_generation_it_is_current_with(index: Bm25Index, tmp_path: Path) -> None:
    assert Bm25Index.saved_generation(tmp_path) is None
    with pytest.raises(IndexError_, match="no saved BM25 index"):
        Bm25Index.mark_current(tmp_path, 3)
    index.save(tmp_path, generation=4)
    assert Bm25Index.saved_generation(tmp_path) == 4
    Bm25Index.mark_current(tmp_path, 4)  # already so: no new commit
    assert (tmp_path / lexical.CURRENT_FILE).read_text() == "commit-000001.json"
    Bm25Index.mark_current(tmp_path, 9)  # a new commit naming the same segment
    assert Bm25Index.saved_generation(tmp_path) == 9
    assert (tmp_path / lexical.CURRENT_FILE).read_text() == "commit-000002.json"
    assert Bm25Index.load(tmp_path).fingerprint == index.fingerprint
    index.add([(16, "a page added without knowing the generation")])
    index.save(tmp_path)
    assert Bm25Index.saved_generation(tmp_path) is None


def test_pages_holding_finds_a_fields_exact_terms_in_every_segment_and_not_in_deleted_pages() -> None:
    index = Bm25Index()
    index.rebuild(PAGES)
    index.add([(16, "Taxi from the airport on 03/04/2018, 31.00 EUR")])  # a second segment
    held = index.pages_holding(["date:2018-04-03", "date:--04-03", "date:2019-07-01", "date:1999-01-01"])
    # "2018-03-04" on page 10 is the 4th of March; "03/04/2018" reads both ways, so pages 11 and 16 hold 3 April
    assert held == {11: {"date:2018-04-03", "date:--04-03"}, 16: {"date:2018-04-03", "date:--04-03"},
                    13: {"date:2019-07-01"}}
    index.remove([11])
    assert set(index.pages_holding(["date:2018-04-03"])) == {16}
    assert index.pages_holding([]) == {}


@pytest.mark.parametrize(
    "query", ["UNIHAKKA INTERNATIONAL SDN BHD", "Unihakka International Sdn Bhd", "unihakka internati0nal"]
)
def test_an_entity_name_is_found_whatever_its_case_and_ocrs_slips(query: str) -> None:
    index = Bm25Index()
    index.rebuild([
        (1, "UNIHAKKA INTERNATI0NAL SDN BHD (867388-U) 12, JALAN TAMPOI 7/4 Total 8.70"),  # OCR: a zero for an O
        (2, "INTERNATIONAL BOOK SDN BHD 22 JALAN BUKIT BINTANG Total 12.00"),
        (3, "UNIQLO MALAYSIA SDN BHD LOT 1.0 MID VALLEY Total 79.90"),
        (4, "HAKKA RESTAURANT SDN BHD NO 6 JALAN KLANG LAMA Total 30.10"),
    ])
    assert index.search(query, 4)[0].page_id == 1
