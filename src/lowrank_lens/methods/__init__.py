"""Training methods as plugins: one file per method, registered by name.

The first lookup imports every module in this package, so adding a method is adding one file, then the modules
other distributions declare in the entry-point group `lowrank_lens.methods` (docs/plugins.md). A plugin
class defined elsewhere (a test's) is registered for the duration of a `with registered(cls):` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..registry import Registry
from .base import Method, MethodPreset

METHODS: Registry[type[Method]] = Registry("method", package=__name__, skip=("base",), group="lowrank_lens.methods")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a Method subclass under its `name`."""
    return METHODS.register(cls.name)(cls)


@contextmanager
def registered(cls: type[Method]) -> Iterator[type[Method]]:
    """Register a Method subclass defined outside this package, as @register does, for the duration of the
    block: every lookup (get_method, method_names, study presets, readers) sees it, and the registry is what
    discovery found again afterwards."""
    METHODS.names()  # discover first, so the plugins' own registrations cannot collide with the block's end
    register(cls)
    try:
        yield cls
    finally:
        METHODS.unregister(cls.name)


def get_method(name: str) -> type[Method]:
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()


__all__ = ["METHODS", "Method", "MethodPreset", "get_method", "method_names", "register", "registered"]
