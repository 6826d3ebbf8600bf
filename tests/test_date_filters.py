"""Dates as fields: each page's dates recorded at index time (and by migration 0005 for pages indexed before), and
search filtered by a date range, through the library and the API. Real jobs, real SQL (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.indexing import delete_documents, run_index
from mmrag.retrieval import search
from mmrag.services import Services
from mmrag.store.db import downgrade, upgrade
from mmrag.store.models import Page, PageDate
from mmrag.types import SearchFilters
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from tests.factories import make_pdf
from tests.test_pipeline import make_settings

RECEIPTS = {
    "october.pdf": ["GIN KEE HARDWARE receipt dated 18/10/2017 total 42.35"],
    "november.pdf": ["GIN KEE HARDWARE receipt 03 Nov 2017 total 17.00"],
    # two dates on one page: it is found by either
    "january.pdf": ["GIN KEE HARDWARE invoice 2018-01-05 payment due 2018-02-01 total 99.10"],
    "undated.pdf": ["GIN KEE HARDWARE price list, no date at all"],
}


@pytest.fixture
def services(tmp_path: Path, database_url: str, tiny_embedders: Embedders) -> Iterator[Services]:
    services = build_services(make_settings(tmp_path, database_url), embedders=tiny_embedders)
    yield services
    services.close()


def index_receipts(services: Services, root: Path) -> None:
    for name, pages in RECEIPTS.items():
        make_pdf(root / name, pages)
    report = run_index(services, [root])
    assert report.counts["indexed"] == len(RECEIPTS)


def found(services: Services, **filters: date) -> list[str]:
    hits = search(services, "default", text="gin kee hardware", k=10, retrievers=["lexical"],
                  filters=SearchFilters(**filters))
    return sorted(Path(hit.path).name for hit in hits)


def test_search_keeps_the_pages_holding_a_date_in_range(services: Services, tmp_path: Path) -> None:
    index_receipts(services, tmp_path / "receipts")
    assert found(services) == sorted(RECEIPTS)
    assert found(services, date_from=date(2017, 10, 1), date_to=date(2017, 10, 31)) == ["october.pdf"]
    assert found(services, date_from=date(2017, 10, 18), date_to=date(2017, 10, 18)) == ["october.pdf"]  # inclusive
    assert found(services, date_from=date(2017, 11, 1)) == ["january.pdf", "november.pdf"]
    assert found(services, date_from=date(2018, 1, 20)) == ["january.pdf"]  # by its second date
    assert found(services, date_to=date(2017, 10, 17)) == []
    # a deleted document's dates go with its pages
    with services.sessions() as session:
        before = session.scalar(select(PageDate.page_id).where(PageDate.date == date(2017, 10, 18)))
    hit = search(services, "default", text="gin kee", k=1, retrievers=["lexical"],
                 filters=SearchFilters(date_from=date(2017, 10, 18), date_to=date(2017, 10, 18)))[0]
    assert hit.page_id == before
    delete_documents(services, "default", document_ids=[hit.document_id])
    with services.sessions() as session:
        assert session.scalar(select(PageDate.page_id).where(PageDate.page_id == before)) is None


def test_pages_indexed_before_the_dates_were_kept_get_them_on_upgrade(services: Services, tmp_path: Path) -> None:
    index_receipts(services, tmp_path / "receipts")
    with services.sessions() as session:
        recorded = set(session.execute(select(PageDate.page_id, PageDate.date)))
    downgrade(services.engine, "0004")
    upgrade(services.engine)
    with services.sessions() as session:
        assert set(session.execute(select(PageDate.page_id, PageDate.date))) == recorded
        assert len(recorded) == 4 and session.scalar(select(Page.id).limit(1)) is not None
    with services.sessions.begin() as session:  # and a page with no date has none
        session.execute(delete(PageDate))
    assert found(services, date_from=date(2000, 1, 1)) == []


def test_the_api_filters_by_date_and_refuses_a_range_backwards(
    services: Services, tmp_path: Path
) -> None:
    index_receipts(services, tmp_path / "receipts")
    with TestClient(create_app(services=services, answerer=ExtractiveAnswerer())) as client:
        body = {"query": "gin kee hardware", "k": 10, "retrievers": ["lexical"],
                "filters": {"date_from": "2017-11-01", "date_to": "2017-12-31"}}
        reply = client.post("/v1/search", json=body)
        assert reply.status_code == 200, reply.text
        assert [Path(hit["path"]).name for hit in reply.json()["hits"]] == ["november.pdf"]
        body["filters"] = {"date_from": "2018-01-01", "date_to": "2017-01-01"}
        refused = client.post("/v1/search", json=body)
        assert refused.status_code == 422 and "date_from is after date_to" in refused.text
        body["filters"] = {"date_from": "18/10/2017"}
        assert client.post("/v1/search", json=body).status_code == 422
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert {"date_from", "date_to"} <= set(schema["Filters"]["properties"])
