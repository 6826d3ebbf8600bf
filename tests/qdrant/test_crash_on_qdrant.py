"""kill -9 a real indexing process writing to Qdrant (its embedded engine) at several moments; re-running finishes
with every file indexed once and SQL's page ids equal to each Qdrant collection's: 0 lost, 0 duplicated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from mmrag.config import DatabaseSettings, EmbedderSettings, IndexSettings, Settings
from mmrag.index.qdrant_index import QdrantIndex, QdrantMultiVectorStore, close_clients
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from mmrag.store.models import PageEmbedding
from tests.test_crash import (
    ROOT,
    _kill_when,
    _start,
    assert_each_file_indexed_once,
    crash_corpus_page_ids,
    make_crash_corpus,
)


@pytest.mark.slow
def test_kill_9_then_resume_leaves_sql_and_qdrant_agreeing(
    tmp_path: Path, database_url: str, tiny_embedders: Embedders
) -> None:
    corpus = tmp_path / "corpus"
    files = make_crash_corpus(corpus)
    env = {
        **os.environ,
        "MMRAG_DATA_DIR": str(tmp_path / "data"),
        "MMRAG_DATABASE__URL": database_url,
        "MMRAG_EMBEDDERS__PROFILE": "tiny-random",
        "MMRAG_INDEX__BACKEND": "qdrant",
        "MMRAG_INGEST__WORKERS": "1",
        "MMRAG_INGEST__OCR": "never",
        "MMRAG_BATCH_PAGES": "2",
        "PYTHONPATH": str(ROOT),
    }
    for at_least in (1, 9, 20):
        seen = _kill_when(_start(corpus, env), database_url, at_least)
        assert seen < len(files), "the kill came too late to test anything"
    final = _start(corpus, env)
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr.decode()[-3000:]

    settings = Settings(
        data_dir=tmp_path / "data",
        database=DatabaseSettings(url=database_url),
        embedders=EmbedderSettings(profile="tiny-random"),
        index=IndexSettings(backend="qdrant"),
    )
    services = build_services(settings, embedders=tiny_embedders)
    try:
        with services.sessions() as session:
            assert_each_file_indexed_once(session, files)
            page_ids = crash_corpus_page_ids(session)
            vouched = {
                name: set(session.scalars(select(PageEmbedding.page_id).where(PageEmbedding.retriever == name)))
                for name in ("clip", "colpali", "text")
            }
        stores = services.collections.stores(1).by_retriever()
        assert isinstance(stores["clip"], QdrantIndex) and isinstance(stores["colpali"], QdrantMultiVectorStore)
        for name, store in stores.items():
            ids = [int(i) for i in store.ids()]
            assert len(ids) == len(set(ids)), f"duplicate vectors in {name}"
            assert set(ids) == vouched[name], name  # nothing SQL did not vouch for, nothing it vouched for lost
        assert vouched["clip"] == vouched["colpali"] == page_ids
    finally:
        services.close()
        close_clients()
