"""What BM25 matches on beyond tokenize(): date keys, query stop words, character n-grams for OCR misreadings."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrag.index.lexical import Bm25Index, analyze, char_ngrams, date_keys, query_terms


@pytest.mark.parametrize(
    "text",
    ["10-03-2018", "10/03/18", "10.03.2018", "10 Mar 2018", "10MAR18", "March 10th, 2018", "Mar. 10, 2018",
     "2018-03-10", "Date: 10/03/2018 18:22"],
)
def test_one_date_written_many_ways_shares_a_key(text: str) -> None:
    assert "date:2018-03-10" in date_keys(text)


def test_date_keys_read_both_orders_only_when_both_are_dates() -> None:
    assert date_keys("03/04/2018") == ["date:2018-04-03", "date:2018-03-04"]  # day-month and month-day
    assert date_keys("19/02/2018") == ["date:2018-02-19"]  # 19 cannot be a month
    assert date_keys("5 Feb 2018") == ["date:2018-02-05"]  # a month name settles it
    assert date_keys("30 DEC 17") == ["date:2017-12-30"]
    assert date_keys("01/02/70") == ["date:1970-02-01", "date:1970-01-02"]  # %y pivot: 69-99 → 19xx


@pytest.mark.parametrize(
    "text",
    ["31/02/2018", "total 12.50", "1.234.567", "10:30", "12 market 2018", "page 3 of 12", "v1.2.3", "2018"],
)
def test_things_that_are_not_dates_get_no_key(text: str) -> None:
    assert date_keys(text) == []


def test_analyze_keeps_tokenize_tokens_and_adds_date_keys() -> None:
    assert analyze("Paid 9.00 on 05-02-18") == [
        "paid", "9.00", "on", "05-02-18", "05", "02", "18", "date:2018-02-05", "date:2018-05-02",
    ]


def test_query_stop_words_go_unless_nothing_else_is_left() -> None:
    assert query_terms("How much did I pay at ACME on 05/02/2018?")[:2] == ["pay", "acme"]
    assert "did" not in query_terms("how much did I pay")
    assert query_terms("what is it") == ["what", "is", "it"]


def test_char_ngrams_pad_words_and_keep_date_keys_whole() -> None:
    assert char_ngrams(["total", "a", "date:2018-03-10"]) == [
        "#to", "tot", "ota", "tal", "al#", "#a#", "date:2018-03-10",
    ]


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


def test_ocr_letter_for_digit_slips_are_read_as_digits_in_numbers_only() -> None:
    from mmrag.index.lexical import analyze, date_keys, repair_ocr_digits, tokenize

    assert repair_ocr_digits("Date: 2O/O3/2018 TOTAL 1O.5O") == "Date: 20/03/2018 TOTAL 10.50"
    assert repair_ocr_digits("Island 12 bolts, Boss SDN BHD") == "Island 12 bolts, Boss SDN BHD"  # words untouched
    terms = analyze("Date: 2O/O3/2018")
    assert "date:2018-03-20" in terms and "20/03/2018" in terms  # the repaired reading joins the original terms
    clean = "Total 12.50 on 20/03/2018"
    assert analyze(clean) == tokenize(clean) + date_keys(clean)  # nothing to repair: no extra terms
