"""Page text: whitespace normalisation, Tesseract OCR (with text-size normalisation), and layer-vs-OCR choice."""

from __future__ import annotations

import difflib
import logging
from datetime import date, timedelta
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pytesseract
from PIL import Image, ImageOps

from mmrag.analysis import amount_keys, page_dates
from mmrag.errors import ConfigError, MissingToolError
from mmrag.ingest.rapid import rapid_lines, text_boxes
from mmrag.layout import Box, Word, by_line, renumber_lines, split_line
from mmrag.types import TextSource

log = logging.getLogger(__name__)

OcrMode = Literal["auto", "always", "never"]

_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")  # whitespace except newlines (tabs, NBSP, ideographic space, ...)
_BLANK_LINES = re.compile(r"\n{3,}")
# C0/C1 controls other than \t and \n: PDF text layers with broken font mappings are full of them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")

# Text-line height (pixels, ascender to descender) that small print is enlarged to before OCR. Tesseract's LSTM
# models read text at about this size best; phone photos and low-dpi scans of small print come in smaller. Chosen on
# receipt scans (bench/sroie.py): enlarging lines under this height raised the share of ground-truth words found and
# of totals and dates read exactly, while enlarging every image lowered both for large print.
OCR_LINE_HEIGHT = 32
OCR_MAX_UPSCALE = 3.0
OCR_MAX_PIXELS = 25_000_000  # an enlarged image stays under this: Tesseract's time and memory grow with pixels
# Colourfulness (Hasler and Suesstrunk's metric, 0 for grey) above which an image with no lines of text found is
# taken for a photo. Chosen between the two kinds of image it separates: receipt scans stay below it, most ordinary
# photos are above it, and a photo it misses is only OCRed needlessly.
PHOTO_COLOURFULNESS = 25.0
# A colourful image in which the text detector finds this many boxes of text is a document, not a photo: photos of
# street scenes show a sign or two (each a box or two), a receipt or a slide a dozen lines and more.
PHOTO_TEXT_BOXES = 6
# A page whose OCR reads fewer characters than this is read again in other ways (ocr_page). Receipts that Tesseract's
# automatic segmentation gave up on came out with 0-16 characters; a receipt read well has hundreds.
OCR_RETRY_BELOW_CHARS = 80
OCR_BLOCK_PSM = 6  # Tesseract's "a single uniform block of text"
# Mean word confidence (0-100) under which a page is read again in other ways (ocr_page). On the SROIE receipts,
# readings of legible text scored 60-80; the unreadable ones (dot-matrix print, a receipt on a black table) 24-55.
OCR_LOW_CONFIDENCE = 60.0


