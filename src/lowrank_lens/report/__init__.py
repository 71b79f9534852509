"""The study's HTML report (issue 6 §3): one page that opens offline, figures (PNG) and tables (CSV) beside it.

    write_report(Path("studies/demo"))  ->  studies/demo/report/index.html
                                                         /report/figures/<metric>/*.png, ...
                                                         /report/tables/*.csv

It reads only the study's files (study/runner.py layout) and never loads a checkpoint, computes a metric or a
statistic: the seed statistics, matched-perplexity comparison and claims are the study's findings stage's
tables (study/findings.py writes <study>/findings/, findings_files.py reads it), rendered as they are.
Metrics come from the registry (name, dimension, definition, plot()), so a new metric plugin gets its own
subsection with no report change. The page opens on a summary of the findings (summary.py: the claims'
verdicts with their intervals, each method's headline metrics beside perplexity, the differences at matched
perplexity), then the details. Sections: overview (spec, settings used, timings), runs (parameters,
measured optimizer memory, tokens, both perplexity definitions), one per metric dimension (each metric's
definition, options, figures of docs/study.md §4, table and table over seeds), statistics (pairwise differences
over seeds; within-spread differences flagged, not claimed), matched perplexity (how close each match is),
claims (docs/study.md §5), downstream, prediction, and every run's config and provenance.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from ..atomic import write_text_atomic
from .build import dimensions, downstream_section, overview, prediction_section, provenance, runs_section
from .collect import load_study, run_records
from .figures import fresh_dir
from .findings_files import load_findings, missing_message
from .html import render
from .sections import claims_section, matched_section, statistics_section
from .summary import summary

log = logging.getLogger("lowrank_lens")

REPORT_DIR = "report"
PAGE = "index.html"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lowrank-lens")
    except PackageNotFoundError:
        return "unknown"


def write_report(study_dir: Path) -> Path:
    """Write <study_dir>/report/index.html (atomically) with its figures and CSV tables; returns its path."""
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    findings = load_findings(study_dir)
    if findings is None:
        log.warning(f"report: {missing_message(study_dir)}")
    out = study_dir / REPORT_DIR
    figs = fresh_dir(out / "figures")
    tables = fresh_dir(out / "tables")
    fig_href, href = "figures", "tables"
    dims = dimensions(study, findings, figs, fig_href, tables, href)
    context = {
        "title": f"lowrank-lens study: {study.spec.get('name') or study_dir.name}",
        "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "version": _version(), "study_dir": str(study_dir.resolve()),
        "overview": overview(study),
        "runs": runs_section(study, figs / "runs", f"{fig_href}/runs", tables, href),
        "dimensions": dims,
        "statistics": statistics_section(study, findings, tables, href),
        "matched": matched_section(study, findings, tables, href, figs / "matched", f"{fig_href}/matched"),
        "claims": claims_section(study, findings, tables, href),
        "downstream": downstream_section(study, figs / "downstream", f"{fig_href}/downstream", tables, href),
        "prediction": prediction_section(study, figs / "prediction", f"{fig_href}/prediction", tables, href),
        "provenance": provenance(study),
    }
    context["summary"] = summary(study, findings, context["claims"], context["matched"])
    context["toc"] = [
        ("summary", "Findings", []),
        ("overview", "Overview", [("settings", "Settings used")] + ([("timings", "Timings")]
                                                                     if context["overview"]["timings"] else [])),
        ("runs", "Runs", []),
        *[(d["id"], d["title"], [(m["id"], m["name"]) for m in d["metrics"]]) for d in dims],
        ("statistics", "Statistics", []), ("matched", "Matched perplexity", []), ("claims", "Claims", []),
        ("downstream", "Downstream", []), ("prediction", "Prediction", []),
        ("provenance", "Configs and provenance", []),
    ]
    page = out / PAGE
    write_text_atomic(page, render(context))
    log.info(f"report: {page}")
    return page


__all__ = ["run_records", "write_report"]
