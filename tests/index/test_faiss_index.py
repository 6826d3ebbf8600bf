"""FaissIndex specifics: the file layout, IVF's training rule, HNSW tombstones, the GPU replica (with a stand-in)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import faiss
import numpy as np
import pytest

from mmrag.errors import ConfigError, IndexError_, ManifestMismatchError
from mmrag.index import faiss_index, journal
from mmrag.index.faiss_index import FILE_MAGIC, IVF_MIN_POINTS_PER_LIST, FaissIndex
from tests.contract.oracles import VectorOracle, clustered_vectors, queries_near

DIM = 16


def open_index(path: Path, **kwargs: object) -> FaissIndex:
    kwargs.setdefault("use_gpu", False)
    return FaissIndex.open(path, model="m", dim=DIM, **kwargs)


def test_one_file_holds_manifest_and_index(tmp_path: Path) -> None:
    path = tmp_path / "clip.faiss"
    index = open_index(path)
    assert not path.exists(), "nothing is written before flush"
    index.add(np.arange(5), clustered_vectors(5, DIM))
    index.flush()
    data = path.read_bytes()
    magic, manifest_len, index_len, tombstones_len = struct.unpack_from("<8sQQQ", data)
    assert magic == FILE_MAGIC
    assert len(data) == 32 + manifest_len + index_len + tombstones_len
    manifest = json.loads(data[32 : 32 + manifest_len])
    assert manifest == {"model": "m", "dim": DIM, "metric": "ip", "count": 5, "kind": "flat"}
    assert json.loads((tmp_path / "clip.manifest.json").read_text()) == manifest
    # The middle part is a plain faiss index.
    stored = faiss.deserialize_index(np.frombuffer(data[32 + manifest_len : 32 + manifest_len + index_len], "uint8"))
    assert stored.ntotal == 5


def test_flush_is_a_no_op_when_nothing_changed(tmp_path: Path) -> None:
    path = tmp_path / "clip.faiss"
    index = open_index(path)
    index.add(np.arange(3), clustered_vectors(3, DIM))
    index.flush()
    stamp = path.stat().st_mtime_ns
    index.flush()
    open_index(path).flush()
    assert path.stat().st_mtime_ns == stamp
    index.remove([10**9])  # removing nothing changes nothing
    index.flush()
    assert path.stat().st_mtime_ns == stamp


def test_a_damaged_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clip.faiss"
    index = open_index(path)
    index.add(np.arange(50), clustered_vectors(50, DIM))
    index.flush()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(IndexError_, match="header says"):
        open_index(path)
    path.write_bytes(b"NOTMMRAG" + data[8:])
    with pytest.raises(IndexError_, match="magic"):
        open_index(path)


def test_reopening_as_another_kind_raises(tmp_path: Path) -> None:
    path = tmp_path / "clip.faiss"
    open_index(path).flush()
    with pytest.raises(ManifestMismatchError, match=r"'flat'.*'hnsw'"):
        open_index(path, kind="hnsw")


def test_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kind"):
        open_index(tmp_path / "x.faiss", kind="pq")
    with pytest.raises(ConfigError, match="metric"):
        open_index(tmp_path / "x.faiss", metric="l2")


def test_ivf_stays_exact_until_it_can_train(tmp_path: Path) -> None:
    lists = 4
    threshold = IVF_MIN_POINTS_PER_LIST * lists
    vectors = clustered_vectors(threshold + 50, DIM, clusters=6, seed=3)
    queries = queries_near(vectors, 20, seed=4)
    index, oracle = open_index(tmp_path / "ivf.faiss", kind="ivf", ivf_lists=lists, ivf_nprobe=1), VectorOracle()
    index.add(np.arange(threshold - 1), vectors[: threshold - 1])
    oracle.add(np.arange(threshold - 1), vectors[: threshold - 1])
    assert not index.is_trained_ivf
    for query, hits in zip(queries, index.search(queries, 5), strict=True):  # exact, even with nprobe=1
        assert [hit.page_id for hit in hits] == [page_id for page_id, _ in oracle.search(query, 5)]
    index.flush()
    reopened = open_index(tmp_path / "ivf.faiss", kind="ivf", ivf_lists=lists, ivf_nprobe=lists)
    assert not reopened.is_trained_ivf

    reopened.add(np.arange(threshold - 1, len(vectors)), vectors[threshold - 1 :])
    oracle.add(np.arange(threshold - 1, len(vectors)), vectors[threshold - 1 :])
    assert reopened.is_trained_ivf
    assert len(reopened) == len(vectors)
    for query, hits in zip(queries, reopened.search(queries, 5), strict=True):  # nprobe = all lists: exact again
        assert [hit.page_id for hit in hits] == [page_id for page_id, _ in oracle.search(query, 5)]
    reopened.flush()
    trained = open_index(tmp_path / "ivf.faiss", kind="ivf", ivf_lists=lists)
    assert trained.is_trained_ivf and len(trained) == len(vectors)
    assert trained.remove(np.arange(10)) == 10 and len(trained) == len(vectors) - 10


def test_hnsw_tombstones_survive_a_reopen_and_trigger_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "hnsw.faiss"
    vectors = clustered_vectors(200, DIM, seed=5)
    index = open_index(path, kind="hnsw", hnsw_m=8)
    index.add(np.arange(200), vectors)
    assert index.remove(np.arange(10)) == 10  # 5%: tombstoned, the graph keeps the rows
    assert index._index.ntotal == 200
    index.flush()
    reopened = open_index(path, kind="hnsw", hnsw_m=8)
    assert len(reopened) == 190 and reopened._index.ntotal == 200
    for hits in reopened.search(vectors[:10], 20):
        assert all(hit.page_id >= 10 for hit in hits)
    reopened.remove(np.arange(10, 60))  # now 30% dead: rebuilt without them
    assert reopened._index.ntotal == 140 == len(reopened)
    for page_id, hits in zip(range(60, 80), reopened.search(vectors[60:80], 1), strict=True):
        assert hits[0].page_id == page_id


class _FakeGpu:
    """Stands in for a GPU: the 'replica' is a CPU clone, so the replica bookkeeping runs without a device."""

    def __init__(self) -> None:
        self.clones = 0

    def clone(self, cpu_index: faiss.Index) -> faiss.Index:  # patched onto the class: no FaissIndex self
        self.clones += 1
        return faiss.clone_index(cpu_index)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_gpu_replica_follows_the_cpu_master(tmp_path: Path, monkeypatch, kind: str) -> None:
    gpu = _FakeGpu()
    monkeypatch.setattr(faiss_index, "_num_gpus", lambda: 1)
    monkeypatch.setattr(FaissIndex, "_clone_to_gpu", gpu.clone)
    vectors = clustered_vectors(300, DIM, seed=6)
    queries = queries_near(vectors, 10, seed=7)
    index = open_index(tmp_path / "g.faiss", kind=kind, ivf_lists=2, ivf_nprobe=2, use_gpu=True)
    oracle = VectorOracle()

    def check() -> None:
        for query, hits in zip(queries, index.search(queries, 5), strict=True):
            assert [hit.page_id for hit in hits] == [page_id for page_id, _ in oracle.search(query, 5)]

    index.add(np.arange(200) + 1000, vectors[:200])
    oracle.add(np.arange(200) + 1000, vectors[:200])
    check()
    assert gpu.clones == 1
    index.add(np.arange(200, 300) + 1000, vectors[200:])  # appended to the replica, no new upload
    oracle.add(np.arange(200, 300) + 1000, vectors[200:])
    check()
    assert gpu.clones == 1
    index.remove(np.arange(50) + 1000)  # the replica cannot remove: it is rebuilt on the next search
    oracle.remove(list(np.arange(50) + 1000))
    check()
    assert gpu.clones == 2
    index.flush()  # saved from the CPU master
    assert len(open_index(tmp_path / "g.faiss", kind=kind, ivf_lists=2)) == 250


def test_hnsw_never_goes_to_the_gpu(tmp_path: Path, monkeypatch) -> None:
    gpu = _FakeGpu()
    monkeypatch.setattr(faiss_index, "_num_gpus", lambda: 1)
    monkeypatch.setattr(FaissIndex, "_clone_to_gpu", gpu.clone)
    index = open_index(tmp_path / "h.faiss", kind="hnsw", use_gpu=True)
    index.add(np.arange(20), clustered_vectors(20, DIM))
    index.search(clustered_vectors(2, DIM), 3)
    assert gpu.clones == 0


# --- the journal: flushes append, snapshots are rare ---------------------------------------------------------


def _journal(path: Path) -> Path:
    return path.with_name(path.name + faiss_index.JOURNAL_SUFFIX)


def _flushed_index(tmp_path: Path, n: int, seed: int) -> tuple[Path, np.ndarray, np.ndarray, FaissIndex]:
    """An index whose first 100 of `n` clustered vectors are flushed (its snapshot), with queries near them."""
    path = tmp_path / "clip.faiss"
    vectors = clustered_vectors(n, DIM, seed=seed)
    index = open_index(path)
    index.add(np.arange(100), vectors[:100])
    index.flush()
    return path, vectors, queries_near(vectors, 8), index


def _state(index: FaissIndex, queries: np.ndarray) -> tuple[list[int], list[list[tuple[int, float]]]]:
    hits = [[(hit.page_id, round(hit.score, 5)) for hit in row] for row in index.search(queries, 10)]
    return sorted(index.ids().tolist()), hits


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_flushes_after_the_first_append_to_the_journal_and_a_reopen_replays_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "clip.faiss"
    vectors = clustered_vectors(400, DIM, seed=1)
    queries = queries_near(vectors, 8)
    index = open_index(path, kind=kind, ivf_lists=2)
    index.add(np.arange(100), vectors[:100])
    index.flush()  # the first flush writes the snapshot
    snapshot = path.read_bytes()
    index.add(np.arange(100, 200), vectors[100:200])
    index.flush()
    index.remove(np.arange(0, 40, 3))
    index.add(np.array([5, 6]), vectors[300:302])  # replaces 5, brings back 6 (removed just before)
    index.flush()
    index.add(np.arange(200, 260), vectors[200:260])
    index.remove([201, 10**9])
    index.flush()
    if kind == "ivf":
        assert index.is_trained_ivf  # trained on the way (78 points): that flush wrote a snapshot
    else:
        assert path.read_bytes() == snapshot, "appends leave the snapshot alone"
        assert _journal(path).stat().st_size > 0
    reopened = open_index(path, kind=kind, ivf_lists=2)
    assert _state(reopened, queries) == _state(index, queries)
    assert len(reopened) == len(index) == 100 + 100 - 14 + 1 + 60 - 1


def test_a_torn_journal_tail_is_ignored_and_cut_off_by_the_next_flush(tmp_path: Path) -> None:
    path, vectors, queries, index = _flushed_index(tmp_path, 300, seed=2)
    index.add(np.arange(100, 150), vectors[100:150])
    index.flush()
    durable = _state(index, queries)
    journal = _journal(path)
    complete = journal.stat().st_size
    index.add(np.arange(150, 200), vectors[150:200])
    index.flush()
    # The crash: the last flush's record reached the disk only in part.
    with journal.open("r+b") as file:
        file.truncate(complete + 100)
    reopened = open_index(path)
    assert _state(reopened, queries) == durable
    reopened.add(np.arange(200, 220), vectors[200:220])
    reopened.flush()
    again = open_index(path)
    assert sorted(again.ids().tolist()) == list(range(150)) + list(range(200, 220))
    # A flipped byte inside a record fails its checksum: that record and everything after it are ignored.
    data = bytearray(journal.read_bytes())
    data[complete + 40] ^= 0xFF
    journal.write_bytes(bytes(data))
    assert sorted(open_index(path).ids().tolist()) == list(range(150))


def test_a_new_snapshot_replaces_the_journal_once_it_outgrows_the_snapshot(tmp_path: Path, monkeypatch) -> None:
    """Bytes written over a job stay linear in the index size: snapshots are rewritten geometrically rarely."""
    monkeypatch.setattr(journal, "JOURNAL_MIN_BYTES", 0)
    snapshots = []
    real_write = journal.atomic_write
    monkeypatch.setattr(journal, "atomic_write",
                        lambda path, write: (snapshots.append(path), real_write(path, write))[1])
    path = tmp_path / "clip.faiss"
    vectors = clustered_vectors(6400, DIM, seed=3)
    index = open_index(path)
    for start in range(0, 6400, 100):  # 64 flushes, like a bulk job committing batch after batch
        index.add(np.arange(start, start + 100), vectors[start : start + 100])
        index.flush()
    assert 2 <= len(snapshots) <= 10, f"{len(snapshots)} snapshots for 64 flushes"
    assert open_index(path).ids().tolist() == list(range(6400))
    written_last = _journal(path).stat().st_size if _journal(path).exists() else 0
    assert written_last <= path.stat().st_size + 100 * (8 + 4 * DIM) + 64


def test_a_crash_between_a_snapshot_and_the_journal_deletion_replays_harmlessly(tmp_path: Path) -> None:
    path, vectors, queries, index = _flushed_index(tmp_path, 200, seed=4)
    index.remove(np.arange(10))
    index.add(np.array([50]), vectors[150:151])
    index.add(np.arange(100, 120), vectors[100:120])
    index.flush()
    stale_journal = _journal(path).read_bytes()
    index._write_snapshot(index.manifest())  # what a snapshot flush does; then "crash" before the delete:
    _journal(path).write_bytes(stale_journal)
    reopened = open_index(path)
    assert _state(reopened, queries) == _state(index, queries)


def test_a_journal_of_another_index_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clip.faiss"
    index = open_index(path)
    index.add(np.arange(10), clustered_vectors(10, DIM))
    index.flush()
    _journal(path).write_bytes(faiss_index._JOURNAL_HEADER.pack(faiss_index.JOURNAL_MAGIC, DIM + 1))
    with pytest.raises(IndexError_, match="rebuild"):
        open_index(path)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_a_reader_catches_up_with_the_writers_journal(tmp_path: Path, kind: str) -> None:
    """Another process's index on the same file follows each flush by reading only the new journal records, sees
    a record that is still being written only once it is whole, and declines after a new snapshot (then reopen)."""
    path = tmp_path / "clip.faiss"
    vectors = clustered_vectors(400, DIM, seed=4)
    queries = queries_near(vectors, 8)
    writer = open_index(path, kind=kind, ivf_lists=2)
    writer.add(np.arange(60), vectors[:60])
    writer.flush()
    reader = open_index(path, kind=kind, ivf_lists=2)
    assert reader.catch_up() and _state(reader, queries) == _state(writer, queries)  # nothing new yet

    writer.add(np.arange(60, 70), vectors[60:70])
    writer.flush()
    journal = _journal(path)
    whole = journal.read_bytes()
    writer.remove(np.array([2, 4]))  # few: hnsw rebuilds its graph (a new snapshot) past a share of tombstones
    writer.add(np.array([3]), vectors[300:301])
    writer.flush()
    written = journal.read_bytes()
    journal.write_bytes(written[: len(whole) + 20])  # the second flush still on its way to the disk
    assert reader.catch_up() and _state(reader, queries)[0] == list(range(70))
    journal.write_bytes(written)
    assert reader.catch_up() and _state(reader, queries) == _state(writer, queries)

    writer._snapshot_due = True  # the next flush rewrites the snapshot and deletes the journal
    writer.add(np.arange(70, 80), vectors[70:80])
    writer.flush()
    assert not reader.catch_up()
    assert _state(open_index(path, kind=kind, ivf_lists=2), queries) == _state(writer, queries)
    writer.add(np.array([500]), vectors[399:400])
    assert not writer.catch_up()  # changes of its own: a writer has no one to follow
