"""The qdrant backend: single-vector indexes and multi-vector stores in Qdrant collections, keyed by SQL page ids.

One Qdrant collection per mmrag collection and retriever, named `<prefix>-<scope>-<retriever>` (the scope is the
mmrag collection: `c<id>`), point id = SQL page id. What identifies the vectors (model, dim, metric, kind, a uid)
is the collection's metadata, checked on open like every manifest. SQL stays the source of truth:

    QdrantIndex            one named dense vector "vector" (CLIP, dense text), inner product; exact (flat) or HNSW
    QdrantMultiVectorStore "tokens": the page's token vectors, a multi-vector compared by MAX_SIM (float16, no HNSW
                           graph: it only reranks or is scanned exactly), and "centroids": 8 centroids a page
                           (mmrag.index.candidates.page_centroids), the prefetch stage of a candidates search

Durability differs from the local stores: every write is made with wait=true, so Qdrant holds it before the call
returns, and there is no "last flushed state": vectors a crashed job wrote before SQL vouched for them are still
there when it resumes, and recovery (mmrag.indexing.recovery) compares SQL's ids with the collection's (a scroll)
and removes them, as it does for the local stores. `flush` has nothing to do; a reader always sees the collection
as it is now (`catch_up` is free), and the search path keeps only pages SQL has indexed.

Where it runs: a server or cluster (`index.qdrant.url`, with `api_key`), or an embedded engine in a directory
(`index.qdrant.path`) for one process: Qdrant's own engine (qdrant-edge-py, mmrag.index.qdrant_edge; the default),
or qdrant-client's local mode (`embedded = "client"`: the same client API implemented in Python, which accepts the
collection's configuration but searches every point exactly in float32). Both are imported lazily.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mmrag.config import IndexSettings, QdrantSettings
from mmrag.errors import BackendUnavailableError, ConfigError, IndexError_, VectorBackendUnavailableError
from mmrag.index.manifest import Manifest, as_page_ids, checked_batch, last_occurrences
from mmrag.types import Hit

log = logging.getLogger(__name__)

DENSE_KIND = "qdrant"
MULTI_KIND = "qdrant-multivector"
METRIC = "ip"
CENTROIDS_PER_PAGE = 8  # as the local candidate index (mmrag.index.candidates)
_META = "mmrag_"
_SCROLL_PAGE = 10_000  # ids per scroll request when listing every id
_IDS_PER_REQUEST = 1_000  # ids per retrieve/delete request
_DENSE_PER_UPSERT = 512  # vectors per upsert request
_PAGES_PER_UPSERT = 16  # multi-vector pages per upsert request (~1,000 tokens each)


def _qdrant() -> tuple[Any, Any]:
    try:
        from qdrant_client import QdrantClient, models
    except ImportError as exc:
        raise BackendUnavailableError("qdrant-client", "qdrant") from exc
    return QdrantClient, models


class _Client:
    """One client shared by every store of a process that uses the same server or directory. An embedded engine
    allows one client per directory, and its calls are serialised; a server's are not. `local` marks qdrant-client's
    local mode, which searches exactly whatever it is asked (and warns when given search parameters)."""

    def __init__(self, client: Any, *, embedded: bool, local: bool = False, url: str | None = None) -> None:
        self.client = client
        self.local = local
        self.url = url
        self._lock = threading.RLock() if embedded else None

    @contextmanager
    def using(self) -> Iterator[Any]:
        """The client, for one or a few calls; a server that cannot be reached or refuses a call raises
        VectorBackendUnavailableError naming it (the API answers 503)."""
        if self._lock is not None:
            with self._lock:
                yield self.client
            return
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            yield self.client
        except (ResponseHandlingException, UnexpectedResponse, ConnectionError, TimeoutError) as exc:
            raise VectorBackendUnavailableError(str(self.url), _reason(exc)) from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("httpx", "httpcore", "grpc")):  # transport errors of either protocol
                raise VectorBackendUnavailableError(str(self.url), _reason(exc)) from exc
            raise


def _reason(exc: BaseException) -> str:
    """What a server or its transport said, in one line."""
    reason = getattr(exc, "reason_phrase", None)
    status = getattr(exc, "status_code", None)
    if status is not None:
        content = getattr(exc, "content", b"") or b""
        return f"HTTP {status} {reason or ''}: {content[:300].decode('utf-8', 'replace')}".strip()
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or type(exc).__name__
    return f"{text} ({cause})" if cause is not None and str(cause) not in text else text


_CLIENTS: dict[tuple[str, str], _Client] = {}
_CLIENTS_LOCK = threading.Lock()


def connect(settings: QdrantSettings) -> _Client:
    """The process's client for these settings' server or directory (made at the first call)."""
    if settings.url is None and settings.path is None:
        raise ConfigError("index.qdrant: set url (a Qdrant server) or path (the embedded engine's directory)")
    key = ("url", settings.url) if settings.url is not None else ("path", str(Path(settings.path).resolve()))
    with _CLIENTS_LOCK:
        found = _CLIENTS.get(key)
        if found is not None:
            return found
        client_class, _ = _qdrant()
        if settings.url is not None:
            api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
            client = client_class(
                url=settings.url, api_key=api_key, prefer_grpc=settings.prefer_grpc, timeout=settings.timeout_s
            )
            found = _Client(client, embedded=False, url=settings.url)
        elif settings.embedded == "edge":
            from mmrag.index.qdrant_edge import EdgeClient

            found = _Client(EdgeClient(Path(settings.path)), embedded=True)
        else:
            Path(settings.path).mkdir(parents=True, exist_ok=True)
            try:
                client = client_class(path=str(settings.path))
            except RuntimeError as exc:  # portalocker: another process has the directory
                raise IndexError_(
                    f"the embedded Qdrant engine in {settings.path} is in use by another process ({exc}); it serves "
                    f"one process at a time: run jobs through that process (mmrag serve), or use a Qdrant server "
                    f"(MMRAG_INDEX__QDRANT__URL)"
                ) from exc
            found = _Client(client, embedded=True, local=True)
        _CLIENTS[key] = found
        return found


def describe(settings: QdrantSettings) -> str:
    """Where the vectors are, in words: "qdrant server http://..." or "qdrant edge engine in /path"."""
    if settings.url is not None:
        return f"qdrant server {settings.url}"
    return f"qdrant {settings.embedded} engine in {settings.path}"


def problem(settings: QdrantSettings) -> str | None:
    """Why the Qdrant these settings name cannot serve now, or None when it answers (one cheap call: list the
    collections)."""
    try:
        with connect(settings).using() as qdrant:
            qdrant.get_collections()
    except (VectorBackendUnavailableError, IndexError_) as exc:
        return str(exc)
    return None


def close_clients() -> None:
    """Close every client this process made (the embedded engine's directory lock goes with it)."""
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for found in clients:
        with found.using() as client:
            client.close()


atexit.register(close_clients)  # the embedded engine's client cannot close itself while Python shuts down


def store_scope(directory: Path) -> str:
    """The mmrag collection a store belongs to, from its directory (`.../collections/<id>/vectors[/<retriever>]`):
    `c<id>`. Any other directory (a test's, a benchmark's) is named by a hash of its path."""
    parts = Path(directory).parts
    if "collections" in parts:
        at = len(parts) - 1 - parts[::-1].index("collections")
        if at + 1 < len(parts) and parts[at + 1].isdigit():
            return f"c{parts[at + 1]}"
    return "d" + hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:12]


