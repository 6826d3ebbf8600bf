"""build_services(settings): the one composition root shared by the CLI, the API and the tests."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mmrag.collections import Collections
from mmrag.config import Settings
from mmrag.retrievers import RETRIEVERS, Embedders, load_embedders
from mmrag.store.db import build_engine, build_sessionmaker, upgrade

log = logging.getLogger(__name__)

__all__ = ["Services", "build_services"]


class Services:
    """Everything a caller needs, built once per process from Settings: the settings, the database engine and
    sessions, the models (loaded lazily, once, under a lock) and the open collections (`collections`: their stores,
    writer lock and derived indexes, mmrag.collections and mmrag.derived). Wiring only: it holds no state of its
    own beyond the loaded models."""

    def __init__(
        self, settings: Settings, engine: Engine, *, embedders: Embedders | None = None
    ) -> None:
        RETRIEVERS.check(settings.retrieval.weights, "retrieval.weights")
        self.settings = settings
        self.engine = engine
        self.sessions: sessionmaker[Session] = build_sessionmaker(engine)
        self._embedders = embedders
        # Every retriever's model has been tried (or the caller passed them all in): nothing more to load.
        self._complete = embedders is not None
        self._lock = threading.Lock()
        self.collections = Collections(settings, self.sessions, self.embedders)

    @property
    def storage_dir(self) -> Path:
        """Where page images, uploads and each collection's files live (settings.storage_dir())."""
        return self.settings.storage_dir()

    def vector_backend(self) -> tuple[str, str | None]:
        """The vector backend in words, and why it cannot serve now (None: it can). The local backends' files are
        opened with each collection; a Qdrant server is asked (one call)."""
        index = self.settings.index
        if index.backend != "qdrant":
            return f"{index.backend} files in {self.storage_dir}", None
        from mmrag.index import qdrant_index

        return qdrant_index.describe(index.qdrant), qdrant_index.problem(index.qdrant)

    def embedders(self, names: Iterable[str] | None = None) -> Embedders:
        """The models, each loaded at its first need and kept: every retriever's (the default: a job, the service's
        lifespan, GET /ready), or only those `names` asks for besides those already loaded (a one-shot query loads
        what it uses; () loads nothing). A retriever whose model could not load is in `off` and not tried again."""
        with self._lock:
            if self._embedders is None:
                self._embedders = Embedders(meaningless=self.settings.embedders.profile == "tiny-random")
            elif self._complete:
                return self._embedders
            tried = set(self._embedders.models) | set(self._embedders.off)
            wanted = {r.name for r in RETRIEVERS if r.embeds} if names is None else set(names)
            if wanted - tried:
                loaded = load_embedders(self.settings, names=wanted - tried)
                self._embedders.models.update(loaded.models)
                self._embedders.off.update(loaded.off)
            self._complete = names is None
            return self._embedders

    def close(self) -> None:
        self.collections.close()
        self.engine.dispose()


def build_services(settings: Settings, *, embedders: Embedders | None = None, migrate: bool = True) -> Services:
    """The composition root. `embedders` lets tests pass tiny models in; `migrate` runs Alembic to head."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.storage_dir().mkdir(parents=True, exist_ok=True)
    engine = build_engine(settings.database_url(), echo=settings.database.echo)
    if migrate:
        upgrade(engine)
    return Services(settings, engine, embedders=embedders)
