"""Collections written before the journal helper open unchanged, and today's code writes the very same bytes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmrag.index.faiss_index import FaissIndex
from mmrag.index.multivector import ShardedMultiVectorStore
from tests.index import golden_stores as golden

EXPECTED = json.loads((golden.DATA / "expected.json").read_text())


def _assert_results(got: dict[str, object], expected: dict[str, object]) -> None:
    assert got["ids"] == expected["ids"]
    for got_row, expected_row in zip(got["hits"], expected["hits"], strict=True):
        assert [page_id for page_id, _ in got_row] == [page_id for page_id, _ in expected_row]
        assert [score for _, score in got_row] == pytest.approx([score for _, score in expected_row], abs=1e-6)


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def _open_faiss(path: Path) -> FaissIndex:
    return FaissIndex.open(path, model=golden.MODEL, dim=golden.FAISS_DIM, kind="flat", use_gpu=False)


def _open_multivector(directory: Path, *, read_only: bool = False) -> ShardedMultiVectorStore:
    return ShardedMultiVectorStore(directory, golden.MULTIVECTOR_DIM, golden.MODEL, shard_rows=24, read_only=read_only)


@pytest.mark.parametrize("torn_tail", [b"", b"FJR1\x01\x00\x00\x00\x05"])
def test_an_old_faiss_index_with_a_journal_opens_unchanged(tmp_path: Path, torn_tail: bytes) -> None:
    shutil.copytree(golden.DATA / "faiss", tmp_path, dirs_exist_ok=True)
    with (tmp_path / "clip.faiss.journal").open("ab") as journal:
        journal.write(torn_tail)  # what a crash mid-flush leaves: ignored
    index = _open_faiss(tmp_path / "clip.faiss")
    _assert_results(golden.faiss_results(index), EXPECTED["faiss"])


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("torn_tail", [b"", b"\x40\x00\x00\x00\x00\x00"])
def test_an_old_multivector_store_with_a_journal_opens_unchanged(
    tmp_path: Path, read_only: bool, torn_tail: bytes
) -> None:
    shutil.copytree(golden.DATA / "multivector", tmp_path, dirs_exist_ok=True)
    with (tmp_path / "offsets.journal").open("ab") as journal:
        journal.write(torn_tail)
    store = _open_multivector(tmp_path, read_only=read_only)
    _assert_results(golden.multivector_results(store), EXPECTED["multivector"])
    store.close()
    if not read_only:  # the writer cut the torn record off: the files are the golden ones again
        assert _files(tmp_path) == _files(golden.DATA / "multivector")


def test_the_faiss_index_writes_the_same_bytes_as_before(tmp_path: Path) -> None:
    with golden.fixed_random_ids():
        index = golden.build_faiss(tmp_path / "clip.faiss", FaissIndex.open)
    assert _files(tmp_path) == _files(golden.DATA / "faiss")
    _assert_results(golden.faiss_results(index), EXPECTED["faiss"])


def test_the_multivector_store_writes_the_same_bytes_as_before(tmp_path: Path) -> None:
    with golden.fixed_random_ids():
        store = golden.build_multivector(tmp_path, ShardedMultiVectorStore)
    assert _files(tmp_path) == _files(golden.DATA / "multivector")
    _assert_results(golden.multivector_results(store), EXPECTED["multivector"])
    store.close()


def test_readers_follow_an_old_journal_and_what_is_appended_to_it(tmp_path: Path) -> None:
    shutil.copytree(golden.DATA / "multivector", tmp_path / "mv")
    reader = _open_multivector(tmp_path / "mv", read_only=True)
    writer = _open_multivector(tmp_path / "mv")
    writer.remove([0, 1])
    writer.flush()
    assert reader.catch_up()
    assert reader.ids().tolist() == writer.ids().tolist()

    shutil.copytree(golden.DATA / "faiss", tmp_path / "faiss")
    faiss_path = tmp_path / "faiss" / "clip.faiss"
    faiss_reader, faiss_writer = _open_faiss(faiss_path), _open_faiss(faiss_path)
    faiss_writer.remove([0, 1])
    faiss_writer.flush()
    assert faiss_reader.catch_up()
    assert faiss_reader.ids().tolist() == faiss_writer.ids().tolist()