def collection_name(settings: QdrantSettings, directory: Path, name: str) -> str:
    return f"{settings.prefix}-{store_scope(directory)}-{name}"


def _manifest(metadata: dict[str, Any] | None, where: str) -> tuple[Manifest, str]:
    fields = {key.removeprefix(_META): value for key, value in (metadata or {}).items() if key.startswith(_META)}
    if not fields:
        raise IndexError_(f"{where}: Qdrant collection has no mmrag manifest in its metadata; it was not made by mmrag")
    uid = str(fields.pop("uid", ""))
    return Manifest.from_dict({**fields, "count": 0}), uid


def _metadata(manifest: Manifest, uid: str) -> dict[str, Any]:
    return {f"{_META}model": manifest.model, f"{_META}dim": manifest.dim, f"{_META}metric": manifest.metric,
            f"{_META}kind": manifest.kind, f"{_META}uid": uid}


def _quantization(settings: QdrantSettings, models: Any) -> Any | None:
    if settings.quantization == "scalar":
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
        )
    if settings.quantization == "binary":
        return models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
    return None


def _search_params(settings: IndexSettings, models: Any, *, exact: bool, local: bool) -> Any | None:
    """How a server or Qdrant's embedded engine searches (exactly, or the HNSW graph with its ef; quantised vectors
    rescored). None for qdrant-client's local mode, which always searches exactly and warns when given any."""
    if local:
        return None
    quantized = settings.qdrant.quantization != "none"
    return models.SearchParams(
        exact=exact,
        hnsw_ef=None if exact else settings.hnsw_ef_search,
        # Quantised vectors pick candidates; their original vectors give the scores.
        quantization=models.QuantizationSearchParams(rescore=True, oversampling=2.0) if quantized else None,
    )


