"""FaissIndex: a FAISS single-vector index keyed by SQL page ids, saved as one atomic file holding its manifest.

Kinds
    flat   IndexIDMap2(IndexFlatIP): exact. The default; fast enough up to a few million vectors on a GPU.
    ivf    IndexIVFFlat with native ids. It stays exact (the flat layout) until it first holds
           39 * ivf_lists vectors -- faiss' own minimum of points per centroid for k-means -- and is then trained
           once, on those vectors, with nlist = ivf_lists (no clamping is needed: training never starts with fewer
           points). Below that size exact search is as fast as IVF anyway. The trained centroids are kept for good;
           if the collection drifts far from them, rebuild the index from SQL. Searches probe ivf_nprobe lists.
           Native ids rather than IndexIDMap2, because IndexIDMap.remove_ids assumes the sub-index renumbers its
           rows after a removal, which IVF does not.
    hnsw   IndexIDMap2(IndexHNSWFlat). HNSW graphs cannot delete. Removal (and the replace half of a re-add)
           tombstones the row: searches skip tombstoned rows through an IDSelectorBitmap, and once tombstones
           exceed HNSW_REBUILD_FRACTION of the rows the graph is rebuilt from the live vectors, reconstructed
           from HNSWFlat's own storage. Tombstones are saved in the index file, so a reopen never resurrects them.

GPU
    With use_gpu and a GPU visible to faiss, flat and ivf searches run on a GPU replica of the index. The CPU index
    stays the master copy that add/remove change and flush saves (GPU indexes cannot remove ids, and saving then
    needs no device-to-host copy); the replica follows appends incrementally and is rebuilt after removals. HNSW
    stays on the CPU (faiss has no GPU HNSW). The cost is host memory equal to the index.

File layout (little-endian). The snapshot `<name>.faiss`, written atomically:
    b"MMRAGFX1" | u64 manifest_len | u64 index_len | u64 tombstones_len
    manifest JSON (utf-8) | faiss.write_index bytes | int64 tombstoned row positions (hnsw only)
Manifest and index share the file, so a crash can never leave them disagreeing. `<stem>.manifest.json` beside it is
a human-readable copy for operators and is never read back.

The journal `<name>.faiss.journal`: the changes made since the snapshot, appended (and fsynced) by flush():
    b"MMRAGFJ1" | u32 dim,  then records of  b"FJR1" | u8 op (1 add, 2 remove) | 3 pad | u64 n
                                              | n int64 ids | (add) n*dim float32 | u32 crc32 of all before it
The framing, appending and snapshot replacement are mmrag/index/journal.py's (TrailingCrc). flush() appends,
and writes a new snapshot (then deletes the journal) when the journal outgrows the snapshot or the index's layout
changed (IVF trained, HNSW rebuilt). open() replays the journal onto the snapshot and stops at a torn or corrupt
record, which a crash mid-flush leaves and no SQL row can vouch for. Replaying is idempotent (last change per id
wins), so a crash between a new snapshot and the journal's deletion replays changes the snapshot already holds,
harmlessly.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import faiss
import numpy as np

from mmrag.errors import ConfigError, IndexError_, NotFoundError
from mmrag.index.journal import Journal, TrailingCrc, replace_snapshot
from mmrag.index.manifest import (
    Manifest,
    as_page_ids,
    atomic_write_bytes,
    checked_batch,
    file_identity,
    remove_stale_tmp_files,
)
from mmrag.types import Hit

log = logging.getLogger(__name__)

FaissKind = Literal["flat", "ivf", "hnsw"]
KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")
METRICS: tuple[str, ...] = ("ip",)  # the VectorIndex contract: inner product on L2-normalised vectors

FILE_MAGIC = b"MMRAGFX1"
_HEADER = struct.Struct("<8sQQQ")
JOURNAL_SUFFIX = ".journal"
JOURNAL_MAGIC = b"MMRAGFJ1"
_JOURNAL_HEADER = struct.Struct("<8sI")
_RECORD_MAGIC = b"FJR1"
_RECORD = struct.Struct("<4sB3xQ")  # then the ids, and for an add the vectors; TrailingCrc adds a u32 crc32
_ADD, _REMOVE = 1, 2

IVF_MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid
IVF_MAX_TRAIN_POINTS_PER_LIST = 256  # faiss subsamples to this anyway; sampling ourselves avoids its warning
HNSW_REBUILD_FRACTION = 0.2
GPU_MAX_K = 2048  # faiss GPU k-selection limit; larger k searches the CPU master


def _num_gpus() -> int:
    # A function (not a constant) so tests can pretend a GPU is present.
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def _contains(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=bool)
    positions = np.searchsorted(sorted_ids, ids)
    return sorted_ids[np.minimum(positions, len(sorted_ids) - 1)] == ids


class FaissIndex:
    """A VectorIndex over FAISS; open it with `FaissIndex.open`. Safe to share between threads (one lock)."""

    def __init__(
        self,
        path: Path,
        *,
        manifest: Manifest,
        index: faiss.Index,
        tombstones: np.ndarray,
        ivf_lists: int,
        ivf_nprobe: int,
        hnsw_m: int,
        hnsw_ef_construction: int,
        hnsw_ef_search: int,
        use_gpu: bool,
        on_disk: bool,
    ) -> None:
        self.path = Path(path)
        self.model = manifest.model
        self.dim = manifest.dim
        self.metric = manifest.metric
        self.kind = manifest.kind
        self._ivf_lists = ivf_lists
        self._ivf_nprobe = ivf_nprobe
        self._hnsw_m = hnsw_m
        self._hnsw_ef_construction = hnsw_ef_construction
        self._hnsw_ef_search = hnsw_ef_search
        self._lock = threading.RLock()
        self._index = index
        # hnsw only: external id of every graph row, and which rows are alive (the rest are tombstones).
        self._labels = np.zeros(0, dtype=np.int64)
        self._alive = np.zeros(0, dtype=bool)
        self._alive_bitmap: np.ndarray | None = None
        if self.kind == "hnsw":
            self._labels = faiss.vector_to_array(index.id_map).astype(np.int64)
            self._alive = np.ones(len(self._labels), dtype=bool)
            self._alive[tombstones] = False
        self._ids = np.sort(self._stored_ids())
        self._dirty = not on_disk
        # Changes since the last flush, in order, for the journal; a new snapshot is due instead when the layout
        # changed or there is no snapshot yet.
        self._changes: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        self._snapshot_due = not on_disk
        self._journal = Journal(self.path.with_name(self.path.name + JOURNAL_SUFFIX), TrailingCrc(self._payload_size))
        # What catch_up follows: the snapshot file read (device, inode, size, mtime) and the journal file replayed.
        self._snapshot_identity: tuple[int, ...] | None = None
        self._journal_identity: tuple[int, ...] | None = None
        self._use_gpu = use_gpu and self.kind in ("flat", "ivf") and _num_gpus() > 0
        self._gpu_resources: object | None = None
        self._gpu_index: faiss.Index | None = None
        self._gpu_labels: np.ndarray | None = None  # row -> page id for a GPU replica of an IndexIDMap2's flat index
        self._configure_search()
        manifest.check_count(len(self._ids), where=self.path)

    # ----------------------------------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        model: str,
        dim: int,
        kind: FaissKind = "flat",
        metric: str = "ip",
        ivf_lists: int = 1024,
        ivf_nprobe: int = 32,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 80,
        hnsw_ef_search: int = 128,
        use_gpu: bool = True,
    ) -> FaissIndex:
        """Open the index file at `path`, or start an empty one if it does not exist (nothing is written before
        `flush`). An existing file's manifest must match model, dim, metric and kind, else ManifestMismatchError."""
        if kind not in KINDS:
            raise ConfigError(f"unknown faiss index kind {kind!r}; known: {', '.join(KINDS)}")
        if metric not in METRICS:
            raise ConfigError(f"unsupported faiss metric {metric!r}; supported: {', '.join(METRICS)}")
        if dim < 1:
            raise ConfigError(f"vector dim must be >= 1, got {dim}")
        if ivf_lists < 1 or ivf_nprobe < 1 or hnsw_m < 2:
            raise ConfigError(f"bad faiss parameters: ivf_lists={ivf_lists}, ivf_nprobe={ivf_nprobe}, hnsw_m={hnsw_m}")
        path = Path(path)
        params: dict[str, Any] = {
            "ivf_lists": ivf_lists,
            "ivf_nprobe": ivf_nprobe,
            "hnsw_m": hnsw_m,
            "hnsw_ef_construction": hnsw_ef_construction,
            "hnsw_ef_search": hnsw_ef_search,
            "use_gpu": use_gpu,
        }
        if not path.exists():
            manifest = Manifest(model=model, dim=dim, metric=metric, count=0, kind=kind)
            index = _new_index(kind, dim, hnsw_m=hnsw_m, hnsw_ef_construction=hnsw_ef_construction)
            log.info("new %s faiss index at %s (model %s, dim %d)", kind, path, model, dim)
            return cls(path, manifest=manifest, index=index, tombstones=np.zeros(0, np.int64), on_disk=False, **params)
        snapshot = file_identity(path)  # before reading: a newer file read under an older identity only costs a reopen
        manifest, index, tombstones = _read_file(path, model=model, dim=dim, metric=metric, kind=kind)
        opened = cls(path, manifest=manifest, index=index, tombstones=tombstones, on_disk=True, **params)
        opened._snapshot_identity = snapshot
        replayed = opened._replay_journal()
        log.info("opened %s faiss index at %s: %d vectors (%d journal records)", kind, path, len(opened), replayed)
        return opened

    # ----------------------------------------------------------------------------------------------- VectorIndex

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace: an id already present gets the new vector (the old one is removed first)."""
        ids, vectors = checked_batch(ids, vectors, self.dim)
        if len(ids) == 0:
            return
        with self._lock:
            self._add(ids, vectors)
            self._changes.append((_ADD, ids.copy(), np.array(vectors, dtype="<f4", copy=True)))

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove these page ids; ids not in the index are ignored. Returns how many were removed."""
        wanted = np.unique(as_page_ids(ids if isinstance(ids, np.ndarray) else list(ids)))
        with self._lock:
            removed = self._remove(wanted)
            if removed:
                self._changes.append((_REMOVE, wanted, None))
            return removed

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k by inner product for each query row, best first; fewer than k hits when the index is smaller."""
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        with self._lock:
            k = min(int(k), len(self._ids))
            if k <= 0 or len(queries) == 0:
                return [[] for _ in range(len(queries))]
            scores, ids = self._search(queries, k)
        return [
            [
                Hit(page_id=int(page_id), score=float(score))
                for score, page_id in zip(row, row_ids, strict=True)
                if page_id >= 0
            ]
            for row, row_ids in zip(scores, ids, strict=True)
        ]

    def ids(self) -> np.ndarray:
        with self._lock:
            return self._ids.copy()

    def vectors(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """The stored vectors of these page ids, (n, dim) in their order (protocols.HoldsVectors: a page's own vector
        is the query that finds its near-duplicates). An id the index does not hold raises NotFoundError."""
        wanted = as_page_ids(ids if isinstance(ids, np.ndarray) else list(ids))
        with self._lock:
            missing = wanted[~_contains(self._ids, wanted)]
            if len(missing):
                raise NotFoundError(f"{self.path.name} holds no vector for page {int(missing[0])}")
            if len(wanted) == 0:
                return np.zeros((0, self.dim), dtype=np.float32)
            if isinstance(self._index, faiss.IndexIVF):
                return _ivf_vectors(self._index, wanted)
            inner = faiss.downcast_index(self._index.index)
            if self.kind == "hnsw":
                rows = np.flatnonzero(self._alive)  # a re-added id's tombstoned rows are skipped
                labels = self._labels[rows]
            else:
                rows = None
                labels = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            order = np.argsort(labels, kind="stable")
            at = order[np.searchsorted(labels, wanted, sorter=order)]
            if rows is not None:
                at = rows[at]
            return np.ascontiguousarray(inner.reconstruct_batch(at.astype(np.int64)), dtype=np.float32)

    def files(self) -> list[Path]:
        """The files that hold this index on disk: its snapshot and its journal (either may not exist yet)."""
        return [self.path, self._journal.path]

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, page_id: object) -> bool:
        return bool(_contains(self._ids, np.asarray([page_id], dtype=np.int64))[0])

    def flush(self) -> None:
        """Make every change durable: appended to the journal, or as a new snapshot when one is due (see the module
        docstring). A no-op when nothing changed."""
        with self._lock:
            if not self._dirty and self.path.exists():
                return
            manifest = self.manifest()
            remove_stale_tmp_files(self.path)  # we are the only writer: any temp file is a dead writer's
            if self._snapshot_due or not self.path.exists() or self._journal_too_big():
                self._write_snapshot(manifest)
            else:
                self._append_journal()
            self._changes = []
            self._snapshot_due = False
            self._dirty = False
        try:
            remove_stale_tmp_files(self.path.with_suffix(".manifest.json"))
            atomic_write_bytes(self.path.with_suffix(".manifest.json"), (manifest.to_json() + "\n").encode())
        except OSError as exc:  # informational copy only; the index file above is already committed
            log.warning("%s: could not write its manifest copy: %s", self.path, exc)
        log.debug("flushed %s: %d vectors", self.path, manifest.count)

    def manifest(self) -> Manifest:
        return Manifest(model=self.model, dim=self.dim, metric=self.metric, count=len(self._ids), kind=self.kind)

    @property
    def is_trained_ivf(self) -> bool:
        """True once an ivf index has switched from its exact start to the trained IVF layout."""
        return isinstance(self._index, faiss.IndexIVF)

    def __repr__(self) -> str:
        return f"FaissIndex({str(self.path)!r}, {self.kind}, model={self.model!r}, dim={self.dim}, n={len(self._ids)})"

    # ----------------------------------------------------------------------------------------------- internals

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        replaced = ids[_contains(self._ids, ids)]
        if len(replaced):
            self._remove_present(replaced)
        self._append(ids, vectors)
        # Sorted insert of the new ids (replaced ones are there already): a copy of the array, not np.union1d's
        # sort of all of it, which grew with the index on every batch of a bulk job.
        fresh = np.sort(ids[~_contains(self._ids, ids)])
        self._ids = np.insert(self._ids, np.searchsorted(self._ids, fresh), fresh)
        self._dirty = True
        self._maybe_train_ivf()
        self._maybe_rebuild_hnsw()

    def _remove(self, wanted: np.ndarray) -> int:
        present = wanted[_contains(self._ids, wanted)]
        if len(present) == 0:
            return 0
        self._remove_present(present)
        self._ids = np.delete(self._ids, np.searchsorted(self._ids, np.unique(present)))
        self._dirty = True
        self._maybe_rebuild_hnsw()
        return len(present)

    # ----------------------------------------------------------------------------------------------- persistence

    def _write_snapshot(self, manifest: Manifest) -> None:
        """The whole index as a new snapshot file, then the journal it supersedes deleted."""
        tombstones = np.flatnonzero(~self._alive).astype("<i8") if self.kind == "hnsw" else np.zeros(0, "<i8")
        replace_snapshot(self.path, lambda file: _write_file(file, manifest, self._index, tombstones), self._journal)

    def _record_bytes(self, op: int, n: int) -> int:
        """A journal record's header and ids, and for an add its vectors (the CRC after it not included)."""
        return _RECORD.size + n * 8 + (n * self.dim * 4 if op == _ADD else 0)

    def _payload_size(self, data: memoryview, offset: int) -> int | None:
        """The size of the record starting at `offset` (for TrailingCrc); None when its header is not a record's."""
        if offset + _RECORD.size > len(data):
            return None
        record_magic, op, n = _RECORD.unpack_from(data, offset)
        if record_magic != _RECORD_MAGIC or op not in (_ADD, _REMOVE):
            return None
        return self._record_bytes(op, n)

    def _journal_too_big(self) -> bool:
        framing = self._journal.framing
        pending = sum(framing.framed_size(self._record_bytes(op, len(ids))) for op, ids, _ in self._changes)
        return self._journal.outgrows(pending, self.path.stat().st_size)

    def _append_journal(self) -> None:
        payloads = []
        for op, ids, vectors in self._changes:
            body = _RECORD.pack(_RECORD_MAGIC, op, len(ids)) + ids.astype("<i8").tobytes()
            payloads.append(body + vectors.tobytes() if vectors is not None else body)
        self._journal.append(_JOURNAL_HEADER.pack(JOURNAL_MAGIC, self.dim), payloads)

    def catch_up(self) -> bool:
        """Follow another process's writes: apply the journal records appended since this index was opened or last
        caught up, reading only those. False, with nothing applied, when that cannot be done (the snapshot was
        rewritten, the journal started over, or this index has changes of its own): open the index again then.

        For a reader beside the collection's writer: reopening reads the whole index, a batch's journal record
        only that batch.
        """
        with self._lock:
            if self._dirty or self._changes or file_identity(self.path) != self._snapshot_identity:
                return False
            start = self._journal.size
            read = self._journal.read(head_size=0, start=start)
            if read is None:
                return start == 0  # none yet (or one that never held a valid record)
            if start and read.identity != self._journal_identity:
                return False  # another journal than the one this index replayed
            applied = self._apply_journal(read.data) if start == 0 else self._apply_records(read.data, start)
            self._journal_identity = read.identity
            if applied:
                log.info("%s: caught up %d journal records, %d vectors now", self.path, applied, len(self._ids))
            return True

    def _replay_journal(self) -> int:
        """Apply the journal's records onto the snapshot just read; returns how many were applied."""
        read = self._journal.read(head_size=0, start=0)
        if read is None:
            return 0
        self._journal_identity = read.identity
        return self._apply_journal(read.data)

    def _apply_journal(self, data: bytes) -> int:
        """Apply a whole journal file's records (header first)."""
        if len(data) < _JOURNAL_HEADER.size:
            return 0  # created, then a crash before its header was durable: nothing in it was ever vouched for
        magic, dim = _JOURNAL_HEADER.unpack_from(data)
        if magic != JOURNAL_MAGIC or dim != self.dim:
            raise IndexError_(f"{self._journal.path}: not a journal of this index (magic {magic!r}, dim {dim}); "
                              "rebuild the index from SQL")
        return self._apply_records(data[_JOURNAL_HEADER.size :], _JOURNAL_HEADER.size)

    def _apply_records(self, data: bytes, base: int) -> int:
        """Apply the committed records at the start of `data` (the journal's bytes from offset `base`); stop at a
        torn or corrupt one. The journal's known-good size ends up just past the last one applied."""
        offset = 0
        applied = 0
        for payload, end in self._journal.records(data):
            _, op, n = _RECORD.unpack_from(payload)
            ids = np.frombuffer(payload, dtype="<i8", count=n, offset=_RECORD.size).astype(np.int64)
            if op == _ADD:
                vectors = np.frombuffer(payload, dtype="<f4", offset=_RECORD.size + n * 8).reshape(n, self.dim)
                self._add(ids, np.ascontiguousarray(vectors, dtype=np.float32))
            else:
                self._remove(ids)
            offset = end
            applied += 1
        if offset < len(data):
            log.warning("%s: ignored a torn or corrupt tail of %d bytes (a crash during a flush, or one in progress "
                        "in another process)", self._journal.path, len(data) - offset)
        self._journal.size = base + offset
        # Replayed changes are already on disk (snapshot + journal): nothing is due until the next change, unless
        # replaying changed the layout (then the next flush writes a snapshot).
        self._dirty = False
        return applied

    def _stored_ids(self) -> np.ndarray:
        if isinstance(self._index, faiss.IndexIVF):
            return _ivf_ids(self._index)
        if self.kind == "hnsw":
            return self._labels[self._alive]
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def _append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, ids)
        if self.kind == "hnsw":
            self._labels = np.concatenate([self._labels, ids])
            self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])
            self._alive_bitmap = None
        elif self._gpu_index is not None:
            self._append_to_gpu_replica(ids, vectors)

    def _remove_present(self, present: np.ndarray) -> None:
        """Remove ids known to be in the index (unique)."""
        present = np.sort(present)
        if self.kind == "hnsw":
            self._alive &= ~_contains(present, self._labels)
            self._alive_bitmap = None
            return
        removed = self._index.remove_ids(present)
        if removed != len(present):
            raise IndexError_(f"{self.path}: faiss removed {removed} of {len(present)} ids known to be present")
        self._drop_gpu_replica()

    def _maybe_train_ivf(self) -> None:
        if self.kind != "ivf" or self.is_trained_ivf:
            return
        nlist = self._ivf_lists
        if self._index.ntotal < IVF_MIN_POINTS_PER_LIST * nlist:
            return
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = self._index.index.reconstruct_n(0, self._index.ntotal)
        training = vectors
        if len(vectors) > IVF_MAX_TRAIN_POINTS_PER_LIST * nlist:
            rng = np.random.default_rng(1234)  # deterministic, so a rebuild from SQL trains the same centroids
            training = vectors[rng.choice(len(vectors), IVF_MAX_TRAIN_POINTS_PER_LIST * nlist, replace=False)]
        log.info("training IVF on %d vectors, %d lists (%s)", len(training), nlist, self.path)
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(np.ascontiguousarray(training))
        ivf.add_with_ids(vectors, ids)
        self._index = ivf
        self._snapshot_due = True  # the journal holds vectors, not the trained layout
        self._drop_gpu_replica()
        self._configure_search()

    def _maybe_rebuild_hnsw(self) -> None:
        if self.kind != "hnsw":
            return
        dead = len(self._alive) - int(self._alive.sum())
        if dead == 0 or dead < HNSW_REBUILD_FRACTION * len(self._alive):
            return
        live_rows = np.flatnonzero(self._alive)
        log.info("rebuilding HNSW graph without %d tombstones (%d live vectors, %s)", dead, len(live_rows), self.path)
        inner = faiss.downcast_index(self._index.index)
        vectors = inner.reconstruct_n(0, inner.ntotal)[live_rows] if len(live_rows) else np.zeros((0, self.dim), "f4")
        ids = self._labels[live_rows]
        index = _new_index("hnsw", self.dim, hnsw_m=self._hnsw_m, hnsw_ef_construction=self._hnsw_ef_construction)
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors), ids)
        self._index = index
        self._labels = ids.copy()
        self._alive = np.ones(len(ids), dtype=bool)
        self._alive_bitmap = None
        self._snapshot_due = True

    def _configure_search(self) -> None:
        if isinstance(self._index, faiss.IndexIVF):
            self._index.nprobe = min(self._ivf_nprobe, self._index.nlist)
        elif self.kind == "hnsw":
            faiss.downcast_index(self._index.index).hnsw.efSearch = self._hnsw_ef_search

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw":
            return self._search_hnsw(queries, k)
        if self._use_gpu and k <= GPU_MAX_K:
            replica = self._gpu_replica()
            if replica is not None:
                scores, rows = replica.search(queries, k)
                if self._gpu_labels is None:
                    return scores, rows
                ids = np.where(rows >= 0, self._gpu_labels[np.maximum(rows, 0)], -1)
                return scores, ids
        return self._index.search(queries, k)

    def _search_hnsw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        inner = faiss.downcast_index(self._index.index)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self._hnsw_ef_search, k)
        selector = None
        if not self._alive.all():
            if self._alive_bitmap is None:
                self._alive_bitmap = np.packbits(self._alive, bitorder="little")
            # `selector` and the bitmap must outlive the search call: faiss holds raw pointers to both.
            selector = faiss.IDSelectorBitmap(len(self._alive), faiss.swig_ptr(self._alive_bitmap))
            params.sel = selector
        scores, rows = inner.search(queries, k, params=params)
        ids = np.where(rows >= 0, self._labels[np.maximum(rows, 0)], -1)
        del selector
        return scores, ids

    # GPU replica ---------------------------------------------------------------------------------------------

    def _clone_to_gpu(self, index: faiss.Index) -> faiss.Index:
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)

    def _gpu_replica(self) -> faiss.Index | None:
        if self._gpu_index is not None:
            return self._gpu_index
        try:
            if isinstance(self._index, faiss.IndexIVF):
                self._gpu_index = self._clone_to_gpu(self._index)
                self._gpu_index.nprobe = self._index.nprobe
                self._gpu_labels = None  # IVF keeps page ids itself
            else:
                # Only the flat storage goes to the GPU; we translate rows to page ids with id_map ourselves
                # rather than rely on how the GPU cloner treats an IndexIDMap2 wrapper.
                self._gpu_index = self._clone_to_gpu(self._index.index)
                self._gpu_labels = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        except RuntimeError as exc:  # out of GPU memory, unsupported layout: searching on the CPU still works
            log.warning("cannot move %s to the GPU, searching on the CPU: %s", self.path, exc)
            self._use_gpu = False
            self._drop_gpu_replica()
            return None
        log.info("GPU replica of %s ready (%d vectors)", self.path, self._gpu_index.ntotal)
        return self._gpu_index

    def _append_to_gpu_replica(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        assert self._gpu_index is not None
        if self._gpu_labels is None:
            self._gpu_index.add_with_ids(vectors, ids)
        else:
            self._gpu_index.add(vectors)
            self._gpu_labels = np.concatenate([self._gpu_labels, ids])

    def _drop_gpu_replica(self) -> None:
        self._gpu_index = None
        self._gpu_labels = None


# ----------------------------------------------------------------------------------------------- helpers


def _new_index(kind: str, dim: int, *, hnsw_m: int, hnsw_ef_construction: int) -> faiss.Index:
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = hnsw_ef_construction
        return faiss.IndexIDMap2(hnsw)
    # flat, and ivf before it has enough vectors to train
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _ivf_vectors(ivf: faiss.IndexIVFFlat, wanted: np.ndarray) -> np.ndarray:
    """The vectors of `wanted` (all held) from an IVFFlat's inverted lists, whose codes are the raw float32 vectors.
    Read from the lists rather than through a direct map, which would change the index's layout on disk."""
    out = np.zeros((len(wanted), ivf.d), dtype=np.float32)
    invlists = ivf.invlists
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size == 0:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
        hit = np.isin(wanted, ids)
        if not hit.any():
            continue
        codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * ivf.code_size).view("<f4").reshape(size, ivf.d)
        order = np.argsort(ids, kind="stable")
        out[hit] = codes[order[np.searchsorted(ids, wanted[hit], sorter=order)]]
    return out


