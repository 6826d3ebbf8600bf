"""The multi-vector store's files: the snapshot's entry table, its journal records, and the fp16 shard files.

On-disk layout (one directory per store)
    shard-NNNNNN.f16   raw little-endian float16 rows of width `dim`, appended to and never rewritten in place.
                       A page's tokens are contiguous and never split across shards; a shard is closed once the
                       next page would take it past `shard_rows` (a single page larger than that gets a shard alone).
    offsets.bin        THE SNAPSHOT, replaced atomically by flush() (now and then) and compact():
                         b"MMRAGMV1" | u64 header_len | header JSON | entry table
                       header: {"manifest": {...}, "shards": [{"serial": s, "rows": committed rows}, ...],
                                "next_serial": n, "entries": number of table rows, "snapshot": its id,
                                "store": the store's uid}
                       table: packed little-endian records (page_id i8, shard serial i4, start_row i8,
                              n_tokens i4, deleted u1), in (shard, start_row) order.
    offsets.journal    what flush() committed since the snapshot (see mmrag/index/journal.py, LengthPrefixed):
                         b"MMRAGMJ1" | the snapshot's id (16 bytes) | records
                       record: u32 payload_len | u32 crc32(payload) | payload, and payload:
                         u32 header_len | header JSON {"shards", "next_serial", "tombstones": t, "entries": e} |
                         t table rows (i8) tombstoned since | e entry records appended since
                       A journal whose id is not the snapshot's (a crash between a new snapshot and the old
                       journal's deletion) is ignored and deleted.
    manifest.json      a human-readable copy of the manifest as of the last snapshot; never read back.

Crash safety: rows are written (pwrite) before the table that references them is committed, and shard files are
fsynced before offsets.bin is replaced or the journal appended to. Rows past a shard's committed end, and shard
files the committed table does not name, are leftovers of an interrupted run; a writer truncates/deletes them on
open (ShardFiles.discard_uncommitted_rows, remove_unreferenced_shards), a reader ignores them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mmrag.errors import IndexError_
from mmrag.index.journal import Journal
from mmrag.index.manifest import Manifest

log = logging.getLogger(__name__)

METRIC = "maxsim"
KIND = "multivector"
OFFSETS_FILE = "offsets.bin"
JOURNAL_FILE = "offsets.journal"
MANIFEST_FILE = "manifest.json"
FILE_MAGIC = b"MMRAGMV1"
JOURNAL_MAGIC = b"MMRAGMJ1"
SNAPSHOT_HEADER = struct.Struct("<8sQ")  # magic, header_len
JOURNAL_HEAD_BYTES = len(JOURNAL_MAGIC) + 16  # magic, then the snapshot id (16 hex characters)
_U32 = struct.Struct("<I")
_SHARD_NAME = re.compile(r"^shard-(\d{6,})\.f16$")
ROW_DTYPE = np.dtype("<f2")
ENTRY_DTYPE = np.dtype(
    [("page_id", "<i8"), ("shard", "<i4"), ("start", "<i8"), ("n_tokens", "<i4"), ("deleted", "u1")]
)  # packed: no padding, so the file layout does not depend on the platform's alignment
COPY_ROWS = 262_144  # rows per write (or device copy) when moving many rows at once


def shard_file_name(serial: int) -> str:
    return f"shard-{serial:06d}.f16"


@dataclass
class Shard:
    serial: int
    rows: int  # rows written and referenced by entries (committed or not)


def _shards_of(header: dict) -> list[Shard]:
    return [Shard(serial=int(shard["serial"]), rows=int(shard["rows"])) for shard in header["shards"]]


def _shards_json(shards: list[Shard]) -> list[dict[str, int]]:
    return [{"serial": shard.serial, "rows": shard.rows} for shard in shards]


# ----------------------------------------------------------------------------------------------- the snapshot


@dataclass(frozen=True)
class Snapshot:
    """offsets.bin as read: the entry table and shards it commits; its id and the store's uid when it has them."""

    table: np.ndarray
    shards: list[Shard]
    next_serial: int
    snapshot_id: str | None
    uid: str | None
    nbytes: int


def snapshot_writer(
    manifest: Manifest, table: np.ndarray, shards: list[Shard], *, next_serial: int, snapshot_id: str, uid: str
) -> tuple[Callable[[BinaryIO], None], int]:
    """(a function writing offsets.bin into a file, the bytes it writes)."""
    header = {
        "manifest": manifest.to_dict(),
        "shards": _shards_json(shards),
        "next_serial": next_serial,
        "entries": len(table),
        "snapshot": snapshot_id,
        "store": uid,
    }
    header_bytes = json.dumps(header, sort_keys=True).encode()
    table_bytes = np.ascontiguousarray(table, dtype=ENTRY_DTYPE).tobytes()

    def write(file: BinaryIO) -> None:
        file.write(SNAPSHOT_HEADER.pack(FILE_MAGIC, len(header_bytes)))
        file.write(header_bytes)
        file.write(table_bytes)

    return write, SNAPSHOT_HEADER.size + len(header_bytes) + len(table_bytes)


