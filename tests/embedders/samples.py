"""Sample page images for the embedder tests, drawn in memory."""

from __future__ import annotations

from PIL import Image, ImageDraw

COLOURS = [(200, 30, 30), (30, 160, 60), (40, 60, 200), (220, 180, 20), (120, 40, 160), (20, 160, 170)]


def make_page(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A small picture that differs per seed: coloured background, a rectangle, an ellipse."""
    image = Image.new("RGB", size, COLOURS[seed % len(COLOURS)])
    draw = ImageDraw.Draw(image)
    width, height = size
    offset = (seed * 7) % (width // 3)
    draw.rectangle([offset, height // 4, offset + width // 3, height // 2], fill=COLOURS[(seed + 2) % len(COLOURS)])
    draw.ellipse([width // 2, height // 2, width - 4, height - 4], fill=(255, 255, 255))
    return image
