"""The fused MaxSim kernel (run by Triton's CPU interpreter here) and the torch path, against a numpy reference,
alone and behind ShardedMultiVectorStore (device-resident rows, rebuilt after every change)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrag.errors import ConfigError
from mmrag.index import maxsim
from mmrag.index.maxsim import maxsim_torch, maxsim_triton, pack_queries
from mmrag.index.multivector import ShardedMultiVectorStore

CPU = torch.device("cpu")


@pytest.fixture
def interpreted() -> None:
    """The kernel on CPU tensors, in Triton's interpreter: tests/conftest.py turns it on when there is no GPU."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("a GPU is present: the kernel is checked on it by python -m bench gpu, not in the interpreter")


def packed_pages(lengths: list[int], dim: int, *, gap: int = 0, seed: int = 0):
    """Pages back to back in one fp16 matrix, with `gap` unused rows before each (as tombstoned rows leave)."""
    rng = np.random.default_rng(seed)
    pages = [rng.standard_normal((n, dim)).astype(np.float16) for n in lengths]
    blocks, starts, at = [], [], 0
    for page in pages:
        blocks.append(rng.standard_normal((gap, dim)).astype(np.float16))
        at += gap
        starts.append(at)
        blocks.append(page)
        at += len(page)
    rows = torch.from_numpy(np.concatenate(blocks))
    return pages, rows, torch.tensor(starts, dtype=torch.int64), torch.tensor(lengths, dtype=torch.int32)


def reference(pages: list[np.ndarray], queries: list[np.ndarray]) -> np.ndarray:
    """float64 MaxSim of the fp16-rounded queries against the fp16 pages: what both paths compute."""
    return np.array(
        [
            [(q.astype(np.float16).astype(np.float64) @ p.astype(np.float64).T).max(axis=1).sum() for q in queries]
            for p in pages
        ]
    )


# 1 token, < BLOCK_T, == BLOCK_T, > BLOCK_T and several blocks with a ragged tail.
LENGTHS = [1, 5, 63, 64, 65, 130, 200, 17]


@pytest.mark.parametrize("dim", [24, 128])
def test_kernel_matches_the_reference(interpreted, dim: int) -> None:
    pages, rows, starts, lengths = packed_pages(LENGTHS, dim, gap=3)
    rng = np.random.default_rng(1)
    queries = [rng.standard_normal((n, dim)).astype(np.float32) for n in (1, 7, 40)]  # padded to 64 tokens
    scores = maxsim_triton(rows, starts, lengths, pack_queries(queries, CPU))
    assert scores.shape == (len(LENGTHS), 3)
    np.testing.assert_allclose(scores.numpy(), reference(pages, queries), rtol=1e-5, atol=2e-3)


def test_kernel_with_many_query_tiles(interpreted) -> None:
    """9 queries of <= 16 tokens: 8 per tile, so a second, partly empty tile whose scores must not be written."""
    pages, rows, starts, lengths = packed_pages([3, 70, 9], 32)
    rng = np.random.default_rng(2)
    queries = [rng.standard_normal((1 + i, 32)).astype(np.float32) for i in range(9)]
    scores = maxsim_triton(rows, starts, lengths, pack_queries(queries, CPU))
    np.testing.assert_allclose(scores.numpy(), reference(pages, queries), rtol=1e-5, atol=2e-3)


@pytest.mark.parametrize("chunk_rows", [1, 64, 10_000])
def test_torch_path_matches_the_reference(chunk_rows: int) -> None:
    for gap in (0, 2):  # contiguous pages are sliced, gapped ones gathered
        pages, rows, starts, lengths = packed_pages(LENGTHS, 24, gap=gap)
        queries = [np.random.default_rng(3).standard_normal((n, 24)).astype(np.float32) for n in (4, 20)]
        scores = maxsim_torch(rows, starts, lengths, pack_queries(queries, CPU), chunk_rows=chunk_rows)
        np.testing.assert_allclose(scores.numpy(), reference(pages, queries), rtol=1e-5, atol=2e-3)


