"""The findings stage: seed statistics, matched perplexity and the claims check, computed from the study's
files and written as tables, before the report renders them (the report computes nothing: report/).

    write_findings(Path("studies/demo"))  ->  studies/demo/findings/findings.json
                                                              /pairwise_differences.csv, ...

It reads what the earlier stages wrote (report/collect.py's Study: run records, metric rows, cached
results, downstream and prediction tables) and writes report/findings_files.py's layout. Each part is
computed on its own: a part that fails (or whose module is missing) is recorded as unavailable with the
reason, and the other parts and the report still stand. The folder is replaced as a whole (written beside
it, then swapped in), so a reader never sees one run's statistics beside another run's claims.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..analysis.tables import write_csv
from ..atomic import write_json_atomic
from ..errors import LensError
from ..report.collect import Study, load_study
from ..report.findings_files import (
    CLAIMS,
    FINDINGS_DIR,
    FORMAT,
    HEADLINE,
    INDEX,
    MATCHED_CHECKPOINTS,
    MATCHED_METRICS,
    MATCHED_PAIRWISE,
    PAIRWISE,
    SEED_SUMMARY_DIR,
    SETUP,
    json_safe,
)

log = logging.getLogger("lowrank_lens")


def final_rows(rows: Sequence[dict[str, Any]], kind: str | None = None) -> list[dict[str, Any]]:
    """Each subject's computed row at its largest step (per run, other run and kind; only `kind` if given)."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("skipped") or (kind is not None and r.get("kind") != kind):
            continue
        key = (r.get("run"), r.get("other_run"), r.get("kind"))
        if key not in best or (r.get("step") or 0) > (best[key].get("step") or 0):
            best[key] = r
    return list(best.values())


def ppl_rows(study: Study) -> list[dict[str, Any]]:
    """Final validation perplexity of each run as metric rows (metric 'val_ppl'), for the statistics."""
    return [{"metric": "val_ppl", "run": r["run"], "method": r["method"], "scale": r["scale"], "seed": r["seed"],
             "kind": "final", "step": r["final_step"], "val_ppl": r["final_val_ppl"],
             "val_ppl_reference": r["final_val_ppl_reference"]} for r in study.records]


def pairwise(rows: Sequence[dict[str, Any]], metric: str, columns: Sequence[str], by: Sequence[str]
             ) -> list[dict[str, Any]]:
    """pairwise_differences of each column, named '<metric>.<column>'; a column without finite values is
    left out (logged)."""
    from .statistics import pairwise_differences

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


def seed_summaries(study: Study) -> dict[str, list[dict[str, Any]]]:
    """{metric: seed_summary rows (mean, std, n, CI per group and column)} for metrics with >= 2 seeds."""
    from .statistics import DEFAULT_BY, seed_summary

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


def headline(study: Study) -> list[dict[str, Any]]:
    """Per scale and method: the final val_ppl and each per-method metric's headline column at each run's
    final step, over seeds (mean, n, 95% CI). Metrics over pairs of methods (subject kind 'cross') have no
    per-method value and are left out."""
    from .statistics import describe

    out = []
    records = study.records
    for scale in sorted({str(r["scale"]) for r in records}):
        for method in dict.fromkeys(r["method"] for r in records):
            mine = [r for r in records if r["method"] == method and str(r["scale"]) == scale]
            if mine:
                s = describe([r["final_val_ppl"] for r in mine])
                out.append({"scale": scale, "method": method, "metric": "", "column": "final_val_ppl",
                            "mean": s.mean, "n": s.n, "ci_low": s.ci_low, "ci_high": s.ci_high})
        for md in study.metrics:
            if not (md.cls.headline and md.rows and md.cls.subject_kind != "cross"):
                continue
            finals = final_rows(md.rows, _summary_kind(md.rows, md.cls.subject_kind))
            for method in dict.fromkeys(r["method"] for r in records):
                vals = [float(r[md.cls.headline]) for r in finals if r.get("method") == method
                        and str(r.get("scale")) == scale and _finite(r.get(md.cls.headline))]
                s = describe(vals)
                if s.n:
                    out.append({"scale": scale, "method": method, "metric": md.name, "column": md.cls.headline,
                                "mean": s.mean, "n": s.n, "ci_low": s.ci_low, "ci_high": s.ci_high})
    return out


def statistics(study: Study) -> dict[str, Any]:
    """Pairwise method differences over seeds at each run's final step: final val_ppl (both definitions)
    and each metric's headline column, Welch tests with Holm correction per group."""
    from .statistics import ALPHA, LEVEL, power_note

    pairs = pairwise(ppl_rows(study), "val_ppl", ("val_ppl", "val_ppl_reference"), ("scale", "kind"))
    for md in study.metrics:
        if md.cls.headline and md.rows:
            pairs += pairwise(final_rows(md.rows), md.name, (md.cls.headline,), ("scale", "kind", "step"))
    seeds = len(study.seeds)
    return {"rows": pairs, "alpha": ALPHA, "level": LEVEL, "power_note": power_note(seeds, ALPHA) if seeds >= 2
            else ""}


