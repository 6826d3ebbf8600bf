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


# Twelve receipts of one shop, alike but for their dates and totals (the shared set has 22 from one hardware shop):
# the words name the shop, only the date names the receipt.
SHOP_DAYS = ["03/10/2017", "09/10/2017", "12/10/2017", "18/10/2016", "18/10/2017", "21/10/2017", "02/11/2017",
             "09/11/2017", "16/11/2017", "23/11/2017", "30/11/2017", "07/12/2017"]


def index_shop(services: Services, root: Path) -> None:
    for i, day in enumerate(SHOP_DAYS):
        lines = f"SYARIKAT PERNIAGAAN GIN KEE (81109-A) NO 290 JALAN AIR PANAS Date {day} Cash Total {10 + i}.35"
        make_pdf(root / f"r{i:02d}.pdf", [lines])
    assert run_index(services, [root]).counts["indexed"] == len(SHOP_DAYS)


def ranked(services: Services, query: str, retrievers: list[str]) -> list[str]:
    return [Path(hit.path).name for hit in search(services, "default", text=query, k=5, retrievers=retrievers)]


@pytest.mark.parametrize(
    "query",
    ["the Gin Kee receipt from 18/10/2017", "Gin Kee 18 October 2017: what was the total?", "gin kee 2017-10-18",
     "GIN KEE receipt dated 18-10-17"],
)
def test_the_date_in_a_question_finds_the_one_receipt_of_that_day_among_a_shops_many(
    services: Services, tmp_path: Path, query: str
) -> None:
    index_shop(services, tmp_path / "shop")
    assert ranked(services, query, ["lexical", "dates"])[0] == "r04.pdf"
    hits = search(services, "default", text=query, k=3, retrievers=["lexical", "dates"])
    assert hits[0].scores["dates"] == 2.0 and "dates" not in hits[2].scores  # a full date; no date of the query
    # the printed year misread (2016 for 2017): the month and day still meet, after the exact date
    assert ranked(services, query, ["lexical", "dates"])[1] == "r03.pdf"
    assert hits[1].scores["dates"] == 1.0


def test_a_question_with_the_month_and_day_only_meets_every_year(services: Services, tmp_path: Path) -> None:
    index_shop(services, tmp_path / "shop")
    assert sorted(ranked(services, "the Gin Kee receipt from October 18th", ["lexical", "dates"])[:2]) == [
        "r03.pdf", "r04.pdf",
    ]


def test_a_question_without_a_date_asks_nothing_of_the_dates_retriever(services: Services, tmp_path: Path) -> None:
    index_shop(services, tmp_path / "shop")
    with_dates = search(services, "default", text="gin kee total", k=5, retrievers=["lexical", "dates"])
    assert [hit.page_id for hit in with_dates] == [
        hit.page_id for hit in search(services, "default", text="gin kee total", k=5, retrievers=["lexical"])
    ]
    assert all("dates" not in hit.scores for hit in with_dates)


def test_another_shops_receipt_of_that_day_is_not_put_first(services: Services, tmp_path: Path) -> None:
    index_shop(services, tmp_path / "shop")
    make_pdf(tmp_path / "other" / "other.pdf", ["KEDAI PAPAN YEW CHUAN Date 18/10/2017 Total 5.00"])
    run_index(services, [tmp_path / "other"])
    dated = search(services, "default", text="gin kee 18/10/2017", k=5, retrievers=["dates"])
    assert [Path(hit.path).name for hit in dated] == ["r04.pdf", "r03.pdf"]  # that shop's: the day, then 2016's
    assert ranked(services, "gin kee 18/10/2017", ["lexical", "dates"])[0] == "r04.pdf"
    # a date alone: every page holding it
    alone = search(services, "default", text="18/10/2017", k=5, retrievers=["dates"])
    assert sorted(Path(hit.path).name for hit in alone if hit.scores["dates"] == 2.0) == ["other.pdf", "r04.pdf"]
