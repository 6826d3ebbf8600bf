"""ExtractiveAnswerer on real page text (a rendered receipt, invoice and hotel bill): right quote, right page, or
an honest "not answered"."""

from __future__ import annotations

import pytest

from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.answer.prompt import NOT_ANSWERED
from mmrag.protocols import Answerer
from mmrag.types import Answer, RetrievedPage

RECEIPT, INVOICE, HOTEL = 0, 1, 2


@pytest.fixture(scope="module")
def extractive() -> ExtractiveAnswerer:
    return ExtractiveAnswerer()


def test_satisfies_the_protocol(extractive: ExtractiveAnswerer) -> None:
    assert isinstance(extractive, Answerer)
    assert extractive.name == "extractive"


@pytest.mark.parametrize(
    ("question", "page", "quote"),
    [
        ("What is the invoice number?", INVOICE, "Invoice number: INV-2024-0117"),
        ("When is the payment due for the ACME invoice?", INVOICE, "Payment due by 2024-02-16"),
        ("How much was the city tax at the hotel?", HOTEL, "City tax 15.00 EUR"),
        ("How much VAT was charged on the invoice?", INVOICE, "VAT 20% 240.00"),
        ("Which card paid at Starbucks?", RECEIPT, "Paid VISA ****1234"),
        ("What did the blueberry muffin cost?", RECEIPT, "Blueberry Muffin 3.25"),
        ("Which invoice is dated 2024-01-17?", INVOICE, "Invoice date: 2024-01-17"),  # a date matches whole
        ("Where was the 9.02 total paid?", RECEIPT, "Total 9.02"),  # so does an amount
    ],
)
def test_answerable_questions_quote_the_right_line_of_the_right_page(
    extractive: ExtractiveAnswerer, pages: list[RetrievedPage], question: str, page: int, quote: str
) -> None:
    answer = extractive.answer(question, pages)
    assert answer.supported, question
    assert answer.answerer == "extractive"
    cited = answer.citations[0]
    assert (cited.page_id, cited.document_id, cited.page_number, cited.path, cited.score) == (
        pages[page].page_id, pages[page].document_id, pages[page].page_number, pages[page].path, pages[page].score,
    )  # fmt: skip
    assert cited.quote == quote
    assert f"{quote} [1]" in answer.text.splitlines()


def test_terms_spread_over_a_page_answer_it_and_every_quoted_line_is_cited(
    extractive: ExtractiveAnswerer, pages: list[RetrievedPage]
) -> None:
    answer = extractive.answer("What was the total at Starbucks?", pages)
    assert answer.supported
    # "Starbucks" is in the header and "Total" at the bottom: the page answers though no one line holds both.
    # An amount question's answer leads with the amount, cited to its line's page.
    assert answer.text == "9.02 [1]\nSTARBUCKS COFFEE [1]\nTotal 9.02 [1]" and answer.value == "9.02"
    assert [c.page_id for c in answer.citations] == [pages[RECEIPT].page_id]


def test_a_question_several_pages_answer_cites_each(extractive: ExtractiveAnswerer, pages: list[RetrievedPage]) -> None:
    answer = extractive.answer("What is the total?", pages)
    assert answer.text == "9.02 [1]\nTotal 9.02 [1]\nTotal charged 282.00 EUR [2]" and answer.value == "9.02"
    assert [(c.page_id, c.quote) for c in answer.citations] == [
        (pages[RECEIPT].page_id, "Total 9.02"),
        (pages[HOTEL].page_id, "Total charged 282.00 EUR"),
    ]


@pytest.mark.parametrize(
    "question",
    [
        "What is the tip amount?",  # shares only "amount" with the invoice's "Amount due"
        "Who is the CEO of ACME?",  # shares only the company name
        "What is the WiFi password?",
        "What is the phone number of the store?",
        "What is it?",  # no content terms at all
    ],
)
def test_unanswerable_questions_are_not_supported(
    extractive: ExtractiveAnswerer, pages: list[RetrievedPage], question: str
) -> None:
    assert extractive.answer(question, pages) == Answer(
        text=NOT_ANSWERED, citations=[], supported=False, answerer="extractive"
    )


