"""Near-duplicate grouping (mmrag.near_duplicates), precision and recall: the shared COCO photos and copies of each
(re-encoded, resized, cropped) are indexed by the real job, grouped at several thresholds, and the groups scored
against the truth (a copy belongs with its original and its other copies, nothing else does).

    python -m bench near-duplicates [--photos 159] [--thresholds 0.7 0.8 ...] [--embedders stand-in tiny-random clip]

Embedders, each through the ImageEmbedder contract into the clip slot:
    stand-in     mmrag.embedders.perceptual: a colour perceptual hash (low DCT frequencies). NOT CLIP: it sees only
                 coarse layout and colour, so it stands for CLIP where no weights are present.
    tiny-random  the tiny-random profile's CLIP: real code, random weights. Shown to say so in figures: random weights
                 cannot group near-duplicates (their vectors of unrelated photos are about as close as a copy's).
    clip         the configured CLIP (MMRAG_EMBEDDERS__CLIP__MODEL) when its weights are present; skipped, saying
                 why, when they are not (weights are never downloaded).

Scores: pair precision and recall over pairs of pages (a pair is predicted when the two are grouped together, true
when they come from one photo), the share of each kind of copy grouped with its original, and the share of photos
grouped exactly (all copies with the original, nothing else). The shared data is read, never copied into the
repository: the copies live in a temporary folder. Writes bench/results/near_duplicates.json.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console

from bench import tags
from bench.report import print_rows, write_report
from mmrag.config import DatabaseSettings, IngestSettings, Settings
from mmrag.indexing import run_index
from mmrag.near_duplicates import near_duplicate_groups
from mmrag.retrievers import Embedders

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco-mini" / "images"
DEFAULT_OUT = REPO / "bench" / "results" / "near_duplicates.json"
DEFAULT_THRESHOLDS = [0.7, 0.8, 0.85, 0.9, 0.92, 0.95, 0.98]
EMBEDDERS = ("stand-in", "tiny-random", "clip")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _centre_crop(image: Image.Image, keep: float) -> Image.Image:
    width, height = image.size
    dx, dy = int(width * (1 - keep) / 2), int(height * (1 - keep) / 2)
    return image.crop((dx, dy, width - dx, height - dy))


# Each copy of a photo: how it is made, saved as JPEG quality 90 unless the copy is the re-encoding itself.
VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg-q30": lambda image: _jpeg(image, 30),
    "resize-50%": lambda image: image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS),
    "crop-90%": lambda image: _centre_crop(image, 0.9),
    "crop-75%": lambda image: _centre_crop(image, 0.75),
}


def make_copies(photos: list[Path], folder: Path) -> dict[str, tuple[str, str]]:
    """The originals (their bytes) and their copies in `folder`; file name → (source photo, variant or "original")."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for photo in photos:
        shutil.copyfile(photo, folder / photo.name)
        truth[photo.name] = (photo.stem, "original")
        with Image.open(photo) as opened:
            image = opened.convert("RGB")
        for number, (variant, make) in enumerate(VARIANTS.items()):
            name = f"{photo.stem}-v{number}.jpg"
            make(image).convert("RGB").save(folder / name, format="JPEG", quality=30 if variant == "jpeg-q30" else 90)
            truth[name] = (photo.stem, variant)
    return truth


def load_embedder(name: str) -> tuple[Any | None, str]:
    """The embedder named, or None with why it cannot be measured."""
    if name == "stand-in":
        from mmrag.embedders.perceptual import PerceptualImageEmbedder

        return PerceptualImageEmbedder(), "deterministic stand-in, NOT CLIP (colour perceptual hash)"
    embedder, said = tags.load_embedder(name, device="cpu")
    if name == "tiny-random" and embedder is not None:
        return embedder, "tiny-random CLIP: random weights, vectors carry no meaning"
    return embedder, said


