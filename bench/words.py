"""Word boxes, what they cost: the shared receipts indexed with and without them, side by side in one run.

    python -m bench words --data-dir /tmp/words-bench [--data ../shared/data/sroie-more] [--repeat 2]

Indexes the set's img/ twice into fresh data dirs under --data-dir (`with`: the default, `without`:
MMRAG_INGEST__WORD_BOXES=false; same settings otherwise, one after the other on this machine) and reports for each
the indexing time and pages/s, the word boxes' bytes a page in SQL and the SQLite file's size; then, on the `with`
index, search latency (POST /v1/search's library call, k=10) with highlights and without, the set's questions
`--repeat` times, interleaved. Writes bench/results/words.json (or --out): figures only.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from mmrag.config import IngestSettings, Settings
from mmrag.documents import search_hits
from mmrag.evaluation import load_questions
from mmrag.indexing import run_index
from mmrag.services import build_services

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sroie-more"
DEFAULT_OUT = REPO / "bench" / "results" / "words.json"
console = Console()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench words", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder with img/ and questions.jsonl")
    parser.add_argument("--data-dir", type=Path, required=True, help="scratch folder (outside the repo)")
    parser.add_argument("--repeat", type=int, default=2, help="passes over the questions for the latency figures")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    if not (args.data / "img").is_dir():
        log.warning("skipping the word-box benchmark: %s has no img/ (the shared evaluation data)", args.data)
        return 0
    indexing = {}
    for name, boxes in (("with", True), ("without", False)):
        data_dir = args.data_dir / name
        shutil.rmtree(data_dir, ignore_errors=True)
        services = build_services(Settings(data_dir=data_dir, ingest=IngestSettings(word_boxes=boxes)))
        try:
            job = run_index(services, [args.data / "img"])
        finally:
            services.close()
        indexing[name] = {"pages": job.pages_indexed, "seconds": round(job.seconds, 1),
                          "pages_per_second": round(job.pages_per_second, 3), **_storage(data_dir / "mmrag.db")}
    latency = _search_latency(args.data_dir / "with", args.data / "questions.jsonl", args.repeat)
    summary = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": args.data.name,
        "indexing": indexing,
        "search_ms": latency,
    }
    table = Table(title=f"word boxes · {args.data.name}")
    for column in ("index", "pages", "s", "pages/s", "word-box bytes/page", "SQLite MB"):
        table.add_column(column, justify="right")
    for name, row in indexing.items():
        table.add_row(name, str(row["pages"]), f"{row['seconds']:.1f}", f"{row['pages_per_second']:.2f}",
                      f"{row['word_bytes_per_page']:.0f}", f"{row['sqlite_mb']:.2f}")
    console.print(table)
    console.print(" · ".join(f"search {name}: p50 {v['p50']:.2f} ms, p95 {v['p95']:.2f} ms"
                             for name, v in latency.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


def _storage(database: Path) -> dict[str, float]:
    with sqlite3.connect(database) as connection:
        pages = connection.execute("select count(*) from pages").fetchone()[0]
        stored = connection.execute("select coalesce(sum(length(words)), 0) from page_words").fetchone()[0]
    return {"word_bytes_per_page": stored / pages if pages else 0.0, "sqlite_mb": database.stat().st_size / 2**20}


def _search_latency(data_dir: Path, questions_file: Path, repeat: int) -> dict[str, dict[str, float]]:
    questions = load_questions(questions_file)
    services = build_services(Settings(data_dir=data_dir))
    timings: dict[str, list[float]] = {"highlights": [], "no highlights": []}
    try:
        search_hits(services, ["default"], text=questions[0].query, k=10)  # loads the index
        for _ in range(repeat):
            for question in questions:
                for name, highlight in (("highlights", True), ("no highlights", False)):
                    began = time.perf_counter()
                    search_hits(services, ["default"], text=question.query, k=10, highlight=highlight)
                    timings[name].append(1000 * (time.perf_counter() - began))
    finally:
        services.close()
    return {name: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
            for name, v in timings.items()}


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
