"""A done job over files that did not change: its counts stay, its unchanged items go, and what the upload asked
for (new metadata on the same bytes) still lands. SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.services import Services
from mmrag.store.models import JobItem
from tests.api.conftest import upload, wait_for_job


def test_a_done_job_keeps_its_counts_not_its_unchanged_items(
    services: Services, answerer: ExtractiveAnswerer, corpus: dict[str, Path]
) -> None:
    with TestClient(create_app(services=services, answerer=answerer)) as client:
        photos = [corpus["red"], corpus["blue"]]
        first = wait_for_job(client, upload(client, photos, metadata='{"team": "ops"}')["job_id"])
        assert first["counts"]["indexed"] == 2 and first["items_total"] == 2
        assert {item["state"] for item in first["items"]} == {"indexed"}

        # The same bytes again (uploads are stored by content, so at the same paths), with other metadata.
        again = upload(client, photos, metadata='{"team": "sales"}')
        assert again["job_id"] != first["id"]
        done = wait_for_job(client, again["job_id"])
        assert done["state"] == "done"
        assert (done["counts"]["unchanged"], done["counts"]["indexed"], done["counts"]["pages"]) == (2, 0, 0)
        assert done["items"] == [] and done["items_total"] == 0
        with services.sessions() as session:
            assert session.scalar(select(func.count()).where(JobItem.job_id == done["id"])) == 0

        teams = {d["metadata"]["team"] for d in client.get("/v1/documents").json()["items"]}
        assert teams == {"sales"}
        # The first job is unchanged by the second: its indexed items are still listed.
        assert client.get(f"/v1/jobs/{first['id']}").json()["items_total"] == 2
