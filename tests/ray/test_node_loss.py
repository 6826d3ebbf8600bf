"""A worker node lost mid-job (ray.cluster_utils.Cluster: a head that runs nothing and two worker nodes, one killed
while the job runs, the one holding the ColPali actor): its load tasks run again on the other node, its actors
restart there, the inputs it held are made again, and the job completes with every file indexed once and the
stores agreeing with SQL. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mmrag.config import RaySettings
from mmrag.indexing import NoProgress, run_index
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from mmrag.store import repository
from tests.factories import make_image, make_pdf
from tests.test_pipeline import assert_stores_agree_with_sql, make_settings

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

MB = 1024 * 1024


@pytest.fixture
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * MB,
                                                            "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2, object_store_memory=80 * MB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="mmrag-tests", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


class LoseANodeMidJob(NoProgress):
    """After `at` files, kills (no graceful exit) the worker node that holds the ColPali actor. (The actors reserve
    a quarter CPU each, so the head, which has none, holds none, and after the loss the last node has room for
    them and for a load task.)"""

    def __init__(self, cluster: Any, at: int) -> None:
        self.cluster, self.at, self.done = cluster, at, 0
        self.lost: str | None = None
        self.after = 0  # files done after the loss

    def advance(self, files: int = 1, pages: int = 0) -> None:
        self.done += files
        if self.lost is not None:
            self.after += files
        elif self.done >= self.at:
            [name] = [n for n in ray.util.list_named_actors() if n.startswith("mmrag-colpali-")]
            self.lost = ray.get(ray.get_actor(name).node.remote())
            [node] = [n for n in self.cluster.worker_nodes if n.node_id == self.lost]
            self.cluster.remove_node(node, allow_graceful=False)


def test_a_node_lost_mid_job_costs_retries_not_files(
    cluster: Any, tmp_path: Path, database_url: str, tiny_embedders: Embedders
) -> None:
    corpus = tmp_path / "corpus"
    files = [make_image(corpus / "img" / f"{i:02d}.png", i) for i in range(30)]
    files += [make_pdf(corpus / "pdf" / f"{i}.pdf", [f"pdf {i} page {n}" for n in range(10)]) for i in range(2)]
    settings = make_settings(tmp_path, database_url, ray=RaySettings(
        address=cluster.address, cpus_per_actor=0.25, tasks_in_flight=4, max_retries=3,
    ))
    settings.batch_pages = 4
    services = build_services(settings, embedders=tiny_embedders)
    progress = LoseANodeMidJob(cluster, at=6)
    try:
        report = run_index(services, [corpus], progress=progress)
        assert progress.lost is not None and progress.after > 10, "the node was lost too late to test anything"
        assert (report.counts["indexed"], report.counts["failed"]) == (len(files), 0), report.failures
        assert report.counts["pages"] == 30 + 2 * 10
        assert_stores_agree_with_sql(services)
        with services.sessions() as session:
            assert repository.job_counts(session, report.job_id)["pending"] == 0
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert progress.lost not in alive
    finally:
        services.close()
