"""Small print is enlarged before OCR: the line-height estimate, the enlargement's limits, choose_text's use of it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmrag.ingest import choose_text
from mmrag.ingest import text as text_module
from mmrag.ingest.text import estimate_line_height, upscale_for_ocr
from mmrag.types import TextSource
from tests.ingest.samples import spy_on_reads, text_image

LINES = ["TOTAL 141.50", "CASH 150.00", "CHANGE 8.50", "THANK YOU"]


def small_print(font_size: int) -> Image.Image:
    return text_image(LINES, size=(20 * font_size, 8 * font_size), font_size=font_size)


@pytest.mark.parametrize("font_size", [10, 16, 40])
def test_line_height_follows_the_font_size(font_size: int) -> None:
    height = estimate_line_height(small_print(font_size))
    assert height is not None and 0.5 * font_size <= height <= 1.3 * font_size


def test_no_line_height_without_lines() -> None:
    assert estimate_line_height(Image.new("RGB", (300, 200), "white")) is None
    noise = np.random.default_rng(0).integers(0, 255, size=(200, 300, 3), dtype=np.uint8)
    assert estimate_line_height(Image.fromarray(noise)) is None  # every row is "inked": no separate lines


def test_small_print_is_enlarged_within_limits() -> None:
    tiny = small_print(10)
    enlarged = upscale_for_ocr(tiny, 32)
    assert enlarged.width > 2 * tiny.width and enlarged.width / tiny.width <= 3.0 + 1e-6  # capped at 3x
    assert upscale_for_ocr(small_print(60), 32).size == small_print(60).size  # large print stays as it is
    assert upscale_for_ocr(tiny, 0) is tiny  # 0 turns it off
    capped = upscale_for_ocr(tiny, 32, max_pixels=4 * tiny.width * tiny.height)
    assert capped.width * capped.height <= 4 * tiny.width * tiny.height * 1.01  # the pixel budget wins


READ = "TOTAL 141.50 CASH 150.00 CHANGE 8.50 THANK YOU FOR SHOPPING WITH US PLEASE COME AGAIN GST SUMMARY 2.40"


def test_choose_text_hands_ocr_the_enlarged_image(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []

    def fake_read(image: Image.Image, lang: str = "eng", *, psm: int | None = None) -> text_module.Reading:
        if psm is None:
            seen.append(image.size)
        return text_module.Reading(READ, 90.0)  # sure, and long enough that no other reading is tried

    monkeypatch.setattr(text_module, "read", fake_read)
    tiny = small_print(10)
    assert choose_text(tiny, None, mode="auto") == (READ, TextSource.OCR)
    assert choose_text(tiny, None, mode="auto", line_height=0)[1] == TextSource.OCR
    assert seen[0][0] > 2 * tiny.width and seen[1] == tiny.size


def test_real_ocr_reads_small_print_after_enlarging() -> None:
    tiny = small_print(11)
    text, _ = choose_text(tiny, None, mode="always")
    assert "141.50" in text and "150.00" in text


def test_ocr_reads_a_page_once_when_it_has_text_and_tries_again_when_it_comes_out_nearly_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mmrag.ingest.text import count_chars, ocr, ocr_page

    calls = spy_on_reads(monkeypatch)
    full = text_image(["INVOICE 4217 Harbour Street", "TOTAL 42.35 CASH 50.00", "THANK YOU COME AGAIN SOON",
                       "GST SUMMARY 2.40 ON 18/10/2017", "CASHIER 07 COUNTER 3"], size=(900, 460))
    # over OCR_RETRY_BELOW_CHARS, sure, and with its date at once: one pass, the text ocr() reads
    assert ocr_page(full) == (ocr(upscale_for_ocr(full)), "ocr") and calls == [None]
    calls.clear()
    sparse = text_image(["TOTAL 42.35"])
    read, _ = ocr_page(sparse)
    assert calls[:3] == [None, 6, 6]  # too little text: read again as one block, as is and contrast-stretched
    assert "42.35" in read and count_chars(read) >= count_chars(ocr(sparse))
