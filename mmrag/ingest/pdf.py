"""PDF pages: the PdfRenderer Protocol and its registry (pypdfium2, pdf2image), text layers, and the guard rails."""

from __future__ import annotations

import logging
import math
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pdf2image
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from pdf2image import exceptions as poppler_errors
from PIL import Image

from mmrag.errors import CorruptFileError, EncryptedPdfError, MissingToolError, TooLargeError
from mmrag.ingest.native import quiet_native
from mmrag.ingest.text import normalize_text
from mmrag.layout import Word, renumber_lines
from mmrag.registry import Registry

log = logging.getLogger(__name__)

POINTS_PER_INCH = 72.0
# Below this a page is a smudge for both the embedders and OCR; a page that only fits max_pixels below it is
# refused instead of rendered. Same floor as IngestSettings.dpi.
MIN_DPI = 36.0
# What the reason of a file that did not open for want of a password says (a job with passwords for it tries again).
NEEDS_PASSWORD = "the PDF needs a password to open"
# A page narrower than a point (1/72 inch) on a side draws as a speck of a pixel or two: it has no area to speak of.
MIN_SIDE_PT = 1.0
# pdftoppm on a hostile content stream can run for a very long time; a worker must not hang on one page.
POPPLER_TIMEOUT_S = 300
# pypdfium2's own warnings (the "compiled without XFA support" notice and its pip hint, once per XFA file) are
# decoder chatter like PDFium's native output: the debug log gets them, not the terminal.
_PDFIUM_LOGGERS = ("pypdfium2",)


@runtime_checkable
class PdfRenderer(Protocol):
    """Renders one page of a PDF file to an RGB image. Errors are InputErrors that name the file and page."""

    name: str

    def page_count(self, path: Path, password: str | None = None) -> int: ...

    def render(self, path: Path, page_number: int, dpi: float, password: str | None = None) -> Image.Image:
        """Page `page_number` (1-based) at `dpi`, as displayed (crop box, page rotation applied), mode RGB."""
        ...


PDF_RENDERERS: Registry[PdfRenderer] = Registry("PDF renderer")


def build_renderer(name: str) -> PdfRenderer:
    """The renderer registered as `name`; UnknownNameError lists the known names."""
    return PDF_RENDERERS.create(name)


@dataclass(frozen=True)
class PdfPageInfo:
    """What the indexing job needs to know about a page before rendering it."""

    page_number: int  # 1-based
    width_pt: float  # as displayed: crop box, after the page's /Rotate
    height_pt: float
    text: str  # the text layer, whitespace-normalised; "" when the page has none
    words: tuple[Word, ...] = field(default=(), repr=False)  # the text layer's words and boxes (mmrag.layout)


@contextmanager
def open_pdf(path: Path, passwords: Sequence[str] = ()) -> Iterator[pdfium.PdfDocument]:
    """A pypdfium2 document for `path`, with PDFium's load errors turned into InputErrors that name the file.

    An encrypted file is tried without a password, then with each of `passwords` in order; no password ever
    appears in an error or the log."""
    with open_pdf_unlocked(path, passwords) as (doc, _):
        yield doc


