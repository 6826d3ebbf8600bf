"""Where model weights come from: a checkpoint found on this machine (a local directory or the HF cache), never
downloaded. Shared by the embedders and the answerers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmrag.errors import ModelUnavailableError

LOCAL_DIR_PREFIX = "local-dir:"


@dataclass(frozen=True)
class LocatedCheckpoint:
    """A checkpoint found on this machine, without touching the network."""

    path: Path
    revision: str  # HF commit hash for a cache snapshot, "local" for a plain directory
    is_local_dir: bool


def locate_checkpoint(model: str) -> LocatedCheckpoint:
    """Find `model` (a local directory, `local-dir:/path`, or an HF id) on disk; never downloads.

    Raises ModelUnavailableError naming `model` when it is neither an existing directory nor in the HF cache.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    explicit_dir = model.startswith(LOCAL_DIR_PREFIX)
    candidate = Path(model.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
    if candidate.is_dir():
        return LocatedCheckpoint(path=candidate.resolve(), revision="local", is_local_dir=True)
    if explicit_dir or model.startswith(("/", "./", "../", "~")):
        raise ModelUnavailableError(model, f"directory {str(candidate)!r} does not exist")
    try:
        validate_repo_id(model)
    except HFValidationError as error:
        raise ModelUnavailableError(model, f"not an existing directory and not a valid Hugging Face id ({error})")
    try:
        # local_files_only: serving must never block on (or silently depend on) the network.
        snapshot = Path(snapshot_download(model, local_files_only=True))
    except IncompleteSnapshotError as error:
        # Some files of the repository's listing are not here: a cache filled by from_pretrained (the files one
        # library reads), or `mmrag models pull`, which skips other frameworks' copies (ONNX, TensorFlow, ...). The
        # loaders decide whether what is here is enough: they refuse a checkpoint that lacks weights they need.
        snapshot = Path(error.snapshot_path)
        if not snapshot.is_dir():
            raise ModelUnavailableError(model, "it is not in the local Hugging Face cache") from None
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(model, "it is not in the local Hugging Face cache") from None
    return LocatedCheckpoint(path=snapshot, revision=snapshot.name, is_local_dir=False)