def test_a_label_line_is_quoted_with_its_value_on_the_next_line(extractive: ExtractiveAnswerer) -> None:
    two_columns = RetrievedPage(1, 1, 1, "bill.pdf", 0.9, "City Power & Light\nAmount due\n$ 131.45\nMeter 42-A", None)
    answer = extractive.answer("What is the amount due?", [two_columns])
    assert answer.citations[0].quote == "Amount due $ 131.45"


def test_no_pages_or_no_text_is_not_supported(extractive: ExtractiveAnswerer, pages: list[RetrievedPage]) -> None:
    scanned_without_ocr = RetrievedPage(1, 1, 1, "scan.png", 0.9, "", None)
    assert not extractive.answer("What is the invoice number?", []).supported
    assert not extractive.answer("What is the invoice number?", [scanned_without_ocr]).supported
    assert extractive.answer("What is the invoice number?", [scanned_without_ocr, pages[INVOICE]]).citations[
        0
    ].page_id == (pages[INVOICE].page_id)


def test_stream_yields_the_text_then_the_answer(extractive: ExtractiveAnswerer, pages: list[RetrievedPage]) -> None:
    for question in ("What is the invoice number?", "What is the WiFi password?"):
        *chunks, final = list(extractive.stream(question, pages))
        assert final == extractive.answer(question, pages)
        assert "".join(chunks) == final.text  # type: ignore[union-attr]


def test_the_asked_for_kind_of_value_picks_the_evidence_line(extractive: ExtractiveAnswerer) -> None:
    receipt = RetrievedPage(
        1, 1, 1, "r.jpg", 0.9,
        "CORNER CAFE SDN BHD\nDate: 12/03/2018\nLatte 2 x 4.50 9.00\nTotal 5.57 0.33\n"
        "Total Sales Incl GST 9.00\nCash 10.00\nChange 1.00",
        None,
    )
    # No question word is on the value line; the field label ("total") and the amount make it the evidence,
    # and of two total lines the larger amount (the grand total, not the tax summary) wins.
    paid = extractive.answer("How much did I pay at Corner Cafe on 12/03/2018?", [receipt])
    assert paid.supported and paid.citations[0].quote == "Total Sales Incl GST 9.00"
    total = extractive.answer("Corner Cafe receipt dated 12/03/2018: what was the total?", [receipt])
    assert total.citations[0].quote == "Total Sales Incl GST 9.00"
    when = extractive.answer("When did I buy a latte at Corner Cafe?", [receipt])
    assert when.citations[0].quote == "Date: 12/03/2018"


@pytest.mark.parametrize(
    ("quote", "kind", "question", "value"),
    [
        ("Total Incl. GST@6% RM 26.10", "amount", "How much did I pay?", "26.10"),
        ("TOTAL 42.35 CASH 50.00", "amount", "What was the total?", "42.35"),  # the first after the label
        ("Rounding Adj 0.02 Total 12.30", "amount", "What was the total?", "12.30"),
        ("Subtotal 8.50 Tax 0.51", "amount", "How much?", "8.50"),  # no label word before them: the largest
        ("[OTAL AMOUNT 235.85 14.15 250.00", "amount", "How much did I pay?", "250.00"),  # amount, tax, their total
        ("Total (RM) SR 6 7,395.09 443.71 7,838.80", "amount", "How much did I pay?", "7,838.80"),
        ("CB#: 389772 17/01/2018 8.08:53", "amount", "How much did I pay?", ""),  # a time, not an amount
        ("GST Reg : 0017361544.36", "amount", "How much did I pay?", ""),  # an id
        ("Total Sales Inclusive GST @6.00%", "amount", "How much did I pay?", ""),  # a rate
        ("2 x @17.90 35.80", "amount", "How much did I pay?", "35.80"),  # not the unit price
        ("Total 9.02", "amount", "Was the total 9.02?", ""),  # the question holds it already
        ("Date: 18/10/2017 Time 10:21", "date", "When was the Gin Kee receipt?", "18/10/2017"),
        ("Date: 18/10/2017 paid 19/10/2017", "date", "When, after 18/10/2017?", "19/10/2017"),
        ("No date here", "date", "When?", ""),
    ],
)
def test_the_value_is_read_off_the_evidence_line(quote: str, kind: str, question: str, value: str) -> None:
    from mmrag.answer.extractive import value_in

    assert value_in(quote, kind, question) == value


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("How much did I pay at Gin Kee on 18/10/2017?", "amount"),
        ("Show me what I spent at B & Best Restaurant on 10 February 2017", "amount"),
        ("the Bemed (Sp) Sdn. Bhd. bill from 14/MAY/2017", "amount"),  # a bare lookup of a bill: its total
        ("receipt TONYMOLY VIVA CITY 29/03/2018", "amount"),
        ("When was the Gin Kee receipt printed?", "date"),
        ("Which invoice is dated 2024-01-17?", None),  # asks for an invoice, not a value
        ("Which card paid at Starbucks?", None),
        ("Where is the Gin Kee shop?", None),
        ("Gin Kee hardware opening hours", None),
    ],
)
def test_the_question_says_which_kind_of_value_answers_it(question: str, kind: str | None) -> None:
    from mmrag.answer.extractive import expected_value

    assert expected_value(question) == kind


