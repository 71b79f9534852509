"""matplotlib for the analysis and report figures: fixed method colours, the atomic save, and chart_png,
which draws a Chart (charts.py) as a PNG (or SVG).

Figures read only Results (never checkpoints) and are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from ..errors import LensError
from ..methods import get_method
from .charts import Chart, Heatmap, Series, finite, lines_by_method  # noqa: E402

if TYPE_CHECKING:
    from .base import Result


def method_colour(method: str) -> str:

    try:
        return get_method(method).colour
    except LensError:
        return "#7f7f7f"


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def line_plot_by_method(results: list[Result], key: str, path: Path, ylabel: str) -> Path:
    """One line per run (coloured by method) of scalar `key` against the training step, drawn into `path`
    (charts.lines_by_method as a PNG; kept for plugins that override plot())."""
    return chart_png(lines_by_method(results, key, path.stem, ylabel), path)


MPL_DASHES = {"solid": "-", "dash": "--", "dot": ":", "dashdot": "-."}
MAX_PANELS = 16
"""Views drawn as panels in a chart's PNG (the title says when there are more); the interactive figure
selects among all of them."""
LEGEND_ROWS = 14


def _plain(text: object) -> str:
    """Text as matplotlib should print it: a '$' in a run or method name is a character, not math mode."""
    return str(text).replace("$", r"\$")


def _position(x: object, categories: list[str]) -> float:
    """Where x lies on the axis: its category's index for a label, the number itself otherwise."""
    return categories.index(x) if isinstance(x, str) else float(x)


def _draw_series(ax, s: Series, categories: list[str], bar_slots: dict[str, tuple[int, int]]) -> None:
    """bar_slots: for a bar series, {category: (its place among the bar series with that category, their
    count)}, so bars of series with disjoint categories (one series per pair) each take the full width."""
    colour = s.colour or (method_colour(s.method) if s.method else None)
    label = _plain(s.group or s.method or s.name) if s.legend else "_nolegend_"
    pts = [(x, finite(y), finite(lo) if s.low is not None else None, finite(hi) if s.high is not None else None)
           for x, y, lo, hi in zip(s.x, s.y, s.low if s.low is not None else [None] * len(s.y),
                                   s.high if s.high is not None else [None] * len(s.y), strict=True)]
    if s.mode == "bar":
        slots = [bar_slots.get(str(x), (0, 1)) for x, *_ in pts]
        width = [0.8 / n for _, n in slots]
        xs = [_position(x, categories) - 0.4 + (k + 0.5) * w for (x, *_), (k, _), w in zip(pts, slots, width,
                                                                                         strict=True)]
        ys = [y if y is not None else float("nan") for _, y, *_ in pts]
        err = None
        if s.low is not None and s.high is not None:
            err = [[(y - lo) if None not in (y, lo) else 0.0 for _, y, lo, _ in pts],
                   [(hi - y) if None not in (y, hi) else 0.0 for _, y, _, hi in pts]]
        ax.bar(xs, ys, width, yerr=err, color=colour, label=label, capsize=2, alpha=s.opacity)
        return
    xs = [_position(x, categories) for x, *_ in pts]
    ys = [y if y is not None else float("nan") for _, y, *_ in pts]
    ls = MPL_DASHES.get(s.dash, "-") if "lines" in s.mode else "none"
    marker = "o" if "markers" in s.mode else None
    if s.low is not None and s.high is not None and s.interval == "bars":
        ax.errorbar(xs, ys, yerr=[[y - lo if None not in (y, lo) else 0.0 for _, y, lo, _ in pts],
                                  [hi - y if None not in (y, hi) else 0.0 for _, y, _, hi in pts]],
                    color=colour, ls=ls, marker=marker, ms=s.marker_size * 0.75, lw=s.width, capsize=2,
                    alpha=s.opacity, label=label)
        return
    ax.plot(xs, ys, color=colour, ls=ls, marker=marker, ms=s.marker_size * 0.75, lw=s.width, alpha=s.opacity,
            label=label)
    if s.low is not None and s.high is not None:
        lows = [lo if lo is not None else float("nan") for *_, lo, _ in pts]
        highs = [hi if hi is not None else float("nan") for *_, hi in pts]
        ax.fill_between(xs, lows, highs, color=colour, alpha=0.2 * s.opacity, lw=0)


