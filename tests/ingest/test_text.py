"""Text normalisation, real Tesseract OCR, and the never/auto/always choice between text layer and OCR."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from mmrag.errors import ConfigError, MissingToolError
from mmrag.ingest import check_ocr, choose_text, normalize_text, ocr
from mmrag.ingest import text as text_module
from mmrag.ingest.text import PHOTO_COLOURFULNESS, colourfulness, looks_like_photo
from mmrag.layout import Word
from mmrag.types import TextSource
from tests.ingest.samples import spy_on_reads, text_image

WORDS = ["INVOICE 4217", "Harbour Street"]
BLANK = Image.new("RGB", (400, 200), "white")
LAYER = "A text layer long enough to count."


@pytest.fixture(scope="module")
def words_image() -> Image.Image:
    return text_image(WORDS)


def no_ocr(image: Image.Image, lang: str = "eng", *, psm: int | None = None) -> str:
    raise AssertionError("OCR must not run here")


def reads(*readings: tuple[int | None, str, float]):  # noqa: ANN201 - a fake text_module.read
    """A stand-in for Tesseract's reading (text_module.read) that gives these (psm, text, confidence) readings, each
    of whose words is read with that confidence (all clear, or none: CLEAR_WORD)."""
    by_psm = {
        psm: text_module.Reading(text, confidence, round(text_module.count_chars(text) * confidence / 100),
                                 text if confidence >= text_module.CLEAR_WORD else "")
        for psm, text, confidence in readings
    }
    return lambda image, lang="eng", psm=None: by_psm[psm]


def rapid_says(text: str):  # noqa: ANN201 - a fake text_module.rapid_lines
    """A stand-in for the second engine's reading: these lines, one a tenth of the page high each, top to bottom."""
    return lambda image: [(line, (0.1, i / 10, 0.9, (i + 0.8) / 10), 0.9) for i, line in enumerate(text.splitlines())]


def test_normalize_text() -> None:
    raw = "  Title\r\n\r\n\r\n\r\nfirst\t\tline \u00a0 here  \r\nsecond\x00 line\x19\n\n\n"
    assert normalize_text(raw) == "Title\n\nfirst line here\nsecond line"
    assert normalize_text(" \n\t ") == ""


def test_ocr_reads_rendered_text(words_image: Image.Image) -> None:
    found = ocr(words_image)
    assert "INVOICE" in found and "4217" in found and "Harbour" in found


def test_check_ocr_reports_the_version_and_unknown_languages() -> None:
    assert check_ocr("eng")
    with pytest.raises(ConfigError, match="xxx"):
        check_ocr("eng+xxx")


def test_ocr_with_an_uninstalled_language_is_a_config_error(words_image: Image.Image) -> None:
    with pytest.raises(ConfigError, match="xxx"):
        ocr(words_image, lang="xxx")


def test_missing_tesseract_is_a_clear_error(words_image: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module.pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(MissingToolError, match="apt-get install tesseract-ocr") as err:
        ocr(words_image)
    assert "MMRAG_INGEST__OCR=never" in str(err.value)


def test_never_uses_the_layer_as_it_is_and_never_ocrs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "ocr", no_ocr)
    monkeypatch.setattr(text_module, "read", no_ocr)
    assert choose_text(BLANK, "short", mode="never") == ("short", TextSource.TEXT_LAYER)
    assert choose_text(BLANK, "", mode="never") == ("", TextSource.NONE)
    assert choose_text(BLANK, None, mode="never") == ("", TextSource.NONE)  # an image file


def test_auto_keeps_a_long_enough_layer_without_ocr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "ocr", no_ocr)
    monkeypatch.setattr(text_module, "read", no_ocr)
    assert choose_text(BLANK, LAYER, mode="auto", min_chars=16) == (LAYER, TextSource.TEXT_LAYER)


def test_auto_ocrs_a_short_layer_and_images(words_image: Image.Image) -> None:
    text, source = choose_text(words_image, "x  y", mode="auto", min_chars=16)  # 2 characters < 16
    assert source == TextSource.OCR and "INVOICE" in text
    text, source = choose_text(words_image, None, mode="auto")
    assert source == TextSource.OCR and "Harbour" in text


def test_always_replaces_the_layer_with_ocr(words_image: Image.Image) -> None:
    text, source = choose_text(words_image, LAYER, mode="always")
    assert source == TextSource.OCR and "INVOICE" in text and "count" not in text


