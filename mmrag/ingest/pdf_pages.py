"""A PDF's pages with a fallback: each page from whichever of PDFium and poppler can draw it, or the reason neither can.

The configured renderer (IngestSettings.renderer) draws a page first; a page it refuses is drawn by the other one,
and a document PDFium cannot open at all is read whole through poppler (its pdfinfo, pdftotext and pdftoppm). A
page that neither draws, or whose size is absurd, comes back as a PageFailure: it costs that page, not the document.
Which renderer drew each page is recorded with it.
"""

from __future__ import annotations

import html
import logging
import math
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pdf2image
import pypdfium2 as pdfium
from PIL import Image

from mmrag.errors import CorruptFileError, EncryptedPdfError, InputError, MissingToolError, TooLargeError
from mmrag.ingest.pdf import (
    POINTS_PER_INCH,
    POPPLER_TIMEOUT_S,
    PdfPageInfo,
    PopplerRenderer,
    fit_dpi,
    open_pdf_unlocked,
    password_error,
    poppler_errors_as_input_errors,
    read_page_info,
    render_pdfium_page,
)
from mmrag.ingest.text import normalize_text
from mmrag.layout import Word

log = logging.getLogger(__name__)

PDFIUM, POPPLER = "pypdfium2", "pdf2image"  # the renderers' registered names (mmrag.ingest.pdf.PDF_RENDERERS)
_PAGE_KEY = re.compile(r"Page\s+(\d+)\s+(size|rot)")  # pdfinfo -f/-l: "Page    3 size: 612 x 792 pts (letter)"
_SIZE = re.compile(r"([\d.]+) x ([\d.]+)")


@dataclass(frozen=True)
class DrawnPage:
    """A page as one of the renderers drew it, with its text layer ("" when it has none)."""

    page_number: int
    image: Image.Image
    text: str
    renderer: str
    words: tuple[Word, ...] = field(default=(), repr=False)  # the text layer's words (mmrag.layout)


@dataclass(frozen=True)
class PageFailure:
    """A page that could not be had, and why (the reason names the page, not the file)."""

    page_number: int
    reason: str


class _PdfiumSource:
    """An open PDFium document: page sizes, text layers and renderings, each raising CorruptFileError per page."""

    name = PDFIUM

    def __init__(self, path: Path, doc: pdfium.PdfDocument) -> None:
        self.path, self.doc = path, doc
        self.count = len(doc)

    def info(self, number: int) -> PdfPageInfo:
        return read_page_info(self.doc, self.path, number)

    def render(self, number: int, dpi: float) -> Image.Image:
        return render_pdfium_page(self.doc, self.path, number, dpi)


