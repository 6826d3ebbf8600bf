"""Evidence regions over HTTP: search hits carry the boxes of the words that matched, citations the boxes of the
quoted line, from the text layer of a PDF and from OCR of a scan. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.config import IngestSettings
from mmrag.layout import Word, iou, locate, union
from mmrag.qa import check_citations
from mmrag.services import Services, build_services
from mmrag.types import Answer, Citation, RetrievedPage
from tests.api.conftest import live_server, make_settings, sse_events, upload, wait_for_job
from tests.ingest.samples import text_image, text_pdf


@pytest.fixture
def ocr_services(tmp_path: Path, database_url: str, tiny_embedders) -> Services:  # noqa: ANN001 - Embedders
    settings = make_settings(tmp_path / "data", database_url)
    settings = settings.model_copy(update={"ingest": IngestSettings(workers=0, ocr="auto", second_ocr="never")})
    services = build_services(settings, embedders=tiny_embedders)
    yield services
    services.close()


def test_hits_and_citations_point_at_their_words(ocr_services: Services, tmp_path: Path) -> None:
    pdf = text_pdf(tmp_path / "invoice.pdf", ["Invoice INV-2024-0117\nAcme Tools GmbH\nTotal due: 1,250.00 EUR"])
    scan = tmp_path / "receipt.png"
    text_image(["GIN KEE HARDWARE", "Date 18/10/2017", "TOTAL 42.35"], size=(900, 380)).save(scan)
    app = create_app(services=ocr_services, answerer=ExtractiveAnswerer())
    with live_server(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        assert wait_for_job(client, upload(client, [pdf, scan])["job_id"])["state"] == "done"

        hits = client.post("/v1/search", json={"query": "Gin Kee receipt of 2017-10-18", "k": 2}).json()["hits"]
        receipt = next(h for h in hits if h["path"].endswith(".png"))  # uploads are stored by digest
        marked = {r["text"]: r for r in receipt["highlights"] if r["source"] != "similarity_map"}
        assert {"GIN", "KEE", "18/10/2017"} <= set(marked)  # words, and a date written another way
        assert all(r["source"] == "ocr" for r in marked.values())
        mapped = [r for r in receipt["highlights"] if r["source"] == "similarity_map"]  # the tiny ColQwen2's map
        assert mapped and all(0 <= v <= 1 for r in mapped for v in r["box"])
        assert mapped == receipt["highlights"][-len(mapped):]  # after the words
        gin, date = marked["GIN"]["box"], marked["18/10/2017"]["box"]
        assert gin[1] < date[1] and 0 < gin[0] < gin[2] < 0.5  # the first line, left; the date below it
        assert abs(gin[0] - 40 / 900) < 0.02 and abs(gin[1] - 40 / 380) < 0.04  # drawn at (40, 40)

        off = client.post("/v1/search", json={"query": "Gin Kee", "k": 2, "highlight": False}).json()["hits"]
        assert off and all(h["highlights"] == [] for h in off)
        bad = client.post("/v1/search", json={"query": "Gin Kee", "highlight": "sometimes"})
        assert bad.status_code == 422 and "highlight" in bad.text

        answer = client.post("/v1/ask", json={"question": "What is the total due on invoice INV-2024-0117?"}).json()
        assert answer["supported"], answer
        cited = answer["citations"][0]
        assert cited["path"].endswith(".pdf") and "1,250.00" in cited["quote"]
        assert answer["answer"].startswith("1,250.00 [1]")  # the value first
        value, region = cited["regions"]  # the value's own box, then its line's
        assert value["text"] == "1,250.00" and region["text"] == "Total due: 1,250.00 EUR"
        assert region["source"] == value["source"] == "text_layer" and region["score"] == 1.0
        x0, y0, x1, y1 = region["box"]
        assert 0 < x0 < x1 < 1 and 0 < y0 < y1 < 0.2  # the third line near the top of an A4 page
        assert x0 < value["box"][0] < value["box"][2] < x1 and y0 <= value["box"][1] < value["box"][3] <= y1
        retrieved = {p["page_id"] for p in answer["pages"]}
        assert all(c["page_id"] in retrieved for c in answer["citations"])
        with client.stream("POST", "/v1/ask", json={"question": "What is the total due on invoice INV-2024-0117?",
                                                    "stream": True}) as response:
            events = sse_events(response.read().decode())
        assert events[-1][0] == "answer" and events[-1][1]["citations"][0]["regions"] == cited["regions"]

        # the evidence drawn on the page, for clients without a UI
        url = cited["image_url"]
        boxes = ";".join(",".join(str(v) for v in r["box"]) for r in cited["regions"])
        drawn = client.get(url, params={"regions": boxes})
        assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/jpeg"
        assert _colour_share(drawn.content, region["box"], (255, 140, 0)) > 0.3  # orange around the quoted line
        plain = client.get(url).content
        assert _colour_share(plain, region["box"], (255, 140, 0)) == 0
        marked = client.get(receipt["image_url"], params={"highlight": "Gin Kee", "size": "thumbnail"})
        assert marked.status_code == 200 and _colour_share(marked.content, gin, (30, 144, 255)) > 0.3
        for bad in ("1,2,3", "0.5,0.5,0.2,0.9", "a,b,c,d", "0,0,1,1;" * 101, ";"):
            refused = client.get(url, params={"regions": bad})
            assert refused.status_code == 422 and "regions" in refused.text, bad
        assert client.get(url, params={"highlight": ""}).status_code == 422


def _colour_share(jpeg: bytes, box: list[float], colour: tuple[int, int, int]) -> float:
    """The share of the pixels on a box's outline (just outside it) within a JPEG's error of `colour`."""
    image = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height))
    edge = np.concatenate([image[max(0, y0 - 2), x0:x1], image[min(height - 1, y1 + 1), x0:x1]])
    return float((np.abs(edge - np.array(colour)).max(axis=1) < 60).mean())


def _page(page_id: int, words: list[Word], text: str) -> RetrievedPage:
    return RetrievedPage(page_id, 1, 1, f"/docs/{page_id}.png", 0.5, text, None, tuple(words), "ocr")


def test_a_citation_has_regions_only_on_a_retrieved_page_it_quotes() -> None:
    words = [Word("TOTAL", (0.1, 0.8, 0.3, 0.85), 91, 7), Word("42.35", (0.6, 0.8, 0.8, 0.85), 88, 7),
             Word("CASH", (0.1, 0.86, 0.25, 0.9), 90, 8)]
    page = _page(1, words, "GIN KEE\nTOTAL 42.35\nCASH 50.00")
    quoted = Citation(1, 1, 1, "/docs/1.png", 0.5, "TOTAL 42.35")
    stranger = Citation(9, 9, 1, "/docs/9.png", 0.5, "TOTAL 42.35")  # a page that was not retrieved
    answer = check_citations(Answer("TOTAL 42.35 [1] [2]", [quoted, stranger], True, "test"), [page])
    (citation,) = answer.citations
    (region,) = citation.regions
    assert region.box == union(w.box for w in words[:2]) and region.text == "TOTAL 42.35" and region.source == "ocr"
    assert answer.text == "TOTAL 42.35 [1]"
    # an answer with a value: its first citation's regions lead with the value's own box
    valued = check_citations(Answer("42.35 [1]", [quoted], True, "test", value="42.35"), [page])
    assert [r.text for r in valued.citations[0].regions] == ["42.35", "TOTAL 42.35"]
    assert valued.citations[0].regions[0].box == words[1].box
    # a quote the page's words read a little differently (a model's quote against OCR's words) still finds them
    (fuzzy,) = locate("Total: 42.35 RM", words, "ocr")
    assert iou(fuzzy.box, region.box) == 1.0 and fuzzy.score == pytest.approx(2 / 3, abs=1e-3)
    assert locate("CHANGE 7.65 RM", words, "ocr") == []  # not on the page
    # a page without stored words (indexed before they were) answers as before, without regions
    bare = check_citations(Answer("x [1]", [quoted], True, "t"), [dataclasses.replace(page, words=())])
    assert bare.citations[0].quote == "TOTAL 42.35" and bare.citations[0].regions == ()
