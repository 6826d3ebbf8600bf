"""ChromaIndex: a single-vector VectorIndex in a chromadb persistent collection, keyed by SQL page ids.

chromadb is optional and imported lazily. The collection is created with `embedding_function=None` and this class
only ever passes `embeddings` (never `documents`), so chroma never embeds anything itself: vectors always come from
mmrag's embedders, whose model the manifest records.

Layout: a chromadb PersistentClient directory; one collection per index name (`mmrag_<name>`), in the "ip" space
(score = 1 - chroma's distance = inner product), ids are `str(page_id)`. The manifest lives in the collection
metadata (keys `mmrag_model`, `mmrag_dim`, `mmrag_metric`, `mmrag_kind`, `mmrag_count`).

Durability differs from FAISS: chroma makes every add/remove durable by itself, so there is no "last flushed state"
to fall back to. `flush()` records the count in the manifest; if the process dies between an add and the next
flush, reopening finds the count disagreeing with the collection and raises ManifestMismatchError, and the caller
rebuilds the index from SQL. A crash therefore never goes unnoticed.

Chroma's HNSW is approximate; ef_search/ef_construction default high (200), which is exact on small collections.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mmrag.errors import BackendUnavailableError, ConfigError, IndexError_
from mmrag.index.manifest import Manifest, as_page_ids, checked_batch
from mmrag.types import Hit

log = logging.getLogger(__name__)

KIND = "chroma"
METRICS: tuple[str, ...] = ("ip",)
_META_PREFIX = "mmrag_"
_PAGE_SIZE = 10_000  # rows per chroma `get` when listing every id


def _import_chromadb() -> Any:
    try:
        import chromadb
        from chromadb.config import Settings as ChromaSettings
    except ImportError as exc:
        raise BackendUnavailableError("chromadb", "chroma") from exc
    return chromadb, ChromaSettings


def _manifest_from_metadata(metadata: dict[str, Any] | None, where: str) -> Manifest:
    metadata = metadata or {}
    fields = {key.removeprefix(_META_PREFIX): value for key, value in metadata.items() if key.startswith(_META_PREFIX)}
    if not fields:
        raise IndexError_(f"{where}: chroma collection has no mmrag manifest in its metadata; it was not made by mmrag")
    return Manifest.from_dict(fields)


def _manifest_metadata(manifest: Manifest) -> dict[str, str | int]:
    return {
        f"{_META_PREFIX}model": manifest.model,
        f"{_META_PREFIX}dim": manifest.dim,
        f"{_META_PREFIX}metric": manifest.metric,
        f"{_META_PREFIX}count": manifest.count,
        f"{_META_PREFIX}kind": manifest.kind,
    }


class ChromaIndex:
    """A VectorIndex over a chromadb collection; open it with `ChromaIndex.open`."""

    def __init__(self, directory: Path, *, name: str, client: Any, collection: Any, manifest: Manifest) -> None:
        self.directory = Path(directory)
        self.name = name
        self.model = manifest.model
        self.dim = manifest.dim
        self.metric = manifest.metric
        self.kind = KIND
        self._client = client
        self._collection = collection
        self._recorded_count = manifest.count
        self._lock = threading.RLock()
        self._max_batch = max(1, int(client.get_max_batch_size()))

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        name: str,
        model: str,
        dim: int,
        metric: str = "ip",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 200,
    ) -> ChromaIndex:
        """Open (or create) collection `name` under `directory`; an existing one must match model, dim and metric."""
        if metric not in METRICS:
            raise ConfigError(f"unsupported chroma metric {metric!r}; supported: {', '.join(METRICS)}")
        if dim < 1:
            raise ConfigError(f"vector dim must be >= 1, got {dim}")
        chromadb, chroma_settings = _import_chromadb()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(
            path=str(directory), settings=chroma_settings(anonymized_telemetry=False, allow_reset=False)
        )
        collection_name = f"mmrag_{name}"
        where = f"{directory}:{collection_name}"
        if collection_name in {collection.name for collection in client.list_collections()}:
            collection = client.get_collection(collection_name, embedding_function=None)
            manifest = _manifest_from_metadata(collection.metadata, where)
            manifest.check(model, dim, metric, where=where)
            manifest.check_kind(KIND, where=where)
            manifest.check_count(collection.count(), where=where)
            log.info("opened chroma collection %s: %d vectors", where, manifest.count)
        else:
            manifest = Manifest(model=model, dim=dim, metric=metric, count=0, kind=KIND)
            collection = client.create_collection(
                collection_name,
                embedding_function=None,  # chroma must never embed by itself
                metadata=_manifest_metadata(manifest),
                configuration={
                    "hnsw": {
                        "space": metric,
                        "max_neighbors": hnsw_m,
                        "ef_construction": ef_construction,
                        "ef_search": ef_search,
                    }
                },
            )
            log.info("new chroma collection %s (model %s, dim %d)", where, model, dim)
        return cls(directory, name=name, client=client, collection=collection, manifest=manifest)

    # ----------------------------------------------------------------------------------------------- VectorIndex

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace (upsert). Vectors are required: there is no way to make chroma embed text for us."""
        ids, vectors = checked_batch(ids, vectors, self.dim)  # also deduplicates: chroma rejects repeated ids
        if len(ids) == 0:
            return
        with self._lock:
            for start in range(0, len(ids), self._max_batch):
                stop = start + self._max_batch
                self._collection.upsert(
                    ids=[str(page_id) for page_id in ids[start:stop]], embeddings=vectors[start:stop]
                )

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        wanted = np.unique(as_page_ids(ids if isinstance(ids, np.ndarray) else list(ids)))
        removed = 0
        with self._lock:
            for start in range(0, len(wanted), self._max_batch):
                chunk = [str(page_id) for page_id in wanted[start : start + self._max_batch]]
                present = self._collection.get(ids=chunk, include=[])["ids"]
                if present:
                    self._collection.delete(ids=present)
                    removed += len(present)
        return removed

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        with self._lock:
            k = min(int(k), self._collection.count())
            if k <= 0 or len(queries) == 0:
                return [[] for _ in range(len(queries))]
            result = self._collection.query(
                query_embeddings=np.ascontiguousarray(queries, dtype=np.float32), n_results=k, include=["distances"]
            )
        return [
            [
                Hit(page_id=int(page_id), score=1.0 - float(distance))
                for page_id, distance in zip(ids, distances, strict=True)
            ]
            for ids, distances in zip(result["ids"], result["distances"], strict=True)
        ]

    def ids(self) -> np.ndarray:
        parts: list[np.ndarray] = []
        with self._lock:
            offset = 0
            while True:
                page = self._collection.get(include=[], limit=_PAGE_SIZE, offset=offset)["ids"]
                if not page:
                    break
                parts.append(np.asarray([int(page_id) for page_id in page], dtype=np.int64))
                offset += len(page)
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._collection.count())

    def flush(self) -> None:
        """Record the current count in the manifest (chroma has already persisted the vectors themselves)."""
        with self._lock:
            count = len(self)
            if count == self._recorded_count:
                return
            manifest = Manifest(model=self.model, dim=self.dim, metric=self.metric, count=count, kind=KIND)
            self._collection.modify(metadata=_manifest_metadata(manifest))
            self._recorded_count = manifest.count
        log.debug("flushed chroma collection %s: %d vectors", self.name, manifest.count)

    def catch_up(self) -> bool:
        return False  # chroma's own files change under a reader in ways it cannot follow: open it again

    def files(self) -> list[Path] | None:
        return None  # chroma owns its files; a job cannot tell from them whether another process changed them

    def manifest(self) -> Manifest:
        return Manifest(model=self.model, dim=self.dim, metric=self.metric, count=len(self), kind=KIND)

    def __repr__(self) -> str:
        return f"ChromaIndex({str(self.directory)!r}, name={self.name!r}, model={self.model!r}, dim={self.dim})"
