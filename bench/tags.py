"""Zero-shot tags (mmrag.tags) against captions: the shared COCO photos are indexed by the real job, which tags them
with the default label list; how often is a photo's top tag's label named in one of its five captions?

    python -m bench tags [--photos 159] [--embedders tiny-random clip] [--min-score 0.1]

Embedders, each the clip slot of a real job:
    tiny-random  the tiny-random profile's CLIP: real open_clip code, random weights. Its figure is MEANINGLESS (its
                 tags are as good as drawing labels at random, which the `chance` column shows); it is run to show
                 the method works end to end.
    clip         the configured CLIP (MMRAG_EMBEDDERS__CLIP__MODEL) when its weights are present; skipped, saying why,
                 when they are not (weights are never downloaded). The real figure is owed to a machine with them.

Columns:
    coverage         share of photos that kept at least one tag (a share >= --min-score of the softmax over labels)
    precision@1      among those, share whose top tag's label appears in a caption
    forced p@1       over every photo, the share whose best label (kept or not: recomputed from the stored CLIP
                     vectors with the same tagger) appears in a caption: comparable across embedders and thresholds
    chance           what forced p@1 would be for a label drawn at random from the list: the mean over photos of the
                     share of labels its captions name
    tag precision    share of all kept tags whose label appears in a caption

A label "appears" when its words appear in a caption in order, as whole words, the last one also as a plural ("dog"
in "two dogs play"); no synonyms ("person" is not found in "a man rides"), so a real CLIP's figures are lower bounds.
The shared data is read, never copied into the repository. Writes bench/results/tags.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.report import print_rows, write_report
from mmrag.config import DatabaseSettings, EmbedderSettings, IngestSettings, Settings, TagSettings
from mmrag.embedders import chosen_model
from mmrag.errors import ModelUnavailableError
from mmrag.indexing import run_index
from mmrag.retrievers import Embedders
from mmrag.store import repository
from mmrag.tags import DEFAULT_LABELS, TAGGED_BY, build_tagger

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco-mini"
DEFAULT_OUT = REPO / "bench" / "results" / "tags.json"
EMBEDDERS = ("tiny-random", "clip")
WORD = re.compile(r"[a-z]+")


def read_captions(data: Path) -> dict[str, list[str]]:
    """Photo file name → its captions, from every captions_*.json."""
    captions: dict[str, list[str]] = {}
    for path in sorted((data / "annotations").glob("captions_*.json")):
        loaded = json.loads(path.read_text(encoding="utf-8"))
        names = {image["id"]: image["file_name"] for image in loaded["images"]}
        for note in loaded["annotations"]:
            if note["image_id"] in names:
                captions.setdefault(names[note["image_id"]], []).append(note["caption"])
    return captions


def _words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def named(label: str, captions: list[str]) -> bool:
    """Whether a caption holds the label's words in order, the last one maybe plural."""
    wanted = _words(label)
    if not wanted:
        return False
    last = {wanted[-1], wanted[-1] + "s", wanted[-1] + "es"}
    for caption in captions:
        words = _words(caption)
        for start in range(len(words) - len(wanted) + 1):
            if words[start : start + len(wanted) - 1] == wanted[:-1] and words[start + len(wanted) - 1] in last:
                return True
    return False


def load_embedder(name: str, device: str = "auto") -> tuple[Any | None, str]:
    """CLIP as the retriever loads it ("tiny-random", or the configured model), or None with why it cannot be
    measured."""
    from mmrag.retrievers.clip import ClipRetriever

    profile = "tiny-random" if name == "tiny-random" else "default"
    settings = Settings(embedders=EmbedderSettings(profile=profile, device=device))
    try:
        embedder = ClipRetriever().load(settings)
    except ModelUnavailableError as exc:
        return None, f"not measured: {exc}"
    if name == "tiny-random":
        return embedder, "tiny-random CLIP: random weights, its figures are MEANINGLESS (compare with chance)"
    return embedder, f"CLIP {chosen_model(settings.embedders, 'clip').model}"


