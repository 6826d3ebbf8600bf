"""Acceptance 4: with API keys on, no key is 401, and a key for collection A never sees B's search hits, documents,
pages, jobs or answers (B's ids answer 404; naming B answers 403)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from tests.api.conftest import make_settings
from tests.conftest import database
from tests.factories import make_pdf

KEYS = {"key-a": ["a"], "key-b": ["b"], "key-admin": ["*"]}
A = {"Authorization": "Bearer key-a"}
B = {"X-API-Key": "key-b"}
ADMIN = {"Authorization": "Bearer key-admin"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def scoped(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_embedders: Embedders,
    answerer: ExtractiveAnswerer,
) -> Iterator[dict[str, Any]]:
    """Collections a and b, one document each, behind keys; shared by the module (its requests change nothing)."""
    tmp_path = tmp_path_factory.mktemp("auth")
    with database(request.param, tmp_path) as database_url:
        yield from _scoped(tmp_path, database_url, tiny_embedders, answerer)


def _scoped(
    tmp_path: Path, database_url: str, tiny_embedders: Embedders, answerer: ExtractiveAnswerer
) -> Iterator[dict[str, Any]]:
    settings = make_settings(tmp_path / "data", database_url, keys=KEYS, job_roots={"corpus": tmp_path / "corpus"})
    services = build_services(settings, embedders=tiny_embedders)
    falcon = make_pdf(tmp_path / "corpus" / "a" / "falcon.pdf", ["Project Falcon\nThe Falcon budget is 4.2 million"])
    heron = make_pdf(tmp_path / "corpus" / "b" / "heron.pdf", ["Project Heron\nThe Heron launch date is 12 March"])
    jobs = {name: run_index(services, [pdf], collection=name).job_id for name, pdf in (("a", falcon), ("b", heron))}
    try:
        with TestClient(create_app(services=services, answerer=answerer)) as client:
            documents = client.get("/v1/documents", headers=ADMIN).json()["items"]
            ids = {d["collection"]: d["id"] for d in documents}
            pages = {
                name: client.get(f"/v1/documents/{ids[name]}", headers=ADMIN).json()["pages"][0]["id"] for name in ids
            }
            yield {"client": client, "documents": ids, "pages": pages, "jobs": jobs}
    finally:
        services.close()


def test_no_key_or_a_wrong_key_is_401(scoped: dict[str, Any]) -> None:
    client: TestClient = scoped["client"]
    requests = [
        ("POST", "/v1/search", {"json": {"query": "budget"}}),
        ("POST", "/v1/ask", {"json": {"question": "What is the budget?"}}),
        ("GET", "/v1/documents", {}),
        ("GET", f"/v1/documents/{scoped['documents']['a']}", {}),
        ("DELETE", f"/v1/documents/{scoped['documents']['a']}", {}),
        ("GET", f"/v1/pages/{scoped['pages']['a']}/image", {}),
        ("GET", f"/v1/jobs/{scoped['jobs']['a']}", {}),
        ("POST", "/v1/jobs", {"json": {"root": "corpus", "path": "a", "collection": "a"}}),
        ("POST", "/v1/documents", {"files": {"files": ("x.pdf", b"%PDF-1.4")}}),
    ]
    for method, path, kwargs in requests:
        for headers in ({}, {"Authorization": "Bearer no"}, {"X-API-Key": "key-a "}, {"Authorization": "Basic a2V5"}):
            response = client.request(method, path, headers=headers, **kwargs)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["type"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
    for path in ("/health", "/ready", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_a_key_reads_only_its_collections(scoped: dict[str, Any]) -> None:
    client: TestClient = scoped["client"]
    docs, pages, jobs = scoped["documents"], scoped["pages"], scoped["jobs"]

    # search: only A's hits, whatever the query; naming B is refused
    for query in ("Heron launch date", "Falcon budget"):
        hits = client.post("/v1/search", json={"query": query, "k": 20}, headers=A).json()["hits"]
        assert hits and {h["collection"] for h in hits} == {"a"}
    image = client.get(f"/v1/pages/{pages['a']}/image", headers=A).content
    hits = client.post("/v1/search", files={"image": ("q.jpg", image)}, headers=A).json()["hits"]
    assert {h["document_id"] for h in hits} == {docs["a"]}
    refused = client.post("/v1/search", json={"query": "Heron", "collections": ["b"]}, headers=A)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden"
    assert client.post("/v1/search", json={"query": "x", "collections": ["a", "b"]}, headers=A).status_code == 403

    # documents and pages: B's ids do not exist for A
    listing = client.get("/v1/documents", headers=A).json()
    assert [d["id"] for d in listing["items"]] == [docs["a"]] and listing["total"] == 1
    assert client.get("/v1/documents", params={"collection": "b"}, headers=A).status_code == 403
    for method, path in (
        ("GET", f"/v1/documents/{docs['b']}"),
        ("DELETE", f"/v1/documents/{docs['b']}"),
        ("GET", f"/v1/pages/{pages['b']}/image"),
        ("GET", f"/v1/pages/{pages['b']}/image?size=thumbnail"),
        ("GET", f"/v1/jobs/{jobs['b']}"),
    ):
        response = client.request(method, path, headers=A)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["type"] == "not_found"  # exactly as for an id that does not exist
    assert client.get(f"/v1/documents/{docs['b']}", headers=B).status_code == 200  # the delete above did nothing
    assert client.get(f"/v1/pages/{pages['a']}/image", headers=A).status_code == 200
    assert client.get(f"/v1/jobs/{jobs['a']}", headers=A).status_code == 200

    # answers: A's question about B's content is not answered from B's pages
    answer = client.post("/v1/ask", json={"question": "When is the Heron launch date?"}, headers=A).json()
    assert answer["supported"] is False and answer["citations"] == []
    assert {p["document_id"] for p in answer["pages"]} <= {docs["a"]}
    assert client.post("/v1/ask", json={"question": "When?", "collections": ["b"]}, headers=A).status_code == 403
    with_b = client.post("/v1/ask", json={"question": "When is the Heron launch date?"}, headers=B).json()
    assert with_b["supported"] is True and {c["document_id"] for c in with_b["citations"]} == {docs["b"]}

    # writes: A may not upload to or index into B
    upload = client.post("/v1/documents", data={"collection": "b"}, files={"files": ("x.pdf", b"%PDF")}, headers=A)
    assert upload.status_code == 403
    job = client.post("/v1/jobs", json={"root": "corpus", "path": "b", "collection": "b"}, headers=A)
    assert job.status_code == 403

    # an unknown collection is 404 without naming the others
    missing = client.post("/v1/search", json={"query": "x", "collections": ["zzz"]}, headers=ADMIN)
    assert missing.status_code == 404 and "'a'" not in missing.text and "'b'" not in missing.text

    # the admin key ("*") sees both
    both = client.post("/v1/search", json={"query": "Project", "k": 20}, headers=ADMIN).json()["hits"]
    assert {h["collection"] for h in both} == {"a", "b"}
