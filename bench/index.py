"""Indexing benchmark: end-to-end bulk indexing throughput next to the raw model forward on the same model and batch.

`python -m bench index` builds a corpus of JPEG photos and PDF pages, then measures, side by side in one run:
  raw      the model's forward alone on pre-decoded, pre-processed tensors (the ceiling),
  e2e      `mmrag.pipeline.run_index` from files: sniff, hash, decode/render in worker processes, store page
           images, preprocess, forward, FAISS + SQL writes,
and prints their ratio. The model is real-size but RANDOM-INIT (open_clip ViT-B-32 built without weights):
throughput only, never quality. Results go to bench/results/index.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from mmrag.config import DatabaseSettings, EmbedderSettings, IngestSettings, Settings
from mmrag.embedders.clip import OpenClipEmbedder
from mmrag.pipeline import run_index
from mmrag.services import Embedders, build_services

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "index.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench index", description=__doc__)
    parser.add_argument("--images", type=int, default=256, help="JPEG photos (640x480) in the corpus")
    parser.add_argument("--pdf-pages", type=int, default=64, help="PDF pages (A4, text) in the corpus")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture, random-init")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="decode/render worker processes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def make_corpus(root: Path, images: int, pdf_pages: int, *, flat: bool = False) -> None:
    """JPEG photos in photos/ (or beside the PDF when `flat`: byaldi does not walk sub-folders) and one PDF."""
    from fpdf import FPDF

    rng = np.random.default_rng(0)
    photos = root if flat else root / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        draw.rectangle([40 + i % 200, 40, 300, 300], fill=(i % 255, 80, 160))
        image.save(photos / f"{i:05d}.jpg", quality=85)
    pdf = FPDF(format="A4")
    pdf.set_font("helvetica", size=11)
    for page in range(pdf_pages):
        pdf.add_page()
        pdf.multi_cell(0, 6, f"Page {page}. " + "Benchmark text for a realistic page layout. " * 60)
    pdf.output(str(root / "document.pdf"))


def build_embedder(model_name: str, batch: int) -> OpenClipEmbedder:
    import open_clip

    # Bench only: real architecture, random weights, labelled as such everywhere it is reported.
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    return OpenClipEmbedder(
        model, preprocess, open_clip.get_tokenizer(model_name), model_id=f"bench-random-init:{model_name}",
        revision="random-init", batch_size=batch, meaningless=True,
    )


def raw_forward(embedder: OpenClipEmbedder, corpus: Path, batch: int, n: int) -> float:
    """Images per second of the model forward alone, on tensors decoded and preprocessed beforehand."""
    files = sorted((corpus / "photos").glob("*.jpg"))
    tensors = torch.stack([embedder.preprocess(Image.open(f).convert("RGB")) for f in files])
    tensors = tensors.to(embedder.device)
    with torch.inference_mode():
        embedder.model.encode_image(tensors[:batch])  # warm-up
        began = time.perf_counter()
        done = 0
        while done < n:
            chunk = tensors[done % len(tensors) : done % len(tensors) + batch]
            embedder.model.encode_image(chunk)
            done += len(chunk)
        if embedder.device.startswith("cuda"):
            torch.cuda.synchronize()
    return done / (time.perf_counter() - began)


def end_to_end(embedder: OpenClipEmbedder, corpus: Path, work: Path, args: argparse.Namespace) -> dict:
    settings = Settings(
        data_dir=work / "data",
        database=DatabaseSettings(url=f"sqlite:///{work / 'bench.db'}"),
        embedders=EmbedderSettings(profile="default"),
        ingest=IngestSettings(workers=args.workers, ocr="never"),
        batch_pages=args.batch,
    )
    embedders = Embedders(clip=embedder, off={"colpali": "bench: CLIP only", "text": "bench: CLIP only"},
                          meaningless=True)
    services = build_services(settings, embedders=embedders)
    try:
        report = run_index(services, [corpus])
    finally:
        services.close()
    return {"pages": report.pages_indexed, "seconds": report.seconds, "pages_per_s": report.pages_per_second,
            "failed": report.counts["failed"]}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="mmrag-bench-index-"))
    try:
        corpus = work / "corpus"
        make_corpus(corpus, args.images, args.pdf_pages)
        embedder = build_embedder(args.model, args.batch)
        raw = raw_forward(embedder, corpus, args.batch, max(args.images + args.pdf_pages, args.batch * 4))
        e2e = end_to_end(embedder, corpus, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = e2e["pages_per_s"] / raw
    table = Table(title=f"bulk indexing vs raw forward · {args.model} random-init · batch {args.batch} · "
                        f"{embedder.device} · {args.workers} workers")
    for column in ("stage", "pages/s", "pages", "seconds"):
        table.add_column(column, justify="right")
    table.add_row("raw forward (model only)", f"{raw:.1f}", "", "")
    table.add_row("end-to-end (files → FAISS + SQL)", f"{e2e['pages_per_s']:.1f}", str(e2e["pages"]),
                  f"{e2e['seconds']:.1f}")
    table.add_row("ratio end-to-end / raw", f"{ratio:.2f}", "", "")
    console.print(table)
    report = {
        "benchmark": "index",
        "when": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "device": embedder.device, "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": f"{args.model} (random-init, throughput only)",
        "raw_images_per_s": raw,
        "end_to_end": e2e,
        "ratio": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")
    return 0
