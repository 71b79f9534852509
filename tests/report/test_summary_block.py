"""The report's summary block (report/summary.py) and its figures' legends: the interval plot of a claim
draws the seed means and ranges its verdict compared, the matched-perplexity summary names the pairs that
differ, the page opens on the findings (summary before the settings), and the validation-perplexity
figures list each method once however many seeds it has."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lowrank_lens.analysis.tables import read_csv
from lowrank_lens.methods import get_method, method_names
from lowrank_lens.report import figures
from lowrank_lens.report.collect import RunInfo
from lowrank_lens.report.interactive import plotly_figure
from lowrank_lens.report.summary import interval_plot, matched_rows, mean_pm, stats_leaves
from lowrank_lens.study.presets import PAPER_METHODS

NAN = math.nan


def stats(mean, lo=NAN, hi=NAN, n=3):
    return {"mean": mean, "std": 0.1, "n": n, "ci_low": lo, "ci_high": hi}


def test_interval_plot_draws_each_mean_inside_its_ci_in_the_method_colour():
    a, b = method_names()[:2]
    plot = interval_plot(1, {"s": {a: stats(3.0, 2.5, 3.5), b: stats(1.0, 0.8, 1.2)}})
    assert [r.label for r in plot.rows] == [a, b]  # the one scale is dropped from the labels
    for r in plot.rows:
        assert plot.x0 <= r.x_low < r.x_mean < r.x_high <= plot.x1
    assert plot.rows[0].x_mean > plot.rows[1].x_high  # 3 lies right of 1.2: the axis is increasing
    assert plot.rows[0].line == get_method(a).colour and plot.rows[1].dot == get_method(b).colour
    assert "[2.5, 3.5] (n=3)" in plot.rows[0].title and not plot.single_seed
    assert plot.zero is None  # claim 1 does not compare with 0, and 0 is outside the data


def test_interval_plot_focuses_on_the_claims_quantity_and_shows_zero():
    a, b = method_names()[:2]
    values = {"imib": {"s": {f"{a} | {b}": stats(0.5, 0.4, 0.6)}}, "final_val_ppl": {"s": {a: stats(30.0)}},
              "distinct": {"s": {f"{a} | {b}": ["es"]}}}
    assert len(list(stats_leaves(values))) == 2
    plot = interval_plot(3, values)
    assert [r.label for r in plot.rows] == [f"{a} | {b}"]
    assert (plot.rows[0].line, plot.rows[0].dot) == (get_method(a).colour, get_method(b).colour)
    assert plot.zero is not None and plot.zero < plot.rows[0].x_low  # IMIB > 0 is read against the 0 line
    scales = interval_plot(8, {"final_val_ppl": {"s": {a: stats(30.0, n=1)}, "l": {a: stats(20.0, n=1)}}})
    assert [r.label for r in scales.rows] == [f"s {a}", f"l {a}"] and scales.single_seed
    assert all(r.x_low == r.x_mean == r.x_high for r in scales.rows)  # one seed: a point, no interval
    depth = interval_plot(4, {"s": {a: {"depth": stats(0.2, 0.1, 0.3), "trend": stats(0.5)}}, "runs": []})
    assert [(r.label, r.line) for r in depth.rows] == [(a, get_method(a).colour)]  # named by method, not 'depth'


def test_a_claim_without_intervals_has_no_plot():
    assert interval_plot(7, {"loo": {"delta_r2": 0.1, "p_r2": 0.02}}) is None
    assert interval_plot(1, {}) is None


def test_matched_rows_order_the_methods_and_mark_only_claimed_steps():
    def pair(a, b, mean_a, mean_b, verdict, column="x.es"):
        return {"column": column, "scale": "s", "method_a": a, "method_b": b, "mean_a": mean_a, "mean_b": mean_b,
                "diff": mean_a - mean_b, "verdict": verdict}

    pairs = [pair("a", "b", 3.0, 2.0, "different"), pair("a", "c", 3.0, 2.1, "different"),
             pair("b", "c", 2.0, 2.1, "within seed spread"), pair("a", "b", 1.0, 2.0, "not significant", "y.cka")]
    rows = {r["column"]: r for r in matched_rows(pairs)}
    x = rows["x.es"]
    assert (x["different"], x["compared"]) == (2, 3)
    assert [(m, sym) for m, _, sym in x["chain"]] == [("a", ""), ("c", ">"), ("b", "≈")]  # highest first
    assert [(m, sym) for m, _, sym in rows["y.cka"]["chain"]] == [("b", ""), ("a", "≈")]
    assert rows["y.cka"]["different"] == 0


def test_mean_and_half_width_keep_the_digits_the_spread_leaves():
    assert mean_pm(267.4, 22.47) == "267 ± 22"
    assert mean_pm(93.71, 2.862) == "93.7 ± 2.9"
    assert mean_pm(0.002477, 0.001028) == "0.0025 ± 0.0010"
    assert mean_pm(1234.5, 350.0) == "1230 ± 350"
    assert mean_pm(0.00128, 5.9e-05) == "0.001280 ± 0.000059" and mean_pm(1e-9, 2e-10) == "1e-09 ± 2e-10"
    assert mean_pm(5.0, 0.0) == "5" and mean_pm(5.0, NAN) == "5"


def test_the_page_opens_on_the_findings(report_page: Path):
    text = report_page.read_text()
    summary = text.index('id="summary"')
    assert summary < text.index('id="overview"') < text.index('id="settings"')
    block = text[summary:text.index("</section>", summary)]
    claims = read_csv(report_page.parent / "tables" / "claims.csv")
    verdicts = block[block.index('id="verdicts"'):block.index("</table>")]
    assert verdicts.count("<tr>") == 1 + len(claims)  # header + one row per claim
    for c in claims:
        assert f'href="#claim-{c["id"]}"' in verdicts and f'id="claim-{c["id"]}"' in text
    assert verdicts.count("<svg") >= 6  # every claim with Stats values plots them (not 7: p-values)
    headline = block[block.index("Headline metric per method"):]
    for m in PAPER_METHODS:
        assert f'<th><span class="sw" style="background:{get_method(m).colour}"></span>{m}' in headline, m
    assert "final val_ppl" in headline and '<strong>es</strong> <span class="muted">(landscape_random)' in headline
    assert "Differences at matched perplexity" in block and "Single seed" in block


def _runs(methods: list[str], seeds: int) -> list[RunInfo]:
    runs = []
    for i, m in enumerate(methods):
        for seed in range(seeds):
            ppl = 50.0 + 10 * i + seed
            ck = [{"step": s, "val_ppl": ppl / (1 + s), "val_ppl_reference": ppl / (1 + s)} for s in (0, 4, 8)]
            log = [{"kind": "train", "step": s, "loss": 5.0 - 0.1 * s - 0.01 * seed} for s in range(9)]
            runs.append(RunInfo(f"nano-{m}-seed{seed}", Path("."), {"method": m, "scale": "nano",
                                                                    "train": {"seed": seed}}, ck, log))
    return runs


def _legend(chart) -> list[str]:
    """The legend entries of a chart as the page draws it (Plotly traces with showlegend) and as its PNG
    labels them (the same series)."""
    traces = plotly_figure(chart)["data"]
    return [t["name"] for t in traces if t.get("showlegend") and t["type"] != "heatmap"]


def test_validation_perplexity_figures_list_each_method_once():
    methods = method_names()[:3]
    runs = _runs(methods, seeds=3)
    matches = [{"run": r.name, "method": r.method, "scale": r.scale, "seed": r.seed, "step": 4,
                "val_ppl": r.checkpoints[1]["val_ppl"], "target": 20.0} for r in runs]
    charts = [*figures.training_charts(runs), figures.matched_chart(runs, matches)]
    for chart in charts:
        entries = [e for e in _legend(chart) if not e.startswith("target")]
        assert sorted(entries) == sorted(methods), chart.name  # 3 entries for 9 runs
    val = charts[1].series
    thin = [s for s in val if s.width < 1]
    thick = [s for s in val if s.width > 1.5]
    assert len(thin) == 9 and len(thick) == 3  # every seed thin, the mean over seeds thick
    for m in methods:
        assert sum(s.method == m for s in thin) == 3
        mean = next(s for s in thick if s.method == m)
        seeds = [s for s in thin if s.method == m]
        assert list(mean.y) == pytest.approx([sum(s.y[i] for s in seeds) / 3 for i in range(len(mean.y))])
    assert get_method(methods[0]).colour in json.dumps(plotly_figure(charts[1]))


@pytest.mark.parametrize("seeds", [1, 2])
def test_downstream_figure_lists_each_method_once(seeds):
    methods = method_names()[:2]
    rows = [{"run": r.name, "method": r.method, "task": t, "acc": 0.5} for r in _runs(methods, seeds)
            for t in ("a", "b")]
    assert sorted(_legend(figures.downstream_chart(rows, "t"))) == sorted(methods)
