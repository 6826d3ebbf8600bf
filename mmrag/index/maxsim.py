"""Exact MaxSim over pages packed in one token matrix: a fused Triton kernel on CUDA, chunked torch elsewhere.

Layout ("packed pages"): `rows` is a (total_tokens, dim) fp16 tensor holding every page's tokens back to back;
page p owns rows[starts[p] : starts[p] + lengths[p]]. Pages may have different token counts.

score(query, page) = sum over query tokens of max over page tokens of <q, t>.

Why a kernel: the obvious `einsum` writes the whole (page tokens x query tokens) similarity tensor to memory and
reads it back for the max, so a query moves about twice the bytes it needs. The kernel below
reads each page's tokens once, multiplies them by the query tile held in registers (tensor cores, fp32
accumulate), keeps a running max per query token in registers and writes one float per (page, query). It is
memory-bound by design: its floor is the time to read the stored tokens once (measured by `python -m bench gpu`).

Queries go in as a (queries, query_tokens, dim) fp16 tensor zero-padded to a common token count: a zero query
token scores 0 against every page, so padding adds nothing to a sum (pages always have >= 1 token).

The torch path (CPU, or CUDA without Triton) never materialises more than `chunk_rows` rows' similarities.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import torch

MIN_DOT = 16  # tl.dot needs every dimension >= 16


def _next_pow2(n: int, floor: int = MIN_DOT) -> int:
    return max(floor, 1 << max(0, int(n) - 1).bit_length())


def triton_available(device: torch.device) -> bool:
    """Whether the fused kernel can run for tensors on `device`: CUDA with Triton, or CPU under Triton's interpreter
    (TRITON_INTERPRET=1 before triton is first imported; for tests, far too slow to serve)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernel():  # type: ignore[no-untyped-def]
    """Imported on first use: importing triton is slow, and TRITON_INTERPRET is read when the kernel is built."""
    from mmrag.index.maxsim_kernel import maxsim_kernel

    return maxsim_kernel


# (BLOCK_T, num_warps, STAGES): chosen by the configuration sweep of `python -m bench gpu`, within run-to-run noise
# of the best.
DEFAULT_CONFIG = (64, 4, 3)


