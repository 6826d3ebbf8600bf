"""A job's temporary files in its own directory under the data dir, and what killed jobs leave (their directories,
their pools' semaphores) removed at a job's start, while what live processes use stays."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mmrag.config import IngestSettings
from mmrag.ingest import cleanup
from tests.factories import make_image
from tests.leftovers import (
    SKIPPED,
    TEMP_NOTES,
    backdate,
    dead_semaphore,
    load_noting_temp_dir,
    mapped,
    semaphores,
    start_lock_holder,
    stop,
)

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(done.stdout)


def test_temporary_directories_of_dead_jobs_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    here, dead = cleanup.host_name(), _dead_pid()
    mine = cleanup.make_temp_dir(root)
    assert mine.name.startswith(f"{here}-{os.getpid()}-") and mine.stat().st_mode & 0o777 == 0o700
    killed = root / f"{here}-{dead}-k1ll3d00"
    elsewhere_recent = root / f"other-host.lan-{dead}-r3c3nt00"
    elsewhere_old = root / f"other-host.lan-{dead}-0ld00000"
    unrelated = root / "notes"
    for directory in (killed, elsewhere_recent, elsewhere_old, unrelated):
        directory.mkdir()
    (killed / "tess_abc_input.PNG").write_bytes(b"left by tesseract's caller")
    backdate(elsewhere_old, cleanup.OTHER_HOST_AGE_S + 60)

    assert cleanup.remove_dead_temp_dirs(root) == 2
    assert sorted(p.name for p in root.iterdir()) == sorted([mine.name, elsewhere_recent.name, unrelated.name])
    cleanup.remove_temp_dir(mine)
    assert not mine.exists() and cleanup.remove_dead_temp_dirs(tmp_path / "nothing-here") == 0


@pytest.mark.skipif(not cleanup.SEMAPHORE_DIR.is_dir(), reason="this system keeps no named semaphores in /dev/shm")
def test_semaphores_of_killed_processes_are_removed_and_mapped_ones_kept() -> None:
    import multiprocessing

    before = semaphores()
    # This process's own: glibc maps it under a temporary name, so only its device and inode tell it is in use.
    own = multiprocessing.get_context("forkserver").Lock()
    [own_path] = semaphores() - before
    holder, held = start_lock_holder()  # another live process's
    killed, young = dead_semaphore(), dead_semaphore()
    killed_after_joblib = dead_semaphore("joblib.externals.loky.backend")
    try:
        assert killed_after_joblib.name.startswith("sem.loky-")
        assert not mapped(killed) and mapped(own_path) and mapped(held)
        # Old enough for either rule: a minute, and the hour that applies while some process cannot be read.
        for path in (own_path, held, killed, killed_after_joblib):
            backdate(path, cleanup.UNREADABLE_MAX_AGE_S + 60)
        assert cleanup.remove_orphan_semaphores() >= 2
        assert not killed.exists() and not killed_after_joblib.exists()
        assert own_path.exists() and held.exists()
        assert young.exists()  # made a moment ago: it might be about to be mapped
        with own:  # still a working lock
            pass
    finally:
        stop(holder)
        for path in (killed, young, held, killed_after_joblib):
            path.unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.skipif(not cleanup.SEMAPHORE_DIR.is_dir(), reason="this system keeps no named semaphores in /dev/shm")
def test_a_process_that_cannot_be_read_keeps_semaphores_for_an_hour() -> None:
    """In a process without capabilities, where a process made undumpable has maps its own user cannot read."""
    done = subprocess.run(
        [sys.executable, "-c", "from tests.leftovers import unreadable_holder_scenario as s; s()"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
        check=False,
    )
    if done.returncode == SKIPPED:
        pytest.skip("a process made undumpable can still be read here")
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_jobs_temporary_files_go_to_its_directory_which_goes_at_its_end(tmp_path: Path, workers: int) -> None:
    """pytesseract's files (and TMPDIR, for tesseract and poppler, in a worker) in the job's directory under the
    data dir, whether the file is decoded by a worker or, with workers=0, by this process."""
    from mmrag.indexing import Loader

    photo = make_image(tmp_path / "photo.jpg", seed=1)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    system_temp = tempfile.gettempdir()
    loader = Loader(workers, temp_root=data_dir / cleanup.TEMP_DIR_NAME, load_file=load_noting_temp_dir)
    try:
        temp_dir = loader.temp_dir
        assert temp_dir is not None and temp_dir.parent == data_dir / cleanup.TEMP_DIR_NAME and temp_dir.is_dir()
        for _ in range(2):
            [loaded] = loader.received(loader.load([(str(photo), "ab" * 32)], IngestSettings(ocr="never"),
                                                   str(data_dir), ()).result())
            assert loaded.pages
        alone = loader.load_alone([(str(photo), "ab" * 32)], IngestSettings(ocr="never"), str(data_dir), ())
        assert len(alone) == 1
    finally:
        loader.close()
    notes = [line.split("\t") for line in (data_dir / TEMP_NOTES).read_text().splitlines()]
    assert len(notes) == 3 and {where for _, where, _ in notes} == {str(temp_dir)}
    workers_notes = [n for n in notes if int(n[0]) != os.getpid()]
    assert len(workers_notes) == (3 if workers else 1)  # load_alone runs in a process of its own either way
    assert all(tmpdir == str(temp_dir) for _, _, tmpdir in workers_notes)
    assert not temp_dir.exists() and tempfile.gettempdir() == system_temp
    loader.close()  # closing twice is harmless


def test_a_job_that_fails_to_start_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmrag.indexing import Loader, loading

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(loading, "ProcessPoolExecutor", broken)
    with pytest.raises(OSError, match="Too many open files"):
        Loader(2, temp_root=tmp_path / "tmp")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_jobs_start_removes_what_killed_jobs_left_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mmrag.indexing import Loader

    root = tmp_path / "tmp"
    killed = root / f"{cleanup.host_name()}-{_dead_pid()}-k1ll3d00"
    killed.mkdir(parents=True)
    caplog.set_level("INFO", logger="mmrag.ingest.cleanup")
    Loader(0, temp_root=root).close()
    assert not killed.exists() and list(root.iterdir()) == []
    assert any("removed 1 temporary directories" in r.getMessage() for r in caplog.records)


def _process_temp_dir(system_temp: Path) -> tuple[str, str]:
    """In a fresh process with `system_temp` as TMPDIR: use_process_temp_dir's answer, and where a multiprocessing
    fork server put its socket."""
    script = (
        "import multiprocessing, tempfile\n"
        "from mmrag.ingest.cleanup import use_process_temp_dir\n"
        "directory = use_process_temp_dir()\n"
        "from multiprocessing import util\n"
        "print(directory)\n"
        "print(util.get_temp_dir())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "TMPDIR": str(system_temp)})
    directory, fork_server = done.stdout.split()
    return directory, fork_server


def test_a_job_process_keeps_its_temporary_files_in_a_directory_of_its_own(tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="sys-"))  # as short as a system's temp: tmp_path is deeper
    try:
        directory, fork_server = _process_temp_dir(short)
        assert Path(directory).parent == short and Path(directory).name.startswith(cleanup.PROCESS_DIR_PREFIX)
        assert Path(fork_server).parent == Path(directory)  # multiprocessing's own temp dir, inside it
        assert list(short.iterdir()) == []  # gone with the process: nothing left in the system temp
    finally:
        shutil.rmtree(short, ignore_errors=True)
    # a system temp too deep for a socket's path one level further down is left as it is
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    directory, fork_server = _process_temp_dir(deep)
    assert Path(directory) == deep and Path(fork_server).parent == deep
