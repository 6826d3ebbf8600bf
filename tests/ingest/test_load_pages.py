"""load_pages / iter_pages: the entry point the pipeline calls in worker processes, on real files."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import mmrag.ingest
from mmrag.config import IngestSettings
from mmrag.errors import (
    CorruptFileError,
    EmptyFileError,
    EncryptedPdfError,
    InputError,
    MissingToolError,
    TooLargeError,
    UnsupportedTypeError,
)
from mmrag.ingest import count_pages, describe, iter_pages, load_pages
from mmrag.types import DocumentKind, PageContent, TextSource
from tests.ingest.samples import encrypted_pdf, scanned_pdf, text_image, text_pdf

BODY = "The harbour authority publishes tide tables every spring. " * 6


def settings(**overrides: object) -> IngestSettings:
    return IngestSettings(**{"dpi": 72, **overrides})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("files")
    scan = text_image(["INVOICE 4217", "Harbour Street"])
    scan_png = root / "scan.png"
    scan.save(scan_png)
    return {
        "text": text_pdf(root / "text.pdf", [BODY, "Page two about lighthouses. " * 4, "Third page, short."]),
        # 300 dpi scan: the page is 3 x 0.87 in, so a 150 dpi render still shows 22 px tall letters.
        "scan": scanned_pdf(root / "scan.pdf", [text_image(["INVOICE 4217", "Harbour Street"])], resolution=300),
        "png": scan_png,
    }


def test_text_pdf_pages_use_the_text_layer(files: dict[str, Path]) -> None:
    pages = load_pages(describe(files["text"]), settings())
    assert [p.page_number for p in pages] == [1, 2, 3]
    assert all(isinstance(p, PageContent) and p.image.mode == "RGB" for p in pages)
    assert pages[0].image.size == (595, 842)  # 72 dpi: one pixel per point
    assert pages[0].text_source == TextSource.TEXT_LAYER and "tide tables" in pages[0].text
    # "Third page, short." has 16 non-space characters: exactly ocr_min_chars, so the layer is used.
    assert pages[2].text_source == TextSource.TEXT_LAYER


def test_scanned_pdf_is_ocrd_in_auto_and_not_in_never(files: dict[str, Path]) -> None:
    source = describe(files["scan"])
    (page,) = load_pages(source, settings(dpi=150))
    assert page.text_source == TextSource.OCR and "INVOICE" in page.text and "4217" in page.text
    (page,) = load_pages(source, settings(dpi=150, ocr="never"))
    assert (page.text, page.text_source) == ("", TextSource.NONE)


def test_always_ocrs_text_pdfs_too(files: dict[str, Path]) -> None:
    (page,) = load_pages(describe(files["text"]), settings(dpi=150, ocr="always"), page_numbers=[2])
    assert page.page_number == 2 and page.text_source == TextSource.OCR and "lighthouses" in page.text


def test_image_file_is_one_ocrd_page(files: dict[str, Path]) -> None:
    source = describe(files["png"])
    assert source.kind == DocumentKind.IMAGE and count_pages(source) == 1
    (page,) = load_pages(source, settings())
    assert page.page_number == 1 and page.image.mode == "RGB" and page.image.size == (900, 260)
    assert page.text_source == TextSource.OCR and "Harbour" in page.text
    (page,) = load_pages(source, settings(ocr="never"))
    assert page.text_source == TextSource.NONE


def test_both_renderers_give_the_same_pages(files: dict[str, Path]) -> None:
    source = describe(files["text"])
    by_renderer = {
        name: load_pages(source, settings(renderer=name, ocr="never")) for name in ("pypdfium2", "pdf2image")
    }
    a, b = by_renderer["pypdfium2"], by_renderer["pdf2image"]
    assert [p.text for p in a] == [p.text for p in b]  # the text layer comes from PDFium either way
    for pa, pb in zip(a, b, strict=True):
        assert abs(pa.image.width - pb.image.width) <= 1 and abs(pa.image.height - pb.image.height) <= 1


def test_page_slices_for_big_pdfs(files: dict[str, Path]) -> None:
    source = describe(files["text"])
    assert count_pages(source) == 3
    assert [p.page_number for p in load_pages(source, settings(ocr="never"), page_numbers=range(2, 4))] == [2, 3]
    with pytest.raises(ValueError, match="page 4"):
        load_pages(source, settings(), page_numbers=[4])


def test_iter_pages_renders_lazily(files: dict[str, Path]) -> None:
    pages = iter_pages(describe(files["text"]), settings(ocr="never"))
    assert next(pages).page_number == 1
    pages.close()  # closes the PDF without rendering the rest


def test_oversized_page_is_rendered_at_a_lower_dpi(files: dict[str, Path]) -> None:
    (page,) = load_pages(describe(files["text"]), settings(dpi=150, max_pixels=300_000, ocr="never"), page_numbers=[1])
    width, height = page.image.size
    assert width * height <= 300_000
    assert width * height > 0.95 * 300_000  # as large as fits, not a thumbnail
    assert abs(width / height - 595 / 842) < 0.01


def test_oversized_image_file_is_refused(files: dict[str, Path]) -> None:
    with pytest.raises(TooLargeError, match=r"scan\.png"):
        load_pages(describe(files["png"]), settings(max_pixels=1000))


@pytest.mark.parametrize("renderer", ["pypdfium2", "pdf2image"])
def test_bad_pdfs_raise_the_specific_input_error(tmp_path: Path, renderer: str) -> None:
    locked = describe(encrypted_pdf(tmp_path / "locked.pdf", user_password="pw"))
    with pytest.raises(EncryptedPdfError, match=r"locked\.pdf"):
        load_pages(locked, settings(renderer=renderer))

    broken_path = tmp_path / "broken.pdf"
    broken_path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\n" + b"\x00\xff" * 100)
    with pytest.raises(CorruptFileError, match=r"broken\.pdf"):
        load_pages(describe(broken_path), settings(renderer=renderer))


def test_a_file_that_vanished_since_describe_is_an_input_error(tmp_path: Path) -> None:
    path = text_pdf(tmp_path / "gone.pdf", ["soon deleted"])
    source = describe(path)
    path.unlink()
    with pytest.raises(InputError, match=r"gone\.pdf"):
        load_pages(source, settings())


def test_unknown_kind_is_unsupported(files: dict[str, Path]) -> None:
    source = describe(files["png"])
    odd = type(source)(**{**source.__dict__, "kind": "video"})
    with pytest.raises(UnsupportedTypeError, match=r"scan\.png"):
        load_pages(odd, settings())


def test_tesseract_missing_fails_loudly_not_silently(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mmrag.ingest.text.pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(MissingToolError):
        load_pages(describe(files["png"]), settings())
    (page,) = load_pages(describe(files["png"]), settings(ocr="never"))  # the documented way out
    assert page.text_source == TextSource.NONE


def test_errors_survive_the_trip_back_from_a_worker_process(tmp_path: Path) -> None:
    for error in (
        EmptyFileError("x.pdf: the file is empty"),
        EncryptedPdfError("x.pdf: the PDF needs a password to open"),
        MissingToolError("tesseract not found"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)


def test_load_pages_runs_in_a_spawned_worker_process(files: dict[str, Path]) -> None:
    # spawn, not fork: the function and its arguments must pickle, as they must for any start method.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        pages = pool.submit(load_pages, describe(files["text"]), settings(ocr="never"), [1]).result(timeout=60)
        assert pages[0].text_source == TextSource.TEXT_LAYER and pages[0].image.size == (595, 842)
        with pytest.raises(EmptyFileError):
            empty = files["text"].parent / "empty.pdf"
            empty.write_bytes(b"")
            pool.submit(describe, empty).result(timeout=60)


def test_public_names_are_sorted_and_exist() -> None:
    assert mmrag.ingest.__all__ == sorted(mmrag.ingest.__all__)
    assert all(hasattr(mmrag.ingest, name) for name in mmrag.ingest.__all__)
