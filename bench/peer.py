"""Peer benchmark: byaldi and mmrag on the same corpus and the same (tiny random-init ColQwen2) model, side by side.

`python -m bench peer --byaldi-python /path/to/byaldi-venv/bin/python`: byaldi runs in its own virtual
environment (it is not one of our dependencies; install it there with `pip install byaldi torch==2.9.1
torchvision==0.24.1`). Both index the same folder (JPEG photos + a PDF) and answer the same 100 queries; the
table shows index time, query time and their sum, and mmrag's speed-up. The model is a tiny random-init
ColQwen2 saved to a checkpoint directory both load: this measures the systems around the model, not quality.
byaldi loads it in bfloat16 (its fixed choice), mmrag in float32 on CPU (ours).

On a GPU machine, `--device cuda --model colqwen2-2b-shape --pdf-pages 0` runs both on a real-size random-init
ColQwen2 (Qwen2-VL-2B shape, bfloat16 for both) over JPEGs only: byaldi renders PDFs with poppler, which that
machine lacks. Install byaldi there from wheels (byaldi, srsly, catalogue) beside mmrag's and pass
`--byaldi-python python3`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bench.index import make_corpus
from mmrag.config import DatabaseSettings, EmbedderSettings, IngestSettings, Settings
from mmrag.embedders.colpali import load_colpali
from mmrag.embedders.tiny import save_tiny_colqwen2
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.services import build_services

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "peer.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench peer", description=__doc__)
    parser.add_argument("--byaldi-python", type=Path, required=True, help="python of a venv with byaldi installed")
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--pdf-pages", type=int, default=20)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for both systems")
    parser.add_argument("--model", choices=["tiny", "colqwen2-2b-shape"], default="tiny")
    parser.add_argument("--batch", type=int, default=4, help="mmrag's embedding batch (byaldi embeds one at a time)")
    parser.add_argument("--distinct-photos", type=int, default=0,
                        help="draw only this many photos; the rest are byte-distinct copies (0: draw all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def save_model(args: argparse.Namespace, work: Path) -> Path:
    """The checkpoint both systems load. byaldi picks its model class by substring of the path: say colqwen2."""
    if args.model == "tiny":
        return save_tiny_colqwen2(work / "tiny-colqwen2")
    from bench.index import build_colpali

    directory = work / "colqwen2-2b-shape"
    embedder = build_colpali(args.batch, args.device)
    embedder.model.save_pretrained(directory)
    embedder.processor.save_pretrained(directory)
    del embedder
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return directory


def run_mmrag(model_dir: Path, corpus: Path, queries: list[str], work: Path, args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    colpali = load_colpali(str(model_dir), device=args.device, batch_size=args.batch)
    load_s = time.perf_counter() - began
    settings = Settings(
        data_dir=work / "mmrag-data",
        database=DatabaseSettings(url=f"sqlite:///{work / 'mmrag.db'}"),
        embedders=EmbedderSettings(profile="default"),
        ingest=IngestSettings(workers=args.workers, ocr="never"),
        batch_pages=4 * args.batch,  # several forwards per commit: the next batch is staged during each
    )
    embedders = Embedders(colpali=colpali, off={"clip": "peer bench", "text": "peer bench"}, meaningless=True)
    services = build_services(settings, embedders=embedders)
    try:
        began = time.perf_counter()
        report = run_index(services, [corpus])
        index_s = time.perf_counter() - began
        store = services.collections.stores(1).get("colpali")
        began = time.perf_counter()
        for query in queries:
            store.search(colpali.embed_queries([query])[0], 10)
        query_s = time.perf_counter() - began
    finally:
        services.close()
    return {"load_s": load_s, "index_s": index_s, "query_s": query_s, "pages": report.pages_indexed}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="mmrag-bench-peer-"))
    try:
        corpus = work / "corpus"
        make_corpus(corpus, args.images, args.pdf_pages, flat=True, distinct_photos=args.distinct_photos)
        model_dir = save_model(args, work)
        queries = [f"query {i}: total amount on the invoice page {i % 17}" for i in range(args.queries)]
        queries_file = work / "queries.json"
        queries_file.write_text(json.dumps(queries))
        proc = subprocess.run(
            [str(args.byaldi_python), str(REPO / "bench" / "byaldi_peer_run.py"), str(model_dir), str(corpus),
             str(queries_file), str(work / "byaldi-index"), args.device],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            console.print(f"[red]byaldi failed:[/]\n{proc.stderr[-3000:]}")
            return 1
        byaldi = json.loads(proc.stdout.strip().splitlines()[-1])
        ours = run_mmrag(model_dir, corpus, queries, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"byaldi vs mmrag · {args.model} random-init ColQwen2 · {args.images} JPEGs + "
                        f"{args.pdf_pages} PDF pages · {args.queries} queries · {args.device}")
    for column in ("system", "pages", "index s", "queries s", "index + queries s"):
        table.add_column(column, justify="right")
    for name, row in (("byaldi 0.0.7", byaldi), ("mmrag", ours)):
        row["total_s"] = row["index_s"] + row["query_s"]
        table.add_row(name, str(row["pages"]), f"{row['index_s']:.1f}", f"{row['query_s']:.1f}", f"{row['total_s']:.1f}")
    speedup = byaldi["total_s"] / ours["total_s"]
    table.add_row("speed-up (byaldi / mmrag)", "", f"{byaldi['index_s'] / ours['index_s']:.2f}",
                  f"{byaldi['query_s'] / ours['query_s']:.2f}", f"{speedup:.2f}")
    console.print(table)
    report = {
        "benchmark": "peer",
        "when": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "byaldi": byaldi,
        "mmrag": ours,
        "speedup_total": speedup,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")
    return 0