def test_ocr_that_finds_nothing_falls_back_to_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "read", lambda image, lang="eng", psm=None: text_module.Reading("", 0.0))
    assert choose_text(BLANK, LAYER, mode="always") == (LAYER, TextSource.TEXT_LAYER)
    assert choose_text(BLANK, "tiny", mode="auto") == ("tiny", TextSource.TEXT_LAYER)
    assert choose_text(BLANK, None, mode="auto") == ("", TextSource.NONE)


def _photo() -> Image.Image:
    """A green blob between red and blue gradients, with sensor noise: colourful, and no band of rows that could be
    a line of text (horizontal stripes would be one)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320]
    blob = 255 * np.exp(-((x - 160) ** 2 + (y - 120) ** 2) / 8000)
    pixels = np.stack([x * 255 / 320, blob, 255 - x * 255 / 320], axis=-1)
    return Image.fromarray((pixels + rng.normal(0, 8, pixels.shape)).clip(0, 255).astype(np.uint8))


def _on_orange(image: Image.Image) -> Image.Image:
    """Black text on an orange background (a poster, a slide): as colourful as a photo, but with lines of text."""
    pixels = np.asarray(image)
    return Image.fromarray(np.where(pixels > 128, np.array([255, 170, 40]), pixels).astype(np.uint8))


def test_colourfulness_tells_grey_pages_from_photos(words_image: Image.Image) -> None:
    assert colourfulness(words_image) == 0 and colourfulness(BLANK) == 0
    assert colourfulness(_photo()) > 2 * PHOTO_COLOURFULNESS
    assert looks_like_photo(_photo())
    assert not looks_like_photo(words_image)  # grey
    assert not looks_like_photo(_on_orange(words_image))  # colourful, but two lines of text


def test_auto_skips_ocr_on_photos_only_when_asked(monkeypatch: pytest.MonkeyPatch, words_image: Image.Image) -> None:
    ocred: list[tuple[int, int]] = []
    # the first reading of each page (a reading this short is tried again, as one block: psm 6)
    monkeypatch.setattr(
        text_module, "read",
        lambda image, lang="eng", psm=None: (
            (psm is None and ocred.append(image.size)) or text_module.Reading("SIGN", 90)
        ),
    )
    assert choose_text(_photo(), None, mode="auto", skip_photos=True) == ("", TextSource.NONE)
    assert ocred == []
    assert choose_text(_photo(), None, mode="auto") == ("SIGN", TextSource.OCR)  # skip_photos off
    assert choose_text(_photo(), "", mode="auto", skip_photos=True)[1] == TextSource.OCR  # a PDF page: a document
    assert choose_text(_photo(), None, mode="always", skip_photos=True)[1] == TextSource.OCR
    assert choose_text(_on_orange(words_image), None, mode="auto", skip_photos=True)[1] == TextSource.OCR
    assert len(ocred) == 4


def _receipt_on_pink_paper() -> Image.Image:
    """A receipt whose right half is pink paper: colourful, and Otsu's threshold splits the pink from the white,
    so the row profile sees one band the height of the page and no line of text. A detector sees eight lines."""
    lines = ["GIN KEE HARDWARE SDN BHD", "NO 290 JALAN AIR PANAS", "Date 18/10/2017 Cash", "1 PAINT BRUSH 12.00",
             "2 NAILS 1KG 8.50", "Total 42.35", "Change 7.65", "Thank you, come again"]
    pixels = np.asarray(text_image(lines, size=(760, 620), font_size=36)).copy()
    right = pixels[:, 380:]
    right[right.sum(axis=2) > 600] = (235, 120, 170)
    return Image.fromarray(pixels)


def test_a_document_on_coloured_paper_is_never_taken_for_a_photo() -> None:
    receipt = _receipt_on_pink_paper()
    assert colourfulness(receipt) > 2 * PHOTO_COLOURFULNESS and text_module._line_heights(receipt).size == 0
    assert not looks_like_photo(receipt)  # the text detector finds its lines
    text, source = choose_text(receipt, None, mode="auto", skip_photos=True)
    assert source.startswith("ocr") and "GIN KEE" in text and "18/10/2017" in text


def test_a_poster_on_colour_is_still_read(words_image: Image.Image) -> None:
    text, source = choose_text(_on_orange(words_image), None, mode="auto", skip_photos=True)
    assert source == TextSource.OCR and "INVOICE" in text


RECEIPT_LINES = ["GIN KEE HARDWARE SDN BHD", "12 Harbour Street, Klang", "Invoice 4217 Cashier 03"]
LONG = (1100, 420)  # four lines of text_image's print: a reading long enough (OCR_RETRY_BELOW_CHARS) to be kept


def test_a_page_read_with_its_date_costs_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_on_reads(monkeypatch)
    text, path = text_module.ocr_page(text_image(RECEIPT_LINES + ["Date: 18/10/2017 Total 42.35"], size=LONG))
    assert "18/10/2017" in text and path == "ocr" and calls == [None]


def test_a_page_read_without_a_date_is_read_again_as_one_block_and_nothing_is_doubled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = spy_on_reads(monkeypatch)
    text, path = text_module.ocr_page(text_image(RECEIPT_LINES + ["Total 42.35 paid in cash"], size=LONG))
    assert calls == [None, text_module.OCR_BLOCK_PSM]
    # the second reading holds the same lines: the text is the first reading's, each line once
    assert path == "ocr" and text.count("HARDWARE") == 1 and text.count("Harbour") == 1 and "cash" in text


def test_lines_only_the_second_reading_found_are_added_after_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ("SLF CASH & CARRY\n(002107265-V)\nNO. 15 JLN TSJ 2, TMN SUBANG JASA\nTotal : 20.00 1.20\n"
             "Cash 50.00 Change 30.00")
    second = ("SLF CASH & CARRV\nDocNo CS241999 Date 03/02/2018\n(002107265-V)\nNO. 15 JLN TSJ 2, TMN SUBANG JASA\n"
              "Tota1 : 20.00 1.20\n|\nCash 50.00 Change 30.00")
    monkeypatch.setattr(text_module, "read", reads((None, first, 90.0), (text_module.OCR_BLOCK_PSM, second, 80.0)))
    text, path = text_module.ocr_page(BLANK)
    assert path == "ocr+block"
    assert text == first + "\n\nDocNo CS241999 Date 03/02/2018"  # misread copies of held lines and specks stay out
    assert choose_text(BLANK, None, mode="auto")[1] == "ocr+block"  # the page records the path


def test_a_second_reading_of_a_held_line_with_a_date_of_its_own_is_added() -> None:
    # the first reading has the line but lost its date; the second reads it: the date is what the page needs
    first = "RESTORAN WAN SHENG\nDate * 12-11-2O!7 18:45:28\nTotal 9.00"
    second = "RESTORAN WAN SHENG\nDate * 12-11-2017 18:45:28\nTotal 9.00"
    assert text_module.lines_not_in(second, first) == ["Date * 12-11-2017 18:45:28"]
    # a misread date: both readings are kept, for the page cannot tell which is right
    misread = "RESTORAN WAN SHENG\nDate * 18-11-2017 18:45:28\nTotal 9.00"
    assert text_module.lines_not_in(second, misread) == ["Date * 12-11-2017 18:45:28"]
    assert text_module.lines_not_in(second, second.replace("Total", "Tota1")) == []  # the same date: held


def test_a_date_read_from_words_tesseract_was_unsure_of_is_read_by_the_second_engine_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tesseract = ("99 SPEED MART S/B\nLOT P.T. 2811, JALAN ANGSA\n1214-JINJANG UTARA, 41150 KLANG, SELANGOR\n"
                 "563497 18-05-17\nTotal Sales RM 11.50 Cash RM 52.00 Change RM 40.50 Thank you")
    clear = tesseract.replace("18-05-17", "")  # Tesseract read every word clearly but the date
    monkeypatch.setattr(text_module, "read", lambda image, lang="eng", psm=None: text_module.Reading(
        tesseract, 85.0, text_module.count_chars(tesseract), clear))
    monkeypatch.setattr(text_module, "rapid_lines", rapid_says("99SPEED MART S/B\n563497 10-05-17"))
    text, path = text_module.ocr_page(BLANK, second="unsure")
    assert path == "ocr+rapid" and text == tesseract + "\n\n563497 10-05-17"
    assert text_module.ocr_page(BLANK, second="never") == (tesseract, "ocr")
    monkeypatch.setattr(text_module, "read", reads((None, tesseract, 85.0)))  # the date's words were clear too
    assert text_module.ocr_page(BLANK, second="unsure") == (tesseract, "ocr")


def test_a_reading_keeps_the_words_tesseract_was_sure_of_apart(words_image: Image.Image) -> None:
    reading = text_module.read(words_image)
    assert reading.confidence > 80 and reading.clear_text == reading.text and "INVOICE" in reading.text
    assert text_module.read(BLANK) == text_module.Reading("", 0.0, 0, "")
    dated = text_module.Reading("Date 18/10/2017\nTotal 42.35", 70.0, 20, "Date\nTotal 42.35")
    assert text_module.holds_a_date(dated.text) and not dated.surely_dated


def test_a_nearly_empty_reading_is_read_again_and_the_path_says_which_won(monkeypatch: pytest.MonkeyPatch) -> None:
    block = "99 SPEED MART S/B\nTOTAL 52.10 on 05/02/2018\nTHANK YOU " * 3
    monkeypatch.setattr(text_module, "read", reads((None, "ot a ae", 90.0), (text_module.OCR_BLOCK_PSM, block, 70.0)))
    text, path = text_module.ocr_page(BLANK)
    assert path == "ocr_block" and "SPEED MART" in text


def test_an_unsure_reading_is_read_again_smoothed_and_cut_from_its_background_and_the_surest_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a white receipt on a black table: the paper is cut out; the readings are told apart by their confidence
    page = Image.new("RGB", (1300, 700), "black")
    page.paste(text_image(RECEIPT_LINES + ["Date: 18/10/2017 Total 42.35"], size=LONG), (100, 140))
    paper = text_module.crop_to_paper(page)
    assert paper is not None and paper.size == LONG
    assert text_module.crop_to_paper(BLANK) is None  # nothing to cut
    seen: list[tuple[int, int]] = []
    garbage = "ot a ae Rn 2 ~ eh pt wi o5 be ot dete See \\ a me Basis Tah"
    receipt = " ".join(["GIN KEE 18/10/2017"] * 6)

    def fake(image: Image.Image, lang: str = "eng", *, psm: int | None = None) -> text_module.Reading:
        seen.append(image.size)
        if image.size == LONG:  # the paper alone
            return text_module.Reading(receipt, 80.0, len(receipt))
        return text_module.Reading(garbage * 2, 30.0, 4)

    monkeypatch.setattr(text_module, "read", fake)
    text, path = text_module.ocr_page(page, line_height=0)
    assert path == "ocr_crop" and text == receipt and seen == [page.size, (650, 350), LONG]  # first, smooth, crop
    assert choose_text(page, None, mode="auto", line_height=0) == (receipt, "ocr_crop")


def test_a_reading_has_ocrs_text_and_tesseracts_confidence(words_image: Image.Image) -> None:
    reading = text_module.read(words_image)
    assert reading.text == ocr(words_image) and 60 < reading.confidence <= 100  # clear print: sure
    assert text_module.read(BLANK) == text_module.Reading("", 0.0)
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 600), dtype=np.uint8))
    assert text_module.read(noise).confident_chars < reading.confident_chars


def test_the_second_engine_reads_a_page_into_lines_top_to_bottom_left_to_right() -> None:
    from mmrag.ingest.rapid import rapid_read

    page = text_image(["GIN KEE HARDWARE", "Date 18/10/2017", "TOTAL 42.35"], size=(900, 380))
    lines = rapid_read(page).splitlines()
    assert len(lines) == 3 and "GIN" in lines[0] and "18/10/2017" in lines[1] and "42.35" in lines[2]
    two_columns = Image.new("RGB", (1200, 200), "white")
    two_columns.paste(text_image(["TOTAL"], size=(400, 140)), (0, 0))
    two_columns.paste(text_image(["42.35"], size=(400, 140)), (700, 10))  # the same line, a little lower
    assert rapid_read(two_columns) == "TOTAL 42.35"
    assert rapid_read(BLANK) == ""


@pytest.mark.parametrize(("second", "runs"), [("always", True), ("unsure", False), ("never", False)])
def test_the_second_engine_adds_the_lines_tesseract_lacks(
    monkeypatch: pytest.MonkeyPatch, second: str, runs: bool
) -> None:
    tesseract = ("GIN KEE HARDVVARE\nNO 290 JALAN AIR PANAS, SETAPAK\nDate 18/10/2017 Cash\n"
                 "Total 42.35 Change 7.65 Thank you")
    monkeypatch.setattr(text_module, "read", reads((None, tesseract, 90.0)))  # sure, and dated
    rapid = "GIN KEE HARDWARE\nSYARIKAT PERNIAGAAN GIN KEE (81109-A)\nDate 18/10/2017 Cash"
    monkeypatch.setattr(text_module, "rapid_lines", rapid_says(rapid))
    text, path = text_module.ocr_page(BLANK, second=second)
    if runs:  # the merchant line Tesseract missed is added; lines both read are not doubled
        assert path == "ocr+rapid" and text == tesseract + "\n\nSYARIKAT PERNIAGAAN GIN KEE (81109-A)"
    else:
        assert (text, path) == (tesseract, "ocr")
    monkeypatch.setattr(text_module, "read", reads((None, tesseract, 50.0)))  # unsure: "unsure" reads it too
    monkeypatch.setattr(text_module, "rapid_lines", rapid_says(rapid))
    assert text_module.ocr_page(BLANK, line_height=0, second="unsure")[1].endswith("+rapid")


def test_a_second_engine_that_fails_on_a_page_costs_it_nothing_tesseract_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tesseract = "GIN KEE HARDWARE\nNO 290 JALAN AIR PANAS, SETAPAK\nCash 50.00\nTotal 42.35 Change 7.65 Thank you"

    def broken(image: Image.Image) -> list:
        raise RuntimeError("onnxruntime: bad input shape")

    readings = reads((None, tesseract, 90.0), (text_module.OCR_BLOCK_PSM, tesseract, 90.0))
    monkeypatch.setattr(text_module, "read", readings)
    monkeypatch.setattr(text_module, "rapid_lines", broken)
    assert text_module.ocr_page(BLANK, second="always") == (tesseract, "ocr")
    assert "second OCR engine failed" in caplog.text and "bad input shape" in caplog.text


def test_a_reading_whose_only_date_is_impossible_holds_no_date() -> None:
    assert text_module.holds_a_date("Date: 15-03-18 10:21")
    assert not text_module.holds_a_date("DATE 2042-11-23 TOTAL 9.00")  # a misread date, read again
    assert not text_module.holds_a_date("TOTAL 9.00")
    assert text_module.holds_a_date("DATE 2042-11-23 paid 01/02/2019")  # one plausible date is enough


def test_a_second_reading_of_a_held_line_with_an_amount_of_its_own_is_added() -> None:
    # Tesseract misread the total's digits; the amount read right elsewhere on the page does not make the line held
    first = "TANJONG BOOKS\nNET TOTAL 14,05\nCash 14.85\nThank you"
    second = "TANJONG BOOKS\nNET TOTAL 14.85\nCash 14.85\nThank you"
    assert text_module.lines_not_in(second, first) == ["NET TOTAL 14.85"]
    assert text_module.lines_not_in(second, second.replace("TOTAL", "T0TAL")) == []  # the same amount: held
    assert text_module.lines_not_in("NET TOTAL 14,85", second) == []  # the same amount, written with a comma


def test_a_total_read_from_words_tesseract_was_unsure_of_is_read_by_the_second_engine_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = [("TANJONG BOOKS", 95.0), ("Date 17/03/2017", 95.0), ("NET TOTAL 14,05", 62.0), ("Cash 14.85", 93.0)]
    words = tuple(  # a line's figures at its confidence, its other words at 95
        Word(text, (0.1, 0.1 * n, 0.2, 0.1 * n + 0.05), confidence if any(c.isdigit() for c in text) else 95.0, n)
        for n, (line, confidence) in enumerate(lines) for text in line.split()
    )
    tesseract = "\n".join(line for line, _ in lines)
    reading = text_module.Reading(tesseract, 90.0, text_module.count_chars(tesseract), tesseract, words)
    assert reading.surely_dated and not reading.surely_totalled  # the total's figure read at 62
    monkeypatch.setattr(text_module, "read", lambda image, lang="eng", psm=None: reading)
    monkeypatch.setattr(text_module, "rapid_lines", rapid_says("TANJONG BOOKS\nNET TOTAL 14.85\nCash 14.85"))
    assert text_module.ocr_page(BLANK, second="unsure") == (tesseract + "\n\nNET TOTAL 14.85", "ocr+rapid")
    # the same figures read clearly (a figure on a line that labels no total does not count): one pass
    clear = tuple(replace(w, confidence=95.0) if w.line == 2 else replace(w, confidence=50.0) if w.line == 3 else w
                  for w in words)
    assert text_module.Reading(tesseract, 90.0, 0, tesseract, clear).surely_totalled
    monkeypatch.setattr(text_module, "read", lambda image, lang="eng", psm=None: replace(reading, words=clear))
    assert text_module.ocr_page(BLANK, second="unsure") == (tesseract, "ocr")
