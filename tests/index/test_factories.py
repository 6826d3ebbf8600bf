"""mmrag.index's registry and factories: backends by name, file names from index names, the multi-vector store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmrag.config import IndexSettings, Settings
from mmrag.errors import ConfigError, UnknownNameError
from mmrag.index import (
    VECTOR_INDEXES,
    ChromaIndex,
    FaissIndex,
    ShardedMultiVectorStore,
    build_vector_index,
    open_multivector_store,
)
from mmrag.protocols import MultiVectorStore, VectorIndex
from tests.contract.oracles import clustered_vectors


def test_registered_backends() -> None:
    assert VECTOR_INDEXES.names() == ["chroma", "faiss", "qdrant"]
    with pytest.raises(UnknownNameError, match="known: chroma, faiss, qdrant"):
        VECTOR_INDEXES.create("milvus", IndexSettings(), Path("."), name="clip", model="m", dim=4)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_from_settings(tmp_path: Path, kind: str) -> None:
    settings = IndexSettings(backend="faiss", kind=kind, use_gpu=False)
    index = build_vector_index(settings, tmp_path, name="clip", model="clip-b32", dim=8)
    assert isinstance(index, FaissIndex) and isinstance(index, VectorIndex)
    assert index.kind == kind
    index.add(np.array([4]), clustered_vectors(1, 8))
    index.flush()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.faiss", "clip.manifest.json"]
    assert len(build_vector_index(settings, tmp_path, name="clip", model="clip-b32", dim=8)) == 1


def test_chroma_from_settings(tmp_path: Path) -> None:
    settings = IndexSettings(backend="chroma")
    index = build_vector_index(settings, tmp_path, name="text", model="minilm", dim=4)
    assert isinstance(index, ChromaIndex)
    assert (tmp_path / "chroma").is_dir()


def test_index_names_must_be_safe_file_names(tmp_path: Path) -> None:
    for bad in ("../clip", "Clip", "", "a b"):
        with pytest.raises(ConfigError, match="index name"):
            build_vector_index(IndexSettings(use_gpu=False), tmp_path, name=bad, model="m", dim=4)


def test_multivector_store_from_settings(tmp_path: Path) -> None:
    settings = Settings(index=IndexSettings(multivector_shard_rows=2048)).index
    store = open_multivector_store(settings, tmp_path / "colpali", model="colqwen", dim=8, device="cpu")
    assert isinstance(store, ShardedMultiVectorStore) and isinstance(store, MultiVectorStore)
    assert store.directory == tmp_path / "colpali" and store.shard_rows == 2048
    store.add([1], [clustered_vectors(3, 8)])
    store.flush()
    reader = open_multivector_store(
        settings, tmp_path / "colpali", model="colqwen", dim=8, device="auto", read_only=True
    )
    assert len(reader) == 1


def test_an_absent_cuda_device_is_a_config_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="cuda"):
        ShardedMultiVectorStore(tmp_path, 8, "m", device="cuda")


def test_qdrant_from_settings(tmp_path: Path) -> None:
    from mmrag.index.qdrant_index import QdrantIndex, QdrantMultiVectorStore, close_clients

    settings = Settings(data_dir=tmp_path / "data", index=IndexSettings(backend="qdrant"))
    assert settings.index.qdrant.path == tmp_path / "data" / "qdrant"  # the embedded engine, unless a url is set
    vectors = tmp_path / "data" / "collections" / "7" / "vectors"
    try:
        index = build_vector_index(settings.index, vectors, name="clip", model="clip-b32", dim=8)
        store = open_multivector_store(settings.index, vectors / "colpali", model="colqwen", dim=8)
        assert isinstance(index, QdrantIndex) and isinstance(index, VectorIndex)
        assert isinstance(store, QdrantMultiVectorStore) and isinstance(store, MultiVectorStore)
        assert (index.name, store.name) == ("mmrag-c7-clip", "mmrag-c7-colpali")
        assert not vectors.exists()  # nothing of theirs in the collection's directory
    finally:
        close_clients()
    with pytest.raises(ConfigError, match="url.*path"):
        from mmrag.config import QdrantSettings
        from mmrag.index.qdrant_index import connect

        connect(QdrantSettings())
