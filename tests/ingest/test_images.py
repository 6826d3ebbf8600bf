"""load_image: EXIF orientation, first frames, RGB conversion, and the bomb / truncation guards."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.errors import CorruptFileError, TooLargeError
from mmrag.ingest import load_image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def near(pixel: tuple[int, ...], colour: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, colour, strict=True))


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    # Stored 40x20 with the left half red; orientation 6 means "rotate 90 degrees clockwise to display".
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, "JPEG", exif=exif, quality=95)

    image = load_image(path, max_pixels=10_000)
    assert image.size == (20, 40)
    assert image.mode == "RGB"
    assert near(image.getpixel((10, 5)), RED)  # the left half is now on top
    assert near(image.getpixel((10, 35)), BLUE)


def test_gif_gives_its_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = load_image(path, max_pixels=10_000)
    assert image.mode == "RGB" and image.size == (16, 16)
    assert near(image.getpixel((8, 8)), RED)


def test_multipage_tiff_gives_its_first_page(tmp_path: Path) -> None:
    path = tmp_path / "fax.tiff"
    pages = [Image.new("RGB", (16, 16), colour) for colour in (BLUE, RED)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert near(load_image(path, max_pixels=10_000).getpixel((8, 8)), BLUE)


def test_transparency_becomes_white_not_black(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (0, 0, 5, 10))  # opaque black text on the left, nothing on the right
    path = tmp_path / "logo.png"
    rgba.save(path)
    image = load_image(path, max_pixels=10_000)
    assert image.getpixel((8, 5)) == WHITE
    assert image.getpixel((2, 5)) == (0, 0, 0)

    palette_path = tmp_path / "icon.gif"
    rgba.convert("P").save(palette_path, transparency=0)
    assert load_image(palette_path, max_pixels=10_000).mode == "RGB"


def test_sixteen_bit_greyscale_keeps_its_contrast(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    path = tmp_path / "scan16.png"
    Image.fromarray(ramp).save(path)
    image = np.asarray(load_image(path, max_pixels=10_000))
    assert image[0, 0, 0] == 0 and image[-1, -1, 0] == 255
    assert len(np.unique(image[..., 0])) > 32  # not clipped to black/white


def test_header_over_our_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    # 5000x5000 is under Pillow's own bomb limit; the pixel data is a few bytes, so if anything decoded it we
    # would see CorruptFileError instead.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(5000, 5000))
    with pytest.raises(TooLargeError) as err:
        load_image(path, max_pixels=1_000_000)
    assert str(path) in str(err.value)


def test_pillows_own_bomb_error_is_a_too_large_error(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    with pytest.raises(TooLargeError) as err:
        load_image(path, max_pixels=10**12)  # our limit allows it; Pillow's does not
    assert str(path) in str(err.value)


def test_real_image_over_a_small_limit(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (200, 100), RED).save(path)
    with pytest.raises(TooLargeError, match=r"photo\.png"):
        load_image(path, max_pixels=19_999)
    assert load_image(path, max_pixels=20_000).size == (200, 100)


def test_truncated_jpeg_is_corrupt(tmp_path: Path) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CorruptFileError) as err:
        load_image(path, max_pixels=10**6)
    assert str(path) in str(err.value)


def test_garbage_after_an_image_signature_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    with pytest.raises(CorruptFileError, match=r"fake\.png"):
        load_image(path, max_pixels=10**6)
