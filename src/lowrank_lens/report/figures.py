"""Report figures as Charts (analysis/charts.py): each metric's own charts() on its cached Results, plus the
report-level ones (training curves, the lens during training, matched-perplexity targets, downstream accuracy,
learning-rate sensitivity, predicted vs actual accuracy). The page draws them interactive and writes each as
PNG (interactive.py). Method colours are the fixed ones of docs/study.md §1.1 (Method.colour). Every figure
reads files already gathered (collect.py), never a checkpoint.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..analysis.charts import DASHES, Chart, Series, finite, one_legend_entry
from ..analysis.metrics import get_metric, metric_names
from ..errors import LensError
from ..runfolder.log import read_lens_rows
from .collect import MetricData, RunInfo

log = logging.getLogger("lowrank_lens")

IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")


REPORT_FILE_SUFFIXES = (*IMAGE_SUFFIXES, ".csv", ".parquet", ".js")


def fresh_dir(path: Path) -> Path:
    """The folder at `path` without the figures and tables of an earlier report. Only files the report
    writes (REPORT_FILE_SUFFIXES) and the folders they leave empty are removed, never anything else, so a
    user's file that ended up there survives."""
    if path.is_symlink():
        raise LensError(f"report folder {path} is a symbolic link; refusing to clean through it — remove the link")
    if path.is_dir():
        for p in sorted(path.rglob("*"), key=lambda q: len(q.parts), reverse=True):
            if p.is_file() and not p.is_symlink() and p.suffix.lower() in REPORT_FILE_SUFFIXES:
                p.unlink()
            elif p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
                p.rmdir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def metric_charts(md: MetricData, out_dir: Path) -> tuple[list[Chart], list[Path], str]:
    """The metric's figures from its computed results: its charts() (drawn by the page, each source told apart
    in a report over several: their results' subjects name it, report/sources.py), or the files its own plot()
    wrote into `out_dir` where it overrides plot() (shown as images); (charts, files, error or '')."""
    done = [r for r in md.results if not r.skipped]
    if not done:
        return [], [], ""
    try:
        charts = style_sources(md.metric.charts(done), [r.subject.get("source", "") for r in done])
        paths = [] if charts else md.metric.plot(done, out_dir)
    except Exception as e:  # a broken plot must not cost the whole report; the section says what failed
        log.warning(f"report: {md.name} figures failed: {type(e).__name__}: {e}")
        return [], [], f"{type(e).__name__}: {e}"
    files = [Path(p) for p in paths or [] if p is not None]
    return charts, [p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES], ""


def style_sources(charts: list[Chart], sources: list[str]) -> list[Chart]:
    """In a report over several sources, a metric's series tell their source apart as the training curves do:
    a series named after a source's run ('<label>/<run>', or '<label>: ' before an IMIB pair) joins the legend
    group '<method> (<label>)' and takes its source's line style (DASHES, in the sorted labels' order). Each
    new group has one legend entry per view where its method had one."""
    order = sorted({x for x in sources if x})
    if len(order) < 2:
        return charts
    longest_first = sorted(order, key=len, reverse=True)  # a label may be another's prefix ('a/s' and 'a')
    for chart in charts:
        series = [s for s in chart.series if isinstance(s, Series) and s.method]
        listed = {(s.group or s.method, s.view) for s in series if s.legend}
        seen: set[tuple[str, str]] = set()
        for s in series:
            label = next((x for x in longest_first if s.name.startswith((f"{x}/", f"{x}: "))), None)
            if label is None:
                continue
            had_entry = (s.group or s.method, s.view) in listed
            s.group, s.dash = source_group(s.group or s.method, label), source_dash(order, label)
            s.legend = had_entry and (s.group, s.view) not in seen
            seen.add((s.group, s.view))
    return charts