class _Collection:
    """What both stores share: the client, the collection's name, its manifest check on open, ids by scroll."""

    kind: str

    def __init__(self, client: _Client, name: str, *, settings: IndexSettings, model: str, dim: int, uid: str,
                 exists: bool) -> None:
        self._client = client
        self._settings = settings
        self._create: Any = None  # how _open made the collection (set there)
        self.name = name
        self.model = model
        self.dim = dim
        self.metric = METRIC
        self._uid = uid
        self._exists = exists
        self._version = 0

    @classmethod
    def _open(cls, settings: IndexSettings, directory: Path, name: str, *, model: str, dim: int, read_only: bool,
              vectors: dict[str, Any], sparse: dict[str, Any] | None = None) -> _Collection:
        """The store of Qdrant collection `name` of the mmrag collection of `directory`, created with these named
        dense and sparse vectors unless `read_only`; one that exists must hold this kind of vectors of `model` and
        `dim`."""
        client = connect(settings.qdrant)
        collection = collection_name(settings.qdrant, directory, name)

        def create(qdrant: Any, uid: str) -> None:
            qdrant.create_collection(
                collection, vectors_config=vectors, sparse_vectors_config=sparse,
                shard_number=settings.qdrant.shard_number, replication_factor=settings.qdrant.replication_factor,
                metadata=_metadata(Manifest(model, dim, METRIC, 0, cls.kind), uid),
            )
            cls._created(qdrant, client, collection)

        uid, exists = cls._opened(client, collection, model=model, dim=dim, read_only=read_only, create=create)
        store = cls(client, collection, settings=settings, model=model, dim=dim, uid=uid, exists=exists)
        store._create = create  # a rebuild makes it again (QdrantLexicalIndex.rebuild)
        return store

    @staticmethod
    def _created(qdrant: Any, client: _Client, collection: str) -> None:
        """What a kind of store adds to a collection it has just created (its payload indexes)."""

    @classmethod
    def _opened(cls, client: _Client, name: str, *, model: str, dim: int, read_only: bool,
                create: Any) -> tuple[str, bool]:
        """(uid, exists) of collection `name`, created (by `create(uid)`) unless `read_only`; a collection that
        exists must hold this kind of vectors of `model` and `dim`."""
        if dim < 1:
            raise ConfigError(f"vector dim must be >= 1, got {dim}")
        with client.using() as qdrant:
            if qdrant.collection_exists(name):
                manifest, uid = _manifest(qdrant.get_collection(name).config.metadata, f"qdrant:{name}")
                manifest.check(model, dim, METRIC, where=f"qdrant:{name}")
                manifest.check_kind(cls.kind, where=f"qdrant:{name}")
                return uid, True
            if read_only:
                return "", False
            uid = uuid.uuid4().hex
            create(qdrant, uid)
            log.info("new Qdrant collection %s (%s, model %s, dim %d)", name, cls.kind, model, dim)
            return uid, True

    def _present(self) -> bool:
        """Whether the collection exists (a reader opened it before its writer made it: empty until then)."""
        if not self._exists:
            with self._client.using() as qdrant:
                self._exists = qdrant.collection_exists(self.name)
        return self._exists

    def ids(self) -> np.ndarray:
        if not self._present():
            return np.zeros(0, dtype=np.int64)
        parts: list[np.ndarray] = []
        offset = None
        while True:
            with self._client.using() as qdrant:
                points, offset = qdrant.scroll(
                    self.name, limit=_SCROLL_PAGE, offset=offset, with_payload=False, with_vectors=False
                )
            parts.append(np.fromiter((int(point.id) for point in points), dtype=np.int64, count=len(points)))
            if offset is None:
                break
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        if not self._present():
            return 0
        with self._client.using() as qdrant:
            return int(qdrant.count(self.name, exact=True).count)

    def __contains__(self, page_id: object) -> bool:
        if not isinstance(page_id, int | np.integer) or page_id < 0 or not self._present():
            return False
        with self._client.using() as qdrant:
            return bool(qdrant.retrieve(self.name, ids=[int(page_id)], with_payload=False, with_vectors=False))

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Delete these pages' points; unknown ids are ignored. Returns how many were there."""
        _, models = _qdrant()
        wanted = np.unique(as_page_ids(ids if isinstance(ids, np.ndarray) else list(ids)))
        if not len(wanted) or not self._present():
            return 0
        removed = 0
        for start in range(0, len(wanted), _IDS_PER_REQUEST):
            chunk = [int(page_id) for page_id in wanted[start : start + _IDS_PER_REQUEST]]
            with self._client.using() as qdrant:
                present = [int(point.id) for point in qdrant.retrieve(
                    self.name, ids=chunk, with_payload=False, with_vectors=False
                )]
                if present:
                    qdrant.delete(self.name, points_selector=models.PointIdsList(points=present), wait=True)
            removed += len(present)
        if removed:
            self._version += 1
        return removed

    def flush(self) -> None:
        """Nothing to do: every write was acknowledged by Qdrant (wait=true) before it returned."""

    def catch_up(self) -> bool:
        """A reader searches the collection as it is now: nothing to read. False once a collection that did not
        exist when it was opened does (it is opened again, with the manifest check)."""
        return self._exists or not self._present()

    def files(self) -> list[Path] | None:
        return None  # Qdrant's own: a job compares SQL's ids with the collection's instead

    @property
    def uid(self) -> str:
        return self._uid

    @property
    def version(self) -> int:
        """Changes made through this object (add, remove)."""
        return self._version

    def manifest(self) -> Manifest:
        return Manifest(model=self.model, dim=self.dim, metric=self.metric, count=len(self), kind=self.kind)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, model={self.model!r}, dim={self.dim})"


