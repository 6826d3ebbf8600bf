"""ShardedMultiVectorStore: per-page token embeddings in memory-mapped fp16 shards, searched with exact MaxSim.

On-disk layout (one directory per store)
    shard-NNNNNN.f16   raw little-endian float16 rows of width `dim`, appended to and never rewritten in place.
                       A page's tokens are contiguous and never split across shards; a shard is closed once the
                       next page would take it past `shard_rows` (a single page larger than that gets a shard alone).
    offsets.bin        THE SNAPSHOT, replaced atomically by flush() (now and then) and compact():
                         b"MMRAGMV1" | u64 header_len | header JSON | entry table
                       header: {"manifest": {...}, "shards": [{"serial": s, "rows": committed rows}, ...],
                                "next_serial": n, "entries": number of table rows, "snapshot": its id}
                       table: packed little-endian records (page_id i8, shard serial i4, start_row i8,
                              n_tokens i4, deleted u1), in (shard, start_row) order.
    offsets.journal    what flush() committed since the snapshot, appended and fsynced (rewriting the whole entry
                       table on every flush cost 59 ms a batch at a million pages, growing with the collection):
                         b"MMRAGMJ1" | the snapshot's id (16 bytes) | records
                       record: u32 payload_len | u32 crc32(payload) | payload, and payload:
                         u32 header_len | header JSON {"shards", "next_serial", "tombstones": t, "entries": e} |
                         t table rows (i8) tombstoned since | e entry records appended since
                       A record is committed once whole and its checksum matches; a torn last record is cut off by
                       the next writer. A journal whose id is not the snapshot's (a crash between a new snapshot
                       and the old journal's deletion) is ignored and deleted. flush() writes a new snapshot instead
                       of appending once the journal would pass the snapshot's size (JOURNAL_MIN_BYTES at least).
    manifest.json      a human-readable copy of the manifest as of the last snapshot; never read back.

Crash safety: rows are written (pwrite) before the table that references them is committed, and shard files are
fsynced before offsets.bin is replaced or the journal appended to. Rows past a shard's committed end, and shard
files the committed table does not name, are leftovers of an interrupted run; a writer truncates/deletes them on
open, a reader ignores them.
compact() writes the live rows into new shard files (new serials), commits a table naming only those, then deletes
the old files, so a crash at any point leaves either the old or the new state committed.

Deletion is a tombstone (the entry's `deleted` flag); re-adding a page tombstones its previous entry. compact()
drops tombstoned rows. Opening reads only offsets.bin and the journal: shards are memory-mapped, so a store larger
than RAM opens. A reader catching up reads only the journal's new records while the snapshot is the same.

Search is exact MaxSim: score(page) = sum over query tokens of max over page tokens of <q, p>. Rows are read
in chunks of whole pages (never all pages x all tokens at once), converted to float32 (fp16 matmul is slow on CPU;
float32 on CUDA too keeps results identical across devices), multiplied with all query tokens at once, and reduced
per page with torch.segment_reduce(max), which handles variable token counts without padding.

On CUDA with Triton (kernel "auto" or "triton"), search instead runs the fused kernel of mmrag/index/maxsim.py over
a device-resident copy of the shards' rows, built on the first search after a change and dropped on the next
change; the top-k is taken on the device too. A store whose rows do not fit in the device's free memory streams
from the memory-mapped shards as above.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import struct
import threading
import weakref
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from mmrag.device import resolve_device
from mmrag.errors import ConfigError, IndexError_
from mmrag.index.maxsim import maxsim_triton, pack_queries, triton_available
from mmrag.index.manifest import (
    Manifest,
    as_page_ids,
    atomic_write,
    atomic_write_bytes,
    file_identity,
    fsync_dir,
    last_occurrences,
    remove_stale_tmp_files,
)
from mmrag.types import Hit

log = logging.getLogger(__name__)

METRIC = "maxsim"
KIND = "multivector"
OFFSETS_FILE = "offsets.bin"
JOURNAL_FILE = "offsets.journal"
MANIFEST_FILE = "manifest.json"
FILE_MAGIC = b"MMRAGMV1"
JOURNAL_MAGIC = b"MMRAGMJ1"
_HEADER = struct.Struct("<8sQ")
_JOURNAL_HEAD = len(JOURNAL_MAGIC) + 16  # magic, then the snapshot id (16 hex characters)
_RECORD = struct.Struct("<II")  # payload length, crc32 of the payload
_U32 = struct.Struct("<I")
JOURNAL_MIN_BYTES = 64 * 1024 * 1024  # below this a journal never forces a new snapshot
_SHARD_NAME = re.compile(r"^shard-(\d{6,})\.f16$")
ROW_DTYPE = np.dtype("<f2")
ENTRY_DTYPE = np.dtype(
    [("page_id", "<i8"), ("shard", "<i4"), ("start", "<i8"), ("n_tokens", "<i4"), ("deleted", "u1")]
)  # packed: no padding, so the file layout does not depend on the platform's alignment
DEFAULT_CHUNK_ROWS = {"cpu": 65_536, "cuda": 1_048_576}
_COPY_ROWS = 262_144  # rows per write while compacting


@dataclass
class _Records:
    """What the whole journal records at the start of some bytes say: entries to append to the table, rows of it
    (as it stands before them, or appended by an earlier record) to tombstone, the shards' committed rows after the
    last record, and the bytes they take."""

    entries: np.ndarray
    tombstones: np.ndarray
    shards: list[_Shard] | None
    next_serial: int | None
    used: int


def _read_records(data: bytes, rows: int) -> _Records:
    """Parse journal records for a table of `rows` rows; stops at the first record that is torn or fails its
    checksum (an interrupted flush: not committed)."""
    position, appended, tombstones = 0, [], []
    shards, next_serial = None, None
    while position + _RECORD.size <= len(data):
        length, checksum = _RECORD.unpack_from(data, position)
        payload = data[position + _RECORD.size : position + _RECORD.size + length]
        if len(payload) < length or zlib.crc32(payload) != checksum:
            break
        (header_len,) = _U32.unpack_from(payload)
        header = json.loads(payload[_U32.size : _U32.size + header_len])
        body = _U32.size + header_len
        dead = np.frombuffer(payload, dtype="<i8", count=int(header["tombstones"]), offset=body)
        entries = np.frombuffer(payload, dtype=ENTRY_DTYPE, count=int(header["entries"]), offset=body + dead.nbytes)
        if len(dead) and (dead.min() < 0 or dead.max() >= rows):
            raise IndexError_(f"a journal record tombstones row {int(dead.max())} of {rows}: the store is damaged")
        tombstones.append(dead)
        appended.append(entries)
        rows += len(entries)
        shards = [_Shard(serial=int(shard["serial"]), rows=int(shard["rows"])) for shard in header["shards"]]
        next_serial = int(header["next_serial"])
        position += _RECORD.size + length
    return _Records(
        np.concatenate(appended) if appended else np.zeros(0, dtype=ENTRY_DTYPE),
        np.concatenate(tombstones) if tombstones else np.zeros(0, dtype=np.int64),
        shards, next_serial, position,
    )


def shard_file_name(serial: int) -> str:
    return f"shard-{serial:06d}.f16"


@dataclass
class _Shard:
    serial: int
    rows: int  # rows written and referenced by entries (committed or not)


@dataclass(frozen=True)
class _Resident:
    """Every shard's rows on the device, for the fused kernel: live page i is rows[starts[i] : starts[i] + lengths[i]]
    and table row entries[i]; position[table row] is its packed index (-1 when tombstoned)."""

    rows: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    entries: np.ndarray
    position: np.ndarray


def _close_all(fds: dict[int, int]) -> None:
    while fds:
        _, fd = fds.popitem()
        with contextlib.suppress(OSError):
            os.close(fd)


class ShardedMultiVectorStore:
    """A MultiVectorStore over memory-mapped fp16 shards. One writer at a time; `read_only=True` opens for readers
    (another process may be writing): nothing is truncated or deleted, and add/remove/flush/compact are refused."""

    def __init__(
        self,
        directory: Path,
        dim: int,
        model_id: str,
        *,
        shard_rows: int = 4_000_000,
        device: str = "cpu",
        chunk_rows: int | None = None,
        read_only: bool = False,
        kernel: str = "auto",
    ) -> None:
        if dim < 1 or shard_rows < 1:
            raise ConfigError(f"multi-vector store needs dim >= 1 and shard_rows >= 1, got {dim}, {shard_rows}")
        self.directory = Path(directory)
        self.dim = dim
        self.model_id = model_id
        self.shard_rows = shard_rows
        self.device = torch.device(resolve_device(device))
        self.chunk_rows = chunk_rows or DEFAULT_CHUNK_ROWS.get(self.device.type, DEFAULT_CHUNK_ROWS["cpu"])
        self.read_only = read_only
        if kernel not in ("auto", "triton", "torch"):
            raise ConfigError(f"multi-vector kernel must be auto, triton or torch, got {kernel!r}")
        if kernel == "triton" and not triton_available(self.device):
            raise ConfigError(f"the Triton MaxSim kernel cannot run on {self.device} (needs CUDA and triton)")
        # The fused kernel serves from a device-resident copy of the rows (see _resident_rows).
        auto_triton = kernel == "auto" and self.device.type == "cuda" and triton_available(self.device)
        self.kernel = "triton" if kernel == "triton" or auto_triton else "torch"
        self._resident: _Resident | None = None
        self._resident_refused = False
        self._row_bytes = dim * ROW_DTYPE.itemsize
        self._lock = threading.RLock()
        self._table = np.zeros(0, dtype=ENTRY_DTYPE)  # a view of the first rows of _buffer (grown by doubling)
        self._buffer = self._table
        self._snapshot_id: str | None = None  # of the offsets.bin loaded or written; None before the first
        self._uid = os.urandom(8).hex()  # this store's identity, kept in every snapshot (see uid)
        self._snapshot_bytes = 0
        self._journal_bytes = 0  # valid bytes of the journal (header included), read or written
        self._committed = 0  # table rows on disk (snapshot + journal)
        self._tombstoned_since: list[int] = []  # rows below _committed tombstoned since the last flush
        self._shards: list[_Shard] = []
        self._next_serial = 0
        self._live: dict[int, int] = {}  # page id -> row of _table
        self._fds: dict[int, int] = {}  # shard serial -> fd open for writing
        weakref.finalize(self, _close_all, self._fds)  # a store dropped without close() still releases its fds
        self._unsynced: set[int] = set()  # shard serials written since the last commit
        self._maps: dict[int, np.memmap] = {}  # shard serial -> memmap of its first `rows` rows
        self._plan: list[tuple[int, int, int, np.ndarray, torch.Tensor]] | None = None
        self._dirty = False
        self._version = 0
        self._offsets_seen: tuple[int, ...] | None = None  # the offsets file a read-only store loaded (catch_up)
        if read_only:
            if not (self.directory / OFFSETS_FILE).exists():
                raise IndexError_(f"{self.directory}: no multi-vector store to open read-only")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / OFFSETS_FILE).exists():
            seen = file_identity(self.directory / OFFSETS_FILE)  # before reading: newer content costs a reload
            self._load()
            self._offsets_seen = seen
        else:
            self._dirty = True  # the first flush creates offsets.bin even when empty
            if not read_only:
                self._remove_unreferenced_shards()
            log.info("new multi-vector store at %s (model %s, dim %d)", self.directory, model_id, dim)

    # ----------------------------------------------------------------------------------------------- MultiVectorStore

    def add(self, ids: Sequence[int], vectors: Sequence[np.ndarray]) -> None:
        """Append pages' token embeddings (each (tokens, dim), tokens >= 1), stored as fp16. Re-adding a page
        tombstones its previous entry. Visible to search at once; durable after flush()."""
        self._check_writable()
        page_ids = as_page_ids(list(ids) if not isinstance(ids, np.ndarray) else ids)
        if len(page_ids) != len(vectors):
            raise ValueError(f"{len(page_ids)} ids for {len(vectors)} token matrices")
        keep = last_occurrences(page_ids)
        pages: list[tuple[int, np.ndarray]] = []
        for position in keep:
            tokens = np.asarray(vectors[position])
            if tokens.ndim != 2 or tokens.shape[1] != self.dim or tokens.shape[0] < 1:
                raise ValueError(
                    f"page {page_ids[position]}: tokens must have shape (n>=1, {self.dim}), got {tokens.shape}"
                )
            with np.errstate(over="ignore"):  # overflow shows up as inf, rejected just below
                tokens16 = np.ascontiguousarray(tokens, dtype=ROW_DTYPE)
            if not np.isfinite(tokens16).all():
                raise ValueError(f"page {page_ids[position]}: token vectors are NaN/inf or overflow float16")
            pages.append((int(page_ids[position]), tokens16))
        if not pages:
            return
        with self._lock:
            shards_before = [(shard, shard.rows) for shard in self._shards]
            try:
                new_entries = self._write_pages(pages)
            except BaseException:
                # Undo the row counts so the table keeps tiling every shard; the bytes written are overwritten by
                # the next add, or truncated on the next open.
                for shard, rows in shards_before:
                    shard.rows = rows
                del self._shards[len(shards_before) :]
                self._forget_layout()
                raise
            # Rows are on disk; only now does the table point at them.
            for page_id, _ in pages:
                old = self._live.pop(page_id, None)
                if old is not None:
                    self._tombstone(old)
            base = len(self._table)
            self._append_entries(new_entries)
            for offset, (page_id, _) in enumerate(pages):
                self._live[page_id] = base + offset
            self._changed()

    def remove(self, ids: Iterable[int]) -> int:
        """Tombstone these pages; unknown ids are ignored. Returns how many were removed."""
        self._check_writable()
        removed = 0
        with self._lock:
            for page_id in np.unique(as_page_ids(ids if isinstance(ids, np.ndarray) else list(ids))):
                row = self._live.pop(int(page_id), None)
                if row is not None:
                    self._tombstone(row)
                    removed += 1
            if removed:
                self._changed()
        return removed

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """Top-k pages by exact MaxSim for one query of shape (query_tokens, dim)."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[np.ndarray], k: int) -> list[list[Hit]]:
        """Top-k pages for each query; one pass over the shards serves the whole batch."""
        query_arrays = [np.asarray(query, dtype=np.float32) for query in queries]
        for query in query_arrays:
            if query.ndim != 2 or query.shape[1] != self.dim or query.shape[0] < 1:
                raise ValueError(f"a query must have shape (n>=1, {self.dim}), got {query.shape}")
        if not query_arrays:
            return []
        with self._lock:
            if k <= 0 or not self._live:
                return [[] for _ in query_arrays]
            resident = self._resident_rows()
            if resident is not None:
                return self._search_resident(resident, query_arrays, k)
            page_scores = self._score_pages(query_arrays)
            table = self._table
        results = []
        for column in range(len(query_arrays)):
            scores = page_scores[:, column]
            candidates = np.flatnonzero(np.isfinite(scores))  # tombstoned entries stay -inf
            if len(candidates) > k:
                candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
            page_ids = table["page_id"][candidates]
            order = np.lexsort((page_ids, -scores[candidates]))  # best first; ties by page id, for stable output
            results.append([Hit(page_id=int(page_ids[i]), score=float(scores[candidates[i]])) for i in order])
        return results

    def score_subset(self, query: np.ndarray, page_ids: Sequence[int]) -> list[Hit]:
        """Exact MaxSim of one query against only these pages (the rerank step of a candidate search), best first.

        Reads just their rows from the memory-mapped shards, so the cost follows the candidates, not the store."""
        query = np.asarray(query, dtype=np.float32)
        if query.ndim != 2 or query.shape[1] != self.dim:
            raise ValueError(f"a query must have shape (n, {self.dim}), got {query.shape}")
        with self._lock:
            rows = [self._live[int(p)] for p in dict.fromkeys(int(p) for p in page_ids) if int(p) in self._live]
            entries = self._table[rows]
            if not rows:
                return []
            resident = self._resident_rows()
            if resident is not None:
                packed = torch.from_numpy(resident.position[rows]).to(self.device)
                scores = maxsim_triton(
                    resident.rows, resident.starts[packed], resident.lengths[packed], pack_queries([query], self.device)
                )[:, 0].cpu().numpy()
            else:
                scores = self._score_rows(query, entries)
        order = np.lexsort((entries["page_id"], -scores))
        return [Hit(page_id=int(entries["page_id"][i]), score=float(scores[i])) for i in order]

    def _score_rows(self, query: np.ndarray, entries: np.ndarray) -> np.ndarray:
        """MaxSim of one query against these table entries, reading only their rows (caller holds the lock)."""
        blocks = [np.asarray(self._map(int(e["shard"]))[e["start"] : e["start"] + e["n_tokens"]]) for e in entries]
        with torch.inference_mode():
            tokens = torch.from_numpy(np.concatenate(blocks)).to(self.device).to(torch.float32)
            similarity = tokens @ torch.from_numpy(query).to(self.device).T
            lengths = torch.from_numpy(entries["n_tokens"].astype(np.int64)).to(self.device)
            return torch.segment_reduce(similarity, "max", lengths=lengths, axis=0).sum(dim=1).cpu().numpy()

    def files(self) -> list[Path]:
        """The files whose commits are this store's state on disk (they name the shards and their committed rows):
        the snapshot and its journal (which may not exist)."""
        return [self.directory / OFFSETS_FILE, self.directory / JOURNAL_FILE]

    @property
    def version(self) -> int:
        """Counts the changes to this store's live pages (add, remove) made through this object: what is derived
        from them (a candidate index) is current while it is unchanged. Reading it is free; comparing ids() is not
        (35 ms at a million pages)."""
        return self._version

    def ids(self) -> np.ndarray:
        with self._lock:
            return np.sort(np.fromiter(self._live.keys(), dtype=np.int64, count=len(self._live)))

    @property
    def uid(self) -> str:
        """Random, made when the store is created and kept for its life: what is derived from it and saved (the
        candidate index) tells this store from another at the same path (deleted and indexed again)."""
        return self._uid

    def live_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(page ids, entry rows) of the live pages, in entry order: a page added again gets a new row, so what is
        derived from its tokens can tell (a compaction renumbers every row)."""
        with self._lock:
            rows = np.flatnonzero(self._table["deleted"] == 0)
            return self._table["page_id"][rows].astype(np.int64), rows.astype(np.int64)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, page_id: object) -> bool:
        return page_id in self._live

    def tokens(self, page_id: int) -> np.ndarray:
        """The stored (fp16) token matrix of one live page, e.g. to rebuild another index from it."""
        with self._lock:
            row = self._live[page_id]
            entry = self._table[row]
            return np.array(self._map(int(entry["shard"]))[entry["start"] : entry["start"] + entry["n_tokens"]])

    def flush(self) -> None:
        """Commit: fsync new rows, then append what changed to the journal (or write a new snapshot when it would
        outgrow it). A no-op when nothing changed."""
        self._check_writable()
        with self._lock:
            if not self._dirty:
                return
            for serial in sorted(self._unsynced):
                if serial in self._fds:
                    os.fsync(self._fds[serial])
            record = self._journal_record() if self._snapshot_id is not None else b""
            if not record or self._journal_bytes + len(record) > max(JOURNAL_MIN_BYTES, self._snapshot_bytes):
                self._commit(self._table, self._shards)
            else:
                self._append_journal(record)
            self._unsynced.clear()

    def compact(self) -> None:
        """Rewrite the shards without tombstoned rows, then commit (so compact() also flushes)."""
        self._check_writable()
        with self._lock:
            dead = int(self._table["deleted"].sum())
            if dead == 0:
                self.flush()
                return
            live_rows = np.flatnonzero(self._table["deleted"] == 0)
            old_serials = [shard.serial for shard in self._shards]
            old_bytes = sum(shard.rows for shard in self._shards) * self._row_bytes
            new_shards: list[_Shard] = []
            new_table = np.zeros(len(live_rows), dtype=ENTRY_DTYPE)
            try:
                self._copy_live_rows(live_rows, new_shards, new_table)
                for shard in new_shards:
                    os.fsync(self._fds[shard.serial])
                self._commit(new_table, new_shards)
            except BaseException:
                # Nothing is committed: the old state stands. The new files are left for the next writer's open
                # to delete as unreferenced; deleting them here is never needed for correctness.
                for shard in new_shards:
                    self._forget_shard(shard.serial)
                raise
            # Committed: the old shard files are unreferenced from here on.
            self._table = self._buffer = new_table
            self._shards = new_shards
            self._live = {int(page_id): row for row, page_id in enumerate(new_table["page_id"])}
            self._unsynced.clear()
            for serial in old_serials:
                self._forget_shard(serial)
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / shard_file_name(serial)).unlink()
            fsync_dir(self.directory)
            self._forget_layout()
            new_bytes = sum(shard.rows for shard in new_shards) * self._row_bytes
            log.info(
                "compacted %s: dropped %d tombstoned pages, %d -> %d bytes", self.directory, dead, old_bytes, new_bytes
            )

    def _copy_live_rows(self, live_rows: np.ndarray, new_shards: list[_Shard], new_table: np.ndarray) -> None:
        """Copy the rows of `live_rows` entries into fresh shards, filling `new_shards` and `new_table`."""
        buffer: list[np.ndarray] = []
        buffered = 0

        def spill() -> None:
            nonlocal buffer, buffered
            if buffer:
                self._write_rows(new_shards[-1], new_shards[-1].rows, buffer)
                buffer, buffered = [], 0

        for position, row in enumerate(live_rows):
            entry = self._table[row]
            n_tokens, start = int(entry["n_tokens"]), int(entry["start"])
            used = new_shards[-1].rows + buffered if new_shards else None
            if used is None or (used > 0 and used + n_tokens > self.shard_rows):
                spill()
                new_shards.append(_Shard(serial=self._next_serial, rows=0))
                self._next_serial += 1
            new_table[position] = (entry["page_id"], new_shards[-1].serial, new_shards[-1].rows + buffered, n_tokens, 0)
            buffer.append(np.asarray(self._map(int(entry["shard"]))[start : start + n_tokens]))
            buffered += n_tokens
            if buffered >= _COPY_ROWS:
                spill()
        spill()

    def manifest(self) -> Manifest:
        return Manifest(model=self.model_id, dim=self.dim, metric=METRIC, count=len(self._live), kind=KIND)

    def stats(self) -> dict[str, int]:
        """Sizes for status output: live/tombstoned pages, shards, token rows on disk."""
        with self._lock:
            return {
                "pages": len(self._live),
                "tombstoned_pages": int(self._table["deleted"].sum()),
                "shards": len(self._shards),
                "rows": int(sum(shard.rows for shard in self._shards)),
            }

    def catch_up(self) -> bool:
        """A read-only store follows its writer: the journal records committed since (while the snapshot is the
        one it read), else the entry table again (shards are memory-mapped, so no token row is read). False for a
        writable store, which has no one to follow: its own writes are what is on disk."""
        if not self.read_only:
            return False
        with self._lock:
            seen = file_identity(self.directory / OFFSETS_FILE)
            if seen is None:
                return False
            if seen == self._offsets_seen and self._follow_journal():
                return True
            self._load()
            self._offsets_seen = seen
            self._maps.clear()  # compaction may have replaced the shards
            self._map_committed_shards()
            self._version += 1
            self._forget_layout()
            return True

    def close(self) -> None:
        """Release file handles and maps (does not flush)."""
        with self._lock:
            _close_all(self._fds)
            self._maps.clear()
            self._resident = None  # frees the device copy

    def __enter__(self) -> ShardedMultiVectorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r}, model={self.model_id!r}, dim={self.dim}, n={len(self)})"

    # ----------------------------------------------------------------------------------------------- search internals

    def _score_pages(self, queries: list[np.ndarray]) -> np.ndarray:
        """(entries, queries) MaxSim scores; -inf for tombstoned entries and chunks holding none alive."""
        query_lengths = torch.tensor([len(query) for query in queries])
        query_tokens = torch.from_numpy(np.ascontiguousarray(np.concatenate(queries))).to(self.device)
        # Summing each query's columns is a matmul with a 0/1 (query tokens x queries) matrix.
        owner = torch.repeat_interleave(torch.arange(len(queries)), query_lengths)
        column_sum = torch.nn.functional.one_hot(owner, len(queries)).to(self.device, torch.float32)
        page_scores = np.full((len(self._table), len(queries)), -np.inf, dtype=np.float32)
        alive = self._table["deleted"] == 0
        with torch.inference_mode():
            for serial, row_start, row_stop, entries, lengths in self._chunk_plan():
                if not alive[entries].any():
                    continue  # only tombstones here: skip the read entirely
                rows = torch.from_numpy(np.array(self._map(serial)[row_start:row_stop]))
                rows = rows.to(self.device, non_blocking=True).to(torch.float32)
                similarity = rows @ query_tokens.T  # (rows, all query tokens)
                maxima = torch.segment_reduce(similarity, "max", lengths=lengths.to(self.device), axis=0)
                page_scores[entries] = (maxima @ column_sum).cpu().numpy()
        page_scores[~alive] = -np.inf
        return page_scores

    def _search_resident(self, resident: _Resident, queries: list[np.ndarray], k: int) -> list[list[Hit]]:
        """search_batch through the fused kernel over the device-resident rows; top-k on the device too."""
        with torch.inference_mode():
            scores = maxsim_triton(resident.rows, resident.starts, resident.lengths, pack_queries(queries, self.device))
            best = torch.topk(scores, min(k, scores.shape[0]), dim=0)
            values, packed = best.values.cpu().numpy(), best.indices.cpu().numpy()
        results = []
        for column in range(len(queries)):
            entries = resident.entries[packed[:, column]]
            page_ids = self._table["page_id"][entries]
            order = np.lexsort((page_ids, -values[:, column]))
            results.append([Hit(page_id=int(page_ids[i]), score=float(values[i, column])) for i in order])
        return results

    def _resident_rows(self) -> _Resident | None:
        """The device-resident copy the kernel reads, built on first search after a change (caller holds the lock).

        None when the torch path serves (kernel "torch"), or when the rows do not fit in the device's free memory:
        then search streams chunks from the memory-mapped shards instead, as on CPU."""
        if self.kernel != "triton" or self._resident_refused:
            return self._resident
        if self._resident is not None:
            return self._resident
        total = sum(shard.rows for shard in self._shards)
        need = total * self._row_bytes
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if need > 0.85 * free:
                log.warning(
                    "%s: %.1f GB of token rows do not fit in %s's %.1f GB free; streaming from disk instead",
                    self.directory, need / 1e9, self.device, free / 1e9,
                )
                self._resident_refused = True
                return None
        rows = torch.empty((total, self.dim), dtype=torch.float16, device=self.device)
        base = np.zeros(self._next_serial + 1, dtype=np.int64)
        offset = 0
        for shard in self._shards:
            base[shard.serial] = offset
            mapped = self._map(shard.serial)
            for first in range(0, shard.rows, _COPY_ROWS):
                block = torch.from_numpy(np.array(mapped[first : first + _COPY_ROWS]))  # a copy: the map is read-only
                rows[offset + first : offset + first + len(block)].copy_(block)
            offset += shard.rows
        table = self._table
        entries = np.flatnonzero(table["deleted"] == 0)
        position = np.full(len(table), -1, dtype=np.int64)
        position[entries] = np.arange(len(entries))
        starts = base[table["shard"][entries]] + table["start"][entries]
        self._resident = _Resident(
            rows=rows,
            starts=torch.from_numpy(starts.astype(np.int64)).to(self.device),
            lengths=torch.from_numpy(table["n_tokens"][entries].astype(np.int32)).to(self.device),
            entries=entries,
            position=position,
        )
        log.info("%s: %d pages (%.2f GB) resident on %s for the MaxSim kernel", self.directory, len(entries),
                 need / 1e9, self.device)
        return self._resident

    def _chunk_plan(self) -> list[tuple[int, int, int, np.ndarray, torch.Tensor]]:
        """(shard serial, first row, end row, entry indices, token counts) per chunk of whole pages.

        Entries are grouped by the chunk_rows-sized window their first row falls in, so a chunk exceeds chunk_rows
        by at most one page. Cached until the table changes."""
        if self._plan is not None:
            return self._plan
        table = self._table
        order = np.lexsort((table["start"], table["shard"]))
        shards, starts, counts = table["shard"][order], table["start"][order], table["n_tokens"][order]
        window = starts // self.chunk_rows
        breaks = np.flatnonzero((np.diff(shards) != 0) | (np.diff(window) != 0)) + 1
        plan = []
        for group in np.split(np.arange(len(order)), breaks):
            if len(group) == 0:
                continue
            first, last = group[0], group[-1]
            row_start, row_stop = int(starts[first]), int(starts[last] + counts[last])
            lengths = torch.from_numpy(counts[group].astype(np.int64))
            plan.append((int(shards[first]), row_start, row_stop, order[group], lengths))
        self._plan = plan
        return plan

    def _map_committed_shards(self) -> None:
        """A reader maps every committed shard as soon as it learns of it (mapping reads nothing), so a later
        compaction deleting the files leaves these maps valid."""
        for shard in self._shards:
            if shard.rows:
                self._map(shard.serial)

    def _map(self, serial: int) -> np.memmap:
        shard = next(shard for shard in self._shards if shard.serial == serial)
        existing = self._maps.get(serial)
        if existing is None or existing.shape[0] != shard.rows:
            # Re-mapped when the shard has grown; mapping is cheap and reads nothing.
            existing = np.memmap(
                self.directory / shard_file_name(serial), dtype=ROW_DTYPE, mode="r", shape=(shard.rows, self.dim)
            )
            self._maps[serial] = existing
        return existing

    # ----------------------------------------------------------------------------------------------- write internals

    def _tombstone(self, row: int) -> None:
        self._table["deleted"][row] = 1
        if row < self._committed:
            self._tombstoned_since.append(row)  # on disk as live: the next journal record says otherwise

    def _append_entries(self, entries: np.ndarray) -> None:
        """Append to the table in amortised constant time per entry (a concatenate copied the whole table)."""
        size = len(self._table)
        if size + len(entries) > len(self._buffer):
            grown = np.zeros(max(size + len(entries), 2 * len(self._buffer), 1024), dtype=ENTRY_DTYPE)
            grown[:size] = self._table
            self._buffer = grown
        self._buffer[size : size + len(entries)] = entries
        self._table = self._buffer[: size + len(entries)]

    def _journal_record(self) -> bytes:
        """What changed since the last commit, as one journal record."""
        tombstones = np.asarray(self._tombstoned_since, dtype="<i8")
        entries = np.ascontiguousarray(self._table[self._committed :], dtype=ENTRY_DTYPE)
        header = json.dumps({
            "shards": [{"serial": shard.serial, "rows": shard.rows} for shard in self._shards],
            "next_serial": self._next_serial, "tombstones": len(tombstones), "entries": len(entries),
        }, sort_keys=True).encode()
        payload = _U32.pack(len(header)) + header + tombstones.tobytes() + entries.tobytes()
        return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload

    def _append_journal(self, record: bytes) -> None:
        """Append one record and fsync: the commit. A failed append leaves _journal_bytes where it was, and the
        next one cuts off what it wrote."""
        path = self.directory / JOURNAL_FILE
        new = self._journal_bytes == 0
        data = (JOURNAL_MAGIC + str(self._snapshot_id).encode() + record) if new else record
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, self._journal_bytes)
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], self._journal_bytes + written)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.directory)
        self._journal_bytes += len(data)
        self._committed = len(self._table)
        self._tombstoned_since = []
        self._dirty = False

    def _follow_journal(self) -> bool:
        """Apply the journal records a read-only store has not seen (the snapshot being the one it loaded); False
        when it cannot (the journal belongs to another snapshot): then the caller loads everything again."""
        path = self.directory / JOURNAL_FILE
        try:
            with open(path, "rb") as file:
                head = file.read(_JOURNAL_HEAD)
                start = self._journal_bytes or _JOURNAL_HEAD
                file.seek(start)
                data = file.read()
        except FileNotFoundError:
            return self._journal_bytes == 0  # none yet; one that vanished means a new snapshot is coming
        if len(head) < _JOURNAL_HEAD:
            return self._journal_bytes == 0  # being created: its header is not there yet
        if head != JOURNAL_MAGIC + str(self._snapshot_id).encode():
            return False
        read = _read_records(data, len(self._table))
        if read.used == 0:
            return True
        base = len(self._table)
        self._append_entries(read.entries)
        for offset in np.flatnonzero(read.entries["deleted"] == 0):
            self._live[int(read.entries["page_id"][offset])] = base + int(offset)
        self._table["deleted"][read.tombstones] = 1
        for row in read.tombstones.tolist():
            page_id = int(self._table["page_id"][row])
            if self._live.get(page_id) == row:
                del self._live[page_id]
        self._shards, self._next_serial = read.shards, read.next_serial
        self._map_committed_shards()
        self._journal_bytes = start + read.used
        self._version += 1
        self._forget_layout()
        return True

    def _check_writable(self) -> None:
        if self.read_only:
            raise IndexError_(f"{self.directory}: multi-vector store was opened read-only")

    def _changed(self) -> None:
        self._dirty = True
        self._version += 1
        self._forget_layout()

    def _forget_layout(self) -> None:
        """Drop what is derived from the table and shards: the chunk plan and the device-resident rows."""
        self._plan = None
        self._resident, self._resident_refused = None, False

    def _shard_for(self, n_tokens: int, *, pending_rows: int) -> _Shard:
        """The active shard if the page fits (or the shard is empty), else a new one."""
        if self._shards:
            active = self._shards[-1]
            used = active.rows + pending_rows
            if used == 0 or used + n_tokens <= self.shard_rows:
                return active
        shard = _Shard(serial=self._next_serial, rows=0)
        self._next_serial += 1
        self._shards.append(shard)
        self._forget_layout()
        return shard

    def _write_pages(self, pages: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """Write the pages' rows into the active shard (rolling over as needed); returns their table entries."""
        entries = np.zeros(len(pages), dtype=ENTRY_DTYPE)
        pending: list[np.ndarray] = []  # consecutive pages bound for one shard, written with one pwrite
        pending_rows = 0
        pending_shard: _Shard | None = None
        for position, (page_id, tokens) in enumerate(pages):
            shard = self._shard_for(len(tokens), pending_rows=pending_rows)
            if shard is not pending_shard:
                if pending_shard is not None and pending:
                    self._write_rows(pending_shard, pending_shard.rows, pending)
                pending, pending_rows, pending_shard = [], 0, shard
            entries[position] = (page_id, shard.serial, shard.rows + pending_rows, len(tokens), 0)
            pending.append(tokens)
            pending_rows += len(tokens)
            if pending_rows >= _COPY_ROWS:
                self._write_rows(shard, shard.rows, pending)
                pending, pending_rows = [], 0
        if pending_shard is not None and pending:
            self._write_rows(pending_shard, pending_shard.rows, pending)
        return entries

    def _write_rows(self, shard: _Shard, start: int, blocks: list[np.ndarray]) -> None:
        """pwrite rows at their exact offset (not append), so bytes left by a failed write are simply overwritten."""
        data = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        fd = self._fds.get(shard.serial)
        if fd is None:
            fd = os.open(self.directory / shard_file_name(shard.serial), os.O_RDWR | os.O_CREAT, 0o644)
            self._fds[shard.serial] = fd
        payload = memoryview(np.ascontiguousarray(data, dtype=ROW_DTYPE)).cast("B")
        offset, written = start * self._row_bytes, 0
        while written < len(payload):
            written += os.pwrite(fd, payload[written:], offset + written)
        shard.rows = start + len(data)
        self._unsynced.add(shard.serial)

    def _commit(self, table: np.ndarray, shards: list[_Shard]) -> None:
        manifest = Manifest(
            model=self.model_id, dim=self.dim, metric=METRIC, count=int((table["deleted"] == 0).sum()), kind=KIND
        )
        snapshot_id = os.urandom(8).hex()
        header = {
            "manifest": manifest.to_dict(),
            "shards": [{"serial": shard.serial, "rows": shard.rows} for shard in shards],
            "next_serial": self._next_serial,
            "entries": len(table),
            "snapshot": snapshot_id,
            "store": self._uid,
        }
        header_bytes = json.dumps(header, sort_keys=True).encode()
        table_bytes = np.ascontiguousarray(table, dtype=ENTRY_DTYPE).tobytes()
        path = self.directory / OFFSETS_FILE
        remove_stale_tmp_files(path)

        def write(file: BinaryIO) -> None:
            file.write(_HEADER.pack(FILE_MAGIC, len(header_bytes)))
            file.write(header_bytes)
            file.write(table_bytes)

        atomic_write(path, write)
        # The old journal belongs to the old snapshot: a crash before this unlink leaves it ignored on open.
        with contextlib.suppress(FileNotFoundError):
            (self.directory / JOURNAL_FILE).unlink()
            fsync_dir(self.directory)
        self._snapshot_id, self._snapshot_bytes = snapshot_id, _HEADER.size + len(header_bytes) + len(table_bytes)
        self._journal_bytes, self._committed, self._tombstoned_since = 0, len(table), []
        self._dirty = False
        try:
            atomic_write_bytes(self.directory / MANIFEST_FILE, (manifest.to_json() + "\n").encode())
        except OSError as exc:  # informational copy only; the commit above already happened
            log.warning("%s: could not write %s: %s", self.directory, MANIFEST_FILE, exc)

    def _forget_shard(self, serial: int) -> None:
        self._maps.pop(serial, None)
        fd = self._fds.pop(serial, None)
        if fd is not None:
            os.close(fd)

    # ----------------------------------------------------------------------------------------------- opening

    def _load(self) -> None:
        path = self.directory / OFFSETS_FILE
        data = path.read_bytes()
        if len(data) < _HEADER.size:
            raise IndexError_(f"{path}: truncated ({len(data)} bytes)")
        magic, header_len = _HEADER.unpack_from(data)
        if magic != FILE_MAGIC:
            raise IndexError_(f"{path}: not an mmrag multi-vector offsets file (magic {magic!r})")
        try:
            header = json.loads(data[_HEADER.size : _HEADER.size + header_len])
        except json.JSONDecodeError as exc:
            raise IndexError_(f"{path}: header is not valid JSON: {exc}") from exc
        manifest = Manifest.from_dict(header.get("manifest"))
        manifest.check(self.model_id, self.dim, METRIC, where=self.directory)
        manifest.check_kind(KIND, where=self.directory)
        table_bytes = data[_HEADER.size + header_len :]
        n_entries = int(header["entries"])
        if len(table_bytes) != n_entries * ENTRY_DTYPE.itemsize:
            raise IndexError_(f"{path}: entry table is {len(table_bytes)} bytes, expected {n_entries} entries")
        table = np.frombuffer(table_bytes, dtype=ENTRY_DTYPE).copy()
        shards = [_Shard(serial=int(shard["serial"]), rows=int(shard["rows"])) for shard in header["shards"]]
        manifest.check_count(int((table["deleted"] == 0).sum()), where=self.directory)
        next_serial = int(header["next_serial"])
        snapshot_id = header.get("snapshot")
        if isinstance(header.get("store"), str):
            self._uid = header["store"]
        journal_bytes = 0
        journal = self.directory / JOURNAL_FILE
        if isinstance(snapshot_id, str) and journal.exists():
            records = journal.read_bytes()
            if records[:_JOURNAL_HEAD] == JOURNAL_MAGIC + snapshot_id.encode():
                read = _read_records(records[_JOURNAL_HEAD:], len(table))
                if read.used:
                    table = np.concatenate([table, read.entries])
                    table["deleted"][read.tombstones] = 1
                    shards, next_serial = read.shards, read.next_serial
                journal_bytes = _JOURNAL_HEAD + read.used
                if len(records) > journal_bytes and not self.read_only:
                    log.warning("%s: cutting off %d bytes of a journal record an interrupted flush left",
                                journal, len(records) - journal_bytes)
                    os.truncate(journal, journal_bytes)
            elif not self.read_only:
                log.warning("%s: removing the journal of an older snapshot (a flush interrupted after its snapshot)",
                            journal)
                journal.unlink()
        self._validate(table, shards)
        live = {int(table["page_id"][row]): int(row) for row in np.flatnonzero(table["deleted"] == 0)}
        if len(live) != int((table["deleted"] == 0).sum()):
            raise IndexError_(f"{path}: a page id appears in more than one live entry")
        self._table = self._buffer = table
        self._shards, self._live = shards, live
        self._next_serial = max(next_serial, max((shard.serial + 1 for shard in shards), default=0))
        self._snapshot_id = snapshot_id if isinstance(snapshot_id, str) else None
        self._snapshot_bytes, self._journal_bytes = _HEADER.size + header_len + len(table_bytes), journal_bytes
        self._committed, self._tombstoned_since = len(table), []
        if not isinstance(header.get("store"), str) and not self.read_only:
            self._snapshot_id = None  # a store from before uids: its writer's next flush is a snapshot that names one
        if not self.read_only:
            self._discard_uncommitted_rows()
            self._remove_unreferenced_shards()
            remove_stale_tmp_files(path)  # a snapshot write that died (flushes mostly append to the journal)
        log.info("opened multi-vector store %s: %d pages in %d shards", self.directory, len(live), len(shards))

    def _validate(self, table: np.ndarray, shards: list[_Shard]) -> None:
        """Each shard's committed rows must be exactly tiled by its entries, in order; the file must hold them."""
        rows_by_serial = {shard.serial: shard.rows for shard in shards}
        for serial, rows in rows_by_serial.items():
            mine = table[table["shard"] == serial]
            starts, counts = mine["start"], mine["n_tokens"]
            expected_starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(mine) else starts
            if (counts < 1).any() or not np.array_equal(starts, expected_starts) or int(counts.sum()) != rows:
                raise IndexError_(f"{self.directory}: entries of shard {serial} do not tile its {rows} rows")
            shard_path = self.directory / shard_file_name(serial)
            size = shard_path.stat().st_size if shard_path.exists() else 0
            if size < rows * self._row_bytes:
                raise IndexError_(
                    f"{shard_path}: holds {size // self._row_bytes} rows but {rows} are committed; "
                    f"the store is damaged, rebuild it from SQL"
                )
        unknown = set(np.unique(table["shard"]).tolist()) - set(rows_by_serial)
        if unknown:
            raise IndexError_(f"{self.directory}: entries point at unknown shards {sorted(unknown)}")

    def _discard_uncommitted_rows(self) -> None:
        for shard in self._shards:
            shard_path = self.directory / shard_file_name(shard.serial)
            committed_bytes = shard.rows * self._row_bytes
            if shard_path.exists() and shard_path.stat().st_size > committed_bytes:
                garbage = shard_path.stat().st_size - committed_bytes
                log.warning("%s: discarding %d uncommitted bytes left by an interrupted run", shard_path, garbage)
                os.truncate(shard_path, committed_bytes)

    def _remove_unreferenced_shards(self) -> None:
        referenced = {shard.serial for shard in self._shards}
        for candidate in self.directory.iterdir():
            match = _SHARD_NAME.match(candidate.name)
            if match and int(match.group(1)) not in referenced:
                log.warning("%s: removing shard file no commit references (interrupted add or compaction)", candidate)
                candidate.unlink()
                self._next_serial = max(self._next_serial, int(match.group(1)) + 1)
