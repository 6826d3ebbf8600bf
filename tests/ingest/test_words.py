"""Word boxes: a page's words land on the pixels that show them, whichever renderer drew the page and whichever
source (text layer, Tesseract, RapidOCR) read its text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from PIL import Image

from mmrag.config import IngestSettings
from mmrag.ingest import iter_pages, ocr
from mmrag.ingest.discover import describe
from mmrag.ingest.pdf_pages import PDFIUM, POPPLER, _PopplerSource, draw_pages
from mmrag.layout import Word, decode_words, encode_words
from tests.ingest.samples import scanned_pdf, text_image, text_pdf

LINES = ["INVOICE 4217 Harbour Street", "Total due 42.35 on 18/10/2017"]


def _pixels(image: Image.Image, word: Word, margin: float = 0.0) -> Image.Image:
    x0, y0, x1, y1 = word.box
    w, h = image.size
    pad_x, pad_y = margin * (x1 - x0) * w, margin * (y1 - y0) * h
    return image.crop((int(x0 * w - pad_x), int(y0 * h - pad_y), int(x1 * w + pad_x + 1), int(y1 * h + pad_y + 1)))


def _ink(image: Image.Image) -> float:
    return float((np.asarray(image.convert("L")) < 128).mean())


def _reads_back(image: Image.Image, word: Word) -> str:
    """What Tesseract reads in the word's box (a margin around it, enlarged): the word, if the box is right."""
    crop = _pixels(image, word, margin=0.3)
    crop = crop.resize((crop.width * 3, crop.height * 3), Image.Resampling.LANCZOS)
    return ocr(crop, psm=7)


def _word(words: list[Word] | tuple[Word, ...], text: str) -> Word:
    return next(w for w in words if w.text == text)


@pytest.mark.parametrize("renderer", [PDFIUM, POPPLER])
def test_text_layer_words_land_on_their_pixels(tmp_path: Path, renderer: str) -> None:
    pdf = text_pdf(tmp_path / "known.pdf", ["\n".join(LINES)])
    (page,) = draw_pages(pdf, dpi=150, max_pixels=50_000_000, renderer=renderer)
    assert page.renderer == renderer and [w.text for w in page.words][:3] == ["INVOICE", "4217", "Harbour"]
    assert {w.line for w in page.words} == {0, 1}
    for text in ("INVOICE", "Harbour", "42.35", "18/10/2017"):
        word = _word(page.words, text)
        assert _ink(_pixels(page.image, word)) > 0.1  # the box holds the word's ink...
        assert text in _reads_back(page.image, word)  # ...and it is that word
    y1 = _word(page.words, "INVOICE").box[3]
    assert _ink(page.image.crop((0, int(y1 * page.image.height) + 60, page.image.width, page.image.height))) < 0.01


def test_poppler_reads_the_same_words_where_pdfium_does(tmp_path: Path) -> None:
    # pdftotext's boxes (the text layer when PDFium cannot read a page) against PDFium's
    pdf = text_pdf(tmp_path / "known.pdf", ["\n".join(LINES)])
    (page,) = draw_pages(pdf, dpi=150, max_pixels=50_000_000, renderer=PDFIUM)
    info = _PopplerSource(pdf, ()).info(1)
    assert info.text == page.text and [w.text for w in info.words] == [w.text for w in page.words]
    for ours, theirs in zip(page.words, info.words, strict=True):
        assert max(abs(a - b) for a, b in zip(ours.box, theirs.box, strict=True)) < 0.01
        assert ours.line == theirs.line


