"""What a job leaves on the system besides its data: its temporary directory, and what a killed job leaves behind.

A job's decoding and OCR make temporary files (pytesseract writes `tess_*` files, and runs tesseract on them;
pdf2image hands poppler a directory). They go to a directory of the job's own under the data dir,
`<data_dir>/tmp/<host>-<pid>-<token>/` (`make_temp_dir`), removed when the job ends (`remove_temp_dir`), so a job
killed mid-OCR leaves nothing in the system's temporary directory. The job's worker processes get it as their
temporary directory when they start; the main process, only around decoding it runs itself (`temp_files_in`).

A job killed with SIGKILL also leaves the named semaphores multiprocessing made for its worker pool's queues
(`/dev/shm/sem.mp-*` or `sem.loky-*`, five a pool): with the fork-server and spawn start methods the names stay
until the process or its resource tracker unlinks them, and SIGKILL to the process group stops both. A job's start
removes what dead predecessors left (`remove_leftovers`): their temporary directories (`remove_dead_temp_dirs`)
and the semaphores no process maps any more (`remove_orphan_semaphores`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_DIR_NAME = "tmp"  # under the data dir: the jobs' temporary directories
SEMAPHORE_DIR = Path("/dev/shm")  # where glibc's sem_open keeps a named semaphore "/name", as "sem.name"
# multiprocessing's names: "/mp-" and a random suffix, or "/loky-<pid>-" once joblib is imported (sentence-
# transformers imports it), which renames every multiprocessing semaphore of the process
SEMAPHORE_GLOBS = ("sem.mp-*", "sem.loky-*")
# glibc maps a new semaphore in its creator before its name exists (see _mapped), so a live one is never unmapped;
# the minute guards the moment between making and mapping, should a C library order them the other way.
SEMAPHORE_MIN_AGE_S = 60.0
# Past this age a semaphore is removed although a process whose memory maps cannot be read might map it.
UNREADABLE_MAX_AGE_S = 3600.0
# Another host's job (a data dir on a network share) cannot be asked whether it is alive: its directory is
# removed once it is this old.
OTHER_HOST_AGE_S = 24 * 3600.0

# One mapping of a file, shared (a semaphore is mapped MAP_SHARED): its device (hex major:minor) and inode.
_SHARED_MAPPING = re.compile(rb"^\S+ \S{3}s \S+ ([0-9a-f]+):([0-9a-f]+) (\d+)", re.MULTILINE)
_UIDS = re.compile(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", re.MULTILINE)


# --- the job's temporary directory ----------------------------------------------------------------------------


def host_name() -> str:
    """This host's name as a directory name's first part (the part before the pid)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def make_temp_dir(root: Path, prefix: str = "") -> Path:
    """A new directory for one job's temporary files under `root`, named after this host and process (see
    remove_dead_temp_dirs) and made private to this user."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{host_name()}-{os.getpid()}-", dir=root))


def remove_temp_dir(directory: Path) -> None:
    """Remove a job's temporary directory and whatever is left in it; one already gone is no error."""
    shutil.rmtree(directory, ignore_errors=True)


def use_temp_dir(directory: str) -> None:
    """Make `directory` this process's temporary directory, for Python (tempfile: pytesseract, pdf2image) and for
    the programs it runs (TMPDIR: tesseract, poppler). For a worker process, which decodes for one job only."""
    tempfile.tempdir = directory
    os.environ["TMPDIR"] = directory


PROCESS_DIR_PREFIX = "mmrag-"  # a job process's own directory in the system temp (use_process_temp_dir)
MAX_SOCKET_PATH = 108  # bytes in a Unix socket's path, its terminating NUL included (sockaddr_un.sun_path)
_system_temp: Path | None = None  # the system temp, as it was before use_process_temp_dir


def system_temp() -> Path:
    return _system_temp or Path(tempfile.gettempdir())


def use_process_temp_dir() -> Path:
    """For a process that runs one job and exits (`mmrag index`): every temporary file of the process and of the
    libraries and programs it runs (torch's at import, multiprocessing's fork-server socket directory) in a
    directory of its own, `mmrag-<host>-<pid>-…` in the system temp, instead of loose there. The system temp and not
    the data dir: a socket's path must stay under 108 bytes. Call it before importing those libraries. The
    directory goes when the process exits, after multiprocessing's own clean-up; if the process is killed, the next
    job's start removes it (remove_leftovers). The workers' decoding uses the job's directory under the data dir."""
    global _system_temp
    from multiprocessing import util

    _system_temp = system_temp()
    name = f"{PROCESS_DIR_PREFIX}{host_name()}-{os.getpid()}-xxxxxxxx"
    if len(str(_system_temp / name / "pymp-xxxxxxxx" / "listener-xxxxxxxx")) >= MAX_SOCKET_PATH:
        log.debug("the system temp %s is too deep for a fork server's socket one level down: left as it is",
                  _system_temp)
        return _system_temp
    directory = make_temp_dir(_system_temp, PROCESS_DIR_PREFIX)
    use_temp_dir(str(directory))
    # Finalizers run in descending priority at exit: the fork server's directory (-100) is removed before this.
    util.Finalize(None, remove_temp_dir, args=(directory,), exitpriority=-200)
    return directory


# tempfile.tempdir is the process's: one lock for the main process's decoding in any job (see temp_files_in).
_main_process_lock = threading.Lock()