def read_snapshot(path: Path, *, model: str, dim: int) -> Snapshot:
    """Read offsets.bin, checking its manifest against the model and dim the caller expects."""
    data = path.read_bytes()
    if len(data) < SNAPSHOT_HEADER.size:
        raise IndexError_(f"{path}: truncated ({len(data)} bytes)")
    magic, header_len = SNAPSHOT_HEADER.unpack_from(data)
    if magic != FILE_MAGIC:
        raise IndexError_(f"{path}: not an mmrag multi-vector offsets file (magic {magic!r})")
    try:
        header = json.loads(data[SNAPSHOT_HEADER.size : SNAPSHOT_HEADER.size + header_len])
    except json.JSONDecodeError as exc:
        raise IndexError_(f"{path}: header is not valid JSON: {exc}") from exc
    manifest = Manifest.from_dict(header.get("manifest"))
    manifest.check(model, dim, METRIC, where=path.parent)
    manifest.check_kind(KIND, where=path.parent)
    table_bytes = data[SNAPSHOT_HEADER.size + header_len :]
    n_entries = int(header["entries"])
    if len(table_bytes) != n_entries * ENTRY_DTYPE.itemsize:
        raise IndexError_(f"{path}: entry table is {len(table_bytes)} bytes, expected {n_entries} entries")
    table = np.frombuffer(table_bytes, dtype=ENTRY_DTYPE).copy()
    shards = _shards_of(header)
    manifest.check_count(int((table["deleted"] == 0).sum()), where=path.parent)
    snapshot_id, uid = header.get("snapshot"), header.get("store")
    return Snapshot(
        table=table,
        shards=shards,
        next_serial=int(header["next_serial"]),
        snapshot_id=snapshot_id if isinstance(snapshot_id, str) else None,
        uid=uid if isinstance(uid, str) else None,
        nbytes=len(data),
    )


# ----------------------------------------------------------------------------------------------- the journal


def journal_head(snapshot_id: str) -> bytes:
    """The journal's head: it belongs to the snapshot with this id."""
    return JOURNAL_MAGIC + snapshot_id.encode()


def journal_payload(shards: list[Shard], next_serial: int, tombstones: np.ndarray, entries: np.ndarray) -> bytes:
    """One flush's changes as a journal record's payload."""
    tombstones = np.asarray(tombstones, dtype="<i8")
    entries = np.ascontiguousarray(entries, dtype=ENTRY_DTYPE)
    header = json.dumps({
        "shards": _shards_json(shards),
        "next_serial": next_serial, "tombstones": len(tombstones), "entries": len(entries),
    }, sort_keys=True).encode()
    return _U32.pack(len(header)) + header + tombstones.tobytes() + entries.tobytes()


@dataclass
class JournalChanges:
    """What the committed records at the start of some journal bytes say: entries to append to the table, rows of
    it (as it stands before them, or appended by an earlier record) to tombstone, the shards' committed rows after
    the last record, and the bytes they take."""

    entries: np.ndarray
    tombstones: np.ndarray
    shards: list[Shard] | None
    next_serial: int | None
    used: int


def read_journal_changes(journal: Journal, data: bytes, rows: int) -> JournalChanges:
    """Decode the committed records at the start of `data` (journal bytes after the head) for a table of `rows`
    rows; stops at the first record that is torn or fails its checksum (an interrupted flush: not committed)."""
    used, appended, tombstones = 0, [], []
    shards, next_serial = None, None
    for payload, end in journal.records(data):
        (header_len,) = _U32.unpack_from(payload)
        header = json.loads(bytes(payload[_U32.size : _U32.size + header_len]))
        body = _U32.size + header_len
        dead = np.frombuffer(payload, dtype="<i8", count=int(header["tombstones"]), offset=body)
        entries = np.frombuffer(payload, dtype=ENTRY_DTYPE, count=int(header["entries"]), offset=body + dead.nbytes)
        if len(dead) and (dead.min() < 0 or dead.max() >= rows):
            raise IndexError_(f"a journal record tombstones row {int(dead.max())} of {rows}: the store is damaged")
        tombstones.append(dead)
        appended.append(entries)
        rows += len(entries)
        shards, next_serial = _shards_of(header), int(header["next_serial"])
        used = end
    return JournalChanges(
        np.concatenate(appended) if appended else np.zeros(0, dtype=ENTRY_DTYPE),
        np.concatenate(tombstones) if tombstones else np.zeros(0, dtype=np.int64),
        shards, next_serial, used,
    )


# ----------------------------------------------------------------------------------------------- shard files


