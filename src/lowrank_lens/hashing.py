"""Stable content hashes of JSON-like values (config hashes, data and cache keys) and the dotted flattening
used to list config differences: one definition for the config, the data cache and the run folder."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hex digest of a JSON-serialisable object, independent of dict order and of the process."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def config_hash(d: dict, exclude: tuple[str, ...] = ()) -> str:
    """Stable hash of a config dict; `exclude` holds dotted keys (e.g. 'train.device') to leave out."""
    d = json.loads(json.dumps(d, default=str))
    for key in exclude:
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            node = node.get(p, {})
        node.pop(parts[-1], None)
    return stable_hash(d)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; used to list config differences."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
