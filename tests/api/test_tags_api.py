"""Zero-shot tags over HTTP: hits carry them, POST /v1/search and /v1/ask filter by them (all-of), GET /v1/tags counts
them. A real job with the colour-seeing stand-in CLIP (tests.test_tags), real SQL on SQLite and PostgreSQL."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from tests.test_pipeline import make_settings
from tests.test_tags import LABELS, PALETTE, PHOTOS, ColourClip, expected_tags, make_corpus

TRUTH = {name: expected_tags(colours, LABELS) for name, colours in PHOTOS.items()}


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, database_url)
    settings.tags.labels_file = tmp_path / "labels.txt"
    settings.tags.labels_file.write_text("\n".join(LABELS), encoding="utf-8")
    services: Services = build_services(settings, embedders=Embedders(clip=ColourClip()))
    make_corpus(tmp_path / "corpus")
    run_index(services, [tmp_path / "corpus"])
    with TestClient(create_app(services=services, answerer=ExtractiveAnswerer())) as client:
        yield client
    services.close()


def names(hits: list[dict]) -> list[str]:
    return sorted(Path(hit["path"]).name for hit in hits)


def test_search_hits_carry_their_tags_and_the_filter_keeps_photos_holding_every_tag(client: TestClient) -> None:
    reply = client.post("/v1/search", json={"query": "a red photo", "k": 50, "retrievers": ["clip"]})
    assert reply.status_code == 200, reply.text
    for hit in reply.json()["hits"]:
        name = Path(hit["path"]).name
        assert {tag["name"] for tag in hit["tags"]} == TRUTH.get(name, set()), name
        assert [t["score"] for t in hit["tags"]] == sorted((t["score"] for t in hit["tags"]), reverse=True)
    for wanted in (["red"], ["green"], ["red", "green"], ["blue", "red"]):
        body = {"query": "a photo", "k": 50, "retrievers": ["clip"], "filters": {"tags": wanted}}
        reply = client.post("/v1/search", json=body)
        assert reply.status_code == 200, reply.text
        assert names(reply.json()["hits"]) == sorted(n for n, tags in TRUTH.items() if set(wanted) <= tags), wanted
    # an image search (a form) takes the same filters: a blue query photo, kept to the red ones
    query = io.BytesIO()
    Image.new("RGB", (40, 40), PALETTE["blue"]).save(query, format="PNG")
    reply = client.post("/v1/search", data={"retrievers": "clip", "k": "50", "filters": '{"tags": ["red"]}'},
                        files={"image": ("query.png", query.getvalue(), "image/png")})
    assert reply.status_code == 200, reply.text
    assert names(reply.json()["hits"]) == sorted(n for n, tags in TRUTH.items() if "red" in tags)


def test_ask_retrieves_only_pages_with_the_tags(client: TestClient) -> None:
    reply = client.post("/v1/ask", json={"question": "what is in the photo?", "k": 5, "retrievers": ["clip"],
                                         "filters": {"tags": ["blue"]}})
    assert reply.status_code == 200, reply.text
    assert names(reply.json()["pages"]) == ["blue-1.png"]


def test_tag_counts_over_the_collection_and_over_what_a_filter_keeps(client: TestClient) -> None:
    def oracle(among: dict[str, set[str]]) -> list[dict]:
        counted = Counter(tag for tags in among.values() for tag in tags)
        return [{"tag": t, "count": n} for t, n in sorted(counted.items(), key=lambda item: (-item[1], item[0]))]

    reply = client.get("/v1/tags")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"tags": oracle(TRUTH), "meaningless": False}
    narrowed = client.get("/v1/tags", params={"tag": ["red"], "collection": ["default"]}).json()["tags"]
    assert narrowed == oracle({n: tags for n, tags in TRUTH.items() if "red" in tags})
    assert client.get("/v1/tags", params={"limit": 1}).json()["tags"] == oracle(TRUTH)[:1]
    assert client.get("/v1/tags", params={"kind": "pdf"}).json()["tags"] == []


def test_bad_tag_requests_are_refused(client: TestClient) -> None:
    assert client.get("/v1/tags", params={"collection": ["nowhere"]}).status_code == 404
    assert client.get("/v1/tags", params={"tag": ["x" * 101]}).status_code == 422
    assert client.get("/v1/tags", params={"limit": 0}).status_code == 422
    body = {"query": "a photo", "filters": {"tags": [""]}}
    assert client.post("/v1/search", json=body).status_code == 422
    body["filters"] = {"tags": "red"}  # a list, not a string
    assert client.post("/v1/search", json=body).status_code == 422
    schema = client.get("/openapi.json").json()
    assert "tags" in schema["components"]["schemas"]["Filters"]["properties"]
    assert "/v1/tags" in schema["paths"]
