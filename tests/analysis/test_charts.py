"""Each metric's figures as data (charts.py): on small synthetic Results (the arrays and scalars each metric's
compute() writes), charts() returns the expected file stems, series of the right method whose values are the
Results' own, views that match the series, and plot() writes one PNG per chart; chart_png draws views, bars
with categories and heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lowrank_lens.analysis.base import Metric, Result
from lowrank_lens.analysis.charts import Chart, Heatmap, Series
from lowrank_lens.analysis.metrics.activation_similarity import (
    KEYS,
    PLOTTED,
    ActivationSimilarity,
    ActivationSimilarityConfig,
)
from lowrank_lens.analysis.metrics.curvature import Curvature, CurvatureConfig
from lowrank_lens.analysis.metrics.imib import IMIB, IMIBConfig, pair_label
from lowrank_lens.analysis.metrics.interpolation import Interpolation, InterpolationConfig
from lowrank_lens.analysis.metrics.landscape_pca import LandscapePCA, LandscapePCAConfig
from lowrank_lens.analysis.metrics.landscape_random import LandscapeRandom, LandscapeRandomConfig
from lowrank_lens.analysis.metrics.spectra import SPECTRAL_KEYS, SpectraConfig, WeightSpectra
from lowrank_lens.analysis.metrics.trajectory_pca import TrajectoryPCAConfig, TrajectoryPCAMetric
from lowrank_lens.analysis.metrics.update_spectra import UPDATE_NORM_KEYS, UpdateSpectra, UpdateSpectraConfig
from lowrank_lens.analysis.plotting import chart_png

RUNS = {"fr-s0": ("full-rank", 0), "fr-s1": ("full-rank", 1), "gl-s0": ("galore", 0)}
STEPS = (0, 4, 8)
RNG = np.random.default_rng(0)


def result(metric: str, run: str, step: int, scalars=None, arrays=None, info=None, **subject) -> Result:
    method, seed = RUNS[run]
    return Result(metric, {"run": run, "method": method, "scale": "nano", "seed": seed, "kind": "checkpoint",
                           "step": step, **subject}, scalars or {}, arrays or {}, info or {})


def by_name(charts: list[Chart]) -> dict[str, Chart]:
    return {c.name: c for c in charts}


def lines(chart: Chart) -> list[Series]:
    return [s for s in chart.series if isinstance(s, Series)]


def check_chart(chart: Chart) -> None:
    """Properties every chart has: the views are those of its series, a method's series carry a real
    method, hover columns are as long as the data, and each (method, view) has one legend entry."""
    views = {s.view for s in chart.series}
    if chart.views:
        assert views == set(chart.views), (chart.name, views, chart.views)
    else:
        assert views <= {""}
    for s in lines(chart):
        assert len(s.x) == len(s.y) and all(len(v) == len(s.y) for v in s.hover.values())
        if s.low is not None:
            assert len(s.low) == len(s.high) == len(s.y)
    entries = [(s.method, s.view) for s in lines(chart) if s.legend and s.method and not s.group]
    assert len(entries) == len(set(entries)), chart.name


def check_plot(metric: Metric, results: list[Result], tmp_path: Path) -> list[Chart]:
    charts = metric.charts(results)
    for c in charts:
        check_chart(c)
    files = metric.plot(results, tmp_path)
    assert [f.name for f in files] == [f"{c.name}.png" for c in charts]
    assert all(f.is_file() and f.stat().st_size > 1000 for f in files)
    return charts


def check_lines(chart: Chart, results: list[Result], key: str) -> None:
    """A lines_by_method chart: one series per run, its method, y = the scalar at each step in step order."""
    assert {s.name for s in chart.series} == {r.subject["run"] for r in results}
    for s in lines(chart):
        mine = sorted((r for r in results if r.subject["run"] == s.name), key=lambda r: r.subject["step"])
        assert s.method == mine[0].subject["method"]
        assert list(s.x) == [r.subject["step"] for r in mine]
        assert list(s.y) == pytest.approx([r.scalars[key] for r in mine])
        assert list(s.hover["seed"]) == [r.subject["seed"] for r in mine]
    assert sum(s.legend for s in lines(chart)) == len({r.subject["method"] for r in results})


def landscape(metric: str, rows: int, scalars: tuple[str, ...]) -> list[Result]:
    alphas = np.linspace(-1, 1, 5)
    return [result(metric, run, step, {k: RNG.normal() for k in scalars},
                   {"alphas": alphas, "curves": RNG.normal(size=(rows, 5)) + alphas ** 2})
            for run in RUNS for step in (4, 8)]


def check_grid(chart: Chart, results: list[Result], rows: int, band: bool) -> None:
    assert chart.views == ["step 4", "step 8"] and chart.view_label == "step"
    assert len(chart.series) == len(results)
    for s in lines(chart):
        (r,) = [r for r in results if r.subject["run"] == s.name and f"step {r.subject['step']}" == s.view]
        c = r.arrays["curves"][:rows]
        assert s.method == r.subject["method"] and list(s.x) == pytest.approx(r.arrays["alphas"])
        assert list(s.y) == pytest.approx(c.mean(axis=0))
        if band:
            assert s.interval == "band"
            assert list(s.low) == pytest.approx(c.mean(axis=0) - 3 * c.std(axis=0))
            assert list(s.high) == pytest.approx(c.mean(axis=0) + 3 * c.std(axis=0))
        else:
            assert s.low is None and s.high is None
        assert set(s.hover["run"]) == {s.name} and set(s.hover["seed"]) == {r.subject["seed"]}
    for view in chart.views:  # one legend entry per method in each view
        assert sorted(s.method for s in lines(chart) if s.view == view and s.legend) == ["full-rank", "galore"]


def test_landscape_random_charts(tmp_path):
    results = landscape("landscape_random", 6, ("es", "dv"))
    charts = by_name(check_plot(LandscapeRandom(LandscapeRandomConfig()), results, tmp_path))
    assert list(charts) == ["landscape_random_curves", "landscape_random_es", "landscape_random_dv"]
    check_grid(charts["landscape_random_curves"], results, 6, band=True)
    check_lines(charts["landscape_random_es"], results, "es")
    check_lines(charts["landscape_random_dv"], results, "dv")


def test_landscape_pca_charts(tmp_path):
    results = landscape("landscape_pca", 3, ("es_pca1", "es_pca3", "dv_pca3"))
    charts = by_name(check_plot(LandscapePCA(LandscapePCAConfig(k=3, ks=(1, 3))), results, tmp_path))
    assert list(charts) == ["landscape_pca1_curves", "landscape_pca3_curves", "landscape_pca_es_pca1",
                            "landscape_pca_es_pca3", "landscape_pca_dv_pca3"]
    check_grid(charts["landscape_pca1_curves"], results, 1, band=False)
    check_grid(charts["landscape_pca3_curves"], results, 3, band=True)
    check_lines(charts["landscape_pca_dv_pca3"], results, "dv_pca3")
    assert LandscapePCA(LandscapePCAConfig()).charts([]) == []


def pair_result(metric: str, run: str, a: int, b: int, kind: str = "consecutive", scalars=None, arrays=None):
    return result(metric, run, b, scalars, arrays, step_from=a, kind=kind)


def test_interpolation_charts(tmp_path):
    alphas = np.linspace(0, 1, 5)

    def interp(run, a, b, kind="consecutive"):
        return pair_result("interpolation", run, a, b, kind, {"barrier": RNG.normal(), "barrier_linear": 0.1},
                           {"alphas": alphas, "curve": RNG.normal(size=5)})

    results = [interp("fr-s0", 0, 4), interp("fr-s0", 4, 8), interp("fr-s0", 0, 8, "init-final"),
               interp("gl-s0", 0, 4), interp("gl-s0", 4, 8)]
    charts = by_name(check_plot(Interpolation(InterpolationConfig()), results, tmp_path))
    assert list(charts) == ["interpolation_curves_fr-s0", "interpolation_curves_gl-s0",
                            "interpolation_sequential_path", "interpolation_barrier"]
    per_run = charts["interpolation_curves_fr-s0"]
    assert [s.name for s in per_run.series] == ["0->4", "4->8", "init-final 0->8"]
    for s, r in zip(per_run.series, results[:3], strict=True):
        assert s.method == "full-rank" and list(s.y) == pytest.approx(r.arrays["curve"])
        assert s.colour.startswith("#") and len(s.colour) == 7 and s.group == s.name
    assert per_run.series[0].colour != per_run.series[1].colour
    assert (per_run.series[2].colour, per_run.series[2].dash) == ("#000000", "dash")
    path = {s.name: s for s in lines(charts["interpolation_sequential_path"])}
    assert set(path) == {"fr-s0", "gl-s0"} and path["gl-s0"].method == "galore"
    assert list(path["fr-s0"].x) == pytest.approx(np.concatenate([4 * alphas, 4 + 4 * alphas]))
    assert list(path["fr-s0"].y) == pytest.approx(np.concatenate([results[0].arrays["curve"],
                                                                  results[1].arrays["curve"]]))
    consecutive = [r for r in results if r.subject["kind"] == "consecutive"]
    check_lines(charts["interpolation_barrier"], consecutive, "barrier")


def test_curvature_charts(tmp_path):
    results = []
    for run in RUNS:
        for step in STEPS:
            t = RNG.uniform(1, 2)
            results.append(result("curvature", run, step, {"top_eigenvalue": RNG.normal(), "trace": t,
                                                           "trace_ci_low": t - 0.2, "trace_ci_high": t + 0.3,
                                                           "trace_stderr": 0.1},
                                  {"trace_samples": RNG.normal(size=4)}))
    charts = by_name(check_plot(Curvature(CurvatureConfig()), results, tmp_path))
    assert list(charts) == ["curvature_top_eigenvalue", "curvature_trace"]
    check_lines(charts["curvature_top_eigenvalue"], results, "top_eigenvalue")
    check_lines(charts["curvature_trace"], results, "trace")
    for s in lines(charts["curvature_trace"]):
        mine = sorted((r for r in results if r.subject["run"] == s.name), key=lambda r: r.subject["step"])
        assert s.interval == "bars"
        assert list(s.low) == pytest.approx([r.scalars["trace_ci_low"] for r in mine])
        assert list(s.high) == pytest.approx([r.scalars["trace_ci_high"] for r in mine])


def test_spectra_charts_with_a_per_layer_chart(tmp_path):
    layer = np.array([0, 0, 1, 1, -1])
    results = []
    for run in RUNS:
        for step in STEPS:
            table = RNG.uniform(1, 5, size=(5, len(SPECTRAL_KEYS)))
            results.append(result("spectra", run, step, {k: float(table[:, i].mean())
                                                         for i, k in enumerate(SPECTRAL_KEYS)},
                                  {"per_matrix": table, "layer": layer}, {"keys": list(SPECTRAL_KEYS)}))
    charts = by_name(check_plot(WeightSpectra(SpectraConfig()), results, tmp_path))
    assert list(charts) == ["spectra_effective_rank", "spectra_stable_rank", "spectra_spectral_gap",
                            "spectra_n_sv_above_ratio", "spectra_effective_rank_per_layer"]
    check_lines(charts["spectra_stable_rank"], results, "stable_rank")
    per = charts["spectra_effective_rank_per_layer"]
    assert per.views == ["layer 0", "layer 1", "outside the blocks"] and len(per.series) == 3 * len(RUNS)
    col = SPECTRAL_KEYS.index("effective_rank")
    for s in lines(per):
        mine = sorted((r for r in results if r.subject["run"] == s.name), key=lambda r: r.subject["step"])
        which = {"layer 0": 0, "layer 1": 1, "outside the blocks": -1}[s.view]
        assert s.method == mine[0].subject["method"] and list(s.x) == list(STEPS)
        assert list(s.y) == pytest.approx([r.arrays["per_matrix"][layer == which, col].mean() for r in mine])
        assert set(s.hover["layer"]) == {which} and set(s.hover["matrices"]) == {int((layer == which).sum())}


def test_update_spectra_charts_read_consecutive_pairs_only(tmp_path):
    keys = ("update_effective_rank", "update_stable_rank", "update_n_sv_above_ratio") + UPDATE_NORM_KEYS
    results = [pair_result("update_spectra", run, a, b, kind, {k: RNG.normal() for k in keys})
               for run in RUNS for a, b, kind in ((0, 4, "consecutive"), (4, 8, "consecutive"), (0, 8, "init-final"))]
    charts = check_plot(UpdateSpectra(UpdateSpectraConfig()), results, tmp_path)
    assert [c.name for c in charts] == list(keys)
    for c, k in zip(charts, keys, strict=True):
        check_lines(c, [r for r in results if r.subject["kind"] == "consecutive"], k)
    assert UpdateSpectra(UpdateSpectraConfig()).charts(results[2:3]) == []


def test_activation_similarity_charts(tmp_path):
    results = []
    for run in RUNS:
        for step in STEPS:
            per_layer = RNG.uniform(0, 1, size=(3, len(KEYS)))
            scalars = {f"{p}_{w}": float(RNG.normal()) for p in ("cka", "cosine", "l2", "rel_l2")
                       for w in ("mean", "last")}
            results.append(result("activation_similarity", run, step, scalars, {"per_layer": per_layer},
                                  {"n_tokens": 64}, kind="pair", other_run="ref"))
    metric = ActivationSimilarity(ActivationSimilarityConfig())
    charts = by_name(check_plot(metric, results, tmp_path))
    assert list(charts) == [f"activation_similarity_per_layer_{k}_nano" for k in PLOTTED] + [
        "activation_similarity_mean_nano", "activation_similarity_last_nano", "activation_similarity_heatmap_nano"]
    cka = charts["activation_similarity_per_layer_cka_nano"]
    assert cka.views == ["embedding", "layer 1", "layer 2"] and len(cka.series) == 3 * len(RUNS)
    for s in lines(cka):
        j = cka.views.index(s.view)
        mine = sorted((r for r in results if r.subject["run"] == s.name), key=lambda r: r.subject["step"])
        assert s.method == mine[0].subject["method"]
        assert list(s.y) == pytest.approx([r.arrays["per_layer"][j, KEYS.index("cka")] for r in mine])
    mean = charts["activation_similarity_mean_nano"]
    assert mean.views == list(PLOTTED.values())
    (s,) = [s for s in lines(mean) if s.view == PLOTTED["relative_l2"] and s.name == "gl-s0"]
    assert list(s.y) == pytest.approx([r.scalars["rel_l2_mean"] for r in results if r.subject["run"] == "gl-s0"])
    heat = charts["activation_similarity_heatmap_nano"]
    assert [h.view for h in heat.series] == heat.views == list(PLOTTED.values())
    h = heat.series[0]
    assert isinstance(h, Heatmap) and h.x == ["emb", "1", "2"] and h.y == ["fr-s0@8", "fr-s1@8", "galore@8"]
    last = {r.subject["run"]: r for r in results if r.subject["step"] == 8}
    assert np.allclose(h.z, [last[run].arrays["per_layer"][:, KEYS.index("cka")] for run in ("fr-s0", "fr-s1",
                                                                                              "gl-s0")])


def test_trajectory_pca_charts(tmp_path):
    alphas = np.linspace(-1, 1, 7)
    results = [result("trajectory_pca", run, 8, arrays={"alphas": alphas, "curves": RNG.normal(size=(2, 7)),
                                                        "explained": np.array([0.7, 0.2])}, kind="run")
               for run in RUNS]
    (chart,) = check_plot(TrajectoryPCAMetric(TrajectoryPCAConfig()), results, tmp_path)
    assert chart.name == "trajectory_pca_curves" and chart.views == ["PC1", "PC2"]
    for s in lines(chart):
        j = chart.views.index(s.view)
        (r,) = [r for r in results if r.subject["run"] == s.name]
        assert s.method == r.subject["method"] and list(s.y) == pytest.approx(r.arrays["curves"][j])
        assert set(s.hover["explained variance"]) == {["70.0%", "20.0%"][j]}


def test_imib_charts(tmp_path):
    results = []
    for other in ("galore", "fira"):
        for step in (4, 8):
            if other == "fira" and step == 8:
                continue  # a pair without the last step: its final bar is at step 4, its heatmap cell blank
            results.append(result("imib", "fr-s0", step, {"imib": RNG.uniform(0, 1), "relative_imib": 0.1,
                                                          "argmax_alpha": 0.5}, kind="pair",
                                  other_run=f"{other}-s0", other_method=other))
    charts = by_name(check_plot(IMIB(IMIBConfig()), results, tmp_path))
    assert list(charts) == ["imib_final", "imib_vs_step", "imib_heatmap"]
    pairs = sorted({pair_label(r.subject) for r in results})
    bars = charts["imib_final"]
    assert [s.x for s in bars.series] == [[p] for p in pairs] and {s.mode for s in bars.series} == {"bar"}
    assert [s.y for s in bars.series] == [[results[2].scalars["imib"]], [results[1].scalars["imib"]]]
    for s in lines(bars) + lines(charts["imib_vs_step"]):
        assert s.method == "full-rank" and s.group == s.name
        assert set(s.hover["method A"]) == {"full-rank"} and set(s.hover["method B"]) <= {"galore", "fira"}
    vs = {s.name: s for s in lines(charts["imib_vs_step"])}
    assert len({s.colour for s in vs.values()}) == len(pairs)  # a colour per pair, as the old figure
    galore = pairs[1]
    assert list(vs[galore].x) == [4, 8] and list(vs[galore].y) == [r.scalars["imib"] for r in results[:2]]
    (heat,) = charts["imib_heatmap"].series
    assert heat.x == ["4", "8"] and heat.y == pairs
    assert heat.z == [[results[2].scalars["imib"], None], [r.scalars["imib"] for r in results[:2]]]
    assert IMIB(IMIBConfig()).charts([]) == []


def test_chart_png_draws_views_bars_and_heatmaps(tmp_path):
    viewed = Chart("viewed", "views", "step", "value", views=["layer 0", "layer 1", "layer 2"], series=[
        Series([0, 1, 2], [1.0, float("nan"), 3.0], "a", method="galore", view=f"layer {i}", low=[0.5, 1, 2.5],
               high=[1.5, 2, 3.5], interval="band" if i else "bars") for i in range(3)])
    bars = Chart("bars", "bars", "pair", "IMIB", series=[
        Series(["a-b"], [0.3], "a-b", method="galore", mode="bar"),
        Series(["a-c", "b-c"], [0.5, 0.1], "x-c", method="fira", mode="bar", low=[0.4, 0.0], high=[0.6, 0.2]),
        Series(["a-c"], [0.2], "y-c", colour="#123456", mode="bar")])
    heat = Chart("heat", "heatmap", "step", "pair",
                 series=[Heatmap([[1.0, None], [0.5, 2.0]], ["4", "8"], ["p", "q"], "IMIB", "IMIB")])
    for chart in (viewed, bars, heat):
        path = chart_png(chart, tmp_path / f"{chart.name}.png")
        assert path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
    assert chart_png(heat, tmp_path / "heat.svg").read_text().lstrip().startswith("<?xml")


def test_chart_png_draws_numbers_beside_labels_empty_heatmaps_and_dollar_names(tmp_path):
    """Bars at numeric x, a category bar beside a numeric line, an empty heatmap, '$' in names and more views
    than panels: each draws (a '$' is a character, not matplotlib math mode) instead of failing."""
    numeric = Chart("numeric", "numeric bars", "step", "v", series=[Series([0, 1, 2], [1.0, 2.0, 3.0], "a",
                                                                           mode="bar")])
    mixed = Chart("mixed", "$x$ mixed", "x", "v", series=[Series(["a"], [1.0], "a$b", method="galore", mode="bar"),
                                                          Series([0, 1], [1.0, 2.0], "$line", mode="lines")])
    empty = Chart("empty", "empty", "x", "y", series=[Heatmap([], [], [], "nothing")])
    many = Chart("many", "many views", "x", "y", views=[f"layer {i}" for i in range(20)],
                 series=[Series([0, 1], [i, i + 1.0], f"r{i}", view=f"layer {i}") for i in range(20)])
    for chart in (numeric, mixed, empty, many):
        assert chart_png(chart, tmp_path / f"{chart.name}.png").stat().st_size > 1000


def test_a_pair_in_a_report_over_several_sources_names_its_source():
    """Two sources' pairs of the same methods, scale and seed stay two pairs (report/sources.py records the
    source in each subject)."""
    subject = {"method": "galore", "other_method": "full-rank", "scale": "nano", "seed": 0}
    assert pair_label(subject) == "galore-full-rank nano s0"
    assert pair_label({**subject, "source": "last-week"}) != pair_label({**subject, "source": "this-week"})
    assert pair_label({**subject, "source": "last-week"}).startswith("last-week: ")
