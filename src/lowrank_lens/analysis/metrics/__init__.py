"""Metric plugins: one file per metric, registered by name; importing this package imports every module
in it, so adding a metric is adding one file (the runner, tables and report iterate over the registry)."""

from __future__ import annotations

import importlib
import pkgutil

from ...registry import Registry
from ..base import Metric

METRICS: Registry[type[Metric]] = Registry("metric")


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: register a Metric subclass under its `name`."""
    return METRICS.register(cls.name)(cls)


def get_metric(name: str) -> type[Metric]:
    _discover()
    return METRICS.get(name)


def metric_names() -> list[str]:
    _discover()
    return METRICS.names()


_DISCOVERED = False


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["METRICS", "get_metric", "metric_names", "register"]
