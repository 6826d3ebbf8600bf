"""PDFs that cost a job a page or a password, for the tests of what the CLI and the API show of them; and a check
that a secret is nowhere in SQL."""

from __future__ import annotations

from pathlib import Path

from reportlab.lib.pdfencrypt import StandardEncryption
from reportlab.pdfgen import canvas
from sqlalchemy import Engine, select

from mmrag.store.models import Base
from tests.pdfbytes import RawPage, pdf_bytes

# A page no renderer may draw: its MediaBox is over 2^31 points tall, so its size alone is refused.
HUGE_BOX = (0, 0, 595, 2147483648)


def make_encrypted_pdf(path: Path, texts: list[str], user_password: str, owner_password: str) -> Path:
    """A PDF with a text layer that opens only with `user_password` (or `owner_password`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf = canvas.Canvas(str(path), encrypt=StandardEncryption(user_password, owner_password))
    for text in texts:
        pdf.drawString(72, 700, text)
        pdf.showPage()
    pdf.save()
    return path


def make_pdf_with_failing_pages(path: Path, good: str = "alpha page", failing: int = 1) -> Path:
    """Page 1 with `good` as its text, then `failing` pages that neither renderer can have (over the limit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pages = [RawPage(good)] + [RawPage(f"beta {n}", media_box=HUGE_BOX) for n in range(failing)]
    path.write_bytes(pdf_bytes(pages))
    return path


def sql_text(engine: Engine) -> str:
    """Every row of every table, as text: what a secret must not be found in."""
    parts = []
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            parts.extend(repr(tuple(row)) for row in conn.execute(select(table)))
    return "\n".join(parts)
