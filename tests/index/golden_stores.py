"""Golden files of both journalled stores: the operations that made them, and the script that wrote them.

tests/index/data/ holds a FAISS index (snapshot + journal) and a multi-vector store (snapshot + journal + shards)
written by the code of commit 98e3612, before the journal helper existed; test_golden_files.py opens them with
today's code and also replays these operations, comparing every file byte for byte. Regenerate only for a
deliberate format change (with a migration): `PYTHONPATH=<old checkout> python tests/index/golden_stores.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
FAISS_DIM = 8
MULTIVECTOR_DIM = 8
MODEL = "golden-model"


@contextmanager
def fixed_random_ids() -> Iterator[None]:
    """os.urandom(8) (a store's uid and its snapshot ids) returns a counter, so two runs write the same bytes."""
    real = os.urandom
    counter = iter(range(1, 1 << 30))

    def fake(n: int) -> bytes:
        return next(counter).to_bytes(n, "big") if n == 8 else real(n)

    os.urandom = fake
    try:
        yield
    finally:
        os.urandom = real


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def faiss_queries() -> np.ndarray:
    return _unit(np.random.default_rng(11).normal(size=(3, FAISS_DIM)))


def multivector_queries() -> list[np.ndarray]:
    rng = np.random.default_rng(12)
    return [_unit(rng.normal(size=(n, MULTIVECTOR_DIM))) for n in (2, 3, 4)]


def build_faiss(path: Path, open_index: Callable[..., object]) -> object:
    """A flat index: a snapshot of 20 vectors, then a journal of two flushes (adds, a replace, removes)."""
    rng = np.random.default_rng(1)
    index = open_index(path, model=MODEL, dim=FAISS_DIM, kind="flat", use_gpu=False)
    index.add(np.arange(20), _unit(rng.normal(size=(20, FAISS_DIM))))
    index.flush()
    index.add(np.arange(20, 25), _unit(rng.normal(size=(5, FAISS_DIM))))
    index.remove(np.array([3, 4, 21]))
    index.flush()
    index.add(np.array([7, 30]), _unit(rng.normal(size=(2, FAISS_DIM))))
    index.flush()
    return index


def build_multivector(directory: Path, store_class: Callable[..., object]) -> object:
    """Pages of 2..6 tokens over shards of 24 rows: a snapshot, then a journal of two flushes."""
    rng = np.random.default_rng(2)

    def pages(n: int) -> list[np.ndarray]:
        return [_unit(rng.normal(size=(int(rng.integers(2, 7)), MULTIVECTOR_DIM))) for _ in range(n)]

    store = store_class(directory, MULTIVECTOR_DIM, MODEL, shard_rows=24)
    store.add(list(range(10)), pages(10))
    store.flush()
    store.remove([2, 5])
    store.add([10, 11, 3], pages(3))
    store.flush()
    store.add([12], pages(1))
    store.remove([11])
    store.flush()
    return store


def faiss_results(index: object) -> dict[str, object]:
    hits = index.search(faiss_queries(), 30)
    return {"ids": index.ids().tolist(), "hits": [[[h.page_id, h.score] for h in row] for row in hits]}


def multivector_results(store: object) -> dict[str, object]:
    hits = store.search_batch(multivector_queries(), 30)
    return {"ids": store.ids().tolist(), "hits": [[[h.page_id, h.score] for h in row] for row in hits]}


def main() -> None:
    from mmrag.index.faiss_index import FaissIndex
    from mmrag.index.multivector import ShardedMultiVectorStore

    print("writing golden files with", sys.modules["mmrag"].__file__)
    shutil.rmtree(DATA / "faiss", ignore_errors=True)
    shutil.rmtree(DATA / "multivector", ignore_errors=True)
    (DATA / "faiss").mkdir(parents=True)
    with fixed_random_ids():
        index = build_faiss(DATA / "faiss" / "clip.faiss", FaissIndex.open)
        store = build_multivector(DATA / "multivector", ShardedMultiVectorStore)
    store.close()
    expected = {"faiss": faiss_results(index), "multivector": multivector_results(store)}
    (DATA / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
