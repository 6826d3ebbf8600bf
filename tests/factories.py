"""Real sample files for tests, generated on the fly: images with drawn text and PDFs with a text layer."""

from __future__ import annotations

import re
from pathlib import Path

from fpdf import FPDF
from PIL import Image, ImageDraw

COLOURS = [(200, 30, 30), (30, 160, 60), (40, 60, 200), (220, 180, 20), (120, 40, 160), (20, 160, 170)]


def make_image(path: Path, seed: int, *, size: tuple[int, int] = (96, 72), fmt: str | None = None) -> Path:
    """A small picture that differs per seed: a coloured background with a shape and a number."""
    image = Image.new("RGB", size, COLOURS[seed % len(COLOURS)])
    draw = ImageDraw.Draw(image)
    w, h = size
    offset = (seed * 7) % (w // 3)
    draw.rectangle([offset, h // 4, offset + w // 3, h // 4 + h // 3], fill=COLOURS[(seed + 2) % len(COLOURS)])
    draw.ellipse([w // 2, h // 2, w // 2 + w // 4 + seed % 9, h - 4], fill=(255, 255, 255))
    draw.text((4, 4), str(seed), fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_pdf(path: Path, pages: list[str]) -> Path:
    """A born-digital PDF with one text-layer paragraph per page."""
    pdf = FPDF(format=(105, 148))  # A6 in mm: small pages keep tests fast
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path


def make_xfa_pdf(path: Path) -> Path:
    """A PDF whose AcroForm has an /XFA entry (added as an incremental update): pypdfium2's init_forms() then
    complains that its PDFium was built without XFA support, and prints a pip hint."""
    data = make_pdf(path, ["an xfa form"]).read_bytes()
    root = int(re.search(rb"/Root (\d+) 0 R", data).group(1))
    catalog = re.search(rb"\n%d 0 obj\s*<<(.*?)>>\s*endobj" % root, data, re.DOTALL).group(1)
    size = int(re.search(rb"/Size (\d+)", data).group(1))
    prev = int(re.findall(rb"startxref\s+(\d+)", data)[-1])
    obj = b"%d 0 obj\n<<%s /AcroForm << /Fields [] /XFA (x) >> >>\nendobj\n" % (root, catalog)
    xref_at = len(data) + len(obj)
    entry = b"%d 1\n%010d 00000 n \n" % (root, len(data))  # the catalog's new revision, appended
    trailer = b"<< /Size %d /Root %d 0 R /Prev %d >>" % (size, root, prev)
    tail = b"xref\n" + entry + b"trailer\n" + trailer + b"\nstartxref\n%d\n%%%%EOF\n" % xref_at
    path.write_bytes(data + obj + tail)
    return path


def make_corpus(root: Path, *, images: int = 4, pdfs: int = 2) -> dict[str, Path]:
    """A folder with good images and PDFs; returns name → path."""
    files: dict[str, Path] = {}
    for i in range(images):
        files[f"img{i}"] = make_image(root / "images" / f"img{i}.png", i)
    for i in range(pdfs):
        files[f"pdf{i}"] = make_pdf(
            root / "docs" / f"doc{i}.pdf",
            [f"Document {i} page {n}: invoice number {1000 + 10 * i + n} total {i + n}.50 EUR" for n in (1, 2)],
        )
    return files


def add_bad_files(root: Path) -> dict[str, Path]:
    """Files every bulk job meets sooner or later; each must fail with a reason while the job goes on."""
    bad = root / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "empty.pdf").write_bytes(b"")
    (bad / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\ngarbage without xref")
    truncated = make_image(bad / "full.jpg", 99, size=(320, 240), fmt="JPEG").read_bytes()
    (bad / "full.jpg").unlink()
    (bad / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (bad / "notes.txt").write_text("plain text is not an image or a PDF")
    return {p.stem: p for p in bad.iterdir()}
