"""The scalable multi-vector path: a few centroids per page pick candidates, exact MaxSim reranks them.

Exact MaxSim reads every stored token per query, which is what makes it slow on a large collection. Here each page
is also folded into `vectors_per_page` centroids (spherical k-means over its tokens). A page's approximate score is
the query's MaxSim over its centroids, computed either for every page (exhaustive: 8 vectors a page instead of
~1030, through the same kernel as exact search) or, on CPU for very large collections, from an HNSW graph over all
centroids: a query token's `per_token` nearest centroids give each page that came back its best similarity, and
pages that did not come back get the lowest similarity that did (the XTR-style imputation: the page cannot be better
than what was cut off). The top `candidates` pages by that score are re-scored exactly from the store, so the final
scores are exact MaxSim and only the candidate set is approximate (measured as recall@10 against exact search by
`python -m bench search` and `python -m bench gpu`).
"""

from __future__ import annotations

import json
import logging
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch

from mmrag.index.manifest import atomic_write
from mmrag.index.maxsim import maxsim_fixed, pack_queries
from mmrag.index.multivector import ShardedMultiVectorStore
from mmrag.types import Hit

log = logging.getLogger(__name__)


def page_centroids(pages: Sequence[np.ndarray], count: int, iterations: int = 6) -> list[np.ndarray]:
    """`count` unit-norm centroids per page (spherical k-means, deterministic init), pages of one length batched."""
    result: list[np.ndarray | None] = [None] * len(pages)
    by_length: dict[int, list[int]] = {}
    for position, page in enumerate(pages):
        by_length.setdefault(len(page), []).append(position)
    for length, positions in by_length.items():
        for start in range(0, len(positions), 256):
            batch = positions[start : start + 256]
            x = torch.from_numpy(np.stack([np.asarray(pages[i], dtype=np.float32) for i in batch]))
            centroids = spherical_kmeans(x, min(count, length), iterations)
            for i, position in enumerate(batch):
                result[position] = centroids[i].numpy()
    return [r for r in result if r is not None]


def spherical_kmeans(x: torch.Tensor, k: int, iterations: int = 6) -> torch.Tensor:
    """(pages, k, dim) unit centroids of each page's (tokens, dim) vectors in x (pages, tokens, dim), on x's device.

    Evenly spaced tokens seed the centroids: patches come in reading order, so the seeds spread over the page."""
    x = torch.nn.functional.normalize(x.to(torch.float32), dim=2)
    length = x.shape[1]
    centroids = x[:, torch.linspace(0, length - 1, k, device=x.device).long()].clone()
    for _ in range(iterations):
        assignment = torch.bmm(x, centroids.transpose(1, 2)).argmax(dim=2)  # (pages, tokens)
        one_hot = torch.nn.functional.one_hot(assignment, k).to(x.dtype)  # (pages, tokens, k)
        sums = torch.bmm(one_hot.transpose(1, 2), x)  # (pages, k, dim)
        empty = sums.norm(dim=2, keepdim=True) == 0
        centroids = torch.nn.functional.normalize(torch.where(empty, centroids, sums), dim=2)
    return centroids


# Up to this many pages, candidates come from MaxSim over every page's centroids (exhaustive: no approximation
# beyond the centroids themselves); beyond it, on CPU, from an HNSW graph over the centroids. On CUDA the fused
# kernel scores even a very large collection's centroids quickly, so it stays exhaustive.
EXHAUSTIVE_MAX_PAGES_CPU = 250_000
SAVED_FORMAT = "mmrag-candidates-1"