def measure(name: str, embedder: Any, photos: list[Path], captions: dict[str, list[str]], work: Path,
            min_score: float, console: Console) -> dict:
    folder = work / "photos"
    tags_settings = TagSettings(min_score=min_score)
    settings = Settings(
        data_dir=work / name, database=DatabaseSettings(url=f"sqlite:///{work / name / 'mmrag.db'}"),
        ingest=IngestSettings(workers=2, ocr="never"), tags=tags_settings,
    )
    from mmrag.services import build_services

    services = build_services(settings, embedders=Embedders(clip=embedder))
    try:
        began = time.perf_counter()
        report = run_index(services, [folder])
        job_seconds = time.perf_counter() - began
        with services.sessions() as session:
            collection_id = repository.get_collection(session, "default").id
            pages = repository.photos_to_tag(session, collection_id, TAGGED_BY, limit=len(photos) + 1)
            stored = repository.page_tags(session, [page_id for page_id, _ in pages])
            paths = {row.page_id: Path(row.path).name for row in repository.describe_pages(
                session, [page_id for page_id, _ in pages]).values()}
        ids = np.array([page_id for page_id, _ in pages], dtype=np.int64)
        vectors = services.collections.stores(collection_id).get(TAGGED_BY).vectors(ids)
        began = time.perf_counter()
        tagger = build_tagger(tags_settings, embedder, DEFAULT_LABELS)
        label_seconds = time.perf_counter() - began
        tagger.scores(vectors[:1])  # the first call pays for the BLAS threads starting
        began = time.perf_counter()
        shares = tagger.scores(vectors)
        score_seconds = time.perf_counter() - began
    finally:
        services.close()
    kept = hits_at_1 = forced = tags_named = tags_total = 0
    chance = 0.0
    for row, page_id in zip(shares, ids, strict=True):
        said = captions.get(paths[int(page_id)], [])
        forced += named(DEFAULT_LABELS[int(np.argmax(row))], said)
        chance += sum(named(label, said) for label in DEFAULT_LABELS) / len(DEFAULT_LABELS)
        tags = stored.get(int(page_id), ())
        if tags:
            kept += 1
            hits_at_1 += named(tags[0].name, said)
        tags_total += len(tags)
        tags_named += sum(named(tag.name, said) for tag in tags)
    n = len(ids)
    console.print(f"{name}: indexed {report.counts['indexed']} photos in {job_seconds:.1f} s")
    return {
        "embedder": name, "photos": n, "labels": len(DEFAULT_LABELS), "min_score": min_score,
        "coverage": round(kept / n, 4) if n else 0.0,
        "precision@1": round(hits_at_1 / kept, 4) if kept else None,
        "forced p@1": round(forced / n, 4) if n else 0.0,
        "chance": round(chance / n, 4) if n else 0.0,
        "tag precision": round(tags_named / tags_total, 4) if tags_total else None,
        "tags/photo": round(tags_total / n, 2) if n else 0.0,
        "label vectors ms": round(1000 * label_seconds, 1),
        "scoring ms/1000 photos": round(1e6 * score_seconds / n, 2) if n else 0.0,
    }  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench tags", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco-mini: images/ and annotations/")
    parser.add_argument("--photos", type=int, default=None, help="the first N photos (default: all)")
    parser.add_argument("--embedders", nargs="+", choices=EMBEDDERS, default=list(EMBEDDERS))
    parser.add_argument("--min-score", type=float, default=TagSettings().min_score)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    console = Console(width=200)
    photos = sorted((args.data / "images").glob("*.jpg"))[: args.photos]
    captions = read_captions(args.data) if photos else {}
    if not photos or not captions:
        console.print(f"no photos or captions in {args.data} (the shared data is absent): nothing to measure")
        return 0
    work = Path(tempfile.mkdtemp(prefix="mmrag-bench-tags-"))
    rows: list[dict] = []
    notes: list[str] = []
    try:
        (work / "photos").mkdir()
        for photo in photos:  # a temporary copy: the job indexes a folder of exactly these
            shutil.copyfile(photo, work / "photos" / photo.name)
        console.print(f"{len(photos)} photos, {sum(len(captions.get(p.name, [])) for p in photos)} captions")
        for name in args.embedders:
            embedder, note = load_embedder(name)
            notes.append(f"{name}: {note}")
            console.print(notes[-1])
            if embedder is not None:
                rows.append(measure(name, embedder, photos, captions, work, args.min_score, console))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if rows:
        print_rows("zero-shot tags vs captions: is the top tag's label named in a caption?", rows, console)
    for note in notes:
        console.print(note)
    console.print("With random weights (tiny-random) the figures mean nothing: compare them with chance. The real "
                  "figure is owed to a machine with CLIP weights (MMRAG_EMBEDDERS__CLIP__MODEL=local-dir:/path).")
    args.notes = notes
    write_report("tags", args, rows, console)
    return 0
