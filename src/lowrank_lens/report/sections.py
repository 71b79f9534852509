"""The report's analysis sections: seed statistics, matched perplexity and the claims check.

Each builder returns the context of one section and never raises: when its module (study/statistics.py,
study/matched.py, study/claims.py) is missing or fails on these inputs, the section is rendered 'not
available' with the reason, so the rest of the report stands. Differences smaller than the seed-to-seed
spread are flagged, never claimed (statistics.pairwise_differences' verdict; docs/study.md §1.5).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..analysis.tables import write_csv
from .collect import MetricData, Study
from .figures import matched_figure
from .html import Table, fmt, make_table

log = logging.getLogger("lowrank_lens")

PAIR_COLUMNS = ("scale", "kind", "step", "match", "column", "method_a", "method_b", "mean_a", "mean_b", "diff",
                "std_a", "std_b", "n_a", "n_b", "p", "p_adjusted", "verdict")
SUMMARY_KEYS = ("method", "other_method", "scale", "kind", "step", "match")


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "message": reason}


def _failed(section: str, e: Exception) -> dict[str, Any]:
    log.warning(f"report: the {section} section failed: {type(e).__name__}: {e}")
    return unavailable(f"the {section} could not be computed from this study's tables ({type(e).__name__}: {e})")


def verdict_class(row: dict[str, Any]) -> str:
    """Row style of a pairwise difference: flagged (within the seed spread / too few seeds) or claimed."""
    v = str(row.get("verdict", ""))
    return "claimed" if v == "different" else ("flag" if v in ("within seed spread", "insufficient seeds") else "")


def final_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each subject's row at its largest step (per run, other run and kind); computed rows only."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("skipped"):
            continue
        key = (r.get("run"), r.get("other_run"), r.get("kind"))
        if key not in best or (r.get("step") or 0) > (best[key].get("step") or 0):
            best[key] = r
    return list(best.values())


def seed_summary_table(md: MetricData, csv_path: Path, href: str, by: Sequence[str] | None = None) -> Table | None:
    """Wide table of the metric's columns over seeds: one row per group, cells 'mean ± CI half (n)'; the
    long summary (mean, std, n, CI) goes to `csv_path`. None with a single seed (nothing to summarise)."""
    from ..study.statistics import DEFAULT_BY, seed_summary

    if len({r.get("seed") for r in md.rows if not r.get("skipped")}) < 2:
        return None
    summary = seed_summary(md.rows, by=tuple(by or DEFAULT_BY))
    if not summary:
        return None
    write_csv(summary, csv_path)
    return make_table(pivot_summary(summary), csv=href,
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


def _ppl_rows(study: Study) -> list[dict[str, Any]]:
    """Final validation perplexity of each run as metric rows (metric 'val_ppl'), for the statistics."""
    return [{"metric": "val_ppl", "run": r["run"], "method": r["method"], "scale": r["scale"], "seed": r["seed"],
             "kind": "final", "step": r["final_step"], "val_ppl": r["final_val_ppl"],
             "val_ppl_reference": r["final_val_ppl_reference"]} for r in study.records]


def _pairwise(rows: Sequence[dict[str, Any]], metric: str, columns: Sequence[str], by: Sequence[str]
              ) -> list[dict[str, Any]]:
    from ..errors import LensError
    from ..study.statistics import pairwise_differences

    out = []
    for col in columns:
        try:
            out += pairwise_differences(rows, col, metric, by=tuple(by))
        except LensError as e:  # no finite values of this column
            log.info(f"report: no pairwise differences for {metric}.{col}: {e}")
    return out


def statistics_section(study: Study, tables_dir: Path, href: str) -> dict[str, Any]:
    """Pairwise method differences over seeds at each run's final step: final val_ppl (both definitions)
    and each metric's headline column (Metric.headline), with Welch tests and Holm correction per group."""
    try:
        from ..study.statistics import ALPHA, LEVEL, power_note
    except ImportError as e:
        return unavailable(f"study/statistics.py is not installed ({e})")
    try:
        pairs = _pairwise(_ppl_rows(study), "val_ppl", ("val_ppl", "val_ppl_reference"), ("scale", "kind"))
        for md in study.metrics:
            if md.cls.headline and md.rows:
                pairs += _pairwise(final_rows(md.rows), md.name, (md.cls.headline,), ("scale", "kind", "step"))
        for p in pairs:
            p["column"] = f"{p['metric']}.{p['column']}"
        if pairs:
            write_csv(pairs, tables_dir / "pairwise_differences.csv")
        seeds = study.seeds
        intro = [f"Per scale and final step, every pair of methods is compared over seeds: difference of means, "
                 f"two-sided Welch t-test, Holm correction over the pairs of a group, significance at "
                 f"p_adjusted < {ALPHA}; CIs are {int(100 * LEVEL)}% Student-t intervals.",
                 "A difference smaller than the larger of the two seed standard deviations is flagged "
                 "'within seed spread' (grey, italic) and not claimed, whatever its p-value; only rows marked "
                 "'different' (bold) are claimed."]
        if len(seeds) >= 2:
            intro.append(power_note(len(seeds), ALPHA))
        if len(seeds) < 2:
            intro.append(f"This study has a single seed ({fmt(seeds)}): no seed-to-seed spread can be estimated, so "
                         f"no difference below is claimed (verdict 'insufficient seeds').")
        table = make_table(pairs, [c for c in PAIR_COLUMNS if any(c in p for p in pairs)],
                           csv=f"{href}/pairwise_differences.csv" if pairs else "", row_class=verdict_class,
                           caption="Final validation perplexity (both definitions) and each metric's headline column.")
        return {"available": True, "intro": intro, "tables": [table] if pairs else [], "collapsed": len(seeds) < 2}
    except Exception as e:  # the section reports its failure; the report stands
        return _failed("statistics", e)


