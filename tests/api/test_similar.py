"""GET /v1/pages/{id}/similar: a page's near-duplicates over HTTP (SQLite and PostgreSQL, real FAISS, the real job).

The image vectors are the deterministic stand-in's (mmrag.embedders.perceptual), passed in through the ImageEmbedder
contract: NOT CLIP, whose tiny random weights could not tell a copy from any other photo."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from tests.test_near_duplicates import THRESHOLD, make_photos, make_settings, page_ids_by_name, stand_in


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, set[str]]:
    return make_photos(tmp_path / "corpus")


def test_similar_pages_over_http(tmp_path: Path, database_url: str, corpus: dict[str, set[str]]) -> None:
    settings = make_settings(tmp_path, database_url)
    settings.api.keys = {"reader-key": ["default"], "other-key": ["elsewhere"]}
    services = build_services(settings, embedders=stand_in())
    try:
        run_index(services, [tmp_path / "corpus"])
        ids = page_ids_by_name(services)
        with TestClient(create_app(services=services, answerer=ExtractiveAnswerer())) as client:
            client.headers["Authorization"] = "Bearer reader-key"
            response = client.get(f"/v1/pages/{ids['p0.png']}/similar", params={"threshold": THRESHOLD})
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["page_id"], body["collection"], body["threshold"], body["meaningless"]) == (
                ids["p0.png"], "default", THRESHOLD, False
            )
            assert {Path(page["path"]).name for page in body["pages"]} == corpus["p0"] - {"p0.png"}
            similarities = [page["similarity"] for page in body["pages"]]
            assert similarities == sorted(similarities, reverse=True) and min(similarities) >= THRESHOLD
            first = body["pages"][0]
            assert first["image_url"] == f"/v1/pages/{first['page_id']}/image"
            assert first["thumbnail_url"] == f"/v1/pages/{first['page_id']}/image?size=thumbnail"
            assert first["name"] == Path(first["path"]).name and first["page_number"] == 1
            assert client.get(f"/v1/pages/{first['page_id']}/image").status_code == 200

            limited = client.get(f"/v1/pages/{ids['p0.png']}/similar", params={"threshold": THRESHOLD, "limit": 1})
            assert [p["page_id"] for p in limited.json()["pages"]] == [first["page_id"]]
            lone = client.get(f"/v1/pages/{ids['lone5.png']}/similar", params={"threshold": THRESHOLD})
            assert lone.status_code == 200 and lone.json()["pages"] == []

            missing = client.get("/v1/pages/999999/similar")
            assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
            for bad in ({"threshold": 0}, {"threshold": 1.5}, {"limit": 0}, {"limit": 101}):
                refused = client.get(f"/v1/pages/{ids['p0.png']}/similar", params=bad)
                assert refused.status_code == 422 and refused.json()["error"]["type"] == "invalid", bad
            assert client.get("/v1/pages/0/similar").status_code == 422
            # a key that may not read the page's collection finds no such page
            other = client.get(f"/v1/pages/{ids['p0.png']}/similar", headers={"Authorization": "Bearer other-key"})
            assert other.status_code == 404 and "does not exist" in other.json()["error"]["message"]
            assert client.get(f"/v1/pages/{ids['p0.png']}/similar", headers={"Authorization": ""}).status_code == 401
            assert "/v1/pages/{page_id}/similar" in client.get("/openapi.json").json()["paths"]
    finally:
        services.close()

    # The same pages served without CLIP: the model the request needs is not loaded (503), as for an image search
    without_clip = build_services(settings, embedders=Embedders(off={"clip": "disabled in settings"}))
    try:
        with TestClient(create_app(services=without_clip, answerer=ExtractiveAnswerer())) as client:
            off = client.get(f"/v1/pages/{ids['p0.png']}/similar", headers={"Authorization": "Bearer reader-key"})
            assert off.status_code == 503, off.text
            assert off.json()["error"]["type"] == "model_unavailable" and "disabled in settings" in off.text
    finally:
        without_clip.close()
