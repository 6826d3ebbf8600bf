"""The JSON a CPU benchmark writes next to its table: what ran, when, where, with which arguments, and its rows."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table


def write_report(benchmark: str, args: argparse.Namespace, rows: list[dict], console: Console) -> None:
    """Write {benchmark, when, machine, args, rows} to args.out."""
    report = {
        "benchmark": benchmark,
        "when": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")


def print_rows(title: str, rows: list[dict], console: Console) -> None:
    """`rows` (dicts with the same keys) as a table, a column per key."""
    table = Table(title=title)
    for name in rows[0]:
        table.add_column(name)
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    console.print(table)


def rows_by_size(
    args: argparse.Namespace, name: str, bench_size: Callable[[argparse.Namespace, Path, int], dict], console: Console
) -> list[dict]:
    """bench_size(args, work dir, size) for each of args.sizes, each row printed as it comes; the work dir is
    args.work_dir, or a temporary one removed after."""
    work = args.work_dir or Path(tempfile.mkdtemp(prefix=f"mmrag-bench-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in args.sizes:
            rows.append(bench_size(args, work, size))
            console.print(rows[-1])
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return rows
