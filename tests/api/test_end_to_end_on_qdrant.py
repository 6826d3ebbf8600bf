"""Acceptance 1 again with every vector in Qdrant (its embedded engine): the same HTTP test, the same answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mmrag.config import IndexSettings
from mmrag.index.qdrant_index import QdrantIndex, close_clients
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from tests.api.conftest import make_settings
from tests.api.test_end_to_end import test_index_search_ask_delete_over_http  # noqa: F401 - collected here


@pytest.fixture
def services(tmp_path: Path, database_url: str, tiny_embedders: Embedders) -> Iterator[Services]:
    settings = make_settings(tmp_path / "data", database_url, job_roots={"corpus": tmp_path / "corpus" / "jobroot"})
    settings.index = IndexSettings(backend="qdrant", multivector_search="candidates")
    settings = settings.model_validate(settings.model_dump())  # the embedded engine's path from the data dir
    services = build_services(settings, embedders=tiny_embedders)
    yield services
    assert isinstance(services.collections.stores(1).get("clip"), QdrantIndex)
    services.close()
    close_clients()
