"""Retrievers as plug-ins: the contract (base.py), one module per built-in retriever, and the one registry by name
that the job, the search path, the config, the CLI and the API read their names from.

    RETRIEVERS.names()          ['clip', 'colpali', 'text', 'lexical', 'dates', 'bipage'] (registration order, kept
                                by fusion)
    RETRIEVERS.get("colpali")   the Retriever; an unknown name raises UnknownNameError listing the known ones
    RETRIEVERS.register(cls)    a decorator: adds a retriever (tests add one of their own and remove it after)
    load_embedders(settings)    every enabled retriever's model; one that cannot load is off, with its reason

An installed package adds retrievers by naming a module under the `mmrag.retrievers` entry-point group
(`[project.entry-points."mmrag.retrievers"] mine = "my_package.retriever"`); that module registers them on import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from mmrag.errors import ConfigError, ModelUnavailableError, UnknownNameError
from mmrag.retrievers.base import (
    Embedded,
    Embedders,
    ModelRecord,
    PageBatch,
    Query,
    QueryKind,
    Retriever,
    SearchContext,
    SingleVectorRetriever,
)

if TYPE_CHECKING:
    from mmrag.config import Settings

__all__ = [
    "RETRIEVERS",
    "Embedded",
    "Embedders",
    "ModelRecord",
    "PageBatch",
    "Query",
    "Retriever",
    "RetrieverRegistry",
    "SearchContext",
    "SingleVectorRetriever",
    "load_embedders",
    "load_plugins",
]

log = logging.getLogger(__name__)


class RetrieverRegistry:
    """Retrievers by name, in registration order."""

    def __init__(self) -> None:
        self._retrievers: dict[str, Retriever] = {}

    def register(self, cls: type[Retriever]) -> type[Retriever]:
        name = cls.name
        if name in self._retrievers and type(self._retrievers[name]) is not cls:
            raise ValueError(f"a retriever named {name!r} is already registered")
        self._retrievers[name] = cls()
        return cls

    def unregister(self, name: str) -> None:
        self._retrievers.pop(name, None)

    def get(self, name: str) -> Retriever:
        try:
            return self._retrievers[name]
        except KeyError:
            raise UnknownNameError("retriever", name, list(self._retrievers)) from None

    def names(self) -> list[str]:
        return list(self._retrievers)

    def taking(self, kind: QueryKind) -> list[str]:
        """The names of the retrievers that take this kind of query ("text" or "image")."""
        return [name for name, retriever in self._retrievers.items() if kind in retriever.query_kinds]

    def check(self, names: Iterable[str], where: str | None = None) -> None:
        """Names that are not registered are a ConfigError listing the known ones (and naming `where`, a setting)."""
        unknown = sorted(set(names) - set(self._retrievers))
        if unknown:
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown retrievers {unknown}; known: {', '.join(self._retrievers)}")

    def __iter__(self) -> Iterator[Retriever]:
        return iter(list(self._retrievers.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._retrievers


RETRIEVERS = RetrieverRegistry()


def load_embedders(
    settings: Settings, registry: RetrieverRegistry = RETRIEVERS, *, names: Iterable[str] | None = None
) -> Embedders:
    """Load every enabled retriever's model (`names`: only these retrievers'); one that cannot load is switched off
    with its reason (never faked)."""
    embedders = Embedders(meaningless=settings.embedders.profile == "tiny-random")
    wanted = None if names is None else set(names)
    for retriever in registry:
        if not retriever.embeds or (wanted is not None and retriever.name not in wanted):
            continue
        if not retriever.enabled(settings):
            embedders.off[retriever.name] = "disabled in settings"
            continue
        try:
            embedders.models[retriever.name] = retriever.load(settings)
        except ModelUnavailableError as exc:
            log.info("retriever %s is off: %s", retriever.name, exc)  # callers report it (the CLI prints a table)
            embedders.off[retriever.name] = str(exc)
    return embedders


ENTRY_POINTS = "mmrag.retrievers"  # the entry-point group an installed package registers its retrievers under


def load_plugins(group: str = ENTRY_POINTS) -> list[str]:
    """Import the modules installed packages name under the `mmrag.retrievers` entry-point group (each registers
    its retrievers on import, as the built-in ones do); returns their names. A plug-in that fails to import is
    logged with its error and skipped: the built-in retrievers still serve."""
    from importlib.metadata import entry_points

    loaded = []
    for entry in entry_points(group=group):
        try:
            entry.load()
        except Exception as exc:  # noqa: BLE001 - a third party's import error of any kind must not stop mmrag
            log.error("retriever plug-in %s (%s) could not be loaded: %s: %s", entry.name, entry.value,
                      type(exc).__name__, exc)
        else:
            loaded.append(entry.name)
    return loaded


# The built-in retrievers register themselves on import, in this order (fusion and listings keep it); installed
# plug-ins follow them.
from mmrag.retrievers import clip, colpali, text, lexical, dates, bipage  # noqa: E402,F401,I001

load_plugins()
