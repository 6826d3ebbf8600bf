"""RapidOCR: the second OCR engine, read beside Tesseract (mmrag.ingest.text.ocr_page merges its lines).

PaddleOCR's PP-OCRv4 detection and recognition models on ONNX Runtime, as the `rapidocr_onnxruntime` wheel ships
them (no download, no GPU). Where Tesseract's layout analysis drops a region, or its recognition garbles a
receipt's dot-matrix print, this engine, which finds text boxes with a neural detector first, often reads it: on
the shared `sroie-more` receipts it read the merchant's name on 23 of the 42 where Tesseract's text did not hold it.

One engine per process, made on first use with one ONNX Runtime thread (the job runs one worker process per core).
"""

from __future__ import annotations

import functools
from typing import Any

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


@functools.cache
def _engine() -> Any:
    return _rapidocr_class()(intra_op_num_threads=1, inter_op_num_threads=1, print_verbose=False)


def rapid_read(image: Image.Image) -> str:
    """The page's text as RapidOCR reads it: its boxes grouped into lines (boxes whose vertical centres lie within
    half a box height of a line's), each line's boxes left to right, lines top to bottom."""
    result, _ = _engine()(image.convert("RGB"))
    boxes = []
    for corners, text, score in result or []:
        if float(score) < MIN_SCORE or not str(text).strip():
            continue
        points = np.asarray(corners, dtype=np.float32)
        top, bottom = float(points[:, 1].min()), float(points[:, 1].max())
        boxes.append((float(points[:, 0].min()), (top + bottom) / 2, max(1.0, bottom - top), str(text).strip()))
    return "\n".join(" ".join(text for _, _, _, text in line) for line in _lines(boxes))


def _lines(boxes: list[tuple[float, float, float, str]]) -> list[list[tuple[float, float, float, str]]]:
    """(left, centre, height, text) boxes grouped into lines, top to bottom, each left to right."""
    lines: list[list[tuple[float, float, float, str]]] = []
    for box in sorted(boxes, key=lambda b: b[1]):
        if lines:
            line = lines[-1]
            centre = sum(b[1] for b in line) / len(line)
            height = sum(b[2] for b in line) / len(line)
            if abs(box[1] - centre) <= 0.5 * min(height, box[2]):
                line.append(box)
                continue
        lines.append([box])
    return [sorted(line, key=lambda b: b[0]) for line in lines]
