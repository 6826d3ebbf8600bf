"""GPU search benchmark: the fused MaxSim kernel against the memory-bandwidth floor, the scalable path at a million
pages, and single-vector (CLIP-sized) search, with every page embedding generated on the device.

`python -m bench gpu` prints tables and writes bench/results/gpu.json. Page embeddings are synthetic with the
structure of real ones (bench/synthetic.TorchCorpus); queries are about a known page. Sections:

  bandwidth  what this device reads (a sum over 4 GB) and copies per second: the floor the kernel is held to
  exact      exact MaxSim, one query and batches of 32: the naive einsum (materialises the similarity tensor),
             the fused Triton kernel (config sweep first), and the floor = stored bytes / measured read rate
  store      ShardedMultiVectorStore.search end to end on the device (queries in, Hit lists out)
  scalable   candidates from MaxSim over 8 centroids per page, exact rerank of the candidates; recall@10 against
             exhaustive MaxSim over the same stored tokens. At a million pages the stored tokens are pooled
             (factor 4, about 64 KB a page) because unpooled ones (263 GB) exceed the device's memory
  clip       single-vector inner-product top-10 over 512-d fp16 vectors (torch on the device: the GPU machine
             has no FAISS)

On a machine without CUDA it runs the same code on small sizes through the torch path (a smoke test, not a
measurement). The kernel on CPU exists only in Triton's interpreter, so CPU figures here are for the torch path.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bench.synthetic import TorchCorpus
from mmrag.index import maxsim as maxsim_module
from mmrag.index.candidates import spherical_kmeans
from mmrag.index.maxsim import maxsim_fixed, maxsim_packed, maxsim_triton, pack_queries

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "gpu.json"
SWEEP = [(32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 4, 4), (64, 8, 3), (128, 4, 3), (128, 8, 2), (128, 8, 3),
         (128, 8, 4), (64, 2, 3)]  # (BLOCK_T, num_warps, stages)  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__)
    parser.add_argument("--exact-sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--tokens", type=int, default=1030, help="tokens per page (ColPali at 448 px: 1030)")
    parser.add_argument("--query-tokens", type=int, default=24)
    parser.add_argument("--queries", type=int, default=50, help="single queries timed per measurement")
    parser.add_argument("--store-pages", type=int, default=10_000, help="pages in the end-to-end store run")
    parser.add_argument("--scalable-pages", type=int, default=1_000_000)
    parser.add_argument("--pool", type=int, default=4, help="token pooling factor of the scalable-path corpus")
    parser.add_argument("--candidates", type=int, nargs="+", default=[300, 1000, 3000, 10000])
    parser.add_argument("--clip-sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--sections", nargs="+", default=["bandwidth", "exact", "store", "scalable", "clip"])
    parser.add_argument("--no-sweep", action="store_true", help="use the kernel's default config")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], reps: int, warmup: int = 2) -> list[float]:
    """Milliseconds per call, each call synchronised (so a sample is what one caller waits)."""
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(reps):
        began = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - began) * 1000.0)
    return samples


def p(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q))


def fill_pages(corpus: TorchCorpus, n_pages: int, tokens: int, pooled: int = 1, chunk: int = 5000) -> torch.Tensor:
    """(n_pages * tokens, dim) fp16 rows, pages back to back, generated chunk by chunk on the device."""
    rows = torch.empty((n_pages * tokens, corpus.dim), dtype=torch.float16, device=corpus.device)
    for start in range(0, n_pages, chunk):
        stop = min(n_pages, start + chunk)
        rows[start * tokens : stop * tokens] = corpus.pages(start, stop, tokens=tokens, pooled=pooled).reshape(-1, corpus.dim)
    return rows


def page_layout(n_pages: int, tokens: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.arange(n_pages, dtype=torch.int64, device=dev) * tokens
    return starts, torch.full((n_pages,), tokens, dtype=torch.int32, device=dev)


def centroid_rows(rows: torch.Tensor, n_pages: int, tokens: int, per_page: int = 8, chunk: int = 4096) -> torch.Tensor:
    out = torch.empty((n_pages * per_page, rows.shape[1]), dtype=torch.float16, device=rows.device)
    for start in range(0, n_pages, chunk):
        stop = min(n_pages, start + chunk)
        pages = rows[start * tokens : stop * tokens].reshape(stop - start, tokens, -1)
        out[start * per_page : stop * per_page] = spherical_kmeans(pages, per_page).reshape(-1, rows.shape[1]).half()
    return out


# ---------------------------------------------------------------------------------------------------- sections


def bench_bandwidth(dev: torch.device) -> dict:
    n = (4 << 30) // 2 if dev.type == "cuda" else (64 << 20) // 2
    x = torch.empty(n, dtype=torch.float16, device=dev).normal_()
    y = torch.empty_like(x)
    read = timed(lambda: x.sum(dtype=torch.float32), 10)
    copy = timed(lambda: y.copy_(x), 10)
    nbytes = x.numel() * 2
    result = {"bytes": nbytes, "read_ms_p50": p(read, 50), "read_TBps": nbytes / (p(read, 50) / 1e3) / 1e12,
              "copy_TBps_read_plus_write": 2 * nbytes / (p(copy, 50) / 1e3) / 1e12}  # fmt: skip
    del x, y
    return result


def sweep_configs(rows, starts, lengths, query, reps: int = 10) -> list[dict]:
    results = []
    for config in SWEEP:
        try:
            samples = timed(lambda config=config: maxsim_triton(rows, starts, lengths, query, config=config), reps)
            results.append({"config": list(config), "p50_ms": p(samples, 50)})
        except Exception as exc:  # noqa: BLE001 - a config the compiler rejects is reported, not fatal
            results.append({"config": list(config), "error": repr(exc)[:200]})
    return results


def bench_exact(args: argparse.Namespace, dev: torch.device, read_tbps: float | None) -> list[dict]:
    out = []
    for n_pages in args.exact_sizes:
        corpus = TorchCorpus(n_pages, device=dev, seed=n_pages)
        rows = fill_pages(corpus, n_pages, args.tokens)
        starts, lengths = page_layout(n_pages, args.tokens, dev)
        targets = torch.randint(0, n_pages, (max(args.queries, 32),), generator=torch.Generator().manual_seed(1))
        queries = corpus.queries(targets, tokens=args.query_tokens)
        packed = pack_queries(queries, dev)
        row: dict = {"pages": n_pages, "tokens_per_page": args.tokens, "stored_GB": rows.numel() * 2 / 1e9}
        if dev.type == "cuda" and not args.no_sweep and n_pages == max(args.exact_sizes):
            row["sweep"] = sweep_configs(rows, starts, lengths, packed[:1])
            best = min((r for r in row["sweep"] if "p50_ms" in r), key=lambda r: r["p50_ms"])
            maxsim_module.DEFAULT_CONFIG = tuple(best["config"])
            row["config"] = best["config"]
        pages3 = rows.view(n_pages, args.tokens, -1)

        def naive(i: int) -> torch.Tensor:
            similarity = torch.einsum("qd,ptd->ptq", queries[i], pages3)  # materialised (pages, tokens, q) fp16
            return similarity.amax(dim=1).float().sum(dim=1)

        order = itertools.cycle(range(len(queries)))
        naive_ms = timed(lambda: naive(next(order)), min(args.queries, 20))
        each = itertools.cycle(packed)
        single = timed(lambda: maxsim_packed(rows, starts, lengths, next(each)[None]), args.queries)
        batch = timed(lambda: maxsim_packed(rows, starts, lengths, packed[:32]), 5)
        # Agreement: kernel vs the einsum in float32 on a few queries, and the same top-10.
        diffs, same_top = [], []
        for i in range(4):
            ours = maxsim_packed(rows, starts, lengths, packed[i][None])[:, 0]
            chunked = torch.cat([
                torch.einsum("qd,ptd->ptq", queries[i].float(), pages3[a : a + 2000].float()).amax(dim=1).sum(dim=1)
                for a in range(0, n_pages, 2000)
            ])  # fmt: skip
            diffs.append(float((ours - chunked).abs().max()))
            same_top.append(len(set(ours.topk(10).indices.tolist()) & set(chunked.topk(10).indices.tolist())) / 10)
        row.update({
            "naive_einsum_p50_ms": p(naive_ms, 50),
            "kernel_p50_ms": p(single, 50), "kernel_p95_ms": p(single, 95),
            "kernel_batch32_ms_per_query": p(batch, 50) / 32,
            "kernel_vs_float32_max_abs_diff": max(diffs), "top10_overlap_vs_float32": statistics.mean(same_top),
        })  # fmt: skip
        if read_tbps:
            floor_ms = rows.numel() * 2 / (read_tbps * 1e12) * 1e3
            row.update({"floor_ms": floor_ms, "floor_at_4.8TBps_ms": rows.numel() * 2 / 4.8e12 * 1e3, "kernel_over_floor": row["kernel_p50_ms"] / floor_ms,
                        "kernel_TBps": rows.numel() * 2 / (row["kernel_p50_ms"] / 1e3) / 1e12})  # fmt: skip
        row.update(scalable_at(rows, n_pages, args.tokens, packed, args.candidates, args.queries, label="unpooled"))
        out.append(row)
        del rows, pages3, starts, lengths
        torch.cuda.empty_cache() if dev.type == "cuda" else None
    return out


def scalable_at(rows, n_pages, tokens, packed, candidate_counts, n_queries, *, label: str) -> dict:
    """Candidates by MaxSim over 8 centroids a page, exact rerank; recall@10 vs exhaustive MaxSim over `rows`."""
    dev = rows.device
    began = time.perf_counter()
    cents = centroid_rows(rows, n_pages, tokens)
    sync()
    build_s = time.perf_counter() - began
    starts, lengths = page_layout(n_pages, tokens, dev)
    queries = packed[:n_queries]
    truth = [maxsim_packed(rows, starts, lengths, q[None])[:, 0].topk(10).indices for q in queries]
    exhaustive = timed(lambda: maxsim_packed(rows, starts, lengths, queries[0][None])[:, 0].topk(10), n_queries)
    result: dict = {f"{label}_centroid_build_s": build_s, f"{label}_exhaustive_p50_ms": p(exhaustive, 50),
                    f"{label}_exhaustive_p95_ms": p(exhaustive, 95), f"{label}_candidates": []}  # fmt: skip

    def search(q: torch.Tensor, count: int) -> torch.Tensor:
        approx = maxsim_fixed(cents, 8, q[None])[:, 0]  # as PooledCandidateIndex's exhaustive mode
        chosen = approx.topk(min(count, n_pages)).indices
        exact = maxsim_packed(rows, starts[chosen], lengths[chosen], q[None])[:, 0]
        return chosen[exact.topk(min(10, len(chosen))).indices]

    for count in candidate_counts:
        if count > n_pages:
            continue
        recall = statistics.mean(
            len(set(search(q, count).tolist()) & set(t.tolist())) / 10 for q, t in zip(queries, truth, strict=True)
        )
        each = itertools.cycle(queries)
        lat = timed(lambda count=count, each=each: search(next(each), count), n_queries)
        result[f"{label}_candidates"].append({"candidates": count, "recall_at_10": recall, "p50_ms": p(lat, 50),
                                              "p95_ms": p(lat, 95)})  # fmt: skip
    del cents
    return result


def bench_store(args: argparse.Namespace, dev: torch.device) -> dict:
    """End to end through ShardedMultiVectorStore: numpy queries in, Hit lists out (resident rows + kernel)."""
    from mmrag.index.multivector import ShardedMultiVectorStore

    corpus = TorchCorpus(args.store_pages, device=dev, seed=5)
    with tempfile.TemporaryDirectory(prefix="mmrag-bench-gpu-") as tmp:
        store = ShardedMultiVectorStore(Path(tmp), corpus.dim, "bench", device=dev.type)
        began = time.perf_counter()
        for start in range(0, args.store_pages, 1000):
            stop = min(args.store_pages, start + 1000)
            pages = corpus.pages(start, stop, tokens=args.tokens).cpu().numpy()
            store.add(list(range(start + 1, stop + 1)), list(pages))
        store.flush()
        write_s = time.perf_counter() - began
        targets = torch.randint(0, args.store_pages, (args.queries,), generator=torch.Generator().manual_seed(2))
        queries = [q.float().cpu().numpy() for q in corpus.queries(targets, tokens=args.query_tokens)]
        began = time.perf_counter()
        store.search(queries[0], 10)
        first_s = time.perf_counter() - began  # builds the resident copy
        each = itertools.cycle(queries)
        lat = timed(lambda: store.search(next(each), 10), args.queries)
        hits = [store.search(q, 10)[0].page_id == int(t) + 1 for q, t in zip(queries, targets, strict=True)]
        store.close()
    return {"pages": args.store_pages, "kernel": store.kernel, "write_s": write_s, "first_search_s": first_s,
            "search_p50_ms": p(lat, 50), "search_p95_ms": p(lat, 95), "target_page_first": statistics.mean(hits)}


def bench_scalable(args: argparse.Namespace, dev: torch.device) -> dict:
    tokens = -(-args.tokens // args.pool)
    corpus = TorchCorpus(args.scalable_pages, device=dev, seed=7)
    began = time.perf_counter()
    rows = fill_pages(corpus, args.scalable_pages, tokens, pooled=args.pool, chunk=20_000)
    sync()
    generate_s = time.perf_counter() - began
    targets = torch.randint(0, args.scalable_pages, (args.queries,), generator=torch.Generator().manual_seed(3))
    packed = pack_queries(corpus.queries(targets, tokens=args.query_tokens), dev)
    result = {"pages": args.scalable_pages, "pool": args.pool, "tokens_per_page": tokens,
              "bytes_per_page": tokens * corpus.dim * 2, "centroid_bytes_per_page": 8 * corpus.dim * 2,
              "stored_GB": rows.numel() * 2 / 1e9, "generate_s": generate_s}  # fmt: skip
    result.update(scalable_at(rows, args.scalable_pages, tokens, packed, args.candidates, args.queries, label="pooled"))
    del rows
    return result


def bench_clip(args: argparse.Namespace, dev: torch.device) -> list[dict]:
    out = []
    for n in args.clip_sizes:
        vectors = torch.nn.functional.normalize(torch.randn(n, 512, device=dev), dim=1).half()
        queries = torch.nn.functional.normalize(torch.randn(args.queries, 512, device=dev), dim=1).half()
        each = itertools.cycle(queries)
        lat = timed(lambda: (vectors @ next(each)).topk(10), args.queries)
        out.append({"vectors": n, "p50_ms": p(lat, 50), "p95_ms": p(lat, 95), "GB": n * 512 * 2 / 1e9})
        del vectors
    return out


# ---------------------------------------------------------------------------------------------------- report


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console()
    dev = device()
    if dev.type != "cuda":
        console.print("[yellow]no CUDA device: smoke run of the torch path on small sizes (not a measurement)")
        args.exact_sizes = [min(s, 300) for s in args.exact_sizes]
        args.store_pages, args.scalable_pages = min(args.store_pages, 300), min(args.scalable_pages, 2000)
        args.clip_sizes, args.queries = [min(s, 10_000) for s in args.clip_sizes], min(args.queries, 8)
    report: dict = {
        "benchmark": "gpu", "when": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "device": torch.cuda.get_device_name() if dev.type == "cuda"
                    else "cpu", "torch": torch.__version__},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2))

    sections: dict[str, Callable[[], object]] = {
        "bandwidth": lambda: bench_bandwidth(dev),
        "exact": lambda: bench_exact(args, dev, report.get("bandwidth", {}).get("read_TBps")),
        "store": lambda: bench_store(args, dev),
        "scalable": lambda: bench_scalable(args, dev),
        "clip": lambda: bench_clip(args, dev),
    }
    for name in args.sections:
        began = time.perf_counter()
        try:
            report[name] = sections[name]()
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others' figures
            report[name] = {"error": repr(exc)[:500]}
            console.print(f"[red]{name} failed: {exc!r}")
        report.setdefault("section_seconds", {})[name] = time.perf_counter() - began
        save()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print_tables(console, report)
    console.print(f"wrote {args.out}")
    return 0


def print_tables(console: Console, report: dict) -> None:
    device_name = report["machine"]["device"]
    if isinstance(report.get("bandwidth"), dict) and "read_TBps" in report["bandwidth"]:
        bw = report["bandwidth"]
        console.print(f"{device_name}: read {bw['read_TBps']:.2f} TB/s, copy {bw['copy_TBps_read_plus_write']:.2f} TB/s")
    if isinstance(report.get("exact"), list):
        table = Table(title=f"exact MaxSim, one query ({device_name})")
        for column in ("pages", "GB", "naive einsum p50", "kernel p50", "kernel p95", "floor", "kernel/floor",
                       "batch32 per query", "max |diff|"):  # fmt: skip
            table.add_column(column, justify="right")
        for row in report["exact"]:
            table.add_row(str(row["pages"]), f"{row['stored_GB']:.1f}", f"{row['naive_einsum_p50_ms']:.2f}",
                          f"{row['kernel_p50_ms']:.2f}", f"{row['kernel_p95_ms']:.2f}",
                          f"{row.get('floor_ms', float('nan')):.2f}", f"{row.get('kernel_over_floor', float('nan')):.2f}",
                          f"{row['kernel_batch32_ms_per_query']:.3f}", f"{row['kernel_vs_float32_max_abs_diff']:.1e}")  # fmt: skip
        console.print(table)
    scal_rows = []
    for row in report.get("exact", []) if isinstance(report.get("exact"), list) else []:
        scal_rows.append((f"{row['pages']} unpooled", row, "unpooled"))
    if isinstance(report.get("scalable"), dict) and "pages" in report["scalable"]:
        scal_rows.append((f"{report['scalable']['pages']} pool {report['scalable']['pool']}", report["scalable"], "pooled"))
    if scal_rows:
        table = Table(title=f"scalable path: centroid candidates + exact rerank ({device_name})")
        for column in ("collection", "exhaustive p50/p95 ms", "candidates", "recall@10", "p50 ms", "p95 ms"):
            table.add_column(column, justify="right")
        for name, row, label in scal_rows:
            for c in row.get(f"{label}_candidates", []):
                table.add_row(name, f"{row[f'{label}_exhaustive_p50_ms']:.2f} / {row[f'{label}_exhaustive_p95_ms']:.2f}",
                              str(c["candidates"]), f"{c['recall_at_10']:.3f}", f"{c['p50_ms']:.2f}", f"{c['p95_ms']:.2f}")  # fmt: skip
        console.print(table)
    if isinstance(report.get("store"), dict) and "search_p50_ms" in report["store"]:
        s = report["store"]
        console.print(f"store end to end ({s['kernel']}): {s['pages']} pages, search p50 {s['search_p50_ms']:.2f} ms,"
                      f" p95 {s['search_p95_ms']:.2f} ms, first search {s['first_search_s']:.1f} s")  # fmt: skip
    if isinstance(report.get("clip"), list):
        for row in report["clip"]:
            console.print(f"single-vector 512-d top-10 over {row['vectors']:,}: p50 {row['p50_ms']:.2f} ms, "
                          f"p95 {row['p95_ms']:.2f} ms")  # fmt: skip
