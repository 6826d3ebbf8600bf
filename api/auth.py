"""Optional API keys, each scoped to collections: who is calling, and which collections they may use.

Off when MMRAG_API__KEYS is empty. On, every /v1 route needs `Authorization: Bearer KEY` (or `X-API-Key: KEY`);
a key reads and writes only its collections ("*": all). Ids (documents, pages, jobs) of other collections answer
404, as if they did not exist; naming another collection outright answers 403.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import Forbidden, Unauthorized
from mmrag.documents import collection_names
from mmrag.errors import NotFoundError
from mmrag.services import Services

ALL = "*"

_bearer = HTTPBearer(auto_error=False, description="an API key from MMRAG_API__KEYS (when keys are on)")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key, as a header")


@dataclass(frozen=True)
class Principal:
    """The caller: the collections their key may use, or None for every collection (keys off, or a "*" key)."""

    collections: frozenset[str] | None

    def may(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def scope(self) -> frozenset[str] | None:
        """What library lookups by id are limited to (None: no limit)."""
        return self.collections

    def writable(self, collection: str) -> str:
        if not self.may(collection):
            raise Forbidden(f"this API key may not write to collection {collection!r}")
        return collection

    def readable(self, services: Services, requested: Sequence[str] | None) -> list[str]:
        """The collections a read uses: the ones named (each allowed and existing), or every allowed one."""
        existing = collection_names(services)
        if not requested:
            return [name for name in existing if self.may(name)]
        names = list(dict.fromkeys(requested))
        for name in names:
            if not self.may(name):
                raise Forbidden(f"this API key may not read collection {name!r}")
        for name in names:
            if name not in existing:
                # Unlike retrieval's own message, this one lists no other collections: they may not be the caller's.
                raise NotFoundError(f"collection {name!r} does not exist")
        return names


def principal(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
    api_key: str | None = Depends(_api_key),
) -> Principal:
    keys: dict[str, list[str]] = request.app.state.settings.api.keys
    if not keys:
        return Principal(None)
    given = bearer.credentials if bearer is not None else api_key
    if not given:
        raise Unauthorized(
            "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    match: list[str] | None = None
    for key, collections in keys.items():  # every key compared, in constant time, so timing tells nothing
        if hmac.compare_digest(given.encode("utf-8", "surrogatepass"), key.encode("utf-8", "surrogatepass")):
            match = collections
    if match is None:
        raise Unauthorized("the API key is not valid", headers={"WWW-Authenticate": "Bearer"})
    return Principal(None if ALL in match else frozenset(match))