@contextmanager
def open_pdf_unlocked(
    path: Path, passwords: Sequence[str] = (), *, forms: bool = False
) -> Iterator[tuple[pdfium.PdfDocument, str | None]]:
    """open_pdf, and the password that opened it (None: it needed none). `forms`: set up the form environment
    that draws interactive form fields, which must exist before any page is loaded (for rendering)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    raw, password = _load(path, passwords)
    doc = pdfium.PdfDocument(raw)
    try:
        if forms:
            with quiet_native(str(path), loggers=_PDFIUM_LOGGERS):
                try:
                    doc.init_forms()
                except pdfium.PdfiumError as exc:  # the pages still render, without their form fields
                    log.debug("%s: no form environment: %s", path, exc)
        if len(doc) < 1:
            raise CorruptFileError(f"{path}: the PDF has no pages")
        yield doc, password
    finally:
        doc.close()


def _load(path: Path, passwords: Sequence[str]) -> tuple[Any, str | None]:
    # Loaded through the raw API rather than PdfDocument(path): pypdfium2 treats "opened, but no pages" as a load
    # failure and reads FPDF_GetLastError() then, which still holds the error of some earlier, unrelated load
    # (PDFium only sets it on failure). A stale FPDF_ERR_PASSWORD would call a zero-page PDF encrypted.
    encoded = (str(path.resolve()) + "\x00").encode("utf-8", "surrogateescape")
    for password in (None, *passwords):
        with quiet_native(str(path), loggers=_PDFIUM_LOGGERS):
            raw = pdfium_c.FPDF_LoadDocument(encoded, None if password is None else password.encode("utf-8"))
        if raw:
            return raw, password
        code = pdfium_c.FPDF_GetLastError()
        if code != pdfium_c.FPDF_ERR_PASSWORD:
            raise _load_error(path, code)
    raise password_error(path, len(passwords))


def password_error(path: Path, given: int) -> EncryptedPdfError:
    """The reason a file that needs a password did not open: none given, or none of those given (never which)."""
    if given:
        return EncryptedPdfError(
            f"{path}: {NEEDS_PASSWORD}, and the {'password' if given == 1 else f'{given} passwords'} "
            "given for it did not open it"
        )
    # An owner password alone (printing/copying restrictions) opens without a password and never gets here.
    return EncryptedPdfError(f"{path}: {NEEDS_PASSWORD}")


def _load_error(path: Path, code: int) -> Exception:
    if code == pdfium_c.FPDF_ERR_SECURITY:
        return EncryptedPdfError(f"{path}: the PDF is encrypted with a security handler PDFium does not support")
    reason = {
        pdfium_c.FPDF_ERR_FILE: "file not found or could not be read",
        pdfium_c.FPDF_ERR_FORMAT: "not a PDF or corrupted",
    }.get(code, f"PDFium error {code}")
    return CorruptFileError(f"{path}: cannot open PDF ({reason})")


def page_count(path: Path, passwords: Sequence[str] = ()) -> int:
    with open_pdf(path, passwords) as doc:
        return len(doc)


def iter_pdf_pages(path: Path, page_numbers: Iterable[int] | None = None) -> Iterator[PdfPageInfo]:
    """Size and text layer of each page (all, or `page_numbers`, 1-based), reading the file once."""
    path = Path(path)
    with open_pdf(path) as doc:
        count = len(doc)
        for number in page_numbers if page_numbers is not None else range(1, count + 1):
            if not 1 <= number <= count:
                raise ValueError(f"{path}: page {number} is out of range 1..{count}")
            yield read_page_info(doc, path, number)


def read_page_info(doc: pdfium.PdfDocument, path: Path, number: int) -> PdfPageInfo:
    """Size and text layer of page `number` (1-based) of an open document; CorruptFileError when PDFium cannot
    load or read the page."""
    try:
        with quiet_native(f"{path}: page {number}", loggers=_PDFIUM_LOGGERS):
            page = doc[number - 1]
            try:
                width, height = page.get_size()
                textpage = page.get_textpage()
                try:
                    text = normalize_text(textpage.get_text_range())
                    words = text_layer_words(page, textpage) if text else ()
                finally:
                    textpage.close()
            finally:
                page.close()
    except pdfium.PdfiumError as exc:
        raise CorruptFileError(f"{path}: page {number}: cannot read the page: {exc}") from exc
    return PdfPageInfo(page_number=number, width_pt=width, height_pt=height, text=text, words=words)


def text_layer_words(page: pdfium.PdfPage, textpage: pdfium.PdfTextPage) -> tuple[Word, ...]:
    """The text layer's words (runs of characters between spaces and line breaks), each boxed by the union of its
    characters' boxes, normalised to the page as rendered: its crop box, turned by its /Rotate."""
    left, bottom, right, top = page.get_bbox()  # the crop box within the media box: what is rendered
    width, height = max(right - left, 1e-6), max(top - bottom, 1e-6)
    turn = page.get_rotation() % 360
    words: list[Word] = []
    characters: list[str] = []
    boxes: list[tuple[float, float, float, float]] = []
    line = 0

    def flush() -> None:
        if characters:
            x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
            # PDF space (origin bottom-left, points) -> the unturned page, normalised, origin top-left
            box = ((x0 - left) / width, (top - y1) / height, (x1 - left) / width, (top - y0) / height)
            words.append(Word("".join(characters), _turned(box, turn), 100.0, line))
            characters.clear()
            boxes.clear()

    for index in range(textpage.count_chars()):
        code = pdfium_c.FPDFText_GetUnicode(textpage, index)
        character = chr(code) if 0 < code < 0x110000 else ""
        if not character or character.isspace() or unicodedata.category(character) == "Cc":
            flush()
            line += character in "\r\n\x0c" and bool(words)
            continue
        characters.append(character)
        boxes.append(textpage.get_charbox(index))
    flush()
    return tuple(renumber_lines(words))  # 0, 1, 2...: a run of line breaks counts once


