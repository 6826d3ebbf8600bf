"""Fixtures for the query service: settings, a small real corpus, services on tiny models, a live uvicorn server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.serving import live_server  # noqa: F401 - the API tests take it from here
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.config import ApiSettings, DatabaseSettings, EmbedderSettings, IngestSettings, Settings
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from tests.factories import make_image, make_pdf

INVOICE_PAGES = [
    "Invoice INV-2024-0117\nIssued by Acme Tools GmbH\nTotal due: 1,250.00 EUR\nPayment within 30 days",
    "Delivery address: 12 Harbour Street, Bristol\nContact: Jane Doe",
]
MENU_PAGES = ["Lunch menu\nTomato soup 4.50\nGrilled salmon 14.90"]
REPORT_PAGES = ["Quarterly report\nRevenue grew by 12 percent in the third quarter"]


def make_settings(data_dir: Path, database_url: str, **api: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        database=DatabaseSettings(url=database_url),
        embedders=EmbedderSettings(profile="tiny-random"),
        ingest=IngestSettings(workers=0, ocr="never"),
        batch_pages=8,
        api=ApiSettings(**api),
    )


def make_corpus(root: Path) -> dict[str, Path]:
    """Two PDFs with a text layer and two images to upload; a third PDF in a server-side job root."""
    return {
        "invoice": make_pdf(root / "upload" / "invoice.pdf", INVOICE_PAGES),
        "menu": make_pdf(root / "upload" / "menu.pdf", MENU_PAGES),
        "red": make_image(root / "upload" / "red.png", 0),
        "blue": make_image(root / "upload" / "blue.png", 2),
        "report": make_pdf(root / "jobroot" / "reports" / "q3.pdf", REPORT_PAGES),
    }


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    return make_corpus(tmp_path / "corpus")


@pytest.fixture
def services(tmp_path: Path, database_url: str, tiny_embedders: Embedders) -> Iterator[Services]:
    services = build_services(
        make_settings(tmp_path / "data", database_url, job_roots={"corpus": tmp_path / "corpus" / "jobroot"}),
        embedders=tiny_embedders,
    )
    yield services
    services.close()


@pytest.fixture(scope="session")
def answerer() -> ExtractiveAnswerer:
    return ExtractiveAnswerer()


def wait_for_job(client: httpx.Client | Any, job_id: int, timeout: float = 120) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until the job is done or failed, as a client would."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if job["state"] in ("done", "failed"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")
        time.sleep(0.1)


def upload(client: httpx.Client | Any, paths: list[Path], **form: str) -> dict[str, Any]:
    files = [("files", (path.name, path.read_bytes())) for path in paths]
    response = client.post("/v1/documents", files=files, data=form)
    assert response.status_code == 202, response.text
    return response.json()


def sse_events(text: str) -> list[tuple[str, Any]]:
    """Server-Sent Events → [(event, parsed JSON data)]."""
    import json

    events = []
    for frame in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        events.append((fields["event"], json.loads(fields["data"])))
    return events