def matched_section(study: Study, tables_dir: Path, href: str, figure_dir: Path, figure_href: str
                    ) -> dict[str, Any]:
    """Each run's checkpoint at the group's worst final perplexity (per scale and seed), how close each
    match is, and the metrics' headline columns there (over seeds, and pairwise)."""
    try:
        from ..study.matched import describe_matches, matched_checkpoints, select_rows
        from ..study.statistics import seed_summary
    except ImportError as e:
        return unavailable(f"study/matched.py or study/statistics.py is not installed ({e})")
    try:
        records = study.records
        matches = matched_checkpoints(records)
        write_csv(matches, tables_dir / "matched_checkpoints.csv")
        cols = ["run", "method", "scale", "seed", "target", "target_source", "step", "tokens", "val_ppl", "gap",
                "rel_gap", "reached", "note"]
        intro = ["Low-rank methods are compared with full-rank and with one another at matched validation "
                 "perplexity (docs/study.md §3.1 item 1): per scale and seed the target is the worst (highest) final "
                 "val_ppl among the methods, and each run contributes its checkpoint closest to it. The gap "
                 "(val_ppl - target, and relative to the target) says how close each match is; the match can "
                 "only be as fine as the checkpoint spacing."]
        figs = []
        fig = matched_figure(study.runs, matches, figure_dir / "matched_perplexity.png")
        if fig is not None:
            figs.append({"src": f"{figure_href}/{fig.name}", "caption": "validation perplexity per run; dashed: "
                         "target; circles: matched checkpoints"})
        all_rows = [r for md in study.metrics if md.cls.headline for r in md.rows]
        selected = select_rows(all_rows, matches)
        tables, notes, pairs = [], [], []
        if selected:
            heads = {md.name: md.cls.headline for md in study.metrics if md.cls.headline}
            by = ("metric", "method", "other_method", "scale", "kind", "match")
            summary = [s for s in seed_summary(selected, by=by, columns=None) if s["column"] == heads.get(s["metric"])]
            for s in summary:
                s["column"] = f"{s['metric']}.{s['column']}"
            write_csv(summary, tables_dir / "matched_metrics.csv")
            tables.append(make_table(summary, ["column", "method", "other_method", "scale", "kind", "match", "mean",
                                               "std", "n", "ci_low", "ci_high", "flag"],
                                     csv=f"{href}/matched_metrics.csv",
                                     caption="Headline metric columns at the matched checkpoints, over seeds."))
            present = {r.get("metric") for r in selected}
            for name, head in heads.items():
                if name in present:
                    pairs += _pairwise(selected, name, (head,), ("scale", "kind", "match"))
                else:  # e.g. a pair metric whose two runs were matched at different steps
                    notes.append(f"{name}: no result at the matched checkpoints (a pair metric needs both runs "
                                 f"matched at the same step).")
            for p in pairs:
                p["column"] = f"{p['metric']}.{p['column']}"
            if pairs:
                write_csv(pairs, tables_dir / "matched_pairwise.csv")
                tables.append(make_table(pairs, [c for c in PAIR_COLUMNS if any(c in p for p in pairs)],
                                         csv=f"{href}/matched_pairwise.csv", row_class=verdict_class,
                                         caption="Pairwise differences at the matched checkpoints (flagged rows "
                                                 "are within the seed spread and not claimed)."))
        else:
            notes.append("No metric row lies at the matched checkpoints: analyse every checkpoint (analysis_steps "
                         "'all') to compare the methods there.")
        return {"available": True, "intro": intro, "matches": make_table(matches, cols,
                csv=f"{href}/matched_checkpoints.csv"), "lines": describe_matches(matches), "figures": figs,
                "tables": tables, "notes": notes, "collapsed": len(study.seeds) < 2, "rows": matches, "pairs": pairs}
    except Exception as e:  # the section reports its failure; the report stands
        return _failed("matched-perplexity comparison", e)