@contextmanager
def temp_files_in(directory: Path) -> Iterator[None]:
    """Python's temporary files in `directory` while the block runs: for decoding that a job runs in its main
    process (workers=0). The process's setting is restored after; the lock keeps two jobs of one process from
    writing into each other's directory (which the other removes when it ends), at the cost of decoding one file
    at a time between them. TMPDIR is left alone: changing the environment of a process with other threads is not
    safe, and the programs run here (tesseract, poppler) are handed their files' paths.

    The setting is the process's: a temporary file another thread makes meanwhile lands in the job's directory
    too, and goes with it at the job's end."""
    with _main_process_lock:
        saved = tempfile.tempdir
        tempfile.tempdir = str(directory)
        try:
            yield
        finally:
            tempfile.tempdir = saved


def remove_dead_temp_dirs(root: Path, other_host_age_s: float = OTHER_HOST_AGE_S, prefix: str = "") -> int:
    """Remove the job directories under `root` (named `prefix` first) whose process is gone: this host's whose pid
    is not alive, another host's once `other_host_age_s` old (see make_temp_dir for their names); returns how many."""
    if not root.is_dir():
        return 0
    here, removed = host_name(), 0
    for directory in root.iterdir():
        if not directory.name.startswith(prefix):
            continue
        parts = directory.name[len(prefix):].rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit() or directory.is_symlink() or not directory.is_dir():
            continue  # not a job's directory
        host, pid = parts[0], int(parts[1])
        if host == here:
            dead = not pid_alive(pid)
        else:
            try:
                dead = time.time() - directory.stat().st_mtime >= other_host_age_s
            except FileNotFoundError:  # removed meanwhile (another job starting)
                continue
        if dead:
            remove_temp_dir(directory)
            removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# --- multiprocessing's semaphores ------------------------------------------------------------------------------


def remove_orphan_semaphores(
    min_age_s: float = SEMAPHORE_MIN_AGE_S,
    unreadable_max_age_s: float = UNREADABLE_MAX_AGE_S,
    directory: Path = SEMAPHORE_DIR,
) -> int:
    """Remove multiprocessing's named semaphores (this user's, `min_age_s` old) that no process maps; returns
    how many. A process whose maps cannot be read and that runs as this user might map one: while there is such
    a process, only semaphores `unreadable_max_age_s` old are removed. A process of another user cannot have
    opened one (they are made 0600), and the processes of a pool that made one run as its maker.

    Processes in another PID namespace sharing this /dev/shm (containers with `ipc: host`) are invisible here:
    their semaphores look unmapped once `min_age_s` old. Only a process opening a semaphore needs its name: a
    pool's worker as it starts, which for a job's pool is in its first seconds, so such a pool loses nothing."""
    if not directory.is_dir():
        return 0
    now, me = time.time(), os.geteuid()
    candidates: dict[tuple[int, int, int], tuple[Path, float]] = {}  # (major, minor, inode) -> (path, age)
    for path in (path for pattern in SEMAPHORE_GLOBS for path in directory.glob(pattern)):
        try:
            info = path.lstat()
        except FileNotFoundError:  # unlinked meanwhile (its pool closed)
            continue
        age = now - info.st_mtime
        if stat.S_ISREG(info.st_mode) and info.st_uid == me and age >= min_age_s:
            candidates[(os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)] = (path, age)
    if not candidates:
        return 0  # no reading of every process's maps
    mapped, unreadable = _mapped(set(candidates), me)
    removed = 0
    for key, (path, age) in candidates.items():
        if key in mapped or (unreadable and age < unreadable_max_age_s):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def _mapped(files: set[tuple[int, int, int]], uid: int) -> tuple[set[tuple[int, int, int]], bool]:
    """Which of `files` (major, minor, inode) some process maps, and whether a process of `uid` could not be read.

    Matched by device and inode, not by path: glibc makes a semaphore under a temporary name, maps it and only
    then links its name, so its creator's maps show the temporary name, deleted."""
    mapped: set[tuple[int, int, int]] = set()
    unreadable = False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            maps = (proc / "maps").read_bytes()
        except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
            continue
        except OSError:  # PermissionError: another user's, or not dumpable
            unreadable = unreadable or _runs_as(proc, uid)
            continue
        for major, minor, inode in _SHARED_MAPPING.findall(maps):
            key = (int(major, 16), int(minor, 16), int(inode))
            if key in files:
                mapped.add(key)
    return mapped, unreadable


def _runs_as(proc: Path, uid: int) -> bool:
    """Whether the process has `uid` among its user ids (real, effective, saved, file system); True when its
    status cannot be read either."""
    try:
        found = _UIDS.search((proc / "status").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return found is None or str(uid) in found.groups()


# --- at a job's start ----------------------------------------------------------------------------------------


def remove_leftovers(temp_root: Path) -> None:
    """Remove what killed jobs left: their temporary directories under `temp_root` and the semaphores of their
    worker pools; logs how many."""
    for root, prefix in ((temp_root, ""), (system_temp(), PROCESS_DIR_PREFIX)):
        directories = remove_dead_temp_dirs(root, prefix=prefix)
        if directories:
            log.info("removed %d temporary directories of jobs no longer running under %s", directories, root)
    semaphores = remove_orphan_semaphores()
    if semaphores:
        log.info("removed %d semaphores in %s that no process uses (left by killed worker pools)",
                 semaphores, SEMAPHORE_DIR)
