"""Results as tables: one row per (metric, subject) with the subject's columns and the metric's summary.

CSV always; Parquet too when pyarrow is installed (`pip install pyarrow`). Both are written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, write_text_atomic

LEADING = ("metric", "run", "method", "scale", "seed", "kind", "step", "step_from", "other_run", "other_method")


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for k in row:
            seen.setdefault(k, None)
    lead = [c for c in LEADING if c in seen]
    return lead + sorted(c for c in seen if c not in LEADING)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    cols = columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _cell(v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())
    return path


def write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Parquet copy of the table, or None without pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    cols = columns(rows)
    data = {c: [_cell(r.get(c)) if not isinstance(r.get(c), (int, float)) else r.get(c) for r in rows] for c in cols}
    table = pa.table({c: _column(v) for c, v in data.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a table written by write_csv, numbers parsed back to float/int."""
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def _column(values: list[Any]):
    import pyarrow as pa

    if all(isinstance(v, (int, float)) or v in ("", None) for v in values) and any(
            isinstance(v, float) for v in values):
        return pa.array([float(v) if v not in ("", None) else None for v in values], pa.float64())
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.array(values, pa.int64())
    return pa.array(["" if v is None else str(v) for v in values], pa.string())


def _parse(v: str) -> Any:
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v
