"""Store benchmark: what one batch costs the stores as a collection grows, for the bulk job's write thread and for a
query process following it.

`python -m bench stores` prints a table and writes bench/results/stores.json. Per size N (vectors already in the
store), median over a few batches:
  - FaissIndex.add of a 512-vector batch (512-d flat, CLIP ViT-B/32's shape) and flush (a journal append);
  - ShardedMultiVectorStore add + flush of a 32-page batch (a journal append; before, a rewrite of the whole entry
    table);
  - a reader on the same files: FaissIndex.catch_up and ShardedMultiVectorStore.catch_up after one flushed batch,
    next to opening each again.
Random vectors: these are costs of bookkeeping and I/O, not of search quality. CPU (faiss on the CPU).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.report import write_report
from mmrag.index.faiss_index import FaissIndex
from mmrag.index.multivector import ShardedMultiVectorStore

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "stores.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench stores", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="vectors/pages in store")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def bench_faiss(size: int, dim: int, batches: int, work: Path) -> dict:
    path = work / f"clip-{size}.faiss"
    rng = np.random.default_rng(0)
    writer = FaissIndex.open(path, model="bench", dim=dim, use_gpu=False)
    for start in range(0, size, 100_000):
        count = min(100_000, size - start)
        writer.add(np.arange(start + 1, start + count + 1), unit_vectors(rng, count, dim))
    writer.flush()  # the snapshot
    reader = FaissIndex.open(path, model="bench", dim=dim, use_gpu=False)
    add, flush, catch_up, reopen = [], [], [], []
    next_id = size + 1
    for _ in range(batches):
        vectors = unit_vectors(rng, 512, dim)
        began = time.perf_counter()
        writer.add(np.arange(next_id, next_id + 512), vectors)
        add.append(time.perf_counter() - began)
        began = time.perf_counter()
        writer.flush()
        flush.append(time.perf_counter() - began)
        next_id += 512
        began = time.perf_counter()
        assert reader.catch_up(), "the snapshot was rewritten: raise --sizes or lower --batches"
        catch_up.append(time.perf_counter() - began)
        assert len(reader) == len(writer)
        began = time.perf_counter()
        FaissIndex.open(path, model="bench", dim=dim, use_gpu=False)
        reopen.append(time.perf_counter() - began)
    return {"add_ms": 1000 * float(np.median(add[1:] or add)), "flush_ms": 1000 * float(np.median(flush)),
            "catch_up_ms": 1000 * float(np.median(catch_up)), "reopen_ms": 1000 * float(np.median(reopen))}


def bench_multivector(size: int, batches: int, work: Path) -> dict:
    store = ShardedMultiVectorStore(work / f"colpali-{size}", 16, "bench", shard_rows=4_000_000)
    page = np.ones((2, 16), dtype=np.float32)  # the entry table is what grows with pages; tokens are not timed
    for start in range(0, size, 50_000):
        count = min(50_000, size - start)
        store.add(list(range(start + 1, start + count + 1)), [page] * count)
    store.flush()
    reader = ShardedMultiVectorStore(store.directory, 16, "bench", read_only=True)
    times, catch_up = [], []
    for batch in range(batches):
        ids = list(range(size + 1 + 32 * batch, size + 33 + 32 * batch))
        began = time.perf_counter()
        store.add(ids, [page] * 32)
        store.flush()
        times.append(time.perf_counter() - began)
        began = time.perf_counter()
        reader.catch_up()
        catch_up.append(time.perf_counter() - began)
        assert len(reader) == len(store)
    began = time.perf_counter()
    ShardedMultiVectorStore(store.directory, 16, "bench", read_only=True).close()
    reopen = time.perf_counter() - began
    reader.close()
    store.close()
    return {"add_flush_32_pages_ms": 1000 * float(np.median(times)),
            "multivector_catch_up_ms": 1000 * float(np.median(catch_up)), "multivector_reopen_ms": 1000 * reopen}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mmrag-bench-stores-"))
    rows = []
    try:
        for size in args.sizes:
            row = {"size": size, **bench_faiss(size, args.dim, args.batches, work),
                   **bench_multivector(size, args.batches, work)}
            rows.append(row)
            console.print(row)
            for path in work.iterdir():  # the next size starts on an empty disk
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"one batch against a store of N (CPU; faiss flat {args.dim}-d, batches of 512 vectors; "
                        "multi-vector batches of 32 pages)")
    for column in ("N", "faiss add ms", "faiss flush ms", "reader catch_up ms", "reader reopen ms",
                   "multi-vector reader catch_up ms", "multi-vector reader reopen ms",
                   "multi-vector add+flush ms"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['size']:,}", f"{row['add_ms']:.1f}", f"{row['flush_ms']:.1f}", f"{row['catch_up_ms']:.1f}",
                      f"{row['reopen_ms']:.0f}", f"{row['multivector_catch_up_ms']:.1f}",
                      f"{row['multivector_reopen_ms']:.0f}", f"{row['add_flush_32_pages_ms']:.1f}")
    console.print(table)
    write_report("stores", args, rows, console)
    return 0
