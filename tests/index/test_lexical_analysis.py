"""What BM25 matches on beyond word tokens: dates across formats and character n-grams for OCR misreadings."""

from __future__ import annotations

from pathlib import Path

from mmrag.index.lexical import Bm25Index


PAGES = [
    (1, "AEON CO. (M) BHD\nTotal Sales 75.06\nDate 06/03/2018"),
    (2, "SPEED MART\nTotal 141.50\n05/02/2018"),
    (3, "Quarterly roadmap and hiring plans"),
    (4, "Parking ticket, valid until 18:00"),
]


def test_a_word_misread_by_ocr_is_still_found() -> None:
    pages = [(1, "TEO HENG STATI0NERY & B00KS total 4.60"), (2, "99 SPEED MART total 3.70"), (3, "hiring plans")]
    index = Bm25Index()
    index.rebuild(pages)
    assert [hit.page_id for hit in index.search("stationery", 3)] == [1]  # no word matches; 7 of 11 n-grams do
    words_only = Bm25Index(ngram=0)
    words_only.rebuild(pages)
    assert words_only.search("stationery", 3) == []


def test_dates_match_across_formats_and_n_grams_need_a_real_share_of_the_query() -> None:
    index = Bm25Index()
    index.rebuild(PAGES)
    assert index.search("receipt dated 6 March 2018", 4)[0].page_id == 1
    assert index.search("05-02-18", 4)[0].page_id == 2
    assert index.search("zeppelin", 4) == []  # no page holds 30% of its n-grams
    # "parking" holds 2 of the 6 n-grams of "hiring" ("ing", "ng#"): it is returned, below the page with the word
    assert [hit.page_id for hit in index.search("hiring", 4)] == [3, 4]


def test_the_n_gram_model_is_saved_and_loaded(tmp_path: Path) -> None:
    index = Bm25Index()
    index.rebuild(PAGES)
    index.save(tmp_path)
    loaded = Bm25Index.load(tmp_path)
    assert loaded.ngram == index.ngram
    for query in ("AFON", "speed mart 141.50", "6 March 2018"):
        assert loaded.search(query, 4) == index.search(query, 4)
