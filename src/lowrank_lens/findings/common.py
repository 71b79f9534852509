"""The helpers the findings share, each defined once.

- `finite`: is a value a real, finite number? Python or numpy ints and floats count; bools, numeric strings,
  None, complex numbers and NaN / inf do not. Every table the findings read holds Python numbers
  (analysis.tables.read_csv parses numbers back; cached scalars are floats); numpy numbers come from
  callers that pass arrays' items, and count the same.
- `final_rows`: each subject's row at its largest step (a metric's value at the end of training).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def finite(v: Any) -> bool:
    """True for a finite int or float, Python or numpy; False for bools, strings, None, NaN and inf."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return isinstance(v, (float, np.floating)) and math.isfinite(v)


def final_rows(rows: Sequence[dict[str, Any]], *, metric: str | None = None, kind: str | None = None,
               skipped: bool = False) -> list[dict[str, Any]]:
    """Each subject's row at its largest step, one per (run, other run, kind); a missing step counts as 0
    and of equal steps the first row stands. Only `metric`'s rows and only `kind`'s when given; computed
    rows, or with skipped=True only the skipped ones (to say why a subject has no value)."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if (metric is not None and r.get("metric") != metric) or (kind is not None and r.get("kind") != kind) \
                or bool(r.get("skipped")) != skipped:
            continue
        key = (r.get("run"), r.get("other_run"), r.get("kind"))
        if key not in best or (r.get("step") or 0) > (best[key].get("step") or 0):
            best[key] = r
    return list(best.values())
