"""The analyze and downstream stages of a study (each from one request built from the study file), the
prediction stage, and the `predict` command's input gathering.

Prediction units are runs at their final checkpoint (docs/study.md §3.3, inferred design): the target is the
mean zero-shot accuracy over the evaluated tasks, the features are the final validation perplexity plus
one headline column per metric (`Metric.headline`; e.g. landscape_random.es) or the columns asked for.
Metric values come from the analysis tables (`<analysis>/<metric>.csv`), so they are exactly what the
latest `analyze` wrote; downstream accuracy from `downstream.csv`.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..analysis.context import EvalSettings
from ..analysis.metrics import get_metric, metric_names
from ..analysis.request import AnalysisRequest
from ..analysis.runner import run_analysis
from ..analysis.subjects import RunRef
from ..analysis.tables import read_csv
from ..atomic import write_text_atomic
from ..downstream.evaluate import run_eval_downstream
from ..downstream.request import DownstreamRequest
from ..errors import LensError
from ..findings.prediction import PredictionUnit, predict_downstream
from ..report.prediction import write_prediction_report
from ..runfolder.checkpoint import complete_checkpoints, read_meta
from .spec import StudySpec, study_run_dirs

log = logging.getLogger("lowrank_lens")

# Which row of a metric stands for a run: its final checkpoint, its pair with the reference at the final
# step, the init->final pair of consecutive metrics, or the run-level row.
PER_RUN_KINDS = ("checkpoint", "pair", "init-final", "run")


def analysis_request(spec: StudySpec, study_dir: Path) -> AnalysisRequest:
    """The study's analysis, built once from the study file: every run, the study's metrics, options, steps
    and evaluation settings -> <study>/analysis (the inline stage; each job of a split one takes a share)."""
    return AnalysisRequest(study_run_dirs(spec, study_dir), metrics=spec.metrics or None, steps=spec.analysis_steps,
                           overrides=spec.metric_overrides, out=study_dir / "analysis", jobs=spec.jobs,
                           settings=EvalSettings(sequences=spec.sequences, batch_size=spec.eval_batch_size))


def downstream_request(spec: StudySpec, study_dir: Path) -> DownstreamRequest:
    """The study's downstream evaluation: every run's final checkpoint on the study's tasks and seeds ->
    <study>/downstream/downstream.csv (each job of a split one takes a share of the runs)."""
    return DownstreamRequest(study_run_dirs(spec, study_dir), tasks=spec.downstream_tasks, step="final",
                             seeds=spec.downstream_seeds, limit=spec.downstream_limit or None,
                             include_path=spec.include_path or None, out=study_dir / "downstream")


def analyze_stage(spec: StudySpec, study_dir: Path) -> None:
    run_analysis(analysis_request(spec, study_dir))


def downstream_stage(spec: StudySpec, study_dir: Path) -> Path:
    return run_eval_downstream(downstream_request(spec, study_dir))


def final_val_ppl(run_dir: Path) -> float:
    ckpts = [p for _, p in complete_checkpoints(run_dir) if p.name != "resume"]
    if not ckpts:
        raise LensError(f"run {run_dir} has no checkpoint")
    val = read_meta(ckpts[-1]).get("val") or {}
    return float(val.get("val_ppl", math.nan))


def per_run_metric_values(analysis_dir: Path, run_ids: set[str]) -> dict[str, dict[str, float]]:
    """{run: {'<metric>.<column>': value}} from the analysis tables, at each run's final step."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for name in metric_names():
        path = analysis_dir / f"{name}.csv"
        if not path.is_file():
            continue
        rows = [r for r in read_csv(path) if r.get("run") in run_ids and r.get("kind") in PER_RUN_KINDS
                and not r.get("skipped")]
        last: dict[str, dict[str, Any]] = {}
        for r in rows:
            if r["run"] not in last or int(r.get("step") or 0) >= int(last[r["run"]].get("step") or 0):
                last[r["run"]] = r
        for run, r in last.items():
            for k, v in r.items():
                if isinstance(v, (int, float)) and k not in ("seed", "step", "step_from"):
                    out[run][f"{name}.{k}"] = float(v)
    return out


def default_features(values: dict[str, dict[str, float]], run_ids: list[str]) -> list[str]:
    """One headline column per metric, kept only where every run has it (e.g. similarity to the reference
    run does not exist for the reference run itself)."""
    feats = []
    for name in metric_names():
        head = get_metric(name).headline
        col = f"{name}.{head}"
        if not head:
            continue
        have = [r for r in run_ids if math.isfinite(values.get(r, {}).get(col, math.nan))]
        if len(have) == len(run_ids):
            feats.append(col)
        elif have:
            log.info(f"predict: {col} left out of the default features (missing for "
                     f"{len(run_ids) - len(have)} of {len(run_ids)} runs)")
    return feats


def prediction_units(run_dirs: list[Path], analysis_dir: Path, downstream_csv: Path):
    """PredictionUnits (target = mean accuracy over tasks) and the per-run metric values."""
    if not downstream_csv.is_file():
        raise LensError(f"no downstream results at {downstream_csv}; run `lowrank-lens eval-downstream` first")
    acc: dict[str, list[float]] = defaultdict(list)
    for r in read_csv(downstream_csv):
        if isinstance(r.get("acc"), (int, float)):
            acc[str(r["run"])].append(float(r["acc"]))
    runs = [RunRef.open(d) for d in run_dirs]
    ids = {r.run_id for r in runs}
    values = per_run_metric_values(analysis_dir, ids)
    units = []
    for r in runs:
        if r.run_id not in acc:
            raise LensError(f"run {r.run_id} has no downstream accuracy in {downstream_csv}; evaluate it first")
        feats = {"val_ppl": final_val_ppl(r.run_dir), **values.get(r.run_id, {})}
        units.append(PredictionUnit(run_id=r.run_id, method=r.method, scale=r.scale, seed=r.seed,
                                    target=sum(acc[r.run_id]) / len(acc[r.run_id]), features=feats))
    return units, values


def run_prediction(run_dirs: list[Path], analysis_dir: Path, downstream_csv: Path, out: Path,
                   features: list[str] | None = None, n_perm: int = 200) -> list[Path]:
    """Fit perplexity vs perplexity + metrics (findings/prediction.py) and write the prediction tables and
    figure into `out` (report/prediction.py)."""
    units, values = prediction_units(run_dirs, analysis_dir, downstream_csv)
    feats = features or default_features(values, [u.run_id for u in units])
    if not feats:
        raise LensError(f"no metric feature is available for every run in {analysis_dir}; run `lowrank-lens "
                        f"analyze` on the runs first or pass --features")
    methods = {u.method for u in units}
    splits = ("loo", "lomo") if len(methods) > 1 else ("loo",)
    result = predict_downstream(units, feats, splits=splits, n_perm=n_perm)
    return write_prediction_report(result, out)


def predict_stage(spec: StudySpec, run_dirs: list[Path], out: Path) -> list[Path]:
    """The study's prediction; a study too small to fit is reported, not fatal."""
    try:
        return run_prediction(run_dirs, out / "analysis", out / "downstream" / "downstream.csv", out / "prediction",
                              list(spec.predict_features) or None)
    except LensError as e:
        log.warning(f"prediction skipped: {e}")
        (out / "prediction").mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "prediction" / "skipped.txt", f"{e}\n")
        return []
