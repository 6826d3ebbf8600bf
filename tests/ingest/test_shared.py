"""Page inputs from a worker through shared memory: the arrays come back equal, the files go away, and anything
that cannot be shared goes through the pipe instead."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmrag.config import IngestSettings
from mmrag.ingest import shared
from mmrag.inputs import ClipPixels, QwenPixels
from mmrag.ingest.results import FileFailure, LoadedFile
from mmrag.ingest.worker import load_files, load_files_shared
from tests.factories import make_image, make_pdf

pytestmark = pytest.mark.skipif(not shared.available(), reason="this system has no writable /dev/shm")


def _files(tmp_path: Path) -> list[tuple[str, str]]:
    photos = [make_image(tmp_path / f"p{i}.jpg", seed=i, size=(320, 240)) for i in range(3)]
    pdf = make_pdf(tmp_path / "doc.pdf", ["first page", "second page"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return [(str(p), f"{i:064x}") for i, p in enumerate([*photos, pdf, broken])]


def _segments(prefix: str) -> list[Path]:
    return sorted(shared.SHM_DIR.glob(f"{prefix}-*"))


SPECS = (ClipPixels(224), QwenPixels(patch_size=14, merge_size=2, min_pixels=56 * 56, max_pixels=64 * 28 * 28))


def test_arrays_come_back_equal_and_the_file_is_gone(tmp_path: Path) -> None:
    settings = IngestSettings(ocr="never")
    files = _files(tmp_path)
    direct = load_files(files, settings, str(tmp_path / "a"), SPECS)
    prefix = shared.new_prefix()
    sent = load_files_shared(files, settings, str(tmp_path / "b"), SPECS, None, prefix, 0)

    assert sent.segment is not None and _segments(prefix) == [shared.SHM_DIR / sent.segment]
    placeholders = [v for r in sent.results if isinstance(r, LoadedFile) for p in r.pages for v in p.inputs]
    assert all(isinstance(v, shared.SharedArray) for v in placeholders[::2])  # ClipPixels: the array itself
    assert all(isinstance(v.pixels, shared.SharedArray) for v in placeholders[1::2])  # QwenPage: its array field
    received = shared.receive(sent)
    assert _segments(prefix) == []

    assert [type(r) for r in received] == [type(r) for r in direct]
    assert isinstance(received[-1], FileFailure) and received[-1] == direct[-1]
    pages = 0
    for got, want in zip(received, direct, strict=True):
        if isinstance(want, FileFailure):
            continue
        for got_page, want_page in zip(got.pages, want.pages, strict=True):
            clip_got, qwen_got = got_page.inputs
            clip_want, qwen_want = want_page.inputs
            np.testing.assert_array_equal(clip_got, clip_want)
            assert clip_got.flags.writeable  # copy-on-write: usable as if it had come through the pipe
            np.testing.assert_array_equal(qwen_got.pixels, qwen_want.pixels)
            assert qwen_got.source_size == qwen_want.source_size
            pages += 1
    assert pages == 3 + 2


def test_small_results_and_no_shared_memory_go_through_the_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = IngestSettings(ocr="never")
    files = _files(tmp_path)[:1]
    prefix = shared.new_prefix()
    # one CLIP photo: 150 KB, under the floor
    small = load_files_shared(files, settings, str(tmp_path), SPECS[:1], None, prefix, shared.MIN_SHARED_BYTES)
    assert small.segment is None and isinstance(small.results[0].pages[0].inputs[0], np.ndarray)

    monkeypatch.setattr(shared, "SHM_DIR", tmp_path / "no-such-dir")
    fallback = load_files_shared(files, settings, str(tmp_path), SPECS, None, prefix, 0)
    assert fallback.segment is None
    [direct] = load_files(files, settings, str(tmp_path), SPECS)
    np.testing.assert_array_equal(shared.receive(fallback)[0].pages[0].inputs[0], direct.pages[0].inputs[0])


def test_a_full_tmpfs_falls_back_to_the_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """posix_fallocate reports a full /dev/shm (a container's is 64 MB by default) before any write: no SIGBUS."""

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    prefix = shared.new_prefix()
    sent = load_files_shared(_files(tmp_path)[:2], IngestSettings(ocr="never"), str(tmp_path), SPECS, None, prefix, 0)
    assert sent.segment is None and _segments(prefix) == []
    assert sent.unshared is not None and "No space left on device" in sent.unshared
    assert isinstance(sent.results[1].pages[0].inputs[0], np.ndarray)


def test_the_job_says_once_why_inputs_went_through_the_pipe(caplog: pytest.LogCaptureFixture) -> None:
    from mmrag.indexing import Loader

    loader = Loader(0)
    try:
        for _ in range(3):
            assert loader.received(shared.SharedResults(["r"], unshared="cannot allocate: full")) == ["r"]
    finally:
        loader.close()
    warnings = [r for r in caplog.records if "through the pipe" in r.getMessage()]
    assert len(warnings) == 1 and "cannot allocate: full" in warnings[0].getMessage()


def test_files_of_dead_processes_and_of_a_closed_pool_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    orphan = shared.SHM_DIR / f"{shared.NAME_STEM}-{dead_pid}-deadbeef-1-0"
    mine = shared.SHM_DIR / f"{shared.new_prefix()}-1-0"
    try:
        orphan.write_bytes(b"x")
        mine.write_bytes(b"x")
        shared.remove_orphans()
        assert orphan.exists()  # an hour old at least, first
        hour_ago = time.time() - shared.ORPHAN_AGE_S - 1
        for path in (orphan, mine):
            os.utime(path, (hour_ago, hour_ago))
        assert shared.remove_orphans() >= 1
        assert not orphan.exists() and mine.exists()  # this process is alive: its files stay
        prefix = mine.name.rsplit("-", 2)[0]
        assert shared.remove_segments(prefix) == 1 and not mine.exists()
    finally:
        orphan.unlink(missing_ok=True)
        mine.unlink(missing_ok=True)


def test_a_processors_tensors_by_name_are_shared_too(tmp_path: Path) -> None:
    """ProcessorInputs (ColPali families other than Qwen2-VL) hand back a dict of TensorData per page."""
    import torch

    from mmrag.inputs import TensorData
    from mmrag.ingest.results import StoredPage

    values = {"pixel_values": TensorData.of(torch.rand(2, 3, 64, 64).to(torch.bfloat16)),
              "input_ids": TensorData.of(torch.arange(300)), "mask": None}
    pages = [StoredPage(1, 64, 64, "", "none", "pages/x/1.jpg", (values,))]
    sent = shared.export([LoadedFile("a.pdf", "ab" * 32, "pdf", "application/pdf", pages)], shared.new_prefix(), 0)
    [placed] = sent.results[0].pages[0].inputs
    assert isinstance(placed["pixel_values"].array, shared.SharedArray) and placed["mask"] is None
    [loaded] = shared.receive(sent)
    got = loaded.pages[0].inputs[0]
    for name in ("pixel_values", "input_ids"):
        assert torch.equal(got[name].tensor(), values[name].tensor()) and got[name].dtype == values[name].dtype
