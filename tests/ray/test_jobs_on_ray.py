"""Bulk jobs on a real local Ray (ray.init(num_cpus=2)): load tasks and embed actors make the collection a job in one
process makes (pages, SQL rows, failures with their reasons, every retriever's scores); a file that kills its Ray
worker fails alone with its reason; an API-submitted job on a service configured with a Ray address reports as a
local one does; resources the cluster cannot give are a clear error. SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmrag.config import RaySettings
from mmrag.errors import ConfigError
from mmrag.indexing import run_index
from mmrag.retrieval import search
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.store import repository
from tests.conftest import database
from tests.factories import add_bad_files, make_corpus, make_image, make_pdf
from tests.test_pipeline import assert_stores_agree_with_sql, make_settings

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray of 2 CPUs for the module (starting one takes seconds): every job here runs on it."""
    ray.init(num_cpus=2, object_store_memory=150 * 1024 * 1024, namespace="mmrag-tests", log_to_driver=False,
             include_dashboard=False)
    yield
    ray.shutdown()


def ray_settings(root: Path, database_url: str, **options: object):
    return make_settings(root, database_url, ray=RaySettings(address="auto", **options))


def make_job_corpus(root: Path) -> dict[str, Path]:
    """Photos, PDFs with text, a copy, bad files, and a PDF long enough to be read in several ranges (load tasks)."""
    files = make_corpus(root, images=5, pdfs=2)
    shutil.copy(files["img1"], root / "images" / "copy-of-img1.png")
    files.update(add_bad_files(root))
    files["long"] = make_pdf(root / "pdfs" / "long.pdf", [f"long report page {n} section {n * 7}" for n in range(19)])
    return files


def ranked(services: Services, **query: object) -> list[tuple[str, int, float]]:
    return [(Path(r.path).name, r.page_number, round(r.score, 4)) for r in search(services, "default", k=40, **query)]


def test_a_job_on_ray_makes_the_collection_a_local_job_makes(
    local_ray: None, tmp_path: Path, database_url: str, tiny_embedders: Embedders
) -> None:
    corpus = tmp_path / "corpus"
    files = make_job_corpus(corpus)
    (tmp_path / "local").mkdir()
    kind = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    with database(kind, tmp_path / "local") as local_url:
        local = build_services(make_settings(tmp_path / "local", local_url), embedders=tiny_embedders)
        on_ray = build_services(ray_settings(tmp_path / "ray", database_url), embedders=tiny_embedders)
        try:
            _compare(local, on_ray, corpus, files)
        finally:
            local.close()
            on_ray.close()


def _compare(local: Services, on_ray: Services, corpus: Path, files: dict[str, Path]) -> None:
    from mmrag.ingest import load_image

    expected = run_index(local, [corpus])
    report = run_index(on_ray, [corpus])
    assert report.counts == expected.counts
    assert (report.counts["indexed"], report.counts["duplicate"], report.counts["failed"]) == (8, 1, 4)
    assert report.counts["pages"] == 5 + 2 * 2 + 19
    assert sorted(report.failures) == sorted(expected.failures)  # each bad file, with the same reason
    assert report.stages["waiting_on_actors"] >= 0 and report.retrievers_on == expected.retrievers_on
    assert_stores_agree_with_sql(on_ray)
    # The actors loaded the same seeded models from the settings: every retriever ranks and scores alike.
    for retriever in ("clip", "colpali", "text", "lexical"):
        query = "long report page 7 section 49"
        assert ranked(on_ray, text=query, retrievers=[retriever]) == ranked(
            local, text=query, retrievers=[retriever]
        ), retriever
    photo = load_image(files["img2"], max_pixels=10**7)
    assert ranked(on_ray, image=photo) == ranked(local, image=photo)

    again = run_index(on_ray, [corpus])  # nothing changed: a second job on Ray reads nothing again
    assert again.counts["unchanged"] == 8 + 1 + 4 and again.counts["indexed"] == 0 and again.pages_indexed == 0


