"""A Qdrant server that is down, or that refuses us, is an error that names it (the API answers 503), never a hang
or a stack trace from the client library."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from api.errors import status_of
from mmrag.config import IndexSettings, QdrantSettings
from mmrag.errors import VectorBackendUnavailableError
from mmrag.index import build_vector_index, open_multivector_store
from mmrag.index.qdrant_index import close_clients
from tests.api.test_cli import free_port


class Refusing(BaseHTTPRequestHandler):
    """What a Qdrant server with API keys on answers a client without the right one."""

    def _refuse(self) -> None:
        body = json.dumps({"status": {"error": "Must provide an API key or an Authorization bearer token"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    close_clients()


def settings_for(url: str) -> IndexSettings:
    return IndexSettings(backend="qdrant", qdrant=QdrantSettings(url=url, timeout_s=5))


def test_a_server_that_is_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(VectorBackendUnavailableError, match=rf"Qdrant server at {url} .*refused") as raised:
        build_vector_index(settings_for(url), tmp_path / "collections" / "1" / "vectors", name="clip", model="m",
                           dim=4)
    assert status_of(raised.value) == 503
    close_clients()


def test_a_server_that_refuses_the_api_key(tmp_path: Path, refusing_server: str) -> None:
    with pytest.raises(VectorBackendUnavailableError, match=r"HTTP 401.*API key") as raised:
        open_multivector_store(settings_for(refusing_server), tmp_path / "collections" / "1" / "vectors" / "colpali",
                               model="m", dim=4)
    assert refusing_server in str(raised.value) and status_of(raised.value) == 503


def test_ready_says_where_the_vectors_are_and_fails_while_qdrant_is_down(
    tmp_path: Path, tiny_embedders, refusing_server: str  # noqa: ANN001
) -> None:
    """A load balancer sends no traffic to a replica whose Qdrant it cannot reach: /ready is 503, naming it."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from mmrag.answer.extractive import ExtractiveAnswerer
    from mmrag.services import build_services
    from tests.test_pipeline import make_settings

    def ready_with(qdrant: QdrantSettings, name: str) -> tuple[int, dict]:
        settings = make_settings(tmp_path / name, f"sqlite:///{tmp_path / name}.db",
                                 index=IndexSettings(backend="qdrant", qdrant=qdrant))
        services = build_services(settings, embedders=tiny_embedders)
        try:
            with TestClient(create_app(services=services, answerer=ExtractiveAnswerer())) as client:
                response = client.get("/ready")
                return response.status_code, response.json()
        finally:
            services.close()

    status, body = ready_with(QdrantSettings(path=tmp_path / "engine"), "embedded")
    assert status == 200 and body["status"] == "ready" and body["vector_backend_error"] is None
    assert body["vector_backend"] == f"qdrant edge engine in {tmp_path / 'engine'}"
    status, body = ready_with(QdrantSettings(url=refusing_server, timeout_s=5), "refused")
    assert status == 503 and body["status"] == "unavailable" and body["database"] is True
    assert body["vector_backend"] == f"qdrant server {refusing_server}" and "HTTP 401" in body["vector_backend_error"]