def _draw_heatmap(fig, ax, h: Heatmap) -> None:
    if not len(h.z) or not len(h.z[0]):  # nothing to draw
        return
    z = np.array([[v if (v := finite(c)) is not None else np.nan for c in row] for row in h.z], dtype=float)
    im = ax.imshow(z, aspect="auto", cmap="magma")
    ax.set_xticks(range(len(h.x)), [_plain(x) for x in h.x], fontsize=7, rotation=45 if len(h.x) > 8 else 0)
    ax.set_yticks(range(len(h.y)), [_plain(y) for y in h.y], fontsize=7)
    fig.colorbar(im, ax=ax, label=_plain(h.colour_label))


def chart_png(chart: Chart, path: Path) -> Path:
    """Draw `chart` with matplotlib into `path` (PNG, or SVG by suffix): one panel per view (at most
    MAX_PANELS), one legend entry per legend series, to the right of the last panel."""
    views = chart.views[:MAX_PANELS] or [""]
    cols = min(4, len(views))
    rows = -(-len(views) // cols)
    categories = list(dict.fromkeys(str(x) for s in chart.series if isinstance(s, Series)
                                    for x in s.x if isinstance(x, str)))
    size = (5.5, 3.6) if len(views) == 1 else (3.6, 2.8)
    if len(categories) > 3:  # room for every category and its rotated label (IMIB's pairs)
        longest = max(len(c) for c in categories)
        size = (max(size[0], 0.3 * len(categories) + 2.0), size[1] + 0.06 * longest)
    labels = list(dict.fromkeys(s.group or s.method or s.name for s in chart.series
                                if isinstance(s, Series) and s.legend))
    legend_cols = -(-len(labels) // LEGEND_ROWS)
    legend_width = legend_cols * (0.6 + 0.065 * max((len(x) for x in labels), default=0))  # inches, fontsize 7
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols + legend_width, size[1] * rows), squeeze=False,
                             layout="constrained")
    for ax, view in zip(axes.flat, views, strict=False):
        drawn = [s for s in chart.series if not s.view or not view or s.view == view]
        ax.set_xscale("log" if chart.x_log else "linear")  # before any tick: setting a scale resets them
        ax.set_yscale("log" if chart.y_log else "linear")
        bars = [s for s in drawn if isinstance(s, Series) and s.mode == "bar"]
        sharing = {c: [i for i, b in enumerate(bars) if c in {str(x) for x in b.x}] for c in categories}
        for s in drawn:
            if isinstance(s, Heatmap):
                _draw_heatmap(fig, ax, s)
            else:
                mine = next((i for i, b in enumerate(bars) if b is s), None)
                slots = {c: (ids.index(mine), len(ids)) for c, ids in sharing.items() if mine in ids}
                _draw_series(ax, s, categories, slots)
        if categories and not any(isinstance(s, Heatmap) for s in drawn):
            ax.set_xticks(range(len(categories)), [_plain(c) for c in categories],
                          rotation=30 if len(categories) > 3 else 0,
                          ha="right" if len(categories) > 3 else "center", fontsize=7)
        if view:
            ax.set_title(_plain(view), fontsize=9)
        ax.set_xlabel(_plain(chart.x_label), fontsize=8)
        ax.set_ylabel(_plain(chart.y_label), fontsize=8)
        ax.tick_params(labelsize=7)
        if not any(isinstance(s, Heatmap) for s in drawn):
            ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(views):]:
        ax.set_visible(False)
    entries: dict[str, object] = {}
    for ax in list(axes.flat)[:len(views)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        # a long legend (IMIB's 30 pairs) in columns of at most LEGEND_ROWS, so it never outgrows the figure
        axes.flat[len(views) - 1].legend(list(entries.values()), list(entries), fontsize=7, loc="upper left",
                                         bbox_to_anchor=(1.01, 1.0), frameon=False, ncols=legend_cols)
    more = f" (first {MAX_PANELS} of {len(chart.views)} {chart.view_label}s; the report shows every one)" \
        if len(chart.views) > MAX_PANELS else ""
    fig.suptitle(_plain(chart.title) + more, fontsize=10)
    return save_figure(fig, path)
