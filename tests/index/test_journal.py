"""The journal helper alone: both framings, torn tails, appends after a torn tail, snapshot replacement."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mmrag.index import journal as journal_module
from mmrag.index.journal import Journal, LengthPrefixed, TrailingCrc, replace_snapshot

HEAD = b"HEAD0001"
_SIZED = struct.Struct("<4sI")  # a TrailingCrc test payload: b"REC1" | u32 body length | body


def _sized(data: memoryview, offset: int) -> int | None:
    if offset + _SIZED.size > len(data):
        return None
    magic, length = _SIZED.unpack_from(data, offset)
    return _SIZED.size + length if magic == b"REC1" else None


def _payload(body: bytes) -> bytes:
    return _SIZED.pack(b"REC1", len(body)) + body


FRAMINGS = {"length-prefixed": LengthPrefixed, "trailing-crc": lambda: TrailingCrc(_sized)}


@pytest.fixture(params=sorted(FRAMINGS))
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    return Journal(tmp_path / "j.journal", FRAMINGS[request.param]())


def _read_all(journal: Journal) -> tuple[list[bytes], int]:
    data = journal.path.read_bytes()[len(HEAD) :]
    records = list(journal.records(data))
    return [bytes(payload) for payload, _ in records], records[-1][1] if records else 0


def test_appended_records_read_back_in_order(journal: Journal) -> None:
    payloads = [_payload(b"one"), _payload(b""), _payload(b"three" * 100)]
    journal.append(HEAD, payloads[:2])
    journal.append(HEAD, payloads[2:])
    assert journal.path.read_bytes().startswith(HEAD)
    assert journal.size == journal.path.stat().st_size
    assert journal.size == len(HEAD) + sum(journal.framing.framed_size(len(p)) for p in payloads)
    assert _read_all(journal) == (payloads, journal.size - len(HEAD))


@pytest.mark.parametrize("cut", [1, 3, 7])
def test_a_torn_or_corrupt_last_record_is_not_committed_and_the_next_append_cuts_it_off(
    journal: Journal, cut: int
) -> None:
    journal.append(HEAD, [_payload(b"kept")])
    committed = journal.size
    journal.append(HEAD, [_payload(b"torn away")])
    data = journal.path.read_bytes()
    journal.path.write_bytes(data[:-cut])  # torn
    assert _read_all(journal) == ([_payload(b"kept")], committed - len(HEAD))
    flipped = bytearray(data)
    flipped[-cut] ^= 0xFF  # whole, but its checksum fails
    journal.path.write_bytes(bytes(flipped))
    assert _read_all(journal)[0] == [_payload(b"kept")]
    journal.size = committed  # what a reader of the file found good
    journal.append(HEAD, [_payload(b"next")])
    assert _read_all(journal)[0] == [_payload(b"kept"), _payload(b"next")]
    assert journal.path.stat().st_size == journal.size


def test_read_returns_the_head_and_the_bytes_from_an_offset(journal: Journal) -> None:
    assert journal.read(head_size=len(HEAD), start=0) is None
    journal.append(HEAD, [_payload(b"a")])
    read = journal.read(head_size=len(HEAD), start=len(HEAD))
    assert read is not None and read.head == HEAD and read.data == journal.path.read_bytes()[len(HEAD) :]


def test_a_new_snapshot_replaces_the_journal(journal: Journal, tmp_path: Path) -> None:
    journal.append(HEAD, [_payload(b"a")])
    replace_snapshot(tmp_path / "snapshot", lambda file: file.write(b"snap"), journal)
    assert (tmp_path / "snapshot").read_bytes() == b"snap"
    assert not journal.path.exists() and journal.size == 0
    journal.append(HEAD, [_payload(b"b")])  # a fresh journal starts with its head again
    assert _read_all(journal)[0] == [_payload(b"b")]


def test_a_journal_outgrows_its_snapshot_past_the_minimum(journal: Journal, monkeypatch) -> None:
    journal.append(HEAD, [_payload(b"x" * 100)])
    assert not journal.outgrows(10, snapshot_bytes=50)  # below JOURNAL_MIN_BYTES nothing forces a snapshot
    monkeypatch.setattr(journal_module, "JOURNAL_MIN_BYTES", 0)
    assert journal.outgrows(10, snapshot_bytes=50)
    assert not journal.outgrows(10, snapshot_bytes=10_000)
