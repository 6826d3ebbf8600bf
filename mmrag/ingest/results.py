"""What a worker hands back for a file: the loaded file and its stored pages, or why it failed (plain frozen data).

Kept apart from the worker so that the shared-memory transport (mmrag.ingest.shared), which the worker imports,
can name these types without importing the worker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date
from typing import Any


@dataclass(frozen=True)
class StoredPage:
    """A decoded page as a worker hands it back: its image is already on disk, so only the path crosses processes,
    with the embedders' inputs (one per requested spec, in order) when they were asked for."""

    page_number: int
    width: int  # as rendered or decoded
    height: int
    text: str
    text_source: str
    image_path: str  # relative to the data dir
    inputs: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    renderer: str | None = None  # what drew a PDF page; None for an image
    # the dates its text holds (mmrag.analysis.page_dates), read in the worker: the main process only records them
    dates: tuple[date, ...] = ()
    words: bytes = field(default=b"", repr=False)  # where its words are (mmrag.layout.encode_words)

    def without_inputs(self) -> StoredPage:
        """This page with no model inputs: the embedding thread makes them from the stored image instead."""
        return dataclasses.replace(self, inputs=())


@dataclass(frozen=True)
class LoadedFile:
    """What a worker hands back: the file's identity and its pages."""

    path: str
    sha256: str
    kind: str
    mime: str
    pages: list[StoredPage]
    # Pages in the whole document when this holds a range of them (load_file's `pages`); 0: it holds them all.
    page_total: int = 0
    # (page number, reason) of the pages asked for that could not be had: the document goes on without them, and
    # fails only if it has no page at all (see no_page_reason).
    failed_pages: tuple[tuple[int, str], ...] = ()

    def no_page_reason(self) -> str | None:
        """Why the document fails when not one of its pages could be had; None when it has pages."""
        if self.pages:
            return None
        if not self.failed_pages:
            return f"{self.path}: the PDF has no pages"
        number, reason = self.failed_pages[0]
        more = len(self.failed_pages) - 1
        return f"{self.path}: no page could be read: {reason}" + (f" (and {more} more pages)" if more else "")


@dataclass(frozen=True)
class FileFailure:
    """Why one file of a worker task could not be loaded (the task's other files go on)."""

    reason: str
