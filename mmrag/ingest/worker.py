"""What a worker process does with one file: sniff, decode, extract text, store page images, make model inputs.

Kept apart from mmrag.indexing so that a spawned worker imports only this (Pillow, pypdfium2, Tesseract
bindings), not torch and the vector stores: a worker starts in a fraction of a second instead of seconds. (A
ColPali-family input spec imports colpali-engine in the worker when first used: its processor runs here.)
"""

from __future__ import annotations

import io
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from mmrag.analysis import page_dates
from mmrag.config import IngestSettings
from mmrag.errors import CorruptFileError, InputError
from mmrag.ingest import PageFailure, count_pages, describe, iter_pages
from mmrag.ingest.cleanup import use_temp_dir
from mmrag.ingest.discover import SNIFF_BYTES, sniff_bytes
from mmrag.ingest.images import _DECODE_ERRORS
from mmrag.inputs import InputSpec
from mmrag.layout import encode_words
from mmrag.ingest.results import FileFailure, LoadedFile, StoredPage
from mmrag.ingest.shared import SharedResults, export
from mmrag.types import DocumentKind, TextSource

# Model inputs of a long PDF would otherwise all travel back at once (a ColQwen2 page is megabytes): past this many
# bytes a file's pages come back without inputs, and the main process makes them from the stored page images.
MAX_INPUT_BYTES_PER_FILE = 128 * 1024 * 1024
EXIF_ORIENTATION = 0x0112


# path, sha256[, a PDF's page range[, the passwords to try on it]]
FileTask = (
    tuple[str, str] | tuple[str, str, tuple[int, int] | None] | tuple[str, str, tuple[int, int] | None, tuple[str, ...]]
)


def load_files(
    files: list[FileTask],
    settings: IngestSettings,
    data_dir: str,
    inputs: tuple[InputSpec, ...] = (),
    load: Callable[..., LoadedFile] | None = None,
) -> list[LoadedFile | FileFailure]:
    """Worker-process entry for several (path, sha256[, page range]) files: each one's result or failure, in order.

    `load` is load_file unless a caller swaps in another with its signature (tests crash a worker with one).
    """
    load = load or load_file
    results: list[LoadedFile | FileFailure] = []
    for path, sha256, *rest in files:
        options = {"pages": rest[0] if rest else None}
        if len(rest) > 1 and rest[1]:
            options["passwords"] = rest[1]  # only when there are some: a test's `load` need not take them
        try:
            results.append(load(path, sha256, settings, data_dir, inputs, **options))
        except InputError as exc:
            results.append(FileFailure(str(exc)))
        except Exception as exc:  # noqa: BLE001 - one bad file must not fail the others; the reason is kept
            detail = "".join(traceback.format_exception_only(exc)).strip()
            results.append(FileFailure(f"internal error: {detail}"))
    return results


def load_files_shared(
    files: list[FileTask],
    settings: IngestSettings,
    data_dir: str,
    inputs: tuple[InputSpec, ...],
    load: Callable[..., LoadedFile] | None,
    prefix: str,
    min_bytes: int,
) -> SharedResults:
    """load_files, its results' input arrays moved to one shared-memory file named from `prefix` (see
    mmrag.ingest.shared): the main process receives the pixels without copying them through the result pipe."""
    return export(load_files(files, settings, data_dir, inputs, load), prefix, min_bytes)


def init_worker(temp_dir: str | None = None) -> None:
    """Runs once in each worker process as it starts: one intra-op thread for torch (imported already by a fork
    server's preload, or later by a model input), since the pool already runs one process per core; temporary
    files (OCR's, a renderer's) in the job's `temp_dir`, which the job removes at its end even if this process
    was killed mid-file."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if temp_dir is not None:
        use_temp_dir(temp_dir)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def warm_up(modules: tuple[str, ...]) -> None:
    """Worker-process entry run at pool start: import what the inputs will need before the first file."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)  # imported just now, after init_worker


def page_image_path(sha256: str, page_number: int) -> str:
    """Where a page image lives, relative to the data dir; content-addressed so rewrites are idempotent. Two
    levels of 256 directories hold every page: a directory per document (the layout before; SQL keeps each page's
    path, so those pages stay where they are) cost a mkdir per photo, a noticeable share of a worker's time."""
    return f"pages/{sha256[:2]}/{sha256[2:4]}/{sha256}-{page_number:05d}.jpg"


_MADE_DIRS: set[Path] = set()  # per worker process: the page directories it made or found


def _write_page_image(target: Path, data: bytes) -> None:
    """Write atomically (a reader never sees half a JPEG), making its directory the first time only."""
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    if target.parent not in _MADE_DIRS:
        target.parent.mkdir(parents=True, exist_ok=True)
        _MADE_DIRS.add(target.parent)
    try:
        tmp.write_bytes(data)
    except FileNotFoundError:  # the directory went away since (a data dir removed and made again): make it again
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
    os.replace(tmp, target)


