"""The report's descriptive sections (overview, runs, one per metric dimension, downstream, prediction,
provenance) as template context; figures and CSV copies are written beside the page as they are built.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from ..analysis.base import DIMENSIONS
from ..analysis.tables import columns, read_csv, write_csv
from ..atomic import atomic_path
from .collect import MetricData, Study, method_colour
from .figures import (
    downstream_chart,
    lens_charts,
    lr_sensitivity_chart,
    metric_charts,
    prediction_chart,
    training_charts,
)
from .findings_files import Findings
from .html import Table, fmt, make_table, mib
from .interactive import render_charts
from .published import published_for, sources_note
from .sections import seed_summary_table

DIMENSION_TITLES = {"landscape": "Loss landscape", "interpolation": "Interpolation",
                    "spectra": "Spectral structure", "activations": "Activation similarity to the baseline",
                    "curvature": "Curvature"}
PPL_NOTE = ("Two perplexity definitions (docs/methods.md §1.4): val_ppl = exp of the token-weighted mean NLL over the "
            "run's fixed validation rows; val_ppl_ref = the reference repositories' definition (mean of per-batch "
            "means divided by batches + 1, biased low), comparable with published numbers. Optimizer state is "
            "measured from the optimizer's tensors after the first step (not estimated).")
PREDICTION_TABLES = {
    "improvement": "gain of perplexity + metrics over perplexity alone, with permutation p-values",
    "cv_scores": "out-of-fold R^2 and MAE per feature set (perplexity alone; perplexity + metrics) and split",
    "coefficients": "standardized ridge coefficients of the full-data fit of each feature set",
    "importance": "drop in CV R^2 (rise in MAE) when each metric is removed, ranked",
    "predictions": "actual and out-of-fold predicted target per unit, feature set and split",
}
"""What each table of report/prediction.py's write_prediction_report holds (docs/study.md §3.3)."""
SPEC_FIELDS = ("name", "methods", "scales", "seeds", "overrides", "scale_overrides", "method_overrides", "metrics",
               "metric_overrides", "analysis_steps", "sequences", "eval_batch_size", "downstream_tasks",
               "downstream_seeds", "downstream_limit", "predict_features")


def _options(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in config.items()) or "none"


def _changed(md: MetricData) -> str:
    """The options that differ from the metric's defaults (the study's protocol), or ''."""
    try:
        default = json.loads(json.dumps(dataclasses.asdict(md.cls.Config()), default=str))
    except Exception:  # a Config without defaults: nothing to compare with
        return ""
    changed = [f"{k}={fmt(v)}" for cfg in md.configs for k, v in cfg.items() if default.get(k, v) != v]
    return ", ".join(dict.fromkeys(changed))


def low_precision_warnings(study: Study) -> list[str]:
    """A warning per metric whose results were evaluated in bf16 (an explicit --dtype bf16: the default is
    fp32 on every device), since bf16 moves the landscape metrics by tens of percent."""
    out = []
    for md in study.metrics:
        if any("bfloat16" in str((e or {}).get("dtype", "")) for e in md.evals):
            out.append(f"Warning: {md.name} was evaluated in bf16. In an audit on one checkpoint with the same "
                       f"directions bf16 moved ES_rand by +28% against fp32; compare its numbers only with other bf16 "
                       f"results, or recompute with --dtype fp32 (the default).")
    return out


def overview(study: Study) -> dict[str, Any]:
    spec = study.spec
    items = [(k, fmt(spec[k]) if spec.get(k) not in (None, [], {}, "") else "(default)") for k in SPEC_FIELDS
             if k in spec]
    ready = [r for r in study.runs if r.checkpoints]
    items.append(("runs", f"{len(ready)} with checkpoints of {len(study.runs)} listed"))
    shas = sorted({f"{str((r.config.get('provenance') or {}).get('git_sha') or '?')[:10]}"
                   f"{' (dirty)' if (r.config.get('provenance') or {}).get('git_dirty') else ''}" for r in ready})
    items.append(("code versions (git)", ", ".join(shas) or "unknown"))
    evals = {_options(e) for md in study.metrics for e in md.evals}
    settings = []
    for md in study.metrics:
        row = {"metric": md.name, "dimension": md.cls.dimension,
               "options": " | ".join(_options(c) for c in md.configs) or "(not computed)",
               "changed from the protocol": _changed(md)}
        if len(evals) > 1:
            row["evaluation"] = " | ".join(_options(e) for e in md.evals)
        row |= {"results": len(md.results), "compute s": sum(float(r.info.get("seconds", 0.0)) for r in md.results)}
        settings.append(row)
    timings = [{"stage": k, "seconds": v} for k, v in study.timings.items()] if study.timings else []
    if timings:
        timings.append({"stage": "total", "seconds": sum(float(t["seconds"]) for t in timings)})
    legend = sorted({r.method for r in ready})
    items.insert(2, ("method colours", ", ".join(f"{m} {method_colour(m)}" for m in legend)))
    return {"spec": items, "notes": list(spec.get("notes") or []) + low_precision_warnings(study),
            "evaluation": next(iter(evals)) if len(evals) == 1 else "",
            "settings": make_table(settings, caption="'changed from the protocol' lists the options that differ "
                                   "from the metric's defaults, which are the study's protocol (docs/study.md §2)."),
            "timings": make_table(timings) if timings else None}


