"""Similarity-map regions, what they cost a search: ColPali-shaped page vectors in a real multi-vector store, the
regions of k hits (ColpaliRetriever.looked_at) side by side with the exact MaxSim search that found them.

    python -m bench maps [--pages 2000] [--k 10] [--repeat 20]

Pages are ColPali's shape (1,024 patches on a 32 x 32 grid after 6 prompt tokens, dim 128, stored fp16) or, with
--grid 24 32, a ColQwen2 page's; queries 20 tokens. Vectors are random: these are costs, not regions that mean
anything (no ColPali weights can be loaded here). The embedder is a fake fitting MappedMultiVectorEmbedder, so the
query tokens come from it at no cost; a real search would have embedded the query once and looked_at reuses that.
Per repeat: store.search over all pages (k hits), then looked_at for those hits. Writes bench/results/maps.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from bench.report import print_rows, write_report
from mmrag.index.multivector import ShardedMultiVectorStore
from mmrag.retrievers.colpali import ColpaliRetriever
from mmrag.types import PatchGrid

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "maps.json"
PROMPT_TOKENS = 6
QUERY_TOKENS = 20
DIM = 128


class GridEmbedder:
    """Fits MappedMultiVectorEmbedder: one fixed grid for every page, a fixed query."""

    model_id = "bench:colpali-shaped"
    revision = "random"
    dim = DIM

    def __init__(self, rows: int, cols: int, query: np.ndarray) -> None:
        self.grid = PatchGrid(tuple(range(PROMPT_TOKENS, PROMPT_TOKENS + rows * cols)), rows, cols,
                              PROMPT_TOKENS + rows * cols)
        self.query = query

    def embed_images(self, images):  # noqa: ANN001, ANN201 - not used
        raise NotImplementedError

    def embed_queries(self, texts):  # noqa: ANN001, ANN201
        return [self.query for _ in texts]

    def patch_grid(self, width: int, height: int) -> PatchGrid:
        return self.grid

    def query_words(self, text: str) -> np.ndarray:
        return np.ones(len(self.query), dtype=bool)


def _normalised(rng: np.random.Generator, rows: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench maps", description=__doc__)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--grid", type=int, nargs=2, default=[32, 32], metavar=("ROWS", "COLS"))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    console = Console()
    rows, cols = args.grid
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="bench-maps-"))
    try:
        store = ShardedMultiVectorStore(work / "colpali", DIM, GridEmbedder.model_id, device="cpu")
        ids = list(range(1, args.pages + 1))
        for start in range(0, args.pages, 256):
            batch = ids[start:start + 256]
            store.add(batch, [_normalised(rng, PROMPT_TOKENS + rows * cols) for _ in batch])
        store.flush()
        retriever = ColpaliRetriever()
        search_ms, maps_ms, regions = [], [], []
        for _ in range(args.repeat):
            query = _normalised(rng, QUERY_TOKENS)
            embedder = GridEmbedder(rows, cols, query)
            began = time.perf_counter()
            hits = store.search(query, args.k)
            search_ms.append(1000 * (time.perf_counter() - began))
            pages = {hit.page_id: (cols * 14, rows * 14) for hit in hits}
            began = time.perf_counter()
            found = retriever.looked_at(embedder, store, "q", pages)
            maps_ms.append(1000 * (time.perf_counter() - began))
            regions.append(sum(len(r) for r in found.values()) / max(1, len(found)))
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row = {
        "pages": args.pages, "k": args.k, "grid": f"{rows}x{cols}", "tokens_per_page": PROMPT_TOKENS + rows * cols,
        "search_p50_ms": round(float(np.median(search_ms)), 2), "maps_p50_ms": round(float(np.median(maps_ms)), 2),
        "maps_per_hit_ms": round(float(np.median(maps_ms)) / args.k, 3),
        "regions_per_hit": round(float(np.mean(regions)), 2),
    }
    print_rows("similarity-map regions of k hits beside the exact MaxSim search (CPU, random vectors)", [row], console)
    write_report("maps", args, [row], console)
    return 0
