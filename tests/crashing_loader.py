"""Worker entry points that misbehave for some files, injected as the job's load_file (JobStages(load_file=...)),
which they call otherwise.

Their own small module, so the worker that imports it (by name, as the pool pickles it) stays as light as the
real one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmrag.errors import CorruptFileError
from mmrag.ingest.results import LoadedFile
from mmrag.ingest.worker import load_file


def load_or_crash(path: str, sha256: str, *args: Any, **kwargs: Any) -> LoadedFile:
    """Files named crash*: the worker process kills itself, as a segfaulting decoder would."""
    if Path(path).name.startswith("crash"):
        os._exit(139)  # no exception, no cleanup: the process is simply gone, as after SIGSEGV
    return load_file(path, sha256, *args, **kwargs)


def load_or_fail_after_first_range(path: str, sha256: str, *args: Any, **kwargs: Any) -> LoadedFile:
    """Files named late-fail*: every page range but the first fails, as a PDF broken half way through would."""
    pages = kwargs.get("pages")
    if Path(path).name.startswith("late-fail") and pages is not None and pages[0] > 1:
        raise CorruptFileError(f"{path}: page {pages[0]}: cannot read page")
    return load_file(path, sha256, *args, **kwargs)