def runs_section(study: Study, fig_dir: Path, fig_href: str, tables_dir: Path, href: str) -> dict[str, Any]:
    rows, cited = [], []
    for r in study.runs:
        f, mem = r.final, r.final.get("memory") or {}
        pub = published_for(r.method, r.scale) if r.config else None
        cited += [pub] if pub else []
        rows.append({"run": r.name, "method": r.method if r.config else None, "scale": r.scale if r.config else None,
                     "seed": r.seed, "final step": f.get("step"), "tokens": f.get("tokens"),
                     "val_ppl": f.get("val_ppl"), "val_ppl_ref": f.get("val_ppl_reference"),
                     "published ppl": pub.cell if pub else None,
                     "val_loss": f.get("val_loss"), "lr": (r.config.get("optim") or {}).get("lr"),
                     "lr chosen by": lr_source(r.config) if r.config else None,
                     "parameters": mem.get("params_total"),
                     "trainable": mem.get("params_trainable"),
                     "optimizer state MiB": mib(mem.get("optimizer_state_bytes")),
                     "weights MiB": mib(mem.get("param_bytes")), "grads MiB": mib(mem.get("grad_bytes")),
                     "peak CUDA MiB": mib(mem.get("cuda_max_allocated_bytes")), "checkpoints": len(r.checkpoints),
                     "problem": r.problem})
    cols = [c for c in rows[0] if any(row.get(c) not in (None, "") for row in rows)] if rows else []
    write_csv(rows, tables_dir / "runs.csv")
    charts = training_charts(study.runs)
    lens, lens_rows = lens_charts(study.runs)
    if lens_rows:
        write_csv(lens_rows, tables_dir / "lens.csv")
    for c in lens:
        c.caption = (f"{c.title}: the metric's headline on the live model every train.lens_every steps; seeds thin, "
                     f"their mean thick. Every row: {href}/lens.csv")
    tune_csv = study.dir / "tune" / "tune.csv"
    tune_rows = read_csv(tune_csv) if tune_csv.is_file() else []
    sensitivity = lr_sensitivity_chart(tune_rows)
    if sensitivity is not None:
        write_csv(tune_rows, tables_dir / "tune.csv")
        sensitivity.caption = f"{sensitivity.title}. Every proxy: {href}/tune.csv"
        lens.append(sensitivity)
    figs = render_charts(charts + lens, fig_dir, fig_href, "runs")
    note = PPL_NOTE + (" " + sources_note(cited) if cited else "")
    return {"note": note, "table": make_table(rows, cols, csv=f"{href}/runs.csv"), "figures": figs}


def lr_source(config: dict[str, Any]) -> str:
    """How a run's optim.lr was chosen: by a study's tune stage, set explicitly, or the method's preset."""
    notes = [str(n) for n in config.get("notes") or []]
    if any("chosen by the study's tune stage" in n for n in notes):
        return "tune stage"
    if any(n.startswith("--set after the preset") and "optim.lr=" in n for n in notes):
        return "set (--set / study)"
    return "preset"


def metric_context(md: MetricData, findings: Findings | None, fig_root: Path, fig_href: str, tables_dir: Path,
                   href: str) -> dict[str, Any]:
    """One metric's subsection: definition, settings, its own figures (plot() on the cached results), its
    table and, with several seeds, the table over seeds."""
    out_dir = fig_root / md.name
    charts, paths, error = metric_charts(md, out_dir)
    figs = render_charts(charts, out_dir, f"{fig_href}/{md.name}", md.name)
    figs += [{"src": f"{fig_href}/{md.name}/{p.relative_to(out_dir).as_posix()}", "caption": p.stem}
             for p in paths if p.resolve().is_relative_to(out_dir.resolve())]
    figs += [{"src": _copy(p, out_dir, fig_href, md.name), "caption": p.stem}
             for p in paths if not p.resolve().is_relative_to(out_dir.resolve())]
    table: Table = make_table([])
    summary, summary_error = None, ""
    if md.rows:
        write_csv(md.rows, tables_dir / f"{md.name}.csv")
        cols = [c for c in columns(md.rows) if c != "metric"]
        table = make_table(md.rows, cols, csv=f"{href}/{md.name}.csv")
        summary = seed_summary_table(md, findings, tables_dir, href)
        if findings is not None and not findings.status("seed_summary").get("available"):
            summary_error = f"Seed summary not available: {findings.status('seed_summary').get('message', '')}"
    configs = " | ".join(_options(c) for c in md.configs) or "(not computed)"
    return {"id": f"metric-{md.name}", "name": md.name, "definition": md.cls.definition,
            "subject_kind": md.cls.subject_kind, "headline": md.cls.headline, "config": configs,
            "evals": " | ".join(_options(e) for e in md.evals) or "-", "source": (
                "analysis/" + md.name + ".csv") if md.table_source == "csv" else "the result cache",
            "notes": md.notes, "skipped": sorted(md.skipped.items()), "plot_error": error, "figures": figs,
            "table": table, "summary": summary, "summary_error": summary_error}