def normalize_text(text: str) -> str:
    """One space between words, lines stripped, at most one blank line in a row, no control characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = (_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def count_chars(text: str) -> int:
    """Characters that are not whitespace: what ocr_min_chars is compared with."""
    return sum(not c.isspace() for c in text)


def ocr(image: Image.Image, lang: str = "eng", *, psm: int | None = None) -> str:
    """Tesseract's text for `image`, normalised (page segmentation mode `psm`: Tesseract's default, 3, when None).
    Raises MissingToolError or ConfigError (unknown lang)."""
    return normalize_text(_tesseract(pytesseract.image_to_string, image, lang, psm))


SURE_WORD = 60.0  # a word Tesseract reads with at least this confidence (0-100) counts in Reading.confident_chars
# A date counts as read (Reading.surely_dated) from words read with at least this confidence: on the shared receipts
# misread dates came with confidences in the 60s, and a misread date names another day.
CLEAR_WORD = 80.0
# A line that labels its amount as what a bill comes to, as printed or with OCR's usual slips ("Tota]", "T0TAL"),
# and an amount's word ("14.85", "RM14,85").
_TOTAL_LABEL = re.compile(r"t[o0]ta|[o0]tal|amount|\bamt\b|\bdue\b|payable|\bnett?\b|round", re.IGNORECASE)
_AMOUNT_WORD = re.compile(r"\d[.,]\s?\d{2}(?!\d)")


@dataclass(frozen=True)
class Reading:
    """One Tesseract reading of a page: its text, how sure Tesseract was of it (mean word confidence, 0-100,
    weighted by word length; 0 for no words), and `confident_chars`, the characters of the words it was sure of
    (SURE_WORD): what two readings of one page are compared on. Garbage read off noise is long but unsure; a
    careful reading of half the page is sure but short."""

    text: str
    confidence: float
    confident_chars: int = 0
    clear_text: str = ""  # the text of the words it read clearly (CLEAR_WORD) alone, a line per line
    words: tuple[Word, ...] = field(default=(), repr=False)  # boxes normalised to the image read

    def line_words(self, lines: Iterable[str]) -> list[Word]:
        """The words of those of its lines that read as one of `lines` (lines_not_in's picks from this reading)."""
        wanted = {normalize_text(line) for line in lines}
        return [w for words in by_line(self.words).values() if normalize_text(" ".join(w.text for w in words)) in wanted
                for w in words]

    @property
    def surely_totalled(self) -> bool:
        """Whether Tesseract read clearly (CLEAR_WORD) each amount on the lines that label one as what a bill comes
        to (a total, an amount due or paid, a rounding): a total's digits read from words it was less sure of are
        misread as often as a date's (on the shared receipts "NET TOTAL 14,05" for 14.85)."""
        for words in by_line(self.words).values():
            if _TOTAL_LABEL.search(" ".join(w.text for w in words)) and any(
                w.confidence < CLEAR_WORD and _AMOUNT_WORD.search(w.text) for w in words
            ):
                return False
        return True

    @property
    def surely_dated(self) -> bool:
        """Whether the words Tesseract read clearly hold a date (holds_a_date): a date read from words it was less
        sure of ("15-09-19" at 66 for a printed "15-03-18", "18-05-17" for "10-05-17") is as likely a misreading as
        not."""
        return holds_a_date(self.clear_text)


def read(image: Image.Image, lang: str = "eng", *, psm: int | None = None) -> Reading:
    """ocr() with Tesseract's word confidences and boxes: the text rebuilt from its words (a line per line, a blank
    line between paragraphs, as ocr() has it), their mean confidence, and the words (boxes normalised to `image`)."""
    data = _tesseract(pytesseract.image_to_data, image, lang, psm, output_type=pytesseract.Output.DICT)
    lines: list[list[Word]] = []  # a line's words; [] between paragraphs
    line_key = paragraph_key = None
    weighted = length = 0.0
    sure = 0
    width, height = max(1, image.width), max(1, image.height)
    for i, word in enumerate(data["text"]):
        confidence = float(data["conf"][i])
        if confidence < 0 or not word.strip():
            continue  # a page, block, paragraph or line record, or an empty word
        paragraph = (data["page_num"][i], data["block_num"][i], data["par_num"][i])
        line = (*paragraph, data["line_num"][i])
        if line != line_key:
            if paragraph != paragraph_key and lines:
                lines.append([])
            lines.append([])
            line_key, paragraph_key = line, paragraph
        left, top = data["left"][i], data["top"][i]
        box = (left / width, top / height, (left + data["width"][i]) / width, (top + data["height"][i]) / height)
        lines[-1].append(Word(word.strip(), box, confidence))
        weighted += confidence * len(word)
        length += len(word)
        sure += len(word) if confidence >= SURE_WORD else 0

    def text(least: float) -> str:
        return normalize_text("\n".join(" ".join(w.text for w in words if w.confidence >= least) for words in lines))

    numbered = tuple(replace(w, line=n) for n, words in enumerate(line for line in lines if line) for w in words)
    return Reading(text(0.0), weighted / length if length else 0.0, sure, text(CLEAR_WORD), numbered)


def _tesseract(call, image: Image.Image, lang: str, psm: int | None, **kwargs):  # noqa: ANN001, ANN202 - pytesseract's
    # Tesseract's OpenMP threads spin against each other and against our other workers, which makes a page several
    # times slower on a small machine than with one thread. Tesseract's own docs advise
    # a limit of 1 when pages are processed in parallel, as the indexing job does. A value set by the user wins;
    # pytesseract offers no per-call environment, hence the process-wide default.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    try:
        return call(image, lang=lang, config="" if psm is None else f"--psm {psm}", **kwargs)
    except pytesseract.TesseractNotFoundError as exc:
        raise MissingToolError(_missing_tesseract_message()) from exc
    except pytesseract.TesseractError as exc:
        if "language" in str(exc.message).lower() or "traineddata" in str(exc.message):
            raise ConfigError(f"OCR language {lang!r} is not installed for tesseract: {exc.message}") from exc
        raise


def estimate_line_height(image: Image.Image) -> float | None:
    """Median height (pixels) of the image's text lines, from the row profile of its Otsu-binarised grey image.

    Rows holding ink are grouped into runs; a run is a text line. None when the image shows no run of lines (a
    photo, a blank page, a dark background where "ink" fills the image): its text size is unknown.
    """
    heights = _line_heights(image)
    if len(heights) < 3:
        return None
    height = float(np.median(heights))
    return height if height < image.height / 5 else None


def _line_heights(image: Image.Image) -> np.ndarray:
    """Heights of the runs of inked rows (Otsu-binarised grey) that could be lines of text: 4 px and more (specks
    and rules are not lines) and under a fifth of the image (a dark region is not a line)."""
    grey = np.asarray(image.convert("L"))
    if grey.size == 0:
        return np.zeros(0, dtype=np.int64)
    threshold = _otsu_threshold(grey)
    ink = grey < threshold
    inked_rows = ink.mean(axis=1) > 0.01
    edges = np.flatnonzero(np.diff(np.concatenate(([0], inked_rows.astype(np.int8), [0]))))
    heights = edges[1::2] - edges[0::2]
    return heights[(heights >= 4) & (heights < grey.shape[0] / 5)]


def colourfulness(image: Image.Image) -> float:
    """Hasler and Suesstrunk's colourfulness of `image` (on a 256-px thumbnail): 0 for grey, ~30-40 for a typical
    photo, above 100 for a saturated one."""
    small = image.convert("RGB")
    small.thumbnail((256, 256))
    rgb = np.asarray(small, dtype=np.float32)
    red_green = rgb[..., 0] - rgb[..., 1]
    yellow_blue = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    spread = np.hypot(red_green.std(), yellow_blue.std())
    return float(spread + 0.3 * np.hypot(red_green.mean(), yellow_blue.mean()))


def looks_like_photo(image: Image.Image) -> bool:
    """A photo, not a document, a slide or a poster (ocr_skip_photos): colourful, without a single band of rows
    that could be a line of text, and with fewer than PHOTO_TEXT_BOXES boxes of text where a text detector looks
    (mmrag.ingest.rapid.text_boxes). The first two tests are cheap and let grey pages and pages of plain lines
    through at once; the detector decides the rest, for a row profile misses the lines of a receipt on coloured
    paper or under a coloured stripe (Otsu's threshold then splits paper from colour, not ink from paper), and
    skipping a document loses all its text where reading a photo costs a few seconds."""
    if colourfulness(image) <= PHOTO_COLOURFULNESS or len(_line_heights(image)) > 0:
        return False
    return text_boxes(image) < PHOTO_TEXT_BOXES


def _otsu_threshold(grey: np.ndarray) -> int:
    histogram = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    share = histogram / histogram.sum()
    weight = np.cumsum(share)
    mean = np.cumsum(share * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * weight - mean) ** 2 / (weight * (1 - weight))
    return int(np.nanargmax(between)) if np.isfinite(between).any() else 128


def upscale_for_ocr(
    image: Image.Image,
    line_height: int = OCR_LINE_HEIGHT,
    *,
    max_scale: float = OCR_MAX_UPSCALE,
    max_pixels: int = OCR_MAX_PIXELS,
) -> Image.Image:
    """`image` enlarged so its text lines are about `line_height` pixels tall; unchanged when they already are,
    when its text size cannot be estimated, or when `line_height` is 0."""
    if line_height <= 0:
        return image
    estimated = estimate_line_height(image)
    if estimated is None or estimated >= line_height:
        return image
    scale = min(max_scale, line_height / estimated, (max_pixels / (image.width * image.height)) ** 0.5)
    if scale <= 1.05:
        return image
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.LANCZOS)


