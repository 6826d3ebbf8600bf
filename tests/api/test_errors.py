"""Bad input and missing parts: every error is a JSON body {"error": {"type", "message"}} with the right status;
limits on request size, upload size and pixels; no path from a client touches the file system."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.errors import STATUS_BY_ERROR, status_of, type_of
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.errors import MmragError, NotFoundError, TooLargeError, UnknownNameError
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from tests.api.conftest import make_settings
from tests.factories import make_image, make_pdf

LIMITS = {"max_request_bytes": 200_000, "max_upload_bytes": 50_000, "max_upload_pixels": 250_000}


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def app_services(tmp_path: Path, tiny_embedders: Embedders) -> Iterator[Services]:
    root = tmp_path / "roots" / "corpus"
    make_pdf(root / "docs" / "a.pdf", ["Alpha page about apples"])
    (tmp_path / "outside").mkdir()
    make_image(tmp_path / "outside" / "secret.png", 1)
    os.symlink(tmp_path / "outside", root / "escape")
    settings = make_settings(
        tmp_path / "data", f"sqlite:///{tmp_path / 'mmrag.db'}", job_roots={"corpus": root}, **LIMITS
    )
    services = build_services(settings, embedders=tiny_embedders)
    run_index(services, [root / "docs"])
    yield services
    services.close()


@pytest.fixture
def client(app_services: Services, answerer: ExtractiveAnswerer) -> Iterator[TestClient]:
    with TestClient(create_app(services=app_services, answerer=answerer)) as client:
        yield client


def assert_error(response: Any, status: int, error_type: str | None = None, *, says: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"type", "message"} and error["message"]
    if error_type is not None:
        assert error["type"] == error_type, error
    assert says.lower() in error["message"].lower(), error


def test_error_table_covers_the_library_hierarchy() -> None:
    assert status_of(NotFoundError("x")) == 404
    assert status_of(UnknownNameError("answerer kind", "nope", ["extractive"])) == 400
    assert status_of(TooLargeError("x")) == 413
    assert status_of(MmragError("x")) == 500 and status_of(ValueError("x")) == 500
    assert type_of(TooLargeError("x")) == "too_large" and type_of(UnknownNameError("k", "n", [])) == "unknown_name"
    assert all(400 <= status < 600 for status in STATUS_BY_ERROR.values())


def test_framework_errors_are_json(client: TestClient) -> None:
    assert_error(client.get("/v1/nowhere"), 404, "not_found")
    assert_error(client.put("/v1/search", json={}), 405, "method_not_allowed")
    assert_error(client.post("/v1/search", json={"query": "x", "k": 0}), 422, "invalid", says="k")
    assert_error(client.post("/v1/search", json={"query": "x", "colour": "red"}), 422, "invalid", says="colour")
    assert_error(client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_error(client.post("/v1/search", content=b"hello", headers={"content-type": "text/plain"}), 415)
    assert_error(client.post("/v1/search", json={"query": "   "}), 422, says="blank")
    assert_error(client.post("/v1/search", json={"query": "x", "collections": ["a\x00b"]}), 422, says="NUL")
    assert_error(client.post("/v1/search", json={"query": "x", "retrievers": ["grep"]}), 422)
    assert_error(client.post("/v1/search", json={"query": "x", "filters": {"metadata": {"a b": "c"}}}), 422)
    assert_error(client.post("/v1/ask", json={"question": "x", "k": 21}), 422, says="k")
    assert_error(client.get(f"/v1/documents/{2**40}"), 422)
    assert_error(client.get("/v1/pages/../etc/passwd/image"), 404)
    assert_error(client.get("/v1/pages/abc/image"), 422)
    assert_error(client.get("/v1/pages/1/image?size=huge"), 422)
    assert_error(client.get("/v1/documents", params={"metadata": "no-equals-sign"}), 422, says="key=value")
    assert_error(client.get("/v1/documents/999"), 404, "not_found", says="999")
    assert_error(client.get("/v1/jobs/999"), 404, "not_found")
    assert_error(client.post("/v1/search", json={"query": "x", "collections": ["nope"]}), 404, says="nope")


def test_request_and_upload_limits(client: TestClient, tmp_path: Path) -> None:
    big = b"%PDF-1.4\n" + b"0" * 300_000
    assert_error(client.post("/v1/documents", files={"files": ("big.pdf", big)}), 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must bite while the body streams in
        for _ in range(30):
            yield b"x" * 10_000

    chunked = client.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert_error(chunked, 413, "request_too_large")

    assert_error(client.post("/v1/documents", files={"files": ("f.pdf", b"%PDF-1.4\n" + b"0" * 60_000)}), 413,
                 says="upload limit")  # fmt: skip
    assert_error(client.post("/v1/documents", files={"files": ("wide.png", png((600, 600)))}), 413, says="pixels")
    assert_error(client.post("/v1/search", files={"image": ("wide.png", png((600, 600)))}), 413, says="pixels")
    assert_error(client.post("/v1/documents", files={"files": ("empty.pdf", b"")}), 422, "empty_file")
    assert_error(client.post("/v1/documents", files={"files": ("notes.pdf", b"just text, whatever the name")}), 415)
    assert_error(client.post("/v1/documents", files={"files": ("broken.pdf", b"%PDF-1.7\ngarbage")}), 422,
                 "corrupt_file")  # fmt: skip
    assert_error(client.post("/v1/documents", files={"files": ("x.png", png((10, 10))[:40])}), 422)
    a_pdf = (tmp_path / "roots" / "corpus" / "docs" / "a.pdf").read_bytes()
    assert_error(client.post("/v1/search", files={"image": ("q.pdf", a_pdf)}), 415, says="must be an image")
    assert_error(client.post("/v1/search", files={"image": ("q.png", png((8, 8)))}, data={"query": "x"}), 422)
    assert_error(client.post("/v1/documents", files={"files": ("x.png", png((8, 8)))}, data={"metadata": "[1]"}),
                 422, says="metadata")  # fmt: skip
    # Nothing refused was kept, and a refused upload left no partial file behind.
    assert not any((client.app.state.services.storage_dir / "uploads").rglob("*.p*"))


def test_uploads_are_stored_by_content_never_by_client_name(client: TestClient, app_services: Services) -> None:
    data = png((20, 20))
    response = client.post("/v1/documents", files={"files": ("../../../../tmp/evil.png", data)})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["files"][0]["name"] == "evil.png" and accepted["files"][0]["mime"] == "image/png"
    client.app.state.jobs.wait(60)
    stored = list((app_services.storage_dir / "uploads").rglob("*.png"))
    assert [p.name for p in stored] == [f"{accepted['files'][0]['sha256']}.png"]
    assert not Path("/tmp/evil.png").exists()
    job = client.get(accepted["status_url"]).json()
    assert job["state"] == "done" and job["counts"]["indexed"] == 1
    document = client.get(f"/v1/documents/{job['items'][0]['document_id']}").json()
    assert document["metadata"] == {"filename": "evil.png"}


def test_job_paths_stay_inside_their_root(client: TestClient) -> None:
    def job(path: str, root: str = "corpus") -> Any:
        return client.post("/v1/jobs", json={"root": root, "path": path})

    assert_error(job("docs", root="elsewhere"), 400, "bad_request", says="known: corpus")
    assert_error(job("../outside"), 400, says="..")
    assert_error(job("docs/../../outside"), 400, says="..")
    assert_error(job("/etc"), 400, says="relative")
    assert_error(job("C:/Windows"), 400)
    assert_error(job("docs\\..\\..\\outside"), 400)
    assert_error(job("escape"), 403, "forbidden", says="outside")
    assert_error(job("escape/secret.png"), 403, "forbidden")
    assert_error(job("missing"), 404, says="does not exist")
    assert_error(job("x" * 300), 400)
    accepted = client.post("/v1/jobs", json={"root": "corpus", "path": ""})  # the whole root: the link inside it
    assert accepted.status_code == 202, accepted.text
    client.app.state.jobs.wait(60)
    status = client.get(accepted.json()["status_url"]).json()
    assert status["state"] == "done"
    assert [f["reason"] for f in status["failures"]] == ["a symbolic link leads outside the job root"]
    assert all("secret" not in d["paths"][0] for d in client.get("/v1/documents").json()["items"])


def test_jobs_are_off_without_roots(tmp_path: Path, tiny_embedders: Embedders, answerer: ExtractiveAnswerer) -> None:
    services = build_services(make_settings(tmp_path / "d", f"sqlite:///{tmp_path / 'x.db'}"), embedders=tiny_embedders)
    try:
        with TestClient(create_app(services=services, answerer=answerer)) as client:
            assert_error(client.post("/v1/jobs", json={"root": "corpus"}), 403, says="JOB_ROOTS")
    finally:
        services.close()


def test_missing_models_are_503(
    app_services: Services, tiny_embedders: Embedders, answerer: ExtractiveAnswerer
) -> None:
    without_clip = Embedders(
        colpali=tiny_embedders.get("colpali"), text=tiny_embedders.get("text"), off={"clip": "disabled in settings"}, meaningless=True
    )
    services = Services(app_services.settings, app_services.engine, embedders=without_clip)
    with TestClient(create_app(services=services, answerer=answerer)) as client:
        assert_error(client.post("/v1/search", files={"image": ("q.png", png((8, 8)))}), 503, "model_unavailable",
                     says="clip")  # fmt: skip
        assert client.post("/v1/search", json={"query": "apples"}).status_code == 200  # text search goes on
        ready = client.get("/ready").json()
        assert "clip" not in ready["retrievers_on"] and ready["retrievers_off"] == {"clip": "disabled in settings"}
        client.app.state.answerer, client.app.state.answerer_off = None, "the VLM could not be loaded"
        assert_error(client.post("/v1/ask", json={"question": "apples?"}), 503, "service_unavailable",
                     says="could not be loaded")  # fmt: skip
