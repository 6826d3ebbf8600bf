"""Offline checkpoint lookup and the OOM batch backoff."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from mmrag.checkpoints import locate_checkpoint
from mmrag.embedders.runtime import encode_in_batches
from mmrag.errors import ModelUnavailableError


class OomAbove:
    """An encoder that runs out of CUDA memory for batches larger than `limit`, like a GPU would."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.batch_sizes: list[int] = []

    def __call__(self, batch: Sequence[int]) -> list[int]:
        self.batch_sizes.append(len(batch))
        if len(batch) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory for a batch of {len(batch)}")
        return [item * 10 for item in batch]


def test_backoff_halves_until_the_batch_fits_and_keeps_order() -> None:
    encoder = OomAbove(limit=3)
    outputs, fitted = encode_in_batches(list(range(11)), 8, encoder)
    assert outputs == [item * 10 for item in range(11)]
    assert fitted == 2
    assert encoder.batch_sizes[:3] == [8, 4, 2]  # halves on each OOM, then stays at the size that fitted
    assert set(encoder.batch_sizes[2:]) <= {2, 1}


def test_backoff_gives_up_at_batch_size_one() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        encode_in_batches([1, 2, 3], 4, OomAbove(limit=0))


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def broken(batch: Sequence[int]) -> list[int]:
        calls.append(len(batch))
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        encode_in_batches([1, 2, 3, 4], 4, broken)
    assert calls == [4]


def test_no_items_means_no_calls() -> None:
    encoder = OomAbove(limit=3)
    assert encode_in_batches([], 8, encoder) == ([], 8)
    assert encoder.batch_sizes == []


def test_local_directory_is_found_without_the_hub(tmp_path: Path) -> None:
    for spec in (str(tmp_path), f"local-dir:{tmp_path}"):
        found = locate_checkpoint(spec)
        assert (found.path, found.revision, found.is_local_dir) == (tmp_path.resolve(), "local", True)


@pytest.mark.parametrize("spec", ["/no/such/model-dir", "local-dir:/no/such/model-dir", "./no-such-dir"])
def test_missing_directory_names_the_model(spec: str) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist") as caught:
        locate_checkpoint(spec)
    assert caught.value.model == spec
    assert spec in str(caught.value)


def test_hub_id_not_in_cache_names_the_model(hf_cache: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="not in the local Hugging Face cache") as caught:
        locate_checkpoint("vidore/colqwen2-v1.0")
    assert "'vidore/colqwen2-v1.0'" in str(caught.value)


def test_hub_id_in_cache_resolves_to_its_snapshot(hf_cache: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = hf_cache / "models--mmrag-test--cached" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (hf_cache / "models--mmrag-test--cached" / "refs").mkdir()
    (hf_cache / "models--mmrag-test--cached" / "refs" / "main").write_text(commit)
    found = locate_checkpoint("mmrag-test/cached")
    assert (found.path, found.revision, found.is_local_dir) == (snapshot, commit, False)


def test_neither_directory_nor_hub_id_is_refused() -> None:
    with pytest.raises(ModelUnavailableError, match="not a valid Hugging Face id"):
        locate_checkpoint("a/b/c")


class Staged:
    """A stage that records which thread staged which batch, and how many batches were staged ahead of use."""

    def __init__(self) -> None:
        self.staged: list[tuple[int, ...]] = []
        self.threads: set[str] = set()

    def __call__(self, batch: Sequence[int]) -> tuple[int, ...]:
        import threading

        self.threads.add(threading.current_thread().name)
        self.staged.append(tuple(batch))
        return tuple(batch)


def test_stage_runs_the_next_batch_on_a_helper_thread_and_keeps_order() -> None:
    stage = Staged()
    seen: list[tuple[int, ...]] = []

    def encode(staged: tuple[int, ...]) -> list[int]:
        seen.append(staged)
        return [item * 10 for item in staged]

    outputs, fitted = encode_in_batches(list(range(10)), 4, encode, stage=stage)
    assert outputs == [item * 10 for item in range(10)]
    assert fitted == 4
    assert seen == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert sorted(stage.staged) == seen  # every batch staged exactly once
    assert any(name.startswith("mmrag-stage") for name in stage.threads)  # the batches after the first, ahead


def test_stage_with_oom_restages_at_the_smaller_size() -> None:
    stage = Staged()
    encoder = OomAbove(limit=2)
    outputs, fitted = encode_in_batches(list(range(9)), 4, lambda staged: encoder(list(staged)), stage=stage)
    assert outputs == [item * 10 for item in range(9)]
    assert fitted == 2
    # The batch staged ahead at size 4 was dropped when the OOM halved the size; nothing was encoded twice.
    assert encoder.batch_sizes[:3] == [4, 2, 2]
    assert sum(size for size in encoder.batch_sizes if size <= 2) == 9


def test_stage_without_ahead_runs_in_line() -> None:
    stage = Staged()
    outputs, _ = encode_in_batches(list(range(10)), 4, lambda staged: [item * 10 for item in staged], stage=stage,
                                   ahead=False)
    assert outputs == [item * 10 for item in range(10)]
    assert stage.staged == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert not any(name.startswith("mmrag-stage") for name in stage.threads)
