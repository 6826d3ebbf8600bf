"""Page text: whitespace normalisation, Tesseract OCR (with text-size normalisation), and layer-vs-OCR choice."""

from __future__ import annotations

import os
import re
from typing import Literal

import numpy as np
import pytesseract
from PIL import Image, ImageOps

from mmrag.errors import ConfigError, MissingToolError
from mmrag.types import TextSource

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
# A page whose OCR reads fewer characters than this is read again in other ways (ocr_page). Receipts that Tesseract's
# automatic segmentation gave up on came out with 0-16 characters; a receipt read well has hundreds.
OCR_RETRY_BELOW_CHARS = 80
OCR_BLOCK_PSM = 6  # Tesseract's "a single uniform block of text"


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
    # Tesseract's OpenMP threads spin against each other and against our other workers, which makes a page several
    # times slower on a small machine than with one thread. Tesseract's own docs advise
    # a limit of 1 when pages are processed in parallel, as the indexing job does. A value set by the user wins;
    # pytesseract offers no per-call environment, hence the process-wide default.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    try:
        config = "" if psm is None else f"--psm {psm}"
        return normalize_text(pytesseract.image_to_string(image, lang=lang, config=config))
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
    """Colourful and without a single band of rows that could be a line of text: a photo, not a document, a slide
    or a poster (ocr_skip_photos). Both tests are cheap next to OCR."""
    return colourfulness(image) > PHOTO_COLOURFULNESS and len(_line_heights(image)) == 0


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


def ocr_page(image: Image.Image, lang: str = "eng", line_height: int = OCR_LINE_HEIGHT) -> str:
    """OCR that does not give up on a page at the first try: Tesseract on the page (small print enlarged), and when
    that reads fewer than OCR_RETRY_BELOW_CHARS characters, again as one block of text (`--psm 6`: automatic page
    segmentation finds no text regions on some clean greyscale scans, and a receipt is one column), on the same
    image and on a contrast-stretched grey one at twice the size (faint print). The reading with the most characters
    wins. A page with real text costs one pass as before; only a page that came out (nearly) empty costs three."""
    enlarged = upscale_for_ocr(image, line_height)
    best = ocr(enlarged, lang)
    if count_chars(best) >= OCR_RETRY_BELOW_CHARS:
        return best
    for candidate in (enlarged, _faint_print(image)):
        retried = ocr(candidate, lang, psm=OCR_BLOCK_PSM)
        if count_chars(retried) > count_chars(best):
            best = retried
    return best


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
) -> tuple[str, TextSource]:
    """The text to index for one page and where it came from.

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
    if mode == "never" or (mode == "auto" and count_chars(layer) >= min_chars):
        return (layer, TextSource.TEXT_LAYER) if layer else ("", TextSource.NONE)
    if mode == "auto" and skip_photos and text_layer is None and looks_like_photo(image):
        return "", TextSource.NONE
    recognised = ocr_page(image, lang, line_height)
    if recognised:
        return recognised, TextSource.OCR
    if layer:
        return layer, TextSource.TEXT_LAYER
    return "", TextSource.NONE
