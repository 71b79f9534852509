"""Interactive figures: a Chart (analysis/charts.py) as a Plotly figure, drawn by the page offline.

Plotly's JavaScript ships inside the `plotly` Python package (package_data/plotly.min.js); the report copies
that one file beside the page (assets/), so the page needs no network and links no CDN. Each figure is a JSON
object inside the page (<script type="application/json">), read and drawn by assets/report.js, which also
owns the per-view selector (layers, axes, steps) and the method filter shared by every figure: a trace
carries its method and view in `meta`, and the script shows a trace only when its view is selected and its
method is not filtered out. A legend click (Plotly's own) hides a method's group in that figure.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..analysis.charts import Chart, Heatmap, Series, finite
from ..analysis.plotting import chart_png, method_colour
from ..atomic import write_text_atomic

log = logging.getLogger("lowrank_lens")

ASSETS = "assets"
PLOTLY_JS = "plotly.min.js"
SCRIPT = "report.js"
DASH = {"solid": "solid", "dash": "dash", "dot": "dot", "dashdot": "dashdot"}


def plotly_js() -> Path:
    """The plotly.min.js bundled with the installed `plotly` package."""
    return Path(str(files("plotly") / "package_data" / PLOTLY_JS))


def write_assets(out: Path) -> str:
    """Copy Plotly's bundle and the report's script into <out>/assets; their folder's href."""
    folder = out / ASSETS
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plotly_js(), folder / PLOTLY_JS)
    write_text_atomic(folder / SCRIPT, (Path(__file__).with_name(SCRIPT)).read_text())
    return ASSETS


def _values(seq: Any) -> list[Any]:
    """Numbers to 6 significant digits (what a hover shows; keeps the page small), gaps as null; labels
    escaped (Plotly renders them as a subset of HTML)."""
    return [_escape(v) if isinstance(v, str) else (None if (f := finite(v)) is None else float(f"{f:.6g}"))
            for v in seq]


def _hover(s: Series) -> tuple[list[list[Any]] | None, str]:
    """customdata rows and the hovertemplate: the series name, x, y, the interval and the hover fields. A
    field with one value over the whole series is written into the template once, not into every point."""
    fields = {k: list(v) for k, v in s.hover.items()}
    if s.low is not None and s.high is not None:
        fields |= {"low": _values(s.low), "high": _values(s.high)}
    lines = [f"<b>{_escape(s.name)}</b>", "x: %{x}", "y: %{y:.4g}"]
    varying = []
    for k, col in fields.items():
        if len({str(v) for v in col}) == 1 and col:
            lines.append(f"{_escape(k)}: {_jsonable(col[0])}")
        else:
            lines.append(f"{_escape(k)}: %{{customdata[{len(varying)}]}}")
            varying.append(col)
    rows = [[_jsonable(c[j]) for c in varying] for j in range(len(s.y))] if varying else None
    return rows, "<br>".join(lines) + "<extra></extra>"


