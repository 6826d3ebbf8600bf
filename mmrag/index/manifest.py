"""Plumbing shared by the index backends: manifests, page-id validation and crash-safe file writes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mmrag.errors import IndexError_, ManifestMismatchError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class Manifest:
    """Identity of an index: vectors from `model`, `dim` wide, compared by `metric`; `count` live entries.

    `kind` names the index layout ("flat", "ivf", "hnsw", "chroma", "multivector", "bm25") so a file written by one
    layout is never read as another.
    """

    model: str
    dim: int
    metric: str
    count: int
    kind: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        if not isinstance(data, dict):
            raise IndexError_(f"index manifest must be a JSON object, got {type(data).__name__}")
        try:
            return cls(
                model=str(data["model"]),
                dim=int(data["dim"]),
                metric=str(data["metric"]),
                count=int(data["count"]),
                kind=str(data["kind"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexError_(f"index manifest is malformed ({exc!r}): {data!r}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise IndexError_(f"index manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def check(self, expected_model: str, expected_dim: int, expected_metric: str, *, where: object = "") -> None:
        """Raise ManifestMismatchError unless the stored vectors are comparable with what the caller will send."""
        prefix = f"{where}: " if where else ""
        if self.model != expected_model:
            raise ManifestMismatchError(
                f"{prefix}index was built with model {self.model!r}, but model {expected_model!r} is configured",
                field="model",
            )
        if self.dim != expected_dim:
            raise ManifestMismatchError(
                f"{prefix}index holds dim {self.dim} vectors, but dim {expected_dim} is expected; rebuild the index",
                field="dim",
            )
        if self.metric != expected_metric:
            raise ManifestMismatchError(
                f"{prefix}index uses metric {self.metric!r}, but metric {expected_metric!r} is expected; "
                f"rebuild the index"
            )

    def check_kind(self, expected_kind: str, *, where: object = "") -> None:
        if self.kind != expected_kind:
            prefix = f"{where}: " if where else ""
            raise ManifestMismatchError(
                f"{prefix}index is of kind {self.kind!r}, but kind {expected_kind!r} is configured; rebuild the index"
            )

    def check_count(self, actual_count: int, *, where: object = "") -> None:
        if self.count != actual_count:
            prefix = f"{where}: " if where else ""
            raise ManifestMismatchError(
                f"{prefix}manifest records count {self.count}, but the index holds {actual_count} vectors; "
                f"it was modified without a flush (crash?) or corrupted: rebuild it from SQL"
            )


def as_page_ids(ids: object) -> np.ndarray:
    """Page ids as a flat int64 array; SQL ids are >= 0 and faiss reserves -1 for 'no result'."""
    array = np.asarray(ids)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"page ids must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False).reshape(-1)
    if (array < 0).any():
        raise ValueError(f"page ids must be >= 0, got {int(array.min())}")
    return array


def checked_batch(ids: object, vectors: object, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate one add(): int64 ids and finite (n, dim) float32 vectors, one row per id (a later vector wins)."""
    ids = as_page_ids(ids)
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {vectors.shape}")
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    keep = last_occurrences(ids)
    if len(keep) != len(ids):
        ids, vectors = ids[keep], np.ascontiguousarray(vectors[keep])
    return ids, vectors


def last_occurrences(ids: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each id, in input order: within one add, a later vector wins."""
    _, first_in_reversed = np.unique(ids[::-1], return_index=True)
    return np.sort(len(ids) - 1 - first_in_reversed)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink inside `directory` durable (POSIX needs the directory itself fsynced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; its renames are durable enough for us
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (tmpfs variants, network mounts) refuse fsync on directories
    finally:
        os.close(fd)


def identity_of(stat: os.stat_result, *, content: bool = True) -> tuple[int, ...]:
    """A file's device and inode, and with `content` its size and mtime: a file replaced or rewritten differs. How
    a store's reader sees that its writer has written (catch_up), and a job that nothing has since (agreed.json)."""
    if content:
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return (stat.st_dev, stat.st_ino)


def file_identity(path: Path) -> tuple[int, ...] | None:
    """identity_of the file at `path`, with its content; None when there is none."""
    try:
        return identity_of(os.stat(path))
    except FileNotFoundError:
        return None


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace `path` with what `write(file)` writes, so that after a crash it holds the old or the new content.

    The temporary file lives in the same directory (a rename is only atomic within one filesystem) and is named
    `.<name>.<random>.tmp`, which `remove_stale_tmp_files` recognises. Streaming through `write` lets large
    indexes be saved without a second in-memory copy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        # mkstemp creates 0600; keep the mode of the file we replace (or a readable 0644) so that a service
        # running as another user can still read the index.
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "w+b") as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Replace `path` with `data`: write a temporary file in the same directory, fsync, rename, fsync the directory."""

    def write(file: BinaryIO) -> None:
        file.write(data)

    atomic_write(path, write)


def remove_stale_tmp_files(path: Path) -> int:
    """Delete temporary files an interrupted `atomic_write_bytes(path, ...)` left behind; returns how many.

    Indexes have a single writer, so a temporary file seen when opening belongs to a writer that died.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    removed = 0
    for stale in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed += 1
            log.warning("removed %s, left by an interrupted write", stale)
    return removed
