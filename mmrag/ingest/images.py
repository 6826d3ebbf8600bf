"""Decoding image files into RGB page images, with guards against decompression bombs and truncated files."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmrag.errors import CorruptFileError, TooLargeError

log = logging.getLogger(__name__)

# What a corrupt file can make Pillow's decoders raise. Truncation is an OSError from load(); broken headers and
# chunks come out as SyntaxError, ValueError, EOFError or struct.error depending on the plugin.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def load_image(path: Path, *, max_pixels: int) -> Image.Image:
    """Decode `path` fully into an RGB image (first frame of a GIF/TIFF), turned upright by its EXIF orientation.

    Raises TooLargeError when the header claims more than `max_pixels` pixels (checked before any pixel is
    decoded) and CorruptFileError when the file cannot be decoded to the end.
    """
    path = Path(path)
    try:
        # Image.open reads the header only, so the size check below costs nothing even for a bomb.
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise TooLargeError(
                    f"{path}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels}"
                )
            # Force the whole decode here: Pillow is lazy, and a truncated file only fails when the pixels are
            # read. LOAD_TRUNCATED_IMAGES stays off (it is process-global and would hide these files).
            im.load()
            image = _upright(im, path)
            return _to_rgb(image)
    except Image.DecompressionBombError as exc:  # Pillow's own limit, if it is lower than ours
        raise TooLargeError(f"{path}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise CorruptFileError(f"{path}: not a decodable image ({exc})") from exc
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # not a property of the content; the caller reports these as I/O errors
    except _DECODE_ERRORS as exc:
        raise CorruptFileError(f"{path}: cannot decode image: {exc}") from exc


def _upright(im: Image.Image, path: Path) -> Image.Image:
    """A detached copy of `im` (closing the file destroys the original's pixels), rotated per EXIF."""
    try:
        return ImageOps.exif_transpose(im)  # always a new image, transposed or not
    except _DECODE_ERRORS as exc:
        # A broken EXIF block should not cost us an image whose pixels decoded fine.
        log.warning("%s: ignoring unreadable EXIF orientation: %s", path, exc)
        return im.copy()


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit and float scans: convert("RGB") would clip everything above 255 to white.
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels are usually black underneath; documents and OCR want paper-white behind them.
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB")
