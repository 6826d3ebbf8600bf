"""ShardedMultiVectorStore beyond the contract: a store far larger than RAM opens through memory maps."""

from __future__ import annotations

import json
import resource
import struct
from pathlib import Path

import numpy as np

from mmrag.index.multivector import ShardedMultiVectorStore
from mmrag.index.multivector_codec import ENTRY_DTYPE, FILE_MAGIC, OFFSETS_FILE, shard_file_name
from tests.contract.oracles import MaxSimOracle, topic_pages, topic_query

DIM = 128
HUGE_TOKENS = 256 * 1024 * 1024  # 256 Mi rows x 128 dims x fp16 = 64 GiB, as a sparse file: no disk, no RAM


def test_a_store_larger_than_ram_opens_and_searches_what_it_must(tmp_path: Path) -> None:
    pages, _, centres = topic_pages(20, DIM, seed=2)
    store = ShardedMultiVectorStore(tmp_path, DIM, "m", shard_rows=1_000_000)
    store.add(list(range(20)), pages)
    store.flush()
    # Make page 20 a 64 GiB page in a shard of its own, as the offsets file would describe it after a long run.
    huge_serial = 100
    huge_shard = tmp_path / shard_file_name(huge_serial)
    with huge_shard.open("wb") as file:
        file.truncate(HUGE_TOKENS * DIM * 2)
    _rewrite_offsets_with_huge_page(tmp_path, huge_serial)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reopened = ShardedMultiVectorStore(tmp_path, DIM, "m", shard_rows=1_000_000)
    assert len(reopened) == 21
    assert reopened.stats()["rows"] == sum(len(page) for page in pages) + HUGE_TOKENS
    # Tombstone the huge page: searches skip its chunks without reading them, compaction drops the file.
    assert reopened.remove([20]) == 1
    oracle = MaxSimOracle(as_stored=True)
    oracle.add(list(range(20)), pages)
    query = topic_query(centres, 1)
    assert [hit.page_id for hit in reopened.search(query, 5)] == [page_id for page_id, _ in oracle.search(query, 5)]
    reopened.compact()
    assert not huge_shard.exists()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 512, f"opening a 64 GiB store grew the process by {grown_mib:.0f} MiB"
    assert len(ShardedMultiVectorStore(tmp_path, DIM, "m")) == 20


def _rewrite_offsets_with_huge_page(directory: Path, serial: int) -> None:
    """Append one committed entry for a HUGE_TOKENS page in shard `serial`, in the offsets file's own format."""
    path = directory / OFFSETS_FILE
    data = path.read_bytes()
    magic, header_len = struct.unpack_from("<8sQ", data)
    assert magic == FILE_MAGIC
    header = json.loads(data[16 : 16 + header_len])
    table = np.frombuffer(data[16 + header_len :], dtype=ENTRY_DTYPE)
    huge = np.array([(20, serial, 0, HUGE_TOKENS, 0)], dtype=ENTRY_DTYPE)
    header["shards"].append({"serial": serial, "rows": HUGE_TOKENS})
    header["next_serial"] = serial + 1
    header["entries"] = len(table) + 1
    header["manifest"]["count"] += 1
    header_bytes = json.dumps(header).encode()
    table_bytes = np.concatenate([table, huge]).tobytes()
    path.write_bytes(struct.pack("<8sQ", FILE_MAGIC, len(header_bytes)) + header_bytes + table_bytes)
