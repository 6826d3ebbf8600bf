"""Runtime plumbing the embedders share: device choice, offline checkpoint lookup, and OOM batch backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mmrag.errors import ConfigError, ModelUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

LOCAL_DIR_PREFIX = "local-dir:"


def resolve_device(device: str = "auto") -> str:
    """The torch device to run on: `auto` is CUDA when torch sees a GPU, else CPU; a named CUDA device must exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA device (torch {torch.__version__})")
    return device


def is_cuda_device(device: str) -> bool:
    return device.startswith("cuda")


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
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
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
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(model, "it is not in the local Hugging Face cache") from None
    return LocatedCheckpoint(path=snapshot, revision=snapshot.name, is_local_dir=False)


def _release_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def encode_in_batches(
    items: Sequence[T],
    batch_size: int,
    encode_batch: Callable[[Sequence[T]], Sequence[R]],
) -> tuple[list[R], int]:
    """Run `encode_batch` over `items` in order, halving the batch on CUDA OOM and retrying that batch.

    Returns one output per item and the batch size that fitted, so callers can start there next time.
    A batch of one that still runs out of memory re-raises the OOM error.
    """
    import torch

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    outputs: list[R] = []
    start = 0
    while start < len(items):
        batch = items[start : start + batch_size]
        try:
            batch_outputs = encode_batch(batch)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            _release_cuda_cache()
            batch_size //= 2
            log.warning("CUDA out of memory; retrying with batch size %d", batch_size)
            continue
        if len(batch_outputs) != len(batch):
            raise RuntimeError(f"encoder returned {len(batch_outputs)} outputs for a batch of {len(batch)}")
        outputs.extend(batch_outputs)
        start += len(batch)
    return outputs, batch_size