def _ivf_ids(ivf: faiss.IndexIVF) -> np.ndarray:
    invlists = ivf.invlists
    parts = [
        faiss.rev_swig_ptr(invlists.get_ids(list_no), invlists.list_size(list_no)).copy()
        for list_no in range(ivf.nlist)
        if invlists.list_size(list_no) > 0
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _write_file(file: BinaryIO, manifest: Manifest, index: faiss.Index, tombstones: np.ndarray) -> None:
    manifest_bytes = manifest.to_json().encode()
    file.write(_HEADER.pack(FILE_MAGIC, len(manifest_bytes), 0, tombstones.nbytes))
    file.write(manifest_bytes)
    start = file.tell()
    # Streamed through a callback so a large index is not copied into one bytes object first.
    writer = faiss.PyCallbackIOWriter(file.write)
    faiss.write_index(index, writer)
    del writer  # flushes faiss' internal buffer into `file`
    index_len = file.tell() - start
    file.write(tombstones.tobytes())
    file.seek(0)
    file.write(_HEADER.pack(FILE_MAGIC, len(manifest_bytes), index_len, tombstones.nbytes))
    file.seek(0, 2)


def _read_file(path: Path, *, model: str, dim: int, metric: str, kind: str) -> tuple[Manifest, faiss.Index, np.ndarray]:
    size = path.stat().st_size
    with path.open("rb") as file:
        header = file.read(_HEADER.size)
        if len(header) != _HEADER.size:
            raise IndexError_(f"{path}: truncated header ({size} bytes); rebuild the index from SQL")
        magic, manifest_len, index_len, tombstones_len = _HEADER.unpack(header)
        if magic != FILE_MAGIC:
            raise IndexError_(f"{path}: not an mmrag faiss index (magic {magic!r}, expected {FILE_MAGIC!r})")
        expected_size = _HEADER.size + manifest_len + index_len + tombstones_len
        if size != expected_size or index_len == 0:
            raise IndexError_(f"{path}: file is {size} bytes, its header says {expected_size}; rebuild from SQL")
        manifest = Manifest.from_json(file.read(manifest_len))
        # Checked before the (possibly large) index is read: a mismatch needs a rebuild anyway.
        manifest.check(model, dim, metric, where=path)
        manifest.check_kind(kind, where=path)
        remaining = index_len

        def read(n: int) -> bytes:
            nonlocal remaining
            chunk = file.read(min(n, remaining))
            remaining -= len(chunk)
            return chunk

        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(read))
        except RuntimeError as exc:
            raise IndexError_(f"{path}: faiss cannot read the index ({exc}); rebuild it from SQL") from exc
        file.seek(_HEADER.size + manifest_len + index_len)
        tombstones = np.frombuffer(file.read(tombstones_len), dtype="<i8").astype(np.int64)
    # read_index returns the concrete class already; do not re-wrap it with downcast_index, whose proxy does not
    # own the C++ object (dropping the owning proxy would free the index).
    if index.d != dim:
        raise IndexError_(f"{path}: manifest says dim {dim}, the stored faiss index has dim {index.d}")
    if len(tombstones) and (tombstones.min() < 0 or tombstones.max() >= index.ntotal):
        raise IndexError_(f"{path}: tombstone positions outside 0..{index.ntotal - 1}")
    return manifest, index, tombstones
