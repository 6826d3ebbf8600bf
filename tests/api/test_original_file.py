"""GET /v1/documents/{id}/file: the file a document was indexed from, only as it was indexed, only to a caller who
may read its collection. SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.services import Services
from mmrag.store import repository
from tests.api.conftest import live_server, upload, wait_for_job
from tests.factories import make_pdf


def test_the_original_file_as_indexed(services: Services, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "Lease 2024.pdf", ["Lease agreement\nMonthly rent: 1,150 EUR"])
    app = create_app(services=services, answerer=ExtractiveAnswerer())
    with live_server(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        assert wait_for_job(client, upload(client, [pdf])["job_id"])["state"] == "done"
        (document,) = client.get("/v1/documents").json()["items"]
        got = client.get(f"/v1/documents/{document['id']}/file")
        assert got.status_code == 200 and got.content == pdf.read_bytes()
        assert got.headers["content-type"] == "application/pdf"
        assert got.headers["content-disposition"] == "inline; filename*=utf-8''Lease%202024.pdf"  # as uploaded
        assert client.get("/v1/documents/999999/file").status_code == 404
        assert client.get("/v1/documents/0/file").status_code == 422
        # a file changed where it lies since it was indexed: refused, not served as if the pages showed it
        with services.sessions() as session:
            ((stored, _, _),) = repository.recorded_paths(session, document["id"])
        os.utime(stored, (1_000_000_000, 1_000_000_000))
        changed = client.get(f"/v1/documents/{document['id']}/file")
        assert changed.status_code == 404 and "changed since" in changed.json()["error"]["message"]
