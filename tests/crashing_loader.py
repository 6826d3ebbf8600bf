"""A worker entry point that kills its own process for files named crash*: what a segfaulting decoder does.

Its own small module, so the spawned worker that imports it stays as light as the real one.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmrag.config import IngestSettings
from mmrag.ingest.prepare import InputSpec
from mmrag.ingest.worker import LoadedFile, load_file


def load_or_crash(
    path: str, sha256: str, settings: IngestSettings, data_dir: str, inputs: tuple[InputSpec, ...] = ()
) -> LoadedFile:
    if Path(path).name.startswith("crash"):
        os._exit(139)  # no exception, no cleanup: the process is simply gone, as after SIGSEGV
    return load_file(path, sha256, settings, data_dir, inputs)
