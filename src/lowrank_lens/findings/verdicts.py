"""The claims' vocabulary: verdicts, the claim texts, and comparisons of seed means inside their spread.

A verdict is 'holds', 'does not hold' or 'inconclusive' (claims.py says when). The claims' texts, and the
methods claims 5 and 8 name, live in claims.json beside this module (method names stay out of code outside
methods/, docs/design.md convention 2). A comparison of two seed means (`expect`) reads their ranges from
statistics.interval and is 'inconclusive' when they overlap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from ..errors import LensError
from .common import finite
from .statistics import Stats, describe, interval, order

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"
VERDICTS = (HOLDS, FAILS, UNSURE)
ZERO = Stats(0.0, 0.0, 1, 0.0, 0.0, (0.0,))


@dataclass
class Claim:
    id: int
    text: str
    verdict: str
    evidence: str
    values: dict[str, Any] = field(default_factory=dict)


@cache
def claim_texts() -> dict[int, dict[str, Any]]:
    """claims.json: id -> {id, text, and the method a claim names (claims 5 and 8)}."""
    try:
        raw = (resources.files(__package__) / "claims.json").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as e:
        raise LensError(f"claims.json is missing from the installed package ({e}); reinstall lowrank-lens") from e
    return {int(c["id"]): c for c in json.loads(raw)["claims"]}


def combine(verdicts: Sequence[str]) -> str:
    """FAILS if any part fails; HOLDS if there are parts and all hold; UNSURE otherwise."""
    if FAILS in verdicts:
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else UNSURE


def fmt_stats(s: Stats, spread: str = "ci") -> str:
    """'mean [lo, hi] (n=k)' for the evidence; the mean and n alone with one seed."""
    if s.n < 2:
        return f"{s.mean:.4g} (n={s.n})"
    lo, hi = interval(s, spread)
    return f"{s.mean:.4g} [{lo:.4g}, {hi:.4g}] (n={s.n})"


def expect(a: Stats, b: Stats, rel: str, spread: str) -> str:
    """HOLDS if a `rel` b beyond the spread, FAILS if decisively the other way, UNSURE inside the spread."""
    o = order(a, b, spread)
    return HOLDS if o == rel else (UNSURE if o == "~" else FAILS)


def stats_by_scale(rows: Sequence[dict[str, Any]], column: str,
                   key=lambda r: r.get("method")) -> dict[str, dict[Any, Stats]]:
    """scale -> key (method) -> Stats of `column` over the rows (one per seed)."""
    vals: dict[str, dict[Any, list[float]]] = {}
    for r in rows:
        if finite(r.get(column)):
            vals.setdefault(str(r.get("scale")), {}).setdefault(key(r), []).append(float(r[column]))
    return {sc: {k: describe(v) for k, v in d.items()} for sc, d in vals.items()}


def steps_text(rows: Sequence[dict[str, Any]]) -> str:
    """'final step 20/40': the steps the rows were read at, for the evidence."""
    steps = sorted({r.get("step") for r in rows if r.get("step") is not None})
    return "final step " + "/".join(map(str, steps)) if steps else "no step"


def baselines(runs: Sequence[dict[str, Any]]) -> set[str]:
    """The methods of the runs that say is_baseline."""
    return {str(r["method"]) for r in runs if r.get("is_baseline")}


def missing(cid: int, reason: str, **values: Any) -> Claim:
    """Claim `cid` inconclusive because its data are missing; the reason is the evidence."""
    return Claim(cid, claim_texts()[cid]["text"], UNSURE, reason, dict(values))


def method_absent(cid: int, method: str, runs: Sequence[dict[str, Any]], **values: Any) -> Claim | None:
    """Inconclusive with the reason when the method a claim names has no run in the study (a study of other
    methods, e.g. a subset of the zoo), else None."""
    present = sorted({str(r.get("method")) for r in runs})
    if method in present:
        return None
    return missing(cid, f"the claim names {method}, which has no run in this study (its methods: "
                         f"{', '.join(present) or 'none'}); add {method} to the study's methods to test it", **values)
