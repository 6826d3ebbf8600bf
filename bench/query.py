"""Query-service benchmark: `search()` through the service (SQL, the kept BM25 index, fusion, page lookup) against
the index's own search, versus collection size.

`python -m bench query` prints a table and writes bench/results/query.json. Each collection is written straight
into SQL (documents and pages with text whose words follow a Zipf law over a fixed vocabulary, as text does), and
queries are three words of a random page. The BM25 retriever is the one measured: its index is derived from SQL, so
the service must know it is current at each query; the vector retrievers' service cost is their store's search,
which `python -m bench search` measures. "Reload" is what a query pays the first time after the collection changed
(the pages with text read from SQL, the saved index loaded); before the service kept the index by the collection's
generation, every query paid it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

from bench.report import rows_by_size, write_report
from mmrag.config import DatabaseSettings, IngestSettings, Settings
from mmrag.retrieval import search
from mmrag.retrievers import Embedders
from mmrag.services import Services, build_services
from mmrag.store.db import downgrade, refresh_statistics
from mmrag.store.models import Collection, Document, DocumentPath, Page, utcnow

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "query.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench query", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000], help="pages per collection")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--words-per-page", type=int, default=150)
    parser.add_argument("--vocabulary", type=int, default=20_000)
    parser.add_argument("--database-url", default=None,
                        help="SQLAlchemy URL of an empty database to use, left empty (default: SQLite in the work dir)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where SQL and the index go (default: temp)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def fill_collection(services: Services, pages: int, words_per_page: int, vocabulary: int, seed: int = 0) -> list[str]:
    """`pages` one-page indexed documents with Zipf-distributed words, in bulk statements; returns the texts."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocabulary)])
    ranks = np.minimum(rng.zipf(1.2, size=(pages, words_per_page)), vocabulary) - 1
    texts = [" ".join(words[row]) for row in ranks]
    now = utcnow()
    with services.engine.begin() as connection:
        collection_id = connection.execute(insert(Collection.__table__).values(name="default", created_at=now)
                                           ).inserted_primary_key[0]
        for start in range(0, pages, 10_000):
            ids = range(start + 1, min(pages, start + 10_000) + 1)
            connection.execute(insert(Document.__table__), [
                {"id": i, "collection_id": collection_id, "sha256": f"{i:064x}", "kind": "pdf",
                 "mime": "application/pdf", "size_bytes": 1, "page_count": 1, "status": "indexed",
                 "user_metadata": {}, "created_at": now, "updated_at": now, "indexed_at": now} for i in ids])
            connection.execute(insert(DocumentPath.__table__), [
                {"collection_id": collection_id, "document_id": i, "path": f"/corpus/{i:08d}.pdf", "size_bytes": 1,
                 "mtime": 0.0, "first_seen": now, "last_seen": now} for i in ids])
            connection.execute(insert(Page.__table__), [
                {"id": i, "document_id": i, "page_number": 1, "width": 1240, "height": 1754,
                 "text": texts[i - 1], "text_source": "text_layer", "created_at": now} for i in ids])
    return texts


def ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def bench_size(args: argparse.Namespace, work: Path, size: int) -> dict:
    directory = work / f"query-{size}"
    url = args.database_url or f"sqlite:///{directory / 'bench.db'}"
    settings = Settings(data_dir=directory / "data", database=DatabaseSettings(url=url),
                        ingest=IngestSettings(workers=0, ocr="never"))
    directory.mkdir(parents=True, exist_ok=True)
    services = build_services(settings, embedders=Embedders())  # no model: BM25 alone
    try:
        began = time.perf_counter()
        texts = fill_collection(services, size, args.words_per_page, args.vocabulary)
        fill_s = time.perf_counter() - began
        began = time.perf_counter()
        refresh_statistics(services.engine)  # as a bulk job does when it ends
        statistics_s = time.perf_counter() - began
        began = time.perf_counter()
        services.collections.derived.lexical(1, writer=True)  # the collection's writer builds and saves the index (as a job's end)
        build_s = time.perf_counter() - began
        rng = np.random.default_rng(1)
        queries = [" ".join(rng.choice(texts[int(rng.integers(size))].split(), 3)) for _ in range(args.queries)]
        reload_s = []
        for _ in range(3):
            began = time.perf_counter()
            # the first query after a change: the saved index loaded and checked against SQL's ids
            services.collections.derived._current_lexical(1, None, generation=-1, writer=False)  # noqa: SLF001
            reload_s.append(time.perf_counter() - began)
        end_to_end, alone = [], []
        index = services.collections.derived.lexical(1)
        for query in queries:
            began = time.perf_counter()
            hits = search(services, "default", text=query, k=10, retrievers=["lexical"])
            end_to_end.append(time.perf_counter() - began)
            began = time.perf_counter()
            index.search(query, services.settings.retrieval.depth)
            alone.append(time.perf_counter() - began)
            assert hits, query
    finally:
        if args.database_url:
            downgrade(services.engine)  # the given database empty again, for the next size
        services.close()
    return {"pages": size, "fill_s": fill_s, "statistics_s": statistics_s, "first_build_s": build_s,
            "reload_ms": 1000 * min(reload_s),
            "search_p50_ms": ms(end_to_end, 50), "search_p95_ms": ms(end_to_end, 95),
            "bm25_alone_p50_ms": ms(alone, 50), "bm25_alone_p95_ms": ms(alone, 95)}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console()
    rows = rows_by_size(args, "query", bench_size, console)
    table = Table(title=f"search(), BM25 retriever, {args.queries} queries of 3 words (CPU, SQLite unless "
                        "--database-url)")
    for column in ("pages", "search() p50 ms", "search() p95 ms", "BM25 alone p50 ms",
                   "reload after a change ms (every query, before)", "first build s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["pages"]), f"{row['search_p50_ms']:.1f}", f"{row['search_p95_ms']:.1f}",
                      f"{row['bm25_alone_p50_ms']:.1f}", f"{row['reload_ms']:.0f}", f"{row['first_build_s']:.1f}")
    console.print(table)
    write_report("query", args, rows, console)
    return 0
