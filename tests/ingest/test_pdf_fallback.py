"""A bad page costs one page: each PDF page from whichever of PDFium and poppler draws it, on hand-broken files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mmrag.config import IngestSettings
from mmrag.errors import ConfigError, CorruptFileError, EncryptedPdfError
from mmrag.ingest import PageFailure, count_pages, describe, draw_pages, iter_pages
from mmrag.ingest.passwords import PasswordBook
from mmrag.ingest.pdf_pages import DrawnPage, count_pdf_pages
from tests.ingest.samples import encrypted_pdf
from tests.pdfbytes import RawPage, pdf_bytes

PASSWORD = "tide-table-7781"


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def drawn(path: Path, **options: object) -> list[DrawnPage | PageFailure]:
    return list(draw_pages(path, **{"dpi": 36, "max_pixels": 10**8, **options}))


def summary(pages: list[DrawnPage | PageFailure]) -> list[tuple[int, str]]:
    """(page number, renderer) for a drawn page, (page number, "failed") for one that was not."""
    return [(p.page_number, p.renderer if isinstance(p, DrawnPage) else "failed") for p in pages]


def test_a_page_pdfium_cannot_load_is_drawn_by_poppler_with_its_own_text(tmp_path: Path) -> None:
    # page 2's dictionary says /Type /Font: PDFium refuses to load it ("Failed to load page"); poppler draws it
    path = write(tmp_path / "f.pdf", pdf_bytes([RawPage("alpha page"), RawPage("beta page", extra="/Type /Font"),
                                               RawPage("gamma page")]))
    pages = drawn(path)
    assert summary(pages) == [(1, "pypdfium2"), (2, "pdf2image"), (3, "pypdfium2")]
    assert [p.text for p in pages] == ["alpha page", "beta page", "gamma page"]
    assert pages[1].image.size == pages[0].image.size == (306, 396)  # 612x792 pt at 36 dpi
    # the other way round: poppler configured, PDFium the fallback (which cannot load page 2 either way)
    pages = drawn(path, renderer="pdf2image")
    assert summary(pages) == [(1, "pdf2image"), (2, "pdf2image"), (3, "pdf2image")]


def test_a_document_pdfium_cannot_open_is_read_whole_by_poppler(tmp_path: Path) -> None:
    good = pdf_bytes([RawPage("alpha page"), RawPage("beta page")])
    path = write(tmp_path / "late-header.pdf", b"x" * 2000 + good)  # PDFium looks for %PDF in the first 1,024 bytes
    pages = drawn(path)
    assert summary(pages) == [(1, "pdf2image"), (2, "pdf2image")]
    assert [p.text for p in pages] == ["alpha page", "beta page"]  # pdftotext's text layer
    assert count_pdf_pages(path) == 2  # what a job's first range of the document is told


def test_neither_renderer_opens_it_and_the_reason_says_both(tmp_path: Path) -> None:
    good = pdf_bytes([RawPage("alpha page")])
    path = write(tmp_path / "cut.pdf", good[: good.index(b"xref")])  # cut before its cross-reference table
    with pytest.raises(CorruptFileError, match=r"cannot open PDF .*poppler cannot read it either"):
        drawn(path)


def test_a_page_tree_loop_costs_the_pages_it_hides(tmp_path: Path) -> None:
    # /Kids holds the page tree itself: PDFium counts 3 pages and cannot load the third; poppler numbers the pages
    # differently there, so it is not asked (its page 3 would be another page).
    path = write(tmp_path / "loop.pdf",
                 pdf_bytes([RawPage("alpha page"), RawPage("gamma page")], kids="4 0 R 2 0 R 6 0 R", count=3))
    pages = drawn(path)
    assert summary(pages) == [(1, "pypdfium2"), (2, "pypdfium2"), (3, "failed")]
    assert pages[2].reason.startswith("page 3: cannot read the page")
    # a kid that is not a page at all: the same, and the page after it keeps its number and text
    path = write(tmp_path / "kid.pdf", pdf_bytes([RawPage("alpha page"), "42", RawPage("gamma page")]))
    pages = drawn(path)
    assert summary(pages) == [(1, "pypdfium2"), (2, "failed"), (3, "pypdfium2")]
    assert pages[2].text == "gamma page"


@pytest.mark.parametrize(
    ("box", "reason"),
    [((0, 0, 0.001, 0.001), "page 2: the page has no area (0.001x0.001 pt)"),
     ((0, 0, 595, 2147483648), "page 2: 595x2147483648 pt page is over the limit of 100000000 pixels")],
)
def test_a_page_of_absurd_size_fails_alone(tmp_path: Path, box: tuple[float, ...], reason: str) -> None:
    path = write(tmp_path / "odd.pdf", pdf_bytes([RawPage("alpha page"), RawPage("beta", media_box=box),
                                                  RawPage("gamma page")]))
    pages = drawn(path)
    assert summary(pages) == [(1, "pypdfium2"), (2, "failed"), (3, "pypdfium2")]
    assert pages[1].reason.startswith(reason)


def test_iter_pages_lists_failed_pages_or_raises_without_a_list(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.pdf", pdf_bytes([RawPage("alpha page"), RawPage("beta", media_box=(0, 0, 0.5, 0.5))]))
    settings = IngestSettings(dpi=36, ocr="never")
    failures: list[PageFailure] = []
    pages = list(iter_pages(describe(path), settings, failures=failures))
    assert [(p.page_number, p.renderer, p.text) for p in pages] == [(1, "pypdfium2", "alpha page")]
    assert [(f.page_number, f.reason) for f in failures] == [(2, "page 2: the page has no area (0.5x0.5 pt)")]
    with pytest.raises(CorruptFileError, match=r"odd\.pdf: page 2: the page has no area"):
        list(iter_pages(describe(path), settings))


def test_passwords_open_an_encrypted_pdf_and_never_show(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = encrypted_pdf(tmp_path / "locked.pdf", user_password=PASSWORD)
    with pytest.raises(EncryptedPdfError, match="needs a password to open$"):
        drawn(path)
    with pytest.raises(EncryptedPdfError, match="the 2 passwords given for it did not open it") as wrong:
        drawn(path, passwords=("wrong-1", "wrong-2"))
    assert "wrong-1" not in str(wrong.value)
    (page,) = drawn(path, passwords=("wrong-1", PASSWORD))
    assert page.renderer == "pypdfium2" and "Quarterly report" in page.text
    (page,) = drawn(path, passwords=(PASSWORD,), renderer="pdf2image")  # poppler takes the password PDFium took
    assert page.renderer == "pdf2image"
    assert count_pages(describe(path), (PASSWORD,)) == 1
    # owner-only (printing and copying restricted): opens with no password at all
    (page,) = drawn(encrypted_pdf(tmp_path / "owner.pdf", user_password=""))
    assert page.renderer == "pypdfium2" and "Quarterly report" in page.text
    assert PASSWORD not in caplog.text


def test_a_password_file_matches_names_and_paths(tmp_path: Path) -> None:
    finance = tmp_path / "finance report"
    finance.mkdir()
    rules = tmp_path / "passwords.txt"
    rules.write_text(
        "# comments and blank lines are skipped\n\n"
        "*.pdf   first guess with spaces \n"
        f'"{finance}/*"\t{PASSWORD}\n'
        "locked-??.pdf  second\n"
    )
    book = PasswordBook.read(rules)
    assert len(book) == 3 and PASSWORD not in repr(book)
    assert book.for_path(str(finance / "locked-01.pdf")) == ("first guess with spaces ", PASSWORD, "second")
    assert book.for_path(str(tmp_path / "other.pdf")) == ("first guess with spaces ",)
    assert book.for_path(str(tmp_path / "scan.png")) == ()
    assert PasswordBook.for_files([finance / "a[1].pdf"], "x").for_path(str(finance / "a[1].pdf")) == ("x",)
    rules.write_text(f"ok.pdf pw\njust-one-field-{PASSWORD}\n")
    with pytest.raises(ConfigError, match=r"line 2: expected a pattern") as bad:
        PasswordBook.read(rules)
    assert PASSWORD not in str(bad.value)
    with pytest.raises(ConfigError, match="cannot read the password file"):
        PasswordBook.read(tmp_path / "missing.txt")
