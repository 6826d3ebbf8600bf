"""The driver of a Ray job (`mmrag index --ray ADDRESS`) killed with kill -9 twice mid-job, on a cluster that outlives
it; re-running the command resumes from SQL: every file indexed exactly once, no vector lost or doubled, and Ray
has dropped the killed drivers' actors. SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mmrag.config import DatabaseSettings, EmbedderSettings, Settings
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from mmrag.store.models import JobItem, Page
from tests.test_crash import _kill_when, assert_each_file_indexed_once, make_crash_corpus
from tests.test_pipeline import assert_stores_agree_with_sql

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": 100 * 1024 * 1024, "include_dashboard": False,
    })
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def _start(corpus: Path, address: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", "index", "--ray", address, str(corpus)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )


def test_kill_9_the_driver_then_resume(cluster: Any, tmp_path: Path, database_url: str,
                                       tiny_embedders: Embedders) -> None:
    corpus = tmp_path / "corpus"
    files = make_crash_corpus(corpus)
    env = {
        **os.environ,
        "MMRAG_DATA_DIR": str(tmp_path / "data"),
        "MMRAG_DATABASE__URL": database_url,
        "MMRAG_EMBEDDERS__PROFILE": "tiny-random",
        "MMRAG_INGEST__OCR": "never",
        "MMRAG_BATCH_PAGES": "2",
        "MMRAG_RAY__TASKS_IN_FLIGHT": "2",
        "PYTHONPATH": str(ROOT),
    }
    for at_least in (2, 14):
        seen = _kill_when(_start(corpus, cluster.address, env), database_url, at_least, timeout=240)
        assert seen < len(files), "the kill came too late to test anything"
    final = _start(corpus, cluster.address, env)
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr.decode()[-3000:]

    settings = Settings(data_dir=tmp_path / "data", database=DatabaseSettings(url=database_url),
                        embedders=EmbedderSettings(profile="tiny-random"))
    services = build_services(settings, embedders=tiny_embedders)
    try:
        with services.sessions() as session:
            assert_each_file_indexed_once(session, files)
            assert session.scalar(select(func.count()).select_from(Page)) == 24 + 4 * 3
            states = session.scalars(select(JobItem.state).where(JobItem.job_id == 1)).all()
            assert set(states) == {"indexed"} and len(states) == len(files)
            attempts = session.scalars(select(JobItem.attempts).where(JobItem.job_id == 1)).all()
            assert max(attempts) == 3  # the last files were taken up by all three runs: one job, resumed
        assert_stores_agree_with_sql(services)
    finally:
        services.close()
    # the killed drivers' actors went with them (the last run's, at its end)
    ray.init(address=cluster.address, namespace="mmrag", log_to_driver=False)
    try:
        assert [name for name in ray.util.list_named_actors() if name.startswith("mmrag-")] == []
    finally:
        ray.shutdown()
