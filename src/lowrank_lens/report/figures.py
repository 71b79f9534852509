"""Report figures: each metric's own plot() on its cached Results, plus the few report-level figures
(training curves, matched-perplexity targets, downstream accuracy). Method colours are the fixed ones of
docs/study.md §1.1 (Method.colour). Every figure reads files already gathered (collect.py), never a checkpoint.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..analysis.metrics import get_metric, metric_names  # noqa: E402
from ..analysis.plotting import SCALE_STYLES, method_legend, save_figure  # noqa: E402
from ..errors import LensError  # noqa: E402
from ..runfolder.log import read_lens_rows  # noqa: E402
from .collect import MetricData, RunInfo, method_colour  # noqa: E402

log = logging.getLogger("lowrank_lens")

IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")


REPORT_FILE_SUFFIXES = (*IMAGE_SUFFIXES, ".csv", ".parquet")


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


def plot_metric(md: MetricData, out_dir: Path) -> tuple[list[Path], str]:
    """Call the metric's plot() on its computed results into `out_dir`; (figures written, error or '')."""
    done = [r for r in md.results if not r.skipped]
    if not done:
        return [], ""
    try:
        paths = md.metric.plot(done, out_dir)
    except Exception as e:  # a broken plot must not cost the whole report; the section says what failed
        log.warning(f"report: {md.name}.plot failed: {type(e).__name__}: {e}")
        return [], f"{type(e).__name__}: {e}"
    files = [Path(p) for p in paths or [] if p is not None]
    return [p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES], ""


def _groups(runs: list[RunInfo]) -> dict[tuple[str, str], list[RunInfo]]:
    """(method, scale) -> its runs (the seeds), baseline method first, then in run order."""
    out: dict[tuple[str, str], list[RunInfo]] = {}
    for r in sorted(runs, key=lambda r: not r.is_baseline):
        out.setdefault((r.method, r.scale), []).append(r)
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


def _seed_lines(ax, curves: list[list[tuple[int, float]]], colour: str, ls: str, marker: str | None) -> None:
    """One run: its line. Several seeds: each seed thin and pale, their mean thick, in the method's colour."""
    curves = [c for c in curves if c]
    if not curves:  # e.g. runs without a training log: nothing to draw on this axis
        return
    if len(curves) == 1:
        ax.plot(*zip(*curves[0], strict=True), color=colour, ls=ls, lw=1.2, marker=marker, ms=3)
        return
    for c in curves:
        ax.plot(*zip(*c, strict=True), color=colour, ls=ls, lw=0.7, alpha=0.45)
    mean = _mean_curve(curves)
    if mean:
        ax.plot(*zip(*mean, strict=True), color=colour, ls=ls, lw=1.8, marker=marker, ms=3)


