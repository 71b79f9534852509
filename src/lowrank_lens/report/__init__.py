"""The study's HTML report (issue 6 §3, issue 28): one page that opens offline, every figure drawn interactive
by the bundled Plotly (interactive.py), each also a PNG beside it, and tables as CSV.

    write_report(Path("studies/demo"))  ->  studies/demo/report/index.html
                                                         /report/assets/plotly.min.js, report.js
                                                         /report/figures/<metric>/*.png, ...
                                                         /report/tables/*.csv

A folder written by `lowrank-lens report A B --out DIR` (its findings list the sources) gets the report over
all of them instead (sources.py).

It reads only the study's files (study/runner.py layout) and never loads a checkpoint, computes a metric or a
statistic: the seed statistics, matched-perplexity comparison and claims are the study's findings stage's
tables (study/findings_stage.py writes <study>/findings/, findings_files.py reads it), rendered as they are.
Metrics come from the registry (name, dimension, definition, charts()), so a new metric plugin gets its own
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
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import LensError
from ..tempdirs import make_temp_dir, replace_dir, sweep_stale
from .build import dimensions, downstream_section, overview, prediction_section, provenance, runs_section
from .collect import load_study, method_colour, run_records
from .figures import REPORT_FILE_SUFFIXES, fresh_dir
from .findings_files import load_findings, missing_message
from .html import render
from .interactive import render_charts, write_assets
from .sections import claims_section, matched_section, statistics_section
from .sources import load_sources, merged_study, sources_context
from .summary import summary

log = logging.getLogger("lowrank_lens")

REPORT_DIR = "report"
PAGE = "index.html"


def _version() -> str:

    try:
        return version("lowrank-lens")
    except PackageNotFoundError:
        return "unknown"


def write_report(study_dir: Path) -> Path:
    """Write <study_dir>/report/index.html with its figures and CSV tables, built beside the old report and
    swapped in whole (tempdirs.py): the folder holds the old complete report or the new one, never a mix.
    Returns the page's path."""
    study_dir = Path(study_dir)
    combined = load_sources(study_dir)
    if combined is not None:  # a report over several sources (report/sources.py)
        findings, listing, studies = combined
        study, sources = merged_study(study_dir, studies), (listing, studies)
    else:
        study, findings, sources = load_study(study_dir), load_findings(study_dir), None
    if findings is None:
        log.warning(f"report: {missing_message(study_dir)}")
    out = study_dir / REPORT_DIR
    if out.is_symlink():
        raise LensError(f"report folder {out} is a symbolic link; refusing to replace it — remove the link")
    for done in sweep_stale(study_dir):
        log.info(f"report: {done}")
    tmp = make_temp_dir(study_dir, REPORT_DIR)  # built beside the old report, swapped in whole at the end
    try:
        page = _build(study_dir, study, findings, tmp, sources)
        _keep_user_files(out, tmp)
        replace_dir(tmp, out)
    except BaseException:  # an error, Ctrl-C or SIGTERM: the old report stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(f"report: {out / page.name}")
    return out / page.name


def _keep_user_files(old: Path, new: Path) -> None:
    """Files a user put in the old report folder (not figures, tables or the page, which are rebuilt) move
    into the new one, so a rebuild removes only what the report itself writes."""
    if not old.is_dir():
        return
    for f in old.rglob("*"):
        rel = f.relative_to(old)
        if (f.is_file() or f.is_symlink()) and f.suffix.lower() not in REPORT_FILE_SUFFIXES and rel != Path(PAGE) \
                and not (new / rel).exists():
            (new / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, new / rel, follow_symlinks=False)


def _build(study_dir: Path, study, findings, out: Path, sources=None) -> Path:
    """The page, figures and tables in the (new, empty) folder `out`; `sources` (the findings' source list
    and the sources read as studies) for a report over several sources."""
    figs = fresh_dir(out / "figures")
    tables = fresh_dir(out / "tables")
    fig_href, href = "figures", "tables"
    dims = dimensions(study, findings, figs, fig_href, tables, href)
    context = {
        "assets": write_assets(out),
        "methods": [(m, method_colour(m)) for m in dict.fromkeys(r.method for r in sorted(
            study.runs, key=lambda r: not r.is_baseline) if r.config)],
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
    context["summary"] = None if sources else summary(study, findings, context["claims"], context["matched"])
    context["sources"] = None
    if sources:
        context["sources"] = sources_context(findings, *sources, tables, href)
        chart = context["sources"].pop("chart")
        context["sources"]["figures"] = render_charts([chart] if chart else [], figs / "sources",
                                                      f"{fig_href}/sources", "sources")
    context["toc"] = [
        ("sources", "Sources side by side", []) if sources else ("summary", "Findings", []),
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
    return page


__all__ = ["run_records", "write_report"]