def _turned(box: tuple[float, float, float, float], turn: int) -> tuple[float, float, float, float]:
    """A normalised box of an unturned page on the page turned `turn` degrees clockwise (its /Rotate)."""
    x0, y0, x1, y1 = box
    if turn == 90:
        x0, y0, x1, y1 = 1 - y1, x0, 1 - y0, x1
    elif turn == 180:
        x0, y0, x1, y1 = 1 - x1, 1 - y1, 1 - x0, 1 - y0
    elif turn == 270:
        x0, y0, x1, y1 = y0, 1 - x1, y1, 1 - x0
    return (min(max(x0, 0.0), 1.0), min(max(y0, 0.0), 1.0), min(max(x1, 0.0), 1.0), min(max(y1, 0.0), 1.0))



def fit_dpi(width_pt: float, height_pt: float, dpi: float, max_pixels: int, *, where: str = "page") -> float:
    """`dpi`, or the largest lower dpi at which the page stays within `max_pixels`.

    We downscale rather than refuse: a poster or an engineering drawing is a legitimate page, and a smaller
    rendering of it is still useful to the embedders (which shrink pages to a few hundred pixels anyway).
    Only a page that would need less than MIN_DPI is refused, with TooLargeError. `where` names the file and page.
    """
    if not (width_pt >= MIN_SIDE_PT and height_pt >= MIN_SIDE_PT and math.isfinite(width_pt * height_pt)):
        raise CorruptFileError(f"{where}: the page has no area ({width_pt:g}x{height_pt:g} pt)")

    def pixels(d: float) -> int:
        return math.ceil(width_pt * d / POINTS_PER_INCH) * math.ceil(height_pt * d / POINTS_PER_INCH)

    if pixels(dpi) <= max_pixels:
        return dpi
    fitted = dpi * math.sqrt(max_pixels / pixels(dpi))
    while fitted >= MIN_DPI and pixels(fitted) > max_pixels:  # ceil() can push the first guess just over
        fitted *= 0.995
    if fitted < MIN_DPI:
        raise TooLargeError(
            f"{where}: {width_pt:.0f}x{height_pt:.0f} pt page is over the limit of {max_pixels} pixels "
            f"even at {MIN_DPI:.0f} dpi"
        )
    log.info("%s: rendering at %.1f dpi instead of %.0f to stay within %d pixels", where, fitted, dpi, max_pixels)
    return fitted


def render_page(renderer: PdfRenderer, path: Path, page: PdfPageInfo, *, dpi: float, max_pixels: int) -> Image.Image:
    """Render `page` with `renderer` at `dpi`, lowered if needed to fit `max_pixels` (see fit_dpi)."""
    where = f"{path}: page {page.page_number}"
    return renderer.render(path, page.page_number, fit_dpi(page.width_pt, page.height_pt, dpi, max_pixels, where=where))


@PDF_RENDERERS.register("pypdfium2")
class PdfiumRenderer:
    """PDFium through pypdfium2: in-process, no subprocesses."""

    name = "pypdfium2"

    def page_count(self, path: Path, password: str | None = None) -> int:
        return page_count(path, () if password is None else (password,))

    def render(self, path: Path, page_number: int, dpi: float, password: str | None = None) -> Image.Image:
        path = Path(path)
        with open_pdf_unlocked(path, () if password is None else (password,), forms=True) as (doc, _):
            if not 1 <= page_number <= len(doc):
                raise ValueError(f"{path}: page {page_number} is out of range 1..{len(doc)}")
            return render_pdfium_page(doc, path, page_number, dpi)


