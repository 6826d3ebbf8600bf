"""Exact MaxSim search over a multi-vector store's rows: device-resident for the fused kernel, else streamed.

score(page) = sum over query tokens of max over page tokens of <q, p>.

Streamed (the torch path): rows are read from the memory-mapped shards in chunks of whole pages (never all pages x
all tokens at once), converted to float32 (fp16 matmul is slow on CPU; float32 on CUDA too keeps results identical
across devices), multiplied with all query tokens at once, and reduced per page with torch.segment_reduce(max),
which handles variable token counts without padding.

Resident: on CUDA with Triton (kernel "auto" or "triton"), search runs the fused kernel of mmrag/index/maxsim.py
over a device-resident copy of the shards' rows, built on the first search after a change and dropped on the next
change; the top-k is taken on the device too. A store whose rows do not fit in the device's free memory streams
instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmrag.errors import ConfigError
from mmrag.index.maxsim import maxsim_triton, pack_queries, triton_available
from mmrag.index.multivector_codec import COPY_ROWS, ROW_DTYPE, Shard
from mmrag.types import Hit

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = {"cpu": 65_536, "cuda": 1_048_576}
KERNELS = ("auto", "triton", "torch")
_RESIDENT_SHARE = 0.85  # of the device's free memory the resident rows may take


def choose_kernel(kernel: str, device: torch.device) -> str:
    """"triton" (the fused kernel over resident rows) or "torch" (streamed); "auto" picks Triton on CUDA only."""
    if kernel not in KERNELS:
        raise ConfigError(f"multi-vector kernel must be auto, triton or torch, got {kernel!r}")
    if kernel == "triton" and not triton_available(device):
        raise ConfigError(f"the Triton MaxSim kernel cannot run on {device} (needs CUDA and triton)")
    auto_triton = kernel == "auto" and device.type == "cuda" and triton_available(device)
    return "triton" if kernel == "triton" or auto_triton else "torch"


@dataclass(frozen=True)
class StoreRows:
    """What a search reads of a store: its entry table, its shards, and each shard's committed rows by serial."""

    table: np.ndarray
    shards: list[Shard]
    next_serial: int
    rows_of: Callable[[int], np.ndarray]


@dataclass(frozen=True)
class ResidentRows:
    """Every shard's rows on the device, for the fused kernel: live page i is rows[starts[i] : starts[i] + lengths[i]]
    and table row entries[i]; position[table row] is its packed index (-1 when tombstoned)."""

    rows: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    entries: np.ndarray
    position: np.ndarray


def top_pages(page_scores: np.ndarray, table: np.ndarray, k: int) -> list[list[Hit]]:
    """The top-k of each column of (entries, queries) scores, best first; ties by page id, for stable output."""
    results = []
    for column in range(page_scores.shape[1]):
        scores = page_scores[:, column]
        candidates = np.flatnonzero(np.isfinite(scores))  # tombstoned entries stay -inf
        if len(candidates) > k:
            candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        page_ids = table["page_id"][candidates]
        order = np.lexsort((page_ids, -scores[candidates]))
        results.append([Hit(page_id=int(page_ids[i]), score=float(scores[candidates[i]])) for i in order])
    return results


