"""A bad page costs one page, not its document: the bulk job over hand-broken PDFs, with real worker processes, real
SQL (both databases), the real stores and tiny real models; passwords; failed files retried when ingestion changed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from mmrag.config import IngestSettings
from mmrag.indexing import run_index
from mmrag.ingest import ingest_version
from mmrag.ingest.passwords import PasswordBook
from mmrag.retrieval import search
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.store.db import downgrade, upgrade
from mmrag.store.models import Document, DocumentPath, JobItem, Page, PageFailure
from tests.factories import make_pdf
from tests.ingest.samples import encrypted_pdf
from tests.pdfbytes import RawPage, pdf_bytes
from tests.test_pipeline import assert_stores_agree_with_sql, make_settings

PASSWORD = "harbour-9917-secret"
HUGE = (0, 0, 595, 2147483648)
TOO_LARGE = f"595x2147483648 pt page is over the limit of {IngestSettings().max_pixels} pixels even at 36 dpi"


def broken_corpus(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)

    def raw(name: str, data: bytes) -> Path:
        (root / name).write_bytes(data)
        return root / name

    good = pdf_bytes([RawPage("alpha herons"), RawPage("beta egrets")])
    return {
        "good": make_pdf(root / "good.pdf", ["a plain page about cormorants"]),
        # page 2 declares a height of 2^31 pt: it fails, pages 1 and 3 are indexed
        "huge": raw("huge.pdf", pdf_bytes([RawPage("alpha harbour"), RawPage("beta", media_box=HUGE),
                                           RawPage("gamma lighthouse")])),
        # page 2 is no area at all
        "speck": raw("speck.pdf", pdf_bytes([RawPage("speck first"), RawPage("x", media_box=(0, 0, 0.01, 0.01))])),
        # the page tree holds itself: PDFium counts 3 pages and cannot load the third
        "loop": raw("loop.pdf", pdf_bytes([RawPage("looped alpha"), RawPage("looped gamma")],
                                          kids="4 0 R 2 0 R 6 0 R", count=3)),
        # PDFium cannot load page 2 (its dictionary says /Type /Font): poppler draws it
        "fallback": raw("fallback.pdf", pdf_bytes([RawPage("first sandpiper"), RawPage("second plover",
                                                                                       extra="/Type /Font")])),
        "leading": raw("leading.pdf", b"garbage before the header\n" * 30 + good),  # %PDF at byte 780
        "locked": encrypted_pdf(root / "locked.pdf", user_password=PASSWORD),
        "owner": encrypted_pdf(root / "owner-only.pdf", user_password=""),
        "nopages": raw("nopages.pdf", pdf_bytes([RawPage("beta", media_box=HUGE), RawPage("b", media_box=HUGE)])),
    }


@pytest.fixture
def services(tmp_path: Path, database_url: str, tiny_embedders: Embedders) -> Services:
    # one real worker process: decoders run where the job runs them, and their native output is captured there
    settings = make_settings(tmp_path, database_url)
    settings = settings.model_copy(update={"ingest": IngestSettings(workers=1, ocr="never", dpi=72)})
    services = build_services(settings, embedders=tiny_embedders)
    yield services
    services.close()


def documents_by_name(services: Services) -> dict[str, Document]:
    with services.sessions() as session:
        rows = session.execute(select(DocumentPath.path, Document).join(Document)).all()
        return {Path(path).name: document for path, document in rows}


def pages_of(services: Services, document_id: int) -> list[tuple[int, str | None, str]]:
    with services.sessions() as session:
        return [tuple(row) for row in session.execute(
            select(Page.page_number, Page.renderer, Page.text).where(Page.document_id == document_id)
            .order_by(Page.page_number))]


def failed_pages_of(services: Services, document_id: int) -> list[tuple[int, str]]:
    with services.sessions() as session:
        return [tuple(row) for row in session.execute(
            select(PageFailure.page_number, PageFailure.reason).where(PageFailure.document_id == document_id)
            .order_by(PageFailure.page_number))]


def test_bad_pages_cost_only_themselves(
    tmp_path: Path, services: Services, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broken_corpus(tmp_path / "corpus")
    passwords = PasswordBook([("locked.pdf", "not-this-one"), ("*.pdf", PASSWORD)])
    report = run_index(services, [tmp_path / "corpus"], passwords=passwords)

    assert report.counts["indexed"] == 8 and report.counts["failed"] == 1, report.failures
    docs = documents_by_name(services)
    huge = docs["huge.pdf"]
    assert huge.status == "indexed" and huge.page_count == 3
    assert [(n, r) for n, r, _ in pages_of(services, huge.id)] == [(1, "pypdfium2"), (3, "pypdfium2")]
    assert failed_pages_of(services, huge.id) == [(2, f"page 2: {TOO_LARGE}")]
    assert failed_pages_of(services, docs["speck.pdf"].id) == [(2, "page 2: the page has no area (0.01x0.01 pt)")]
    assert [n for n, _, _ in pages_of(services, docs["loop.pdf"].id)] == [1, 2]
    assert [n for n, _ in failed_pages_of(services, docs["loop.pdf"].id)] == [3]
    assert pages_of(services, docs["fallback.pdf"].id) == [
        (1, "pypdfium2", "first sandpiper"), (2, "pdf2image", "second plover")
    ]
    assert [n for n, _, _ in pages_of(services, docs["leading.pdf"].id)] == [1, 2]
    assert "Quarterly report" in pages_of(services, docs["locked.pdf"].id)[0][2]
    assert docs["owner-only.pdf"].status == "indexed"
    nopages = docs["nopages.pdf"]
    assert nopages.status == "failed" and failed_pages_of(services, nopages.id) == []
    assert nopages.error.endswith(f"nopages.pdf: no page could be read: page 1: {TOO_LARGE} (and 1 more pages)")
    assert_stores_agree_with_sql(services)

    # the good pages of a document with a bad one are searchable, and so is the page poppler drew
    (hit, *_) = search(services, "default", text="gamma lighthouse", k=3, retrievers=["lexical"])
    assert (hit.document_id, hit.page_number) == (huge.id, 3)
    (hit, *_) = search(services, "default", text="second plover", k=3, retrievers=["lexical"])
    assert (hit.document_id, hit.page_number) == (docs["fallback.pdf"].id, 2)

    # nothing printed over the terminal by a decoder, and the password nowhere: not in SQL, not in the log
    assert capfd.readouterr() == ("", "")
    assert PASSWORD not in caplog.text
    with services.engine.connect() as connection:
        for table in ("documents", "document_paths", "pages", "page_failures", "jobs", "job_items"):
            for row in connection.execute(text(f"SELECT * FROM {table}")):  # noqa: S608 - fixed table names
                assert PASSWORD not in repr(tuple(row)), table


def test_failed_files_are_retried_when_ingestion_changed_or_when_asked(tmp_path: Path, services: Services) -> None:
    files = broken_corpus(tmp_path / "corpus")
    folder = tmp_path / "corpus"
    first = run_index(services, [folder])  # no passwords: locked.pdf fails
    assert first.counts["failed"] == 2
    docs = documents_by_name(services)
    assert docs["locked.pdf"].error.endswith("locked.pdf: the PDF needs a password to open")
    assert docs["locked.pdf"].ingest_version == ingest_version()

    again = run_index(services, [folder])
    assert again.counts["unchanged"] == 9 and again.counts["indexed"] == 0  # same ingestion: not tried again
    # a file that wanted a password is tried again by a job that has passwords for it, and only by such a job
    unlocked = run_index(services, [folder], passwords=PasswordBook([("locked.pdf", PASSWORD)]))
    assert (unlocked.counts["indexed"], unlocked.counts["unchanged"]) == (1, 8)
    assert documents_by_name(services)["locked.pdf"].status == "indexed"
    asked = run_index(services, [folder], retry_failed=True)  # every failed file, whatever it failed for
    assert (asked.counts["indexed"], asked.counts["failed"], asked.counts["unchanged"]) == (0, 1, 8)

    # an upgrade of the decoders or of mmrag's ingestion: what failed under the old version is tried again
    with services.sessions.begin() as session:
        session.execute(update(Document).where(Document.status == "failed").values(ingest_version="1/old"))
    upgraded = run_index(services, [folder])
    assert (upgraded.counts["failed"], upgraded.counts["unchanged"]) == (1, 8)
    assert upgraded.failures[0][0].endswith("nopages.pdf")
    assert_stores_agree_with_sql(services)
    assert files["good"].exists()


def test_a_data_dir_indexed_before_versions_retries_exactly_its_failed_files(
    tmp_path: Path, database_url: str, tiny_embedders: Embedders
) -> None:
    """A data dir from before migration 0004 (documents.ingest_version NULL everywhere): the next run retries the
    files that had failed, indexes those that now open, and leaves the indexed ones alone."""
    folder = tmp_path / "corpus"
    broken_corpus(folder)
    settings = make_settings(tmp_path, database_url)
    services = build_services(settings, embedders=tiny_embedders)
    try:
        run_index(services, [folder])  # locked.pdf fails (no password), nopages.pdf fails
        downgrade(services.engine, "0003")  # the schema as it was: no ingest versions, no page failures
        upgrade(services.engine)
        with services.sessions() as session:
            assert set(session.scalars(select(Document.ingest_version))) == {None}
        report = run_index(services, [folder], passwords=PasswordBook([("locked.pdf", PASSWORD)]))
        with services.sessions() as session:
            states = {Path(path).name: state for path, state in session.execute(
                select(JobItem.path, JobItem.state).where(JobItem.job_id == report.job_id))}
    finally:
        services.close()
    assert report.counts["unchanged"] == 7
    assert {name: state for name, state in states.items() if state != "unchanged"} == {
        "locked.pdf": "indexed", "nopages.pdf": "failed"
    }
