"""A tiny name -> class registry with an error that lists the valid names, and plugin discovery: a registry
tied to a package imports every module of it on first lookup, so adding a plugin is adding one file."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import LensError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str | None = None, skip: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._unlisted: set[str] = set()
        self._package, self._skip, self._discovered = package, skip, package is None

    def _discover(self) -> None:
        """Import every module of the plugin package once (each registers itself on import)."""
        if self._discovered:
            return
        self._discovered = True
        for info in pkgutil.iter_modules(sys.modules[self._package].__path__):
            if info.name not in self._skip:
                importlib.import_module(f"{self._package}.{info.name}")

    def register(self, name: str, listed: bool = True) -> Callable[[T], T]:
        """`listed=False`: found by `get`, left out of `names` (a reader-only plugin: the method of imported
        runs, which nothing trains, so nothing that iterates over the methods should see it)."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            if not listed:
                self._unlisted.add(name)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove what `register` added under `name` (a plugin a test registered for its own duration)."""
        del self._items[name]
        self._unlisted.discard(name)

    def get(self, name: str) -> T:
        self._discover()
        if name not in self._items:
            valid = ", ".join(self.names())
            raise LensError(f"unknown {self.kind} {name!r}; choose one of: {valid}")
        return self._items[name]

    def names(self) -> list[str]:
        self._discover()
        return sorted(set(self._items) - self._unlisted)

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._items