def _escape(text: str) -> str:
    """Plotly renders labels, legend and hover text as (a subset of) HTML and substitutes %{...} in hover
    templates: a name is shown as the text it is."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("%", "&#37;")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (int, bool)):
        return v
    return _escape(str(v))


def series_traces(s: Series) -> list[dict[str, Any]]:
    """The Plotly traces of one Series (a band is two more traces under the line, in its legend group)."""
    colour = s.colour or (method_colour(s.method) if s.method else "#555555")
    group = s.group or s.method or s.name
    meta = {"method": s.method, "methods": [m for m in (s.method, *s.also) if m], "view": s.view}
    customdata, template = _hover(s)
    trace: dict[str, Any] = {
        "x": _values(s.x), "y": _values(s.y), "name": _escape(group), "legendgroup": group,
        "showlegend": s.legend, "opacity": s.opacity, "meta": meta, "hovertemplate": template}
    if customdata is not None:
        trace["customdata"] = customdata
    if s.mode == "bar":
        trace |= {"type": "bar", "marker": {"color": colour}}
    else:
        trace |= {"type": "scatter", "mode": s.mode, "line": {"color": colour, "dash": DASH.get(s.dash, "solid"),
                                                             "width": s.width},
                  "marker": {"color": colour, "size": s.marker_size}}
    out = [trace]
    if s.low is not None and s.high is not None:
        low, high = _values(s.low), _values(s.high)
        if s.interval == "band" and s.mode != "bar":
            edge = {"type": "scatter", "x": _values(s.x), "mode": "lines", "line": {"width": 0, "color": colour},
                    "legendgroup": group, "showlegend": False, "hoverinfo": "skip", "meta": meta}
            out = [edge | {"y": low}, edge | {"y": high, "fill": "tonexty", "fillcolor": _alpha(colour, 0.2)},
                   trace]
        else:
            y = trace["y"]
            up = [None if None in (h, v) else h - v for h, v in zip(high, y, strict=True)]
            down = [None if None in (v, lo) else v - lo for v, lo in zip(y, low, strict=True)]
            trace["error_y"] = {"type": "data", "symmetric": False, "color": colour, "thickness": 1, "width": 2,
                                "array": up, "arrayminus": down}
    return out


def _alpha(colour: str, a: float) -> str:
    """'#rrggbb' as rgba with opacity `a` (other colour strings are returned as they are)."""
    c = colour.lstrip("#")
    if len(c) != 6:
        return colour
    return f"rgba({int(c[0:2], 16)},{int(c[2:4], 16)},{int(c[4:6], 16)},{a})"


def heatmap_trace(h: Heatmap) -> dict[str, Any]:
    return {"type": "heatmap", "z": [_values(row) for row in h.z], "x": _values(h.x), "y": _values(h.y),
            "name": _escape(h.name), "colorscale": "Magma", "colorbar": {"title": {"text": _escape(h.colour_label)}},
            "meta": {"method": "", "view": h.view},
            "hovertemplate": "%{y} / %{x}: %{z:.4g}<extra></extra>"}


def plotly_figure(chart: Chart) -> dict[str, Any]:
    """The chart as a Plotly figure (data, layout), plus the views the page's selector offers."""
    data = []
    for s in chart.series:
        data += [heatmap_trace(s)] if isinstance(s, Heatmap) else series_traces(s)
    bars = [s for s in chart.series if isinstance(s, Series) and s.mode == "bar"]
    shared = len({str(x) for s in bars for x in s.x}) < sum(len(s.x) for s in bars)  # bars side by side
    layout = {"title": {"text": _escape(chart.title), "font": {"size": 13}},
              "xaxis": {"title": {"text": _escape(chart.x_label)}, "type": "log" if chart.x_log else "-"},
              "yaxis": {"title": {"text": _escape(chart.y_label)}, "type": "log" if chart.y_log else "-"},
              "height": 360, "margin": {"l": 60, "r": 10, "t": 40, "b": 50}, "hovermode": "closest",
              "legend": {"font": {"size": 10}, "groupclick": "togglegroup"}}
    if bars:
        layout["barmode"] = "group" if shared else "overlay"
    return {"data": data, "layout": layout, "views": list(chart.views), "view_label": chart.view_label}


def figure_json(chart: Chart) -> str:
    """The figure as JSON safe inside a <script> element (no '<', '>' or '&' in the text)."""
    text = json.dumps(plotly_figure(chart), allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_charts(charts: list[Chart], folder: Path, href: str, section: str) -> list[dict[str, Any]]:
    """Each chart's PNG (for papers) written into `folder`, and the figure contexts the page template draws:
    element id (unique on the page: section and chart name), JSON, caption, PNG link, views."""
    out: list[dict[str, Any]] = []
    for chart in charts:
        try:
            png = chart_png(chart, folder / f"{chart.name}.png")
            spec = figure_json(chart)
        except Exception as e:  # one broken chart must not cost the report: its place says what failed
            log.warning(f"report: figure {chart.name} failed: {type(e).__name__}: {e}")
            out.append({"error": f"figure {chart.name} failed: {type(e).__name__}: {e}"})
            continue
        out.append({"id": f"fig-{section}-{chart.name}", "json": spec,
                    "caption": chart.caption or chart.title, "png": f"{href}/{png.name}",
                    "views": list(chart.views), "view_label": chart.view_label})
    return out
