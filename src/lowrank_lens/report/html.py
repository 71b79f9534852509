"""HTML rendering of the report: table cells, and one jinja2 template (page.html, autoescaped) with its CSS
(page.css) inlined.

The page is self-contained in the offline sense: no external stylesheet or font, and its only scripts are
assets/plotly.min.js and assets/report.js beside it (interactive.py); figures are drawn from JSON in the page,
with PNG files and CSV tables beside it (relative links), so the folder opens from disk with no server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from .collect import method_colour

MAX_ROWS = 300
"""Rows shown per HTML table; the CSV beside the report always holds all of them."""
COLOUR_COLUMNS = ("method", "other_method", "method_a", "method_b")
"""Columns whose values are method names, shown with the method's fixed colour (docs/study.md §1.1)."""


def fmt(v: Any) -> str:
    """A table cell as text: 4 significant digits for floats, yes/no for booleans."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def mib(v: Any) -> float | None:
    """Bytes as MiB (None when missing)."""
    return float(v) / 2**20 if isinstance(v, (int, float)) else None


@dataclass
class Table:
    """A rendered table: header, cells (text, colour or None), row CSS classes, and its CSV link."""

    columns: list[str]
    rows: list[list[tuple[str, str | None]]]
    row_classes: list[str] = field(default_factory=list)
    csv: str = ""
    total: int = 0
    caption: str = ""


def make_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, csv: str = "",
               caption: str = "", row_class: Callable[[dict[str, Any]], str] | None = None,
               limit: int = MAX_ROWS) -> Table:
    """A Table of dict rows (columns default to every key in order of appearance)."""
    if columns is None:
        seen: dict[str, None] = {}
        for r in rows:
            seen.update(dict.fromkeys(r))
        columns = list(seen)
    cells = []
    for r in rows[:limit]:
        line = []
        for c in columns:
            v = r.get(c)
            line.append((fmt(v), method_colour(str(v)) if c in COLOUR_COLUMNS and v not in (None, "") else None))
        cells.append(line)
    classes = [row_class(r) if row_class else "" for r in rows[:limit]]
    return Table(list(columns), cells, classes, csv, len(rows), caption)


PAGE_TEMPLATE = Path(__file__).with_name("page.html")
PAGE_CSS = Path(__file__).with_name("page.css")
"""The page's jinja2 template and its style sheet (inlined into the page), shipped beside this module."""


def render(context: dict[str, Any]) -> str:
    """The report page from its context (every value is autoescaped)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    return env.from_string(PAGE_TEMPLATE.read_text()).render(css=PAGE_CSS.read_text(), **context)
