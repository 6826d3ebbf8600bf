"""Smaller page token matrices: token pooling (colpali-engine) and int8 / binary codes, with MaxSim over them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def pool_tokens(pages: Sequence[np.ndarray], factor: int) -> list[np.ndarray]:
    """Merge similar tokens of each page (colpali-engine's hierarchical pooling): about len/factor tokens remain.

    Neighbouring image patches of one page are often near-duplicates (blank margins, one table cell), so their
    mean keeps the page's MaxSim almost unchanged at a fraction of the storage.
    """
    if factor <= 1:
        return [np.asarray(page, dtype=np.float32) for page in pages]
    import torch
    from colpali_engine.compression.token_pooling import HierarchicalTokenPooler

    pooler = HierarchicalTokenPooler()
    tensors = [torch.from_numpy(np.asarray(page, dtype=np.float32)) for page in pages]
    pooled = pooler.pool_embeddings(tensors, pool_factor=factor, padding=False)
    return [p.numpy().astype(np.float32) for p in pooled]


@dataclass(frozen=True)
class Int8Tokens:
    """Symmetric per-token int8 codes: token ≈ codes * scale. 1 byte per dimension plus 4 per token."""

    codes: np.ndarray  # (tokens, dim) int8
    scales: np.ndarray  # (tokens,) float32

    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scales.nbytes)

    def decode(self) -> np.ndarray:
        return self.codes.astype(np.float32) * self.scales[:, None]


def quantize_int8(tokens: np.ndarray) -> Int8Tokens:
    tokens = np.asarray(tokens, dtype=np.float32)
    scales = np.abs(tokens).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint(tokens / scales[:, None]), -127, 127).astype(np.int8)
    return Int8Tokens(codes, scales.astype(np.float32))


def binarize(tokens: np.ndarray) -> np.ndarray:
    """Sign bits packed 8 per byte: dim/8 bytes per token (16 for dim 128)."""
    return np.packbits(np.asarray(tokens) > 0, axis=1)


def maxsim(query: np.ndarray, page: np.ndarray) -> float:
    """Exact MaxSim of one query against one page, in float32: the reference every approximation is held to."""
    similarity = np.asarray(query, dtype=np.float32) @ np.asarray(page, dtype=np.float32).T
    return float(similarity.max(axis=1).sum())


def maxsim_binary(query: np.ndarray, page_bits: np.ndarray, dim: int) -> float:
    """Asymmetric MaxSim against sign codes: float query times ±1 page tokens (used only to pick candidates)."""
    signs = np.unpackbits(page_bits, axis=1, count=dim).astype(np.float32) * 2.0 - 1.0
    return maxsim(query, signs / np.sqrt(dim))
