"""What the API shows of a PDF that costs a page or a password: a job's and a document's failed pages and each
page's renderer, and an encrypted PDF uploaded with its password (a wrong or missing one is a 422 that never holds
it, and the password is nowhere in SQL or the log afterwards). SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.services import Services
from tests.api.conftest import upload, wait_for_job
from tests.factories import make_image
from tests.partial_pdfs import make_encrypted_pdf, make_pdf_with_failing_pages, sql_text

SECRET = "open sesame 7"
WRONG = "not-it-3141"


def test_jobs_and_documents_show_failed_pages_and_renderers(
    services: Services, answerer: ExtractiveAnswerer, tmp_path: Path
) -> None:
    partial = make_pdf_with_failing_pages(tmp_path / "partial.pdf", failing=2)
    photo = make_image(tmp_path / "photo.png", 3)
    with TestClient(create_app(services=services, answerer=answerer)) as client:
        job = wait_for_job(client, upload(client, [partial, photo])["job_id"])
        assert job["state"] == "done", job
        assert (job["counts"]["indexed"], job["counts"]["pages"], job["counts"]["failed_pages"]) == (2, 2, 2)
        by_name = {item["path"].rsplit(".", 1)[-1]: item for item in job["items"]}
        pdf_item, photo_item = by_name["pdf"], by_name["png"]
        assert [p["page_number"] for p in pdf_item["failed_pages"]] == [2, 3]
        assert all("over the limit" in p["reason"] for p in pdf_item["failed_pages"])
        assert pdf_item["pages"] == 1 and photo_item["failed_pages"] == []

        document = client.get(f"/v1/documents/{pdf_item['document_id']}").json()
        assert document["status"] == "indexed" and document["page_count"] == 3  # the failed pages count too
        assert [(p["page_number"], p["renderer"]) for p in document["pages"]] == [(1, "pypdfium2")]
        assert [p["page_number"] for p in document["failed_pages"]] == [2, 3]
        assert document["failed_pages"][0]["reason"] == pdf_item["failed_pages"][0]["reason"]
        assert document["renderers"] == {"pypdfium2": 1}
        picture = client.get(f"/v1/documents/{photo_item['document_id']}").json()
        assert picture["failed_pages"] == [] and picture["renderers"] == {}
        assert [p["renderer"] for p in picture["pages"]] == [None]

        # The same bytes again: unchanged, so this job lost no page of its own (the first one counted them).
        again = wait_for_job(client, upload(client, [partial])["job_id"])
        assert again["counts"]["unchanged"] == 1 and again["counts"]["failed_pages"] == 0

        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "failed_pages" in schema["JobItemOut"]["properties"]
        assert {"failed_pages", "renderers"} <= set(schema["DocumentDetail"]["properties"])
        assert "renderer" in schema["PageOut"]["properties"]


def test_upload_with_a_password_opens_an_encrypted_pdf_and_never_keeps_it(
    services: Services, answerer: ExtractiveAnswerer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    locked = make_encrypted_pdf(tmp_path / "locked.pdf", ["sealed ledger 4711", "second leaf"], SECRET, "owner-pw-x")
    files = [("files", (locked.name, locked.read_bytes()))]
    refused = []
    with TestClient(create_app(services=services, answerer=answerer)) as client:
        refused.append(client.post("/v1/documents", files=files))
        assert refused[-1].status_code == 422
        assert refused[-1].json()["error"]["message"] == "locked.pdf: the PDF needs a password to open"
        refused.append(client.post("/v1/documents", files=files, data={"password": WRONG}))
        assert refused[-1].status_code == 422
        message = refused[-1].json()["error"]["message"]
        assert message.startswith("locked.pdf: ") and "the password given for it did not open it" in message
        refused.append(client.post("/v1/documents", files=files, data={"password": f"nul\x00{WRONG}"}))
        assert refused[-1].status_code == 422
        assert refused[-1].json()["error"]["message"] == "password: Value error, must not contain NUL characters"
        assert not any((services.storage_dir / "uploads").rglob("*.pdf"))  # nothing refused was kept

        accepted = upload(client, [locked], password=SECRET)
        job = wait_for_job(client, accepted["job_id"])
        assert job["state"] == "done" and job["failures"] == [], job
        assert (job["counts"]["indexed"], job["counts"]["pages"]) == (1, 2)
        document = client.get(f"/v1/documents/{job['items'][0]['document_id']}").json()
        assert document["page_count"] == 2 and document["failed_pages"] == []
        hits = client.post("/v1/search", json={"query": "sealed ledger 4711", "retrievers": ["lexical"], "k": 1})
        assert hits.json()["hits"][0]["document_id"] == document["id"]
        bodies = [r.text for r in refused] + [client.get(f"/v1/jobs/{job['id']}").text]

    for secret in (SECRET, WRONG):
        assert not any(secret in body for body in bodies)
        assert not any(secret in r.getMessage() or secret in (r.exc_text or "") for r in caplog.records)
        assert secret not in sql_text(services.engine)
