"""Snapshot + journal files: crc-framed records appended after a snapshot, and the snapshot that supersedes them.

Both journalled stores (FaissIndex, ShardedMultiVectorStore) keep their state as a snapshot file, replaced
atomically now and then, plus a journal file of the changes committed since, appended and fsynced on every flush.
Rewriting the whole snapshot on every flush would write bytes quadratic in the collection over a bulk job;
appending keeps a flush's cost to its own changes, and a new snapshot is written (and the journal deleted) only
once the journal outgrows the snapshot (JOURNAL_MIN_BYTES at least), so bytes written stay within a small multiple
of the store.

A journal is a head (which the store defines: a magic, and what the records apply to) followed by records. A
record is committed once it is whole and its crc32 matches; reading stops at the first one that is not (a torn
tail a crash mid-flush left, or a flush in progress in another process), and the next append cuts it off. Each
store keeps its own record framing, so files written before this module existed read unchanged:
    LengthPrefixed   u32 payload length | u32 crc32(payload) | payload                  (multi-vector store)
    TrailingCrc      payload | u32 crc32(payload), the payload's length read from its own header       (FAISS)
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from mmrag.index.manifest import atomic_write, fsync_dir, identity_of

JOURNAL_MIN_BYTES = 64 * 1024 * 1024  # below this a journal never forces a new snapshot

_U32 = struct.Struct("<I")
_LENGTH_AND_CRC = struct.Struct("<II")


class Framing(Protocol):
    """How one store frames a record's payload with its checksum."""

    def frame(self, payload: bytes) -> bytes:
        """The record's bytes as appended to the journal."""
        ...

    def framed_size(self, payload_size: int) -> int:
        """How many bytes a payload of this size takes in the journal."""
        ...

    def next_record(self, data: memoryview, offset: int) -> tuple[memoryview, int] | None:
        """(payload, end offset) of the record at `offset`, or None when it is torn or fails its checksum."""
        ...


class LengthPrefixed:
    """u32 payload length | u32 crc32(payload) | payload."""

    def frame(self, payload: bytes) -> bytes:
        return _LENGTH_AND_CRC.pack(len(payload), zlib.crc32(payload)) + payload

    def framed_size(self, payload_size: int) -> int:
        return _LENGTH_AND_CRC.size + payload_size

    def next_record(self, data: memoryview, offset: int) -> tuple[memoryview, int] | None:
        if offset + _LENGTH_AND_CRC.size > len(data):
            return None
        length, checksum = _LENGTH_AND_CRC.unpack_from(data, offset)
        start = offset + _LENGTH_AND_CRC.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != checksum:
            return None
        return payload, start + length


class TrailingCrc:
    """payload | u32 crc32(payload); `payload_size(data, offset)` reads a payload's length from its own header
    (None when that header is incomplete or not a record's)."""

    def __init__(self, payload_size: Callable[[memoryview, int], int | None]) -> None:
        self.payload_size = payload_size

    def frame(self, payload: bytes) -> bytes:
        return payload + _U32.pack(zlib.crc32(payload))

    def framed_size(self, payload_size: int) -> int:
        return payload_size + _U32.size

    def next_record(self, data: memoryview, offset: int) -> tuple[memoryview, int] | None:
        size = self.payload_size(data, offset)
        if size is None:
            return None
        end = offset + size + _U32.size
        if end > len(data):
            return None
        payload = data[offset : offset + size]
        if _U32.unpack_from(data, offset + size)[0] != zlib.crc32(payload):
            return None
        return payload, end


@dataclass(frozen=True)
class JournalBytes:
    """What `Journal.read` found: the head (shorter than asked when the file is), the bytes from the offset asked
    for, and the identity of the file read (a journal started over is another file)."""

    head: bytes
    data: bytes
    identity: tuple[int, ...]


class Journal:
    """One journal file. `size` is how many of its bytes are known good (head included): set by the store after
    reading, advanced by `append`, and reset by `replace_snapshot`."""

    def __init__(self, path: Path, framing: Framing) -> None:
        self.path = Path(path)
        self.framing = framing
        self.size = 0

    def records(self, data: bytes) -> Iterator[tuple[memoryview, int]]:
        """(payload, end offset in `data`) of each committed record at the start of `data`, in order."""
        view = memoryview(data)
        offset = 0
        while (found := self.framing.next_record(view, offset)) is not None:
            payload, offset = found
            yield payload, offset

    def read(self, *, head_size: int, start: int) -> JournalBytes | None:
        """The head and the bytes from offset `start` on; None when there is no journal."""
        try:
            file = open(self.path, "rb")  # noqa: SIM115 - closed below; the identity comes from it
        except FileNotFoundError:
            return None
        with file:
            identity = identity_of(os.fstat(file.fileno()), content=False)
            head = file.read(head_size)
            file.seek(start)
            data = file.read()
        return JournalBytes(head, data, identity)

    def append(self, head: bytes, payloads: Sequence[bytes]) -> None:
        """Frame and append these records after the known-good bytes (cutting off anything beyond them: a torn
        record), the head first when there are none, then fsync: the commit. A failed append leaves `size` where it
        was, and the next one cuts off what it wrote."""
        started = self.size == 0 or not self.path.exists()
        if started:
            self.size = 0
        records = b"".join(self.framing.frame(payload) for payload in payloads)
        data = head + records if started else records
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, self.size)
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], self.size + written)
            os.fsync(fd)
        finally:
            os.close(fd)
        if started:
            fsync_dir(self.path.parent)
        self.size += len(data)

    def outgrows(self, pending: int, snapshot_bytes: int) -> bool:
        """Whether appending `pending` bytes takes the journal past the snapshot's size: a new snapshot is due."""
        return self.size + pending > max(JOURNAL_MIN_BYTES, snapshot_bytes)

    def delete(self) -> None:
        """Remove the file (it belongs to an older snapshot), durably; none is fine."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            fsync_dir(self.path.parent)
        self.size = 0


def replace_snapshot(path: Path, write: Callable[[BinaryIO], None], journal: Journal) -> None:
    """Write a new snapshot atomically, then delete the journal it supersedes. A crash between the two leaves the
    old journal beside the new snapshot: each store tells it apart (the multi-vector store by the snapshot id in
    the journal's head) or replays it harmlessly (FAISS: last change per id wins)."""
    atomic_write(path, write)
    journal.delete()
