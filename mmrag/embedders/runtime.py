"""The embedders' batch plumbing: encoding in batches that halve on CUDA out-of-memory.

Device and dtype choice is mmrag.device's; checkpoint lookup mmrag.checkpoints'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from mmrag.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _release_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def encode_in_batches(
    items: Sequence[T],
    batch_size: int,
    encode_batch: Callable[[Any], Sequence[R]],
    *,
    stage: Callable[[Sequence[T]], Any] | None = None,
    ahead: bool = True,
) -> tuple[list[R], int]:
    """Run `encode_batch` over `items` in order, halving the batch on CUDA OOM and retrying that batch.

    With `stage`, `encode_batch` receives `stage(batch)` instead of the batch; with `ahead` too (for a GPU), the
    next batch is staged on a helper thread while the current one runs: collating, the pinned host copy and the
    transfer to the GPU overlap the forward instead of leaving the GPU idle between batches (torch releases the GIL
    for both). On a CPU the forward already uses every core, so callers stage in line (`ahead=False`).

    Returns one output per item and the batch size that fitted, so callers can start there next time.
    A batch of one that still runs out of memory re-raises the OOM error.
    """
    import torch

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    outputs: list[R] = []
    start = 0
    overlap = stage is not None and ahead and len(items) > batch_size
    helper = ThreadPoolExecutor(1, thread_name_prefix="mmrag-stage") if overlap else None
    ahead: tuple[int, int, Future[Any]] | None = None  # (start, size) of the batch being staged, and its result

    def staged(begin: int, size: int) -> Any:
        nonlocal ahead
        if stage is None:
            return items[begin : begin + size]
        if ahead is not None:
            (ahead_begin, ahead_size, future), ahead = ahead, None
            value = future.result()
            if (ahead_begin, ahead_size) == (begin, size):
                return value
            del value  # staged with a batch size that no longer fits
        return stage(items[begin : begin + size])

    try:
        while start < len(items):
            size = min(batch_size, len(items) - start)
            try:
                value = staged(start, size)
                following = start + size
                if helper is not None and following < len(items):
                    next_size = min(batch_size, len(items) - following)
                    ahead = (following, next_size, helper.submit(stage, items[following : following + next_size]))
                batch_outputs = encode_batch(value)
                del value
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                value = None
                if ahead is not None:
                    ahead[2].exception()  # let it finish (it may hold device memory), then drop it
                    ahead = None
                _release_cuda_cache()
                batch_size //= 2
                log.warning("CUDA out of memory; retrying with batch size %d", batch_size)
                continue
            if len(batch_outputs) != size:
                raise RuntimeError(f"encoder returned {len(batch_outputs)} outputs for a batch of {size}")
            outputs.extend(batch_outputs)
            start += size
    finally:
        if helper is not None:
            helper.shutdown(wait=True, cancel_futures=True)
    return outputs, batch_size
