"""What a worker process does with one file: sniff, decode or render, extract text, store the page images.

Kept apart from mmrag.pipeline so that a spawned worker imports only this (Pillow, pypdfium2, Tesseract
bindings), not torch and the vector stores: a worker starts in a fraction of a second instead of seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mmrag.config import IngestSettings
from mmrag.ingest import describe, iter_pages


@dataclass(frozen=True)
class StoredPage:
    """A decoded page as a worker hands it back: its image is already on disk, so only the path crosses processes."""

    page_number: int
    width: int  # as rendered or decoded
    height: int
    text: str
    text_source: str
    image_path: str  # relative to the data dir


@dataclass(frozen=True)
class LoadedFile:
    """What a worker hands back: the file's identity and its pages."""

    path: str
    sha256: str
    kind: str
    mime: str
    pages: list[StoredPage]


def page_image_path(sha256: str, page_number: int) -> str:
    """Where a page image lives, relative to the data dir; content-addressed so rewrites are idempotent."""
    return f"pages/{sha256[:2]}/{sha256}/{page_number:05d}.jpg"


def load_file(path: str, sha256: str, settings: IngestSettings, data_dir: str) -> LoadedFile:
    """Worker-process entry: sniff, decode or render, extract text, store the page images.

    Pages are rendered one at a time and written to disk; only paths and text travel back, so a 500-page PDF
    costs one page of memory here and a few kilobytes in the queue. The embedders read the stored JPEG, which
    also makes every vector a function of the stored image, the same one `repair` re-embeds from.
    """
    source = describe(Path(path), max_file_bytes=settings.max_file_bytes)
    stored = []
    for page in iter_pages(source, settings):
        image = page.image
        width, height = image.size
        if max(image.size) > settings.page_image_max_side:
            image = image.copy()
            image.thumbnail((settings.page_image_max_side, settings.page_image_max_side), Image.Resampling.LANCZOS)
        relative = page_image_path(sha256, page.page_number)
        target = Path(data_dir) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        image.save(tmp, format="JPEG", quality=90)
        os.replace(tmp, target)
        stored.append(StoredPage(page.page_number, width, height, page.text, page.text_source.value, relative))
    return LoadedFile(path, sha256, source.kind.value, source.mime, stored)
