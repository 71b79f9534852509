"""A tiny name -> class registry with an error that lists the valid names, and plugin discovery.

A registry tied to a package imports every module of it on first lookup, so adding a plugin to the package is
adding one file. A registry with an entry-point group then loads the plugins other installed distributions
declare in that group (docs/plugins.md): each entry point names a module, and importing it registers its
classes through the same `register` decorator as a module of the package. An outside plugin that fails to
import is skipped with one warning line; LOWRANK_LENS_NO_PLUGINS=1 turns outside plugins off.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from .errors import LensError, first_line

T = TypeVar("T")

log = logging.getLogger("lowrank_lens")

NO_PLUGINS_ENV = "LOWRANK_LENS_NO_PLUGINS"
"""Set to 1 (anything but empty or 0) to load no plugin of another distribution."""


class PluginConflict(LensError):
    """Two plugins claim one name: never skipped like a plugin that fails to import (which one would win?)."""


def outside_plugins_enabled() -> bool:
    return os.environ.get(NO_PLUGINS_ENV, "").strip() in ("", "0")


def describe_entry_point(ep: EntryPoint) -> str:
    """`entry point 'name' (module) of distribution 'dist' version`, as warnings and conflicts name it."""
    dist = f"distribution {ep.dist.name!r} {ep.dist.version}" if ep.dist is not None else "an unknown distribution"
    return f"entry point {ep.name!r} ({ep.value}) of {dist}"


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str | None = None, skip: tuple[str, ...] = (),
                 group: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._unlisted: set[str] = set()
        self._package, self._skip, self._discovered = package, skip, package is None and group is None
        self.group = group
        self._loading: EntryPoint | None = None  # the entry point whose module is being imported

    def _discover(self) -> None:
        """Import every module of the plugin package once (each registers itself on import), then the modules
        the entry points of the group name (after the package's, so a clash names the outside plugin)."""
        if self._discovered:
            return
        self._discovered = True
        if self._package is not None:
            for info in pkgutil.iter_modules(sys.modules[self._package].__path__):
                if info.name not in self._skip:
                    importlib.import_module(f"{self._package}.{info.name}")
        if self.group is not None and outside_plugins_enabled():
            for ep in entry_points(group=self.group):
                self._load_entry_point(ep)

    def _load_entry_point(self, ep: EntryPoint) -> None:
        """Import the module `ep` names; its `register` calls record `ep` as their source. A failure (or a
        module that registers nothing) is one warning line, and what the module registered before it failed
        is removed again, so the rest of the toolkit works as without it."""
        before = set(self._items)
        self._loading = ep
        try:
            ep.load()
        except PluginConflict:
            raise
        except Exception as e:
            for name in set(self._items) - before:
                self.unregister(name)
            log.warning(f"{self.kind} plugin {describe_entry_point(ep)} failed to import and is skipped: "
                        f"{type(e).__name__}: {first_line(e)} (set {NO_PLUGINS_ENV}=1 to load no outside plugin)")
            return
        finally:
            self._loading = None
        if set(self._items) == before:
            log.warning(f"{self.kind} plugin {describe_entry_point(ep)} registered no {self.kind}: its module must "
                        f"decorate its class with @register (docs/plugins.md)")

    def register(self, name: str, listed: bool = True) -> Callable[[T], T]:
        """`listed=False`: found by `get`, left out of `names` (a reader-only plugin: the method of imported
        runs, which nothing trains, so nothing that iterates over the methods should see it)."""

        def deco(obj: T) -> T:
            where = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"
            source = f"{where} from {describe_entry_point(self._loading)}" if self._loading else where
            if name in self._items:
                raise PluginConflict(f"{self.kind} {name!r} is registered twice: by {self._sources[name]} and by "
                                     f"{source}; rename one of them, uninstall one distribution, or set "
                                     f"{NO_PLUGINS_ENV}=1 to load no outside plugin")
            self._items[name] = obj
            self._sources[name] = source
            if not listed:
                self._unlisted.add(name)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove what `register` added under `name` (a plugin a test registered for its own duration)."""
        del self._items[name]
        self._sources.pop(name, None)
        self._unlisted.discard(name)

    def source(self, name: str) -> str:
        """Where the class registered under `name` comes from: its module and class, and the entry point and
        distribution of an outside plugin."""
        self._discover()
        return self._sources[name]

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