def score(groups: list[list[str]], truth: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Pair precision/recall of `groups` (file names) against the photos the names come from."""
    group_of = {name: number for number, names in enumerate(groups) for name in names}
    predicted = sum(len(names) * (len(names) - 1) // 2 for names in groups)
    correct = sum(1 for names in groups for a, b in combinations(names, 2) if truth[a][0] == truth[b][0])
    by_photo: dict[str, list[str]] = {}
    for name, (photo, _) in truth.items():
        by_photo.setdefault(photo, []).append(name)
    relevant = sum(len(names) * (len(names) - 1) // 2 for names in by_photo.values())
    row: dict[str, float] = {
        "pair_precision": round(correct / predicted, 4) if predicted else 1.0,
        "pair_recall": round(correct / relevant, 4) if relevant else 1.0,
    }
    originals = {photo: name for name, (photo, variant) in truth.items() if variant == "original"}
    for variant in VARIANTS:
        copies = [(name, photo) for name, (photo, kind) in truth.items() if kind == variant]
        with_original = sum(
            1 for name, photo in copies
            if name in group_of and group_of[name] == group_of.get(originals[photo], -1)
        )
        row[f"{variant} with original"] = round(with_original / len(copies), 4) if copies else 0.0
    exact = 0
    for photo, names in by_photo.items():
        group = group_of.get(names[0])
        exact += group is not None and sorted(groups[group]) == sorted(names)
    row["photos grouped exactly"] = round(exact / len(by_photo), 4)
    return row


def measure(
    name: str, embedder: Any, truth: dict[str, tuple[str, str]], folder: Path, work: Path, thresholds: list[float],
    console: Console,
) -> list[dict]:
    settings = Settings(
        data_dir=work / name,
        database=DatabaseSettings(url=f"sqlite:///{work / name / 'mmrag.db'}"),
        ingest=IngestSettings(workers=2, ocr="never"),
    )
    from mmrag.services import build_services

    services = build_services(settings, embedders=Embedders(clip=embedder))
    rows = []
    try:
        began = time.perf_counter()
        report = run_index(services, [folder])
        console.print(f"{name}: indexed {report.counts['indexed']} files in {time.perf_counter() - began:.1f} s")
        for threshold in thresholds:
            began = time.perf_counter()
            grouped = near_duplicate_groups(services, "default", threshold=threshold, largest=len(truth))
            seconds = time.perf_counter() - began
            groups = [[Path(page.path).name for page in group.pages] for group in grouped.largest]
            rows.append({
                "embedder": name, "threshold": threshold, "pages": grouped.compared, "groups": grouped.groups,
                "pages in groups": grouped.pages_in_groups, **score(groups, truth),
                "group ms": round(1000 * seconds, 1),
            })  # fmt: skip
    finally:
        services.close()
    return rows


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench near-duplicates", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder of photos (coco-mini/images)")
    parser.add_argument("--photos", type=int, default=None, help="the first N photos (default: all)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=DEFAULT_THRESHOLDS)
    parser.add_argument("--embedders", nargs="+", choices=EMBEDDERS, default=list(EMBEDDERS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    console = Console(width=200)
    photos = sorted(args.data.glob("*.jpg"))[: args.photos]
    if not photos:
        console.print(f"no photos in {args.data} (the shared data is absent): nothing to measure")
        return 0
    work = Path(tempfile.mkdtemp(prefix="mmrag-bench-near-duplicates-"))
    rows: list[dict] = []
    notes: list[str] = []
    try:
        truth = make_copies(photos, work / "photos")
        console.print(f"{len(photos)} photos, {len(truth)} files with their copies ({', '.join(VARIANTS)})")
        for name in args.embedders:
            embedder, note = load_embedder(name)
            notes.append(f"{name}: {note}")
            console.print(notes[-1])
            if embedder is not None:
                rows += measure(name, embedder, truth, work / "photos", work, args.thresholds, console)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_rows("near-duplicate grouping: pair precision/recall, and the share of each copy grouped with its original",
               rows, console)
    for note in notes:
        console.print(note)
    console.print("The stand-in is not CLIP; tiny-random CLIP's random weights cannot group near-duplicates either. "
                  "Real CLIP figures need its weights (MMRAG_EMBEDDERS__CLIP__MODEL=local-dir:/path).")
    args.notes = notes
    write_report("near_duplicates", args, rows, console)
    return 0
