"""The qdrant backend beside the local stores: multi-vector pages and single vectors, latency, recall, bytes.

`python -m bench qdrant [--sizes 10000 100000]` loads the same synthetic pages (bench/synthetic.py: ColPali-shaped
token matrices, `--tokens` a page) into the local multi-vector store and into Qdrant through mmrag's own store
classes, and the same 512-d vectors into FAISS and Qdrant, then times queries about known pages. Recall@10 is
against exact MaxSim (exact inner product for single vectors) over the same pages. Engines measured here: Qdrant's
engine in-process (qdrant-edge-py), and qdrant-client's local mode at the first size only (a Python
re-implementation: it is what `embedded = "client"` runs). A Qdrant server or cluster is not measured here: none can
be installed on this machine (`scripts/qdrant-smoke URL` runs index, search and delete against one).

Rows, per size:
  local exact / local candidates     ShardedMultiVectorStore: MaxSim over every token; the centroid candidate index
  qdrant exact / qdrant candidates   QdrantMultiVectorStore: MaxSim over every token; prefetch by 8 centroids a page
  qdrant candidates (hnsw, int8)     the same after the engine's optimizer built its HNSW graph over the centroids
                                     with --quantization (int8 scalar by default; what a server does by itself in
                                     the background), at sizes up to --optimize-max pages
Bytes per page: the files each engine wrote, over the pages (the local store's shards and commits; Qdrant's segments:
float16 tokens and centroids, the id tracker), and for Qdrant with its write-ahead log, which keeps a copy of
recent writes until the engine truncates it. load_s: loading the pages (for the hnsw row: the optimizer's run).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from bench.report import print_rows, write_report
from bench.synthetic import make_corpus
from mmrag.config import IndexSettings, QdrantSettings
from mmrag.index import build_vector_index, open_multivector_store
from mmrag.index.candidates import PooledCandidateIndex
from mmrag.index.faiss_index import FaissIndex
from mmrag.index.multivector import ShardedMultiVectorStore
from mmrag.index.qdrant_index import close_clients

log = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench qdrant", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="pages per collection")
    parser.add_argument("--tokens", type=int, default=128,
                        help="tokens per page (128: a ColPali page pooled ~8x; 1030 unpooled needs 26 GB at 100k)")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=256, help="candidates reranked (both backends)")
    parser.add_argument("--optimize-max", type=int, default=10_000, help="largest size optimized (HNSW + int8)")
    parser.add_argument("--client-max", type=int, default=10_000, help="largest size run on qdrant-client local mode")
    parser.add_argument("--dense-dim", type=int, default=512)
    parser.add_argument("--quantization", choices=["scalar", "binary", "none"], default="scalar",
                        help="of the dense vectors and the centroids in the optimized rows")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "qdrant.json")
    return parser.parse_args(argv)


QUANTIZED = {"scalar": "int8", "binary": "binary", "none": "float"}


def _ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples) * 1000.0, q)), 2)


def _bytes(path: Path, *, wal: bool = True) -> int:
    """Bytes the files under `path` take on disk (allocated blocks: Qdrant's memory-mapped files are sized ahead of
    their contents); without `wal`, less Qdrant's write-ahead logs (copies of the writes, kept until the engine
    truncates them)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and (wal or "wal" not in p.parts))


def _timed_queries(search, queries: list, truth: list[list[int]] | None) -> tuple[dict, list[list[int]]]:  # noqa: ANN001
    search(queries[0])  # warm
    latencies, tops = [], []
    for query in queries:
        began = time.perf_counter()
        hits = search(query)
        latencies.append(time.perf_counter() - began)
        tops.append([hit.page_id for hit in hits])
    row = {"p50_ms": _ms(latencies, 50), "p95_ms": _ms(latencies, 95)}
    if truth is not None:
        row["recall_at_10"] = round(float(np.mean([len(set(t) & set(g)) / 10 for t, g in zip(tops, truth,
                                                                                                 strict=True)])), 3)
    return row, tops


def bench_multivector(args: argparse.Namespace, size: int, work: Path) -> list[dict]:
    corpus = make_corpus(size, tokens_per_page=args.tokens)
    targets = np.random.default_rng(1).choice(size, min(args.queries, size), replace=False)
    queries = [corpus.query(int(t), seed=i) for i, t in enumerate(targets)]
    rows: list[dict] = []

    local_dir = work / f"local-{size}"
    store = ShardedMultiVectorStore(local_dir, corpus.dim, "synthetic", device="cpu")
    began = time.perf_counter()
    corpus.add_to(store)
    store.flush()
    load_s = time.perf_counter() - began
    exact, truth = _timed_queries(lambda q: store.search(q, 10), queries, None)
    exact["recall_at_10"] = 1.0
    rows.append({"pages": size, "engine": "local", "search": "exact", "load_s": round(load_s, 1),
                 "bytes_per_page": round(_bytes(local_dir) / size), **exact})
    candidates = PooledCandidateIndex.build(store, vectors_per_page=8)
    row, _ = _timed_queries(lambda q: candidates.search(q, store, 10, candidates=args.candidates), queries, truth)
    rows.append({"pages": size, "engine": "local", "search": f"candidates {args.candidates}", **row})
    store.close()
    shutil.rmtree(local_dir, ignore_errors=True)

    engines = ["edge"] + (["client"] if size <= args.client_max else [])
    for engine in engines:
        path = work / f"qdrant-{engine}-{size}"
        settings = IndexSettings(backend="qdrant", multivector_candidates=args.candidates,
                                 qdrant=QdrantSettings(path=path, embedded=engine, quantization=args.quantization))
        directory = work / "collections" / str(size) / "vectors" / "colpali"
        qdrant = open_multivector_store(settings, directory, model="synthetic", dim=corpus.dim)
        began = time.perf_counter()
        corpus.add_to(qdrant)
        load_s = time.perf_counter() - began
        if engine == "edge":
            qdrant._client.client.flush()
        name = f"qdrant-{engine}"
        row, _ = _timed_queries(lambda q: qdrant.search(q, 10), queries, truth)
        rows.append({"pages": size, "engine": name, "search": "exact", "load_s": round(load_s, 1),
                     "bytes_per_page": round(_bytes(path, wal=False) / size),
                     "with_wal_bytes_per_page": round(_bytes(path) / size), **row})
        prefetching = open_multivector_store(settings.model_copy(update={"multivector_search": "candidates"}),
                                             directory, model="synthetic", dim=corpus.dim)
        row, _ = _timed_queries(lambda q: prefetching.search(q, 10), queries, truth)
        rows.append({"pages": size, "engine": name, "search": f"candidates {args.candidates}", **row})
        if engine == "edge" and size <= args.optimize_max:
            began = time.perf_counter()
            qdrant._client.client.optimize(qdrant.name)
            optimize_s = time.perf_counter() - began
            row, _ = _timed_queries(lambda q: prefetching.search(q, 10), queries, truth)
            rows.append({"pages": size, "engine": name,
                         "search": f"candidates {args.candidates} (hnsw, {QUANTIZED[args.quantization]})",
                         "load_s": round(optimize_s, 1), "bytes_per_page": round(_bytes(path, wal=False) / size),
                         "with_wal_bytes_per_page": round(_bytes(path) / size), **row})
        close_clients()
        shutil.rmtree(path, ignore_errors=True)
    return rows


