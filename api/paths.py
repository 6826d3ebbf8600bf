"""Server-side paths for POST /v1/jobs: a client names an allowlisted root and a path inside it, nothing else."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from api.errors import BadRequest, Forbidden
from mmrag.errors import NotFoundError

_DRIVE = re.compile(r"^[A-Za-z]:")


def resolve_job_path(roots: Mapping[str, Path], root: str, relative: str) -> tuple[Path, Path]:
    """(the file or folder to index, its root), both resolved; the path must stay inside the root, symlinks followed.

    Absolute paths, `..` and backslashes are refused before the file system is touched at all.
    """
    if not roots:
        raise Forbidden("server-side jobs are off: the server has no MMRAG_API__JOB_ROOTS")
    if root not in roots:
        raise BadRequest(f"unknown job root {root!r}; known: {', '.join(sorted(roots))}")
    if relative.startswith("/") or "\\" in relative or _DRIVE.match(relative):
        raise BadRequest(f"path {relative!r} must be relative to root {root!r}, with / between its parts")
    parts = PurePosixPath(relative).parts
    if ".." in parts:
        raise BadRequest(f"path {relative!r} must not contain '..'")
    base = Path(roots[root]).resolve()
    try:
        target = base.joinpath(*parts).resolve()  # follows symlinks, so a link out of the root is caught below
        exists = target.exists()
    except OSError as exc:  # a name too long, a symlink loop
        raise BadRequest(f"path {relative!r} cannot be used: {exc.strerror or exc}") from None
    if not target.is_relative_to(base):
        raise Forbidden(f"path {relative!r} leads outside root {root!r}")
    if not exists:
        raise NotFoundError(f"path {relative!r} does not exist in root {root!r}")
    return target, base
