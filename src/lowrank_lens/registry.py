"""A tiny name -> class registry with an error that lists the valid names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import LensError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            valid = ", ".join(sorted(self._items))
            raise LensError(f"unknown {self.kind} {name!r}; choose one of: {valid}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
