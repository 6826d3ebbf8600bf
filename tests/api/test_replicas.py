"""Two `mmrag serve` processes that share nothing but the database, the shared directory and the vector backend:
a document uploaded through one is searchable through the other, a delete through one is gone from the other.

Each replica has a data directory of its own (MMRAG_DATA_DIR: its job temporary files) and the same MMRAG_SHARED_DIR
(page images, uploads, each collection's files) and PostgreSQL database. Vector backends: the local one (its files
in the shared directory; the writer lock an flock there), and a Qdrant server when MMRAG_TEST_QDRANT_URL names one.
The embedded Qdrant engines serve one process, so they cannot back two replicas and are not run here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import INVOICE_PAGES, MENU_PAGES, upload, wait_for_job
from tests.api.test_cli import free_port
from tests.conftest import database
from tests.factories import make_pdf

ROOT = Path(__file__).resolve().parents[2]
QDRANT_URL = os.environ.get("MMRAG_TEST_QDRANT_URL", "")


@contextmanager
def replica(env: dict[str, str], data_dir: Path) -> Iterator[httpx.Client]:
    """One `mmrag serve` process on a free loopback port, ready; killed (its process group) afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env={**env, "MMRAG_DATA_DIR": str(data_dir)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"replica exited: {process.stderr.read()[-3000:]}")
            try:
                if client.get("/ready").json().get("status") == "ready":
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("replica not ready after 120 s")
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def eventually(check, timeout: float = 30.0):  # noqa: ANN001, ANN201 - a predicate and what it returns
    """check() until it returns something true: a replica reads what the other wrote within its refresh interval."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


BACKENDS = ["local"] + (["qdrant-server"] if QDRANT_URL else [])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_upload_here_search_there_delete_there_gone_here(tmp_path: Path, backend: str) -> None:
    invoice = make_pdf(tmp_path / "corpus" / "invoice.pdf", INVOICE_PAGES)
    menu = make_pdf(tmp_path / "corpus" / "menu.pdf", MENU_PAGES)
    with ExitStack() as stack:
        url = stack.enter_context(database("postgresql", tmp_path))
        env = {key: value for key, value in os.environ.items() if not key.startswith("MMRAG_")}
        env.update({
            "MMRAG_DATABASE__URL": url,
            "MMRAG_SHARED_DIR": str(tmp_path / "shared"),
            "MMRAG_EMBEDDERS__PROFILE": "tiny-random",
            "MMRAG_INGEST__WORKERS": "0",
            "MMRAG_INGEST__OCR": "never",
            "MMRAG_INDEX__READER_REFRESH_SECONDS": "0",
            "PYTHONPATH": str(ROOT),
        })
        if backend == "qdrant-server":
            env.update({"MMRAG_INDEX__BACKEND": "qdrant", "MMRAG_INDEX__QDRANT__URL": QDRANT_URL,
                        "MMRAG_INDEX__QDRANT__PREFIX": f"t{uuid.uuid4().hex[:10]}"})
        here = stack.enter_context(replica(env, tmp_path / "replica-a"))
        there = stack.enter_context(replica(env, tmp_path / "replica-b"))

        job = wait_for_job(here, upload(here, [invoice, menu])["job_id"])
        assert job["state"] == "done" and job["counts"]["indexed"] == 2, job

        def found_there(query: str) -> list[dict]:
            response = there.post("/v1/search", json={"query": query, "k": 5, "retrievers": ["lexical"]})
            assert response.status_code == 200, response.text
            return response.json()["hits"]

        hits = eventually(lambda: found_there("INV-2024-0117"))
        assert hits and hits[0]["name"] == "invoice.pdf" and hits[0]["page_number"] == 1
        invoice_id = hits[0]["document_id"]
        assert invoice_id in {item["document_id"] for item in job["items"]}
        # the page image is in the shared directory: the other replica serves it
        image = there.get(f"/v1/pages/{hits[0]['page_id']}/image", params={"size": "thumbnail"})
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
        # every retriever's store, not only BM25: a search through all of them finds the page there too
        fused = there.post("/v1/search", json={"query": "INV-2024-0117", "k": 10}).json()["hits"]
        top = next(hit for hit in fused if hit["page_id"] == hits[0]["page_id"])
        assert {"clip", "colpali", "lexical"} <= set(top["scores"])

        deleted = there.delete(f"/v1/documents/{invoice_id}")
        assert deleted.status_code == 200, deleted.text

        def gone_here() -> bool:
            response = here.post("/v1/search", json={"query": "INV-2024-0117 invoice", "k": 20})
            return all(hit["document_id"] != invoice_id for hit in response.json()["hits"])

        assert eventually(gone_here)
        assert here.get(f"/v1/documents/{invoice_id}").status_code == 404
        assert here.get("/v1/documents").json()["total"] == 1
        # nothing of the replicas' own: uploads and page images went to the shared directory
        assert list((tmp_path / "shared" / "uploads").rglob("*.pdf"))
        for private in ("replica-a", "replica-b"):
            assert not (tmp_path / private / "uploads").exists() and not (tmp_path / private / "pages").exists()
