"""Deleting documents from a collection: SQL first, then their vectors, under the collection's writer lock."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mmrag.errors import NotFoundError
from mmrag.indexing.recovery import record_agreement
from mmrag.indexing.run import collection_writer
from mmrag.services import Services
from mmrag.store import repository
from mmrag.store.db import transaction


def delete_documents(
    services: Services, collection: str, *, document_ids: Iterable[int] = (), paths: Iterable[str] = ()
) -> list[int]:
    """Delete documents by id or by a path they were seen at; SQL first, then the vectors (orphans of a crash
    between the two are removed by the next `recover`). Returns the deleted document ids."""
    targets: set[int] = set()
    with services.sessions() as session:
        collection_id = repository.get_collection(session, collection).id
        for document_id in document_ids:
            if repository.get_document(session, document_id).collection_id != collection_id:
                raise NotFoundError(f"document {document_id} is not in collection {collection!r}")
            targets.add(document_id)
        for path in paths:
            resolved = str(Path(path).resolve())
            found = repository.find_path(session, collection_id, resolved)
            if found is None:
                raise NotFoundError(f"no document was indexed from path {resolved!r} in collection {collection!r}")
            targets.add(found.document_id)
    with collection_writer(services, collection_id, collection):
        return _delete_locked(services, collection_id, sorted(targets))


def _delete_locked(services: Services, collection_id: int, document_ids: list[int]) -> list[int]:
    removed_pages: list[int] = []
    with transaction(services.sessions) as session:
        for document_id in document_ids:
            removed_pages += repository.mark_deleted(session, repository.get_document(session, document_id))
    if removed_pages:
        stores = services.collections.stores(collection_id)
        stores.remove(removed_pages)
        stores.flush()
        stores.compact_if_worthwhile(services.settings.index.compact_tombstone_ratio)
        record_agreement(services, collection_id, stores)
    return document_ids
