"""Small matplotlib helpers shared by metric plots: fixed method colours, one line per run vs step.

Figures read only Results (never checkpoints) and are written atomically as PNG.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D

from ..atomic import atomic_path  # noqa: E402
from ..errors import LensError
from ..methods import get_method
from .base import Result  # noqa: E402


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


def series_by_run(results: list[Result], value: Callable[[Result], float | None],
                  label: Callable[[Result], str] | None = None) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """{(series label, method): [(step, value), ...] sorted by step}; results whose value is None are left out."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in results:
        v = value(r)
        if v is None:
            continue
        name = label(r) if label else r.subject.get("run", "?")
        out[(name, r.subject.get("method", "?"))].append((int(r.subject.get("step", 0)), float(v)))
    return {k: sorted(v) for k, v in out.items()}


def legend_labels(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Legend label of each (run, method) line: the run when every method has one run, else the method on
    its first line only ("_nolegend_" hides the rest), so 18 runs give 6 legend entries, not 18."""
    methods = [m for _, m in keys]
    if len(set(methods)) == len(methods):
        return {k: k[0] for k in keys}
    seen: set[str] = set()
    out = {}
    for run, method in sorted(keys):
        out[(run, method)] = "_nolegend_" if method in seen else method
        seen.add(method)
    return out


SCALE_STYLES = ("-", "--", ":", "-.")
"""Line style per scale (in sorted order) where one figure shows several scales; colour is the method."""


def method_legend(ax, methods: list[str], scales: list[str] | None = None, fontsize: int = 7) -> None:
    """One legend entry per method (its colour) and, with several scales, one per scale (its line style),
    to the right of the axes: a figure with 3 seeds of 6 methods lists 6 entries, not 18."""

    handles = [Line2D([], [], color=method_colour(m), lw=2, label=m) for m in dict.fromkeys(methods)]
    if scales and len(scales) > 1:
        handles += [Line2D([], [], color="0.3", ls=SCALE_STYLES[i % len(SCALE_STYLES)], label=f"scale {s}")
                    for i, s in enumerate(scales)]
    if handles:
        ax.legend(handles=handles, fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def outside_legend(ax, fontsize: int = 7) -> None:
    """The legend to the right of the axes, where it hides no line (save_figure's tight bbox keeps it)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def line_plot_by_method(results: list[Result], key: str, path: Path, ylabel: str,
                        label: Callable[[Result], str] | None = None) -> Path:
    """One line per run (coloured by method) of scalar `key` against the training step."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    series = series_by_run(results, lambda r: r.scalars.get(key), label)
    labels = legend_labels(list(series))
    for (name, method), pts in sorted(series.items()):
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", ms=3, color=method_colour(method), label=labels[(name, method)])
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    outside_legend(ax)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
