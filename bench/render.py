"""Render benchmark: ms/page of every registered PDF renderer (pypdfium2, pdf2image) on the shared PDF corpus."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pypdfium2.version
from rich.console import Console
from rich.table import Table

from mmrag.config import IngestSettings
from mmrag.errors import MmragError
from mmrag.ingest import PDF_RENDERERS, PdfRenderer, build_renderer, iter_pdf_pages

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pdfs"
DEFAULT_OUT = REPO / "bench" / "results" / "render.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench render", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder searched recursively for *.pdf")
    parser.add_argument("--dpi", type=float, default=150.0)
    parser.add_argument(
        "--max-pages", type=int, default=10, help="pages measured per file, so one long PDF cannot dominate"
    )
    parser.add_argument("--repeat", type=int, default=1, help="renders per page and renderer (each one is a sample)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        log.warning("skipping the render benchmark: %s does not exist (it holds the shared evaluation PDFs)", args.data)
        return 0
    names = PDF_RENDERERS.names()
    built = {name: build_renderer(name) for name in names}
    max_pixels = IngestSettings().max_pixels
    samples: dict[str, list[float]] = {name: [] for name in names}
    files: list[dict] = []
    skipped: list[dict] = []

    for path in sorted(args.data.rglob("*.pdf")):
        rel = str(path.relative_to(args.data))
        try:
            # Page sizes come from PDFium; the renderers must both open the file, or it is not a fair comparison.
            pages = list(iter_pdf_pages(path))
            for renderer in built.values():
                renderer.page_count(path)
        except (MmragError, ValueError) as exc:
            log.info("skipping %s: %s", rel, exc)
            skipped.append({"file": rel, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        per_file = {name: [] for name in names}
        for info in pages[: args.max_pages]:
            w = math.ceil(info.width_pt * args.dpi / 72)
            h = math.ceil(info.height_pt * args.dpi / 72)
            if w * h > max_pixels:
                # In production this page is rendered at a lower dpi (fit_dpi); at the benchmark's dpi it would
                # measure allocation of a giant bitmap, not rendering.
                skipped.append({"file": rel, "page": info.page_number, "reason": f"{w}x{h} px over max_pixels"})
                continue
            try:
                timings = measure_page(built, path, info.page_number, args.dpi, args.repeat)
            except (MmragError, ValueError) as exc:
                log.info("skipping %s page %d: %s", rel, info.page_number, exc)
                skipped.append({"file": rel, "page": info.page_number, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            for name, values in timings.items():
                per_file[name].extend(values)
                samples[name].extend(values)
        if any(per_file.values()):
            files.append(
                {
                    "file": rel,
                    "pages": len(pages),
                    "measured_pages": len(per_file[names[0]]) // args.repeat,
                    "median_ms": {name: round(statistics.median(v), 2) for name, v in per_file.items()},
                }
            )

    if not samples[names[0]]:
        log.warning("no page could be measured under %s", args.data)
        return 1
    summary = {name: stats(values) for name, values in samples.items()}
    result = {
        "benchmark": "render",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dpi": args.dpi,
        "data": str(args.data),
        "max_pages_per_file": args.max_pages,
        "repeat": args.repeat,
        "environment": environment(),
        "renderers": summary,
        "ratio_median_pdf2image_over_pypdfium2": round(
            summary["pdf2image"]["median_ms"] / summary["pypdfium2"]["median_ms"], 2
        ),
        "ratio_p95_pdf2image_over_pypdfium2": round(summary["pdf2image"]["p95_ms"] / summary["pypdfium2"]["p95_ms"], 2),
        "files": files,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    log.info("wrote %s", args.out)
    return 0


def measure_page(built: dict[str, PdfRenderer], path: Path, page_number: int, dpi: float, repeat: int) -> dict:
    """ms per render for each renderer; the order alternates so neither always runs on a warm page cache."""
    timings: dict[str, list[float]] = {name: [] for name in built}
    order = list(built.items())
    for i in range(repeat):
        for name, renderer in order if (page_number + i) % 2 else reversed(order):
            start = time.perf_counter()
            renderer.render(path, page_number, dpi)
            timings[name].append((time.perf_counter() - start) * 1000)
    return timings


def stats(values: list[float]) -> dict:
    arr = np.asarray(values)
    return {
        "pages": len(values),
        "median_ms": round(float(np.median(arr)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "mean_ms": round(float(arr.mean()), 2),
        "total_s": round(float(arr.sum()) / 1000, 2),
    }


def environment() -> dict:
    try:
        poppler = subprocess.run(["pdftoppm", "-v"], capture_output=True, text=True, check=False).stderr.split("\n")[0]
    except OSError:
        poppler = "not installed"
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "pypdfium2": str(pypdfium2.version.PYPDFIUM_INFO),
        "pdfium": str(pypdfium2.version.PDFIUM_INFO),
        "poppler": poppler,
    }


def print_table(result: dict) -> None:
    table = Table(title=f"PDF render at {result['dpi']:g} dpi ({len(result['files'])} files)")
    for column in ("renderer", "pages", "median ms/page", "p95 ms/page", "mean ms/page", "total s"):
        table.add_column(column, justify="left" if column == "renderer" else "right")
    for name, s in result["renderers"].items():
        table.add_row(
            name,
            str(s["pages"]),
            f"{s['median_ms']:.1f}",
            f"{s['p95_ms']:.1f}",
            f"{s['mean_ms']:.1f}",
            f"{s['total_s']:.1f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"pdf2image / pypdfium2: median x{result['ratio_median_pdf2image_over_pypdfium2']}, "
        f"p95 x{result['ratio_p95_pdf2image_over_pypdfium2']}; skipped: {len(result['skipped'])} files/pages"
    )