def training_curves(runs: list[RunInfo], path: Path) -> Path | None:
    """Training loss, validation perplexity (token-weighted) and the reference definition vs step: colour
    per method, line style per scale; with several seeds each seed is a thin line and their mean a thick
    one. The legend lists each method once (and each scale), not each run."""
    runs = [r for r in runs if r.checkpoints or r.log]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), layout="constrained")
    scales = sorted({r.scale for r in runs})
    groups = _groups(runs)
    for (method, scale), group in groups.items():
        colour, ls = method_colour(method), SCALE_STYLES[scales.index(scale) % len(SCALE_STYLES)]
        train = [[(e["step"], e["loss"]) for e in r.log if e.get("kind") == "train" and "loss" in e] for r in group]
        _seed_lines(axes[0], train, colour, ls, None)
        for ax, key in ((axes[1], "val_ppl"), (axes[2], "val_ppl_reference")):
            _seed_lines(ax, [_val_series(r, key) for r in group], colour, ls, "o")
    titles = ("training loss", "validation perplexity (token-weighted)", "validation perplexity (reference def.)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    method_legend(axes[2], [m for m, _ in groups], scales)
    return save_figure(fig, path)


def lens_curves(runs: list[RunInfo], path: Path) -> tuple[Path | None, list[dict[str, Any]]]:
    """The in-training lens (train.lens, each run's lens.jsonl): every observed metric's headline vs training
    step, colour per method, line style per scale, seeds thin and their mean thick; and all the rows."""
    series = {r.name: read_lens_rows(r.dir) for r in runs}
    rows = [row for name in series for row in series[name]]
    known = set(metric_names())
    metrics = [m for m in dict.fromkeys(r.get("metric") for r in rows) if m in known and get_metric(m).headline]
    if not metrics:
        return None, rows
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), layout="constrained", squeeze=False)
    scales = sorted({r.scale for r in runs})
    groups = _groups([r for r in runs if series[r.name]])
    for ax, metric in zip(axes[0], metrics, strict=True):
        key = get_metric(metric).headline
        for (method, scale), group in groups.items():
            curves = [[(int(e["step"]), float(e[key])) for e in series[r.name]
                       if e.get("metric") == metric and isinstance(e.get(key), (int, float))] for r in group]
            _seed_lines(ax, curves, method_colour(method), SCALE_STYLES[scales.index(scale) % len(SCALE_STYLES)], "o")
        ax.set_title(f"{metric}: {key}", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    method_legend(axes[0][-1], [m for m, _ in groups], scales)
    return save_figure(fig, path), rows


def matched_figure(runs: list[RunInfo], matches: list[dict[str, Any]], path: Path) -> Path | None:
    """Validation perplexity vs step per run (one panel per scale; colour per method, every seed a thin
    line), each group's target as a dashed line and each run's matched checkpoint as a large marker: how
    close each match is, at a glance. One legend entry per method."""
    if not matches:
        return None
    by_name = {r.name: r for r in runs}
    scales = sorted({str(m.get("scale")) for m in matches})
    fig, axes = plt.subplots(1, len(scales), figsize=(5.5 * len(scales), 3.8), squeeze=False, layout="constrained")
    methods: list[str] = []
    for ax, scale in zip(axes[0], scales, strict=True):
        for m in (m for m in matches if str(m.get("scale")) == scale):
            run = by_name.get(m["run"])
            colour = method_colour(str(m["method"]))
            methods.append(str(m["method"]))
            if run is not None:
                pts = [(c["step"], c["val_ppl"]) for c in run.checkpoints if math.isfinite(c["val_ppl"])]
                if pts:
                    ax.plot(*zip(*pts, strict=True), color=colour, lw=0.9, alpha=0.7)
            if m.get("step") is not None and m.get("val_ppl") is not None:
                ax.plot([m["step"]], [m["val_ppl"]], "o", ms=9, mfc="none", mec=colour, mew=2)
        for target in sorted({float(m["target"]) for m in matches if str(m.get("scale")) == scale}):
            ax.axhline(target, color="0.3", ls="--", lw=1)
        ax.set_title(f"{scale}: matched validation perplexity (dashed: target)", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("val_ppl")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    method_legend(axes[0][-1], sorted(set(methods), key=methods.index))
    return save_figure(fig, path)


def downstream_figure(rows: list[dict[str, Any]], path: Path, value: str = "acc") -> Path | None:
    """Zero-shot accuracy per task (groups) and run (bars, coloured by method), with the seed std as error
    bars and the chance level as a tick where the table has one."""
    rows = [r for r in rows if isinstance(r.get(value), (int, float)) and math.isfinite(float(r[value]))]
    if not rows:
        return None
    tasks = list(dict.fromkeys(str(r["task"]) for r in rows))
    runs = list(dict.fromkeys(str(r["run"]) for r in rows))
    at: dict[tuple[str, str], dict[str, Any]] = {(str(r["task"]), str(r["run"])): r for r in rows}
    method = {str(r["run"]): str(r.get("method")) for r in rows}
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.35 * len(tasks) * len(runs)), 4.0), layout="constrained")
    for j, run in enumerate(runs):
        xs, ys, es = [], [], []
        for i, task in enumerate(tasks):
            r = at.get((task, run))
            if r is None:
                continue
            xs.append(i - 0.4 + (j + 0.5) * width)
            ys.append(float(r[value]))
            err = r.get(f"{value}_std_seeds")
            es.append(float(err) if isinstance(err, (int, float)) and math.isfinite(float(err)) else 0.0)
        first = method[run] not in [method[r] for r in runs[:j]]  # one legend entry per method, not per run
        ax.bar(xs, ys, width, yerr=es, color=method_colour(method[run]), label=method[run] if first else "_nolegend_",
               capsize=2)
    chance: dict[int, float] = {}
    for i, task in enumerate(tasks):
        c = [r.get("chance") for r in rows if str(r["task"]) == task and isinstance(r.get("chance"), float)]
        if c:
            chance[i] = c[0]
            ax.hlines(c[0], i - 0.45, i + 0.45, color="k", ls=":", lw=1)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30 if len(tasks) > 3 else 0, ha="right" if len(tasks) > 3
                  else "center", fontsize=8)
    ax.set_ylabel(f"{value} (dotted: chance)" if chance else value)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def lr_sensitivity(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """The tune stage's proxies (tune/tune.csv): final validation loss vs lr (log axis), one line per method
    and scale, the chosen lr as a large ring, diverged proxies as crosses on the top edge."""
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4), layout="constrained")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["method"]), str(r["scale"])), []).append(r)
    scales = sorted({s for _, s in groups})
    finite = [float(r["val_loss"]) for r in rows if isinstance(r.get("val_loss"), (int, float))
              and math.isfinite(r["val_loss"])]
    top = max(finite) if finite else 1.0
    for (method, scale), group in sorted(groups.items()):
        colour, ls = method_colour(method), SCALE_STYLES[scales.index(scale) % len(SCALE_STYLES)]
        group = sorted(group, key=lambda r: float(r["lr"]))
        ok = [r for r in group if r.get("status") == "ok"]
        ax.plot([float(r["lr"]) for r in ok], [float(r["val_loss"]) for r in ok], linestyle=ls, color=colour,
                marker="o", ms=3.5, lw=1.4)
        bad = [float(r["lr"]) for r in group if r.get("status") == "diverged"]
        if bad:
            ax.plot(bad, [top] * len(bad), "x", color=colour, ms=7, mew=2)
        for r in ok:
            if str(r.get("chosen")) == "True":
                ax.plot([float(r["lr"])], [float(r["val_loss"])], "o", ms=11, mfc="none", mec=colour, mew=2)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (optim.lr)")
    ax.set_ylabel("final validation loss of the proxy run")
    ax.grid(alpha=0.3)
    method_legend(ax, sorted({m for m, _ in groups}), scales)
    return save_figure(fig, path)