def pack_queries(queries: Sequence[np.ndarray] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(queries, padded tokens, dim) fp16 on `device`, zero-padded to a power of two >= 16 tokens."""
    if isinstance(queries, torch.Tensor):
        if queries.ndim != 3:
            raise ValueError(f"queries must be (queries, tokens, dim), got {tuple(queries.shape)}")
        tokens = _next_pow2(queries.shape[1])
        out = torch.zeros((queries.shape[0], tokens, queries.shape[2]), dtype=torch.float16, device=device)
        out[:, : queries.shape[1]] = queries.to(device=device, dtype=torch.float16)
        return out
    arrays = [np.asarray(query, dtype=np.float32) for query in queries]
    dim = arrays[0].shape[1]
    tokens = _next_pow2(max(len(query) for query in arrays))
    host = np.zeros((len(arrays), tokens, dim), dtype=np.float16)
    for i, query in enumerate(arrays):
        host[i, : len(query)] = query
    return torch.from_numpy(host).to(device)


def maxsim_triton(
    rows: torch.Tensor,
    starts: torch.Tensor,
    lengths: torch.Tensor,
    queries: torch.Tensor,
    *,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """(pages, queries) float32 MaxSim scores with the fused kernel. `queries` as made by pack_queries;
    `config` (BLOCK_T, num_warps, stages) defaults to DEFAULT_CONFIG."""
    block_t, num_warps, stages = config or DEFAULT_CONFIG
    n_pages, (n_queries, query_tokens, dim) = len(starts), queries.shape
    if rows.dtype != torch.float16 or queries.dtype != torch.float16:
        raise ValueError("the kernel reads fp16 rows and queries")
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise ValueError(f"rows must be (tokens, {dim}), got {tuple(rows.shape)}")
    out = torch.empty((n_pages, n_queries), dtype=torch.float32, device=rows.device)
    if n_pages == 0 or n_queries == 0:
        return out
    # At most 128 query-token columns per tile keeps the (BLOCK_T x columns) fp32 tile in registers.
    per_tile = max(1, min(_next_pow2(n_queries, floor=1), 128 // query_tokens))
    n_tiles = -(-n_queries // per_tile)
    _kernel()[(n_pages * n_tiles,)](
        rows, starts, lengths, queries.contiguous(), out, n_queries, n_tiles,
        DIM=dim, DIM_PAD=_next_pow2(dim), QUERY_TOKENS=query_tokens, QUERIES_PER_TILE=per_tile,
        BLOCK_T=block_t, STAGES=stages, PIPELINED=rows.device.type == "cuda", num_warps=num_warps,
    )  # fmt: skip
    return out


def maxsim_torch(
    rows: torch.Tensor,
    starts: torch.Tensor,
    lengths: torch.Tensor,
    queries: torch.Tensor,
    *,
    chunk_rows: int = 65_536,
) -> torch.Tensor:
    """The same scores with matmul + segment max, `chunk_rows` rows at a time, in float32 (CPU-friendly)."""
    n_queries, query_tokens, dim = queries.shape
    flat = queries.reshape(-1, dim).to(torch.float32)
    out = torch.empty((len(starts), n_queries), dtype=torch.float32, device=rows.device)
    starts_host, lengths_host = starts.cpu().numpy(), lengths.cpu().numpy()
    page = 0
    while page < len(starts_host):
        stop, taken = page, 0
        while stop < len(starts_host) and (stop == page or taken + lengths_host[stop] <= chunk_rows):
            taken += int(lengths_host[stop])
            stop += 1
        contiguous = bool(np.all(starts_host[page + 1 : stop] == starts_host[page : stop - 1] + lengths_host[page : stop - 1]))
        if contiguous:
            block = rows[int(starts_host[page]) : int(starts_host[page]) + taken]
        else:
            block = torch.cat([rows[int(s) : int(s) + int(n)] for s, n in zip(starts_host[page:stop], lengths_host[page:stop], strict=True)])
        similarity = block.to(torch.float32) @ flat.T  # (rows, queries * query_tokens)
        segment = torch.from_numpy(lengths_host[page:stop].astype(np.int64)).to(rows.device)
        maxima = torch.segment_reduce(similarity, "max", lengths=segment, axis=0)
        out[page:stop] = maxima.reshape(stop - page, n_queries, query_tokens).sum(dim=2)
        page = stop
    return out


def maxsim_fixed(rows: torch.Tensor, per_page: int, queries: torch.Tensor, *, max_bytes: int = 1 << 30) -> torch.Tensor:
    """(pages, queries) MaxSim when every page has exactly `per_page` rows (e.g. 8 centroids a page).

    With a handful of rows a page, one kernel program per page would spend more time starting than reading, so
    this is a plain matmul (fp16 on CUDA, float32 elsewhere) whose similarity block stays under `max_bytes`."""
    n_queries, query_tokens, dim = queries.shape
    pages = rows.shape[0] // per_page
    dtype = torch.float16 if rows.is_cuda else torch.float32
    flat = queries.reshape(-1, dim).to(dtype)
    out = torch.empty((pages, n_queries), dtype=torch.float32, device=rows.device)
    step = max(1, max_bytes // (per_page * n_queries * query_tokens * 4))
    for first in range(0, pages, step):
        last = min(pages, first + step)
        similarity = rows[first * per_page : last * per_page].to(dtype) @ flat.T
        best = similarity.view(last - first, per_page, n_queries, query_tokens).amax(dim=1)
        out[first:last] = best.float().sum(dim=2)
    return out


def maxsim_packed(
    rows: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, queries: torch.Tensor, *, chunk_rows: int = 65_536
) -> torch.Tensor:
    """(pages, queries) exact MaxSim: the fused kernel where it can run, the chunked torch path otherwise."""
    if rows.device.type == "cuda" and triton_available(rows.device) and rows.dtype == torch.float16:
        return maxsim_triton(rows, starts, lengths, queries)
    return maxsim_torch(rows, starts, lengths, queries, chunk_rows=chunk_rows)
