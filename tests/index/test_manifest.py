"""Manifest round trips and checks, and the atomic write helper."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mmrag.errors import IndexError_, ManifestMismatchError
from mmrag.index import manifest as manifest_module
from mmrag.index.manifest import (
    Manifest,
    as_page_ids,
    atomic_write_bytes,
    last_occurrences,
    remove_stale_tmp_files,
)

MANIFEST = Manifest(model="clip-b32", dim=512, metric="ip", count=7, kind="flat")


def test_json_round_trip() -> None:
    assert Manifest.from_json(MANIFEST.to_json()) == MANIFEST
    with pytest.raises(IndexError_, match="malformed"):
        Manifest.from_json('{"model": "x"}')
    with pytest.raises(IndexError_, match="not valid JSON"):
        Manifest.from_json("{")


def test_check_names_both_values() -> None:
    MANIFEST.check("clip-b32", 512, "ip")
    with pytest.raises(ManifestMismatchError, match=r"'clip-b32'.*'clip-l14'"):
        MANIFEST.check("clip-l14", 512, "ip")
    with pytest.raises(ManifestMismatchError, match=r"512.*768"):
        MANIFEST.check("clip-b32", 768, "ip")
    with pytest.raises(ManifestMismatchError, match=r"'ip'.*'l2'"):
        MANIFEST.check("clip-b32", 512, "l2")
    with pytest.raises(ManifestMismatchError, match=r"count 7.*holds 8"):
        MANIFEST.check_count(8)
    with pytest.raises(ManifestMismatchError, match=r"'flat'.*'hnsw'"):
        MANIFEST.check_kind("hnsw")


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"first")
    target.chmod(0o640)
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert target.stat().st_mode & 0o777 == 0o640, "the replaced file keeps its mode"
    assert [path.name for path in target.parent.iterdir()] == ["file.bin"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_debris(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")

    def fail(*args: object) -> None:
        raise OSError("no space left")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["file.bin"]


def test_stale_tmp_files_are_recognised(tmp_path: Path) -> None:
    target = tmp_path / "x.faiss"
    (tmp_path / ".x.faiss.abc.tmp").write_bytes(b"")
    (tmp_path / ".other.abc.tmp").write_bytes(b"")
    assert remove_stale_tmp_files(target) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == [".other.abc.tmp"]
    assert manifest_module.TMP_SUFFIX == ".tmp"


def test_page_ids_are_validated() -> None:
    np.testing.assert_array_equal(as_page_ids([3, 1]), [3, 1])
    assert as_page_ids([]).dtype == np.int64
    with pytest.raises(TypeError):
        as_page_ids([1.0])
    with pytest.raises(ValueError):
        as_page_ids([-1])
    np.testing.assert_array_equal(last_occurrences(np.array([5, 6, 5, 7, 6])), [2, 3, 4])
