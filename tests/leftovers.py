"""What a killed job leaves behind, made for real (multiprocessing's named semaphores of a killed process group),
an oracle for whether a process maps a file, and a worker entry point that notes where its temporary files go.

Its own small module, so the worker that imports it (by name, as the pool pickles it) stays light, and so a test
can run the unreadable-process scenario in a process of its own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

from mmrag.ingest import cleanup
from mmrag.ingest.results import LoadedFile
from mmrag.ingest.worker import load_file

TEMP_NOTES = "temp-dirs.txt"  # in the data dir: one line per file loaded by load_noting_temp_dir
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SKIPPED = 77  # the scenario's exit status when this system cannot make a process whose maps are unreadable


def load_noting_temp_dir(
    path: str, sha256: str, settings: Any, data_dir: str, *args: Any, **kwargs: Any
) -> LoadedFile:
    """load_file, after noting where pytesseract puts its files in this process (asked of pytesseract itself) and
    the TMPDIR the programs it runs would see."""
    import pytesseract

    with pytesseract.pytesseract.save(Image.new("L", (8, 8))) as (_, input_file):
        where = str(Path(input_file).parent)
    with open(Path(data_dir) / TEMP_NOTES, "a") as notes:
        notes.write(f"{os.getpid()}\t{where}\t{os.environ.get('TMPDIR', '')}\n")
    return load_file(path, sha256, settings, data_dir, *args, **kwargs)


def semaphore_path(name: str) -> Path:
    """The file of the named semaphore `name` ("/mp-...")."""
    return cleanup.SEMAPHORE_DIR / f"sem.{name.lstrip('/')}"


def semaphores() -> set[Path]:
    return {path for pattern in cleanup.SEMAPHORE_GLOBS for path in cleanup.SEMAPHORE_DIR.glob(pattern)}


_MAKE_LOCK_AND_WAIT = """
import importlib, multiprocessing, sys
for name in sys.argv[1:]:
    importlib.import_module(name)  # joblib's loky renames semaphores
lock = multiprocessing.get_context("forkserver").Lock()  # registered with a resource tracker, as a pool's are
print(lock._semlock.name, flush=True)
sys.stdin.read()
"""


def start_lock_holder(*imports: str) -> tuple[subprocess.Popen[str], Path]:
    """A process (in a session of its own, with its resource tracker) holding a multiprocessing lock it made after
    importing the modules `imports`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _MAKE_LOCK_AND_WAIT, *imports], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    assert holder.stdout is not None
    return holder, semaphore_path(holder.stdout.readline().strip())


def stop(holder: subprocess.Popen[str]) -> None:
    """Let a holder end as a process does normally (its resource tracker then has nothing left to clean)."""
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=30)


def dead_semaphore(*imports: str) -> Path:
    """A semaphore as `kill -9` of a job's process group leaves it: its maker and its resource tracker killed."""
    holder, path = start_lock_holder(*imports)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    assert path.exists(), "the resource tracker removed the semaphore before it was killed"
    return path


def backdate(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def mapped(path: Path) -> bool:
    """Whether a process this one can read maps the file at `path` (by device and inode: its maker's maps name the
    temporary file glibc made it as)."""
    info = path.stat()
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}"
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            lines = maps.read_text(errors="replace").splitlines()
        except OSError:
            continue
        if any(line.split()[3:5] == [device, str(info.st_ino)] for line in lines if len(line.split()) >= 5):
            return True
    return False


_OPEN_UNREADABLE_AND_WAIT = """
import _multiprocessing, ctypes, sys
lock = _multiprocessing.SemLock._rebuild(0, 1, 1, sys.argv[1])  # opened by name, as a pool's worker does
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: its /proc maps are unreadable to its user
print("ready", flush=True)
sys.stdin.read()
"""


def _unreadable_process_of_mine() -> bool:
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            (proc / "maps").read_bytes()
        except PermissionError:
            try:
                uids = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("Uid:"))
            except OSError:
                continue
            if str(os.geteuid()) in uids.split()[1:]:
                return True
        except OSError:
            continue
    return False


def _drop_capabilities() -> None:
    """Give up this process's effective capabilities (root has CAP_SYS_PTRACE and more): without them the maps of
    a process made undumpable cannot be read, not even by its own user."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(LINUX_CAPABILITY_VERSION_3, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for half in data:
        half.effective = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def unreadable_holder_scenario() -> None:
    """A semaphore mapped only by a process of this user whose maps cannot be read is kept until it is an hour old;
    with no such process, a dead one goes after a minute. Run in a process of its own: it gives up a capability."""
    _drop_capabilities()
    path = dead_semaphore()
    name = "/" + path.name[len("sem.") :]
    holder = subprocess.Popen(
        [sys.executable, "-c", _OPEN_UNREADABLE_AND_WAIT, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        try:
            (Path("/proc") / str(holder.pid) / "maps").read_bytes()
        except PermissionError:
            pass
        else:
            sys.exit(SKIPPED)
        backdate(path, 2 * cleanup.SEMAPHORE_MIN_AGE_S)
        cleanup.remove_orphan_semaphores()
        assert path.exists(), "removed while a process that could not be read might map it"
        backdate(path, cleanup.UNREADABLE_MAX_AGE_S + 60)
        cleanup.remove_orphan_semaphores()
        assert not path.exists(), "kept past the hour"
    finally:
        stop(holder)
        path.unlink(missing_ok=True)
    # With no process of this user unreadable (the holder is gone), a minute is enough.
    if _unreadable_process_of_mine():
        return  # another one (a user's ssh-agent, say): the hour applies, checked above
    later = dead_semaphore()
    try:
        backdate(later, 2 * cleanup.SEMAPHORE_MIN_AGE_S)
        cleanup.remove_orphan_semaphores()
        assert not later.exists(), "a dead semaphore kept although every process of this user could be read"
    finally:
        later.unlink(missing_ok=True)

