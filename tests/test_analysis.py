"""The text analyzer: tokens keep numbers, dates and amounts whole; date keys; stop words; n-grams; OCR digit repair."""

from __future__ import annotations

import unicodedata

import pytest

from mmrag.analysis import (
    _tokenize_chunk, analyze, char_ngrams, date_keys, date_terms, month_day_keys, query_terms, repair_ocr_digits,
    tokenize,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Total: 12.50", ["total", "12.50"]),
        ("paid 1,234.56 EUR", ["paid", "1,234.56", "eur"]),
        ("on 2018-03-04.", ["on", "2018-03-04", "2018", "03", "04"]),
        ("03/04/2018", ["03/04/2018", "03", "04", "2018"]),
        ("at 10:30", ["at", "10:30", "10", "30"]),
        ("RM9.00", ["rm9.00", "rm", "9.00"]),
        ("$12.50", ["12.50"]),
        ("Invoice No. 4711", ["invoice", "no", "4711"]),
        ("Café STRASSE Straße", ["café", "strasse", "strasse"]),
        ("ＴＯＴＡＬ １２.５０", ["total", "12.50"]),  # full-width forms, common in OCR output
        ("e-mail, well-known", ["e", "mail", "well", "known"]),
        ("", []),
    ],
)
def test_tokenize(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


def test_an_amount_is_not_split_into_parts() -> None:
    tokens = tokenize("Total RM9.00 and 12.50")
    assert "9.00" in tokens and "12.50" in tokens
    assert not {"9", "00", "12", "50"} & set(tokens)


def test_tokenize_by_chunks_equals_one_pass_over_the_text() -> None:
    """tokenize() works chunk by chunk (cached), which is only right because no token spans whitespace: the
    regex run over the whole normalised text must give the same tokens, in order, for every kind of token."""
    texts = [
        "TOTAL RM9.00 on 2018-03-04 at 10:30, ref A4/12-B\tnet 1,234.56\u00a0USD12 e-mail",
        "Ｆｕｌｌ－ｗｉｄｔｈ １２.５０ ﬁnance\u2003Straße ΣΊΣΥΦΟΣ 東京 2018\u3000年 03/04/2018",
        "line one\nline two\r\n\x1c\x1dsep\u2028para\u2029end  ..  --  12.  .5 a_b_c 9a9 x1.2.3",
    ]
    for text in texts:
        normalised = unicodedata.normalize("NFKC", text).casefold()
        whole = list(_tokenize_chunk.__wrapped__(normalised))
        assert tokenize(text) == whole
        assert tokenize(text) == tokenize(text)  # the cached second pass


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
        "date:--02-05", "date:--05-02",  # month-day keys: a year OCR misread still meets
        "amount:9.00",
    ]


def test_query_stop_words_go_unless_nothing_else_is_left() -> None:
    assert query_terms("How much did I pay at ACME on 05/02/2018?")[:2] == ["pay", "acme"]
    assert "did" not in query_terms("how much did I pay")
    assert query_terms("what is it") == ["what", "is", "it"]


def test_char_ngrams_pad_words_and_keep_date_keys_whole() -> None:
    assert char_ngrams(["total", "a", "date:2018-03-10"]) == [
        "#to", "tot", "ota", "tal", "al#", "#a#", "date:2018-03-10",
    ]


def test_ocr_letter_for_digit_slips_are_read_as_digits_in_numbers_only() -> None:
    assert repair_ocr_digits("Date: 2O/O3/2018 TOTAL 1O.5O") == "Date: 20/03/2018 TOTAL 10.50"
    assert repair_ocr_digits("Island 12 bolts, Boss SDN BHD") == "Island 12 bolts, Boss SDN BHD"  # words untouched
    terms = analyze("Date: 2O/O3/2018")
    assert "date:2018-03-20" in terms and "20/03/2018" in terms  # the repaired reading joins the original terms
    clean = "Total 12.50 on 20/03/2018"
    dates = date_keys(clean)
    # nothing to repair: no more
    assert analyze(clean) == tokenize(clean) + dates + month_day_keys(clean, dates) + ["amount:12.50"]


