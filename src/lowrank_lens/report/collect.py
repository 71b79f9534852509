"""Gather everything the report shows from a study directory, reading files only.

The report never loads a checkpoint and never computes a metric (study/runner.py layout): it reads
study.json, each run's config.json / log.jsonl / ckpt/step_*/meta.json, the cached metric Results
(analysis.cache.ResultStore), the analysis tables (<study>/analysis/<metric>.csv), and the optional
downstream/, prediction/ and timings.json outputs.

`run_records` is also the input format of the statistics, matched-perplexity and claims code
(findings/statistics.py, findings/matched.py): one dict per run with run, method, scale, seed, is_baseline,
final_val_ppl and checkpoints [{step, tokens, val_ppl, ...}].
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.base import Metric, Result
from ..analysis.cache import ResultStore
from ..analysis.metrics import get_metric, metric_names
from ..analysis.plotting import method_colour as colour
from ..analysis.runner import build_metrics
from ..analysis.tables import read_csv
from ..errors import LensError
from ..methods import get_method
from ..runfolder.checkpoint import RESUME_DIR, complete_checkpoints, read_meta
from ..runfolder.files import imported_record, method_label
from ..tempdirs import is_hidden
from ..typed_fields import build_section

log = logging.getLogger("lowrank_lens")

SUBJECT_KEYS = ("run", "kind", "step", "step_from", "other_run")
"""The columns that name one subject of a metric (Subject.describe), used to pick one cached result each."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning(f"report: cannot read {path}: {e}")
        return None


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


@dataclass
class RunInfo:
    """One run directory as the report sees it: config, provenance, checkpoints' meta and its log."""

    name: str
    dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    """Per complete checkpoint (oldest first): step, tokens, val_loss, val_ppl, val_loss_reference,
    val_ppl_reference, memory, model_sha256."""
    log: list[dict[str, Any]] = field(default_factory=list)
    problem: str = ""
    """Why the run is missing or unreadable ('' when it is fine)."""
    source: str = ""
    """The source it came from in a report over several (report/sources.py); '' in a study's own report."""

    @property
    def method(self) -> str:

        return method_label(self.config)

    @property
    def scale(self) -> str:
        return str(self.config.get("scale", "?"))

    @property
    def seed(self) -> Any:
        return (self.config.get("train") or {}).get("seed")

    @property
    def final(self) -> dict[str, Any]:
        return self.checkpoints[-1] if self.checkpoints else {}

    @property
    def is_baseline(self) -> bool:

        imported = imported_record(self.config)
        return bool(imported["baseline"]) if "baseline" in imported else method_is_baseline(self.method)


def method_is_baseline(method: str) -> bool:

    try:
        return bool(get_method(method).is_baseline)
    except LensError:
        return False


def method_colour(method: str) -> str:
    """The method's fixed colour (docs/study.md §1.1), grey for an unknown method."""

    return colour(method)


def read_run(run_dir: Path) -> RunInfo:
    """A RunInfo from the files of one run directory (never its weights)."""

    run_dir = Path(run_dir)
    info = RunInfo(name=run_dir.name, dir=run_dir)
    if not (run_dir / "config.json").is_file():
        info.problem = "no config.json (not trained yet?)"
        return info
    info.config = _read_json(run_dir / "config.json") or {}
    for _, path in complete_checkpoints(run_dir):
        if path.name == RESUME_DIR:
            continue
        try:
            meta = read_meta(path)
        except LensError as e:
            info.problem = str(e)
            continue
        val = meta.get("val") or {}
        info.checkpoints.append({
            "step": int(meta.get("step", 0)), "tokens": meta.get("tokens"),
            "val_loss": _num(val.get("val_loss")), "val_ppl": _num(val.get("val_ppl")),
            "val_loss_reference": _num(val.get("val_loss_reference")),
            "val_ppl_reference": _num(val.get("val_ppl_reference")),
            "memory": meta.get("memory") or {}, "model_sha256": meta.get("model_sha256", "")})
    info.checkpoints.sort(key=lambda c: c["step"])
    if not info.checkpoints and not info.problem:
        info.problem = "no complete checkpoint"
    log_path = run_dir / "log.jsonl"
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            try:
                info.log.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
    return info


