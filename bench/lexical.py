"""BM25 benchmark: what a job's text costs the lexical index, segmented (mmrag now) against bm25s's eager index
(mmrag up to 2287945, which rebuilt it from every page's text after each job), versus collection size.

`python -m bench lexical` prints a table and writes bench/results/lexical.json. Pages are synthetic: words drawn
from a Zipf law over a pseudo-word vocabulary, with amounts and dates mixed in as receipts have them. Per size:
- bm25s: analyzing every page (the collection plus a job of the largest --job-pages) and building and saving both
  models (words, character 3-grams), which every job that added text paid; its load time and query latency (word
  and n-gram scores fused, as the old index did).
- segmented: the first build and save of the same pages; its load time, query latency and agreement with bm25s;
  then jobs of `--job-pages` new pages (load the saved index, add a segment, save: what the job's worker does), a
  delete of 100 pages, and query latency after `--jobs` more jobs (several segments).
All on the same machine, one after the other, in one run.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.report import rows_by_size, write_report
from mmrag.analysis import NGRAM, analyze, char_ngrams, query_terms
from mmrag.index.bm25 import rank
from mmrag.index.lexical import NGRAM_MIN_MATCH, NGRAM_RRF_K, Bm25Index

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "lexical.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench lexical", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="pages already indexed")
    parser.add_argument("--job-pages", type=int, nargs="+", default=[100, 1000], help="pages a job adds")
    parser.add_argument("--jobs", type=int, default=10, help="jobs of the smallest --job-pages, for the segments")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--words-per-page", type=int, default=150)
    parser.add_argument("--vocabulary", type=int, default=30_000)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the indexes go (default: temp)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def make_pages(count: int, words_per_page: int, vocabulary: int, first_id: int, seed: int) -> list[tuple[int, str]]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(3, 10, size=vocabulary)
    words = ["".join(rng.choice(letters, n)) for n in lengths]
    ranks = np.minimum(rng.zipf(1.15, size=(count, words_per_page)), vocabulary) - 1
    pages = []
    for row, page_ranks in enumerate(ranks):
        tokens = [words[r] for r in page_ranks]
        tokens[::15] = [f"{rng.integers(1, 999)}.{rng.integers(0, 99):02d}" for _ in tokens[::15]]  # amounts
        tokens[7::50] = [f"{rng.integers(1, 28):02d}/{rng.integers(1, 12):02d}/20{rng.integers(10, 26)}"
                         for _ in tokens[7::50]]  # dates
        pages.append((first_id + row, " ".join(tokens)))
    return pages


def timed(function, *args):  # noqa: ANN001, ANN002, ANN202
    began = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - began


def dir_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


# ------------------------------------------------------------------------------------------ bm25s (the old index)


def bm25s_build_and_save(pages: list[tuple[int, str]], directory: Path) -> None:
    """What the old Bm25Index.rebuild + save did: analyze every page, build both eager models, save them."""
    import bm25s

    tokens = [analyze(text) for _, text in pages]
    for name, corpus in (("words", tokens), ("grams", [char_ngrams(t, NGRAM) for t in tokens])):
        model = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
        model.index(corpus, show_progress=False)
        model.save(str(directory / name), show_progress=False)
    np.save(directory / "page_ids.npy", np.array([page_id for page_id, _ in pages], dtype=np.int64))


def bm25s_load(directory: Path) -> tuple:
    import bm25s

    return (bm25s.BM25.load(str(directory / "words"), show_progress=False),
            bm25s.BM25.load(str(directory / "grams"), show_progress=False), np.load(directory / "page_ids.npy"))


def bm25s_ranked(model, terms: list[str], k: int, page_ids: np.ndarray, min_match: int = 1) -> list[int]:  # noqa: ANN001
    token_ids = model.get_tokens_ids(terms)
    if not token_ids:
        return []
    scores = model.get_scores_from_ids(token_ids)
    candidates = np.flatnonzero(scores > 0)
    if min_match > 1 and len(candidates):
        matrix, held = model.scores, np.zeros(len(scores), dtype=np.int32)
        for token_id in set(token_ids):
            held[matrix["indices"][matrix["indptr"][token_id]: matrix["indptr"][token_id + 1]]] += 1
        candidates = candidates[held[candidates] >= min_match]
    if len(candidates) > k:
        candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
    return [int(page_ids[candidates[i]]) for i in np.lexsort((page_ids[candidates], -scores[candidates]))]


def bm25s_search(loaded: tuple, query: str, k: int) -> list[int]:
    words, grams, page_ids = loaded
    terms = query_terms(query)
    query_grams = list(dict.fromkeys(char_ngrams(terms, NGRAM)))
    fused: dict[int, float] = {}
    rankings = (bm25s_ranked(words, terms, k, page_ids),
                bm25s_ranked(grams, query_grams, k, page_ids, math.ceil(NGRAM_MIN_MATCH * len(query_grams))))
    for ranking in rankings:
        for position, page_id in enumerate(ranking, start=1):
            fused[page_id] = fused.get(page_id, 0.0) + 1.0 / (NGRAM_RRF_K + position)
    return sorted(fused, key=lambda page_id: (-fused[page_id], page_id))[:k]


def word_scores_equal(model, index: Bm25Index, query: str) -> bool:  # noqa: ANN001
    terms = query_terms(query)
    token_ids = model.get_tokens_ids(terms)
    expected = np.sort(model.get_scores_from_ids(token_ids))[::-1][:10] if token_ids else np.zeros(0)
    expected = expected[expected > 0]
    got = [score for _, score in rank(index._segments, "words", terms, 10, k1=index.k1, b=index.b)]  # noqa: SLF001
    return len(got) == len(expected) and bool(np.allclose(got, expected, rtol=1e-5))


# ------------------------------------------------------------------------------------------ the run


def latencies(search, queries: list[str]) -> tuple[float, float, list[list[int]]]:  # noqa: ANN001
    samples, results = [], []
    for query in queries:
        began = time.perf_counter()
        results.append(search(query))
        samples.append(time.perf_counter() - began)
    ms = np.asarray(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), results


def bench_size(args: argparse.Namespace, work: Path, size: int) -> dict:
    largest = max(args.job_pages)
    extra = largest + sum(args.job_pages) + args.jobs * min(args.job_pages)
    pages = make_pages(size + extra, args.words_per_page, args.vocabulary, first_id=1, seed=size)
    rng = np.random.default_rng(7)
    queries = [" ".join(rng.choice(pages[int(rng.integers(size))][1].split(), 3)) for _ in range(args.queries)]
    row: dict = {"pages": size}

    # Both indexes over the same pages: the collection after a job of `largest` pages, which bm25s had to rebuild.
    indexed = pages[: size + largest]
    old = work / f"bm25s-{size}"
    old.mkdir()
    _, row["bm25s_job_rebuild_s"] = timed(bm25s_build_and_save, indexed, old)
    same, row["bm25s_load_s"] = timed(bm25s_load, old)
    row["bm25s_bytes"] = dir_bytes(old)
    row["bm25s_p50_ms"], row["bm25s_p95_ms"], old_results = latencies(lambda q: bm25s_search(same, q, 10), queries)

    new = work / f"segmented-{size}"
    index = Bm25Index()
    _, row["segmented_first_build_s"] = timed(lambda: (index.rebuild(indexed), index.save(new)))
    row["segmented_bytes"] = dir_bytes(new)
    index, row["segmented_load_s"] = timed(Bm25Index.load, new)
    row["segmented_p50_ms"], row["segmented_p95_ms"], new_results = latencies(lambda q: [
        hit.page_id for hit in index.search(q, 10)], queries)
    # Agreement with bm25s: the word model's top-10 scores (the same up to float rounding, so pages tied in score
    # may come in another order) and the fused top 10 as sets.
    row["word_scores_equal_share"] = float(np.mean([word_scores_equal(same[0], index, query) for query in queries]))
    row["fused_top10_overlap"] = float(np.mean([len(set(a) & set(b)) / max(len(a), 1)
                                                for a, b in zip(old_results, new_results)]))
    fresh = iter(pages[size + largest:])

    def job(count: int) -> None:
        saved = Bm25Index.load(new)
        saved.add([next(fresh) for _ in range(count)])
        saved.save(new)

    for count in args.job_pages:
        _, row[f"segmented_job_{count}_s"] = timed(job, count)

    def delete() -> None:
        saved = Bm25Index.load(new)
        saved.remove([page_id for page_id, _ in pages[:100]])
        saved.save(new)

    _, row["segmented_delete_100_s"] = timed(delete)
    for _ in range(args.jobs):
        job(min(args.job_pages))
    index = Bm25Index.load(new)
    row["segments_after_jobs"] = index.segment_sizes()
    row["segmented_many_p50_ms"], row["segmented_many_p95_ms"], _ = latencies(lambda q: index.search(q, 10), queries)
    shutil.rmtree(old)
    shutil.rmtree(new)
    return row


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console(width=200)
    rows = rows_by_size(args, "lexical", bench_size, console)
    largest = max(args.job_pages)
    table = Table(title=f"BM25 per job: bm25s eager (rebuilt from all text) vs segmented; {args.queries} queries of "
                        f"3 words, top 10; {args.words_per_page} words/page; CPU")
    for column in ("pages", f"bm25s: job of {largest} s", *(f"segm.: job of {n} s" for n in args.job_pages),
                   "segm.: delete 100 s", "load s bm25s / segm.", "p50 ms bm25s / segm. 1 / many",
                   "segments", "word scores = / fused overlap", "MB bm25s / segm."):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["pages"]), f"{row['bm25s_job_rebuild_s']:.1f}",
            *(f"{row[f'segmented_job_{n}_s']:.2f}" for n in args.job_pages), f"{row['segmented_delete_100_s']:.2f}",
            f"{row['bm25s_load_s']:.2f} / {row['segmented_load_s']:.2f}",
            f"{row['bm25s_p50_ms']:.1f} / {row['segmented_p50_ms']:.1f} / {row['segmented_many_p50_ms']:.1f}",
            str(len(row["segments_after_jobs"])),
            f"{row['word_scores_equal_share']:.2f} / {row['fused_top10_overlap']:.3f}",
            f"{row['bm25s_bytes'] / 1e6:.0f} / {row['segmented_bytes'] / 1e6:.0f}",
        )
    console.print(table)
    write_report("lexical", args, rows, console)
    return 0