@pytest.mark.parametrize(
    ("lines", "question", "value", "quote"),
    [
        (  # the total, not the parts of the bill or the cash handed over
            ["GIN KEE HARDWARE", "Total Sales (Excluding GST): 94.34", "GST Summary Amount Tax", "SR 6% 94.34 5.66",
             "Total Sales (Inclusive GST): 100.00", "Cash 150.00 Change 50.00"],
            "How much did I pay at Gin Kee hardware?", "100.00", "Total Sales (Inclusive GST): 100.00",
        ),
        (  # the rounded total is what was paid
            ["99 SPEED MART S/B", "03:16PM 569337 07-02-18", "Total Sales (Inclusive GST) RM 45.34",
             "Rounding RM 45.35", "CREDIT RM 45.35"],
            "How much did I pay at 99 Speed Mart on 07-02-18?", "45.35", "Rounding RM 45.35",
        ),
        (  # field words OCR misread by a letter still label the total
            ["YONG SOON FATT S/B", "Date: 06/02/2017", "Item A 2 x 349.50 699.00", "Tota] Inc.6ST 6%: 758.70",
             "Rounding Adjustuent: 9.00"],
            "How much did I pay at Yong Soon Fatt on 2017-02-06?", "758.70", "Tota] Inc.6ST 6%: 758.70",
        ),
        (  # the tax, however labelled, is a part; a line saying the tax is included labels the total
            ["WAHIN HARDWARE SDN BHD", "Date: 04/12/17", "Sub Total : 40.00", "Total GST Amt : 2.40",
             "Total (RM) : 42.40", "GST payable (6%) : 2.40"],
            "How much did I pay at Wahin Hardware on 04/12/17?", "42.40", "Total (RM) : 42.40",
        ),
        (  # "(Inclusive of GST)" labels the total where OCR lost the word "Total" ("Indusive": OCR's d for cl)
            ["BEYOND BROTHERS HARDWARE", "Date 14/03/2018", "Jotal GST 33.93", "hab@ffos (Indusive of GST): 599.45",
             "CASH : 599.45"],
            "How much did I pay at Beyond Brothers Hardware on 14/03/2018?", "599.45",
            "hab@ffos (Indusive of GST): 599.45",
        ),
        (  # a date in the question names the bill, not its amount: not the time on the date line ("11.19")
            ["SUN WONG KUT SDN BHD", "Total Gross C RM 88.17", "Date Time Num", "21/02/18 11.19 40278 07"],
            "SUN WONG KUT SDN BHD receipt dated 21/02/18: what was the total?", "88.17", "Total Gross C RM 88.17",
        ),
        (  # a possessive's "s" is no term (it matched "S=GST"); "Amt Due" labels what was paid
            ["Nando's Chickenland Malaysia", "28 Mar 18 18:32:36", "Sub Total 129.30", "Amt Due 129.30",
             "GSTSummary Amount(RM) GST(RM)", "S=GST @6%: 122.00 7.30"],
            "How much did I pay at NANDO'S CHICKENLAND MALAYSIA on 28 MAR 18?", "129.30", "Amt Due 129.30",
        ),
        (  # one word: "NetTotal"
            ["C W KHOO HARDWARE", "Date : 01-03-18", "5 Item(s) Total(MYR): 20.00", "GST @ 6% : 1.20",
             "NetTotal(MYR): 21.20", "Cash : 21.20"],
            "How much did I pay at C W Khoo Hardware on 01-03-18?", "21.20", "NetTotal(MYR): 21.20",
        ),
        (  # what was paid after a 5-cent rounding the receipt shows, where OCR lost the rounded total
            ["AEON CO. (M) BHD", "12/03/2018 13:07", "Total Sales Incl GST 42.48", "Rounding Adj 0.02", "Cash 50.00"],
            "How much did I pay at AEON on 12/03/2018?", "42.50", "Total Sales Incl GST 42.48",
        ),
        (  # a line read twice (a second OCR engine's reading comes after the page's own): the later reading
            ["TANJONGMAS BOOKCENTRE", "17/03/2017 21:35", "SUB-TOTAL 62.00", "TOTAL INCL GST RK 62.06",
             "CARD TYPE VISA 62.88", "", "TOTAL INCL GST RK 62.00"],
            "How much did I pay at Tanjongmas Bookcentre on 17/03/2017?", "62.00", "TOTAL INCL GST RK 62.00",
        ),
        (  # a rounding line that reads zero: the total as printed
            ["YONG CEN ENTERPRISE", "25/04/2017", "TOTAL 63.37", "ROUNDING 0.00 7", "CASH 70.00"],
            "How much did I pay at Yong Cen Enterprise on 25/04/2017?", "63.37", "TOTAL 63.37",
        ),
    ],
)
def test_the_total_of_a_receipt(
    extractive: ExtractiveAnswerer, lines: list[str], question: str, value: str, quote: str
) -> None:
    receipt = RetrievedPage(1, 1, 1, "/r.png", 1.0, "\n".join(lines), None)
    answer = extractive.answer(question, [receipt])
    assert answer.value == value and answer.citations[0].quote == quote