class QdrantIndex(_Collection):
    """A VectorIndex in a Qdrant collection: one named dense vector per page, compared by inner product."""

    kind = DENSE_KIND

    @classmethod
    def open(cls, settings: IndexSettings, directory: Path, *, name: str, model: str, dim: int,
             read_only: bool = False) -> QdrantIndex:
        """Open (or create) the dense collection of index `name` for the mmrag collection of `directory`."""
        _, models = _qdrant()
        qdrant = settings.qdrant
        vector = models.VectorParams(
            size=dim, distance=models.Distance.DOT, on_disk=qdrant.on_disk,
            hnsw_config=models.HnswConfigDiff(m=settings.hnsw_m, on_disk=qdrant.on_disk),
            quantization_config=_quantization(qdrant, models),
        )
        return cls._open(settings, directory, name, model=model, dim=dim, read_only=read_only,
                         vectors={"vector": vector})

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace (upsert) one vector per page."""
        _, models = _qdrant()
        ids, vectors = checked_batch(ids, vectors, self.dim)
        for start in range(0, len(ids), _DENSE_PER_UPSERT):
            stop = start + _DENSE_PER_UPSERT
            # Built without pydantic's validation: the values were checked above, and validating every float of a
            # batch cost a quarter of its upsert.
            batch = models.Batch.model_construct(
                ids=ids[start:stop].tolist(), vectors={"vector": vectors[start:stop].tolist()}
            )
            with self._client.using() as qdrant:
                qdrant.upsert(self.name, points=batch, wait=True)
        if len(ids):
            self._version += 1

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        return self.search_within(queries, k, None)

    def search_within(self, queries: np.ndarray, k: int, page_ids: np.ndarray | None) -> list[list[Hit]]:
        """Top-k among these pages only (None: all), for each query row."""
        _, models = _qdrant()
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        if k <= 0 or not len(queries) or not self._present():
            return [[] for _ in range(len(queries))]
        params = _search_params(self._settings, models, exact=self._settings.kind == "flat", local=self._client.local)
        only = _only(page_ids, models)
        requests = [
            models.QueryRequest(query=query.astype(np.float32).tolist(), using="vector", limit=int(k), params=params,
                                filter=only)
            for query in queries
        ]
        with self._client.using() as qdrant:
            responses = qdrant.query_batch_points(self.name, requests=requests)
        return [_hits(response.points) for response in responses]


class QdrantMultiVectorStore(_Collection):
    """A MultiVectorStore in a Qdrant collection: each page's token vectors as a MAX_SIM multi-vector, and its
    centroids as a second one that a candidates search prefetches by."""

    kind = MULTI_KIND

    @classmethod
    def open(cls, settings: IndexSettings, directory: Path, *, model: str, dim: int,
             read_only: bool = False) -> QdrantMultiVectorStore:
        """Open (or create) the multi-vector collection of the store `directory` names (its last part: the
        retriever). A read-only open of one not made yet raises IndexError_ (its writer has not committed it)."""
        _, models = _qdrant()
        qdrant = settings.qdrant
        max_sim = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
        vectors = {
            # Scanned for exact search or read for a rerank, never walked: no graph (m=0) saves its build.
            "tokens": models.VectorParams(
                size=dim, distance=models.Distance.DOT, multivector_config=max_sim,
                datatype=models.Datatype.FLOAT16, on_disk=qdrant.on_disk, hnsw_config=models.HnswConfigDiff(m=0),
            ),
            "centroids": models.VectorParams(
                size=dim, distance=models.Distance.DOT, multivector_config=max_sim,
                datatype=models.Datatype.FLOAT16, on_disk=qdrant.on_disk,
                hnsw_config=models.HnswConfigDiff(m=settings.hnsw_m, on_disk=qdrant.on_disk),
                quantization_config=_quantization(qdrant, models),
            ),
        }
        store = cls._open(settings, Path(directory).parent, Path(directory).name, model=model, dim=dim,
                          read_only=read_only, vectors=vectors)
        if not store._exists:
            raise IndexError_(f"Qdrant collection {store.name} does not exist yet")
        return store

    def add(self, ids: Sequence[int], vectors: Sequence[np.ndarray]) -> None:
        """Add or replace pages' token matrices (each (tokens >= 1, dim)), with their centroids."""
        from mmrag.index.candidates import page_centroids

        _, models = _qdrant()
        page_ids = as_page_ids(list(ids) if not isinstance(ids, np.ndarray) else ids)
        if len(page_ids) != len(vectors):
            raise ValueError(f"{len(page_ids)} ids for {len(vectors)} token matrices")
        pages: list[tuple[int, np.ndarray]] = []
        for position in last_occurrences(page_ids):
            tokens = np.asarray(vectors[position])
            if tokens.ndim != 2 or tokens.shape[1] != self.dim or tokens.shape[0] < 1:
                raise ValueError(
                    f"page {page_ids[position]}: tokens must have shape (n>=1, {self.dim}), got {tokens.shape}"
                )
            with np.errstate(over="ignore"):  # stored as float16, as the local store does
                tokens16 = tokens.astype(np.float16)
            if not np.isfinite(tokens16).all():
                raise ValueError(f"page {page_ids[position]}: token vectors are NaN/inf or overflow float16")
            pages.append((int(page_ids[position]), tokens16.astype(np.float32)))
        # In one call: k-means runs batched over pages of one length.
        centroids = page_centroids([tokens for _, tokens in pages], CENTROIDS_PER_PAGE)
        for start in range(0, len(pages), _PAGES_PER_UPSERT):
            chunk = pages[start : start + _PAGES_PER_UPSERT]
            batch = models.Batch.model_construct(  # checked above: see QdrantIndex.add
                ids=[page_id for page_id, _ in chunk],
                vectors={
                    "tokens": [tokens.tolist() for _, tokens in chunk],
                    "centroids": [c.tolist() for c in centroids[start : start + _PAGES_PER_UPSERT]],
                },
            )
            with self._client.using() as qdrant:
                qdrant.upsert(self.name, points=batch, wait=True)
        if pages:
            self._version += 1

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """Top-k pages by MaxSim over every token: all pages scanned (index.multivector_search = "exact"), or the
        index.multivector_candidates pages whose centroids score best, prefetched, then reranked ("candidates")."""
        return self.search_within(query, k, None)

    def search_within(self, query: np.ndarray, k: int, page_ids: np.ndarray | None) -> list[Hit]:
        """search() among these pages only (None: all)."""
        _, models = _qdrant()
        only = _only(page_ids, models)
        query = np.asarray(query, dtype=np.float32)
        if query.ndim != 2 or query.shape[1] != self.dim or query.shape[0] < 1:
            raise ValueError(f"a query must have shape (n>=1, {self.dim}), got {query.shape}")
        if k <= 0 or not self._present():
            return []
        tokens = query.tolist()
        settings = self._settings
        if settings.multivector_search == "candidates":
            prefetch = models.Prefetch(
                query=tokens, using="centroids", limit=max(int(k), settings.multivector_candidates),
                params=_search_params(settings, models, exact=False, local=self._client.local), filter=only,
            )
            arguments = {"prefetch": prefetch}
        else:
            arguments = {} if self._client.local else {"search_params": models.SearchParams(exact=True)}
        with self._client.using() as qdrant:
            response = qdrant.query_points(self.name, query=tokens, using="tokens", limit=int(k), query_filter=only,
                                           **arguments)
        return _hits(response.points)

    def tokens(self, page_id: int) -> np.ndarray:
        """The stored token matrix of one page (KeyError when it has none)."""
        with self._client.using() as qdrant:
            points = qdrant.retrieve(self.name, ids=[int(page_id)], with_payload=False, with_vectors=["tokens"])
        if not points:
            raise KeyError(page_id)
        return np.asarray(points[0].vector["tokens"], dtype=np.float16)

    def compact(self) -> None:
        """Nothing to do: Qdrant's optimizer reclaims deleted points by itself."""

    def stats(self) -> dict[str, int]:
        return {"pages": len(self), "tombstoned_pages": 0}


