"""The fused MaxSim Triton kernel (see mmrag/index/maxsim.py, which imports this module only when it runs it).

Importing this module needs Triton; TRITON_INTERPRET=1 in the environment at import time builds the kernels for
Triton's CPU interpreter (how the tests run them without a GPU).
"""
# ruff: noqa: N803 (Triton's constexpr parameters are upper case by convention)

import triton
import triton.language as tl


@triton.jit
def block_max(rows_ptr, start, length, t0, query_t, best, dims, DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    token = t0 + tl.arange(0, BLOCK_T)
    token_ok = token < length
    block = tl.load(
        rows_ptr + (start + token)[:, None] * DIM + dims[None, :],
        mask=token_ok[:, None] & (dims < DIM)[None, :],
        other=0.0,
    )
    similarity = tl.dot(block, query_t)  # (BLOCK_T, columns), fp32 accumulate
    similarity = tl.where(token_ok[:, None], similarity, float("-inf"))
    return tl.maximum(best, tl.max(similarity, axis=0))

@triton.jit
def maxsim_kernel(
    rows_ptr, starts_ptr, lengths_ptr, query_ptr, out_ptr,
    n_queries, n_tiles,
    DIM: tl.constexpr, DIM_PAD: tl.constexpr, QUERY_TOKENS: tl.constexpr, QUERIES_PER_TILE: tl.constexpr,
    BLOCK_T: tl.constexpr, STAGES: tl.constexpr, PIPELINED: tl.constexpr,
):  # fmt: skip
    # One program = one page x one tile of queries. Tiles of a page are adjacent program ids, so the page's
    # second read (next tile) is served from L2.
    pid = tl.program_id(0)
    page = pid // n_tiles
    tile = pid % n_tiles
    start = tl.load(starts_ptr + page).to(tl.int64)
    length = tl.load(lengths_ptr + page)
    columns: tl.constexpr = QUERIES_PER_TILE * QUERY_TOKENS
    col = tl.arange(0, columns)
    dims = tl.arange(0, DIM_PAD)
    query_row = (tile * columns + col).to(tl.int64)  # row in the (queries * QUERY_TOKENS, DIM) query matrix
    query_mask = (query_row < n_queries * QUERY_TOKENS)[None, :] & (dims < DIM)[:, None]
    query_t = tl.load(query_ptr + query_row[None, :] * DIM + dims[:, None], mask=query_mask, other=0.0)
    best = tl.full((columns,), float("-inf"), tl.float32)
    if PIPELINED:  # software-pipelined loads (compiled kernels)
        for t0 in tl.range(0, length, BLOCK_T, num_stages=STAGES):
            best = block_max(rows_ptr, start, length, t0, query_t, best, dims, DIM, BLOCK_T)
    else:  # Triton's CPU interpreter cannot take a loaded scalar as a range bound
        t0 = 0
        while t0 < length:
            best = block_max(rows_ptr, start, length, t0, query_t, best, dims, DIM, BLOCK_T)
            t0 += BLOCK_T
    per_query = tl.sum(tl.reshape(best, (QUERIES_PER_TILE, QUERY_TOKENS)), axis=1)
    query = tile * QUERIES_PER_TILE + tl.arange(0, QUERIES_PER_TILE)
    tl.store(out_ptr + page.to(tl.int64) * n_queries + query, per_query, mask=query < n_queries)