def run_record(info: RunInfo) -> dict[str, Any]:
    """The run-record dict of statistics / matched / claims (see the module docstring)."""
    return {"run": info.name, "method": info.method, "scale": info.scale, "seed": info.seed,
            "is_baseline": info.is_baseline, "final_val_ppl": _num(info.final.get("val_ppl")),
            "final_val_ppl_reference": _num(info.final.get("val_ppl_reference")),
            "final_step": info.final.get("step"), "final_tokens": info.final.get("tokens"),
            "checkpoints": [{k: c[k] for k in ("step", "tokens", "val_ppl", "val_ppl_reference", "val_loss")}
                            for c in info.checkpoints]}


def study_run_dirs(study_dir: Path) -> list[Path]:
    """The study's run directories: study.json's run list, else every folder under runs/."""
    study_dir = Path(study_dir)
    meta = _read_json(study_dir / "study.json") if (study_dir / "study.json").is_file() else None
    if meta and meta.get("runs"):
        return [study_dir / "runs" / name for name in meta["runs"]]
    runs = study_dir / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir() and not is_hidden(p)) if runs.is_dir() else []


def run_records(study_dir: Path) -> list[dict[str, Any]]:
    """Run records of every readable run of a study (the shared input of the statistics code)."""
    return [run_record(r) for r in (read_run(d) for d in study_run_dirs(study_dir)) if r.checkpoints]


# --------------------------------------------------------------------------- metrics


@dataclass
class MetricData:
    """One registered metric's cached results and table, ready to plot and render."""

    name: str
    cls: type[Metric]
    metric: Metric
    results: list[Result]
    rows: list[dict[str, Any]]
    table_source: str
    """'csv' (<study>/analysis/<metric>.csv) or 'cache' (rows rebuilt from the cached results)."""
    configs: list[dict[str, Any]]
    """The distinct metric configs of the shown results (normally one)."""
    evals: list[dict[str, Any]]
    """The distinct evaluation settings (sequences, batch size, dtype, device) of the shown results."""
    notes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> dict[str, int]:
        """Skip reason -> number of subjects."""
        out: dict[str, int] = {}
        for r in self.results:
            if r.skipped:
                out[r.skipped] = out.get(r.skipped, 0) + 1
        return out


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def expected_configs(spec: dict[str, Any]) -> dict[str, str]:
    """{metric: canonical JSON of its config} as the study spec asks for (defaults + metric_overrides)."""

    try:
        metrics = build_metrics(None, list(spec.get("metric_overrides") or []))
    except LensError as e:
        log.warning(f"report: the study's metric options do not build ({e}); using the newest results")
        return {}
    return {m.name: _canonical(json.loads(_canonical(dataclasses.asdict(m.cfg)))) for m in metrics}


def cached_results(name: str, run_dirs: list[Path], expected: str | None) -> list[Result]:
    """One cached Result per subject of metric `name` over the runs: the one computed with the expected
    config when there is one, else the newest (a cache keeps every config ever computed)."""

    best: dict[tuple, tuple[tuple[bool, float], Result]] = {}
    names = {d.name for d in run_dirs}
    for run_dir in run_dirs:
        store = ResultStore(run_dir)
        folder = store.root / name
        if not folder.is_dir():
            continue
        for meta in sorted(folder.glob("*.json")):
            r = store.get(name, meta.stem)
            if r is None:
                continue
            other = r.subject.get("other_run")
            if other is not None and other not in names:
                continue  # a pair with a run outside this study
            rank = (expected is not None and _canonical(r.info.get("config")) == expected, meta.stat().st_mtime)
            key = tuple(r.subject.get(k) for k in SUBJECT_KEYS)
            if key not in best or rank > best[key][0]:
                best[key] = (rank, r)
    order = {d.name: i for i, d in enumerate(run_dirs)}
    results = [r for _, r in best.values()]
    results.sort(key=lambda r: (order.get(r.subject.get("run"), 0), str(r.subject.get("other_run") or ""),
                                r.subject.get("step_from") or 0, r.subject.get("step") or 0,
                                str(r.subject.get("kind"))))
    return results


def _instance(cls: type[Metric], config: dict[str, Any] | None) -> Metric:
    """The metric built with the config its results were computed with (plots may read it)."""

    if config:
        try:
            return cls(build_section(cls.Config, dict(config), cls.name))
        except (LensError, TypeError, ValueError) as e:
            log.warning(f"report: {cls.name} config {config} does not build ({e}); plotting with defaults")
    return cls(cls.Config())