def _only(page_ids: np.ndarray | None, models: Any) -> Any | None:
    """The filter keeping these points alone (None: no filter)."""
    if page_ids is None:
        return None
    return models.Filter(must=[models.HasIdCondition(has_id=[int(page_id) for page_id in page_ids])])


def _hits(points: Sequence[Any]) -> list[Hit]:
    hits = [Hit(page_id=int(point.id), score=float(point.score)) for point in points]
    # Ties in id order, as the local stores break them.
    hits.sort(key=lambda hit: (-hit.score, hit.page_id))
    return hits


def drop_collection(settings: QdrantSettings, directory: Path, name: str) -> None:
    """Delete one store's Qdrant collection (derived data of another version, made again from SQL)."""
    collection = collection_name(settings, directory, name)
    with connect(settings).using() as qdrant:
        if qdrant.collection_exists(collection):
            qdrant.delete_collection(collection)


def drop_collections(settings: QdrantSettings, directory: Path) -> list[str]:
    """Delete every Qdrant collection of the mmrag collection whose directory this is; returns their names."""
    client = connect(settings)
    prefix = f"{settings.prefix}-{store_scope(directory)}-"
    dropped = []
    with client.using() as qdrant:
        for described in qdrant.get_collections().collections:
            if described.name.startswith(prefix):
                qdrant.delete_collection(described.name)
                dropped.append(described.name)
    return dropped


__all__ = [
    "QdrantIndex",
    "QdrantMultiVectorStore",
    "close_clients",
    "collection_name",
    "connect",
    "describe",
    "drop_collection",
    "drop_collections",
    "problem",
    "store_scope",
]
