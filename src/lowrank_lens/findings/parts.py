"""Every part of a study's findings, each computed on its own from the study's tables already read.

    compute_findings(study)  ->  {"seed_summary": (value, status), "headline": ..., "statistics": ...,
                                  "matched": ..., "claims": ..., "setup": ...}

`study` is what report/collect.py's load_study returns (run records, metric rows and cached results,
downstream and prediction tables); these functions read only the attributes `StudyTables` names. A part
that fails, or whose module cannot be imported, has status {'available': False, 'message': why}, and the
other parts still stand. The study's findings stage (study/findings_stage.py) writes the values
(layout: report/findings_files.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any, Protocol

from ..errors import LensError
from .claims import check_claims
from .common import final_rows, finite
from .matched import describe_matches, matched_checkpoints, select_rows
from .setup import setup_distance
from .statistics import ALPHA, DEFAULT_BY, LEVEL, describe, pairwise_differences, power_note, seed_summary

log = logging.getLogger("lowrank_lens")


class MetricTable(Protocol):
    """What the findings read of one metric (report.collect.MetricData)."""

    @property
    def name(self) -> str: ...
    @property
    def cls(self) -> Any:
        """The metric's class: headline, subject_kind."""
    @property
    def rows(self) -> list[dict[str, Any]]: ...
    @property
    def results(self) -> list[Any]:
        """Cached Results: subject, info, arrays, skipped."""


class StudyTables(Protocol):
    """What the findings read of a study (report.collect.Study)."""

    @property
    def spec(self) -> dict[str, Any]: ...
    @property
    def runs(self) -> list[Any]:
        """RunInfo: method, seed, config, checkpoints, final (setup.py)."""
    @property
    def metrics(self) -> Sequence[MetricTable]: ...
    @property
    def downstream(self) -> list[Any]:
        """CSV tables: name, rows."""
    @property
    def prediction(self) -> list[Any]:
        """CSV tables: name, rows."""
    @property
    def records(self) -> list[dict[str, Any]]: ...
    @property
    def seeds(self) -> list[Any]: ...


def ppl_rows(study: StudyTables) -> list[dict[str, Any]]:
    """Final validation perplexity of each run as metric rows (metric 'val_ppl'), for the statistics."""
    return [{"metric": "val_ppl", "run": r["run"], "method": r["method"], "scale": r["scale"], "seed": r["seed"],
             "kind": "final", "step": r["final_step"], "val_ppl": r["final_val_ppl"],
             "val_ppl_reference": r["final_val_ppl_reference"]} for r in study.records]


def pairwise(rows: Sequence[dict[str, Any]], metric: str, columns: Sequence[str], by: Sequence[str]
             ) -> list[dict[str, Any]]:
    """pairwise_differences of each column, named '<metric>.<column>'; a column without finite values is
    left out (logged)."""

    out = []
    for col in columns:
        try:
            pairs = pairwise_differences(rows, col, metric, by=tuple(by))
        except LensError as e:
            log.info(f"findings: no pairwise differences for {metric}.{col}: {e}")
            continue
        out += [{**p, "column": f"{metric}.{col}"} for p in pairs]
    return out


# --------------------------------------------------------------------------- the parts
# A part that fails, on an ImportError inside a library it calls (recorded 'not installed' by _part) or on
# these inputs, fails only itself, never the findings stage as a whole.


def seed_summaries(study: StudyTables) -> dict[str, list[dict[str, Any]]]:
    """{metric: seed_summary rows (mean, std, n, CI per group and column)} for metrics with >= 2 seeds."""

    out = {}
    for md in study.metrics:
        if len({r.get("seed") for r in md.rows if not r.get("skipped")}) >= 2:
            summary = seed_summary(md.rows, by=DEFAULT_BY)
            if summary:
                out[md.name] = summary
    return out


def _summary_kind(rows: Sequence[dict[str, Any]], subject_kind: str) -> str | None:
    """The row kind a headline is read at: the metric's own subject kind when its rows have it (so a
    consecutive metric shows its last consecutive pair, not init-final), else the most frequent kind."""
    kinds = [r.get("kind") for r in rows if not r.get("skipped")]
    if subject_kind in kinds:
        return subject_kind
    return max(set(kinds), key=kinds.count) if kinds else None


def headline_samples(study: StudyTables) -> list[tuple[dict[str, Any], list[float]]]:
    """Per scale and method: the seed values of the final val_ppl and of each per-method metric's headline
    column at each run's final step, as ({scale, method, metric, column}, values). Metrics over pairs of
    methods (subject kind 'cross') have no per-method value and are left out."""
    out = []
    records = study.records
    for scale in sorted({str(r["scale"]) for r in records}):
        for method in dict.fromkeys(r["method"] for r in records):
            mine = [r["final_val_ppl"] for r in records if r["method"] == method and str(r["scale"]) == scale]
            if mine:
                out.append(({"scale": scale, "method": method, "metric": "", "column": "final_val_ppl"}, mine))
        for md in study.metrics:
            if not (md.cls.headline and md.rows and md.cls.subject_kind != "cross"):
                continue
            finals = final_rows(md.rows, kind=_summary_kind(md.rows, md.cls.subject_kind))
            for method in dict.fromkeys(r["method"] for r in records):
                vals = [float(r[md.cls.headline]) for r in finals if r.get("method") == method
                        and str(r.get("scale")) == scale and finite(r.get(md.cls.headline))]
                if vals:
                    out.append(({"scale": scale, "method": method, "metric": md.name, "column": md.cls.headline},
                                vals))
    return out