def test_a_bill_lookup_is_answered_by_the_page_without_the_words_it_asks_with(extractive: ExtractiveAnswerer) -> None:
    receipt = RetrievedPage(1, 1, 1, "/r.png", 1.0, "\n".join([
        "DOMINO'S PIZZA", "Date: 17/04/2018 19:02", "Sub-Total : 25.60", "Rounding Adj : 6.00",
        "Total Incl. GST : 25.60",
    ]), None)
    # "spent" is on no page: it says what is asked, as "receipt" does in a bare lookup
    for question in ("Show me what I spent at Domino's Pizza on 17 April 2018", "receipt Domino's Pizza 2018-04-17"):
        answer = extractive.answer(question, [receipt])
        assert answer.supported and answer.value == "25.60", question  # not the adjustment OCR read as 6.00
    assert not extractive.answer("Which card paid at Domino's Pizza?", [receipt]).supported  # "paid" is content


def test_a_page_whose_header_ocr_misread_still_answers(extractive: ExtractiveAnswerer) -> None:
    receipt = RetrievedPage(1, 1, 1, "/r.png", 1.0, "\n".join([
        "LEE WAF- FEORIST SON BHD", "Doc No : CS00183546 Date: 52/02/2018", "Total Sales (Excluding GST) : 353.00",
        "TotalGST : 21.18", "Total Sales (Inclusive of GST) : 374.20", "CASH : 400.00",
    ]), None)
    answer = extractive.answer("receipt LEE WAH FLORIST SDN BHD 2018-02-02", [receipt])
    assert answer.supported and answer.value == "374.20"  # "FEORIST": florist misread by a letter
    # short words are not matched loosely: "WAF" is no "wah", and a page holding none of the long ones does not answer
    assert not extractive.answer("receipt LEE WAH ORCHIDS 2018-02-02", [receipt]).supported