def per_layer_similarity(study: Study, quantity: str = "cka") -> dict[tuple[str, int], Any]:
    """{(run, step): per-hidden-state `quantity`} from the activation-similarity results (claim 4)."""
    out: dict[tuple[str, int], Any] = {}
    for md in study.metrics:
        if md.name != "activation_similarity":
            continue
        for r in md.results:
            keys = list(r.info.get("keys") or [])
            arr = r.arrays.get("per_layer")
            if r.skipped or arr is None or quantity not in keys or arr.ndim != 2:
                continue
            out[(str(r.subject.get("run")), int(r.subject.get("step", 0)))] = arr[:, keys.index(quantity)]
    return out


def prediction_result(study: Study) -> Any:
    """What claim 7 reads of a PredictionResult (improvements, units), from the prediction CSVs; None
    when there is no prediction table."""
    tables = {t.name: t.rows for t in study.prediction}
    if not tables.get("improvement"):
        return None
    units = sorted({str(r.get("unit")) for r in tables.get("predictions", [])})
    imps = [SimpleNamespace(**{k: (math.nan if v is None else v) for k, v in r.items()})
            for r in tables["improvement"]]
    return SimpleNamespace(improvements=imps, units=units)


def claims_section(study: Study, tables_dir: Path, href: str) -> dict[str, Any]:
    """The claims of docs/study.md §5 checked on this study's runs (study/claims.py): verdict and evidence."""
    try:
        from ..study.claims import check_claims
    except ImportError as e:
        return unavailable(f"study/claims.py is not installed ({e})")
    try:
        rows = [r for md in study.metrics for r in md.rows]
        downstream = [r for t in study.downstream for r in t.rows if "task" in r]
        claims = check_claims(rows, study.records, per_layer=per_layer_similarity(study) or None,
                              downstream=downstream or None, prediction=prediction_result(study))
        flat = [{"id": c.id, "text": c.text, "verdict": c.verdict, "evidence": c.evidence} for c in claims]
        write_csv(flat, tables_dir / "claims.csv")
        intro = ["Each checkable claim of the paper, evaluated on these runs at each run's final step. An ordering "
                 "whose seed ranges (95% CI) overlap is inconclusive, never claimed; with one seed the values "
                 "are compared as they are (the evidence says n=1)."]
        return {"available": True, "intro": intro, "claims": flat, "csv": f"{href}/claims.csv", "objects": claims}
    except Exception as e:  # the section reports its failure; the report stands
        return _failed("claims check", e)