def headline(study: StudyTables) -> list[dict[str, Any]]:
    """headline_samples over seeds: mean, n and 95% CI per scale, method and quantity."""
    out = []
    for key, values in headline_samples(study):
        s = describe(values)
        if s.n or not key["metric"]:  # a method's perplexity row stays even when every run diverged
            out.append({**key, "mean": s.mean, "n": s.n, "ci_low": s.ci_low, "ci_high": s.ci_high})
    return out


def statistics(study: StudyTables) -> dict[str, Any]:
    """Pairwise method differences over seeds at each run's final step: final val_ppl (both definitions)
    and each metric's headline column, Welch tests with Holm correction per group."""

    pairs = pairwise(ppl_rows(study), "val_ppl", ("val_ppl", "val_ppl_reference"), ("scale", "kind"))
    for md in study.metrics:
        if md.cls.headline and md.rows:
            pairs += pairwise(final_rows(md.rows), md.name, (md.cls.headline,), ("scale", "kind", "step"))
    seeds = len(study.seeds)
    return {"rows": pairs, "alpha": ALPHA, "level": LEVEL, "power_note": power_note(seeds, ALPHA) if seeds >= 2
            else ""}


def matched(study: StudyTables) -> dict[str, Any]:
    """Each run's checkpoint at its group's worst final perplexity (per scale and seed), and the metrics'
    headline columns there: over seeds, and pairwise."""

    matches = matched_checkpoints(study.records)
    heads = {md.name: md.cls.headline for md in study.metrics if md.cls.headline}
    selected = select_rows([r for md in study.metrics if md.cls.headline for r in md.rows], matches)
    summary, pairs, notes = [], [], []
    if selected:
        by = ("metric", "method", "other_method", "scale", "kind", "match")
        summary = [{**s, "column": f"{s['metric']}.{s['column']}"} for s in seed_summary(selected, by=by, columns=None)
                   if s["column"] == heads.get(s["metric"])]
        present = {r.get("metric") for r in selected}
        for name, head in heads.items():
            if name in present:
                pairs += pairwise(selected, name, (head,), ("scale", "kind", "match"))
            else:  # e.g. a pair metric whose two runs were matched at different steps
                notes.append(f"{name}: no result at the matched checkpoints (a pair metric needs both runs "
                             f"matched at the same step).")
    else:
        notes.append("No metric row lies at the matched checkpoints: analyse every checkpoint (analysis_steps "
                     "'all') to compare the methods there.")
    return {"checkpoints": matches, "metrics": summary, "pairwise": pairs, "lines": describe_matches(matches),
            "notes": notes}


def per_layer_similarity(study: StudyTables, quantity: str = "cka") -> dict[tuple[str, int], Any]:
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


def prediction_result(study: StudyTables) -> Any:
    """What claim 7 reads of a PredictionResult (improvements, units), from the prediction CSVs; None
    when there is no prediction table."""
    tables = {t.name: t.rows for t in study.prediction}
    if not tables.get("improvement"):
        return None
    units = sorted({str(r.get("unit")) for r in tables.get("predictions", [])})
    imps = [SimpleNamespace(**{k: (math.nan if v is None else v) for k, v in r.items()})
            for r in tables["improvement"]]
    return SimpleNamespace(improvements=imps, units=units)


def claims(study: StudyTables) -> list[dict[str, Any]]:
    """The claims of docs/study.md §5 checked on this study's runs: id, text, verdict, evidence, values."""

    rows = [r for md in study.metrics for r in md.rows]
    downstream = [r for t in study.downstream for r in t.rows if "task" in r]
    found = check_claims(rows, study.records, per_layer=per_layer_similarity(study) or None,
                         downstream=downstream or None, prediction=prediction_result(study))
    return [{"id": c.id, "text": c.text, "verdict": c.verdict, "evidence": c.evidence, "values": c.values}
            for c in found]


def setup(study: StudyTables) -> dict[str, Any]:
    """The setup's distance from the paper's protocol (setup.py), stated on the report's first screen."""

    return setup_distance(study.spec, study.runs)


def _part(name: str, compute: Callable[..., Any], *args: Any) -> tuple[Any, dict[str, Any]]:
    """(value, status) of one part: status {'available': True} or {'available': False, 'message': why}."""
    try:
        return compute(*args), {"available": True}
    except ImportError as e:
        return None, {"available": False, "message": f"the module for the {name} is not installed ({e})"}
    except Exception as e:  # one part fails on these inputs; the others and the report still stand
        log.warning(f"findings: the {name} failed: {type(e).__name__}: {e}")
        return None, {"available": False, "message": f"the {name} could not be computed from this study's tables "
                                                      f"({type(e).__name__}: {e})"}


# --------------------------------------------------------------------------- all parts


def compute_findings(study: StudyTables) -> dict[str, Any]:
    """Every part's value and status, in memory (study/findings_stage.py writes them)."""
    parts = {}
    for name, label, fn in (("seed_summary", "seed summaries", seed_summaries),
                            ("headline", "headline table", headline), ("statistics", "statistics", statistics),
                            ("matched", "matched-perplexity comparison", matched),
                            ("claims", "claims check", claims), ("setup", "setup comparison", setup)):
        parts[name] = _part(label, fn, study)
    return parts
