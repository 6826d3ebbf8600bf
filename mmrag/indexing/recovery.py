"""Crash recovery for a collection: SQL and every vector store brought back into agreement, lost vectors repaired.

A job's writes follow one ordering (see mmrag.indexing): pages committed `pending`, vectors flushed to the stores,
then one SQL transaction vouches for them. Recovery undoes whatever a crash left between those steps.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mmrag.index.manifest import atomic_write_bytes, file_identity
from mmrag.indexing.embedding import PendingPage, embed_pages, input_specs, store_vectors
from mmrag.collections import CollectionStores
from mmrag.retrievers import RETRIEVERS, Embedders
from mmrag.services import Services
from mmrag.store import bulk, repository
from mmrag.store.db import transaction
from mmrag.tags import TAGGED_BY, job_tagger, write_tags

log = logging.getLogger(__name__)

AGREED_FILE = "agreed.json"  # in a collection's vectors directory: see record_agreement


def recover(
    services: Services, collection_id: int, stores: CollectionStores, *, compare: bool = True
) -> dict[str, int]:
    """Bring SQL and every store back into agreement after a crash; returns what it had to fix. Without `compare`
    (the stores are as the last finished write left them: stores_agree) only pending documents are dropped."""
    fixed = {"incomplete_documents": 0, "orphan_vectors": 0, "lost_vectors": 0}
    with transaction(services.sessions) as session:
        for document in repository.incomplete_documents(session, collection_id):
            repository.drop_pages(session, [document.id])
            session.delete(document)
            fixed["incomplete_documents"] += 1
    if not compare:
        return fixed
    with transaction(services.sessions) as session:
        for name, store in stores.by_retriever().items():
            vouched = repository.embedded_page_ids(session, collection_id, name)
            stored = set(int(i) for i in store.ids())
            orphans = stored - vouched
            lost = vouched - stored
            if orphans:
                store.remove(sorted(orphans))
                fixed["orphan_vectors"] += len(orphans)
            if lost:
                # The next step (repair) re-embeds these pages from their stored images.
                repository.forget_embeddings(session, lost, name)
                fixed["lost_vectors"] += len(lost)
        stores.flush()
    if any(fixed.values()):
        log.warning("recovered collection %s: %s", collection_id, fixed)
    return fixed


def _agreement(services: Services, collection_id: int, stores: CollectionStores) -> dict[str, Any] | None:
    """What record_agreement writes: the collection's generation, the retrievers whose stores are loaded, and the
    identity (inode, size, mtime) of every file that holds them. None for a backend whose files it cannot name."""
    files: dict[str, list[list[int] | None]] = {}
    for name, store in stores.by_retriever().items():
        paths = store.files()
        if paths is None:
            return None
        # lists, as the JSON it is compared with reads back
        files[name] = [list(identity) if (identity := file_identity(path)) else None for path in paths]
    return {"generation": services.collections.generation(collection_id), "retrievers": sorted(files), "files": files}


def record_agreement(services: Services, collection_id: int, stores: CollectionStores) -> None:
    """Note, once a job or delete has finished with every store flushed, that SQL and the stores agree as they are
    now. The next job skips comparing them (stores_agree) while nothing has changed since: comparing reads every
    page id SQL vouches for and every id each store holds, and finding pages without vectors scans every page,
    which grows with the collection."""
    agreement = _agreement(services, collection_id, stores)
    path = stores.directory / AGREED_FILE
    if agreement is None:
        path.unlink(missing_ok=True)
        return
    atomic_write_bytes(path, json.dumps(agreement).encode())


def stores_agree(services: Services, collection_id: int, stores: CollectionStores) -> bool:
    """Whether SQL and the stores are as record_agreement last found them agreeing. Any write since changes the
    generation (SQL vouched for vectors or deleted a document) or a store's files (vectors flushed that SQL never
    vouched for: a crash in between), and a store restored from a copy has other files; then they are compared."""
    try:
        recorded = json.loads((stores.directory / AGREED_FILE).read_bytes())
    except (OSError, ValueError):
        return False
    return recorded == _agreement(services, collection_id, stores)


def repair(services: Services, collection_id: int, stores: CollectionStores, embedders: Embedders) -> int:
    """Embed indexed pages that lack vectors for a loaded retriever, from their stored page images (or text)."""
    repaired = 0
    settings = services.settings
    specs = input_specs(embedders, settings, services.storage_dir)
    for name in embedders.on():
        with services.sessions() as session:
            missing = repository.pages_missing_embedding(session, collection_id, name)
            work = [(p.id, p.image_path, p.text) for p in missing]
        embeds = RETRIEVERS.get(name).pages_it_embeds([text for _, _, text in work])
        work = [w for w, embedded in zip(work, embeds, strict=True) if embedded]
        if not work:
            continue
        log.info("re-embedding %d pages for retriever %s", len(work), name)
        only = embedders.only(name)
        # CLIP turned on for a collection indexed without it: its photos get their tags with their vectors.
        tagger = job_tagger(services, collection_id, only) if name == TAGGED_BY else None
        for start in range(0, len(work), settings.batch_pages):
            chunk = work[start : start + settings.batch_pages]
            pages = [PendingPage(pid, path, text) for pid, path, text in chunk]
            vectors = embed_pages(only, stores, pages, services.storage_dir, settings=settings, specs=specs)
            records = store_vectors(only, stores, vectors)
            stores.flush()
            with transaction(services.sessions) as session:
                bulk.insert_embeddings(session, records)
                if tagger is not None and name in vectors:
                    write_tags(session, tagger, vectors[name].ids, vectors[name].vectors)
            repaired += len(chunk)
    return repaired