def render_pdfium_page(doc: pdfium.PdfDocument, path: Path, page_number: int, dpi: float) -> Image.Image:
    """Page `page_number` (1-based) of a document opened with `forms=True` at `dpi`, mode RGB."""
    try:
        with quiet_native(f"{path}: page {page_number}", loggers=_PDFIUM_LOGGERS):
            page = doc[page_number - 1]
    except pdfium.PdfiumError as exc:
        raise CorruptFileError(f"{path}: page {page_number}: cannot load the page: {exc}") from exc
    try:
        # rev_byteorder: PDFium writes RGB instead of its native BGR, sparing PIL a channel swap.
        with quiet_native(f"{path}: page {page_number}", loggers=_PDFIUM_LOGGERS):
            bitmap = page.render(scale=dpi / POINTS_PER_INCH, may_draw_forms=True, rev_byteorder=True)
        # PIL shares the bitmap's buffer only for L/RGBA/RGBX; an RGB image is a copy that owns its pixels.
        image = bitmap.to_pil()
        return image if image.mode == "RGB" else image.convert("RGB")
    except pdfium.PdfiumError as exc:
        raise CorruptFileError(f"{path}: page {page_number}: cannot render: {exc}") from exc
    finally:
        page.close()


@PDF_RENDERERS.register("pdf2image")
class PopplerRenderer:
    """poppler's pdftoppm through pdf2image: one subprocess (plus pdfinfo) per call."""

    name = "pdf2image"

    def __init__(self, timeout_s: int = POPPLER_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s

    def page_count(self, path: Path, password: str | None = None) -> int:
        path = Path(path)
        with self._poppler_errors(path, None):
            pages = int(pdf2image.pdfinfo_from_path(str(path), userpw=password, timeout=self.timeout_s)["Pages"])
        if pages < 1:
            raise CorruptFileError(f"{path}: the PDF has no pages")
        return pages

    def render(self, path: Path, page_number: int, dpi: float, password: str | None = None) -> Image.Image:
        path = Path(path)
        if page_number < 1:
            raise ValueError(f"{path}: page {page_number} is out of range")
        with self._poppler_errors(path, page_number):
            images = pdf2image.convert_from_path(
                str(path),
                dpi=dpi,
                first_page=page_number,
                last_page=page_number,
                fmt="ppm",  # raw pixels through a pipe: no PNG encode/decode round trip
                use_cropbox=True,  # what viewers (and PDFium) show; pdftoppm defaults to the media box
                thread_count=1,
                userpw=password,
                timeout=self.timeout_s,
            )
        if not images:
            # pdf2image quietly returns nothing for a page past the end; tell that apart from a failed render.
            count = self.page_count(path, password)
            if page_number > count:
                raise ValueError(f"{path}: page {page_number} is out of range 1..{count}")
            raise CorruptFileError(f"{path}: page {page_number}: poppler rendered nothing")
        image = images[0]
        return image if image.mode == "RGB" else image.convert("RGB")

    @contextmanager
    def _poppler_errors(self, path: Path, page_number: int | None) -> Iterator[None]:
        with poppler_errors_as_input_errors(path, page_number, self.timeout_s):
            yield


@contextmanager
def poppler_errors_as_input_errors(path: Path, page_number: int | None, timeout_s: float) -> Iterator[None]:
    """pdf2image's exceptions (and a missing poppler) as mmrag's errors, naming the file and page."""
    where = f"{path}" if page_number is None else f"{path}: page {page_number}"
    try:
        yield
    except poppler_errors.PopplerNotInstalledError as exc:
        raise MissingToolError(
            "the pdf2image renderer needs poppler's pdftoppm and pdfinfo, which were not found. Install them "
            "(Debian/Ubuntu: apt-get install poppler-utils) or use MMRAG_INGEST__RENDERER=pypdfium2."
        ) from exc
    except poppler_errors.PDFPageCountError as exc:
        if "password" in str(exc).lower():
            raise EncryptedPdfError(f"{where}: {NEEDS_PASSWORD}") from exc
        raise CorruptFileError(f"{where}: poppler cannot read the PDF: {_last_line(str(exc))}") from exc
    except poppler_errors.PDFPopplerTimeoutError as exc:
        raise TooLargeError(f"{where}: poppler took longer than {timeout_s} s") from exc


def _last_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else message
