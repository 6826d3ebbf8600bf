"""Hand-made PDFs, broken on purpose, written byte by byte with a correct cross-reference table (so that what a
reader trips on is the breakage asked for, not a damaged file it has to reconstruct)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RawPage:
    """A page: its text (drawn in Helvetica), its MediaBox, and extra entries for its dictionary."""

    text: str = ""
    media_box: tuple[float, float, float, float] | None = (0, 0, 612, 792)
    extra: str = ""


def pdf_bytes(pages: Sequence[RawPage | str], *, kids: str | None = None, count: int | None = None,
              pages_extra: str = "") -> bytes:
    """A PDF of `pages`; a str stands for a raw object put in the page tree's place (a broken kid). `kids`
    replaces the /Kids array's text (object numbers: 1 catalog, 2 page tree, 3 font, then per page its page
    object and its content stream), `count` the declared /Count."""
    objects: dict[int, bytes] = {3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"}
    kid_refs = []
    number = 4
    for page in pages:
        if isinstance(page, str):
            objects[number] = page.encode()
            kid_refs.append(f"{number} 0 R")
            number += 1
            continue
        stream = f"BT /F1 24 Tf 72 700 Td ({page.text}) Tj ET".encode() if page.text else b""
        box = "" if page.media_box is None else "/MediaBox [{} {} {} {}]".format(*page.media_box)
        objects[number] = (
            f"<< /Type /Page /Parent 2 0 R {box} /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {number + 1} 0 R {page.extra} >>"
        ).encode()
        objects[number + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
        kid_refs.append(f"{number} 0 R")
        number += 2
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    kids_text = kids if kids is not None else " ".join(kid_refs)
    objects[2] = (
        f"<< /Type /Pages /Kids [{kids_text}] /Count {len(kid_refs) if count is None else count} {pages_extra} >>"
    ).encode()
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for obj in sorted(objects):
        offsets[obj] = len(out)
        out += b"%d 0 obj\n" % obj + objects[obj] + b"\nendobj\n"
    size = max(objects) + 1
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for obj in range(1, size):
        out += b"%010d 00000 n \n" % offsets[obj] if obj in offsets else b"0000000000 65535 f \n"
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)
