"""Ingestion: from a file on disk to page images and text (discover → sniff → decode/render → text layer/OCR).

The indexing job calls `load_pages` (or `iter_pages`) in worker processes; both are plain top-level functions of
picklable arguments, and every bad-input failure is an InputError subclass whose message names the file (and page).
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import PIL
import pytesseract
from PIL import Image

from mmrag.config import IngestSettings
from mmrag.errors import CorruptFileError, InputError, UnsupportedTypeError
from mmrag.ingest.discover import IMAGE_MIMES, PDF_MIME, describe, discover, sniff, sniff_bytes
from mmrag.ingest.images import load_image
from mmrag.ingest.pdf import (
    PDF_RENDERERS,
    PdfiumRenderer,
    PdfPageInfo,
    PdfRenderer,
    PopplerRenderer,
    build_renderer,
    fit_dpi,
    iter_pdf_pages,
    open_pdf,
    page_count,
    render_page,
)
from mmrag.ingest.pdf_pages import DrawnPage, PageFailure, count_pdf_pages, draw_pages
from mmrag.ingest.rapid import check_rapidocr
from mmrag.ingest.text import check_ocr, choose_text, normalize_text, ocr
from mmrag.layout import Word
from mmrag.types import DocumentKind, PageContent, SourceFile

__all__ = [
    "DrawnPage",
    "IMAGE_MIMES",
    "PDF_MIME",
    "PDF_RENDERERS",
    "PageFailure",
    "PdfPageInfo",
    "PdfRenderer",
    "PdfiumRenderer",
    "PopplerRenderer",
    "build_renderer",
    "check_ocr",
    "check_rapidocr",
    "choose_text",
    "count_pages",
    "count_pdf_pages",
    "describe",
    "discover",
    "draw_pages",
    "fit_dpi",
    "ingest_version",
    "iter_pages",
    "iter_pdf_pages",
    "load_image",
    "load_pages",
    "normalize_text",
    "ocr",
    "open_pdf",
    "page_count",
    "render_page",
    "sniff",
    "sniff_bytes",
]


# Raise when a change to ingestion may open files that it failed on before (a decoder, a fallback, a fix): a failed
# document recorded with another ingest_version() is tried again by the next job over its path.
INGEST_CODE_VERSION = 2


@functools.cache
def ingest_version() -> str:
    """This ingestion's version: the code's, and the decoders' (PDFium, poppler, Pillow) whose upgrade can open a
    file that failed before. Recorded with each document a job settles."""
    from pypdfium2.version import PDFIUM_INFO

    try:
        done = subprocess.run(["pdfinfo", "-v"], capture_output=True, timeout=30, check=False)
        found = re.search(rb"version ([\w.]+)", done.stdout + done.stderr)
        poppler = found[1].decode() if found else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        poppler = "none"
    return f"{INGEST_CODE_VERSION}/pdfium-{PDFIUM_INFO.build}/poppler-{poppler}/pillow-{PIL.__version__}"


def load_pages(
    source: SourceFile,
    settings: IngestSettings,
    page_numbers: Iterable[int] | None = None,
    *,
    passwords: Sequence[str] = (),
    failures: list[PageFailure] | None = None,
) -> list[PageContent]:
    """Every page of `source` (or only `page_numbers`, 1-based) as RGB image + text.

    Runs in worker processes. For a long PDF, hand workers slices (`page_numbers=range(a, b)`, with `count_pages`
    for the bounds): a full-length list of 150 dpi pages is about 6 MB a page in memory and through the pipe.
    `passwords` and `failures`: see iter_pages.
    """
    return list(iter_pages(source, settings, page_numbers, passwords=passwords, failures=failures))


def count_pages(source: SourceFile, passwords: Sequence[str] = ()) -> int:
    """How many pages `load_pages` can be asked for in `source` (1 for an image)."""
    if source.kind == DocumentKind.IMAGE:
        return 1
    if source.kind == DocumentKind.PDF:
        return count_pdf_pages(source.path, passwords)
    raise UnsupportedTypeError(f"{source.path}: unsupported document kind {source.kind!r}")


def iter_pages(
    source: SourceFile,
    settings: IngestSettings,
    page_numbers: Iterable[int] | None = None,
    *,
    passwords: Sequence[str] = (),
    failures: list[PageFailure] | None = None,
) -> Iterator[PageContent]:
    """Like load_pages, one page at a time: a PDF is open once and pages are rendered as they are asked for.

    A PDF's page that neither renderer draws (see mmrag.ingest.pdf_pages), or that OCR fails on, is appended to
    `failures` and skipped, the other pages going on; with `failures=None` it raises instead. An encrypted PDF is
    opened with the first of `passwords` that opens it."""
    path = Path(source.path)
    try:
        if source.kind == DocumentKind.IMAGE:
            if page_numbers is not None and list(page_numbers) != [1]:
                raise ValueError(f"{path}: an image has exactly one page")
            image = load_image(path, max_pixels=settings.max_pixels)
            yield _page(path, 1, image, None, settings)
        elif source.kind == DocumentKind.PDF:
            drawn = draw_pages(
                path, dpi=settings.dpi, max_pixels=settings.max_pixels, renderer=settings.renderer,
                passwords=passwords, page_numbers=page_numbers,
            )
            for page in drawn:
                try:
                    if isinstance(page, PageFailure):
                        raise CorruptFileError(f"{path}: {page.reason}")
                    yield _page(path, page.page_number, page.image, page.text, settings, page.renderer, page.words)
                except InputError as exc:
                    if failures is None:
                        raise
                    reason = str(exc)
                    failures.append(PageFailure(page.page_number, reason.removeprefix(f"{path}: ")))
        else:
            raise UnsupportedTypeError(f"{path}: unsupported document kind {source.kind!r}")
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        # The file went away or became unreadable since it was described: this file fails, the job goes on.
        raise InputError(f"{path}: cannot read file: {exc.strerror or exc}") from exc


def _page(
    path: Path, number: int, image: Image.Image, text_layer: str | None, settings: IngestSettings,
    renderer: str | None = None,
    layer_words: Sequence[Word] = (),
) -> PageContent:
    words: list[Word] = []
    try:
        text, source = choose_text(
            image,
            text_layer,
            mode=settings.ocr,
            lang=settings.ocr_lang,
            min_chars=settings.ocr_min_chars,
            line_height=settings.ocr_line_height,
            skip_photos=settings.ocr_skip_photos,
            second=settings.second_ocr,
            layer_words=layer_words,
            words=words,
        )
    except pytesseract.TesseractError as exc:
        # Tesseract is installed and the language exists (those raise before this), so it is this image it
        # could not handle (leptonica refuses some sizes and formats).
        raise InputError(f"{path}: page {number}: OCR failed: {exc.message}") from exc
    return PageContent(page_number=number, image=image, text=text, text_source=source, renderer=renderer,
                       words=tuple(words))