def _groups(runs: list[RunInfo]) -> dict[tuple[str, str, str], list[RunInfo]]:
    """(method, scale, source) -> its runs (the seeds), baseline method first, then in run order."""
    out: dict[tuple[str, str, str], list[RunInfo]] = {}
    for r in sorted(runs, key=lambda r: not r.is_baseline):
        out.setdefault((r.method, r.scale, r.source), []).append(r)
    return out


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The mean over seeds at the steps every seed has (seeds of one group log the same steps)."""
    common = set.intersection(*({s for s, _ in c} for c in curves))
    at = [dict(c) for c in curves]
    return [(s, sum(d[s] for d in at) / len(at)) for s in sorted(common)]


def _val_series(r: RunInfo, key: str) -> list[tuple[int, float]]:
    val = {c["step"]: c for c in r.checkpoints}
    for e in r.log:
        if e.get("kind") == "val" and "val_ppl" in e:
            val.setdefault(int(e["step"]), e)
    pts = [(s, float(val[s].get(key, math.nan))) for s in sorted(val)]
    return [(s, v) for s, v in pts if math.isfinite(v)]


def source_group(name: str, label: str) -> str:
    """The legend group of a method's (or group's) series from source `label`, in a report over several."""
    return f"{name} ({label})"


def source_dash(labels: list[str], label: str) -> str:
    """The line style of source `label` among `labels` (DASHES in sorted order), in a report over several."""
    return DASHES[sorted(set(labels)).index(label) % len(DASHES)]


def _dash(runs: list[RunInfo], run: RunInfo) -> str:
    """The line style of a run's group: per source in a report over several sources, else per scale."""
    sources = sorted({r.source for r in runs})
    if len(sources) > 1:
        return source_dash(sources, run.source)
    scales = sorted({r.scale for r in runs})
    return DASHES[scales.index(run.scale) % len(DASHES)]


def seed_series(group: list[RunInfo], curves: list[list[tuple[int, float]]], dash: str,
                markers: bool) -> list[Series]:
    """One run: its line. Several seeds: each seed thin and pale, their mean thick, in the method's colour
    (hover: run, seed, scale; the mean says over how many seeds)."""
    mode = "lines+markers" if markers else "lines"
    kept = [(r, c) for r, c in zip(group, curves, strict=True) if c]
    if not kept:  # e.g. runs without a training log: nothing to draw
        return []
    method, scale, source = kept[0][0].method, kept[0][0].scale, kept[0][0].source
    group = source_group(method, source) if source else ""

    def one(r: RunInfo, c: list[tuple[int, float]], **style) -> Series:
        return Series([s for s, _ in c], [v for _, v in c], name=r.name, method=method, mode=mode, dash=dash,
                      group=group, hover={"seed": [r.seed] * len(c), "scale": [scale] * len(c)}, **style)
    if len(kept) == 1:
        return [one(*kept[0])]
    out = [one(r, c, width=0.8, opacity=0.45, marker_size=2) for r, c in kept]
    mean = _mean_curve([c for _, c in kept])
    if mean:
        out.append(Series([s for s, _ in mean], [v for _, v in mean], name=f"{group or method} {scale} (mean)",
                          method=method, mode=mode, dash=dash, width=2.2, group=group,
                          hover={"seeds": [len(kept)] * len(mean)}))
    return out


def training_charts(runs: list[RunInfo]) -> list[Chart]:
    """Training loss, validation perplexity (token-weighted) and the reference definition vs step: colour
    per method, line style per scale; with several seeds each seed is a thin line and their mean a thick
    one. The legend lists each method once."""
    runs = [r for r in runs if r.checkpoints or r.log]
    if not runs:
        return []
    groups = _groups(runs)
    loss, ppl, ref = [], [], []
    for group in groups.values():
        dash = _dash(runs, group[0])
        train = [[(e["step"], e["loss"]) for e in r.log if e.get("kind") == "train" and "loss" in e] for r in group]
        loss += seed_series(group, train, dash, markers=False)
        ppl += seed_series(group, [_val_series(r, "val_ppl") for r in group], dash, markers=True)
        ref += seed_series(group, [_val_series(r, "val_ppl_reference") for r in group], dash, markers=True)
    return [Chart("training_loss", "training loss", "training step", "loss", one_legend_entry(loss)),
            Chart("val_ppl", "validation perplexity (token-weighted)", "training step", "val_ppl",
                  one_legend_entry(ppl), y_log=True),
            Chart("val_ppl_reference", "validation perplexity (reference definition)", "training step",
                  "val_ppl_ref", one_legend_entry(ref), y_log=True)]


