"""The report's analysis sections: seed statistics, matched perplexity and the claims check, rendered.

Everything here was computed by the study's findings stage (study/findings_stage.py) and is read from its folder
(findings_files.py); this module only lays it out, copies the tables beside the page and draws the
matched-perplexity figure. A part the findings could not compute (or findings that were never computed)
renders 'not available' with the reason, so the rest of the report stands. Differences smaller than the
seed-to-seed spread are flagged, never claimed (the statistics' verdict; docs/study.md §1.5).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..analysis.tables import write_csv
from .collect import MetricData, Study
from .figures import matched_chart
from .findings_files import (
    MATCHED_CHECKPOINTS,
    MATCHED_METRICS,
    MATCHED_PAIRWISE,
    PAIRWISE,
    Findings,
    missing_message,
)
from .html import Table, fmt, make_table
from .interactive import render_charts

PAIR_COLUMNS = ("scale", "kind", "step", "match", "column", "method_a", "method_b", "mean_a", "mean_b", "diff",
                "std_a", "std_b", "n_a", "n_b", "p", "p_adjusted", "verdict")
SUMMARY_KEYS = ("method", "other_method", "scale", "kind", "step", "match")


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "message": reason}


def verdict_class(row: dict[str, Any]) -> str:
    """Row style of a pairwise difference: flagged (within the seed spread / too few seeds) or claimed."""
    v = str(row.get("verdict", ""))
    return "claimed" if v == "different" else ("flag" if v in ("within seed spread", "insufficient seeds") else "")


def _status(findings: Findings | None, part: str, study_dir: Path) -> dict[str, Any] | None:
    """None when `part` is available, else the section's 'not available' context."""
    if findings is None:
        return unavailable(missing_message(study_dir))
    status = findings.status(part)
    return None if status.get("available") else unavailable(str(status.get("message", "")))


def _copied(findings: Findings, name: str, tables_dir: Path, href: str) -> str:
    """Copy a findings table beside the page; its link ('' when the findings hold no such table)."""
    src = findings.path(name)
    if src is None:
        return ""
    dest = tables_dir / Path(name).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return f"{href}/{dest.name}"


def seed_summary_table(md: MetricData, findings: Findings | None, tables_dir: Path, href: str) -> Table | None:
    """Wide table of the metric's columns over seeds: one row per group, cells 'mean ± CI half (n)'; the
    long summary is copied beside the page. None without one (a single seed: nothing to summarise)."""
    if findings is None or not findings.status("seed_summary").get("available"):
        return None
    summary = findings.seed_summary(md.name)
    if not summary:
        return None
    name = f"{md.name}_seed_summary.csv"
    tables_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(findings.path(f"seed_summary/{md.name}.csv"), tables_dir / name)
    return make_table(pivot_summary(summary), csv=f"{href}/{name}",
                      caption="95% Student-t CI over seeds; 'single seed' where a group has one.")