def distinct_configs(items: list[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for x in items:
        if x is not None:
            seen.setdefault(_canonical(x), x)
    return list(seen.values())


def unique_subjects(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The rows with each subject (SUBJECT_KEYS) once, the first kept; and how many were dropped."""
    seen: set[tuple] = set()
    out = []
    for r in rows:
        key = tuple(r.get(k) for k in SUBJECT_KEYS)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out, len(rows) - len(out)


def collect_metric(name: str, run_dirs: list[Path], analysis_dir: Path, expected: str | None) -> MetricData:
    """A registered metric's results over the study's runs and its table rows."""

    cls = get_metric(name)
    results = cached_results(name, run_dirs, expected)
    configs = distinct_configs([r.info.get("config") for r in results])
    evals = distinct_configs([r.info.get("eval") for r in results])
    metric = _instance(cls, configs[0] if configs else None)
    notes = []
    if len(configs) > 1:
        notes.append(f"results computed with {len(configs)} different configs (shown: the newest per subject)")
    names = {d.name for d in run_dirs}
    csv_path = analysis_dir / f"{name}.csv"
    if csv_path.is_file():
        rows, dropped = unique_subjects([r for r in read_csv(csv_path) if r.get("run") in names])
        source = "csv"
        if dropped:
            notes.append(f"{dropped} repeated row(s) of the same subject left out of {csv_path.name} (identical "
                         f"checkpoints, e.g. step 0 of methods with the same initialisation, share one cached "
                         f"result and the analysis table then repeats its subject)")
    else:
        rows = []
        for r in results:
            row = {"metric": name, **r.subject}
            row.update({"skipped": r.skipped} if r.skipped else metric.summarize(r))
            rows.append(row)
        source = "cache"
    if results and len(rows) != len(results):
        notes.append(f"the table has {len(rows)} rows and the cache {len(results)} subjects for this study's "
                     f"runs: the latest analysis covered other steps or runs than earlier ones")
    return MetricData(name, cls, metric, results, rows, source, configs, evals, notes)


# --------------------------------------------------------------------------- optional outputs


@dataclass
class CsvTable:
    """A CSV beside the study (downstream, prediction) with its rows."""

    name: str
    path: Path
    rows: list[dict[str, Any]]


def read_tables(folder: Path) -> list[CsvTable]:
    """Every CSV in `folder` (none when it is missing)."""
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.csv")):
        try:
            out.append(CsvTable(path.stem, path, read_csv(path)))
        except (OSError, ValueError) as e:
            log.warning(f"report: cannot read {path}: {e}")
    return out


@dataclass
class Study:
    """Everything the report renders."""

    dir: Path
    spec: dict[str, Any]
    runs: list[RunInfo]
    metrics: list[MetricData]
    timings: dict[str, Any]
    downstream: list[CsvTable]
    prediction: list[CsvTable]
    prediction_note: str

    @property
    def records(self) -> list[dict[str, Any]]:
        return [run_record(r) for r in self.runs if r.checkpoints]

    @property
    def seeds(self) -> list[Any]:
        return sorted({r.seed for r in self.runs if r.checkpoints}, key=str)


def load_study(study_dir: Path) -> Study:
    """Read a study directory (study/runner.py layout) into a Study."""

    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise LensError(f"study directory {study_dir} does not exist")
    meta = _read_json(study_dir / "study.json") if (study_dir / "study.json").is_file() else None
    run_dirs = study_run_dirs(study_dir)
    if not run_dirs:
        raise LensError(f"{study_dir} holds no run (no study.json run list and no runs/ folder); is it a study "
                        f"directory written by `lowrank-lens study`?")
    return study_of_runs(study_dir, (meta or {}).get("spec") or {}, run_dirs)


def study_of_runs(study_dir: Path, spec: dict[str, Any], run_dirs: list[Path]) -> Study:
    """The Study of `run_dirs` with the optional outputs of `study_dir` (a run folder is its own study_dir)."""
    runs = [read_run(d) for d in run_dirs]
    expected = expected_configs(spec)
    metrics = [collect_metric(n, run_dirs, study_dir / "analysis", expected.get(n)) for n in metric_names()]
    timings = _read_json(study_dir / "timings.json") if (study_dir / "timings.json").is_file() else {}
    pred_dir = study_dir / "prediction"
    skipped = pred_dir / "skipped.txt"
    return Study(dir=study_dir, spec=spec, runs=runs, metrics=metrics, timings=timings or {},
                 downstream=read_tables(study_dir / "downstream"), prediction=read_tables(pred_dir),
                 prediction_note=skipped.read_text().strip() if skipped.is_file() else "")