# The table the dates must hold to: printed forms, OCR-damaged forms, typed forms → the date terms they give
# (full-date keys and month-day keys); and forms that must give none.
DATE_TABLE = [
    ("18/10/2017", {"date:2017-10-18", "date:--10-18"}),
    ("18-10-17", {"date:2017-10-18", "date:--10-18"}),
    ("2017-10-18", {"date:2017-10-18", "date:--10-18"}),
    ("18 Oct 2017", {"date:2017-10-18", "date:--10-18"}),
    ("18OCT17", {"date:2017-10-18", "date:--10-18"}),
    ("October 18th, 2017", {"date:2017-10-18", "date:--10-18"}),
    ("18 October 2017", {"date:2017-10-18", "date:--10-18"}),
    ("1O/1O/2O17", {"date:2017-10-10", "date:--10-10"}),  # letter O for zero, repaired
    ("14/dun/2017", {"date:2017-06-14", "date:--06-14"}),  # OCR's "dun": June
    ("14/fMay/2017", {"date:2017-05-14", "date:--05-14"}),  # a stray letter before May
    ("25-FEB-2017", {"date:2017-02-25", "date:--02-25"}),
    ("25/Feb/201707:43:54", {"date:2017-02-25", "date:--02-25"}),  # the year run into the time after it
    ("25/02/201707:43", {"date:2017-02-25", "date:--02-25"}),
    ("5 March 201812:30", {"date:2018-03-05", "date:--03-05"}),
    ("25/02/2017123", set()),  # digits run on with no time after them: no date
    ("Date:25/02/2017", {"date:2017-02-25", "date:--02-25"}),  # a label's colon with no space after it
    ("12:25/02/2017", set()),  # after a time's colon: digits run on, no date
    ("20180428", {"date:2018-04-28", "date:--04-28"}),  # no separators, as systems print them
    ("12- 01-19", {"date:2019-01-12", "date:2019-12-01", "date:--01-12", "date:--12-01"}),  # a space OCR put in
    ("19/62/2018", {"date:2018-02-19", "date:--02-19"}),  # OCR's 6 for a 0: the one digit that mends it
    ("O7/B1/18", {"date:2018-01-07", "date:2018-07-01", "date:2018-07-31",  # letters for digits, then an 8 for
                  "date:--01-07", "date:--07-01", "date:--07-31"}),  # a 0 or a 3: each reading that mends it
    ("March 5th", {"date:--03-05"}),  # a question's date with no year: month and day only
    ("5 March", {"date:--03-05"}),
    ("the 5th of March", {"date:--03-05"}),
    ("May 5th", {"date:--05-05"}),
    ("03/04/2018", {"date:2018-04-03", "date:2018-03-04", "date:--04-03", "date:--03-04"}),  # both readings
    ("may 5 people", set()),  # "may" the verb
    ("14/mat/2017", set()),  # one edit from both March and May: no month
    ("31/02/2018", set()),
    ("TOTAL 12.50", set()),
    ("10:30", set()),
    ("page 3 of 12", set()),
    ("12345678", set()),  # eight digits that are no year, month and day
    ("20181328", set()),  # month 13
    ("invoice 201804281", set()),  # nine digits
    ("45/67/2018", set()),  # no one digit mends it
    ("Tel: 03- 876860", set()),
]


@pytest.mark.parametrize(("text", "expected"), DATE_TABLE)
def test_the_date_table(text: str, expected: set[str]) -> None:
    assert {term for term in analyze(text) if term.startswith("date:")} == expected


def test_date_terms_are_a_texts_dates_as_a_field() -> None:
    terms = date_terms("the Gin Kee receipt from 18 October 2017, or was it the 19/10/2017 one?")
    assert sorted(terms) == ["date:--10-18", "date:--10-19", "date:2017-10-18", "date:2017-10-19"]
    assert len(set(terms)) == len(terms)
    assert date_terms("gin kee hardware") == []


def test_a_page_with_two_dates_keeps_both_and_a_question_meets_either() -> None:
    page = "INVOICE DATE 18/10/2017 DUE DATE 18 NOV 2017 TOTAL 42.35"
    terms = set(analyze(page))
    assert {"date:2017-10-18", "date:2017-11-18", "date:--10-18", "date:--11-18"} <= terms
    assert "date:--11-18" in query_terms("what was due on November 18th?")
    # a printed 2018 that OCR read as 2016 still shares the month-day term with the question
    assert set(query_terms("the Bhpetrol bill from 10-04-2018")) & set(analyze("10-04-2016")) >= {"date:--04-10"}


# Amounts, as receipts print them, OCR reads them and people type them → the amount terms they give; and numbers
# that are no amounts.
AMOUNT_TABLE = [
    ("TOTAL 15.00", {"amount:15.00"}),
    ("RM 15", {"amount:15.00"}),  # a question's whole amount after a currency
    ("RM15", {"amount:15.00"}),
    ("$1,200", {"amount:1200.00"}),
    ("1,234.56", {"amount:1234.56"}),
    ("1234.56", {"amount:1234.56"}),
    ("4,90", {"amount:4.90"}),  # OCR's comma for a point, or a European price
    ("RM9.00", {"amount:9.00"}),
    ("TOTAL 1O.5O", {"amount:10.50"}),  # letter O for zero, repaired
    ("GST 6% 99.80 5.64", {"amount:99.80", "amount:5.64"}),
    ("Date 10.03.2018 10:30", set()),  # a date and a time
    ("qty 3 page 12 of 2018", set()),  # integers without a currency
    ("12.5", set()),
    ("v1.2.3", set()),
    ("alarm 5", set()),
]


@pytest.mark.parametrize(("text", "expected"), AMOUNT_TABLE)
def test_the_amount_table(text: str, expected: set[str]) -> None:
    assert {term for term in analyze(text) if term.startswith("amount:")} == expected


def test_an_amount_typed_in_a_question_meets_the_one_printed_on_the_page() -> None:
    page = set(analyze("SUBTOTAL 14.15 ROUNDING 0.00 TOTAL 15.00 CASH 20.00"))
    assert "amount:15.00" in set(query_terms("the receipt where I paid RM 15")) & page
    assert char_ngrams(["amount:15.00"]) == ["amount:15.00"]  # whole, as date keys are