def pivot_summary(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """seed_summary's long rows (one per group x column) as one row per group."""
    out: dict[tuple, dict[str, Any]] = {}
    for s in summary:
        key = tuple(s.get(k) for k in SUMMARY_KEYS)
        row = out.setdefault(key, {k: s.get(k) for k in SUMMARY_KEYS if s.get(k) is not None})
        half = (s["ci_high"] - s["ci_low"]) / 2 if s["n"] > 1 and math.isfinite(s["ci_high"]) else math.nan
        row[s["column"]] = f"{fmt(s['mean'])} ± {fmt(half)} ({s['n']})" if math.isfinite(half) else \
            f"{fmt(s['mean'])} (single seed)"
    return list(out.values())


def statistics_section(study: Study, findings: Findings | None, tables_dir: Path, href: str) -> dict[str, Any]:
    """Pairwise method differences over seeds at each run's final step: final val_ppl (both definitions)
    and each metric's headline column, with Welch tests and Holm correction per group."""
    missing = _status(findings, "statistics", study.dir)
    if missing is not None:
        return missing
    pairs = findings.rows(PAIRWISE)
    meta = findings.index.get("statistics") or {}
    seeds = study.seeds
    intro = [f"Per scale and final step, every pair of methods is compared over seeds: difference of means, "
             f"two-sided Welch t-test, Holm correction over the pairs of a group, significance at "
             f"p_adjusted < {fmt(meta.get('alpha'))}; CIs are {fmt(100 * float(meta.get('level') or math.nan))}% "
             f"Student-t intervals.",
             "A difference smaller than the larger of the two seed standard deviations is flagged "
             "'within seed spread' (grey, italic) and not claimed, whatever its p-value; only rows marked "
             "'different' (bold) are claimed."]
    if meta.get("power_note"):
        intro.append(str(meta["power_note"]))
    if len(seeds) < 2:
        intro.append(f"This study has a single seed ({fmt(seeds)}): no seed-to-seed spread can be estimated, so "
                     f"no difference below is claimed (verdict 'insufficient seeds').")
    table = make_table(pairs, [c for c in PAIR_COLUMNS if any(c in p for p in pairs)],
                       csv=_copied(findings, PAIRWISE, tables_dir, href), row_class=verdict_class,
                       caption="Final validation perplexity (both definitions) and each metric's headline column.")
    return {"available": True, "intro": intro, "tables": [table] if pairs else [], "collapsed": len(seeds) < 2}


def matched_section(study: Study, findings: Findings | None, tables_dir: Path, href: str, figure_dir: Path,
                    figure_href: str) -> dict[str, Any]:
    """Each run's checkpoint at the group's worst final perplexity (per scale and seed), how close each
    match is, and the metrics' headline columns there (over seeds, and pairwise)."""
    missing = _status(findings, "matched", study.dir)
    if missing is not None:
        return missing
    matches = findings.rows(MATCHED_CHECKPOINTS)
    meta = findings.index.get("matched") or {}
    cols = ["run", "method", "scale", "seed", "target", "target_source", "step", "tokens", "val_ppl", "gap",
            "rel_gap", "reached", "note"]
    intro = ["Low-rank methods are compared with full-rank and with one another at matched validation "
             "perplexity (docs/study.md §3.1 item 1): per scale and seed the target is the worst (highest) final "
             "val_ppl among the methods, and each run contributes its checkpoint closest to it. The gap "
             "(val_ppl - target, and relative to the target) says how close each match is; the match can "
             "only be as fine as the checkpoint spacing."]
    chart = matched_chart(study.runs, matches)
    figs = render_charts([chart] if chart else [], figure_dir, figure_href, "matched")
    tables = []
    summary, pairs = findings.rows(MATCHED_METRICS), findings.rows(MATCHED_PAIRWISE)
    if summary:
        tables.append(make_table(summary, ["column", "method", "other_method", "scale", "kind", "match", "mean",
                                           "std", "n", "ci_low", "ci_high", "flag"],
                                 csv=_copied(findings, MATCHED_METRICS, tables_dir, href),
                                 caption="Headline metric columns at the matched checkpoints, over seeds."))
    if pairs:
        tables.append(make_table(pairs, [c for c in PAIR_COLUMNS if any(c in p for p in pairs)],
                                 csv=_copied(findings, MATCHED_PAIRWISE, tables_dir, href), row_class=verdict_class,
                                 caption="Pairwise differences at the matched checkpoints (flagged rows "
                                         "are within the seed spread and not claimed)."))
    return {"available": True, "intro": intro, "matches": make_table(
        matches, cols, csv=_copied(findings, MATCHED_CHECKPOINTS, tables_dir, href)),
        "lines": list(meta.get("lines") or []), "figures": figs, "tables": tables,
        "notes": list(meta.get("notes") or []), "collapsed": len(study.seeds) < 2, "rows": matches, "pairs": pairs}


def claims_section(study: Study, findings: Findings | None, tables_dir: Path, href: str) -> dict[str, Any]:
    """The claims of docs/study.md §5 as the findings checked them on this study's runs: verdict and evidence."""

    missing = _status(findings, "claims", study.dir)
    if missing is not None:
        return missing
    flat = [{k: c.get(k) for k in ("id", "text", "verdict", "evidence")} for c in findings.claims]
    write_csv(flat, tables_dir / "claims.csv")
    intro = ["Each checkable claim of the paper, evaluated on these runs at each run's final step. An ordering "
             "whose seed ranges (95% CI) overlap is inconclusive, never claimed; with one seed the values "
             "are compared as they are (the evidence says n=1)."]
    return {"available": True, "intro": intro, "claims": flat, "csv": f"{href}/claims.csv",
            "objects": findings.claims}
