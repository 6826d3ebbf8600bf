"""Model inputs from a worker process to the main process through shared memory instead of the result pipe.

A worker task's results carry the pixels of its pages: 150 KB per photo for CLIP, about 2 MB per page for a
Qwen2-VL-based ColPali model. Through the executor's result pipe each byte is copied about four times with the main
process's GIL held (64 KB pipe reads, joining them, unpickling), which costs the main process more CPU per photo
than everything else it does for it, and the main process is what bounds a bulk job at GPU speed. Here the worker
writes all of a task's arrays into one file in /dev/shm (tmpfs: memory, not disk) and only their offsets cross the
pipe; the main process maps the file, unlinks it at once and hands out views into the mapping. The memory is freed
when the last array of the task is (the embed thread has used the batch).

Every failure to share (no /dev/shm, tmpfs full: a container's default /dev/shm is 64 MB) falls back to the pipe
for that task; nothing is lost either way. Files are named `<prefix>-<worker pid>-<n>`, the prefix naming the main
process, so a job removes what its dead workers left (`remove_segments`), and a later job what a killed one left
(`remove_orphans`, an hour on).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import mmap
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmrag.ingest.cleanup import pid_alive
from mmrag.ingest.results import LoadedFile, StoredPage

SHM_DIR = Path("/dev/shm")
NAME_STEM = "mmrag-inputs"
# Below this many bytes in a task, the pipe is as cheap as a file in /dev/shm (create, allocate, map, unlink).
MIN_SHARED_BYTES = 256 * 1024
ORPHAN_AGE_S = 3600.0

_counter = itertools.count()


@dataclass(frozen=True)
class SharedArray:
    """Where one array of a task's results lies in the task's shared file."""

    offset: int
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class SharedResults:
    """A worker task's results with their arrays replaced by `SharedArray`s, and the file holding them (None: the
    arrays are in `results` themselves, sent through the pipe)."""

    results: list[Any]
    segment: str | None = None
    size: int = 0
    unshared: str | None = None  # why arrays worth sharing went through the pipe instead (e.g. /dev/shm is full)


def new_prefix() -> str:
    """A name prefix for one pool's files: the main process's pid (see remove_orphans) and a random token."""
    return f"{NAME_STEM}-{os.getpid()}-{secrets.token_hex(4)}"


def available() -> bool:
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK | os.X_OK)


# --- worker side --------------------------------------------------------------------------------------------


def export(results: list[Any], prefix: str, min_bytes: int = MIN_SHARED_BYTES) -> SharedResults:
    """Move every numpy array of the results' page inputs into one shared file (worker side), if they come to
    `min_bytes` or more."""
    arrays: list[tuple[int, np.ndarray]] = []  # (offset, array), in file order
    end = [0]  # where the next array goes; at the end, the file's size
    placed = [_replace_arrays(result, arrays, end) for result in results]
    size = end[0]
    if size == 0 or size < min_bytes:
        return SharedResults(results)
    name = f"{prefix}-{os.getpid()}-{next(_counter)}"
    path = SHM_DIR / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return SharedResults(results, unshared=f"cannot create {path}: {exc.strerror}")
    try:
        # Allocated now, so a full tmpfs is an error here and not a SIGBUS while writing through the mapping.
        os.posix_fallocate(fd, 0, size)
        with mmap.mmap(fd, size) as mapped:
            for offset, array in arrays:
                mapped[offset : offset + array.nbytes] = memoryview(np.ascontiguousarray(array)).cast("B")
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        return SharedResults(results, unshared=f"cannot allocate {size} bytes in {SHM_DIR}: {exc.strerror}")
    os.close(fd)
    return SharedResults(placed, name, size)


def _aligned(nbytes: int) -> int:
    return (nbytes + 63) // 64 * 64


def _replace_arrays(value: Any, arrays: list[tuple[int, np.ndarray]], end: list[int]) -> Any:
    """`value` with each array of its page inputs replaced by a SharedArray at offset `end[0]` (then moved past
    it); appends (offset, array) to `arrays`, in file order."""
    if isinstance(value, LoadedFile):
        return dataclasses.replace(value, pages=[_replace_arrays(page, arrays, end) for page in value.pages])
    if isinstance(value, StoredPage):
        if not value.inputs:
            return value
        return dataclasses.replace(value, inputs=tuple(_replace_arrays(v, arrays, end) for v in value.inputs))
    if isinstance(value, dict):  # a processor's tensors by name (ProcessorInputs: TensorData values)
        return {key: _replace_arrays(item, arrays, end) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        offset = end[0]
        arrays.append((offset, value))
        end[0] += _aligned(value.nbytes)
        return SharedArray(offset, tuple(value.shape), value.dtype.str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # An input made of an array and its metadata (QwenPage, TensorData): its array fields, one level deep.
        changes = {
            f.name: _replace_arrays(getattr(value, f.name), arrays, end)
            for f in dataclasses.fields(value)
            if isinstance(getattr(value, f.name), np.ndarray)
        }
        return dataclasses.replace(value, **changes) if changes else value
    return value  # None, anything else: through the pipe


# --- main-process side ----------------------------------------------------------------------------------------


def receive(shared: SharedResults) -> list[Any]:
    """The results with their arrays back (main-process side); the shared file is gone when this returns."""
    if shared.segment is None:
        return shared.results
    path = SHM_DIR / shared.segment
    fd = os.open(path, os.O_RDONLY)
    try:
        # Private (copy-on-write): the arrays are writable, as they would be from the pipe, and a write stays here.
        mapped = mmap.mmap(fd, shared.size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)  # the mapping outlives the name; the memory goes with the last array using it
    return [_restore_arrays(result, mapped) for result in shared.results]


def _restore_arrays(value: Any, mapped: mmap.mmap) -> Any:
    """`value` with its SharedArrays replaced by views into `mapped`. The results were unpickled just now and are
    this process's alone, so pages get their inputs in place rather than through dataclasses.replace, which would
    copy two objects per photo."""
    if isinstance(value, LoadedFile):
        for page in value.pages:
            _restore_arrays(page, mapped)
        return value
    if isinstance(value, StoredPage):
        if value.inputs:
            object.__setattr__(value, "inputs", tuple(_restore_arrays(v, mapped) for v in value.inputs))
        return value
    if isinstance(value, SharedArray):
        # A view, not a copy: copying a photo's pixels into fresh heap memory costs more than the pipe (page faults);
        # the batch's collation reads the pixels once, off the GIL.
        count = math.prod(value.shape)
        return np.frombuffer(mapped, dtype=value.dtype, count=count, offset=value.offset).reshape(value.shape)
    if isinstance(value, dict):
        return {key: _restore_arrays(item, mapped) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: _restore_arrays(getattr(value, f.name), mapped)
            for f in dataclasses.fields(value)
            if isinstance(getattr(value, f.name), SharedArray)
        }
        return dataclasses.replace(value, **changes) if changes else value
    return value


def remove_segments(prefix: str) -> int:
    """Remove the files of `prefix` still there (tasks whose results never came back: a worker died, a job
    stopped); returns how many."""
    removed = 0
    for path in SHM_DIR.glob(f"{prefix}-*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def remove_orphans(min_age_s: float = ORPHAN_AGE_S) -> int:
    """Remove the files of main processes that are gone (killed mid-job), once they are `min_age_s` old; returns
    how many. The age guards a /dev/shm shared across PID namespaces (containers with `ipc: host`), where a live
    job elsewhere can look dead from here: its files live seconds, not an hour."""
    removed = 0
    if not SHM_DIR.is_dir():
        return 0
    now = time.time()
    for path in SHM_DIR.glob(f"{NAME_STEM}-*"):
        pid = path.name[len(NAME_STEM) + 1 :].split("-", 1)[0]
        try:
            old = now - path.stat().st_mtime >= min_age_s
        except FileNotFoundError:  # received (or removed) meanwhile
            continue
        if old and pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed

