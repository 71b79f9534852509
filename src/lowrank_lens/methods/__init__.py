"""Training methods as plugins: one file per method, registered by name.

The first lookup imports every module in this package, so adding a method is adding one file.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Method, MethodPreset

METHODS: Registry[type[Method]] = Registry("method", package=__name__, skip=("base",))


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a Method subclass under its `name`."""
    return METHODS.register(cls.name)(cls)


def get_method(name: str) -> type[Method]:
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()


__all__ = ["METHODS", "Method", "MethodPreset", "get_method", "method_names", "register"]
