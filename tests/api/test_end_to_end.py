"""Acceptance 1: the real app under uvicorn on a loopback port, over HTTP: index (upload and a server-side job) →
search by text and by image → ask, plain and streamed → delete → the deleted pages are gone. SQLite and PostgreSQL."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from PIL import Image

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.services import Services
from tests.api.conftest import live_server, sse_events, upload, wait_for_job


def test_index_search_ask_delete_over_http(
    services: Services, answerer: ExtractiveAnswerer, corpus: dict[str, Path]
) -> None:
    app = create_app(services=services, answerer=answerer)
    with live_server(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready").json()
        assert ready["status"] == "ready" and ready["database"] is True
        assert set(ready["retrievers_on"]) == {"clip", "colpali", "text", "lexical", "dates"}
        assert ready["answerer"] == "extractive"

        # --- index: an upload, and a server-side folder as a background job
        accepted = upload(
            client, [corpus["invoice"], corpus["menu"], corpus["red"], corpus["blue"]], metadata='{"team": "ops"}'
        )
        assert [f["kind"] for f in accepted["files"]] == ["pdf", "pdf", "image", "image"]
        assert accepted["status_url"] == f"/v1/jobs/{accepted['job_id']}"
        job = wait_for_job(client, accepted["job_id"])
        assert job["state"] == "done", job
        assert job["counts"]["indexed"] == 4 and job["counts"]["pages"] == 5 and job["failures"] == []
        assert all(item["document_id"] for item in job["items"])

        submitted = client.post("/v1/jobs", json={"root": "corpus", "path": "reports"})
        assert submitted.status_code == 202, submitted.text
        assert wait_for_job(client, submitted.json()["job_id"])["counts"]["indexed"] == 1

        listing = client.get("/v1/documents", params={"limit": 10}).json()
        assert listing["total"] == 5
        by_name = {d["metadata"].get("filename", Path(d["paths"][0]).name): d for d in listing["items"]}
        invoice = by_name["invoice.pdf"]
        assert invoice["status"] == "indexed" and invoice["page_count"] == 2 and invoice["metadata"]["team"] == "ops"
        filtered = client.get("/v1/documents", params={"metadata": "team=ops", "kind": "pdf"}).json()
        assert {d["id"] for d in filtered["items"]} == {invoice["id"], by_name["menu.pdf"]["id"]}

        # --- search by text: hits carry fused and per-retriever scores, a snippet and image URLs
        hits = client.post("/v1/search", json={"query": "invoice INV-2024-0117 total due", "k": 10}).json()["hits"]
        top = next(h for h in hits if h["document_id"] == invoice["id"] and h["page_number"] == 1)
        assert set(top["scores"]) == {"clip", "colpali", "lexical"}  # dense text weighs 0 by default: not run
        named = client.post("/v1/search", json={"query": "invoice total", "k": 3, "retrievers": ["text", "lexical"]})
        assert "text" in named.json()["hits"][0]["scores"]  # named, it runs
        assert "INV-2024-0117" in top["snippet"]
        lexical = client.post(
            "/v1/search", json={"query": "INV-2024-0117", "retrievers": ["lexical"], "k": 3}
        ).json()["hits"]
        assert (lexical[0]["document_id"], lexical[0]["page_number"]) == (invoice["id"], 1)
        full = client.get(top["image_url"])
        thumbnail = client.get(top["thumbnail_url"])
        assert full.headers["content-type"] == thumbnail.headers["content-type"] == "image/jpeg"
        full_size = Image.open(io.BytesIO(full.content)).size
        assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 256 < max(full_size)

        # --- search by image (multipart upload): the same picture comes first
        image_hits = client.post(
            "/v1/search", files={"image": ("q.png", corpus["blue"].read_bytes())}, data={"k": "3"}
        ).json()["hits"]
        assert image_hits[0]["document_id"] == by_name["blue.png"]["id"]
        assert set(image_hits[0]["scores"]) == {"clip"}

        # --- ask: plain, then streamed
        question = {"question": "What is the total due on the Acme Tools invoice?", "k": 3}
        answer = client.post("/v1/ask", json=question).json()
        assert answer["supported"] is True and answer["answerer"] == "extractive"
        assert "1,250.00" in answer["answer"]
        retrieved = {p["page_id"] for p in answer["pages"]}
        assert answer["citations"] and {c["page_id"] for c in answer["citations"]} <= retrieved
        assert answer["citations"][0]["document_id"] == invoice["id"] and answer["citations"][0]["page_number"] == 1
        invoice_page_ids = {c["page_id"] for c in answer["citations"]}

        with client.stream("POST", "/v1/ask", json={**question, "stream": True}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response.read().decode())
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "retrieved" and kinds[-1] == "answer" and "token" in kinds
        assert set(kinds[1:-1]) == {"token"}
        streamed = events[-1][1]
        assert streamed["supported"] is True
        assert {c["page_id"] for c in streamed["citations"]} <= {p["page_id"] for p in events[0][1]["pages"]}
        assert "".join(data["text"] for kind, data in events if kind == "token").strip() == streamed["answer"]

        unsupported = client.post("/v1/ask", json={"question": "Who won the football world cup in 1954?"}).json()
        assert unsupported["supported"] is False and unsupported["citations"] == []
        assert unsupported["answer"] == "The indexed pages do not answer this."

        # --- delete: the document, its pages and their images are gone
        deleted = client.delete(f"/v1/documents/{invoice['id']}")
        assert deleted.status_code == 200 and deleted.json() == {"document_id": invoice["id"], "status": "deleted"}
        assert client.get(f"/v1/documents/{invoice['id']}").status_code == 404
        assert client.delete(f"/v1/documents/{invoice['id']}").status_code == 404
        assert client.get(top["image_url"]).status_code == 404
        after = client.post("/v1/search", json={"query": "invoice INV-2024-0117 total due", "k": 100}).json()["hits"]
        assert after and not {h["page_id"] for h in after} & invoice_page_ids
        assert invoice["id"] not in {h["document_id"] for h in after}
        again = client.post("/v1/ask", json=question).json()
        assert not {c["page_id"] for c in again["citations"]} & invoice_page_ids
        assert client.get("/v1/documents").json()["total"] == 4

        # --- metrics: latency by route template, retrieval and generation time, index sizes
        metrics = client.get("/metrics").text
        assert 'mmrag_http_request_duration_seconds_count{method="POST",route="/v1/search",status="200"}' in metrics
        assert 'route="/v1/documents/{document_id}"' in metrics
        assert "mmrag_retrieval_seconds_count" in metrics
        assert 'mmrag_generation_seconds_count{answerer="extractive"}' in metrics
        assert 'mmrag_index_documents{collection="default",status="indexed"} 4.0' in metrics
        assert 'mmrag_index_documents{collection="default",status="deleted"} 1.0' in metrics
        assert 'mmrag_index_pages{collection="default"} 4.0' in metrics
