"""Figures as data. A metric's `charts(results)` returns Charts: what is drawn (series of points, bars, a
heatmap), not how. Two renderers read the same Chart, so the paper figure and the interactive one cannot
drift apart: plotting.chart_png draws it with matplotlib (PNG for papers; `analyze` writes these), and
report/interactive.py turns it into a Plotly figure the report page draws offline (hover, legend toggles,
zoom, a per-layer selector, the page's shared method filter).

A Series belongs to a method (its colour, its legend group and what the method filter hides) and, when
the chart has views (layers, principal axes, steps), to one view; the interactive figure shows one view
at a time with a selector, the PNG one panel per view.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Result

DASHES = ("solid", "dash", "dot", "dashdot")
"""Line styles, in the order scales (sorted) take them when one chart shows several scales."""


@dataclass
class Series:
    """One line, set of markers or set of bars. `x` holds numbers or category labels."""

    x: Sequence[Any]
    y: Sequence[float]
    name: str
    method: str = ""
    """The method it shows ('' for none): colour, legend group and the report's method filter."""
    colour: str = ""
    """Overrides the method's colour."""
    mode: str = "lines+markers"
    """'lines', 'markers', 'lines+markers' or 'bar'."""
    dash: str = "solid"
    width: float = 1.5
    opacity: float = 1.0
    marker_size: float = 4.0
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None
    """An interval per point (a CI, +-3 sigma), drawn as a band or as error bars (`interval`)."""
    interval: str = "bars"
    hover: dict[str, Sequence[Any]] = field(default_factory=dict)
    """Extra values per point shown on hover (seed, step, layer, CI...)."""
    view: str = ""
    """The view it is drawn in ('' for every view)."""
    legend: bool = True
    """Whether it has its own legend entry (seeds after the first share their method's)."""
    also: Sequence[str] = ()
    """Other methods it shows (a pair's second method): the report's method filter hides the series when
    any of its methods is unticked."""
    group: str = ""
    """Legend group: series of one group toggle together, and its legend label (default: the method, else
    the name; the name is what a hover shows)."""


@dataclass
class Heatmap:
    """A matrix of values, rows and columns labelled."""

    z: Sequence[Sequence[float]]
    x: Sequence[str]
    y: Sequence[str]
    name: str
    colour_label: str = ""
    view: str = ""


@dataclass
class Chart:
    """One figure: its file stem, title, axes and what is drawn."""

    name: str
    title: str
    x_label: str
    y_label: str
    series: list[Series | Heatmap] = field(default_factory=list)
    x_log: bool = False
    y_log: bool = False
    views: list[str] = field(default_factory=list)
    """The selector's entries (e.g. 'layer 3'), in order; [] for a chart without views."""
    view_label: str = "layer"
    caption: str = ""

    def methods(self) -> list[str]:
        return list(dict.fromkeys(s.method for s in self.series if isinstance(s, Series) and s.method))


def finite(v: Any) -> float | None:
    """A float, or None for a missing or non-finite value (a gap in the line, null in JSON)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def run_label(r: Result) -> tuple[str, str]:
    return str(r.subject.get("run", "?")), str(r.subject.get("method", "?"))


def one_legend_entry(series: list[Series]) -> list[Series]:
    """Keep one legend entry per method (per view, in a chart with views: the interactive figure shows one
    view at a time, so each view keeps its own entry): the first series of each method shows in the
    legend, the rest (its other seeds or runs) toggle with it. Series without a method keep their own entry."""
    seen: set[tuple[str, str]] = set()
    for s in series:
        if s.method:
            key = (s.group or s.method, s.view)  # a group (a method of one source) is one entry
            s.legend = key not in seen
            seen.add(key)
    return series


def lines_by_method(results: list[Result], key: str, name: str, y_label: str, title: str = "",
                    value: Callable[[Result], Any] | None = None, x_label: str = "training step") -> Chart:
    """One line per run of scalar `key` (or `value(result)`) against the training step, coloured by method,
    one legend entry per method; hover shows run, seed and scale."""
    points: dict[tuple[str, str], list[tuple[int, float, Result]]] = defaultdict(list)
    for r in results:
        v = finite(value(r) if value else r.scalars.get(key))
        if v is not None:
            points[run_label(r)].append((int(r.subject.get("step", 0)), v, r))
    series = []
    for (run, method), pts in sorted(points.items()):
        pts.sort(key=lambda p: p[0])
        series.append(Series([p[0] for p in pts], [p[1] for p in pts], name=run, method=method,
                             hover={"run": [run] * len(pts), "seed": [p[2].subject.get("seed") for p in pts],
                                    "scale": [p[2].subject.get("scale") for p in pts]}))
    return Chart(name=name, title=title or y_label, x_label=x_label, y_label=y_label,
                 series=one_legend_entry(series))
