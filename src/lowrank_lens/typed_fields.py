"""Typed config fields: the rules every config dataclass (run sections, method configs, analysis and
downstream requests) holds its values to, and the reader that builds one from a JSON or command-line dict.

A bool is not a number, 2.5 is not an int, ints fit int64 and floats are finite; a seed field is
non-negative below its own limit. `check_fields` runs first in each `__post_init__`; `build_section` converts
strings (from `section.field=value` overrides) and refuses lossy conversions and unknown names.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import field
from typing import Any

from .errors import LensError

INT_LIMIT = 2**63
"""Every int field fits int64, the integer type torch and numpy hand these values to."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise LensError(msg)


def show(value: Any) -> str:
    """A value for a one-line message: huge ints shortened, everything else as repr, at most 60 chars."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**16:
        return f"{value:.3g}" if value.bit_length() < 1000 else f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def seed_field(default: int, limit: int = INT_LIMIT) -> Any:
    """A seed: non-negative (numpy's default_rng rejects negatives) and below `limit`; check_fields applies it."""
    return field(default=default, metadata={"seed_limit": limit})


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any, section: str) -> None:
    """Every field of the config dataclass `obj` holds its annotated type: a bool is not an int, a float is
    not an int, ints fit int64, floats are finite. Runs first in every __post_init__, so a value from
    code, a JSON file or the command line is held to the same rules before the range checks."""
    hints = _field_types(type(obj))
    for f in dataclasses.fields(obj):
        value, where, limit = getattr(obj, f.name), f"{section}.{f.name}", f.metadata.get("seed_limit")
        if limit and isinstance(value, int) and not isinstance(value, bool):  # before the generic int64 range
            check(0 <= value < limit, f"{where} must be in [0, 2**{limit.bit_length() - 1}), got {show(value)}")
        _check_type(value, hints[f.name], where)


def _check_type(value: Any, tp: Any, where: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is not None:
            _check_type(value, next(a for a in args if a is not type(None)), where)
        return
    if origin in (tuple, list) or tp in (tuple, list):
        check(isinstance(value, origin or tp), f"{where} expects a {(origin or tp).__name__}, got {show(value)}")
        for v in value if args else ():
            _check_type(v, args[0], where)
        return
    if tp is bool:
        check(isinstance(value, bool), f"{where} expects true or false, got {show(value)}")
    elif tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), f"{where} expects int, got {show(value)}")
        check(-INT_LIMIT <= value < INT_LIMIT, f"{where} {show(value)} is out of range (|value| < 2**63)")
    elif tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool),
               f"{where} expects float, got {show(value)}")
        check(math.isfinite(value), f"{where} must be a finite number, got {show(value)}")
    elif tp is str:
        check(isinstance(value, str), f"{where} expects str, got {show(value)}")


def build_section(cls: type, values: dict, section: str) -> Any:
    """A config dataclass from a JSON dict, type-checked; unknown names are one clear error."""
    check(isinstance(values, dict), f"config section {section} must be a table, got {show(values)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    check(not unknown, f"unknown {section} option(s) {sorted(unknown)}; valid: {', '.join(sorted(names))}")
    hints = _field_types(cls)
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON or command-line value to the annotated field type, refusing lossy conversions: a
    bool is not a number, 2.5 is not an int, and inf, nan or 1e400 are no number at all."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(value, args[0], where)
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        check(isinstance(value, (list, tuple)), f"{where} expects a list, got {show(value)}")
        args = typing.get_args(tp)
        inner = args[0] if args else (str if tp is tuple else Any)
        items = [v if inner is Any else _coerce(v, inner, where) for v in value]
        return tuple(items) if (origin or tp) is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        raise LensError(f"{where} expects true or false, got {show(value)}")
    if tp in (int, float):
        return _number(value, tp, where)
    if tp is str:
        check(isinstance(value, str), f"{where} expects str, got {show(value)}")
    return value


def _number(value: Any, tp: type, where: str) -> int | float:
    """An int or float from a number or a string of one; an int field takes integral floats (1e4, 3.0)."""
    bad = f"{where} expects {tp.__name__}, got {show(value)}"
    check(isinstance(value, (str, int, float)) and not isinstance(value, bool), bad)
    try:
        parsed = value
        if isinstance(value, str):
            parsed = int(value) if tp is int and value.strip().lstrip("+-").isdigit() else float(value)
        if tp is int and isinstance(parsed, int):
            return parsed  # exact, however large: the int64 range check names the field
        number = float(parsed)
    except (ValueError, OverflowError):
        raise LensError(bad) from None
    check(math.isfinite(number), f"{where} must be a finite number, got {show(value)}"
                                  f"{'' if str(number) in repr(value) else f' (= {number})'}")
    if tp is int:
        check(number.is_integer(), f"{bad}; it must be a whole number")
        return int(number)
    return number