def matched(study: Study) -> dict[str, Any]:
    """Each run's checkpoint at its group's worst final perplexity (per scale and seed), and the metrics'
    headline columns there: over seeds, and pairwise."""
    from .matched import describe_matches, matched_checkpoints, select_rows
    from .statistics import seed_summary

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


def claims(study: Study) -> list[dict[str, Any]]:
    """The claims of docs/study.md §5 checked on this study's runs: id, text, verdict, evidence, values."""
    from .claims import check_claims

    rows = [r for md in study.metrics for r in md.rows]
    downstream = [r for t in study.downstream for r in t.rows if "task" in r]
    found = check_claims(rows, study.records, per_layer=per_layer_similarity(study) or None,
                         downstream=downstream or None, prediction=prediction_result(study))
    return [{"id": c.id, "text": c.text, "verdict": c.verdict, "evidence": c.evidence, "values": c.values}
            for c in found]


def setup(study: Study) -> dict[str, Any]:
    """The setup's distance from the paper's protocol (study/setup.py), stated on the report's first screen."""
    from .setup import setup_distance

    return setup_distance(study.spec, study.runs)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _part(name: str, compute, *args) -> tuple[Any, dict[str, Any]]:
    """(value, status) of one part: status {'available': True} or {'available': False, 'message': why}."""
    try:
        return compute(*args), {"available": True}
    except ImportError as e:
        return None, {"available": False, "message": f"the module for the {name} is not installed ({e})"}
    except Exception as e:  # one part fails on these inputs; the others and the report still stand
        log.warning(f"findings: the {name} failed: {type(e).__name__}: {e}")
        return None, {"available": False, "message": f"the {name} could not be computed from this study's tables "
                                                      f"({type(e).__name__}: {e})"}


# --------------------------------------------------------------------------- writing


def compute_findings(study: Study) -> dict[str, Any]:
    """Every part's value and status, in memory (write_findings writes them)."""
    parts = {}
    for name, label, fn in (("seed_summary", "seed summaries", seed_summaries),
                            ("headline", "headline table", headline), ("statistics", "statistics", statistics),
                            ("matched", "matched-perplexity comparison", matched),
                            ("claims", "claims check", claims), ("setup", "setup comparison", setup)):
        parts[name] = _part(label, fn, study)
    return parts


def _write(folder: Path, parts: dict[str, Any], study: Study) -> None:
    (summaries, _), (head, _), (stats, _), (match, _), (found, _), (distance, _) = (parts[k] for k in (
        "seed_summary", "headline", "statistics", "matched", "claims", "setup"))
    for name, rows in (summaries or {}).items():
        write_csv(rows, folder / SEED_SUMMARY_DIR / f"{name}.csv")
    match = match or {}
    for rows, file in ((head, HEADLINE), ((stats or {}).get("rows"), PAIRWISE),
                       (match.get("checkpoints"), MATCHED_CHECKPOINTS), (match.get("metrics"), MATCHED_METRICS),
                       (match.get("pairwise"), MATCHED_PAIRWISE)):
        if rows:
            write_csv(rows, folder / file)
    if found is not None:
        write_json_atomic(folder / CLAIMS, json_safe({"claims": found}))
    if distance is not None:
        write_json_atomic(folder / SETUP, json_safe(distance))
    index = {"format": FORMAT, "study": study.spec.get("name") or study.dir.name, "seeds": study.seeds,
             "parts": {k: status for k, (_, status) in parts.items()}}
    if stats is not None:
        index["statistics"] = {k: stats[k] for k in ("alpha", "level", "power_note")}
    if match:
        index["matched"] = {k: match[k] for k in ("lines", "notes")}
    write_json_atomic(folder / INDEX, json_safe(index))


def write_findings(study_dir: Path) -> Path:
    """Compute the findings of the study in `study_dir` and write <study_dir>/findings/ (replaced whole);
    returns the folder."""
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    parts = compute_findings(study)
    final = study_dir / FINDINGS_DIR
    staging = study_dir / f".{FINDINGS_DIR}.partial"
    old = study_dir / f".{FINDINGS_DIR}.old"
    for leftover in (staging, old):  # from an interrupted earlier write
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write(staging, parts, study)
        if final.exists():
            final.rename(old)
        try:
            staging.rename(final)
        except OSError:
            if old.exists():  # put the previous findings back: never leave the study without them
                old.rename(final)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    failed = [k for k, (_, s) in parts.items() if not s["available"]]
    log.info(f"findings: {final}" + (f" (not available: {', '.join(failed)})" if failed else ""))
    return final
