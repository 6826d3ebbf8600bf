"""The content hash that names a document's bytes (sha256): the one place that picks the algorithm."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

ALGORITHM = "sha256"


def new_digest() -> Any:
    """A streaming hash (update(bytes), hexdigest()) for bytes read in chunks, as they arrive."""
    return hashlib.new(ALGORITHM)


def sha256_of(path: str | Path) -> str:
    """The hex digest of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, ALGORITHM).hexdigest()