def lens_charts(runs: list[RunInfo]) -> tuple[list[Chart], list[dict[str, Any]]]:
    """The in-training lens (train.lens, each run's lens.jsonl): every observed metric's headline vs training
    step, colour per method, line style per scale, seeds thin and their mean thick; and all the rows."""
    series = {r.name: read_lens_rows(r.dir) for r in runs}
    rows = [row for name in series for row in series[name]]
    known = set(metric_names())
    metrics = [m for m in dict.fromkeys(r.get("metric") for r in rows) if m in known and get_metric(m).headline]
    groups = _groups([r for r in runs if series[r.name]])
    charts = []
    for metric in metrics:
        key = get_metric(metric).headline
        lines: list[Series] = []
        for group in groups.values():
            curves = [[(int(e["step"]), float(e[key])) for e in series[r.name]
                       if e.get("metric") == metric and isinstance(e.get(key), (int, float))] for r in group]
            lines += seed_series(group, curves, _dash(runs, group[0]), markers=True)
        charts.append(Chart(f"lens_{metric}", f"lens during training: {metric} {key}", "training step", key,
                            one_legend_entry(lines)))
    return charts, rows


def matched_chart(runs: list[RunInfo], matches: list[dict[str, Any]]) -> Chart | None:
    """Validation perplexity vs step per run (a view per scale; colour per method), each group's target as a
    dashed grey line and each run's matched checkpoint as a large marker: how close each match is."""
    if not matches:
        return None
    by_name = {r.name: r for r in runs}
    scales = sorted({str(m.get("scale")) for m in matches})
    views = [f"scale {s}" for s in scales] if len(scales) > 1 else []
    out: list[Series] = []
    for scale in scales:
        view = f"scale {scale}" if views else ""
        steps: list[int] = []
        for m in (m for m in matches if str(m.get("scale")) == scale):
            run, method = by_name.get(m["run"]), str(m["method"])
            pts = [(c["step"], c["val_ppl"]) for c in run.checkpoints if math.isfinite(c["val_ppl"])] if run else []
            steps += [s for s, _ in pts]
            if pts:
                out.append(Series([s for s, _ in pts], [v for _, v in pts], name=str(m["run"]), method=method,
                                  mode="lines", width=0.9, opacity=0.7, view=view))
            if m.get("step") is not None and m.get("val_ppl") is not None:
                out.append(Series([m["step"]], [m["val_ppl"]], name=f"{m['run']} matched", method=method,
                                  mode="markers", marker_size=11, view=view, legend=False,
                                  hover={"target": [m.get("target")], "gap": [m.get("gap")]}))
        for target in sorted({float(m["target"]) for m in matches if str(m.get("scale")) == scale}):
            span = [min(steps), max(steps)] if steps else [0, 1]
            out.append(Series(span, [target, target], name=f"target {scale}", colour="#555555", mode="lines",
                              dash="dash", width=1, view=view))
    return Chart("matched_perplexity", "matched validation perplexity (dashed: target; large dot: matched "
                 "checkpoint)", "training step", "val_ppl", one_legend_entry(out), y_log=True, views=views,
                 view_label="scale")


def downstream_chart(rows: list[dict[str, Any]], name: str, value: str = "acc") -> Chart | None:
    """Zero-shot accuracy per task (groups) and run (bars, coloured by method), with the seed std as error
    bars and the chance level as a black marker where the table has one."""
    rows = [r for r in rows if finite(r.get(value)) is not None]
    if not rows:
        return None
    tasks = list(dict.fromkeys(str(r["task"]) for r in rows))
    bars = []
    for run in dict.fromkeys(str(r["run"]) for r in rows):
        mine = {str(r["task"]): r for r in rows if str(r["run"]) == run}
        xs = [t for t in tasks if t in mine]
        ys = [float(mine[t][value]) for t in xs]
        err = [finite(mine[t].get(f"{value}_std_seeds")) or 0.0 for t in xs]
        first = next(iter(mine.values()))
        bars.append(Series(xs, ys, name=run, method=str(first.get("method")), mode="bar",
                           low=[y - e for y, e in zip(ys, err, strict=True)],
                           high=[y + e for y, e in zip(ys, err, strict=True)],
                           hover={"seed": [mine[t].get("seed") for t in xs], "n": [mine[t].get("n") for t in xs]}))
    chance: dict[str, float] = {}
    for r in rows:
        if (c := finite(r.get("chance"))) is not None:
            chance.setdefault(str(r["task"]), c)
    out = one_legend_entry(bars)
    if chance:
        out.append(Series(list(chance), list(chance.values()), name="chance", colour="#000000",
                          mode="markers", marker_size=9))
    return Chart(f"downstream_{name}", f"zero-shot {value} ({name}); error bars: seed std", "task", value, out)


