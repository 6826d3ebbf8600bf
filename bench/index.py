"""Indexing benchmark: end-to-end bulk indexing throughput next to the raw model forward on the same model and batch.

`python -m bench index --kind clip|colpali` builds a corpus (JPEG photos for clip, multi-page PDFs for colpali),
then measures, side by side in one run, on one device:
  raw      the model's forward alone on inputs decoded, preprocessed and moved to the device beforehand (the ceiling),
  e2e      `mmrag.indexing.run_index` from files: sniff, hash, decode/render in worker processes, store page
           images, preprocess, forward, store writes (FAISS / multi-vector) + SQL,
and prints their ratio. With `--ray [ADDRESS]` the same job runs a second time on Ray (mmrag.indexing.distributed:
load tasks, the model in an actor; a local cluster of this machine's cores unless ADDRESS names one), on the same
corpus in its own database, and the table gives Ray's throughput over the in-process job's and the driver's CPU per
page. The models are real-size but RANDOM-INIT (open_clip ViT-B-32 built without weights;
ColQwen2 on a Qwen2-VL-2B-shaped config with an in-memory byte-level tokenizer): throughput only, never quality.
`--tiny` swaps in the tiny random-init models of mmrag.embedders.tiny so the same code path runs on a CPU in
seconds. Results go to bench/results/index-KIND.json (or --out).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import multiprocessing
import os
import platform
import pstats
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from mmrag.config import DatabaseSettings, EmbedderSettings, IngestSettings, RaySettings, Settings
from mmrag.device import resolve_device
from mmrag.embedders.clip import OpenClipEmbedder
from mmrag.embedders.colpali import ColPaliEmbedder
from mmrag.ingest.results import LoadedFile, StoredPage
from mmrag.ingest.worker import load_files, page_image_path
from mmrag.indexing import JobStages, input_specs, run_index, start_worker_server
from mmrag.retrievers import Embedders
from mmrag.services import build_services

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def default_workers() -> int:
    # Leave two cores to the main process (its result handling, SQL, and the embedding thread).
    return max(1, (os.cpu_count() or 2) - 2)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench index", description=__doc__)
    parser.add_argument("--kind", choices=("clip", "colpali"), default="clip")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny random-init models (CPU smoke runs)")
    parser.add_argument("--noop", action="store_true",
                        help="clip: an embedder whose forward is free (ViT-B-32 inputs, constant vectors): "
                             "the rate the pipeline alone can feed")
    parser.add_argument("--replay-workers", action="store_true",
                        help="clip --noop: workers hand back one decoded photo's inputs for every file, without "
                             "reading or decoding: the job runs at this process's own ceiling")
    parser.add_argument("--rerun", action="store_true",
                        help="then run the same job again over the unchanged corpus, and once more after touching "
                             "every file (new mtimes, same bytes): what a re-run costs per file")
    parser.add_argument("--images", type=int, default=256, help="clip: JPEG photos (640x480) in the corpus")
    parser.add_argument("--distinct-photos", type=int, default=0,
                        help="draw only this many photos; the rest are byte-distinct copies (0: draw all)")
    parser.add_argument("--pdf-pages", type=int, default=64, help="PDF pages (A4, text) in the corpus")
    parser.add_argument("--pages-per-pdf", type=int, default=8, help="pages of each PDF file")
    parser.add_argument("--model", default="ViT-B-32", help="clip: open_clip architecture, random-init")
    parser.add_argument("--batch", type=int, default=None, help="pages per forward (default: 512 clip, 16 colpali)")
    parser.add_argument("--commit-pages", type=int, default=None,
                        help="pages per commit of vectors + SQL (default: 4 x --batch)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="decode/render worker processes")
    parser.add_argument("--colpali-inputs-in-workers", choices=("auto", "always", "never"), default="auto",
                        help="IngestSettings.colpali_inputs_in_workers (auto: on CUDA only)")
    parser.add_argument("--raw-pages", type=int, default=None, help="pages the raw forward runs (default: corpus)")
    parser.add_argument("--transfer", choices=("shm", "pipe", "both"), default="shm",
                        help="how workers hand inputs back (IngestSettings.shared_memory); both: one job each, "
                             "side by side on the same corpus")
    parser.add_argument("--worker-pages", type=int, default=200,
                        help="pages one worker's cost per page is measured on, in this process (0: skip)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write a cProfile of the end-to-end run's job thread here (and print its top entries)")
    parser.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                        help="also run the job on Ray (a local cluster, or ADDRESS) and compare it with the "
                             "in-process job")
    parser.add_argument("--ray-actors", type=int, default=1, help="embed actors on Ray (settings.ray.actors)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = 512 if args.kind == "clip" else 16
    if args.commit_pages is None:
        # Each commit flushes the stores (the FAISS file is rewritten whole): several forwards per commit.
        args.commit_pages = args.batch * 4
    if args.out is None:
        args.out = RESULTS / f"index-{args.kind}{'-tiny' if args.tiny else ''}.json"
    if args.kind == "clip" and args.images == 0:
        parser.error("--kind clip needs --images > 0")
    if args.replay_workers and not (args.kind == "clip" and args.noop):
        parser.error("--replay-workers needs --kind clip --noop (replayed inputs are all one photo's)")
    return args


# --- the corpus ------------------------------------------------------------------------------------------------


def _photo(i: int) -> Image.Image:
    """A 640x480 picture with photo-like statistics (smooth gradients, shapes, mild grain): JPEG sizes near real
    photos (tens of KB), where uniform noise would be ~3x larger and slower to decode than any camera picture."""
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    a, b, c = rng.uniform(0.05, 0.6, 3)
    base = np.stack([(x * a + y * b) % 256, (y * c + i) % 256, (x * b + 40 * a) % 256], axis=-1)
    base += rng.normal(0, 5, (480, 640, 1)).astype(np.float32)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(10):
        x0, y0 = int(rng.integers(0, 600)), int(rng.integers(0, 440))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        draw.ellipse([x0, y0, x0 + int(rng.integers(10, 220)), y0 + int(rng.integers(10, 220))], fill=colour)
    return image


def _write_photo(task: tuple[int, str]) -> int:
    i, path = task
    _photo(i).save(path, quality=85)
    return os.path.getsize(path)


def _copy_photo(task: tuple[int, str, str]) -> int:
    """A copy of an earlier photo with a JPEG comment (COM segment) naming it: other bytes (its own sha256, so no
    duplicate detection), the same pixels and decode cost. Writing one takes microseconds, drawing one ~10 ms."""
    i, source, path = task
    data = Path(source).read_bytes()
    comment = f"mmrag bench copy {i}".encode()
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    Path(path).write_bytes(data[:2] + segment + data[2:])  # right after the SOI marker
    return len(data) + len(segment)


def _write_pdf(task: tuple[int, int, str]) -> None:
    from fpdf import FPDF

    index, pages, path = task
    pdf = FPDF(format="A4")
    pdf.set_font("helvetica", size=11)
    for page in range(pages):
        pdf.add_page()
        pdf.set_fill_color((index * 37) % 255, (page * 53) % 255, 180)
        pdf.rect(20, 20, 60 + page % 50, 30, style="F")
        pdf.multi_cell(0, 6, f"Document {index}, page {page}. " + "Benchmark text for a realistic page layout. " * 60)
    pdf.output(path)


def make_corpus(
    root: Path, images: int, pdf_pages: int, *, pages_per_pdf: int = 8, flat: bool = False, distinct_photos: int = 0
) -> dict:
    """JPEG photos in photos/ (or beside the PDFs when `flat`: byaldi does not walk sub-folders) and PDFs of
    `pages_per_pdf` pages in pdfs/, written by a process per core. With `distinct_photos`, only that many are
    drawn and the rest are byte-distinct copies of them (_copy_photo): a 30k-photo corpus in seconds."""
    photos = root if flat else root / "photos"
    pdfs = root if flat else root / "pdfs"
    photos.mkdir(parents=True, exist_ok=True)
    pdfs.mkdir(parents=True, exist_ok=True)
    pdf_tasks = []
    for index, start in enumerate(range(0, pdf_pages, pages_per_pdf)):
        pdf_tasks.append((index, min(pages_per_pdf, pdf_pages - start), str(pdfs / f"document-{index:04d}.pdf")))
    began = time.perf_counter()
    drawn = min(images, distinct_photos) if distinct_photos > 0 else images
    names = [str(photos / f"{i:05d}.jpg") for i in range(images)]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        sizes = pool.map(_write_photo, [(i, names[i]) for i in range(drawn)], chunksize=64)
        sizes += pool.map(_copy_photo, [(i, names[i % drawn], names[i]) for i in range(drawn, images)], chunksize=256)
        pool.map(_write_pdf, pdf_tasks)
    return {
        "images": images,
        "distinct_photos": drawn,
        "mean_jpeg_bytes": float(np.mean(sizes)) if sizes else 0.0,
        "pdf_files": len(pdf_tasks),
        "pdf_pages": pdf_pages,
        "seconds_to_generate": time.perf_counter() - began,
    }


# --- the models ------------------------------------------------------------------------------------------------


def build_embedder(model_name: str, batch: int, device: str = "auto", *, tiny: bool = False) -> OpenClipEmbedder:
    import open_clip

    if tiny:
        from mmrag.embedders.tiny import build_tiny_clip_embedder

        return build_tiny_clip_embedder(device=device, batch_size=batch)
    # Bench only: real architecture, random weights, labelled as such everywhere it is reported.
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    return OpenClipEmbedder(
        model, preprocess, open_clip.get_tokenizer(model_name), model_id=f"bench-random-init:{model_name}",
        revision="random-init", device=device, batch_size=batch, meaningless=True,
    )


# Qwen2-VL-2B's shape (the base of vidore/colqwen2-v1.0): 1.5B language model, 675M vision tower.
QWEN2_VL_2B_TEXT = {
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
}
QWEN2_VL_2B_VISION = {
    "depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2,
}
COLQWEN2_MAX_PIXELS = 768 * 28 * 28  # vidore/colqwen2-v1.0's processor: at most 768 visual tokens per page


def build_colpali(batch: int, device: str, *, tiny: bool = False) -> ColPaliEmbedder:
    """ColQwen2 (colpali-engine) on a Qwen2-VL-2B-shaped config, random-init, built without any download; on CUDA
    built in place on the device in bfloat16, so 2.2B parameters initialise in seconds."""
    device = resolve_device(device)
    if tiny:
        from mmrag.embedders.tiny import build_tiny_colpali_embedder

        return build_tiny_colpali_embedder(device=device, batch_size=batch)
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from mmrag.embedders.tiny import QWEN2_SPECIAL_TOKENS, _byte_level_tokenizer

    tokenizer = _byte_level_tokenizer(QWEN2_SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>")
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            **QWEN2_VL_2B_TEXT,
            "pad_token_id": token_id("<|endoftext|>"),
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"),
        },
        vision_config=QWEN2_VL_2B_VISION,
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = ColQwen2(config).eval()
    finally:
        torch.set_default_dtype(previous)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=COLQWEN2_MAX_PIXELS)
    processor = ColQwen2Processor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
    )
    return ColPaliEmbedder(
        model, processor, model_id="bench-random-init:colqwen2-2b-shape", revision="random-init", device=device,
        batch_size=batch, meaningless=True,
    )


class NoopClip:
    """Fits ImageEmbedder and takes the workers' ViT-B-32 inputs, but its forward costs nothing: the end-to-end
    rate with it is the ceiling the pipeline (workers, main process, SQL, FAISS) can feed any model."""

    meaningless = True

    def __init__(self, inner: OpenClipEmbedder) -> None:
        self.inner = inner
        self.device = "cpu"
        self.model_id = "bench-noop:ViT-B-32-inputs"
        self.revision = "noop"
        self.dim = inner.dim
        self._vector = np.full(inner.dim, 1.0 / np.sqrt(inner.dim), dtype=np.float32)

    def input_spec(self) -> Any:
        return self.inner.input_spec()

    def embed_inputs(self, pixels: list[np.ndarray]) -> np.ndarray:
        return np.tile(self._vector, (len(pixels), 1))

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return np.tile(self._vector, (len(images), 1))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.tile(self._vector, (len(texts), 1))


_REPLAYED: dict[Any, Any] = {}  # per worker process: each input spec's input, made from the first photo it saw


def replayed_photo(
    path: str, sha256: str, settings: IngestSettings, data_dir: str, inputs: tuple[Any, ...] = (),
    pages: tuple[int, int] | None = None,
) -> LoadedFile:
    """load_file for --replay-workers: a photo's result without reading or decoding it. Each spec's input is made
    once per worker, from the first photo, and handed back for every photo after; no page image is written (the
    no-op forward never reads one). The main process receives what real workers send (a LoadedFile, inputs through
    shared memory) while the workers cost next to nothing, so the job runs at this process's own ceiling: the
    rate it could take from any number of workers on a machine with this CPU."""
    for spec in inputs:
        if spec not in _REPLAYED:
            _REPLAYED[spec] = spec.from_jpeg(Path(path).read_bytes())
    page = StoredPage(1, 640, 480, "", "none", page_image_path(sha256, 1), tuple(_REPLAYED[spec] for spec in inputs))
    return LoadedFile(path, sha256, "image", "image/jpeg", [page])


# --- measurements ----------------------------------------------------------------------------------------------


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def raw_forward_clip(embedder: OpenClipEmbedder, corpus: Path, batch: int, n: int) -> float:
    """Images per second of the model forward alone (same autocast as the pipeline), on tensors decoded,
    preprocessed and moved to the device beforehand."""
    files = sorted((corpus / "photos").glob("*.jpg"))[: max(batch, 1024)]
    tensors = torch.stack([embedder.preprocess(Image.open(f).convert("RGB")) for f in files])
    while len(tensors) < batch:
        tensors = torch.cat([tensors, tensors])
    tensors = tensors.to(embedder.device)
    with torch.inference_mode(), embedder._autocast():
        for _ in range(3):
            embedder.model.encode_image(tensors[:batch])  # warm-up (cuDNN autotuning, allocator)
        _synchronize(embedder.device)
        began = time.perf_counter()
        done = 0
        while done < n:
            start = done % (len(tensors) - batch + 1)
            embedder.model.encode_image(tensors[start : start + batch])
            done += batch
        _synchronize(embedder.device)
    return done / (time.perf_counter() - began)


def raw_forward_colpali(embedder: ColPaliEmbedder, corpus: Path, batch: int, n: int) -> float:
    """Pages per second of the model forward alone, on processor outputs already on the device (same batch)."""
    from mmrag.ingest import iter_pages
    from mmrag.ingest.discover import describe

    pdf = sorted((corpus / "pdfs").glob("*.pdf"))[0]
    settings = IngestSettings(ocr="never")
    pages = [page.image for page in iter_pages(describe(pdf), settings)]
    while len(pages) < batch:
        pages = pages + pages
    inputs = embedder.processor.process_images(pages[:batch])
    dtype = embedder.model.dtype
    tensors = {k: v.to(embedder.device, dtype=dtype) if v.is_floating_point() else v.to(embedder.device)
               for k, v in inputs.items()}
    with torch.inference_mode():
        for _ in range(2):
            embedder.model(**tensors)
        _synchronize(embedder.device)
        began = time.perf_counter()
        done = 0
        while done < n:
            embedder.model(**tensors)
            done += batch
        _synchronize(embedder.device)
    return done / (time.perf_counter() - began)


class Timeline:
    """A run_index Progress that notes when pages arrive from the workers: the first page tells the start-up cost
    (worker processes starting and importing, model warm-up), the rest the steady-state feed rate."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.first: float | None = None
        self.last = self.began
        self.pages = 0

    def start(self, total_files: int) -> None:
        pass

    def advance(self, files: int = 1, pages: int = 0) -> None:
        if pages:
            now = time.perf_counter()
            self.first = self.first or now
            self.last = now
            self.pages += pages


