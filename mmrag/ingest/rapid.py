"""RapidOCR: the second OCR engine, read beside Tesseract (mmrag.ingest.text.ocr_page merges its lines).

PaddleOCR's PP-OCRv4 detection and recognition models on ONNX Runtime, as the `rapidocr_onnxruntime` wheel ships
them (no download, no GPU). Where Tesseract's layout analysis drops a region, or its recognition garbles a
receipt's dot-matrix print, this engine, which finds text boxes with a neural detector first, often reads it: on
the shared `sroie-more` receipts it read the merchant's name on 23 of the 42 where Tesseract's text did not hold it.

Its detector alone also decides whether a colourful image is a photo or a document (text_boxes).

One engine per process, made on first use with one ONNX Runtime thread (the job runs one worker process per core).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from mmrag.errors import MissingToolError

MIN_SCORE = 0.5  # a box read with less confidence (0-1) is left out: specks and ruled lines come out as garbage


def check_rapidocr() -> str:
    """Fail early (before a job starts) if the engine cannot be imported; returns its version. The engine itself
    (its models) is made in the processes that OCR, on their first page."""
    _rapidocr_class()
    from importlib.metadata import version

    return version("rapidocr_onnxruntime")


def _rapidocr_class() -> Any:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:
        raise MissingToolError(
            "the second OCR engine needs the rapidocr_onnxruntime package, which could not be imported "
            f"({exc}); ./scripts/setup installs it, or turn it off with MMRAG_INGEST__SECOND_OCR=never"
        ) from exc
    return RapidOCR


_ONE_THREAD = {"intra_op_num_threads": 1, "inter_op_num_threads": 1, "print_verbose": False}


@functools.cache
def _engine() -> Any:
    return _rapidocr_class()(**_ONE_THREAD)


def rapid_lines(image: Image.Image) -> list[tuple[str, tuple[float, float, float, float], float]]:
    """The page's lines as RapidOCR reads them: (text, box normalised to `image`, score 0-1), top to bottom. Its
    boxes are grouped into lines (boxes whose vertical centres lie within half a box height of a line's), each
    line's boxes left to right."""
    result, _ = _engine()(image.convert("RGB"))
    width, height = max(1, image.width), max(1, image.height)
    boxes = []
    for corners, text, score in result or []:
        if float(score) < MIN_SCORE or not str(text).strip():
            continue
        points = np.asarray(corners, dtype=np.float32)
        left, right = float(points[:, 0].min()), float(points[:, 0].max())
        top, bottom = float(points[:, 1].min()), float(points[:, 1].max())
        boxes.append(_Box(left, (top + bottom) / 2, max(1.0, bottom - top), str(text).strip(), right, top, bottom,
                          float(score)))
    lines = []
    for line in _lines(boxes):
        box = (min(b.left for b in line) / width, min(b.top for b in line) / height,
               max(b.right for b in line) / width, max(b.bottom for b in line) / height)
        lines.append((" ".join(b.text for b in line), box, min(b.score for b in line)))
    return lines


def rapid_read(image: Image.Image) -> str:
    """The page's text as RapidOCR reads it (rapid_lines), a line per line."""
    return "\n".join(text for text, _, _ in rapid_lines(image))


class _Box(NamedTuple):
    left: float
    centre: float
    height: float
    text: str
    right: float
    top: float
    bottom: float
    score: float


DETECT_SIDE = 640  # text_boxes looks at an image this size at most (its longer side, pixels)


def text_boxes(image: Image.Image) -> int:
    """How many boxes of text the engine's detector finds on `image`, shrunk to DETECT_SIDE at most and never
    enlarged (detection alone, about 0.1 s a COCO photo on one core; a full reading enlarges the image to 736 pixels
    on its shorter side first). What tells a document from a photo (mmrag.ingest.text.looks_like_photo)."""
    small = image.convert("RGB")
    small.thumbnail((DETECT_SIDE, DETECT_SIDE))
    boxes, _ = _detector().text_det(np.ascontiguousarray(np.asarray(small)[:, :, ::-1]))
    return 0 if boxes is None else len(boxes)


@functools.cache
def _detector() -> Any:
    # "max": an image is shrunk to fit the limit, never enlarged (the engine's default, "min", enlarges).
    return _rapidocr_class()(**_ONE_THREAD, det_limit_type="max", det_limit_side_len=DETECT_SIDE)


def _lines(boxes: list[_Box]) -> list[list[_Box]]:
    """Boxes grouped into lines, top to bottom, each left to right."""
    lines: list[list[_Box]] = []
    for box in sorted(boxes, key=lambda b: b.centre):
        if lines:
            line = lines[-1]
            centre = sum(b.centre for b in line) / len(line)
            height = sum(b.height for b in line) / len(line)
            if abs(box.centre - centre) <= 0.5 * min(height, box.height):
                line.append(box)
                continue
        lines.append([box])
    return [sorted(line, key=lambda b: b.left) for line in lines]
