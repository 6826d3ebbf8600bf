"""Text normalisation, real Tesseract OCR, and the never/auto/always choice between text layer and OCR."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmrag.errors import ConfigError, MissingToolError
from mmrag.ingest import check_ocr, choose_text, normalize_text, ocr
from mmrag.ingest import text as text_module
from mmrag.ingest.text import PHOTO_COLOURFULNESS, colourfulness, looks_like_photo
from mmrag.types import TextSource
from tests.ingest.samples import text_image

WORDS = ["INVOICE 4217", "Harbour Street"]
BLANK = Image.new("RGB", (400, 200), "white")
LAYER = "A text layer long enough to count."


@pytest.fixture(scope="module")
def words_image() -> Image.Image:
    return text_image(WORDS)


def no_ocr(image: Image.Image, lang: str = "eng") -> str:
    raise AssertionError("OCR must not run here")


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
    assert choose_text(BLANK, "short", mode="never") == ("short", TextSource.TEXT_LAYER)
    assert choose_text(BLANK, "", mode="never") == ("", TextSource.NONE)
    assert choose_text(BLANK, None, mode="never") == ("", TextSource.NONE)  # an image file


def test_auto_keeps_a_long_enough_layer_without_ocr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_module, "ocr", no_ocr)
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
    monkeypatch.setattr(text_module, "ocr", lambda image, lang="eng", psm=None: "")
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
        text_module, "ocr", lambda image, lang="eng", psm=None: (psm is None and ocred.append(image.size)) or "SIGN"
    )
    assert choose_text(_photo(), None, mode="auto", skip_photos=True) == ("", TextSource.NONE)
    assert ocred == []
    assert choose_text(_photo(), None, mode="auto") == ("SIGN", TextSource.OCR)  # skip_photos off
    assert choose_text(_photo(), "", mode="auto", skip_photos=True)[1] == TextSource.OCR  # a PDF page: a document
    assert choose_text(_photo(), None, mode="always", skip_photos=True)[1] == TextSource.OCR
    assert choose_text(_on_orange(words_image), None, mode="auto", skip_photos=True)[1] == TextSource.OCR
    assert len(ocred) == 4


def test_a_poster_on_colour_is_still_read(words_image: Image.Image) -> None:
    text, source = choose_text(_on_orange(words_image), None, mode="auto", skip_photos=True)
    assert source == TextSource.OCR and "INVOICE" in text
