"""build_services(settings): the one composition root shared by the CLI, the API and the tests."""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mmrag.collections import RETRIEVERS, CollectionStores, Collections
from mmrag.config import Settings
from mmrag.errors import ModelUnavailableError
from mmrag.protocols import ImageEmbedder, LexicalIndex, MultiVectorEmbedder, TextEmbedder
from mmrag.store.db import build_engine, build_sessionmaker, upgrade

if TYPE_CHECKING:
    from mmrag.index.candidates import PooledCandidateIndex

log = logging.getLogger(__name__)

__all__ = ["RETRIEVERS", "CollectionStores", "Embedders", "Services", "build_services", "load_embedders"]


@dataclass
class Embedders:
    """The loaded models; a retriever whose model could not be loaded is None, with its reason in `off`."""

    clip: ImageEmbedder | None = None
    colpali: MultiVectorEmbedder | None = None
    text: TextEmbedder | None = None
    off: dict[str, str] = field(default_factory=dict)
    # True for the tiny-random profile: plumbing only, every score is meaningless.
    meaningless: bool = False

    def on(self) -> list[str]:
        return [name for name in RETRIEVERS if getattr(self, name) is not None]


def load_embedders(settings: Settings) -> Embedders:
    """Load every enabled embedder; one that cannot load is switched off with its reason (never faked)."""
    from mmrag.embedders import IMAGE_EMBEDDERS, MULTIVECTOR_EMBEDDERS, TEXT_EMBEDDERS

    group = settings.embedders
    embedders = Embedders(meaningless=group.profile == "tiny-random")
    table = {
        "clip": (group.clip.enabled, IMAGE_EMBEDDERS),
        "colpali": (group.colpali.enabled, MULTIVECTOR_EMBEDDERS),
        "text": (group.text.enabled, TEXT_EMBEDDERS),
    }
    for name, (enabled, registry) in table.items():
        if not enabled:
            embedders.off[name] = "disabled in settings"
            continue
        try:
            setattr(embedders, name, registry.create(group.profile, group))
        except ModelUnavailableError as exc:
            log.info("retriever %s is off: %s", name, exc)  # callers report it (the CLI prints a table)
            embedders.off[name] = str(exc)
    return embedders


class Services:
    """Everything a caller needs, built once per process from Settings: the settings, the database engine and
    sessions, the models (loaded lazily, once, under a lock) and the open collections (mmrag.collections).

    The collection methods below delegate to `collections` and its `derived` indexes; callers move to those."""

    def __init__(
        self, settings: Settings, engine: Engine, *, embedders: Embedders | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions: sessionmaker[Session] = build_sessionmaker(engine)
        self._embedders = embedders
        self._lock = threading.Lock()
        self.collections = Collections(settings, self.sessions, self.embedders)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def embedders(self) -> Embedders:
        with self._lock:
            if self._embedders is None:
                self._embedders = load_embedders(self.settings)
            return self._embedders

    def close(self) -> None:
        self.collections.close()
        self.engine.dispose()

    # --- delegations to the collections (mmrag.collections, mmrag.derived) ---------------------------------------

    def collection_dir(self, collection_id: int) -> Path:
        return self.collections.directory(collection_id)

    def generation(self, collection_id: int) -> int:
        return self.collections.generation(collection_id)

    def stores(self, collection_id: int, *, generation: int | None = None) -> CollectionStores:
        return self.collections.stores(collection_id, generation=generation)

    def writing(self, collection_id: int) -> AbstractContextManager[None]:
        return self.collections.writing(collection_id)

    def writer_lock(self, collection_id: int) -> AbstractContextManager[bool]:
        return self.collections.writer_lock(collection_id)

    def writer_lock_path(self, collection_id: int) -> Path:
        return self.collections.writer_lock_path(collection_id)

    def lexical(self, collection_id: int, *, generation: int | None = None, writer: bool = False) -> LexicalIndex:
        return self.collections.derived.lexical(collection_id, generation=generation, writer=writer)

    def refresh_lexical(self, collection_id: int) -> None:
        self.collections.derived.refresh_lexical(collection_id)

    def lexical_covers(self, collection_id: int, page_ids: list[int]) -> bool:
        return self.collections.derived.lexical_covers(collection_id, page_ids)

    def lexical_dir(self, collection_id: int) -> Path:
        return self.collections.derived.lexical_dir(collection_id)

    def candidate_index(self, collection_id: int) -> PooledCandidateIndex | None:
        return self.collections.derived.candidate_index(collection_id)

    def candidates_path(self, collection_id: int) -> Path:
        return self.collections.derived.candidates_path(collection_id)


def build_services(settings: Settings, *, embedders: Embedders | None = None, migrate: bool = True) -> Services:
    """The composition root. `embedders` lets tests pass tiny models in; `migrate` runs Alembic to head."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = build_engine(settings.database_url(), echo=settings.database.echo)
    if migrate:
        upgrade(engine)
    return Services(settings, engine, embedders=embedders)