def copy_atomic(src: Path, dest: Path) -> Path:
    """Copy a file beside the report (temporary sibling, then rename)."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def _copy(src: Path, dest_dir: Path, href: str, sub: str) -> str:
    copy_atomic(src, dest_dir / src.name)
    return f"{href}/{sub}/{src.name}"


def dimensions(study: Study, findings: Findings | None, fig_root: Path, fig_href: str, tables_dir: Path, href: str
               ) -> list[dict[str, Any]]:
    """One section per metric dimension (base.DIMENSIONS order, then any other), its metrics in registry order."""
    dims = list(DIMENSIONS) + sorted({md.cls.dimension for md in study.metrics} - set(DIMENSIONS))
    out = []
    for dim in dims:
        mds = [md for md in study.metrics if md.cls.dimension == dim]
        if mds:
            out.append({"id": f"dim-{dim}", "title": DIMENSION_TITLES.get(dim, dim.replace("_", " ").capitalize()),
                        "metrics": [metric_context(md, findings, fig_root, fig_href, tables_dir, href) for md in mds]})
    return out


def downstream_section(study: Study, fig_dir: Path, fig_href: str, tables_dir: Path, href: str) -> dict[str, Any]:
    tables, figs = [], []
    for t in study.downstream:
        write_csv(t.rows, tables_dir / f"downstream_{t.name}.csv")
        cols = [c for c in columns(t.rows) if c != "metric"]
        tables.append(make_table(t.rows, cols, csv=f"{href}/downstream_{t.name}.csv", caption=f"{t.name}.csv"))
        chart = downstream_chart(t.rows, t.name) if any("task" in r for r in t.rows) else None
        figs += render_charts([chart] if chart else [], fig_dir, fig_href, "downstream")
    return {"tables": tables, "figures": figs,
            "message": "no downstream tables in <study>/downstream/ (the downstream stage was not run, or the "
                       "study has no downstream tasks)"}


def prediction_section(study: Study, fig_dir: Path, fig_href: str, tables_dir: Path, href: str) -> dict[str, Any]:
    tables, figs = [], []
    order = list(PREDICTION_TABLES)
    for t in sorted(study.prediction, key=lambda t: (order.index(t.name) if t.name in order else len(order), t.name)):
        copy_atomic(t.path, tables_dir / f"prediction_{t.name}.csv")
        caption = f"{t.name}: {PREDICTION_TABLES[t.name]}" if t.name in PREDICTION_TABLES else t.name
        tables.append(make_table(t.rows, csv=f"{href}/prediction_{t.name}.csv", caption=caption))
    predicted = next((t for t in study.prediction if t.name == "predictions"), None)
    chart = prediction_chart(predicted.rows) if predicted is not None else None
    figs += render_charts([chart] if chart else [], fig_dir, fig_href, "prediction")
    return {"tables": tables, "figures": figs, "note": study.prediction_note,
            "message": "no prediction tables in <study>/prediction/ (the predict stage was not run)"}


def provenance(study: Study) -> dict[str, Any]:
    runs = []
    for r in study.runs:
        p = r.config.get("provenance") or {}
        versions = p.get("versions") or {}
        summary = (f"{r.name}: {r.method}, {r.scale}, seed {fmt(r.seed)}; git {str(p.get('git_sha', '?'))[:10]}"
                   f"{' (dirty)' if p.get('git_dirty') else ''}; torch {versions.get('torch', '?')}; "
                   f"{p.get('device', '?')} x {p.get('world_size', '?')}; started {p.get('started', '?')}")
        runs.append({"summary": summary if r.config else f"{r.name}: {r.problem}",
                     "config": json.dumps(r.config, indent=2, default=str)})
    return {"spec": json.dumps(study.spec, indent=2, default=str), "runs": runs}
