"""Registry[T]: a small name → factory table for each pluggable part."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from mmrag.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            self._factories[name] = factory
            return factory

        return decorate

    def create(self, name: str, /, *args: object, **kwargs: object) -> T:
        try:
            factory = self._factories[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, list(self._factories)) from None
        return factory(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._factories)
