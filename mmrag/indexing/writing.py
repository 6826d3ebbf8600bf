"""Writing a batch: its pages to SQL (pending), then the committer's embed and write threads (vectors flushed to
the stores, then one SQL transaction that vouches for them and marks the documents indexed)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmrag.indexing.embedding import BatchVectors, PendingPage, store_vectors
from mmrag.ingest import ingest_version
from mmrag.ingest.results import LoadedFile
from mmrag.collections import CollectionStores
from mmrag.retrievers import Embedders
from mmrag.services import Services
from mmrag.store import bulk, repository
from mmrag.store.db import transaction
from mmrag.store.models import utcnow
from mmrag.tags import TAGGED_BY, Tagger, write_tags
from mmrag.types import ItemState


@dataclass
class Batch:
    """Files loaded since the last hand-over, and what their commit settles."""

    pages: list[PendingPage] = field(default_factory=list)
    document_ids: list[int] = field(default_factory=list)
    item_pages: dict[int, tuple[int, int]] = field(default_factory=dict)  # job item id → (document id, pages)
    duplicate_item_ids: list[int] = field(default_factory=list)
    loaded: list[tuple[int, LoadedFile]] = field(default_factory=list)  # (document id, file) whose pages await SQL


def write_pages(services: Services, loaded: list[tuple[int, LoadedFile]]) -> list[list[int]]:
    """Commit the documents' pages in one transaction (status stays pending until their vectors are durable);
    returns each document's page ids, in page order."""
    if not loaded:
        return []
    version = ingest_version()
    documents = [
        {"document_id": document_id, "kind": file.kind, "mime": file.mime,
         "page_count": len(file.pages) + len(file.failed_pages), "ingest_version": version}
        for document_id, file in loaded
    ]
    pages = [
        {"document_id": document_id, "page_number": page.page_number, "width": page.width, "height": page.height,
         "image_path": page.image_path, "text": page.text, "text_source": page.text_source,
         "renderer": page.renderer}
        for document_id, file in loaded
        for page in file.pages
    ]
    failed = [
        {"document_id": document_id, "page_number": number, "reason": reason}
        for document_id, file in loaded
        for number, reason in file.failed_pages
    ]
    with transaction(services.sessions) as session:
        id_of_page = bulk.insert_pages(session, documents, pages, utcnow(), failed)
        bulk.insert_page_dates(session, [
            {"page_id": id_of_page[(document_id, page.page_number)], "date": day}
            for document_id, file in loaded
            for page in file.pages
            for day in page.dates
        ])
        bulk.insert_page_words(session, [
            {"page_id": id_of_page[(document_id, page.page_number)], "words": page.words}
            for document_id, file in loaded
            for page in file.pages
            if page.words
        ])
    return [[id_of_page[(document_id, page.page_number)] for page in file.pages] for document_id, file in loaded]


def write_batch(
    services: Services,
    collection_id: int,
    stores: CollectionStores,
    embedders: Embedders,
    batch: Batch,
    embedded: BatchVectors,
    tagger: Tagger | None = None,
) -> None:
    """Vectors into the stores, the stores flushed, then one SQL transaction vouches for them (and writes the
    photos' tags made from their CLIP vectors, with `tagger`)."""
    records = store_vectors(embedders, stores, embedded)
    stores.flush()  # vectors durable before SQL vouches for them
    with transaction(services.sessions) as session:
        bulk.insert_embeddings(session, records)
        if tagger is not None and (clip := embedded.get(TAGGED_BY)) is not None:
            write_tags(session, tagger, clip.ids, clip.vectors)
        now = utcnow()
        if batch.document_ids:
            bulk.mark_indexed(session, batch.document_ids, now)
            repository.bump_generation(session, collection_id)
        bulk.set_items_indexed(session, batch.item_pages, now)
        repository.set_items(session, batch.duplicate_item_ids, state=ItemState.DUPLICATE)


class Committer:
    """Embeds and commits batches behind the job's thread, in two stages with a thread each, in submission order:

        job thread ──batch──▶ embed thread (collate, copy to the device, forward) ──vectors──▶ write thread
                                                               (store adds, flush, one SQL transaction)

    so that while batch N runs on the device, batch N+1 is decoded and written to SQL by the job thread and
    batch N-1's vectors are flushed and vouched for (torch, FAISS I/O and the database driver release the GIL).
    Every change to the stores happens on the write thread, in order: the stores are not thread-safe, and the
    crash ordering (vectors flushed, then SQL vouches) holds per batch exactly as if it ran inline. At most
    `depth` batches wait at each stage, which bounds memory; an error stops the job at the next submit or at close.
    An `embed` that sends the batch elsewhere (Ray's actors) returns a function that waits for its vectors: the
    write thread calls it, so up to `depth` batches are out being embedded at once, written in order as they come.
    """

    def __init__(
        self,
        embed: Callable[[Batch], BatchVectors | Callable[[], BatchVectors]],
        write: Callable[[Batch, BatchVectors], None],
        stores: CollectionStores,
        *,
        depth: int = 2,
    ) -> None:
        self._embed = embed
        self._write = write
        self._stores = stores
        self._to_embed: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=depth)
        self._to_write: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        # Busy seconds of each stage, and how long submit() blocked on a full embed queue (the device is behind).
        self.seconds = {"embed": 0.0, "write": 0.0, "waiting_on_embed": 0.0, "waiting_on_actors": 0.0}
        self._threads = [
            threading.Thread(target=self._run_embed, name="mmrag-embed", daemon=True),
            threading.Thread(target=self._run_write, name="mmrag-write", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _run_embed(self) -> None:
        while (task := self._to_embed.get()) is not None:
            kind, payload = task
            if self._error is None and kind == "batch":
                began = time.perf_counter()
                try:
                    task = ("batch", (payload, self._embed(payload)))
                except BaseException as exc:  # noqa: BLE001 - re-raised in the job's thread
                    self._error = exc
                self.seconds["embed"] += time.perf_counter() - began
            self._to_write.put(task)  # removals pass through, keeping their order among the batches
        self._to_write.put(None)

    def _run_write(self) -> None:
        while (task := self._to_write.get()) is not None:
            if self._error is not None:
                continue  # drain without working, so no stage blocks on a dead consumer
            kind, payload = task
            began = time.perf_counter()
            try:
                if kind == "batch":
                    batch, vectors = payload
                    if callable(vectors):  # being embedded elsewhere (Ray actors): the later batches went out too
                        vectors = vectors()
                        waited = time.perf_counter() - began
                        self.seconds["waiting_on_actors"] += waited
                        began += waited
                    self._write(batch, vectors)
                else:
                    self._stores.remove(payload)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the job's thread
                self._error = exc
            self.seconds["write"] += time.perf_counter() - began

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, batch: Batch) -> None:
        self._raise_if_failed()
        began = time.perf_counter()
        self._to_embed.put(("batch", batch))
        self.seconds["waiting_on_embed"] += time.perf_counter() - began

    def remove(self, page_ids: list[int]) -> None:
        """Drop vectors of pages SQL already forgot (durable at the next flush)."""
        self._raise_if_failed()
        self._to_embed.put(("remove", page_ids))

    def close(self) -> None:
        """Wait for every submitted batch; raises the first error any of them met."""
        self._to_embed.put(None)
        for thread in self._threads:
            thread.join()
        self._raise_if_failed()