def test_pack_queries_pads_with_zero_tokens() -> None:
    packed = pack_queries([np.ones((3, 8)), np.ones((17, 8))], CPU)
    assert packed.shape == (2, 32, 8) and packed.dtype == torch.float16
    assert packed[0, 3:].abs().sum() == 0 and packed[1, :17].sum() == 17 * 8


def topic_corpus(n_pages: int, dim: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim))
    pages = [
        (centres[i % 6] + rng.standard_normal((int(rng.integers(2, 90)), dim))).astype(np.float32)
        for i in range(n_pages)
    ]
    queries = [(centres[t] + 0.5 * rng.standard_normal((6 + t, dim))).astype(np.float32) for t in range(4)]
    return pages, queries


def assert_same_hits(left, right) -> None:
    for a, b in zip(left, right, strict=True):
        assert [h.page_id for h in a] == [h.page_id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-4, atol=5e-3)


def test_store_serves_search_through_the_kernel(interpreted, tmp_path: Path) -> None:
    """Every change (add, remove, re-add, compact) is seen by the next kernel search, same as the torch path."""
    pages, queries = topic_corpus(30, 24)
    ids = [10 + 7 * i for i in range(len(pages))]
    fused = ShardedMultiVectorStore(tmp_path / "fused", 24, "m", shard_rows=400, kernel="triton")
    plain = ShardedMultiVectorStore(tmp_path / "plain", 24, "m", shard_rows=400, kernel="torch")
    assert (fused.kernel, plain.kernel) == ("triton", "torch")

    def both(action) -> None:
        action(fused)
        action(plain)
        assert_same_hits(fused.search_batch(queries, 5), plain.search_batch(queries, 5))

    both(lambda store: store.add(ids[:20], pages[:20]))
    assert fused._search.resident is not None and len(fused._search.resident.entries) == 20
    both(lambda store: store.add(ids[20:], pages[20:]))  # more shards; the resident copy is rebuilt
    both(lambda store: store.remove(ids[::3]))
    both(lambda store: store.add([ids[1]], [pages[5]]))  # re-add tombstones the old rows
    assert fused.search_batch(queries, 100)[0] and len(fused.search_batch(queries, 100)[0]) == len(plain)
    subset = [ids[1], ids[2], ids[4], 999_999]  # an unknown id is skipped
    assert_same_hits([fused.score_subset(queries[0], subset)], [plain.score_subset(queries[0], subset)])
    both(lambda store: store.compact())
    fused.close()
    assert fused._search.resident is None


def test_triton_kernel_refused_where_it_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "auto" never picks the interpreter, even when it is on: only CUDA serves through Triton.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ShardedMultiVectorStore(tmp_path / "auto", 8, "m").kernel == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="Triton MaxSim kernel cannot run on cpu"):
        ShardedMultiVectorStore(tmp_path, 8, "m", kernel="triton")
    assert ShardedMultiVectorStore(tmp_path, 8, "m").kernel == "torch"  # auto on CPU
    with pytest.raises(ConfigError, match="kernel must be"):
        ShardedMultiVectorStore(tmp_path, 8, "m", kernel="cuda")


def test_fixed_length_path_matches_the_reference() -> None:
    """maxsim_fixed (pages of exactly k rows, e.g. centroids) in small similarity blocks."""
    pages, rows, _, _ = packed_pages([8] * 13, 16)
    queries = [np.random.default_rng(4).standard_normal((n, 16)).astype(np.float32) for n in (3, 9)]
    for max_bytes in (1, 1 << 30):  # one page per block, and all at once
        scores = maxsim.maxsim_fixed(rows, 8, pack_queries(queries, CPU), max_bytes=max_bytes)
        np.testing.assert_allclose(scores.numpy(), reference(pages, queries), rtol=1e-5, atol=2e-3)
