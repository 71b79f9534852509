"""Metric plugins: one file per metric, registered by name; the first lookup imports every module in this
package, so adding a metric is adding one file (the runner, tables and report iterate over the registry)."""

from __future__ import annotations

from ...registry import Registry
from ..base import Metric

METRICS: Registry[type[Metric]] = Registry("metric", package=__name__, group="lowrank_lens.metrics")


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: register a Metric subclass under its `name`."""
    return METRICS.register(cls.name)(cls)


def get_metric(name: str) -> type[Metric]:
    return METRICS.get(name)


def metric_names() -> list[str]:
    return METRICS.names()


__all__ = ["METRICS", "get_metric", "metric_names", "register"]