def check_ocr(lang: str = "eng") -> str:
    """Fail early (before a job starts) if OCR cannot run; returns the tesseract version.

    Raises MissingToolError when the binary is missing and ConfigError when a language in `lang`
    ("eng" or "eng+deu") has no trained data.
    """
    try:
        version = str(pytesseract.get_tesseract_version())
        installed = set(pytesseract.get_languages(config=""))
    except pytesseract.TesseractNotFoundError as exc:
        raise MissingToolError(_missing_tesseract_message()) from exc
    missing = sorted(set(lang.split("+")) - installed)
    if missing:
        raise ConfigError(
            f"OCR language(s) {', '.join(missing)} not installed for tesseract {version}; "
            f"installed: {', '.join(sorted(installed)) or '(none)'}"
        )
    return version


def _missing_tesseract_message() -> str:
    return (
        f"OCR needs the tesseract binary, which was not found (looked for {pytesseract.pytesseract.tesseract_cmd!r} "
        "on PATH). Install it (Debian/Ubuntu: apt-get install tesseract-ocr tesseract-ocr-eng) or turn OCR off "
        "with MMRAG_INGEST__OCR=never."
    )


SecondOcr = Literal["always", "unsure", "never"]


def ocr_page(
    image: Image.Image, lang: str = "eng", line_height: int = OCR_LINE_HEIGHT, second: SecondOcr = "never",
    words: list[Word] | None = None,
) -> tuple[str, str]:
    """OCR that does not give up on a page at the first try; returns the text and the path that gave it (a
    TextSource value: the page records it).

    Tesseract reads the page (small print enlarged) with its automatic page segmentation: path "ocr". Then:
    - A reading of fewer than OCR_RETRY_BELOW_CHARS characters is tried again as one block of text (`--psm 6`:
      automatic segmentation finds no text regions on some clean greyscale scans, and a receipt is one column), on
      the same image ("ocr_block") and on a contrast-stretched grey one at twice the size ("ocr_faint").
    - A reading Tesseract is unsure of (mean word confidence under OCR_LOW_CONFIDENCE) is tried again on the image
      shrunk then enlarged back to the line height ("ocr_smooth": print dots and JPEG noise averaged away) and on
      the paper alone, cut out of a dark background ("ocr_crop"), when there is one.
      Of the readings, the one with the most confident characters (Reading.confident_chars) wins.
    - A winning reading that holds no date (holds_a_date) is read again as one block, and the lines only that
      reading found are added after its own (path + "+block"): automatic segmentation drops whole text regions now
      and then, and on receipts, invoices and forms the dropped line is often the date (about one SROIE receipt in
      six lost it).
    - `second`: the second engine (RapidOCR, mmrag.ingest.rapid) reads the page too, on every page ("always") or
      where Tesseract's winning reading is unsure (under OCR_LOW_CONFIDENCE), holds no date that Tesseract was
      sure of (Reading.surely_dated), even with the one-block lines, or read a total's figures unclearly
      (Reading.surely_totalled) ("unsure"), and the lines it found that the text lacks (lines_not_in: a line with a
      date or an amount of its own counts as one) are added after it (path + "+rapid"). On the shared receipts,
      the date a question names was misread in words Tesseract was unsure of ("18-05-17" for "10-05-17") as often
      as it was lost, and so was the total.
    With `second` "never", a clear page whose reading holds a date costs one pass.
    `words`: the page's words are appended to it (mmrag.layout.Word, boxes normalised to `image`): the winning
    reading's, then those of the lines each later reading added, each such line numbered after the page's own.
    """
    enlarged = upscale_for_ocr(image, line_height)
    best, best_image, path = read(enlarged, lang), enlarged, "ocr"
    tries: list[tuple[str, Image.Image, int | None]] = []
    if count_chars(best.text) < OCR_RETRY_BELOW_CHARS:
        tries += [("ocr_block", enlarged, OCR_BLOCK_PSM), ("ocr_faint", _faint_print(image), OCR_BLOCK_PSM)]
    paper_box = None
    if best.confidence < OCR_LOW_CONFIDENCE:
        tries.append(("ocr_smooth", upscale_for_ocr(_shrunk(image), line_height), None))
        paper_box = paper_of(image)
        if paper_box is not None:
            tries.append(("ocr_crop", upscale_for_ocr(image.crop(paper_box), line_height), None))
    for name, candidate, psm in tries:
        reading = read(candidate, lang, psm=psm)
        if reading.confident_chars > best.confident_chars:
            best, best_image, path = reading, candidate, name
    text, surely_dated = best.text, best.surely_dated

    def on_page(read_words: Iterable[Word]) -> list[Word]:
        """Words of the image read (best_image) with their boxes on `image`: the paper's, when it was cut out."""
        if path.startswith("ocr_crop") and paper_box is not None:
            return [replace(w, box=_uncropped(w.box, paper_box, image.size)) for w in read_words]
        return list(read_words)

    found = on_page(best.words)
    if path in ("ocr", "ocr_smooth", "ocr_crop") and text and not holds_a_date(text):
        block = read(best_image, lang, psm=OCR_BLOCK_PSM)
        added = lines_not_in(block.text, text)
        if added:
            text, path = _with_lines(text, added), path + "+block"
            surely_dated = block.surely_dated and holds_a_date(text)
            found += renumber_lines(on_page(block.line_words(added)), _next_line(found))
    if second == "always" or second == "unsure" and (
        best.confidence < OCR_LOW_CONFIDENCE or not surely_dated or not best.surely_totalled
    ):
        try:
            read_lines = rapid_lines(image)
        except MissingToolError:
            raise
        except Exception as exc:  # noqa: BLE001 - its failure must not cost the page the text Tesseract read
            log.warning("the second OCR engine failed on a page (%s: %s); Tesseract's text is kept",
                        type(exc).__name__, exc)
            read_lines = []
        added = lines_not_in("\n".join(line for line, _, _ in read_lines), text)
        if added:
            text, path = _with_lines(text, added), path + "+rapid"
            wanted, first = set(added), _next_line(found)
            for line, box, score in read_lines:
                if line.strip() in wanted:
                    wanted.discard(line.strip())
                    found += split_line(line, box, 100 * score, first)
                    first += 1
    if words is not None:
        words.extend(found)
    return text, path


