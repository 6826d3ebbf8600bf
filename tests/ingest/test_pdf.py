"""PDF renderers (pypdfium2 and pdf2image on the same files), text layers, and the PDF guard rails."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fpdf import FPDF

from mmrag.errors import CorruptFileError, EncryptedPdfError, MissingToolError, TooLargeError, UnknownNameError
from mmrag.ingest import (
    PDF_RENDERERS,
    PdfRenderer,
    build_renderer,
    fit_dpi,
    iter_pdf_pages,
    page_count,
)
from mmrag.ingest.pdf import MIN_DPI
from tests.ingest.samples import edited_pdf, encrypted_pdf, text_pdf, zero_page_pdf

RENDERERS = ["pypdfium2", "pdf2image"]
LOREM = "Ingestion renders every page and keeps the text layer. " * 12


@pytest.fixture(scope="module")
def two_page_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return text_pdf(tmp_path_factory.mktemp("pdf") / "doc.pdf", [LOREM, "Second page:   tabs\tand  spaces"])


def test_registry_knows_both_renderers_and_lists_them_for_a_typo() -> None:
    assert PDF_RENDERERS.names() == ["pdf2image", "pypdfium2"]
    with pytest.raises(UnknownNameError, match="pdf2image, pypdfium2"):
        build_renderer("mupdf")


@pytest.mark.parametrize("name", RENDERERS)
def test_renderer_counts_and_renders_pages(two_page_pdf: Path, name: str) -> None:
    renderer = build_renderer(name)
    assert isinstance(renderer, PdfRenderer) and renderer.name == name
    assert renderer.page_count(two_page_pdf) == 2
    image = renderer.render(two_page_pdf, 2, 72)
    assert image.mode == "RGB"
    assert abs(image.width - 595) <= 1 and abs(image.height - 842) <= 1
    with pytest.raises(ValueError, match="page 3"):
        renderer.render(two_page_pdf, 3, 72)


@pytest.mark.parametrize(("rotation", "crop_pt"), [(0, 0.0), (90, 0.0), (0, 60.0)])
def test_both_renderers_agree_on_size_and_pixels(
    tmp_path: Path, two_page_pdf: Path, rotation: int, crop_pt: float
) -> None:
    path = edited_pdf(two_page_pdf, tmp_path / "edited.pdf", rotation=rotation, crop_pt=crop_pt)
    dpi = 100
    pdfium_image, poppler_image = (build_renderer(name).render(path, 1, dpi) for name in RENDERERS)
    width_pt, height_pt = 595 - 2 * crop_pt, 842 - 2 * crop_pt
    if rotation == 90:
        width_pt, height_pt = height_pt, width_pt
    expected = (width_pt * dpi / 72, height_pt * dpi / 72)
    for image in (pdfium_image, poppler_image):
        assert abs(image.width - expected[0]) <= 1 and abs(image.height - expected[1]) <= 1

    size = (min(pdfium_image.width, poppler_image.width), min(pdfium_image.height, poppler_image.height))
    a = np.asarray(pdfium_image.convert("L").crop((0, 0, *size)), dtype=np.float32)
    b = np.asarray(poppler_image.convert("L").crop((0, 0, *size)), dtype=np.float32)
    assert (a < 128).mean() > 0.005  # there is text on the page to compare
    # Anti-aliasing differs between PDFium and poppler; the same glyphs in the same places keep the mean gap small.
    assert np.abs(a - b).mean() < 8


def test_text_layer_is_extracted_and_normalised(two_page_pdf: Path) -> None:
    pages = list(iter_pdf_pages(two_page_pdf))
    assert [p.page_number for p in pages] == [1, 2]
    assert "keeps the text layer" in pages[0].text
    assert pages[1].text == "Second page: tabs and spaces"
    assert (pages[0].width_pt, pages[0].height_pt) == pytest.approx((595, 842))
    assert [p.page_number for p in iter_pdf_pages(two_page_pdf, [2])] == [2]


@pytest.mark.parametrize("name", RENDERERS)
def test_password_protected_pdf_is_an_encrypted_pdf_error(tmp_path: Path, name: str) -> None:
    path = encrypted_pdf(tmp_path / "locked.pdf", user_password="secret")
    with pytest.raises(EncryptedPdfError) as err:
        build_renderer(name).page_count(path)
    assert str(path) in str(err.value)
    with pytest.raises(EncryptedPdfError):
        list(iter_pdf_pages(path))


@pytest.mark.parametrize("name", RENDERERS)
def test_owner_password_only_pdf_just_works(tmp_path: Path, name: str) -> None:
    path = encrypted_pdf(tmp_path / "restricted.pdf", user_password="")
    assert build_renderer(name).page_count(path) == 1
    assert build_renderer(name).render(path, 1, 50).mode == "RGB"
    assert "Quarterly report" in next(iter_pdf_pages(path)).text


@pytest.mark.parametrize("name", RENDERERS)
@pytest.mark.parametrize("kind", ["truncated", "garbage", "zero-pages"])
def test_broken_pdfs_are_corrupt_file_errors(tmp_path: Path, two_page_pdf: Path, name: str, kind: str) -> None:
    path = tmp_path / f"{kind}.pdf"
    if kind == "truncated":
        data = two_page_pdf.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "garbage":
        path.write_bytes(b"%PDF-1.7\n" + b"this is not a PDF body\n" * 50)
    else:
        zero_page_pdf(path)
    with pytest.raises(CorruptFileError) as err:
        build_renderer(name).page_count(path)
    assert str(path) in str(err.value)
    with pytest.raises(CorruptFileError) as err:
        page_count(path)
    assert str(path) in str(err.value)


def test_zero_page_pdf_says_so(tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match="no pages"):
        page_count(zero_page_pdf(tmp_path / "empty-doc.pdf"))


def test_fit_dpi_keeps_the_dpi_when_the_page_fits() -> None:
    assert fit_dpi(612, 792, 150, 60_000_000) == 150


def test_fit_dpi_lowers_the_dpi_until_the_page_fits() -> None:
    dpi = fit_dpi(8400, 8400, 150, 60_000_000, where="poster.pdf: page 1")  # a 117-inch square poster
    assert MIN_DPI <= dpi < 150
    pixels = math.ceil(8400 * dpi / 72) ** 2
    assert 0.98 * 60_000_000 < pixels <= 60_000_000


def test_fit_dpi_refuses_a_page_that_only_fits_below_the_minimum_dpi() -> None:
    with pytest.raises(TooLargeError, match=r"huge\.pdf: page 3"):
        fit_dpi(14_400, 14_400, 150, 1_000_000, where="huge.pdf: page 3")
    with pytest.raises(CorruptFileError, match="no area"):
        fit_dpi(0, 792, 150, 1_000_000, where="flat.pdf: page 1")


def test_pdf2image_without_poppler_is_a_missing_tool_error(
    two_page_pdf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no pdfinfo/pdftoppm to be found
    with pytest.raises(MissingToolError, match="poppler-utils"):
        build_renderer("pdf2image").page_count(two_page_pdf)


@pytest.mark.parametrize("name", RENDERERS)
def test_colours_come_out_as_rgb_not_bgr(tmp_path: Path, name: str) -> None:
    pdf = FPDF(unit="pt", format=(200, 100))
    pdf.add_page()
    pdf.set_fill_color(220, 20, 60)  # crimson: swapping R and B would make it blue
    pdf.rect(0, 0, 100, 100, style="F")
    path = tmp_path / "colour.pdf"
    pdf.output(str(path))
    image = build_renderer(name).render(path, 1, 72)
    assert image.getpixel((50, 50)) == pytest.approx((220, 20, 60), abs=3)
    assert image.getpixel((150, 50)) == (255, 255, 255)
