"""POST /v1/pages/{id}/describe: a page's caption by the VLM answerer (a real chat-completions server on 127.0.0.1),
cached by content, searchable over /v1/search; 404 outside the key's collections, 503 with the extractive answerer,
the answer server's failures as gateway statuses. Real jobs, real SQL (SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.answer.openai_compat import OpenAICompatAnswerer
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from tests.answer.test_openai_compat import ChatServer, Reply, server  # noqa: F401 - `server`: a fixture
from tests.test_captions import ZEPPELIN, make_corpus, page_ids
from tests.test_pipeline import make_settings
from tests.test_tags import ColourClip

KEYS = {"key-default": ["default"], "key-other": ["other"]}


@pytest.fixture
def indexed(tmp_path: Path, database_url: str) -> Iterator[Services]:
    settings = make_settings(tmp_path, database_url)
    settings.api.keys = KEYS
    services = build_services(settings, embedders=Embedders(clip=ColourClip()))
    files = make_corpus(tmp_path / "corpus")
    run_index(services, [tmp_path / "corpus"])
    (tmp_path / "copies").mkdir()
    shutil.copy(files["red"], tmp_path / "copies" / "red-copy.png")
    run_index(services, [tmp_path / "copies"], collection="other")
    yield services
    services.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_describe_a_page_once_per_content_and_find_it_by_its_caption(indexed: Services, server: ChatServer) -> None:
    answerer = OpenAICompatAnswerer(base_url=server.base_url, model="qwen2.5-vl", timeout_s=5.0, max_retries=0)
    red, copy = page_ids(indexed)["red.png"], page_ids(indexed, "other")["red-copy.png"]
    with TestClient(create_app(services=indexed, answerer=answerer)) as client:
        # another key's page is no page at all
        reply = client.post(f"/v1/pages/{red}/describe", headers=auth("key-other"))
        assert reply.status_code == 404 and reply.json()["error"]["type"] == "not_found"
        assert client.post("/v1/pages/999999/describe", headers=auth("key-default")).status_code == 404
        assert server.requests == []

        server.replies.append(Reply(text=ZEPPELIN))
        reply = client.post(f"/v1/pages/{red}/describe", headers=auth("key-default"))
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"page_id": red, "caption": ZEPPELIN, "model": "openai:qwen2.5-vl", "cached": False}

        # the copy in the other collection: the cached caption, no request
        reply = client.post(f"/v1/pages/{copy}/describe", headers=auth("key-other"))
        assert reply.json() == {"page_id": copy, "caption": ZEPPELIN, "model": "openai:qwen2.5-vl", "cached": True}
        assert len(server.requests) == 1

        for key, collection, page_id in (("key-default", "default", red), ("key-other", "other", copy)):
            body = {"query": "zeppelin", "retrievers": ["lexical"], "collections": [collection]}
            reply = client.post("/v1/search", json=body, headers=auth(key))
            assert reply.status_code == 200, reply.text
            assert [hit["page_id"] for hit in reply.json()["hits"]] == [page_id]
            assert reply.json()["hits"][0]["caption"] == ZEPPELIN  # its alt text, in the hit

        # the answer server's failures are a gateway's
        server.replies.append(Reply(status=400, raw_body=b'{"error": {"message": "bad image"}}'))
        reply = client.post(f"/v1/pages/{red}/describe", params={"force": "true"}, headers=auth("key-default"))
        assert reply.status_code == 502 and "bad image" in reply.json()["error"]["message"]
    answerer.close()
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = OpenAICompatAnswerer(base_url=f"http://127.0.0.1:{port}/v1", model="m", timeout_s=5.0, max_retries=0)
    with TestClient(create_app(services=indexed, answerer=down)) as client:
        reply = client.post(f"/v1/pages/{red}/describe", params={"force": "true"}, headers=auth("key-default"))
        assert reply.status_code == 503 and reply.json()["error"]["type"] == "answerer_unreachable"
    down.close()


def test_the_extractive_answerer_cannot_describe(indexed: Services) -> None:
    red = page_ids(indexed)["red.png"]
    with TestClient(create_app(services=indexed, answerer=ExtractiveAnswerer())) as client:
        reply = client.post(f"/v1/pages/{red}/describe", headers=auth("key-default"))
    assert reply.status_code == 503
    assert reply.json()["error"]["type"] == "captions_unavailable"
    assert "MMRAG_ANSWERER__KIND=transformers or openai" in reply.json()["error"]["message"]
