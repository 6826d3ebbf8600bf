"""Finding input files: the recursive walk, content sniffing (magic bytes) and hashing into a SourceFile."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import filetype

from mmrag.digest import new_digest
from mmrag.errors import EmptyFileError, TooLargeError, UnsupportedTypeError
from mmrag.types import DocumentKind, SourceFile

log = logging.getLogger(__name__)

PDF_MIME = "application/pdf"
# What load_image decodes. APNG is a PNG whose first frame Pillow reads like any other PNG.
IMAGE_MIMES = frozenset({"image/jpeg", "image/png", "image/apng", "image/webp", "image/bmp", "image/tiff", "image/gif"})

CHUNK_BYTES = 1024 * 1024  # hashing buffer
SNIFF_BYTES = 8192  # filetype looks at most this far
_PDF_MAGIC = b"%PDF-"
# Acrobat, PDFium and poppler all accept junk before the header if it starts within the first 1024 bytes
# (at offsets 0..1023); both renderers open such a file as it is, so nothing needs stripping.
_PDF_HEADER_WINDOW = 1024
# A BMP file header is followed by a DIB header whose size field names its version; filetype only checks "BM",
# which plenty of text files start with.
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def discover(paths: Iterable[Path]) -> Iterator[Path]:
    """Yield every regular file under `paths`, depth first, names sorted within each directory.

    A path given explicitly is yielded even if hidden; inside directories hidden entries (leading dot) are skipped.
    Directory symlinks are followed, but a directory (by device and inode) is walked once, so symlink loops and
    overlapping arguments end. FIFOs, sockets and devices are skipped: reading a FIFO would block the job.
    """
    seen_dirs: set[tuple[int, int]] = set()
    for root in paths:
        root = Path(root)
        try:
            st = root.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file or directory: {root}") from None
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, st, seen_dirs)
        elif stat.S_ISREG(st.st_mode):
            yield root
        else:
            log.warning("skipping %s: not a regular file or directory", root)


def _walk(directory: Path, dir_stat: os.stat_result, seen_dirs: set[tuple[int, int]]) -> Iterator[Path]:
    key = (dir_stat.st_dev, dir_stat.st_ino)
    if key in seen_dirs:
        log.debug("skipping %s: directory already walked (symlink loop or repeated argument)", directory)
        return
    seen_dirs.add(key)
    try:
        with os.scandir(directory) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        log.warning("skipping directory %s: %s", directory, exc)
        return
    for entry in entries:
        path = directory / entry.name
        if not entry.is_symlink() and entry.is_file(follow_symlinks=False):
            # The directory listing's type says so: no stat per file, which adds up over large trees.
            yield path
            continue
        try:
            st = entry.stat()  # follows symlinks
        except OSError as exc:  # a dangling symlink, or a file removed during the walk
            log.warning("skipping %s: %s", path, exc)
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(path, st, seen_dirs)
        elif stat.S_ISREG(st.st_mode):
            yield path
        else:
            log.debug("skipping %s: not a regular file", path)


def sniff(path: Path) -> tuple[DocumentKind, str]:
    """(kind, mime) of `path` from its content, whatever its extension says."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    return sniff_bytes(head, path)


def sniff_bytes(head: bytes, path: Path) -> tuple[DocumentKind, str]:
    """(kind, mime) from the first bytes of a file (at least SNIFF_BYTES of them when the file is that long)."""
    if not head:
        raise EmptyFileError(f"{path}: the file is empty")
    if head.startswith(_PDF_MAGIC):
        return DocumentKind.PDF, PDF_MIME
    guess = filetype.guess(head)
    mime = guess.mime if guess is not None else None
    # An image signature at byte 0 wins over a "%PDF-" further in (say, inside an EXIF comment).
    if mime == "image/bmp" and not _looks_like_bmp(head):
        mime = None
    if mime in IMAGE_MIMES:
        return DocumentKind.IMAGE, mime
    if _pdf_header_offset(head) >= 0:
        return DocumentKind.PDF, PDF_MIME
    detected = f"detected {mime}" if mime else "no known signature"
    raise UnsupportedTypeError(
        f"{path}: unsupported file type ({detected}); supported are PDF and {', '.join(sorted(IMAGE_MIMES))}"
    )


def _pdf_header_offset(head: bytes) -> int:
    """Where "%PDF-" starts in `head`, if it starts within the first _PDF_HEADER_WINDOW bytes; else -1."""
    return head.find(_PDF_MAGIC, 0, _PDF_HEADER_WINDOW + len(_PDF_MAGIC) - 1)


def _looks_like_bmp(head: bytes) -> bool:
    return len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES


def describe(path: Path, *, max_file_bytes: int | None = None, sha256: str | None = None) -> SourceFile:
    """Stat, sniff and hash one file (sha256 streamed in 1 MiB chunks; the file is read once).

    Raises EmptyFileError, UnsupportedTypeError, or TooLargeError when the file is over `max_file_bytes`
    (None: no limit). The size recorded is the number of bytes hashed, so size and digest always agree.
    With `sha256` (the caller hashed the file already: an indexing job hashes each file once, while planning) the
    file is only stat'ed and sniffed, not read through again.
    """
    path = Path(path)
    with path.open("rb") as f:
        st = os.fstat(f.fileno())
        if max_file_bytes is not None and st.st_size > max_file_bytes:
            raise TooLargeError(f"{path}: {st.st_size} bytes is over the limit of {max_file_bytes} bytes")
        if sha256 is not None:
            head = f.read(SNIFF_BYTES)
            if not head:
                raise EmptyFileError(f"{path}: the file is empty")
            kind, mime = sniff_bytes(head, path)
            return SourceFile(path=path, sha256=sha256, size=st.st_size, mtime=st.st_mtime, kind=kind, mime=mime)
        digest = new_digest()
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        size = 0
        kind: DocumentKind | None = None
        mime = ""
        while n := f.readinto(buffer):
            if kind is None:
                # Sniff the first chunk; a 1 MiB chunk holds far more than SNIFF_BYTES unless the file is shorter.
                kind, mime = sniff_bytes(bytes(view[: min(n, SNIFF_BYTES)]), path)
            digest.update(view[:n])
            size += n
            if max_file_bytes is not None and size > max_file_bytes:  # the file grew while we read it
                raise TooLargeError(f"{path}: over the limit of {max_file_bytes} bytes")
    if kind is None:
        raise EmptyFileError(f"{path}: the file is empty")
    return SourceFile(path=path, sha256=digest.hexdigest(), size=size, mtime=st.st_mtime, kind=kind, mime=mime)
