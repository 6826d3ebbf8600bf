"""Where a page's words are: word boxes, stored with each page, for search highlights and cited regions.

A box is (x0, y0, x1, y1) in the page image, normalised: 0-1 of its width and height, origin at its top-left
corner. Normalised boxes hold for the page image at any size (the stored JPEG is shrunk to page_image_max_side, a
thumbnail further) and whatever size OCR read the page at.

Words come from Tesseract (OCR'd pages: each word's box and confidence), from RapidOCR (a line it added: its box,
shared among its words by their characters), or from the PDF text layer (each word the union of its characters'
boxes, confidence 100). A page stores them compactly (encode_words): zlib over the texts and, per word, four
uint16 coordinates, a uint8 confidence and a uint16 line number; about 8 bytes a word.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mmrag.analysis import analyze, query_terms, tokenize

Box = tuple[float, float, float, float]

_MAGIC = b"MW1"
_SCALE = 65535


@dataclass(frozen=True)
class Word:
    text: str
    box: Box
    confidence: float = 100.0  # 0-100: Tesseract's, RapidOCR's score x 100, or 100 for a text layer's word
    line: int = 0  # the page's line it is on (words of a line share the number; lines in reading order)


@dataclass(frozen=True)
class Region:
    """A rectangle of a page that shows something: a matched word, a quoted line."""

    box: Box
    source: str  # ocr | text_layer | similarity_map
    score: float  # 0-1: how well it matches what it is a region of
    text: str = ""


def encode_words(words: Sequence[Word]) -> bytes:
    """`words` in the stored form (empty bytes for none)."""
    if not words:
        return b""
    boxes = np.clip(np.round(np.asarray([w.box for w in words], dtype=np.float64) * _SCALE), 0, _SCALE)
    confidence = np.clip(np.round([w.confidence for w in words]), 0, 100).astype(np.uint8)
    lines = np.clip([w.line for w in words], 0, 65535).astype(np.uint16)
    texts = "\x00".join(w.text.replace("\x00", "") for w in words).encode("utf-8")
    body = struct.pack("<I", len(words)) + boxes.astype("<u2").tobytes() + confidence.tobytes() + lines.astype(
        "<u2").tobytes() + texts
    return _MAGIC + zlib.compress(body, 6)


def decode_words(data: bytes | None) -> list[Word]:
    """The words encode_words stored; [] for none (a page indexed before word boxes were stored, or without text)."""
    if not data:
        return []
    if data[:3] != _MAGIC:
        raise ValueError("not a word-box record this version of mmrag wrote")
    body = zlib.decompress(data[3:])
    (count,) = struct.unpack_from("<I", body)
    offset = 4
    boxes = np.frombuffer(body, dtype="<u2", count=4 * count, offset=offset).reshape(count, 4) / _SCALE
    offset += 8 * count
    confidence = np.frombuffer(body, dtype=np.uint8, count=count, offset=offset)
    offset += count
    lines = np.frombuffer(body, dtype="<u2", count=count, offset=offset)
    offset += 2 * count
    texts = body[offset:].decode("utf-8").split("\x00")
    return [
        Word(text, (float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(c), int(n))
        for text, b, c, n in zip(texts, boxes, confidence, lines, strict=True)
    ]


def union(boxes: Iterable[Box]) -> Box:
    boxes = list(boxes)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    inner = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    outer = area(a) + area(b) - inner
    return inner / outer if outer > 0 else 0.0


def split_line(text: str, box: Box, confidence: float, line: int) -> list[Word]:
    """A line read as one box (RapidOCR's) as its words, the box shared among them by their characters' offsets."""
    words: list[Word] = []
    length = max(1, len(text))
    width = box[2] - box[0]
    position = 0
    for token in text.split():
        start = text.index(token, position)
        position = start + len(token)
        left = box[0] + width * start / length
        words.append(Word(token, (left, box[1], box[0] + width * position / length, box[3]), confidence, line))
    return words


def renumber_lines(words: Sequence[Word], first: int = 0) -> list[Word]:
    """`words` with their lines numbered first, first + 1, ... in the order they appear (words added after a page's
    own; a text layer's line breaks, a run of them counting once)."""
    numbers: dict[int, int] = {}
    return [replace(w, line=numbers.setdefault(w.line, first + len(numbers))) for w in words]


def by_line(words: Iterable[Word]) -> dict[int, list[Word]]:
    """The words grouped by the line they are on, lines in the order they first appear, words in theirs."""
    lines: dict[int, list[Word]] = {}
    for word in words:
        lines.setdefault(word.line, []).append(word)
    return lines


def line_regions(words: Sequence[Word], source: str, score: float = 1.0) -> list[Region]:
    """One region per line the words are on (the union of that line's words), top to bottom."""
    regions = [
        Region(union(w.box for w in line), source, score, " ".join(w.text for w in line))
        for line in by_line(words).values()
    ]
    return sorted(regions, key=lambda r: (r.box[1], r.box[0]))


def region_source(text_source: str) -> str:
    """What a page's word boxes came from, for a Region: its text layer, or OCR (a page's text_source)."""
    return "text_layer" if text_source == "text_layer" else "ocr"


def stored_words(stored: tuple[bytes, str] | None) -> tuple[list[Word], str]:
    """A page's words and their Region source from its stored row (repository.page_words: the encoded words and
    the page's text_source); none, from OCR, for a page without one."""
    if stored is None:
        return [], "ocr"
    return decode_words(stored[0]), region_source(stored[1])


def highlights(query: str, words: Sequence[Word], source: str) -> list[Region]:
    """The boxes of the page's words that match the query through the shared analyzer (mmrag.analysis): a word
    holding one of the query's terms (its words, a date however either writes it, an amount), in reading order."""
    wanted = set(query_terms(query))
    if not wanted:
        return []
    return [Region(w.box, source, 1.0, w.text) for w in words if wanted.intersection(_terms_of(w.text))]


@functools.lru_cache(maxsize=1 << 16)
def _terms_of(word: str) -> frozenset[str]:
    """A word's analyzer terms; a page's words are highlighted again and again, for one query after another."""
    return frozenset(analyze(word))


def locate(quote: str, words: Sequence[Word], source: str, *, min_score: float = 0.5) -> list[Region]:
    """Where on the page `quote` (a quoted line or two, a VLM's quoted span) is: the line, or run of up to
    LOCATE_LINES consecutive lines, whose words' tokens best cover the quote's (a fuzzy match: OCR and a model's quote
    differ by a few characters or words), ties to the run with the fewest other tokens; one region per line of it,
    scored by the share of the quote's tokens found. [] when no run covers `min_score` of them."""
    wanted = Counter(tokenize(quote))
    if not wanted or not words:
        return []
    grouped = by_line(words)
    lines = [grouped[n] for n in sorted(grouped)]
    tokens = [Counter(t for w in line for t in tokenize(w.text)) for line in lines]
    needed = sum(wanted.values())
    best: tuple[float, float, int, int] = (0.0, 0.0, 0, 0)
    for start in range(len(lines)):
        if not wanted.keys() & tokens[start].keys():
            continue
        held: Counter[str] = Counter()
        for end in range(start, min(len(lines), start + LOCATE_LINES)):
            held += tokens[end]
            found = sum((wanted & held).values())
            score = (found / needed, found / max(1, sum(held.values())), start, end + 1)
            if score[:2] > best[:2]:
                best = score
    recall, _, start, end = best
    if recall < min_score:
        return []
    return [Region(r.box, source, round(recall, 3), r.text) for line in lines[start:end]
            for r in line_regions(line, source)]


LOCATE_LINES = 3  # a quote spans at most this many of a page's lines (a label and its value below it, a sentence)


def value_region(value: str, near: Sequence[Region], words: Sequence[Word], source: str) -> Region | None:
    """The box of the word(s) that print `value` (an answer's amount or date) within the regions of its quoted
    line, `near`; None when no word there reads as it."""
    if not value:
        return None
    key = "".join(value.split()).casefold()
    keys = {key, key[:-3] + "," + key[-2:]} if key[-3:-2] == "." else {key}  # "5.90" is printed "5,90" too
    for region in near:
        x0, y0, x1, y1 = region.box
        inside = [w for w in words if w.box[0] >= x0 - 1e-6 and w.box[2] <= x1 + 1e-6
                  and w.box[1] >= y0 - 1e-6 and w.box[3] <= y1 + 1e-6]
        for word in inside:
            if any(k in word.text.casefold() for k in keys):
                return Region(word.box, source, 1.0, word.text)
    return None


# A patch belongs to a similarity region when its score is within this top share of the page's range (lowest patch
# 0, highest 1): the patches the query's words match best, not every patch above the page's average.
SIMILARITY_SHARE = 0.75
SIMILARITY_REGIONS = 3  # the regions a similarity map gives, those with the highest peaks


def looked_at(
    query: np.ndarray, patches: np.ndarray, rows: int, cols: int, *, share: float = SIMILARITY_SHARE,
    most: int = SIMILARITY_REGIONS,
) -> list[Region]:
    """Where a late-interaction model's page patches answer a query (source similarity_map), best first.

    `query` is (tokens, dim), the query's own tokens; `patches` (rows * cols, dim) the page's patch vectors in
    row-major grid order. Each patch scores its best query token's similarity (the term it would add to MaxSim
    for that token); patches within the top `share` of the page's range that touch (4-neighbours) merge into one
    rectangle, a whole number of grid cells. A region's score is its best patch's similarity, clipped to 0-1."""
    if rows <= 0 or cols <= 0 or len(patches) != rows * cols or not len(query):
        return []
    scores = (np.asarray(query, np.float32) @ np.asarray(patches, np.float32).T).max(axis=0).reshape(rows, cols)
    low, high = float(scores.min()), float(scores.max())
    if not np.isfinite(high) or high - low < 1e-6:
        return []  # a flat map points nowhere
    hot = (scores - low) >= share * (high - low)
    seen = np.zeros_like(hot)
    found: list[tuple[float, Region]] = []
    for row, col in zip(*np.nonzero(hot), strict=True):
        if seen[row, col]:
            continue
        seen[row, col] = True
        stack, cells = [(int(row), int(col))], []
        while stack:
            y, x = stack.pop()
            cells.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < rows and 0 <= nx < cols and hot[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        ys, xs = [y for y, _ in cells], [x for _, x in cells]
        peak = max(float(scores[y, x]) for y, x in cells)
        box = (min(xs) / cols, min(ys) / rows, (max(xs) + 1) / cols, (max(ys) + 1) / rows)
        found.append((peak, Region(box, "similarity_map", round(min(max(peak, 0.0), 1.0), 3))))
    found.sort(key=lambda item: -item[0])
    return [region for _, region in found[:most]]
