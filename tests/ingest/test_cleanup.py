"""What killed jobs leave (their temporary directories, their pools' semaphores) is removed, while what live
processes use stays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmrag.ingest import cleanup
from tests.leftovers import (
    SKIPPED,
    backdate,
    dead_semaphore,
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
