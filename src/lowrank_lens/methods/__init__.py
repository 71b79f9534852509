"""Training methods as plugins: one file per method, registered by name.

Importing this package imports every module in it, so adding a method is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..registry import Registry
from .base import Method, MethodPreset

METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a Method subclass under its `name`."""
    return METHODS.register(cls.name)(cls)


def get_method(name: str) -> type[Method]:
    _discover()
    return METHODS.get(name)


def method_names() -> list[str]:
    _discover()
    return METHODS.names()


_DISCOVERED = False


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["METHODS", "Method", "MethodPreset", "get_method", "method_names", "register"]
