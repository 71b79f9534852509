"""A Chart as the page's Plotly figure (report/interactive.py): names are shown as the text they are, a
figure's JSON cannot close its <script> element, gaps are null, and a report over several sources gives each
source's method its own legend entry."""

from __future__ import annotations

import json
from pathlib import Path

from lowrank_lens.analysis.charts import Chart, Heatmap, Series
from lowrank_lens.report import figures
from lowrank_lens.report.collect import RunInfo
from lowrank_lens.report.interactive import figure_json, plotly_figure, render_charts

HOSTILE = "x<i>i</i> %{meta} </script>"


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def test_names_are_text_and_the_json_stays_inside_its_script():
    chart = Chart("c", HOSTILE, HOSTILE, "y", views=[HOSTILE], series=[
        Series([HOSTILE, "b"], [1.0, float("nan")], HOSTILE, method="galore", mode="bar", view=HOSTILE,
               hover={"run": [HOSTILE, "other"], "seed": [HOSTILE, HOSTILE]}),
        Heatmap([[1.0, float("inf")]], [HOSTILE, "b"], [HOSTILE], HOSTILE, HOSTILE)])
    fig = plotly_figure(chart)
    meta_views = {t["meta"]["view"] for t in fig["data"]}
    assert meta_views == {HOSTILE, ""} and fig["views"] == [HOSTILE]  # compared with the selector's raw value
    shown = [s for t in fig["data"] for k, v in t.items() if k != "meta" for s in _strings(v)]
    shown += _strings(fig["layout"])
    assert shown and not any("<i>" in s or "%{meta}" in s or "</script>" in s for s in shown), shown
    bar = fig["data"][0]
    assert bar["y"] == [1.0, None] and bar["x"][0] == "x&lt;i&gt;i&lt;/i&gt; &#37;{meta} &lt;/script&gt;"
    assert "seed: x&lt;i&gt;" in bar["hovertemplate"] and "%{customdata[0]}" in bar["hovertemplate"]
    assert fig["data"][1]["z"] == [[1.0, None]]
    text = figure_json(chart)
    assert "<" not in text and ">" not in text and json.loads(text) == fig


def test_a_broken_chart_is_named_on_the_page_not_fatal(tmp_path: Path):
    good = Chart("good", "good", "x", "y", series=[Series([0, 1], [1.0, 2.0], "a")])
    bad = Chart("bad", "bad", "x", "y", series=[Series([0, 1], [1.0], "short", mode="bar")])  # x and y differ
    out = render_charts([bad, good], tmp_path, "figures", "t")
    assert "error" in out[0] and "bad" in out[0]["error"] and out[1]["id"] == "fig-t-good"


def _run(method: str, seed: int, source: str) -> RunInfo:
    ck = [{"step": s, "val_ppl": 50.0 / (1 + s) + seed, "val_ppl_reference": 40.0 / (1 + s)} for s in (0, 4)]
    return RunInfo(f"{source}/nano-{method}-seed{seed}", Path("."), {"method": method, "scale": "nano",
                                                                      "train": {"seed": seed}}, ck, [],
                   source=source)


def test_each_source_of_a_method_has_its_own_legend_entry_and_line_style():
    runs = [_run(m, s, src) for src in ("last-week", "this-week") for m in ("full-rank", "galore") for s in (0, 1)]
    val = next(c for c in figures.training_charts(runs) if c.name == "val_ppl")
    legend = [t["name"] for t in plotly_figure(val)["data"] if t.get("showlegend")]
    assert sorted(legend) == sorted(f"{m} ({src})" for src in ("last-week", "this-week")
                                    for m in ("full-rank", "galore"))
    dashes = {s.group: s.dash for s in val.series}
    assert dashes["galore (last-week)"] != dashes["galore (this-week)"]
    assert dashes["galore (last-week)"] == dashes["full-rank (last-week)"]