def _next_line(words: list[Word]) -> int:
    return max((w.line for w in words), default=-1) + 1


def _uncropped(box: Box, crop: tuple[int, int, int, int], size: tuple[int, int]) -> Box:
    """A box normalised to a crop of an image (crop: left, top, right, bottom pixels) normalised to the image."""
    width, height = crop[2] - crop[0], crop[3] - crop[1]
    return ((crop[0] + box[0] * width) / size[0], (crop[1] + box[1] * height) / size[1],
            (crop[0] + box[2] * width) / size[0], (crop[1] + box[3] * height) / size[1])


def _with_lines(text: str, added: list[str]) -> str:
    """A reading with the lines another reading found added after it, a blank line between."""
    return normalize_text(text + "\n\n" + "\n".join(added))


def holds_a_date(text: str) -> bool:
    """Whether `text` holds a date that could be printed on a page today: 1970 to a year ahead. A reading whose
    only date is 2042 misread a date (OCR's "2042-11-23" for "15-03-18"): it is read again as one that has none."""
    latest = date.today() + timedelta(days=366)
    return any(EARLIEST_DATE <= day <= latest for day in page_dates(text))


EARLIEST_DATE = date(1970, 1, 1)
SMOOTH_WIDTH = 1000  # ocr_smooth shrinks a page to at most this width (and at least by half) before enlarging it


