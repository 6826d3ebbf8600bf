"""The web page's own weight and speed, in a real browser: Debian's Chromium (through Playwright) on a live
`mmrag serve` app over a collection of --pages pages written straight into SQL (bench.query.fill_collection; every
page shows one shared stored image), BM25 the retriever (no model weights here).

    python -m bench ui [--pages 10000] [--queries 30]

Reports the bytes the first load transfers (the page and its files), and per query, from the search's submit to
the first results painted (the grid's first card inserted, then two animation frames) and to the first thumbnail
shown: p50 and p95. Writes bench/results/ui.json.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from sqlalchemy import update

from bench.query import fill_collection
from bench.report import print_rows, write_report
from bench.serving import live_server
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.config import DatabaseSettings, IngestSettings, Settings
from mmrag.retrievers import Embedders
from mmrag.services import build_services
from mmrag.store.db import refresh_statistics
from mmrag.store.models import Page

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "ui.json"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Submits a query in the page and resolves with [ms to the first results painted, ms to the first thumbnail shown].
MEASURE = """async (query) => {
  const results = document.getElementById("results");
  const input = document.getElementById("query");
  const painted = new Promise((resolve) => {
    new MutationObserver((_, observer) => {
      if (results.children.length) {
        observer.disconnect();
        requestAnimationFrame(() => requestAnimationFrame(() => resolve(performance.now())));
      }
    }).observe(results, { childList: true });
  });
  const thumbnail = new Promise((resolve) => {
    new MutationObserver((_, observer) => {
      const img = results.querySelector("img[src^='blob:']");
      if (img) {
        observer.disconnect();
        (img.complete ? Promise.resolve() : new Promise((r) => img.addEventListener("load", r, { once: true })))
          .then(() => requestAnimationFrame(() => resolve(performance.now())));
      }
    }).observe(results, { subtree: true, attributes: true, attributeFilter: ["src"], childList: true });
  });
  input.value = query;
  const began = performance.now();
  document.getElementById("search-form").requestSubmit();
  const [first, shown] = await Promise.all([painted, thumbnail]);
  return [first - began, shown - began];
}"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench ui", description=__doc__)
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--words-per-page", type=int, default=150)
    parser.add_argument("--vocabulary", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    from api.app import create_app

    args = parse_args(argv or [])
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    try:
        settings = Settings(data_dir=work / "data", database=DatabaseSettings(url=f"sqlite:///{work / 'ui.db'}"),
                            ingest=IngestSettings(workers=0, ocr="never"))
        services = build_services(settings, embedders=Embedders())  # no model: BM25 alone
        texts = fill_collection(services, args.pages, args.words_per_page, args.vocabulary)
        picture = io.BytesIO()
        Image.new("RGB", (1240, 1754), (250, 250, 250)).save(picture, format="JPEG", quality=90)
        (work / "data" / "pages").mkdir(parents=True, exist_ok=True)
        (work / "data" / "pages" / "shared.jpg").write_bytes(picture.getvalue())
        with services.engine.begin() as connection:
            connection.execute(update(Page).values(image_path="pages/shared.jpg"))
        refresh_statistics(services.engine)
        services.collections.derived.lexical(1, writer=True)
        rng = np.random.default_rng(1)
        queries = [" ".join(rng.choice(texts[int(rng.integers(args.pages))].split(), 3)) for _ in range(args.queries)]
        app = create_app(services=services, answerer=ExtractiveAnswerer())
        with live_server(app) as base_url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            sizes: list[int] = []
            page.on("response", lambda r: sizes.append(len(r.body())) if r.url == base_url + "/"
                    or r.url.startswith(base_url + "/ui/") else None)
            page.goto(base_url + "/")
            page.wait_for_load_state("load")
            page.evaluate(MEASURE, queries[0])  # warm: the first query loads the BM25 index
            first, thumbnail = [], []
            for query in queries:
                painted, shown = page.evaluate(MEASURE, query)
                first.append(painted)
                thumbnail.append(shown)
            browser.close()
        services.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row = {
        "pages": args.pages, "queries": args.queries, "first_load_bytes": sum(sizes),
        "results_painted_p50_ms": round(float(np.percentile(first, 50)), 1),
        "results_painted_p95_ms": round(float(np.percentile(first, 95)), 1),
        "thumbnail_shown_p50_ms": round(float(np.percentile(thumbnail, 50)), 1),
        "thumbnail_shown_p95_ms": round(float(np.percentile(thumbnail, 95)), 1),
    }
    print_rows("the web page in Chromium: first load, and a search's results painted (BM25, SQLite)", [row], console)
    write_report("ui", args, [row], console)
    return 0