class PooledCandidateIndex:
    """Centroids of every page; `search` returns exact MaxSim scores of the pages the centroids rank best.

    Two ways to pick candidates:
      exhaustive (hnsw_m=None)  every page's approximate score = MaxSim of the query over its centroids, through
                                mmrag.index.maxsim (the fused kernel on CUDA, chunked torch on CPU)
      HNSW (hnsw_m=M)           FAISS HNSW over all centroids, per query token the `per_token` nearest, with the
                                XTR-style imputation for pages that did not come back (sublinear on CPU)

    It follows its store with `update`, which reads the tokens of the pages added since and drops the pages gone:
    building it reads every stored token, so building it again after every change to the store would cost as much
    as the store is large.
    """

    def __init__(
        self, dim: int, *, vectors_per_page: int = 8, hnsw_m: int | None = None, ef_search: int = 128,
        device: str | torch.device = "cpu",
    ) -> None:  # fmt: skip
        self.dim = dim
        self.vectors_per_page = vectors_per_page
        self.mode = "hnsw" if hnsw_m else "exhaustive"
        self.device = torch.device(device)
        self._index = None
        if hnsw_m:
            inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = ef_search
            self._index = faiss.IndexIDMap2(inner)
        self._lock = threading.Lock()
        self._position: dict[int, int] = {}  # live page id -> its slot (exhaustive) or -1 (HNSW)
        self._hnsw_dropped: set[int] = set()  # HNSW: pages removed whose centroids are still in the graph
        # Exhaustive: slot i holds page _ids[i]'s centroids in rows [i*k, (i+1)*k) of _rows (grown by doubling, on
        # the device), _alive[i] whether it is still live; _dead_mask caches ~_alive on the device.
        self._ids = np.zeros(0, dtype=np.int64)
        self._alive = np.zeros(0, dtype=bool)
        self._rows: torch.Tensor | None = None
        self._slots = 0
        self._dead_mask: torch.Tensor | None = None
        self._keys = np.zeros(0, dtype=np.int64)  # the store's live entries as of the last update (see update)

    def __len__(self) -> int:
        return len(self._position)

    def add(self, ids: Sequence[int], token_matrices: Sequence[np.ndarray]) -> None:
        for page_id in ids:
            if int(page_id) in self._position:
                raise ValueError(f"page {page_id} is already indexed (remove it first)")
        centroids = page_centroids(token_matrices, self.vectors_per_page)
        if not centroids:
            return
        with self._lock:
            if self._index is not None:
                vector_ids = [int(p) * self.vectors_per_page + np.arange(len(c), dtype=np.int64)
                              for p, c in zip(ids, centroids, strict=True)]  # fmt: skip
                self._index.add_with_ids(np.concatenate(centroids).astype(np.float32), np.concatenate(vector_ids))
                for page_id in ids:
                    self._position[int(page_id)] = -1
                    self._hnsw_dropped.discard(int(page_id))
                return
            # Pad pages with fewer tokens than centroids by repeating one: a max over copies is unchanged.
            k = self.vectors_per_page
            padded = np.stack([np.concatenate([c, np.repeat(c[-1:], k - len(c), axis=0)]) for c in centroids])
            self._append_slots(np.asarray(ids, dtype=np.int64), padded)

    def remove(self, ids: Sequence[int]) -> int:
        """Drop these pages (unknown ids are ignored); returns how many were held."""
        removed = 0
        with self._lock:
            for page_id in ids:
                slot = self._position.pop(int(page_id), None)
                if slot is None:
                    continue
                removed += 1
                if self._index is not None:
                    self._hnsw_dropped.add(int(page_id))
                else:
                    self._alive[slot] = False
            if removed and self._index is None:
                self._dead_mask = None
                if self._slots - len(self._position) > 0.25 * self._slots:
                    self._compact_slots()
        return removed

    def update(self, store: ShardedMultiVectorStore) -> tuple[int, int]:
        """Bring the index to the store's live pages: centroids for the pages added (or added again) since the last
        update, read from the store, and the pages gone dropped. Returns (added, removed). A page is known by its
        store entry, so a compacted store (its entries renumbered) is read again whole."""
        page_ids, rows = store.live_entries()
        keys = (page_ids << 32) | rows
        with self._lock:
            held = self._keys
        fresh = page_ids[~np.isin(keys, held)]
        gone = np.setdiff1d(held[~np.isin(held, keys)] >> 32, fresh)
        removed = self.remove(gone.tolist())
        self.remove(fresh.tolist())  # those added again under the same id: their old centroids go
        for start in range(0, len(fresh), 1024):
            chunk = [int(page_id) for page_id in fresh[start : start + 1024]]
            self.add(chunk, [store.tokens(page_id) for page_id in chunk])
        with self._lock:
            self._keys = keys
        return len(fresh), removed

    @classmethod
    def build(cls, store: ShardedMultiVectorStore, **options: object) -> PooledCandidateIndex:
        """Derived data: built from the stored tokens, so it can always be rebuilt from the store. Without an
        explicit hnsw_m: exhaustive on CUDA or up to EXHAUSTIVE_MAX_PAGES_CPU pages, HNSW (M=32) beyond."""
        if "hnsw_m" not in options:
            large = len(store) > EXHAUSTIVE_MAX_PAGES_CPU and store.device.type != "cuda"
            options["hnsw_m"] = 32 if large else None
        options.setdefault("device", store.device)
        index = cls(store.dim, **options)  # type: ignore[arg-type]
        index.update(store)
        return index

    def save(self, path: Path, *, source: str) -> None:
        """Write the index to one file, atomically, tagged with `source` (its store's uid): the centroids (or the
        HNSW graph) and the store entries they stand for, so that `load` + `update` reads only what changed since."""
        with self._lock:
            arrays: dict[str, np.ndarray] = {"keys": self._keys}
            if self._index is None:
                assert self._rows is not None or not self._slots
                live = np.flatnonzero(self._alive[: self._slots])
                k = self.vectors_per_page
                arrays["ids"] = self._ids[live]
                arrays["centroids"] = (
                    self._rows[: self._slots * k].reshape(self._slots, k, self.dim)[torch.from_numpy(live)]
                    .to(torch.float16).cpu().numpy()
                    if self._rows is not None else np.zeros((0, k, self.dim), dtype=np.float16)
                )
            else:
                arrays["ids"] = np.fromiter(self._position, dtype=np.int64, count=len(self._position))
                arrays["dropped"] = np.fromiter(self._hnsw_dropped, dtype=np.int64, count=len(self._hnsw_dropped))
                arrays["hnsw"] = faiss.serialize_index(self._index)
            meta = {"format": SAVED_FORMAT, "source": source, "dim": self.dim, "mode": self.mode,
                    "vectors_per_page": self.vectors_per_page}
            arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda file: np.savez(file, **arrays))

    @classmethod
    def load(
        cls, path: Path, store: ShardedMultiVectorStore, *, vectors_per_page: int = 8
    ) -> PooledCandidateIndex | None:
        """The index `save` wrote at `path` from this very store (its uid) with these options, as it was saved: its
        update(store) then reads only the pages changed since. None when there is none, it is unreadable, or it was
        saved from another store or with other options."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            meta = json.loads(arrays["meta"].tobytes())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            if Path(path).exists():
                log.warning("%s: saved candidate index unreadable (%s); building it again", path, exc)
            return None
        if meta != {**meta, "format": SAVED_FORMAT, "source": store.uid, "dim": store.dim,
                    "vectors_per_page": vectors_per_page}:  # fmt: skip
            return None
        index = cls(store.dim, vectors_per_page=vectors_per_page, device=store.device)
        if meta.get("mode") == "hnsw":
            index.mode = "hnsw"
            index._index = faiss.deserialize_index(arrays["hnsw"])
            index._position = {int(page_id): -1 for page_id in arrays["ids"]}
            index._hnsw_dropped = {int(page_id) for page_id in arrays["dropped"]}
        elif len(arrays["ids"]):
            index._append_slots(arrays["ids"].astype(np.int64), arrays["centroids"])
        index._keys = arrays["keys"].astype(np.int64)
        return index

    def candidates(self, query: np.ndarray, count: int, *, per_token: int = 1024) -> np.ndarray:
        """Page ids of the `count` best pages by the centroid approximation of MaxSim."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        with self._lock:
            if not self._position:
                return np.zeros(0, dtype=np.int64)
            if self._index is None:
                return self._exhaustive(query, count)
            similarities, vector_ids = self._index.search(query, min(per_token, self._index.ntotal))
            dropped = np.fromiter(self._hnsw_dropped, dtype=np.int64, count=len(self._hnsw_dropped))
        found = vector_ids >= 0
        pages = np.where(found, vector_ids // self.vectors_per_page, -1)
        # Per query token: the best similarity per page, and the cut-off imputed for pages that did not come back.
        floor = np.where(found, similarities, np.inf).min(axis=1)
        unique_pages, column = np.unique(pages[found], return_inverse=True)
        best = np.tile(floor[:, None], (1, len(unique_pages)))
        rows = np.nonzero(found)[0]
        np.maximum.at(best, (rows, column), similarities[found])
        approximate = best.sum(axis=0)
        if len(dropped):
            live = ~np.isin(unique_pages, dropped)
            unique_pages, approximate = unique_pages[live], approximate[live]
        if len(unique_pages) > count:
            keep = np.argpartition(-approximate, count - 1)[:count]
            return unique_pages[keep]
        return unique_pages

    def _exhaustive(self, query: np.ndarray, count: int) -> np.ndarray:
        """MaxSim of the query over every live page's centroids; the top `count` page ids (caller holds the lock)."""
        k = self.vectors_per_page
        assert self._rows is not None
        with torch.inference_mode():
            scores = maxsim_fixed(self._rows[: self._slots * k], k, pack_queries([query], self.device))[:, 0]
            if len(self._position) < self._slots:
                if self._dead_mask is None:
                    self._dead_mask = torch.from_numpy(~self._alive[: self._slots]).to(self.device)
                scores = scores.masked_fill(self._dead_mask, -torch.inf)
            best = torch.topk(scores, min(count, len(self._position))).indices.cpu().numpy()
        return self._ids[best]

    def _append_slots(self, ids: np.ndarray, centroids: np.ndarray) -> None:
        """Append pages' (pages, k, dim) centroids in place, growing the slots by doubling (caller holds the lock):
        an update costs the pages it adds, not a copy of every page's centroids."""
        k, used, need = self.vectors_per_page, self._slots, self._slots + len(ids)
        capacity = len(self._ids)
        if need > capacity:
            capacity = max(need, 2 * capacity, 1024)
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32  # CPU matmuls are float32
            rows = torch.empty((capacity * k, self.dim), dtype=dtype, device=self.device)
            if self._rows is not None:
                rows[: used * k] = self._rows[: used * k]
            self._rows = rows
            self._ids = np.concatenate([self._ids[:used], np.zeros(capacity - used, dtype=np.int64)])
            self._alive = np.concatenate([self._alive[:used], np.zeros(capacity - used, dtype=bool)])
        assert self._rows is not None
        block = torch.from_numpy(centroids.reshape(-1, self.dim).astype(np.float16))  # as stored: fp16
        self._rows[used * k : need * k] = block.to(self.device, self._rows.dtype)
        self._ids[used:need] = ids
        self._alive[used:need] = True
        for offset, page_id in enumerate(ids.tolist()):
            self._position[page_id] = used + offset
        self._slots = need
        self._dead_mask = None

    def _compact_slots(self) -> None:
        """Keep only live slots (caller holds the lock), once a quarter of them are dead."""
        assert self._rows is not None
        k, live = self.vectors_per_page, np.flatnonzero(self._alive[: self._slots])
        gather = (torch.from_numpy(live)[:, None] * k + torch.arange(k)[None, :]).reshape(-1).to(self.device)
        self._rows = self._rows[gather].clone()
        self._ids, self._alive = self._ids[live].copy(), np.ones(len(live), dtype=bool)
        self._position = {int(page_id): slot for slot, page_id in enumerate(self._ids)}
        self._slots = len(live)
        self._dead_mask = None

    def search(
        self, query: np.ndarray, store: ShardedMultiVectorStore, k: int, *, candidates: int = 256, per_token: int = 1024
    ) -> list[Hit]:
        """Top-k pages with exact MaxSim scores, found among the approximate top `candidates`."""
        chosen = self.candidates(query, max(candidates, k), per_token=per_token)
        return store.score_subset(query, chosen.tolist())[:k]
