"""Checks of a study file's values, as `StudySpec` (study/spec.py) runs them when a spec is built: a field's
value against its annotation, names against a registry, and the analysis options (checkpoint steps, metric
names, metric options, prediction features) as the analysis and prediction stages will read them."""

from __future__ import annotations

import typing
from typing import Any

from ..analysis.metrics import get_metric, metric_names
from ..analysis.subjects import parse_steps
from ..errors import LensError
from ..typed_fields import build_section

_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false", list[str]: "a list of strings",
               list[int]: "a list of integers", list[float]: "a list of numbers", float: "a number",
               dict[str, list[str]]: 'a table of string lists (name = ["section.field=value", ...])'}


def check_type(value: Any, tp: Any, name: str) -> None:
    """One study field against its annotation (str, int, list[str], list[int], dict[str, list[str]]); a
    bool is not an int and neither is a float (seeds = [1.5] would name a run seed1.5 that trains seed 1)."""
    if not _is(value, tp):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise LensError(f"study {name} expects {_TYPE_WORDS[tp]}, got {shown}")


def _is(value: Any, tp: Any) -> bool:
    if tp is Any:  # checked by its own validator (imported entries: study/imported.py)
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return isinstance(value, list) and all(_is(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_is(k, args[0]) and _is(v, args[1]) for k, v in value.items())
    if tp is float:  # an integer is a number too (tune_grid = [1, 2]); TOML inf and nan are caught by the checks
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:  # bool subclasses int; TOML 1e400 loads as the float inf, which is caught here too
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    return isinstance(value, tp)


def check_known(what: str, values: list[str], valid: list[str]) -> None:
    for v in values:
        if v not in valid:
            raise LensError(f"study {what} {v!r} is unknown; choose from {', '.join(valid)}")


def check_analysis(analysis_steps: str, metrics: list[str], metric_overrides: list[str],
                   predict_features: list[str]) -> None:
    """A study's checkpoint steps, metric names, metric options and prediction features, as the analysis and
    prediction stages will read them."""
    try:
        parse_steps(analysis_steps)
    except LensError:
        raise LensError(f"study analysis_steps {analysis_steps!r}: use 'all', 'final' or comma-separated "
                        f"steps such as '0,500,final'") from None
    if not (metrics or metric_overrides or predict_features):
        return  # nothing names a metric: spare the registry's first lookup (it imports every plugin, ~5 s)
    check_known("metric", metrics, metric_names())
    chosen = metrics or metric_names()
    options: dict[str, dict[str, str]] = {}
    for item in metric_overrides:
        key, eq, value = item.partition("=")
        metric, dot, option = key.strip().partition(".")
        if not (eq and dot and option):
            raise LensError(f"study metric_overrides entry {item!r} is not of the form metric.option=value")
        check_known("metric_overrides metric", [metric], metric_names())
        if metric not in chosen:
            raise LensError(f"study metric_overrides entry {item!r} is for {metric!r}, which the study does not "
                            f"compute (metrics: {', '.join(chosen)})")
        options.setdefault(metric, {})[option] = value
    for metric, values in options.items():  # the same build as analysis/runner.py build_metrics
        build_section(get_metric(metric).Config, values, metric)
    for feat in predict_features:
        metric, dot, column = feat.partition(".")
        if not (dot and column) or metric not in chosen:
            raise LensError(f"study predict_features entry {feat!r} is not <metric>.<column> of a computed "
                            f"metric (metrics: {', '.join(chosen)}); e.g. landscape_random.es")
