"""Several sources in one report (`lowrank-lens report A B --out DIR`): study folders, run folders and
imported series (`lowrank-lens import` writes run folders), each labelled, read as studies and merged.

The findings stage (study/findings_stage.write_source_findings) reads the sources, computes the differences
between them (findings/sources.py) and writes DIR/findings/, whose findings.json lists the sources (label,
path, kind, and the claim verdicts its own findings stage decided); the report (report/__init__.py) reads that
list back, merges the sources' runs and metric results (each run named '<label>/<run>', so every hover, table
and legend says where it came from) and renders the side-by-side block from these files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..analysis.charts import Chart, Series
from ..analysis.metrics import metric_names
from ..errors import LensError
from ..runfolder.files import imported_record, read_run_json
from .collect import MetricData, Study, distinct_configs, load_study, study_of_runs
from .findings_files import SOURCE_DIFFERENCES, SOURCE_HEADLINE, Findings, load_findings
from .html import fmt, make_table


def source_kind(path: Path) -> str:
    """'study' (study.json or runs/), 'run' (config.json), 'import' (a run folder `import` wrote)."""
    if (path / "study.json").is_file() or (path / "runs").is_dir():
        return "study"
    if (path / "config.json").is_file():
        return "import" if imported_record(read_run_json(path)) else "run"
    raise LensError(f"{path} is neither a study folder (study.json or runs/) nor a run folder (config.json); "
                    f"pass folders written by `lowrank-lens study`, `train` or `import`")


def read_source(path: Path) -> Study:
    """A source as a Study: a study folder as it is, a run folder as a study of that one run."""
    path = Path(path)
    if not path.is_dir():
        raise LensError(f"report source {path} does not exist (moved since the combined findings were written? "
                        f"run `lowrank-lens report A B ... --out DIR` again with its new place)")
    return load_study(path) if source_kind(path) == "study" else study_of_runs(path, {}, [path])


def source_labels(paths: list[Path]) -> list[str]:
    """Each source's label: its folder name, with its parent's name (then a number) where two would clash."""
    names = [Path(p).resolve().name for p in paths]
    labels = [f"{Path(p).resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names,
                                                                                                  strict=True)]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def _relabel(subject: dict[str, Any], label: str) -> dict[str, Any]:
    """A subject of source `label`: its runs named '<label>/<run>', and the source recorded (charts that name
    a subject by method and seed alone, IMIB's pairs, prefix it)."""
    out = dict(subject, source=label)
    for key in ("run", "other_run"):
        if out.get(key) is not None:
            out[key] = f"{label}/{out[key]}"
    return out


def merged_study(folder: Path, sources: list[tuple[str, Study]]) -> Study:
    """One Study of every source's runs and metric results, each run named '<label>/<run>' and marked with
    its source; the per-study outputs (downstream, prediction, timings) stay in each source's own report."""
    runs, metrics = [], []
    for label, study in sources:
        runs += [dataclasses.replace(r, name=f"{label}/{r.name}", source=label) for r in study.runs]
    for name in metric_names():
        parts = [next(md for md in study.metrics if md.name == name) for _, study in sources]
        first = parts[0]
        results = [dataclasses.replace(r, subject=_relabel(r.subject, label))
                   for (label, _), md in zip(sources, parts, strict=True) for r in md.results]
        rows = [_relabel(row, label) for (label, _), md in zip(sources, parts, strict=True) for row in md.rows]
        configs = distinct_configs([c for md in parts for c in md.configs])
        notes = [f"{label}: {n}" for (label, _), md in zip(sources, parts, strict=True) for n in md.notes]
        if len(configs) > 1:
            notes.append(f"the sources computed it with {len(configs)} different configs")
        metrics.append(MetricData(name, first.cls, first.metric, results, rows, first.table_source, configs,
                                  distinct_configs([e for md in parts for e in md.evals]), notes))
    return Study(dir=folder, spec={"name": " vs ".join(label for label, _ in sources)}, runs=runs, metrics=metrics,
                 timings={}, downstream=[], prediction=[], prediction_note="")


def difference_chart(rows: list[dict[str, Any]]) -> Chart | None:
    """Each shared method's difference between two sources (b - a) with its 95% Welch CI, a view per
    quantity (and pair of sources), the zero line drawn."""
    rows = [r for r in rows if isinstance(r.get("diff"), float)]
    if not rows:
        return None
    def view(r: dict[str, Any]) -> str:
        quantity = f"{r['metric']}.{r['column']}" if r.get("metric") else r["column"]
        return f"{quantity} ({r['scale']}): {r['source_b']} - {r['source_a']}"
    views = list(dict.fromkeys(view(r) for r in rows))
    series: list[Series] = []
    for v in views:
        mine = [r for r in rows if view(r) == v]
        for r in mine:
            series.append(Series([str(r["method"])], [r["diff"]], name=str(r["method"]), method=str(r["method"]),
                                 mode="markers", marker_size=9, view=v, low=[r.get("ci_low")],
                                 high=[r.get("ci_high")], hover={"n": [f"{r.get('n_a')} vs {r.get('n_b')}"],
                                                                 "verdict": [r.get("verdict")]}))
        series.append(Series([str(r["method"]) for r in mine], [0.0] * len(mine), name="no difference",
                             colour="#888888", mode="lines", dash="dash", width=1, view=v))
    return Chart("source_differences", "difference between sources (b - a) with its 95% Welch CI", "method",
                 "difference", series, views=views, view_label="quantity")


def sources_context(findings: Findings, listing: list[dict[str, Any]], studies: list[tuple[str, Study]],
                    tables_dir: Path, href: str) -> dict[str, Any]:
    """The side-by-side block: the sources, their claims' verdicts in columns, and the differences table."""
    rows = []
    for src, (_, study) in zip(listing, studies, strict=True):
        ready = [r for r in study.runs if r.checkpoints]
        rows.append({"source": src["label"], "kind": src["kind"], "path": src["path"], "runs": len(ready),
                     "methods": ", ".join(sorted({r.method for r in ready})),
                     "scales": ", ".join(sorted({r.scale for r in ready})), "seeds": fmt(study.seeds),
                     "findings": src.get("findings") or "none"})
    claims: dict[Any, dict[str, Any]] = {}
    for src in listing:
        for c in src.get("claims") or []:
            claims.setdefault(c["id"], {"id": c["id"], "text": c["text"], "verdicts": {}})["verdicts"][
                src["label"]] = c["verdict"]
    diffs = findings.rows(SOURCE_DIFFERENCES)
    for name in (SOURCE_DIFFERENCES, SOURCE_HEADLINE):
        if (p := findings.path(name)) is not None:
            (tables_dir / name).write_bytes(p.read_bytes())
    cols = ["scale", "method", "column", "source_a", "source_b", "mean_a", "mean_b", "n_a", "n_b", "diff", "ci_low",
            "ci_high", "p_adjusted", "verdict"]
    return {"labels": [s["label"] for s in listing], "table": make_table(rows),
            "headline_csv": f"{href}/{SOURCE_HEADLINE}",
            "claims": list(claims.values()),
            "differences": make_table(diffs, cols, csv=f"{href}/{SOURCE_DIFFERENCES}", caption=(
                "Every method and scale two sources share: b - a with its 95% Welch CI and Holm-corrected p over "
                "the methods; 'within seed spread' differences are flagged, never claimed.")),
            "chart": difference_chart(diffs)}


def load_sources(folder: Path) -> tuple[Findings, list[dict[str, Any]], list[tuple[str, Study]]] | None:
    """The findings of a report over several sources in `folder`, its source list and the sources read
    again as studies; None when `folder` is a study of its own."""
    findings = load_findings(folder) if (Path(folder) / "findings").is_dir() else None
    listing = (findings.index.get("sources") if findings is not None else None) or None
    if listing is None:
        return None
    return findings, listing, [(s["label"], read_source(Path(s["path"]))) for s in listing]