def _shrunk(image: Image.Image) -> Image.Image:
    """Half the size, or SMOOTH_WIDTH wide where that is smaller: shrinking averages dot-matrix print (whose dots
    a high-resolution scan shows apart, and whose rows of dots the line-height estimate takes for lines) and JPEG
    noise into strokes; upscale_for_ocr then enlarges them back to a size Tesseract reads."""
    scale = min(0.5, SMOOTH_WIDTH / max(1, image.width))
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


PAPER_MIN_CUT = 0.05  # crop_to_paper cuts only when the background is at least this share of the image's area


def crop_to_paper(image: Image.Image) -> Image.Image | None:
    """The bright paper of a photographed page, cut out of a dark background (a receipt on a table; paper_of)."""
    box = paper_of(image)
    return None if box is None else image.crop(box)


def paper_of(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Where the bright paper of a photographed page is on a dark background (left, top, right, bottom pixels):
    the rows and columns whose pixels are mostly above the Otsu threshold, first to last. None when there is no
    such background to cut (under PAPER_MIN_CUT of the area) or no paper."""
    grey = np.asarray(ImageOps.grayscale(image))
    bright = grey > _otsu_threshold(grey)
    rows = np.flatnonzero(bright.mean(axis=1) > 0.5)
    columns = np.flatnonzero(bright.mean(axis=0) > 0.5)
    if not len(rows) or not len(columns):
        return None
    box = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)
    if (box[2] - box[0]) * (box[3] - box[1]) > (1 - PAPER_MIN_CUT) * image.width * image.height:
        return None
    return box


SAME_LINE_RATIO = 0.75  # difflib ratio above which two readings of a line are taken for the same line
_MIN_LINE_CHARS = 4  # shorter lines in a second reading are specks and rules, not text the first one missed


def lines_not_in(second: str, first: str) -> list[str]:
    """The lines of `second` (a second OCR reading of a page) that `first` does not hold, in their order: a line
    counts as held when a line of `first` reads the same, casefolded and within SAME_LINE_RATIO (two readings of
    one line differ by a few characters) and holds no amount that line lacks, nor a date `first` lacks: otherwise the
    first reading of that line lost or misread it, which a few characters can do, and the page keeps both."""
    held = [" ".join(line.casefold().split()) for line in first.splitlines() if line.strip()]
    known_dates = set(page_dates(first))
    exact = set(held)
    added: list[str] = []
    for line in second.splitlines():
        key = " ".join(line.casefold().split())
        if count_chars(key) < _MIN_LINE_CHARS or key in exact:
            continue
        matcher = difflib.SequenceMatcher(None, "", key, autojunk=False)
        amounts = set(amount_keys(key))
        if known_dates.issuperset(page_dates(key)) and any(
            _similar(matcher, other) and amounts.issubset(amount_keys(other)) for other in held
        ):
            continue
        added.append(line.strip())
        exact.add(key)
    return added


def _similar(matcher: difflib.SequenceMatcher, other: str) -> bool:
    matcher.set_seq1(other)
    return (matcher.real_quick_ratio() >= SAME_LINE_RATIO and matcher.quick_ratio() >= SAME_LINE_RATIO
            and matcher.ratio() >= SAME_LINE_RATIO)


def _faint_print(image: Image.Image) -> Image.Image:
    """Grey, contrast stretched (2% clipped at each end), twice the size within OCR_MAX_PIXELS."""
    grey = ImageOps.autocontrast(ImageOps.grayscale(image), cutoff=2)
    scale = min(2.0, (OCR_MAX_PIXELS / max(1, grey.width * grey.height)) ** 0.5)
    if scale <= 1.05:
        return grey
    return grey.resize((round(grey.width * scale), round(grey.height * scale)), Image.Resampling.LANCZOS)


def choose_text(
    image: Image.Image,
    text_layer: str | None,
    *,
    mode: OcrMode,
    lang: str = "eng",
    min_chars: int = 16,
    line_height: int = OCR_LINE_HEIGHT,
    skip_photos: bool = False,
    second: SecondOcr = "never",
    layer_words: Sequence[Word] = (),
    words: list[Word] | None = None,
) -> tuple[str, str]:
    """The text to index for one page and where it came from; with `words`, its words are appended to that list
    (the text layer's `layer_words` when the text layer is chosen, OCR's words when OCR is: mmrag.layout).

    `text_layer` is the PDF page's extracted text, or None for an image file (which has none).

    - never:  the text layer as it is (any length); images get no text.
    - auto:   the text layer when it has at least `min_chars` non-space characters, else OCR; with `skip_photos`,
              an image file that looks_like_photo gets no text (PDF pages are documents and always get OCR).
    - always: OCR every page, and the OCR text replaces the text layer. Whoever picks "always" distrusts text
              layers (fonts without a Unicode mapping produce fluent-looking garbage), and indexing both would
              count every word twice in BM25.

    OCR that finds nothing falls back to whatever text layer there is: no mode throws away text we have.
    Small print is enlarged to about `line_height` pixels a line first (upscale_for_ocr; 0 turns that off).
    """
    layer = normalize_text(text_layer) if text_layer else ""
    sink: list[Word] = [] if words is None else words
    if mode == "never" or (mode == "auto" and count_chars(layer) >= min_chars):
        if not layer:
            return "", TextSource.NONE
        sink.extend(layer_words)
        return layer, TextSource.TEXT_LAYER
    if mode == "auto" and skip_photos and text_layer is None and looks_like_photo(image):
        return "", TextSource.NONE
    recognised_words: list[Word] = []
    recognised, path = ocr_page(image, lang, line_height, second, recognised_words)
    if recognised:
        sink.extend(recognised_words)
        return recognised, path
    if layer:
        sink.extend(layer_words)
        return layer, TextSource.TEXT_LAYER
    return "", TextSource.NONE