def load_file(
    path: str,
    sha256: str,
    settings: IngestSettings,
    data_dir: str,
    inputs: tuple[InputSpec, ...] = (),
    pages: tuple[int, int] | None = None,
    passwords: tuple[str, ...] = (),
) -> LoadedFile:
    """Worker-process entry: sniff, decode or render, extract text, store the page images, make `inputs`.

    A PDF's pages that cannot be had are listed in `failed_pages` (its other pages go on); an encrypted one is
    opened with the first of `passwords` that opens it.

    Pages are rendered one at a time and written to disk; paths, text and the compact model inputs travel back,
    so a 500-page PDF costs one rendered page of memory here (inputs are capped, MAX_INPUT_BYTES_PER_FILE).
    Inputs are made from the stored JPEG's bytes, so they are what `prepare_from_file` makes from it later.

    A JPEG photo that needs no rotation, no OCR and no downscaling for storage is stored as its own bytes (no
    re-encode) and decoded once, at reduced DCT scale, straight to the model's input size.
    """
    if inputs and settings.ocr == "never" and pages is None:
        fast = _load_plain_jpeg(path, sha256, settings, data_dir, inputs)
        if fast is not None:
            return fast
    # hashed by the job already (the sha256 passed in): not read through again here
    source = describe(Path(path), max_file_bytes=settings.max_file_bytes, sha256=sha256)
    numbers = None
    total = 0
    if pages is not None and source.kind == DocumentKind.PDF:
        # pages (first, last), 1-based and inclusive, clipped to the document: the job asks for the first few
        # pages and learns from page_total whether other workers should render the rest
        total = count_pages(source, passwords)
        if pages[0] > total:  # the first range said more: the file was replaced during the job
            raise CorruptFileError(f"{path}: has {total} pages now, fewer than when the job began; index it again")
        numbers = range(pages[0], min(pages[1], total) + 1)
    stored = []
    failures: list[PageFailure] = []
    input_bytes = 0
    for page in iter_pages(source, settings, numbers, passwords=passwords, failures=failures):
        image = page.image
        width, height = image.size
        if max(image.size) > settings.page_image_max_side:
            image = image.copy()
            image.thumbnail((settings.page_image_max_side, settings.page_image_max_side), Image.Resampling.LANCZOS)
        relative = page_image_path(sha256, page.page_number)
        encoded = io.BytesIO()
        image.save(encoded, format="JPEG", quality=90)
        data = encoded.getvalue()
        _write_page_image(Path(data_dir) / relative, data)
        prepared: tuple[Any, ...] = ()
        if inputs and input_bytes <= MAX_INPUT_BYTES_PER_FILE:
            # From the stored bytes, not the pixels in hand: every vector is a function of the stored page image,
            # the one `repair` re-embeds from (prepare_from_file), whichever path stored it.
            prepared = tuple(spec.from_jpeg(data) for spec in inputs)
            input_bytes += sum(_nbytes(value) for value in prepared)
        stored.append(
            StoredPage(page.page_number, width, height, page.text, str(page.text_source), relative, prepared,
                       renderer=page.renderer, dates=tuple(page_dates(page.text)),
                       words=encode_words(page.words) if settings.word_boxes else b"")
        )
    if input_bytes > MAX_INPUT_BYTES_PER_FILE:
        stored = [page.without_inputs() for page in stored]
    failed = tuple((failure.page_number, failure.reason) for failure in failures)
    return LoadedFile(path, sha256, source.kind.value, source.mime, stored, page_total=total, failed_pages=failed)


def _load_plain_jpeg(
    path: str, sha256: str, settings: IngestSettings, data_dir: str, inputs: tuple[InputSpec, ...]
) -> LoadedFile | None:
    """The fast path for ordinary JPEG photos, or None when this file needs the general one (which also gives the
    precise error for a broken file: every doubt here falls through to it)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > settings.max_file_bytes:
                return None
            data = handle.read()
    except OSError:
        return None
    if not data:
        return None
    try:
        kind, mime = sniff_bytes(data[:SNIFF_BYTES], Path(path))
    except InputError:  # empty, or not a type we read: the general path reports it
        return None
    if kind != DocumentKind.IMAGE or mime != "image/jpeg":
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if (
                image.format != "JPEG"
                or image.mode not in ("RGB", "L")
                or width * height > settings.max_pixels
                or max(width, height) > settings.page_image_max_side
                or image.getexif().get(EXIF_ORIENTATION, 1) != 1
            ):
                return None
        prepared = tuple(spec.from_jpeg(data) for spec in inputs)
    except (*_DECODE_ERRORS, Image.DecompressionBombError):
        return None
    relative = page_image_path(sha256, 1)
    _write_page_image(Path(data_dir) / relative, data)  # the file itself: same pixels, no re-encode
    page = StoredPage(1, width, height, "", TextSource.NONE.value, relative, prepared)
    return LoadedFile(path, sha256, kind.value, mime, [page])


def _nbytes(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    nbytes = getattr(value, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    numel = getattr(value, "numel", None)  # torch tensors
    return int(numel() * value.element_size()) if numel is not None else 0
