"""`python -m bench pdfs`: what a folder of real-world and broken PDFs yields, before and after a change, side by side.

Runs `mmrag index` (tiny random models: what is measured is ingestion, not retrieval) over `--data` once per code
checkout given (`--code DIR`, repeatable: an older commit's `git worktree`, and this one), each into a data dir of
its own, then reads each SQLite database: documents indexed and failed, pages indexed and failed, failures grouped
by reason, and which renderer drew the pages. `--rerun-with-this` indexes the first checkout's data dir again with
this checkout's code afterwards (a data dir indexed before the change, re-run after it): the files that run took up
again and what became of them. `--password-file` goes to this checkout's runs. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def _index(code: Path, data: Path, data_dir: Path, *, workers: int, options: tuple[str, ...] = ()) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "MMRAG_DATA_DIR": str(data_dir),
        "MMRAG_EMBEDDERS__PROFILE": "tiny-random",
        "MMRAG_INGEST__WORKERS": str(workers),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.pop("MMRAG_DATABASE__URL", None)  # the data dir's own SQLite file
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "from indexer.cli import app; app()", "index", str(data), *options],
        cwd=code, env=env, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"mmrag index failed under {code}:\n{done.stdout}\n{done.stderr}")
    return {"seconds": round(time.perf_counter() - began, 1), "terminal_lines": len(done.stderr.splitlines())}


def _reason_kind(reason: str) -> str:
    """A failure's reason without its file and page numbers, so that alike failures group."""
    text = re.sub(r"^/\S+?\.pdf: ", "", reason or "")
    text = re.sub(r"\bpage \d+\b", "page N", text)
    text = re.sub(r"\d{3,}", "#", text)
    return text[:140]


def summarize(data_dir: Path, job_id: int | None = None) -> dict[str, Any]:
    with sqlite3.connect(data_dir / "mmrag.db") as db:
        statuses = Counter(dict(db.execute("SELECT status, count(*) FROM documents GROUP BY status").fetchall()))
        pages = db.execute("SELECT count(*) FROM pages").fetchone()[0]
        failures = Counter(_reason_kind(r) for (r,) in db.execute("SELECT error FROM documents WHERE status='failed'"))
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        failed_pages: Counter[str] = Counter()
        renderers: Counter[str] = Counter()
        if "page_failures" in tables:
            failed_pages.update(_reason_kind(r) for (r,) in db.execute("SELECT reason FROM page_failures"))
            renderers.update(dict(db.execute(
                "SELECT coalesce(renderer, 'none'), count(*) FROM pages GROUP BY renderer").fetchall()))
        job = job_id or db.execute("SELECT max(id) FROM jobs").fetchone()[0]
        items = Counter(dict(db.execute(
            "SELECT state, count(*) FROM job_items WHERE job_id = ? GROUP BY state", (job,)).fetchall()))
        counts = db.execute("SELECT counts FROM jobs WHERE id = ?", (job,)).fetchone()[0]
    return {
        "documents": dict(statuses), "pages": pages, "failed_pages": sum(failed_pages.values()),
        "failures_by_reason": dict(failures.most_common()), "failed_pages_by_reason": dict(failed_pages.most_common()),
        "renderers": dict(renderers), "last_job": json.loads(counts) if counts else dict(items),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pdfs", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent / "shared" / "data" / "pdfs")
    parser.add_argument("--code", type=Path, action="append", help="a checkout to run (repeatable); default: this one")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the data dirs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rerun-with-this", action="store_true")
    parser.add_argument("--password-file", type=Path, help="for this checkout's runs (older ones have no such option)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    codes = [c.resolve() for c in (args.code or [HERE])]
    results: dict[str, Any] = {}
    mine = ("--password-file", str(args.password_file.resolve())) if args.password_file else ()
    for number, code in enumerate(codes):
        data_dir = args.work / f"run{number}"
        run = _index(code, args.data.resolve(), data_dir, workers=args.workers, options=mine if code == HERE else ())
        results[str(code)] = {**run, **summarize(data_dir)}
    if args.rerun_with_this:
        data_dir = args.work / "run0"
        run = _index(HERE, args.data.resolve(), data_dir, workers=args.workers, options=mine)
        results[f"{codes[0]} re-run by {HERE}"] = {**run, **summarize(data_dir)}
    for name, result in results.items():
        print(f"\n== {name}")  # noqa: T201 - a benchmark's report
        print(f"documents {result['documents']}  pages {result['pages']}  failed pages {result['failed_pages']}  "  # noqa: T201
              f"renderers {result['renderers']}  last job {result['last_job']}  {result['seconds']} s  "
              f"{result['terminal_lines']} lines on stderr")
        for reason, n in result["failures_by_reason"].items():
            print(f"  failed file  {n:3d}  {reason}")  # noqa: T201
        for reason, n in result["failed_pages_by_reason"].items():
            print(f"  failed page  {n:3d}  {reason}")  # noqa: T201
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0
