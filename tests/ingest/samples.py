"""Builders for the real files the ingest tests read: text PDFs, scanned PDFs, images with text, broken files."""

from __future__ import annotations

from pathlib import Path

import pypdfium2 as pdfium
import pytest
from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont
from reportlab.lib import pdfencrypt
from reportlab.pdfgen import canvas

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if DEJAVU.exists():
        return ImageFont.truetype(str(DEJAVU), size)
    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font


def text_image(lines: list[str], *, size: tuple[int, int] = (900, 260), font_size: int = 44) -> Image.Image:
    """Black text on white, large enough that Tesseract reads it without doubt."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((40, 40 + i * int(font_size * 1.6)), line, fill="black", font=font(font_size))
    return image


def text_pdf(path: Path, pages: list[str], *, width_pt: float = 595.0, height_pt: float = 842.0) -> Path:
    """A born-digital PDF (fpdf2) with one paragraph of real text per page."""
    pdf = FPDF(unit="pt", format=(width_pt, height_pt))
    pdf.set_font("helvetica", size=14)
    for body in pages:
        pdf.add_page()
        pdf.multi_cell(w=0, h=18, text=body)
    pdf.output(str(path))
    return path


def scanned_pdf(path: Path, images: list[Image.Image], *, resolution: float = 150.0) -> Path:
    """An image-only PDF (no text layer), as a scanner writes it."""
    images[0].save(path, "PDF", resolution=resolution, save_all=True, append_images=images[1:])
    return path


def encrypted_pdf(path: Path, *, user_password: str, owner_password: str = "owner") -> Path:
    """A reportlab PDF with the standard security handler; user_password="" makes an owner-only (restrictions) PDF."""
    encrypt = pdfencrypt.StandardEncryption(user_password, owner_password, canPrint=0, canCopy=0)
    c = canvas.Canvas(str(path), encrypt=encrypt)
    c.setFont("Helvetica", 20)
    c.drawString(72, 720, "Quarterly report on encrypted documents")
    c.showPage()
    c.save()
    return path


def edited_pdf(source: Path, path: Path, *, rotation: int = 0, crop_pt: float = 0.0) -> Path:
    """A copy of `source` with /Rotate set and the crop box inset by `crop_pt` on each side."""
    doc = pdfium.PdfDocument(source)
    for page in doc:
        if rotation:
            page.set_rotation(rotation)
        if crop_pt:
            # get_bbox, not get_mediabox: fpdf2 puts the MediaBox on the page tree, where get_mediabox
            # does not look (it falls back to US Letter).
            left, bottom, right, top = page.get_bbox()
            page.set_cropbox(left + crop_pt, bottom + crop_pt, right - crop_pt, top - crop_pt)
    doc.save(path)
    doc.close()
    return path


def zero_page_pdf(path: Path) -> Path:
    doc = pdfium.PdfDocument.new()
    doc.save(path)
    doc.close()
    return path


def spy_on_reads(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """Record the page segmentation mode of each real Tesseract reading (mmrag.ingest.text.read) made from now on."""
    from mmrag.ingest import text as text_module

    calls: list[int | None] = []
    real = text_module.read

    def spy(image: Image.Image, lang: str = "eng", *, psm: int | None = None) -> text_module.Reading:
        calls.append(psm)
        return real(image, lang, psm=psm)

    monkeypatch.setattr(text_module, "read", spy)
    return calls
