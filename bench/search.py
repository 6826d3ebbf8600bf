"""Search benchmark: exact MaxSim vs the scalable candidate path, compressed storage, CLIP single-vector search.

`python -m bench search` prints tables and writes bench/results/search.json. Page embeddings are synthetic with
the structure of real ones (bench/synthetic.py); queries are about a known page. Latencies are per query on
this machine's device (CPU here unless torch sees a GPU); every figure says which.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bench.synthetic import make_corpus
from mmrag.index.candidates import PooledCandidateIndex
from mmrag.index.compression import maxsim, pool_tokens, quantize_int8
from mmrag.index.multivector import ShardedMultiVectorStore

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "search.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench search", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000], help="pages per collection")
    parser.add_argument("--tokens", type=int, default=1030, help="tokens per page (ColPali at 448 px: 1030)")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--compression-pages", type=int, default=300, help="pages for the storage/agreement study")
    parser.add_argument("--pool-factors", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--sections", nargs="+", choices=["multivector", "compression", "clip"],
                        default=["multivector", "compression", "clip"])
    parser.add_argument("--clip-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--work-dir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def ndcg_at(reference: list[int], ranking: list[int], k: int = 10) -> float:
    """nDCG@k of `ranking` taking the exact top-k (graded by exact rank) as the truth."""
    gains = {page: (k - rank) for rank, page in enumerate(reference[:k])}
    dcg = sum(gains.get(page, 0) / np.log2(rank + 2) for rank, page in enumerate(ranking[:k]))
    ideal = sum((k - rank) / np.log2(rank + 2) for rank in range(min(k, len(reference))))
    return float(dcg / ideal) if ideal else 1.0


def bench_multivector(args: argparse.Namespace, work: Path, device: str) -> list[dict]:
    rows = []
    for size in args.sizes:
        corpus = make_corpus(size, tokens_per_page=args.tokens)
        directory = work / f"mv-{size}"
        store = ShardedMultiVectorStore(directory, corpus.dim, "synthetic", device=device)
        began = time.perf_counter()
        corpus.add_to(store)
        store.flush()
        load_s = time.perf_counter() - began
        began = time.perf_counter()
        candidate_index = PooledCandidateIndex.build(store, vectors_per_page=8)  # exhaustive up to 250k pages
        build_s = time.perf_counter() - began
        targets = np.random.default_rng(1).choice(size, min(args.queries, size), replace=False)
        queries = [corpus.query(int(t), seed=i) for i, t in enumerate(targets)]
        store.search(queries[0], 10)  # warm the page cache and torch
        exact_lat, exact_top = [], []
        for query in queries:
            began = time.perf_counter()
            hits = store.search(query, 10)
            exact_lat.append(time.perf_counter() - began)
            exact_top.append([h.page_id for h in hits])
        found = np.mean([top[0] == t + 1 for top, t in zip(exact_top, targets, strict=True)])
        bytes_per_page = store.stats()["rows"] * corpus.dim * 2 / size
        row = {
            "pages": size,
            "tokens_per_page": args.tokens,
            "device": device,
            "bytes_per_page": bytes_per_page,
            "store_gb": bytes_per_page * size / 1e9,
            "load_s": load_s,
            "exact": {"p50_ms": percentile_ms(exact_lat, 50), "p95_ms": percentile_ms(exact_lat, 95),
                      "target_at_1": float(found)},
            "candidate_build_s": build_s,
            "scalable": [],
        }
        for candidates in args.candidates:
            if candidates >= size:
                continue
            lat, recall = [], []
            for query, top in zip(queries, exact_top, strict=True):
                began = time.perf_counter()
                hits = candidate_index.search(query, store, 10, candidates=candidates)
                lat.append(time.perf_counter() - began)
                recall.append(len({h.page_id for h in hits} & set(top)) / 10)
            row["scalable"].append(
                {"candidates": candidates, "p50_ms": percentile_ms(lat, 50), "p95_ms": percentile_ms(lat, 95),
                 "recall_at_10_vs_exact": float(np.mean(recall))}
            )
        rows.append(row)
        store.close()
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def bench_compression(args: argparse.Namespace) -> list[dict]:
    """Bytes per page vs agreement (nDCG@10 of the exact ranking) for pooled / int8 page tokens."""
    corpus = make_corpus(args.compression_pages, tokens_per_page=args.tokens, seed=3)
    pages = [tokens for _, tokens in corpus.pages()]
    targets = np.random.default_rng(2).choice(len(pages), min(args.queries, len(pages)), replace=False)
    queries = [corpus.query(int(t), seed=i) for i, t in enumerate(targets)]

    def ranking(page_set: list[np.ndarray], query: np.ndarray) -> list[int]:
        scores = [maxsim(query, page) for page in page_set]
        return list(np.argsort(-np.asarray(scores), kind="stable"))

    exact = [ranking(pages, q) for q in queries]
    rows = []
    for factor in args.pool_factors:
        pooled = pool_tokens(pages, factor) if factor > 1 else pages
        for codec in ("fp16", "int8"):
            if codec == "fp16":
                stored = [p.astype(np.float16).astype(np.float32) for p in pooled]
                nbytes = sum(p.size * 2 for p in pooled)
            else:
                codes = [quantize_int8(p) for p in pooled]
                stored = [c.decode() for c in codes]
                nbytes = sum(c.nbytes() for c in codes)
            agreement = np.mean([ndcg_at(e, ranking(stored, q)) for e, q in zip(exact, queries, strict=True)])
            rows.append({"pool_factor": factor, "codec": codec, "bytes_per_page": nbytes / len(pages),
                         "ndcg10_vs_exact": float(agreement)})
    return rows


def bench_clip(args: argparse.Namespace) -> list[dict]:
    """Single-vector (CLIP ViT-B/32, 512-d) search latency vs collection size, exact and HNSW, on CPU FAISS."""
    rows = []
    rng = np.random.default_rng(5)
    dim = 512
    queries = rng.normal(size=(50, dim)).astype(np.float32)
    faiss.normalize_L2(queries)
    for size in args.clip_sizes:
        vectors = rng.normal(size=(size, dim)).astype(np.float32)
        faiss.normalize_L2(vectors)
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        lat = []
        for query in queries:
            began = time.perf_counter()
            flat.search(query[None], 10)
            lat.append(time.perf_counter() - began)
        row = {"pages": size, "dim": dim, "flat_p50_ms": percentile_ms(lat, 50), "flat_p95_ms": percentile_ms(lat, 95)}
        rows.append(row)
        del flat, vectors
    return rows


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    console = Console()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="mmrag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        multivector = bench_multivector(args, work, device) if "multivector" in args.sections else []
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    compression = bench_compression(args) if "compression" in args.sections else []
    clip = bench_clip(args) if "clip" in args.sections else []

    table = Table(title=f"multi-vector search, {args.tokens} tokens/page, {device}, torch threads {torch.get_num_threads()}")
    for column in ("pages", "store GB", "exact p50 ms", "exact p95 ms", "candidates", "scalable p50 ms",
                   "scalable p95 ms", "recall@10 vs exact"):
        table.add_column(column, justify="right")
    for row in multivector:
        first = True
        for scalable in row["scalable"] or [{"candidates": "-", "p50_ms": float("nan"), "p95_ms": float("nan"),
                                               "recall_at_10_vs_exact": float("nan")}]:
            table.add_row(
                str(row["pages"]) if first else "", f"{row['store_gb']:.2f}" if first else "",
                f"{row['exact']['p50_ms']:.1f}" if first else "", f"{row['exact']['p95_ms']:.1f}" if first else "",
                str(scalable["candidates"]), f"{scalable['p50_ms']:.1f}", f"{scalable['p95_ms']:.1f}",
                f"{scalable['recall_at_10_vs_exact']:.3f}",
            )
            first = False
    console.print(table)
    table = Table(title=f"stored bytes per page vs agreement with exact ({args.compression_pages} pages)")
    for column in ("pool factor", "codec", "KB/page", "nDCG@10 vs exact"):
        table.add_column(column, justify="right")
    for row in compression:
        table.add_row(str(row["pool_factor"]), row["codec"], f"{row['bytes_per_page'] / 1024:.1f}",
                      f"{row['ndcg10_vs_exact']:.3f}")
    console.print(table)
    table = Table(title="CLIP single-vector search (512-d, FAISS flat, CPU)")
    for column in ("pages", "p50 ms", "p95 ms"):
        table.add_column(column, justify="right")
    for row in clip:
        table.add_row(str(row["pages"]), f"{row['flat_p50_ms']:.2f}", f"{row['flat_p95_ms']:.2f}")
    console.print(table)

    report = {
        "benchmark": "search",
        "when": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "device": device, "torch": torch.__version__,
                    "faiss": faiss.__version__, "torch_threads": torch.get_num_threads()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "multivector": multivector,
        "compression": compression,
        "clip": clip,
        "seconds": time.perf_counter() - began,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")
    return 0