class _PopplerSource:
    """poppler's command-line tools on one file: pdfinfo (page count and sizes), pdftotext, pdftoppm."""

    name = POPPLER

    def __init__(self, path: Path, passwords: Sequence[str], timeout_s: int = POPPLER_TIMEOUT_S) -> None:
        self.path, self.timeout_s = path, timeout_s
        self.renderer = PopplerRenderer(timeout_s)
        self.password, info = self._unlock(passwords)
        self.count = int(info["Pages"])
        if self.count < 1:
            raise CorruptFileError(f"{path}: the PDF has no pages")
        self._sizes: dict[int, tuple[float, float]] = {}
        self._agrees: bool | None = None

    def _unlock(self, passwords: Sequence[str]) -> tuple[str | None, dict[str, object]]:
        for password in (None, *passwords):
            try:
                with poppler_errors_as_input_errors(self.path, None, self.timeout_s):
                    return password, pdf2image.pdfinfo_from_path(
                        str(self.path), userpw=password, timeout=self.timeout_s
                    )
            except EncryptedPdfError:
                continue
        raise password_error(self.path, len(passwords))

    def numbers_pages_like(self, count: int) -> bool:
        """Whether poppler's page N is PDFium's page N, for a document PDFium opened with `count` pages: the same
        count, and a size for every page. Where the page tree is broken (a kid that is not a page, a loop), the two
        readers number the pages differently, and poppler's page 3 may be PDFium's page 4: no fallback then."""
        if self._agrees is None:
            self._agrees = self.count == count
            if self._agrees:
                try:
                    self._agrees = all(w > 0 and h > 0 for w, h in (self._size(n) for n in range(1, count + 1)))
                except InputError:
                    self._agrees = False
            if not self._agrees:
                log.info("%s: poppler reads its page tree differently from PDFium: no page falls back to it", self.path)
        return self._agrees

    def info(self, number: int) -> PdfPageInfo:
        width, height = self._size(number)
        text, words = self._text(number)
        return PdfPageInfo(page_number=number, width_pt=width, height_pt=height, text=text, words=words)

    def _size(self, number: int) -> tuple[float, float]:
        """The page's size as displayed (after its rotation), from pdfinfo; pages are asked for in order, so one
        call reads the sizes of the next hundred."""
        if number not in self._sizes:
            last = min(self.count, number + 99)
            with poppler_errors_as_input_errors(self.path, number, self.timeout_s):
                info = pdf2image.pdfinfo_from_path(
                    str(self.path), userpw=self.password, timeout=self.timeout_s, first_page=number, last_page=last
                )
            self._sizes.update(_page_sizes(info))
        if number not in self._sizes:
            raise CorruptFileError(f"{self.path}: page {number}: poppler reports no size for the page")
        return self._sizes[number]

    def _text(self, number: int) -> tuple[str, tuple[Word, ...]]:
        """The page's text layer and its words, from pdftotext's word boxes (-bbox-layout): a line per line, a
        blank line between blocks."""
        command = ["pdftotext", "-f", str(number), "-l", str(number), "-enc", "UTF-8", "-bbox-layout"]
        if self.password is not None:
            command += ["-upw", self.password]
        try:
            done = subprocess.run(
                [*command, str(self.path), "-"], capture_output=True, timeout=self.timeout_s, check=False
            )
        except FileNotFoundError as exc:
            raise MissingToolError("poppler's pdftotext was not found (apt-get install poppler-utils)") from exc
        except subprocess.TimeoutExpired:
            log.debug("%s: page %d: pdftotext took longer than %d s; the page is OCR'd", self.path, number,
                      self.timeout_s)
            return "", ()
        if done.returncode != 0:
            log.debug("%s: page %d: pdftotext: %s", self.path, number, done.stderr.decode("utf-8", "replace"))
            return "", ()  # no text layer then: OCR reads the rendered page
        return _bbox_layout(done.stdout.decode("utf-8", "replace"))

    def render(self, number: int, dpi: float) -> Image.Image:
        return self.renderer.render(self.path, number, dpi, self.password)


_BBOX_PAGE = re.compile(r'<page width="([\d.]+)" height="([\d.]+)"')
_BBOX_ITEM = re.compile(
    r'<(block|line)\b|<word xMin="([-\d.]+)" yMin="([-\d.]+)" xMax="([-\d.]+)" yMax="([-\d.]+)">(.*?)</word>'
)


def _bbox_layout(xhtml: str) -> tuple[str, tuple[Word, ...]]:
    """pdftotext -bbox-layout's page as (text, words): boxes in points from the top-left corner, normalised."""
    page = _BBOX_PAGE.search(xhtml)
    if page is None:
        return "", ()
    width, height = max(float(page[1]), 1e-6), max(float(page[2]), 1e-6)
    lines: list[list[str]] = []
    words: list[Word] = []
    filled = 0  # lines holding a word so far: a word's line number is that count less one
    for match in _BBOX_ITEM.finditer(xhtml):
        if match[1] == "line" or match[1] == "block" and lines:  # a blank line before a block
            lines.append([])
        elif match[6] is not None and lines:
            text = html.unescape(match[6]).strip()
            if text:
                x0, y0, x1, y1 = (float(match[i]) for i in range(2, 6))
                box = (max(0.0, x0 / width), max(0.0, y0 / height), min(1.0, x1 / width), min(1.0, y1 / height))
                filled += not lines[-1]
                lines[-1].append(text)
                words.append(Word(text, box, 100.0, filled - 1))
    return normalize_text("\n".join(" ".join(line) for line in lines)), tuple(words)