def bench_dense(args: argparse.Namespace, size: int, work: Path) -> list[dict]:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(size, args.dense_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(size, args.queries, replace=False)] + rng.normal(
        scale=0.05, size=(args.queries, args.dense_dim)).astype(np.float32)
    ids = np.arange(1, size + 1, dtype=np.int64)
    rows = []
    faiss_dir = work / f"faiss-{size}"
    faiss_dir.mkdir(parents=True, exist_ok=True)
    flat = FaissIndex.open(faiss_dir / "clip.faiss", model="synthetic", dim=args.dense_dim, kind="flat", use_gpu=False)
    flat.add(ids, vectors)
    flat.flush()
    row, truth = _timed_queries(lambda q: flat.search(q[None], 10)[0], list(queries), None)
    rows.append({"pages": size, "engine": "faiss", "search": "flat", "bytes_per_page": round(_bytes(faiss_dir) / size),
                 **row, "recall_at_10": 1.0})
    shutil.rmtree(faiss_dir, ignore_errors=True)
    path = work / f"qdrant-dense-{size}"
    settings = IndexSettings(backend="qdrant", kind="flat", qdrant=QdrantSettings(path=path, quantization=args.quantization))
    index = build_vector_index(settings, work / "collections" / str(size) / "vectors", name="clip",
                               model="synthetic", dim=args.dense_dim)
    began = time.perf_counter()
    for start in range(0, size, 5000):
        index.add(ids[start : start + 5000], vectors[start : start + 5000])
    load_s = time.perf_counter() - began
    row, _ = _timed_queries(lambda q: index.search(q[None], 10)[0], list(queries), truth)
    rows.append({"pages": size, "engine": "qdrant-edge", "search": "exact", "load_s": round(load_s, 1),
                 "bytes_per_page": round(_bytes(path, wal=False) / size),
                 "with_wal_bytes_per_page": round(_bytes(path) / size), **row})
    if size <= args.optimize_max:
        began = time.perf_counter()
        index._client.client.optimize(index.name)
        optimize_s = time.perf_counter() - began
        hnsw = build_vector_index(settings.model_copy(update={"kind": "hnsw"}), work / "collections" / str(size)
                                  / "vectors", name="clip", model="synthetic", dim=args.dense_dim)
        row, _ = _timed_queries(lambda q: hnsw.search(q[None], 10)[0], list(queries), truth)
        rows.append({"pages": size, "engine": "qdrant-edge", "search": f"hnsw, {QUANTIZED[args.quantization]}",
                     "load_s": round(optimize_s, 1),
                     "bytes_per_page": round(_bytes(path, wal=False) / size),
                     "with_wal_bytes_per_page": round(_bytes(path) / size), **row})
    close_clients()
    shutil.rmtree(path, ignore_errors=True)
    return rows


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console(width=160)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mmrag-bench-qdrant-"))
    work.mkdir(parents=True, exist_ok=True)
    multivector, dense = [], []
    try:
        for size in args.sizes:
            log.info("multi-vector pages: %d", size)
            multivector += bench_multivector(args, size, work)
            log.info("single vectors: %d", size)
            dense += bench_dense(args, size, work)
    finally:
        close_clients()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    multivector, dense = _columns(multivector), _columns(dense)
    print_rows(f"multi-vector pages ({args.tokens} tokens x 128 dims), CPU, torch threads {torch.get_num_threads()}",
               multivector, console)
    print_rows(f"single vectors ({args.dense_dim} dims), CPU", dense, console)
    write_report("qdrant", args, [{"kind": "multivector", **row} for row in multivector]
                 + [{"kind": "dense", **row} for row in dense], console)
    return 0


COLUMNS = ("pages", "engine", "search", "load_s", "bytes_per_page", "with_wal_bytes_per_page", "p50_ms", "p95_ms",
           "recall_at_10")


def _columns(rows: list[dict]) -> list[dict]:
    """Every row with every column, in one order ("-" where a row has none: a search of a store loaded above)."""
    return [{column: row.get(column, "-") for column in COLUMNS} for row in rows]
