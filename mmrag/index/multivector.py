"""ShardedMultiVectorStore: per-page token embeddings in memory-mapped fp16 shards, searched with exact MaxSim.

The store owns the page ids, the shards and the entry table that maps one to the other, and their life: add,
remove, flush, compact, and catch_up for a read-only store following its writer. Its files are
mmrag/index/multivector_codec.py's (snapshot, journal records, shard files), their journal framing
mmrag/index/journal.py's, and its search mmrag/index/multivector_search.py's.

Deletion is a tombstone (the entry's `deleted` flag); re-adding a page tombstones its previous entry. compact()
drops tombstoned rows: it writes the live rows into new shard files (new serials), commits a table naming only
those, then deletes the old files, so a crash at any point leaves either the old or the new state committed.

flush() commits: it fsyncs new rows, then appends what changed since the last commit to the journal, or writes a
new snapshot once the journal would outgrow it (appending keeps a flush's cost to its own changes; rewriting the
whole entry table on every flush grows with the collection). Opening reads only the snapshot and the journal:
shards are memory-mapped, so a store larger than RAM opens. A reader catching up reads only the journal's new
records while the snapshot is the same.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmrag.errors import ConfigError, IndexError_
from mmrag.index.journal import Journal, LengthPrefixed, replace_snapshot
from mmrag.index.manifest import (
    Manifest,
    as_page_ids,
    atomic_write_bytes,
    file_identity,
    fsync_dir,
    last_occurrences,
    remove_stale_tmp_files,
)
from mmrag.index.multivector_codec import (
    COPY_ROWS,
    ENTRY_DTYPE,
    JOURNAL_FILE,
    JOURNAL_HEAD_BYTES,
    KIND,
    MANIFEST_FILE,
    METRIC,
    OFFSETS_FILE,
    ROW_DTYPE,
    Shard,
    ShardFiles,
    check_tiling,
    journal_head,
    journal_payload,
    read_journal_changes,
    read_snapshot,
    remove_unreferenced_shards,
    snapshot_writer,
)
from mmrag.device import resolve_device
from mmrag.index.multivector_search import MaxSimSearch, StoreRows, top_pages
from mmrag.types import Hit

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["ShardedMultiVectorStore"]


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
        self.read_only = read_only
        self._search = MaxSimSearch(self.directory, dim, device=resolve_device(device), kernel=kernel,
                                    chunk_rows=chunk_rows)
        self._files = ShardFiles(self.directory, dim)
        self._row_bytes = self._files.row_bytes
        self._lock = threading.RLock()
        self._table = np.zeros(0, dtype=ENTRY_DTYPE)  # a view of the first rows of _buffer (grown by doubling)
        self._buffer = self._table
        self._snapshot_id: str | None = None  # of the offsets.bin loaded or written; None before the first
        self._uid = os.urandom(8).hex()  # this store's identity, kept in every snapshot (see uid)
        self._snapshot_bytes = 0
        self._journal = Journal(self.directory / JOURNAL_FILE, LengthPrefixed())
        self._committed = 0  # table rows on disk (snapshot + journal)
        self._tombstoned_since: list[int] = []  # rows below _committed tombstoned since the last flush
        self._shards: list[Shard] = []
        self._next_serial = 0
        self._live: dict[int, int] = {}  # page id -> row of _table
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

    @property
    def device(self) -> torch.device:
        return self._search.device

    @property
    def chunk_rows(self) -> int:
        return self._search.chunk_rows

    @property
    def kernel(self) -> str:
        """"triton" (the fused kernel over device-resident rows) or "torch" (rows streamed from the shards)."""
        return self._search.kernel

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
            rows = self._rows()
            resident = self._search.resident_rows(rows)
            if resident is not None:
                return self._search.search_resident(resident, rows.table, query_arrays, k)
            page_scores = self._search.score_pages(rows, query_arrays)
        return top_pages(page_scores, rows.table, k)

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
            store_rows = self._rows()
            resident = self._search.resident_rows(store_rows)
            if resident is not None:
                scores = self._search.score_resident_rows(resident, query, rows)
            else:
                scores = self._search.score_entries(store_rows, query, entries)
        order = np.lexsort((entries["page_id"], -scores))
        return [Hit(page_id=int(entries["page_id"][i]), score=float(scores[i])) for i in order]

    def search_within(self, query: np.ndarray, k: int, page_ids: np.ndarray) -> list[Hit]:
        """Top-k by exact MaxSim among these pages only (a search's filters allow them): their rows alone are read
        (score_subset), so a narrow filter costs less than a search of the whole store."""
        if k <= 0:
            return []
        return self.score_subset(query, [int(page_id) for page_id in page_ids])[:k]

    def files(self) -> list[Path]:
        """The files whose commits are this store's state on disk (they name the shards and their committed rows):
        the snapshot and its journal (which may not exist)."""
        return [self.directory / OFFSETS_FILE, self.directory / JOURNAL_FILE]

    @property
    def version(self) -> int:
        """Counts the changes to this store's live pages (add, remove) made through this object: what is derived
        from them (a candidate index) is current while it is unchanged. Reading it is free; comparing ids() costs a
        sort of every live id."""
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
            self._files.fsync(self._files.unsynced)
            payload = self._journal_payload() if self._snapshot_id is not None else None
            framed = self._journal.framing.framed_size(len(payload)) if payload is not None else 0
            if payload is None or self._journal.outgrows(framed, self._snapshot_bytes):
                self._commit(self._table, self._shards)
            else:
                self._journal.append(journal_head(str(self._snapshot_id)), [payload])
                self._committed, self._tombstoned_since, self._dirty = len(self._table), [], False
            self._files.unsynced.clear()

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
            new_shards: list[Shard] = []
            new_table = np.zeros(len(live_rows), dtype=ENTRY_DTYPE)
            try:
                self._copy_live_rows(live_rows, new_shards, new_table)
                self._files.fsync({shard.serial for shard in new_shards})
                self._commit(new_table, new_shards)
            except BaseException:
                # Nothing is committed: the old state stands. The new files are left for the next writer's open
                # to delete as unreferenced; deleting them here is never needed for correctness.
                for shard in new_shards:
                    self._files.forget(shard.serial)
                raise
            # Committed: the old shard files are unreferenced from here on.
            self._table = self._buffer = new_table
            self._shards = new_shards
            self._live = {int(page_id): row for row, page_id in enumerate(new_table["page_id"])}
            self._files.unsynced.clear()
            for serial in old_serials:
                self._files.delete(serial)
            fsync_dir(self.directory)
            self._forget_layout()
            new_bytes = sum(shard.rows for shard in new_shards) * self._row_bytes
            log.info(
                "compacted %s: dropped %d tombstoned pages, %d -> %d bytes", self.directory, dead, old_bytes, new_bytes
            )

    def _copy_live_rows(self, live_rows: np.ndarray, new_shards: list[Shard], new_table: np.ndarray) -> None:
        """Copy the rows of `live_rows` entries into fresh shards, filling `new_shards` and `new_table`."""
        buffer: list[np.ndarray] = []
        buffered = 0

        def spill() -> None:
            nonlocal buffer, buffered
            if buffer:
                self._files.write_rows(new_shards[-1], new_shards[-1].rows, buffer)
                buffer, buffered = [], 0

        for position, row in enumerate(live_rows):
            entry = self._table[row]
            n_tokens, start = int(entry["n_tokens"]), int(entry["start"])
            used = new_shards[-1].rows + buffered if new_shards else None
            if used is None or (used > 0 and used + n_tokens > self.shard_rows):
                spill()
                new_shards.append(Shard(serial=self._next_serial, rows=0))
                self._next_serial += 1
            new_table[position] = (entry["page_id"], new_shards[-1].serial, new_shards[-1].rows + buffered, n_tokens, 0)
            buffer.append(np.asarray(self._map(int(entry["shard"]))[start : start + n_tokens]))
            buffered += n_tokens
            if buffered >= COPY_ROWS:
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
            self._files.unmap_all()  # compaction may have replaced the shards
            self._map_committed_shards()
            self._version += 1
            self._forget_layout()
            return True

    def close(self) -> None:
        """Release file handles and maps (does not flush)."""
        with self._lock:
            self._files.close()
            self._search.close()

    def __enter__(self) -> ShardedMultiVectorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r}, model={self.model_id!r}, dim={self.dim}, n={len(self)})"

    # ----------------------------------------------------------------------------------------------- shard rows

    def _rows(self) -> StoreRows:
        """The table and shards as a search reads them (caller holds the lock)."""
        return StoreRows(self._table, self._shards, self._next_serial, self._map)

    def _map_committed_shards(self) -> None:
        """A reader maps every committed shard as soon as it learns of it (mapping reads nothing), so a later
        compaction deleting the files leaves these maps valid."""
        for shard in self._shards:
            if shard.rows:
                self._map(shard.serial)

    def _map(self, serial: int) -> np.memmap:
        return self._files.map(next(shard for shard in self._shards if shard.serial == serial))

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

    def _journal_payload(self) -> bytes:
        """What changed since the last commit, as one journal record's payload."""
        return journal_payload(self._shards, self._next_serial, np.asarray(self._tombstoned_since, dtype="<i8"),
                               self._table[self._committed :])

    def _follow_journal(self) -> bool:
        """Apply the journal records a read-only store has not seen (the snapshot being the one it loaded); False
        when it cannot (the journal belongs to another snapshot): then the caller loads everything again."""
        start = self._journal.size or JOURNAL_HEAD_BYTES
        read = self._journal.read(head_size=JOURNAL_HEAD_BYTES, start=start)
        if read is None:
            return self._journal.size == 0  # none yet; one that vanished means a new snapshot is coming
        if len(read.head) < JOURNAL_HEAD_BYTES:
            return self._journal.size == 0  # being created: its header is not there yet
        if read.head != journal_head(str(self._snapshot_id)):
            return False
        changes = read_journal_changes(self._journal, read.data, len(self._table))
        if changes.used == 0:
            return True
        base = len(self._table)
        self._append_entries(changes.entries)
        for offset in np.flatnonzero(changes.entries["deleted"] == 0):
            self._live[int(changes.entries["page_id"][offset])] = base + int(offset)
        self._table["deleted"][changes.tombstones] = 1
        for row in changes.tombstones.tolist():
            page_id = int(self._table["page_id"][row])
            if self._live.get(page_id) == row:
                del self._live[page_id]
        self._shards, self._next_serial = changes.shards, changes.next_serial
        self._map_committed_shards()
        self._journal.size = start + changes.used
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
        self._search.forget()

    def _shard_for(self, n_tokens: int, *, pending_rows: int) -> Shard:
        """The active shard if the page fits (or the shard is empty), else a new one."""
        if self._shards:
            active = self._shards[-1]
            used = active.rows + pending_rows
            if used == 0 or used + n_tokens <= self.shard_rows:
                return active
        shard = Shard(serial=self._next_serial, rows=0)
        self._next_serial += 1
        self._shards.append(shard)
        self._forget_layout()
        return shard

    def _write_pages(self, pages: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """Write the pages' rows into the active shard (rolling over as needed); returns their table entries."""
        entries = np.zeros(len(pages), dtype=ENTRY_DTYPE)
        pending: list[np.ndarray] = []  # consecutive pages bound for one shard, written with one pwrite
        pending_rows = 0
        pending_shard: Shard | None = None
        for position, (page_id, tokens) in enumerate(pages):
            shard = self._shard_for(len(tokens), pending_rows=pending_rows)
            if shard is not pending_shard:
                if pending_shard is not None and pending:
                    self._files.write_rows(pending_shard, pending_shard.rows, pending)
                pending, pending_rows, pending_shard = [], 0, shard
            entries[position] = (page_id, shard.serial, shard.rows + pending_rows, len(tokens), 0)
            pending.append(tokens)
            pending_rows += len(tokens)
            if pending_rows >= COPY_ROWS:
                self._files.write_rows(shard, shard.rows, pending)
                pending, pending_rows = [], 0
        if pending_shard is not None and pending:
            self._files.write_rows(pending_shard, pending_shard.rows, pending)
        return entries

    def _commit(self, table: np.ndarray, shards: list[Shard]) -> None:
        """Write a new snapshot of this table and these shards (the journal it supersedes deleted)."""
        manifest = Manifest(
            model=self.model_id, dim=self.dim, metric=METRIC, count=int((table["deleted"] == 0).sum()), kind=KIND
        )
        snapshot_id = os.urandom(8).hex()
        write, nbytes = snapshot_writer(
            manifest, table, shards, next_serial=self._next_serial, snapshot_id=snapshot_id, uid=self._uid
        )
        path = self.directory / OFFSETS_FILE
        remove_stale_tmp_files(path)
        # The old journal belongs to the old snapshot: a crash before its deletion leaves it ignored on open.
        replace_snapshot(path, write, self._journal)
        self._snapshot_id, self._snapshot_bytes = snapshot_id, nbytes
        self._committed, self._tombstoned_since = len(table), []
        self._dirty = False
        try:
            atomic_write_bytes(self.directory / MANIFEST_FILE, (manifest.to_json() + "\n").encode())
        except OSError as exc:  # informational copy only; the commit above already happened
            log.warning("%s: could not write %s: %s", self.directory, MANIFEST_FILE, exc)

    # ----------------------------------------------------------------------------------------------- opening

    def _load(self) -> None:
        path = self.directory / OFFSETS_FILE
        snapshot = read_snapshot(path, model=self.model_id, dim=self.dim)
        table, shards, next_serial = snapshot.table, snapshot.shards, snapshot.next_serial
        journal_bytes = 0
        if snapshot.snapshot_id is not None and self._journal.path.exists():
            data = self._journal.path.read_bytes()
            if data[:JOURNAL_HEAD_BYTES] == journal_head(snapshot.snapshot_id):
                changes = read_journal_changes(self._journal, data[JOURNAL_HEAD_BYTES:], len(table))
                if changes.used:
                    table = np.concatenate([table, changes.entries])
                    table["deleted"][changes.tombstones] = 1
                    shards, next_serial = changes.shards, changes.next_serial
                journal_bytes = JOURNAL_HEAD_BYTES + changes.used
                if len(data) > journal_bytes and not self.read_only:
                    log.warning("%s: cutting off %d bytes of a journal record an interrupted flush left",
                                self._journal.path, len(data) - journal_bytes)
                    os.truncate(self._journal.path, journal_bytes)
            elif not self.read_only:
                log.warning("%s: removing the journal of an older snapshot (a flush interrupted after its snapshot)",
                            self._journal.path)
                self._journal.delete()
        check_tiling(self.directory, table, shards, self._row_bytes)
        live = {int(table["page_id"][row]): int(row) for row in np.flatnonzero(table["deleted"] == 0)}
        if len(live) != int((table["deleted"] == 0).sum()):
            raise IndexError_(f"{path}: a page id appears in more than one live entry")
        if snapshot.uid is not None:
            self._uid = snapshot.uid
        self._table = self._buffer = table
        self._shards, self._live = shards, live
        self._next_serial = max(next_serial, max((shard.serial + 1 for shard in shards), default=0))
        self._snapshot_id, self._snapshot_bytes = snapshot.snapshot_id, snapshot.nbytes
        self._journal.size = journal_bytes
        self._committed, self._tombstoned_since = len(table), []
        if snapshot.uid is None and not self.read_only:
            self._snapshot_id = None  # a store from before uids: its writer's next flush is a snapshot that names one
        if not self.read_only:
            self._files.discard_uncommitted_rows(self._shards)
            self._remove_unreferenced_shards()
            remove_stale_tmp_files(path)  # a snapshot write that died (flushes mostly append to the journal)
        log.info("opened multi-vector store %s: %d pages in %d shards", self.directory, len(live), len(shards))

    def _remove_unreferenced_shards(self) -> None:
        referenced = {shard.serial for shard in self._shards}
        self._next_serial = max(self._next_serial, remove_unreferenced_shards(self.directory, referenced))