def lr_sensitivity_chart(rows: list[dict[str, Any]]) -> Chart | None:
    """The tune stage's proxies (tune/tune.csv): final validation loss vs lr (log axis), one line per method
    and scale, the chosen lr as a large marker, diverged proxies as markers on the top edge."""
    if not rows:
        return None
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["method"]), str(r["scale"])), []).append(r)
    scales = sorted({s for _, s in groups})
    finite_loss = [v for r in rows if (v := finite(r.get("val_loss"))) is not None]
    top = max(finite_loss) if finite_loss else 1.0
    out = []
    for (method, scale), group in sorted(groups.items()):
        group = sorted(group, key=lambda r: float(r["lr"]))
        ok = [r for r in group if r.get("status") == "ok"]
        dash = DASHES[scales.index(scale) % len(DASHES)]
        out.append(Series([float(r["lr"]) for r in ok], [float(r["val_loss"]) for r in ok], name=f"{method} {scale}",
                          method=method, dash=dash, hover={"scale": [scale] * len(ok)}))
        bad = [float(r["lr"]) for r in group if r.get("status") == "diverged"]
        if bad:
            out.append(Series(bad, [top] * len(bad), name=f"{method} {scale} diverged", method=method,
                              mode="markers", marker_size=8, legend=False))
        chosen = [r for r in ok if str(r.get("chosen")) == "True"]
        if chosen:
            out.append(Series([float(r["lr"]) for r in chosen], [float(r["val_loss"]) for r in chosen],
                              name=f"{method} {scale} chosen", method=method, mode="markers", marker_size=13,
                              opacity=0.5, legend=False))
    return Chart("lr_sensitivity", "learning-rate sensitivity (tune stage): large dot = lr trained with, "
                 "top edge = diverged", "learning rate (optim.lr)", "final validation loss of the proxy run",
                 one_legend_entry(out), x_log=True)


def prediction_chart(rows: list[dict[str, Any]]) -> Chart | None:
    """The predict stage's out-of-fold predictions (prediction/predictions.csv): predicted vs actual
    downstream accuracy per unit, a view per feature set, points coloured by method, the identity line."""
    rows = [r for r in rows if finite(r.get("actual")) is not None and finite(r.get("predicted")) is not None]
    if not rows:
        return None
    split = "loo" if any(r.get("split") == "loo" for r in rows) else str(rows[0].get("split"))
    rows = [r for r in rows if str(r.get("split")) == split]
    sets = list(dict.fromkeys(str(r["feature_set"]) for r in rows))
    values = [float(r[k]) for r in rows for k in ("actual", "predicted")]
    out = [Series([min(values), max(values)], [min(values), max(values)], name="identity", colour="#777777",
                  mode="lines", dash="dash", width=1)]
    for fs in sets:
        for method in dict.fromkeys(str(r["method"]) for r in rows):
            mine = [r for r in rows if str(r["feature_set"]) == fs and str(r["method"]) == method]
            if mine:
                out.append(Series([float(r["actual"]) for r in mine], [float(r["predicted"]) for r in mine],
                                  name=method, method=method, mode="markers", marker_size=8, view=fs,
                                  hover={"unit": [r.get("unit") for r in mine], "seed": [r.get("seed") for r in mine]}))
    return Chart("predicted_vs_actual", f"out-of-fold predicted vs actual downstream accuracy ({split})",
                 "actual", "predicted", one_legend_entry(out), views=sets, view_label="feature set")