def test_words_of_a_turned_page_are_turned_with_it(tmp_path: Path) -> None:
    pdf = text_pdf(tmp_path / "upright.pdf", ["\n".join(LINES)])
    document = pdfium.PdfDocument(pdf)
    document[0].set_rotation(90)
    document.save(tmp_path / "turned.pdf")
    document.close()
    (page,) = draw_pages(tmp_path / "turned.pdf", dpi=150, max_pixels=50_000_000)
    assert page.image.height < page.image.width  # A4 on its side
    word = _word(page.words, "INVOICE")
    x0, y0, x1, y1 = word.box
    assert (y1 - y0) * page.image.height > 3 * (x1 - x0) * page.image.width  # a word running down the page
    assert x0 > 0.8  # the page's top-left corner turned to its top-right
    assert _ink(_pixels(page.image, word)) > 0.1
    turned_back = _pixels(page.image, word, margin=0.3).rotate(90, expand=True)
    assert "INVOICE" in ocr(turned_back.resize((turned_back.width * 3, turned_back.height * 3)), psm=7)


def test_ocr_words_land_where_the_text_was_drawn(tmp_path: Path) -> None:
    image = text_image(LINES, size=(1100, 260))  # drawn at x=40, lines at y=40 and 110 (font 44)
    pdf = scanned_pdf(tmp_path / "scan.pdf", [image])
    (page,) = iter_pages(describe(pdf), IngestSettings(ocr="auto", second_ocr="never"))
    assert page.text_source.startswith("ocr")
    invoice, total = _word(page.words, "INVOICE"), _word(page.words, "Total")
    width = page.image.width
    assert abs(invoice.box[0] * width - 40 * width / 1100) < 10 and invoice.box[1] < total.box[1]
    assert invoice.line == 0 and total.line == 1 and invoice.confidence > 80
    for word in page.words:
        assert _ink(_pixels(page.image, word)) > 0.1
    assert "Harbour" in _reads_back(page.image, _word(page.words, "Harbour"))


def test_an_image_file_words_and_a_photo_has_none(tmp_path: Path) -> None:
    path = tmp_path / "note.png"
    text_image(LINES, size=(1100, 260)).save(path)
    (page,) = iter_pages(describe(path), IngestSettings(ocr="auto"))
    assert "42.35" in {w.text for w in page.words}
    (never,) = iter_pages(describe(path), IngestSettings(ocr="never"))
    assert never.words == () and never.text == ""


def test_words_survive_their_stored_form() -> None:
    words = [Word("INVOICE", (0.1, 0.2, 0.3, 0.25), 96.4, 0), Word("42.35", (0.5, 0.6, 0.61, 0.65), 71.0, 3),
             Word("日付", (0.0, 0.0, 1.0, 1.0), 100.0, 65535)]
    back = decode_words(encode_words(words))
    assert [(w.text, w.confidence, w.line) for w in back] == [("INVOICE", 96.0, 0), ("42.35", 71.0, 3),
                                                              ("日付", 100.0, 65535)]
    for ours, theirs in zip(words, back, strict=True):
        assert max(abs(a - b) for a, b in zip(ours.box, theirs.box, strict=True)) < 1 / 65535
    assert encode_words([]) == b"" and decode_words(b"") == [] and decode_words(None) == []
    many = [Word(f"w{i}", (i / 300, 0.5, (i + 1) / 300, 0.52), 90.0, i // 8) for i in range(300)]
    assert len(encode_words(many)) < 12 * len(many)  # compact: about 8 bytes a word before zlib
    with pytest.raises(ValueError, match="word-box record"):
        decode_words(b"not ours")


@pytest.mark.parametrize("boxes", [True, False])
def test_a_worker_hands_back_the_words_unless_told_not_to_keep_them(tmp_path: Path, boxes: bool) -> None:
    from mmrag.digest import new_digest
    from mmrag.ingest.worker import load_file

    pdf = text_pdf(tmp_path / "known.pdf", ["\n".join(LINES)])
    digest = new_digest()
    digest.update(pdf.read_bytes())
    loaded = load_file(str(pdf), digest.hexdigest(), IngestSettings(word_boxes=boxes), str(tmp_path / "data"))
    (page,) = loaded.pages
    assert page.text.startswith("INVOICE 4217")
    if boxes:
        assert [w.text for w in decode_words(page.words)][:2] == ["INVOICE", "4217"]
    else:
        assert page.words == b""