def _page_sizes(info: dict[str, object]) -> dict[int, tuple[float, float]]:
    """Page number → (width, height) in points as displayed, from pdfinfo's "Page N size" and "Page N rot" lines
    (pdf2image's dictionary holds each line's text after the first colon under the text before it)."""
    sizes: dict[int, tuple[float, float]] = {}
    turned: set[int] = set()
    for key, value in info.items():
        if not (match := _PAGE_KEY.fullmatch(key)):
            continue
        number, what = int(match[1]), match[2]
        if what == "size" and (size := _SIZE.match(str(value))):
            sizes[number] = (float(size[1]), float(size[2]))
        elif what == "rot" and str(value).lstrip("-").isdigit() and int(str(value)) % 180 == 90:
            turned.add(number)
    return {number: (h, w) if number in turned else (w, h) for number, (w, h) in sizes.items()}


class _Sources:
    """The readers of one document: PDFium's open document (None: PDFium cannot open it) and poppler, opened the
    first time it is needed (None once it proved unable to read the file, or is not installed)."""

    def __init__(self, path: Path, pdfium_source: _PdfiumSource | None, passwords: Sequence[str],
                 poppler: _PopplerSource | None = None) -> None:
        self.path, self.pdfium, self.passwords = path, pdfium_source, passwords
        self._poppler: list[_PopplerSource | None] = [] if poppler is None else [poppler]

    @property
    def count(self) -> int:
        return self.pdfium.count if self.pdfium is not None else self.poppler().count  # type: ignore[union-attr]

    def poppler(self) -> _PopplerSource | None:
        if not self._poppler:
            try:
                self._poppler.append(_PopplerSource(self.path, self.passwords))
            except MissingToolError as exc:
                log.info("%s: no fallback renderer: %s", self.path, exc)
                self._poppler.append(None)
            except InputError as exc:
                log.debug("%s: poppler cannot read it either: %s", self.path, exc)
                self._poppler.append(None)
        return self._poppler[0]

    def fallback(self) -> _PopplerSource | None:
        """poppler, where its page N is PDFium's page N (see _PopplerSource.numbers_pages_like)."""
        poppler = self.poppler()
        if poppler is None or self.pdfium is None or poppler.numbers_pages_like(self.pdfium.count):
            return poppler
        return None

    def sizers(self) -> Iterator[_PdfiumSource | _PopplerSource]:
        """Who reads a page's size and text: PDFium, then poppler as its fallback."""
        if self.pdfium is not None:
            yield self.pdfium
        if (poppler := self.fallback()) is not None:
            yield poppler

    def drawers(self, sized_by: object, renderer: str) -> Iterator[_PdfiumSource | _PopplerSource]:
        """Who draws a page, the configured renderer first. Only poppler, when PDFium could not size the page: its
        drawing of it would be no better."""
        if sized_by is not self.pdfium:
            yield sized_by  # type: ignore[misc]
            return
        if renderer == PDFIUM:
            yield self.pdfium
            if (poppler := self.fallback()) is not None:
                yield poppler
        else:
            if (poppler := self.poppler()) is not None:  # the configured renderer: no fallback check
                yield poppler
            yield self.pdfium


def _open(stack: ExitStack, path: Path, passwords: Sequence[str], *, forms: bool) -> _Sources:
    """The document's readers: PDFium's open document (closed with `stack`), or poppler alone when PDFium cannot
    open it; a CorruptFileError with both reasons when neither can, an EncryptedPdfError when no password opens it
    (poppler would ask for the same password). `forms`: PDFium draws form fields (see open_pdf_unlocked)."""
    try:
        doc, password = stack.enter_context(open_pdf_unlocked(path, passwords, forms=forms))
    except EncryptedPdfError:
        raise
    except CorruptFileError as refused:
        try:
            sources = _Sources(path, None, passwords, _PopplerSource(path, passwords))
        except MissingToolError:
            raise refused from None
        except InputError as also:
            raise CorruptFileError(f"{refused}; poppler cannot read it either: {_unnamed(also, path)}") from None
        log.info("%s: PDFium cannot open it (%s); reading it with poppler", path, _unnamed(refused, path))
        return sources
    # poppler, if it is needed, opens with the password PDFium took (or none: an owner password only)
    return _Sources(path, _PdfiumSource(path, doc), () if password is None else (password,))


