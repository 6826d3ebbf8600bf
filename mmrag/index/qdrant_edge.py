"""Qdrant's own engine in-process (qdrant-edge-py): the qdrant backend's default embedded engine, behind the part of
QdrantClient's interface that mmrag.index.qdrant_index and qdrant_lexical call, so one store implementation serves
a server, a cluster and this.

Each Qdrant collection is an EdgeShard in `<path>/<collection name>/` (segments and a write-ahead log: a write is in
the log when it returns, so a killed process loses none of it) and its metadata a JSON file beside it. The engine
refuses a second open of a shard and a refused open damages the first (seen with 0.9.0), so the whole directory is
held by one process through an flock on `<path>/.lock`, released by the kernel even after kill -9; a second process
gets a clear error instead. Calls are serialised by the caller (mmrag.index.qdrant_index._Client).

Requests arrive as qdrant-client's models (VectorParams, Batch, PointStruct, Prefetch, SearchParams, Filter, ...) and
are translated here; results come back shaped like qdrant-client's (`.points`, `.id`, `.score`, `.vector`,
`.payload`). Edge runs no background optimizer: segments are searched as written (a full scan, exact), which is
also what a server does below its indexing threshold.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mmrag.errors import BackendUnavailableError, IndexError_
from mmrag.index.manifest import atomic_write_bytes

_METADATA = "mmrag-collection.json"  # in each collection's directory, written once its shard exists


def _edge() -> Any:
    try:
        import qdrant_edge
    except ImportError as exc:
        raise BackendUnavailableError("qdrant-edge-py", "qdrant") from exc
    return qdrant_edge


class EdgeClient:
    """The subset of QdrantClient mmrag uses, over EdgeShards in one directory held by this process."""

    def __init__(self, path: Path) -> None:
        self.edge = _edge()
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for the client's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise IndexError_(
                f"the embedded Qdrant engine in {self.path} is in use by another process; it serves one process at a "
                f"time: run jobs through that process (mmrag serve), or use a Qdrant server (MMRAG_INDEX__QDRANT__URL)"
            ) from None
        self._shards: dict[str, Any] = {}
        self._guard = threading.RLock()

    # ----------------------------------------------------------------------------------------------- collections

    def _directory(self, name: str) -> Path:
        return self.path / "collections" / name

    def collection_exists(self, name: str) -> bool:
        return (self._directory(name) / _METADATA).is_file()

    def get_collections(self) -> Any:
        root = self.path / "collections"
        names = sorted(p.name for p in root.iterdir() if (p / _METADATA).is_file()) if root.is_dir() else []
        return SimpleNamespace(collections=[SimpleNamespace(name=name) for name in names])

    def get_collection(self, name: str) -> Any:
        metadata = json.loads((self._directory(name) / _METADATA).read_text())
        return SimpleNamespace(config=SimpleNamespace(metadata=metadata))

    def create_collection(self, name: str, *, vectors_config: dict[str, Any] | None = None,
                          sparse_vectors_config: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                          shard_number: int | None = None, replication_factor: int | None = None,
                          **_: Any) -> bool:
        """A new shard with these vectors (a cluster's sharding and replication do not apply to one shard)."""
        edge = self.edge
        directory = self._directory(name)
        if directory.exists():  # a create that died before its metadata was written
            shutil.rmtree(directory)
        config = edge.EdgeConfig(
            vectors={key: self._vector_params(params) for key, params in (vectors_config or {}).items()},
            sparse_vectors={
                key: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf if params.modifier is not None else None)
                for key, params in (sparse_vectors_config or {}).items()
            },
        )
        with self._guard:
            self._shards[name] = edge.EdgeShard.create(str(directory / "shard"), config)
        atomic_write_bytes(directory / _METADATA, json.dumps(metadata or {}).encode())
        return True

    def _vector_params(self, params: Any) -> Any:
        edge = self.edge
        distances = {"Dot": edge.Distance.Dot, "Cosine": edge.Distance.Cosine, "Euclid": edge.Distance.Euclid}
        multivector = None
        if params.multivector_config is not None:
            multivector = edge.MultiVectorConfig(comparator=edge.MultiVectorComparator.MaxSim)
        datatype = None
        if params.datatype is not None:
            datatype = {"float16": edge.VectorStorageDatatype.Float16, "uint8": edge.VectorStorageDatatype.Uint8,
                        "float32": edge.VectorStorageDatatype.Float32}[str(params.datatype.value)]
        hnsw = None
        if params.hnsw_config is not None and params.hnsw_config.m is not None:
            hnsw = edge.HnswIndexConfig(m=params.hnsw_config.m, ef_construct=100, full_scan_threshold=10_000)
        return edge.EdgeVectorParams(
            size=params.size, distance=distances[str(params.distance.value)], on_disk=params.on_disk,
            multivector_config=multivector, datatype=datatype, hnsw_config=hnsw,
            quantization_config=self._quantization(params.quantization_config),
        )

    def _quantization(self, config: Any) -> Any:
        edge = self.edge
        if config is None:
            return None
        if getattr(config, "scalar", None) is not None:
            return edge.ScalarQuantizationConfig(type=edge.ScalarType.Int8, always_ram=config.scalar.always_ram)
        if getattr(config, "binary", None) is not None:
            return edge.BinaryQuantizationConfig(always_ram=config.binary.always_ram)
        raise IndexError_(f"quantisation {config!r} is not supported by the embedded engine")

    def update_collection(self, name: str, *, metadata: dict[str, Any] | None = None, **_: Any) -> bool:
        path = self._directory(name) / _METADATA
        merged = {**json.loads(path.read_text()), **(metadata or {})}
        atomic_write_bytes(path, json.dumps(merged).encode())
        return True

    def delete_collection(self, name: str) -> bool:
        with self._guard:
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
        directory = self._directory(name)
        if not directory.exists():
            return False
        (directory / _METADATA).unlink(missing_ok=True)  # gone for collection_exists before the files go
        shutil.rmtree(directory)
        return True

    def create_payload_index(self, name: str, *, field_name: str, field_schema: Any, **_: Any) -> None:
        schema = {"keyword": self.edge.PayloadSchemaType.Keyword, "integer": self.edge.PayloadSchemaType.Integer}
        self._shard(name).update(self.edge.UpdateOperation.create_field_index(field_name, schema[field_schema.value]))

    def _shard(self, name: str) -> Any:
        with self._guard:
            shard = self._shards.get(name)
            if shard is None:
                if not self.collection_exists(name):
                    raise IndexError_(f"Qdrant collection {name} does not exist")
                shard = self._shards[name] = self.edge.EdgeShard.load(str(self._directory(name) / "shard"))
            return shard

    # ----------------------------------------------------------------------------------------------- points

    def upsert(self, name: str, *, points: Any, wait: bool = True, **_: Any) -> None:
        edge = self.edge
        if hasattr(points, "ids"):  # a Batch: ids, and each named vector's values by position
            rows = [
                edge.Point(id=int(page_id), vector={key: self._vector(values[i]) for key, values in points.vectors.items()},
                           payload=points.payloads[i] if points.payloads else None)
                for i, page_id in enumerate(points.ids)
            ]
        else:
            rows = [
                edge.Point(id=int(point.id), vector={key: self._vector(value) for key, value in point.vector.items()},
                           payload=point.payload)
                for point in points
            ]
        if rows:
            self._shard(name).update(edge.UpdateOperation.upsert_points(rows))

    def _vector(self, value: Any) -> Any:
        if hasattr(value, "indices"):  # a sparse vector
            return self.edge.SparseVector(indices=list(value.indices), values=list(value.values))
        return value

    def delete(self, name: str, *, points_selector: Any, wait: bool = True, **_: Any) -> None:
        ids = [int(page_id) for page_id in points_selector.points]
        if ids:
            self._shard(name).update(self.edge.UpdateOperation.delete_points(ids))

    def retrieve(self, name: str, ids: list[int], *, with_payload: Any = False, with_vectors: Any = False,
                 **_: Any) -> list[Any]:
        return list(self._shard(name).retrieve([int(i) for i in ids], with_payload, with_vectors))

    def scroll(self, name: str, *, scroll_filter: Any = None, limit: int = 10, offset: Any = None,
               with_payload: Any = False, with_vectors: Any = False, **_: Any) -> tuple[list[Any], Any]:
        request = self.edge.ScrollRequest(
            offset=offset, limit=limit, filter=self._filter(scroll_filter), with_payload=with_payload,
            with_vector=with_vectors,
        )
        points, next_offset = self._shard(name).scroll(request)
        return list(points), next_offset

    def count(self, name: str, *, exact: bool = True, **_: Any) -> Any:
        return SimpleNamespace(count=self._count(name))

    def _count(self, name: str) -> int:
        return int(self._shard(name).count(self.edge.CountRequest(exact=True)))

    # ----------------------------------------------------------------------------------------------- queries

    def query_points(self, name: str, *, query: Any, using: str | None = None, limit: int = 10,
                     prefetch: Any = None, search_params: Any = None, params: Any = None,
                     query_filter: Any = None, with_payload: Any = False, **_: Any) -> Any:
        request = self._request(query, using, limit, prefetch, search_params or params, query_filter, with_payload)
        return SimpleNamespace(points=list(self._shard(name).query(request)))

    def query_batch_points(self, name: str, *, requests: list[Any], **_: Any) -> list[Any]:
        batch = self.edge.QueryBatchRequest([
            self._request(r.query, r.using, r.limit, r.prefetch, r.params, r.filter, r.with_payload) for r in requests
        ])
        return [SimpleNamespace(points=list(points)) for points in self._shard(name).query_batch(batch)]

    def _request(self, query: Any, using: str | None, limit: int, prefetch: Any, params: Any, query_filter: Any,
                 with_payload: Any) -> Any:
        prefetches = prefetch if isinstance(prefetch, list) else [prefetch] if prefetch is not None else []
        return self.edge.QueryRequest(
            limit=int(limit), query=self.edge.Query.Nearest(self._vector(query), using=using),
            prefetches=[self._prefetch(p) for p in prefetches] or None, params=self._params(params),
            filter=self._filter(query_filter), with_payload=bool(with_payload) if with_payload is not None else False,
        )

    def _prefetch(self, prefetch: Any) -> Any:
        return self.edge.Prefetch(
            limit=int(prefetch.limit), query=self.edge.Query.Nearest(self._vector(prefetch.query), using=prefetch.using),
            params=self._params(prefetch.params), filter=self._filter(prefetch.filter),
            score_threshold=prefetch.score_threshold,
        )

    def _params(self, params: Any) -> Any:
        if params is None:
            return None
        quantization = None
        if params.quantization is not None:
            quantization = self.edge.QuantizationSearchParams(
                rescore=params.quantization.rescore, oversampling=params.quantization.oversampling
            )
        return self.edge.SearchParams(hnsw_ef=params.hnsw_ef, exact=bool(params.exact), quantization=quantization)

    def _filter(self, condition: Any) -> Any:
        if condition is None:
            return None
        edge = self.edge

        def field(c: Any) -> Any:
            if hasattr(c, "has_id"):
                return edge.HasIdCondition(point_ids={int(point_id) for point_id in c.has_id})
            match = c.match
            if hasattr(match, "any"):
                return edge.FieldCondition(key=c.key, match=edge.MatchAny(any=list(match.any)))
            return edge.FieldCondition(key=c.key, match=edge.MatchValue(value=match.value))

        return edge.Filter(
            must=[field(c) for c in condition.must or []] or None,
            should=[field(c) for c in condition.should or []] or None,
            must_not=[field(c) for c in condition.must_not or []] or None,
        )

    # ----------------------------------------------------------------------------------------------- lifetime

    def optimize(self, name: str) -> bool:
        """Run the engine's optimizers on one collection now (a server runs them by itself): HNSW graphs and
        quantised copies are built, deleted points vacuumed. Blocks until done."""
        return bool(self._shard(name).optimize())

    def flush(self) -> None:
        with self._guard:
            for shard in self._shards.values():
                shard.flush()

    def close(self) -> None:
        with self._guard:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
