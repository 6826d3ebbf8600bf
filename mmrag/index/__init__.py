"""Vector and text indexes keyed by SQL page ids: the backend registry and the factories the composition root calls.

Files under an index directory:
    <name>.faiss, <name>.faiss.journal, <name>.manifest.json
                                         FaissIndex (one per single-vector space, e.g. "clip", "text")
    chroma/                              ChromaIndex collections "mmrag_<name>"
    (none: a Qdrant server, or qdrant.path) QdrantIndex / QdrantMultiVectorStore collections
                                         "<prefix>-c<collection id>-<name>" (mmrag.index.qdrant_index)

Multi-vector stores and BM25 indexes own a directory each, which the caller names: see
open_multivector_store and Bm25Index.save.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrag.config import IndexSettings
from mmrag.errors import ConfigError
from mmrag.index.chroma_index import ChromaIndex
from mmrag.index.faiss_index import FaissIndex
from mmrag.analysis import tokenize
from mmrag.index.lexical import Bm25Index, fingerprint_of
from mmrag.index.manifest import Manifest, atomic_write_bytes
from mmrag.protocols import MultiVectorStore, VectorIndex
from mmrag.registry import Registry

if TYPE_CHECKING:
    from mmrag.index.multivector import ShardedMultiVectorStore

__all__ = [
    "VECTOR_INDEXES",
    "Bm25Index",
    "ChromaIndex",
    "FaissIndex",
    "Manifest",
    "ShardedMultiVectorStore",
    "atomic_write_bytes",
    "build_vector_index",
    "fingerprint_of",
    "open_multivector_store",
    "tokenize",
]

VECTOR_INDEXES: Registry[VectorIndex] = Registry("vector index backend")


def __getattr__(name: str) -> Any:
    # The multi-vector store imports torch (seconds): a process that only reads BM25 (a one-shot lexical query)
    # does not pay for it.
    if name == "ShardedMultiVectorStore":
        from mmrag.index.multivector import ShardedMultiVectorStore

        return ShardedMultiVectorStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # becomes a file / collection name


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"index name {name!r} must be lowercase letters, digits, '_' or '-' (it names files)")
    return name


@VECTOR_INDEXES.register("faiss")
def _build_faiss(settings: IndexSettings, directory: Path, *, name: str, model: str, dim: int) -> VectorIndex:
    return FaissIndex.open(
        Path(directory) / f"{name}.faiss",
        model=model,
        dim=dim,
        kind=settings.kind,
        ivf_lists=settings.ivf_lists,
        ivf_nprobe=settings.ivf_nprobe,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_search=settings.hnsw_ef_search,
        use_gpu=settings.use_gpu,
    )


@VECTOR_INDEXES.register("chroma")
def _build_chroma(settings: IndexSettings, directory: Path, *, name: str, model: str, dim: int) -> VectorIndex:
    # Chroma is always HNSW; settings.kind and use_gpu do not apply, hnsw_m does.
    return ChromaIndex.open(Path(directory) / "chroma", name=name, model=model, dim=dim, hnsw_m=settings.hnsw_m)


@VECTOR_INDEXES.register("qdrant")
def _build_qdrant(settings: IndexSettings, directory: Path, *, name: str, model: str, dim: int) -> VectorIndex:
    from mmrag.index.qdrant_index import QdrantIndex

    return QdrantIndex.open(settings, directory, name=name, model=model, dim=dim)


def build_vector_index(settings: IndexSettings, directory: Path, *, name: str, model: str, dim: int) -> VectorIndex:
    """Open (or create) the single-vector index `name` (e.g. "clip", "text") of the configured backend."""
    return VECTOR_INDEXES.create(settings.backend, settings, directory, name=_check_name(name), model=model, dim=dim)


def open_multivector_store(
    settings: IndexSettings, directory: Path, *, model: str, dim: int, device: str = "cpu", read_only: bool = False
) -> MultiVectorStore:
    """Open (or create) the multi-vector store that owns `directory` (of the qdrant backend: its collection named
    after it). `device` is a torch device or "auto". A read-only open of a store its writer has not committed yet
    raises IndexError_."""
    if settings.backend == "qdrant":
        from mmrag.index.qdrant_index import QdrantMultiVectorStore

        return QdrantMultiVectorStore.open(settings, directory, model=model, dim=dim, read_only=read_only)
    from mmrag.index.multivector import ShardedMultiVectorStore

    return ShardedMultiVectorStore(
        Path(directory),
        dim,
        model,
        shard_rows=settings.multivector_shard_rows,
        device=device,
        read_only=read_only,
    )
