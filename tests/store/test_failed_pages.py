"""The queries over pages a job could not have: counted with a job's files (live while it runs, settled onto its
row when it is done), listed per job and per document, summed per collection; gone with their document. A real
job over a real PDF whose last pages fail. SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select

from mmrag.indexing import delete_documents, run_index
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from mmrag.store import repository
from mmrag.store.models import Job
from tests.api.conftest import make_settings
from tests.factories import make_image
from tests.partial_pdfs import make_pdf_with_failing_pages


def test_failed_pages_are_counted_listed_and_deleted_with_their_document(
    tmp_path: Path, database_url: str, tiny_embedders: Embedders
) -> None:
    corpus = tmp_path / "corpus"
    partial = make_pdf_with_failing_pages(corpus / "a" / "partial.pdf", failing=2).resolve()
    shutil.copy(partial, corpus / "b-copy.pdf")  # a duplicate: the same document, its failed pages counted once
    make_image(corpus / "photo.png", 1)
    services = build_services(make_settings(tmp_path / "data", database_url), embedders=tiny_embedders)
    try:
        report = run_index(services, [corpus])
        assert (report.counts["indexed"], report.counts["duplicate"], report.counts["failed_pages"]) == (2, 1, 2)
        # the photo has no text (OCR is off here): counted, not silent; the PDF's page has its text layer
        assert report.counts["pages_without_text"] == 1
        with services.sessions() as session:
            job = session.get(Job, report.job_id)
            assert job.counts is not None and job.counts["failed_pages"] == 2  # settled onto the row at the end
            listed = repository.job_failed_pages(session, job.id)
            assert [(path, number) for path, number, _ in listed] == [(str(partial), 2), (str(partial), 3)]
            assert all("over the limit" in reason for _, _, reason in listed)
            assert repository.job_failed_pages(session, job.id, limit=1) == listed[:1]
            job.counts = None  # as while it runs: counted from its items, to the same numbers
            assert repository.job_counts(session, job.id) == report.counts
            session.rollback()

            document_id = repository.documents_at_paths(session, job.collection_id, [str(partial)])[str(partial)]
            failed = repository.failed_pages_of_documents(session, [document_id, 10**6])
            assert [(p.page_number, p.reason) for p in failed[document_id]] == [(n, r) for _, n, r in listed]
            assert failed[10**6] == []
            assert repository.collection_failed_pages(session) == {"default": 2}
            assert repository.collection_sizes(session)[3] == {"default": 1}

        again = run_index(services, [corpus])  # nothing changed: nothing indexed, no page lost by this job
        counts = again.counts
        assert (counts["unchanged"], counts["failed_pages"], counts["pages_without_text"]) == (3, 0, 0)

        delete_documents(services, "default", document_ids=[document_id])
        with services.sessions() as session:
            assert repository.collection_failed_pages(session) == {}
            assert repository.job_failed_pages(session, report.job_id) == []
            assert repository.job_counts(session, report.job_id)["failed_pages"] == 2  # what the job did stays
            assert session.scalar(select(Job.counts).where(Job.id == again.job_id))["failed_pages"] == 0
    finally:
        services.close()