class MaxSimSearch:
    """One store's search state: its device and kernel, the chunk plan of the streamed path and the resident rows
    of the fused one, both derived from the table and dropped by `forget` when it changes. The caller holds the
    store's lock around every call."""

    def __init__(self, directory: Path, dim: int, *, device: str, kernel: str, chunk_rows: int | None):
        self.directory = directory
        self.dim = dim
        self.device = device = torch.device(device)
        self.kernel = choose_kernel(kernel, device)
        self.chunk_rows = chunk_rows or DEFAULT_CHUNK_ROWS.get(device.type, DEFAULT_CHUNK_ROWS["cpu"])
        self.resident: ResidentRows | None = None
        self._resident_refused = False
        self._plan: list[tuple[int, int, int, np.ndarray, torch.Tensor]] | None = None

    def forget(self) -> None:
        """Drop what is derived from the table and shards: the chunk plan and the device-resident rows."""
        self._plan = None
        self.resident, self._resident_refused = None, False

    def close(self) -> None:
        self.resident = None  # frees the device copy

    # ------------------------------------------------------------------------------------------------ resident

    def resident_rows(self, store: StoreRows) -> ResidentRows | None:
        """The device-resident copy the kernel reads, built on first search after a change.

        None when the torch path serves (kernel "torch"), or when the rows do not fit in the device's free memory:
        then search streams chunks from the memory-mapped shards instead, as on CPU."""
        if self.kernel != "triton" or self._resident_refused or self.resident is not None:
            return self.resident
        total = sum(shard.rows for shard in store.shards)
        need = total * self.dim * ROW_DTYPE.itemsize
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if need > _RESIDENT_SHARE * free:
                log.warning(
                    "%s: %.1f GB of token rows do not fit in %s's %.1f GB free; streaming from disk instead",
                    self.directory, need / 1e9, self.device, free / 1e9,
                )
                self._resident_refused = True
                return None
        rows = torch.empty((total, self.dim), dtype=torch.float16, device=self.device)
        base = np.zeros(store.next_serial + 1, dtype=np.int64)
        offset = 0
        for shard in store.shards:
            base[shard.serial] = offset
            mapped = store.rows_of(shard.serial)
            for first in range(0, shard.rows, COPY_ROWS):
                block = torch.from_numpy(np.array(mapped[first : first + COPY_ROWS]))  # a copy: the map is read-only
                rows[offset + first : offset + first + len(block)].copy_(block)
            offset += shard.rows
        table = store.table
        entries = np.flatnonzero(table["deleted"] == 0)
        position = np.full(len(table), -1, dtype=np.int64)
        position[entries] = np.arange(len(entries))
        starts = base[table["shard"][entries]] + table["start"][entries]
        self.resident = ResidentRows(
            rows=rows,
            starts=torch.from_numpy(starts.astype(np.int64)).to(self.device),
            lengths=torch.from_numpy(table["n_tokens"][entries].astype(np.int32)).to(self.device),
            entries=entries,
            position=position,
        )
        log.info("%s: %d pages (%.2f GB) resident on %s for the MaxSim kernel", self.directory, len(entries),
                 need / 1e9, self.device)
        return self.resident

    def search_resident(
        self, resident: ResidentRows, table: np.ndarray, queries: list[np.ndarray], k: int
    ) -> list[list[Hit]]:
        """Top-k pages per query through the fused kernel over the resident rows; top-k on the device too."""
        with torch.inference_mode():
            scores = maxsim_triton(resident.rows, resident.starts, resident.lengths, pack_queries(queries, self.device))
            best = torch.topk(scores, min(k, scores.shape[0]), dim=0)
            values, packed = best.values.cpu().numpy(), best.indices.cpu().numpy()
        results = []
        for column in range(len(queries)):
            entries = resident.entries[packed[:, column]]
            page_ids = table["page_id"][entries]
            order = np.lexsort((page_ids, -values[:, column]))
            results.append([Hit(page_id=int(page_ids[i]), score=float(values[i, column])) for i in order])
        return results

    def score_resident_rows(self, resident: ResidentRows, query: np.ndarray, table_rows: list[int]) -> np.ndarray:
        """MaxSim of one query against these (live) table rows, through the kernel."""
        packed = torch.from_numpy(resident.position[table_rows]).to(self.device)
        return maxsim_triton(
            resident.rows, resident.starts[packed], resident.lengths[packed], pack_queries([query], self.device)
        )[:, 0].cpu().numpy()

    # ------------------------------------------------------------------------------------------------ streamed

    def score_pages(self, store: StoreRows, queries: list[np.ndarray]) -> np.ndarray:
        """(entries, queries) MaxSim scores; -inf for tombstoned entries and chunks holding none alive."""
        query_lengths = torch.tensor([len(query) for query in queries])
        query_tokens = torch.from_numpy(np.ascontiguousarray(np.concatenate(queries))).to(self.device)
        # Summing each query's columns is a matmul with a 0/1 (query tokens x queries) matrix.
        owner = torch.repeat_interleave(torch.arange(len(queries)), query_lengths)
        column_sum = torch.nn.functional.one_hot(owner, len(queries)).to(self.device, torch.float32)
        page_scores = np.full((len(store.table), len(queries)), -np.inf, dtype=np.float32)
        alive = store.table["deleted"] == 0
        with torch.inference_mode():
            for serial, row_start, row_stop, entries, lengths in self._chunk_plan(store.table):
                if not alive[entries].any():
                    continue  # only tombstones here: skip the read entirely
                rows = torch.from_numpy(np.array(store.rows_of(serial)[row_start:row_stop]))
                rows = rows.to(self.device, non_blocking=True).to(torch.float32)
                similarity = rows @ query_tokens.T  # (rows, all query tokens)
                maxima = torch.segment_reduce(similarity, "max", lengths=lengths.to(self.device), axis=0)
                page_scores[entries] = (maxima @ column_sum).cpu().numpy()
        page_scores[~alive] = -np.inf
        return page_scores

    def score_entries(self, store: StoreRows, query: np.ndarray, entries: np.ndarray) -> np.ndarray:
        """MaxSim of one query against these table entries, reading only their rows."""
        blocks = [np.asarray(store.rows_of(int(e["shard"]))[e["start"] : e["start"] + e["n_tokens"]]) for e in entries]
        with torch.inference_mode():
            tokens = torch.from_numpy(np.concatenate(blocks)).to(self.device).to(torch.float32)
            similarity = tokens @ torch.from_numpy(query).to(self.device).T
            lengths = torch.from_numpy(entries["n_tokens"].astype(np.int64)).to(self.device)
            return torch.segment_reduce(similarity, "max", lengths=lengths, axis=0).sum(dim=1).cpu().numpy()

    def _chunk_plan(self, table: np.ndarray) -> list[tuple[int, int, int, np.ndarray, torch.Tensor]]:
        """(shard serial, first row, end row, entry indices, token counts) per chunk of whole pages.

        Entries are grouped by the chunk_rows-sized window their first row falls in, so a chunk exceeds chunk_rows
        by at most one page. Cached until the table changes (forget)."""
        if self._plan is not None:
            return self._plan
        order = np.lexsort((table["start"], table["shard"]))
        shards, starts, counts = table["shard"][order], table["start"][order], table["n_tokens"][order]
        window = starts // self.chunk_rows
        breaks = np.flatnonzero((np.diff(shards) != 0) | (np.diff(window) != 0)) + 1
        plan = []
        for group in np.split(np.arange(len(order)), breaks):
            if len(group) == 0:
                continue
            first, last = group[0], group[-1]
            row_start, row_stop = int(starts[first]), int(starts[last] + counts[last])
            lengths = torch.from_numpy(counts[group].astype(np.int64))
            plan.append((int(shards[first]), row_start, row_stop, order[group], lengths))
        self._plan = plan
        return plan
