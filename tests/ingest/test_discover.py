"""discover (the walk), sniff (magic bytes, not extensions) and describe (hash, size, limits)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from mmrag.errors import EmptyFileError, InputError, TooLargeError, UnsupportedTypeError
from mmrag.ingest import describe, discover, sniff
from mmrag.types import DocumentKind
from tests.ingest.samples import text_pdf


def image_bytes(fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, fmt, **params)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- discover ---------------------------------------------------------------------------------------------------


def test_discover_walks_sorted_and_skips_hidden(tmp_path: Path) -> None:
    for rel in ["b/2.png", "b/1.pdf", "a.jpg", "c/d/e.txt", ".hidden/x.pdf", "b/.secret.pdf", "B.pdf"]:
        write(tmp_path / rel, b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in discover([tmp_path])]
    assert found == ["B.pdf", "a.jpg", "b/1.pdf", "b/2.png", "c/d/e.txt"]
    assert found == [p.relative_to(tmp_path).as_posix() for p in discover([tmp_path])]  # deterministic


def test_discover_yields_an_explicit_file_even_if_hidden(tmp_path: Path) -> None:
    hidden = write(tmp_path / ".notes.pdf", b"x")
    assert list(discover([hidden])) == [hidden]


def test_discover_ends_on_symlink_loops_and_skips_dangling_links_and_fifos(tmp_path: Path) -> None:
    write(tmp_path / "docs/a.pdf", b"x")
    (tmp_path / "docs/loop").symlink_to(tmp_path / "docs", target_is_directory=True)
    (tmp_path / "docs/up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "docs/dangling.pdf").symlink_to(tmp_path / "nowhere.pdf")
    os.mkfifo(tmp_path / "docs/pipe.pdf")  # reading it would block the job forever
    found = list(discover([tmp_path, tmp_path / "docs"]))  # overlapping arguments too
    assert found == [tmp_path / "docs/a.pdf"]


def test_discover_follows_a_directory_symlink_once(tmp_path: Path) -> None:
    write(tmp_path / "real/a.pdf", b"x")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/link").symlink_to(tmp_path / "real", target_is_directory=True)
    assert list(discover([tmp_path / "tree"])) == [tmp_path / "tree/link/a.pdf"]


def test_discover_missing_root_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        list(discover([tmp_path / "nope"]))


# --- sniff ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "mime"),
    [
        ("JPEG", {}, "image/jpeg"),
        ("PNG", {}, "image/png"),
        ("WEBP", {}, "image/webp"),
        ("BMP", {}, "image/bmp"),
        ("TIFF", {}, "image/tiff"),
        ("GIF", {}, "image/gif"),
    ],
)
def test_sniff_supported_images_whatever_the_extension(tmp_path: Path, fmt: str, params: dict, mime: str) -> None:
    path = write(tmp_path / "misnamed.txt", image_bytes(fmt, **params))
    assert sniff(path) == (DocumentKind.IMAGE, mime)


def test_sniff_a_pdf_named_jpg_is_a_pdf(tmp_path: Path) -> None:
    path = text_pdf(tmp_path / "photo.jpg", ["not a photo"])
    assert sniff(path) == (DocumentKind.PDF, "application/pdf")


def test_sniff_accepts_junk_before_the_pdf_header_within_1024_bytes(tmp_path: Path) -> None:
    body = text_pdf(tmp_path / "x.pdf", ["hello"]).read_bytes()
    assert sniff(write(tmp_path / "prefixed.bin", b"\0" * 1000 + body))[0] == DocumentKind.PDF
    with pytest.raises(UnsupportedTypeError):
        sniff(write(tmp_path / "too-late.pdf", b"\0" * 1100 + body))


@pytest.mark.parametrize("junk", [1, 1019, 1023])
def test_sniff_a_pdf_header_starting_anywhere_in_the_first_1024_bytes(tmp_path: Path, junk: int) -> None:
    # The window is where the header starts (offsets 0..1023), as PDF readers count it, not where it ends.
    body = text_pdf(tmp_path / "x.pdf", ["hello"]).read_bytes()
    assert sniff(write(tmp_path / "prefixed.bin", b"\x01" * junk + body)) == (DocumentKind.PDF, "application/pdf")


def test_sniff_a_pdf_header_starting_at_byte_1024_is_too_late(tmp_path: Path) -> None:
    body = text_pdf(tmp_path / "x.pdf", ["hello"]).read_bytes()
    with pytest.raises(UnsupportedTypeError, match="no known signature"):
        sniff(write(tmp_path / "too-late.pdf", b"\x01" * 1024 + body))


def test_sniff_image_signature_beats_pdf_marker_inside_it(tmp_path: Path) -> None:
    # A JPEG whose comment segment happens to contain "%PDF-" is still a JPEG.
    path = write(tmp_path / "x.jpg", image_bytes("JPEG", comment=b"see %PDF-1.7 spec"))
    assert sniff(path) == (DocumentKind.IMAGE, "image/jpeg")


@pytest.mark.parametrize(
    "data",
    [
        b"just some text that is not a PDF\n" * 10,
        b"BMW 320i service history\n",  # starts with "BM" like a bitmap
        b"PK\x03\x04" + b"\0" * 100,  # a zip
    ],
)
def test_sniff_unsupported_content_names_the_file(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "report.pdf", data)
    with pytest.raises(UnsupportedTypeError) as err:
        sniff(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, InputError) and err.value.reason == "unsupported file type"


def test_sniff_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.pdf", b"")
    with pytest.raises(EmptyFileError, match=r"empty\.pdf"):
        sniff(path)


# --- describe ---------------------------------------------------------------------------------------------------


def test_describe_hashes_in_chunks_and_records_the_file(tmp_path: Path) -> None:
    # Over 2 MiB so the 1 MiB chunking runs several times, ending on a partial chunk.
    data = b"%PDF-1.4\n" + os.urandom(2 * 1024 * 1024 + 12345)
    path = write(tmp_path / "big.pdf", data)
    source = describe(path, max_file_bytes=10 * 1024 * 1024)
    assert source.sha256 == hashlib.sha256(data).hexdigest()
    assert source.size == len(data)
    assert source.mtime == path.stat().st_mtime
    assert (source.kind, source.mime) == (DocumentKind.PDF, "application/pdf")
    assert source.path == path


def test_describe_image(tmp_path: Path) -> None:
    path = write(tmp_path / "scan.pdf", image_bytes("PNG"))  # an image with a PDF's name
    source = describe(path)
    assert (source.kind, source.mime) == (DocumentKind.IMAGE, "image/png")


def test_describe_rejects_empty_unknown_and_too_large_naming_the_file(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.png", b"")
    with pytest.raises(EmptyFileError) as err:
        describe(empty)
    assert str(empty) in str(err.value)

    unknown = write(tmp_path / "notes.pdf", b"meeting notes\n")
    with pytest.raises(UnsupportedTypeError) as err:
        describe(unknown)
    assert str(unknown) in str(err.value)

    large = write(tmp_path / "large.pdf", b"%PDF-1.4\n" + b"\0" * 5000)
    with pytest.raises(TooLargeError) as err:
        describe(large, max_file_bytes=4096)
    assert str(large) in str(err.value)
    assert describe(large, max_file_bytes=5009).size == 5009  # exactly at the limit is fine