def job_settings(work: Path, args: argparse.Namespace, *, transfer: str = "shm") -> Settings:
    settings = Settings(
        data_dir=work / "data",
        database=DatabaseSettings(url=f"sqlite:///{work / 'bench.db'}"),
        embedders=EmbedderSettings(profile="default", device=args.device),
        ingest=IngestSettings(workers=args.workers, ocr="never", shared_memory=transfer == "shm",
                              colpali_inputs_in_workers=args.colpali_inputs_in_workers),
        batch_pages=args.commit_pages,
    )
    settings.embedders.colpali.enabled = args.kind == "colpali"  # workers import colpali-engine only for it
    return settings


def worker_cost(embedders: Embedders, settings: Settings, corpus: Path, work: Path, pages: int) -> dict[str, float]:
    """One worker's time per page, measured here: load_files (sniff, decode or render, store the page image, make
    the model inputs) on the corpus's first files, one torch thread, as in a worker. `workers` of them can feed
    at most workers / that many pages per second, whatever the main process and the device do."""
    specs = tuple(input_specs(embedders, settings, settings.data_dir).values())
    photos = sorted((corpus / "photos").glob("*.jpg"))
    files = photos[:pages] if photos else sorted((corpus / "pdfs").glob("*.pdf"))[: max(1, pages // 8)]
    listed = [(str(f), hashlib.sha256(f.read_bytes()).hexdigest()) for f in files]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_files(listed[:2], settings.ingest, str(work / "worker-warm-up"), specs)  # imports, first-call costs
        began = time.process_time()
        results = load_files(listed, settings.ingest, str(work / "worker-cost"), specs)
        seconds = time.process_time() - began
    finally:
        torch.set_num_threads(threads)
    done = sum(len(r.pages) for r in results if isinstance(r, LoadedFile))
    ms = 1000 * seconds / max(1, done)
    return {"pages": done, "ms_per_page": ms, "workers_ceiling_pages_per_s": settings.ingest.workers * 1000 / ms}


def actor_model(settings: Settings, retriever: str, *, kind: str, model: str, batch: int, device: str, tiny: bool,
                noop: bool) -> Any:
    """What a Ray embed actor loads: the random-init model this benchmark builds for the in-process job."""
    if retriever == "clip" and kind == "clip":
        embedder = build_embedder(model, batch, device, tiny=tiny)
        return NoopClip(embedder) if noop else embedder
    if retriever == "colpali" and kind == "colpali":
        return build_colpali(batch, device, tiny=tiny)
    raise ValueError(f"bench index {kind} has no {retriever} model")


def ray_stages_for(settings: Settings, args: argparse.Namespace) -> JobStages:
    """The Ray job's stages, its actors loading this benchmark's models."""
    from mmrag.indexing.distributed import RayEmbedding, ray_stages

    load = partial(actor_model, kind=args.kind, model=args.model, batch=args.batch, device=args.device,
                   tiny=args.tiny, noop=args.noop)
    overrides: dict[str, Any] = {"embedding": partial(RayEmbedding, load=load)}
    if args.replay_workers:
        overrides["load_file"] = replayed_photo
    return ray_stages(settings, **overrides)


def end_to_end(embedders: Embedders, settings: Settings, corpus: Path, args: argparse.Namespace,
               stages: JobStages | None = None) -> dict[str, Any]:
    services = build_services(settings, embedders=embedders)
    timeline = Timeline()
    profiler = cProfile.Profile() if args.profile else None
    try:
        if profiler is not None:
            profiler.enable()  # the job's own thread only: workers, embed and write threads are not in it
        # what a worker runs per file, swapped as the tests swap it
        if stages is None and args.replay_workers:
            stages = JobStages(load_file=replayed_photo)
        report = run_index(services, [corpus], progress=timeline, stages=stages)
        rerun = None
        if args.rerun:
            database_bytes = [_database_bytes(settings)]
            began = time.perf_counter()
            again = run_index(services, [corpus])  # nothing changed: every file should come back unchanged
            rerun = {"seconds": time.perf_counter() - began, "unchanged": again.counts["unchanged"],
                     "indexed": again.counts["indexed"]}
            database_bytes.append(_database_bytes(settings))
            later = time.time() + 60
            files = [path for path in corpus.rglob("*") if path.is_file()]
            for path in files:
                os.utime(path, (later, later))  # touched: new mtimes, the same bytes (a folder copied back)
            began = time.perf_counter()
            touched = run_index(services, [corpus])
            rerun.update(touched_seconds=time.perf_counter() - began, touched_files=len(files),
                         touched_unchanged=touched.counts["unchanged"],
                         touched_indexed=touched.counts["indexed"], touched_duplicate=touched.counts["duplicate"])
            database_bytes.append(_database_bytes(settings))
            # What SQL keeps of a run over a folder that did not change: a folder re-indexed daily grows the database
            # by this much per file per day, for good. The second run's growth: the first may leave free space in
            # the file (a job's items, deleted when it is done) that every later run reuses.
            rerun["database_bytes"] = database_bytes
            rerun["database_bytes_per_file_per_rerun"] = (database_bytes[-1] - database_bytes[-2]) / len(files)
    finally:
        if profiler is not None:
            profiler.disable()
            args.profile.parent.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(str(args.profile))
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        services.close()
    first = (timeline.first or timeline.began) - timeline.began
    steady_span = timeline.last - (timeline.first or timeline.last)
    return {"pages": report.pages_indexed, "seconds": report.seconds, "pages_per_s": report.pages_per_second,
            "seconds_to_first_page": first,
            # pages after the first, from the first page's arrival to the last one's (arrival from the workers;
            # the last batch's forward and commit come after)
            "steady_pages_per_s": (timeline.pages - 1) / steady_span if steady_span > 0 else 0.0,
            "stages": report.stages, "failed": report.counts["failed"], "failures": report.failures[:5],
            "rerun": rerun}


def _ray_cluster() -> dict[str, Any]:
    """The cluster the Ray run used: nodes, CPUs, GPUs (it is still connected)."""
    import ray

    resources = ray.cluster_resources()
    return {"nodes": sum(1 for node in ray.nodes() if node["Alive"]), "CPU": resources.get("CPU", 0.0),
            "GPU": resources.get("GPU", 0.0)}


def _database_bytes(settings: Settings) -> int:
    """The SQLite database's size on disk, its write-ahead log checkpointed into it first."""
    path = Path(settings.database.url.removeprefix("sqlite:///"))
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def _busy_ms(run: dict[str, Any]) -> float:
    """The job thread's milliseconds per page spent neither waiting on a worker nor on the embed queue: handing files
    out, taking results in, SQL. 1000 / this is the rate that thread could keep up with any number of workers and
    any device on this CPU; past it, adding cores stops helping."""
    stages = run["stages"]
    busy = stages.get("files", 0.0) - stages.get("waiting_on_workers", 0.0) - stages.get("waiting_on_embed", 0.0)
    return 1000 * busy / max(1, run["pages"])


def _cpu_ms(run: dict[str, Any]) -> float:
    """This process's CPU milliseconds per page in an end-to-end run (all its threads; workers not included)."""
    return 1000 * run["stages"].get("process_cpu", 0.0) / max(1, run["pages"])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="mmrag-bench-index-"))
    try:
        corpus = work / "corpus"
        images = args.images if args.kind == "clip" else 0
        corpus_info = make_corpus(corpus, images, args.pdf_pages if args.kind == "colpali" else 0,
                                  pages_per_pdf=args.pages_per_pdf, distinct_photos=args.distinct_photos)
        console.print(f"corpus: {corpus_info}")
        transfers = ["shm", "pipe"] if args.transfer == "both" else [args.transfer]
        # each job on its own SQL database and data dir, the same corpus
        settings = {transfer: job_settings(work / f"job-{transfer}", args, transfer=transfer) for transfer in transfers}
        first = settings[transfers[0]]
        # As `mmrag index` does: the workers' fork server imports torch while the model loads (outside both
        # measurements), not at the job's start.
        start_worker_server(first)
        if args.kind == "clip":
            embedder: Any = build_embedder(args.model, args.batch, args.device, tiny=args.tiny)
            if args.noop:
                # The pipeline's ceiling alone: the model is never run, so there is no raw forward to stand beside it.
                n_raw, raw = 0, None
                embedder = NoopClip(embedder)
            else:
                n_raw = args.raw_pages or max(images, args.batch * 8)
                raw = raw_forward_clip(embedder, corpus, args.batch, n_raw)
            embedders = Embedders(clip=embedder, off={"colpali": "bench: clip only", "text": "bench: clip only"},
                                  meaningless=True)
            model = f"{'tiny' if args.tiny else args.model} (random-init, throughput only)"
            if args.noop:
                model += "; end-to-end with a no-op forward (pipeline ceiling)"
            if args.replay_workers:
                model += ", workers replaying one photo (this process's ceiling)"
        else:
            began = time.perf_counter()
            embedder = build_colpali(args.batch, args.device, tiny=args.tiny)
            console.print(f"built ColQwen2 ({sum(p.numel() for p in embedder.model.parameters()) / 1e9:.2f}B "
                          f"parameters, random-init) in {time.perf_counter() - began:.1f}s")
            n_raw = args.raw_pages or max(128, args.batch * 8)
            raw = raw_forward_colpali(embedder, corpus, args.batch, n_raw)
            embedders = Embedders(colpali=embedder, off={"clip": "bench: colpali only", "text": "bench: colpali only"},
                                  meaningless=True)
            model = f"ColQwen2 {'tiny' if args.tiny else 'Qwen2-VL-2B shape'} (random-init, throughput only)"
        worker = worker_cost(embedders, first, corpus, work, args.worker_pages) if args.worker_pages else None
        runs = {transfer: end_to_end(embedders, settings[transfer], corpus, args) for transfer in transfers}
        e2e = runs[transfers[0]]
        on_ray = None
        if args.ray is not None:
            ray_job = job_settings(work / "job-ray", args)
            ray_job.ray = RaySettings(address=args.ray, actors=args.ray_actors)
            from mmrag.indexing.distributed import connect

            began = time.perf_counter()
            connect(ray_job.ray)  # outside the job's time: a cluster normally runs before and after a job
            connected = time.perf_counter() - began
            on_ray = end_to_end(embedders, ray_job, corpus, args, stages=ray_stages_for(ray_job, args))
            on_ray["cluster"] = {**_ray_cluster(), "seconds_to_connect": connected}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = e2e["pages_per_s"] / raw if raw is not None else None  # None: --noop ran no raw forward
    table = Table(title=f"bulk indexing vs raw forward · {args.kind} · {model} · batch {args.batch} · "
                        f"{embedder.device} · {args.workers} workers")
    for column in ("stage", "pages/s", "pages", "seconds"):
        table.add_column(column, justify="right")
    table.add_row("raw forward (model only)", "not run (--noop)" if raw is None else f"{raw:.1f}", str(n_raw), "")
    table.add_row("end-to-end (files → stores + SQL)", f"{e2e['pages_per_s']:.1f}", str(e2e["pages"]),
                  f"{e2e['seconds']:.1f}")
    table.add_row("ratio end-to-end / raw", "" if ratio is None else f"{ratio:.2f}", "", "")
    table.add_row("  start-up (job start → first page from a worker)", "", "", f"{e2e['seconds_to_first_page']:.1f}")
    table.add_row("  steady feed after the first page", f"{e2e['steady_pages_per_s']:.1f}", "", "")
    for stage, seconds in e2e["stages"].items():
        table.add_row(f"  stage: {stage.replace('_', ' ')}", "", "", f"{seconds:.1f}")
    table.add_row("  this process's CPU per page (ms, all threads, workers not included)", f"{_cpu_ms(e2e):.3f}", "",
                  "")
    table.add_row("  job thread busy per page (ms; not waiting on workers or the embed queue)", f"{_busy_ms(e2e):.3f}",
                  "", "")
    table.add_row("  job thread can take at most (pages/s)", f"{1000 / max(_busy_ms(e2e), 1e-9):.1f}", "", "")
    if e2e["rerun"] is not None:
        rerun = e2e["rerun"]
        table.add_row(f"re-run, {rerun['unchanged']} files unchanged (files/s)",
                      f"{rerun['unchanged'] / rerun['seconds']:.1f}", "", f"{rerun['seconds']:.1f}")
        table.add_row(f"re-run after touching every file: {rerun['touched_unchanged']} unchanged, "
                      f"{rerun['touched_duplicate']} duplicate (files/s)",
                      f"{rerun['touched_files'] / rerun['touched_seconds']:.1f}", "",
                      f"{rerun['touched_seconds']:.1f}")
        table.add_row("  SQL database growth per file, second re-run (bytes)",
                      f"{rerun['database_bytes_per_file_per_rerun']:.1f}", "", "")
    for transfer, run in list(runs.items())[1:]:
        table.add_row(f"end-to-end, inputs through the {transfer}", f"{run['pages_per_s']:.1f}", str(run["pages"]),
                      f"{run['seconds']:.1f}")
        table.add_row(f"  this process's CPU per page (ms), {transfer}", f"{_cpu_ms(run):.3f}", "", "")
        table.add_row(f"  job thread busy per page (ms), {transfer}", f"{_busy_ms(run):.3f}", "", "")
    if on_ray is not None:
        cluster = on_ray["cluster"]
        table.add_row(f"end-to-end on Ray ({cluster['nodes']} node, {cluster['CPU']:g} CPUs, {cluster['GPU']:g} GPUs, "
                      f"{args.ray_actors} actor)", f"{on_ray['pages_per_s']:.1f}", str(on_ray["pages"]),
                      f"{on_ray['seconds']:.1f}")
        table.add_row("  ratio Ray / in-process job", f"{on_ray['pages_per_s'] / e2e['pages_per_s']:.2f}", "", "")
        table.add_row("  steady feed after the first page, Ray", f"{on_ray['steady_pages_per_s']:.1f}", "", "")
        table.add_row("  ratio of steady feeds, Ray / in-process",
                      f"{on_ray['steady_pages_per_s'] / max(e2e['steady_pages_per_s'], 1e-9):.2f}", "", "")
        table.add_row("  start-up on Ray (job start → first page; the actors load their models)", "", "",
                      f"{on_ray['seconds_to_first_page']:.1f}")
        table.add_row("  starting (or joining) the Ray cluster, before the job", "", "",
                      f"{cluster['seconds_to_connect']:.1f}")
        for stage, seconds in on_ray["stages"].items():
            table.add_row(f"  Ray stage: {stage.replace('_', ' ')}", "", "", f"{seconds:.1f}")
        table.add_row("  driver's CPU per page (ms, all its threads), Ray", f"{_cpu_ms(on_ray):.3f}", "", "")
        table.add_row("  this process's CPU per page (ms), in-process job, for comparison", f"{_cpu_ms(e2e):.3f}", "",
                      "")
    if worker is not None:
        table.add_row("one worker: CPU per page (ms; load_files here, one thread)", f"{worker['ms_per_page']:.3f}",
                      str(worker["pages"]), "")
        table.add_row(f"  {args.workers} workers can feed at most", f"{worker['workers_ceiling_pages_per_s']:.1f}",
                      "", "")
    console.print(table)
    device_name = torch.cuda.get_device_name() if embedder.device.startswith("cuda") else platform.processor()
    report = {
        "benchmark": "index",
        "kind": args.kind,
        "when": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "device": embedder.device, "device_name": device_name,
                    "torch": torch.__version__, "cpu_count": os.cpu_count(), "cpu_threads": torch.get_num_threads()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": model,
        "corpus": corpus_info,
        "raw_pages_per_s": raw,
        "end_to_end": e2e,
        "job_thread_busy_ms_per_page": _busy_ms(e2e),
        "transfer": transfers[0],
        "end_to_end_by_transfer": runs,
        "worker": worker,
        "ratio": ratio,
        "on_ray": on_ray,
        "ray_over_in_process": None if on_ray is None else on_ray["pages_per_s"] / e2e["pages_per_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")
    return 0 if e2e["failed"] == 0 else 1