def check_tiling(directory: Path, table: np.ndarray, shards: list[Shard], row_bytes: int) -> None:
    """Each shard's committed rows must be exactly tiled by its entries, in order; the file must hold them."""
    rows_by_serial = {shard.serial: shard.rows for shard in shards}
    for serial, rows in rows_by_serial.items():
        mine = table[table["shard"] == serial]
        starts, counts = mine["start"], mine["n_tokens"]
        expected_starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(mine) else starts
        if (counts < 1).any() or not np.array_equal(starts, expected_starts) or int(counts.sum()) != rows:
            raise IndexError_(f"{directory}: entries of shard {serial} do not tile its {rows} rows")
        shard_path = directory / shard_file_name(serial)
        size = shard_path.stat().st_size if shard_path.exists() else 0
        if size < rows * row_bytes:
            raise IndexError_(
                f"{shard_path}: holds {size // row_bytes} rows but {rows} are committed; "
                f"the store is damaged, rebuild it from SQL"
            )
    unknown = set(np.unique(table["shard"]).tolist()) - set(rows_by_serial)
    if unknown:
        raise IndexError_(f"{directory}: entries point at unknown shards {sorted(unknown)}")


def remove_unreferenced_shards(directory: Path, referenced: set[int]) -> int:
    """Delete shard files no commit names (an interrupted add or compaction); returns the serial after the highest
    one deleted (0 when none), which a new shard must not reuse."""
    next_serial = 0
    for candidate in directory.iterdir():
        match = _SHARD_NAME.match(candidate.name)
        if match and int(match.group(1)) not in referenced:
            log.warning("%s: removing shard file no commit references (interrupted add or compaction)", candidate)
            candidate.unlink()
            next_serial = max(next_serial, int(match.group(1)) + 1)
    return next_serial


def _close_all(fds: dict[int, int]) -> None:
    while fds:
        _, fd = fds.popitem()
        with contextlib.suppress(OSError):
            os.close(fd)


class ShardFiles:
    """A store directory's shard files: descriptors open for writing, read-only memory maps, rows not yet fsynced."""

    def __init__(self, directory: Path, dim: int) -> None:
        self.directory = directory
        self.dim = dim
        self.row_bytes = dim * ROW_DTYPE.itemsize
        self._fds: dict[int, int] = {}  # shard serial -> fd open for writing
        weakref.finalize(self, _close_all, self._fds)  # a store dropped without close() still releases its fds
        self.unsynced: set[int] = set()  # shard serials written since the last commit
        self._maps: dict[int, np.memmap] = {}  # shard serial -> memmap of its first `rows` rows

    def write_rows(self, shard: Shard, start: int, blocks: list[np.ndarray]) -> None:
        """pwrite rows at their exact offset (not append), so bytes left by a failed write are simply overwritten."""
        data = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
        fd = self._fds.get(shard.serial)
        if fd is None:
            fd = os.open(self.directory / shard_file_name(shard.serial), os.O_RDWR | os.O_CREAT, 0o644)
            self._fds[shard.serial] = fd
        payload = memoryview(np.ascontiguousarray(data, dtype=ROW_DTYPE)).cast("B")
        offset, written = start * self.row_bytes, 0
        while written < len(payload):
            written += os.pwrite(fd, payload[written:], offset + written)
        shard.rows = start + len(data)
        self.unsynced.add(shard.serial)

    def fsync(self, serials: list[int] | set[int]) -> None:
        for serial in sorted(serials):
            if serial in self._fds:
                os.fsync(self._fds[serial])

    def map(self, shard: Shard) -> np.memmap:
        """The shard's committed rows, memory-mapped; re-mapped when the shard has grown (mapping reads nothing)."""
        existing = self._maps.get(shard.serial)
        if existing is None or existing.shape[0] != shard.rows:
            existing = np.memmap(
                self.directory / shard_file_name(shard.serial), dtype=ROW_DTYPE, mode="r", shape=(shard.rows, self.dim)
            )
            self._maps[shard.serial] = existing
        return existing

    def unmap_all(self) -> None:
        self._maps.clear()

    def forget(self, serial: int) -> None:
        self._maps.pop(serial, None)
        fd = self._fds.pop(serial, None)
        if fd is not None:
            os.close(fd)

    def delete(self, serial: int) -> None:
        self.forget(serial)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / shard_file_name(serial)).unlink()

    def discard_uncommitted_rows(self, shards: list[Shard]) -> None:
        for shard in shards:
            shard_path = self.directory / shard_file_name(shard.serial)
            committed_bytes = shard.rows * self.row_bytes
            if shard_path.exists() and shard_path.stat().st_size > committed_bytes:
                garbage = shard_path.stat().st_size - committed_bytes
                log.warning("%s: discarding %d uncommitted bytes left by an interrupted run", shard_path, garbage)
                os.truncate(shard_path, committed_bytes)

    def close(self) -> None:
        _close_all(self._fds)
        self._maps.clear()