def test_a_file_that_kills_its_ray_worker_fails_alone(local_ray: None, tmp_path: Path,
                                                     tiny_embedders: Embedders) -> None:
    from mmrag.indexing.distributed import ray_stages
    from tests.crashing_loader import load_or_crash

    settings = ray_settings(tmp_path, f"sqlite:///{tmp_path / 'crash.db'}", max_retries=1)
    services = build_services(settings, embedders=tiny_embedders)
    corpus = tmp_path / "corpus"
    make_corpus(corpus, images=5, pdfs=1)
    make_image(corpus / "images" / "crash-me.png", 77)
    try:
        report = run_index(services, [corpus], stages=ray_stages(settings, load_file=load_or_crash))
        assert report.counts["indexed"] == 6 and report.counts["failed"] == 1
        [(path, reason)] = report.failures
        assert path.endswith("crash-me.png") and "worker process died" in reason
        assert_stores_agree_with_sql(services)
    finally:
        services.close()


def test_an_api_job_runs_on_the_services_ray_and_reports_as_a_local_one(
    local_ray: None, tmp_path: Path, database_url: str, tiny_embedders: Embedders
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from mmrag.answer.extractive import ExtractiveAnswerer
    from tests.api.conftest import make_corpus as make_api_corpus
    from tests.api.conftest import make_settings as make_api_settings
    from tests.api.conftest import upload, wait_for_job

    files = make_api_corpus(tmp_path / "corpus")
    jobroot = tmp_path / "corpus" / "jobroot"
    (jobroot / "reports" / "broken.pdf").write_bytes(b"%PDF-1.7\ngarbage without xref")
    settings = make_api_settings(tmp_path / "data", database_url, job_roots={"corpus": jobroot})
    settings.ray = RaySettings(address="auto")
    services = build_services(settings, embedders=tiny_embedders)
    try:
        with TestClient(create_app(services=services, answerer=ExtractiveAnswerer())) as client:
            uploaded = wait_for_job(client, upload(client, [files["invoice"], files["red"]])["job_id"])
            assert uploaded["state"] == "done"
            assert (uploaded["counts"]["indexed"], uploaded["counts"]["pages"]) == (2, 3)
            submitted = client.post("/v1/jobs", json={"root": "corpus", "path": "reports"})
            assert submitted.status_code == 202, submitted.text
            job = wait_for_job(client, submitted.json()["job_id"])
            assert (job["state"], job["counts"]["indexed"], job["counts"]["failed"]) == ("done", 1, 1)
            [failed] = [item for item in job["items"] if item["state"] == "failed"]
            assert failed["path"].endswith("broken.pdf") and "cannot open PDF" in failed["error"]
            assert [f["path"] for f in job["failures"]] == [failed["path"]]
            with services.sessions() as session:
                assert repository.job_counts(session, job["id"]) == job["counts"]
            query = {"query": "Acme Tools invoice", "k": 3, "retrievers": ["lexical"]}
            hits = client.post("/v1/search", json=query).json()["hits"]
            assert hits and hits[0]["name"] == "invoice.pdf"
        assert_stores_agree_with_sql(services)
    finally:
        services.close()


def test_actors_the_cluster_cannot_hold_are_a_clear_error(local_ray: None, tmp_path: Path,
                                                         tiny_embedders: Embedders) -> None:
    make_corpus(tmp_path / "corpus", images=1, pdfs=0)
    for options, words in (({"gpus_per_actor": 1.0}, "no node of the Ray cluster has 1 GPUs"),
                           ({"cpus_per_actor": 1.0}, "no room for a load task")):
        settings = ray_settings(tmp_path / str(len(words)), f"sqlite:///{tmp_path / f'{len(words)}.db'}", **options)
        services = build_services(settings, embedders=tiny_embedders)
        try:
            with pytest.raises(ConfigError, match=words):
                run_index(services, [tmp_path / "corpus"])
            with services.sessions() as session:  # nothing was lost: the job waits to be resumed
                job = repository.find_unfinished_job(session, 1, [str((tmp_path / "corpus").resolve())])
                assert job is not None
        finally:
            services.close()