def draw_pages(
    path: Path,
    *,
    dpi: float,
    max_pixels: int,
    renderer: str = PDFIUM,
    passwords: Sequence[str] = (),
    page_numbers: Iterable[int] | None = None,
) -> Iterator[DrawnPage | PageFailure]:
    """Each page of the PDF at `path` (all, or `page_numbers`, 1-based) drawn at `dpi` (lowered to fit
    `max_pixels`, see fit_dpi), or why it could not be. `renderer` draws first; the other one is the fallback.

    Raises an InputError only for the document as a whole: neither PDFium nor poppler opens it, it needs a password
    none of `passwords` gives, or a page number is out of range. A password never appears in a reason or the log."""
    path = Path(path)
    with ExitStack() as stack:
        sources = _open(stack, path, passwords, forms=True)
        count = sources.count
        for number in page_numbers if page_numbers is not None else range(1, count + 1):
            if not 1 <= number <= count:
                raise ValueError(f"{path}: page {number} is out of range 1..{count}")
            yield _draw(path, number, dpi, max_pixels, sources, renderer)


def _draw(path: Path, number: int, dpi: float, max_pixels: int, sources: _Sources, renderer: str
          ) -> DrawnPage | PageFailure:
    """One page: its size and text from PDFium, or from poppler where PDFium cannot load the page or reads no usable
    size from it; then drawn by the first renderer that can."""
    reasons: list[str] = []
    found: tuple[_PdfiumSource | _PopplerSource, PdfPageInfo, float] | None = None
    for source in sources.sizers():
        try:
            info = source.info(number)
            found = (source, info, fit_dpi(info.width_pt, info.height_pt, dpi, max_pixels, where=f"page {number}"))
            break
        except TooLargeError as exc:  # the page's size was read, and it is absurd: so it is for every reader
            return PageFailure(number, _unnamed(exc, path))
        except InputError as exc:  # the page cannot be loaded, or reads as having no area
            reason = _unnamed(exc, path)
            reasons.append(reason if not reasons else f"{source.name}: {reason}")
    if found is None:
        return PageFailure(number, _joined(reasons) or f"page {number}: cannot read the page")
    sized_by, info, fitted = found
    reasons = []
    for source in sources.drawers(sized_by, renderer):
        try:
            image = _checked(source.render(number, fitted), info, fitted)
        except InputError as exc:
            reasons.append(f"{source.name}: {_unnamed(exc, path)}")
            continue
        if reasons or sized_by is not sources.pdfium:
            why = _joined(reasons) or "PDFium could not size it"
            log.info("%s: page %d drawn by %s (%s)", path, number, source.name, why)
        return DrawnPage(number, image, info.text, source.name, info.words)
    return PageFailure(number, f"page {number}: no renderer could draw it: " + _joined(reasons))


def _checked(image: Image.Image, info: PdfPageInfo, dpi: float) -> Image.Image:
    """`image`, if its size is the page's at `dpi`: pdftoppm answers a page it cannot draw with a 1x1 blank."""
    expected = (math.ceil(info.width_pt * dpi / POINTS_PER_INCH), math.ceil(info.height_pt * dpi / POINTS_PER_INCH))
    if any(abs(got - want) > max(2, want // 50) for got, want in zip(image.size, expected, strict=True)):
        raise CorruptFileError(
                f"page {info.page_number}: drew {image.width}x{image.height} pixels for a page of "
                f"{expected[0]}x{expected[1]}"
            )
    return image


def _joined(reasons: list[str]) -> str:
    """Reasons in order, each once (both renderers often refuse a page for the same reason)."""
    unique: list[str] = []
    for reason in reasons:
        bare = reason.split(": ", 1)[1] if reason.startswith((f"{PDFIUM}: ", f"{POPPLER}: ")) else reason
        if not any(bare in seen for seen in unique):
            unique.append(reason)
    return "; ".join(unique)


def _unnamed(exc: BaseException, path: Path) -> str:
    """An error's message without the file's path in front (a page's reason is stored with its document)."""
    message = str(exc)
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def count_pdf_pages(path: Path, passwords: Sequence[str] = ()) -> int:
    """How many pages draw_pages can be asked for: PDFium's count, or poppler's when PDFium cannot open the file."""
    with ExitStack() as stack:
        return _open(stack, Path(path), passwords, forms=False).count
