"""`lowrank-lens study FOLDER --status`: each run's and stage's state, read from the study folder alone.

Sources: study.json (the runs), each run's checkpoints (done or how far), the task records that submitted
jobs write in jobs/status/ (running, requeued, failed with the error and the log path), jobs/submitted.json
(what was submitted), and the stages' outputs (analysis tables, downstream.csv, report/index.html).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import LensError
from ..runfolder.checkpoint import complete_checkpoints
from .imported import imported_runs
from .spec import StudySpec, plan_runs
from .spec_files import load_spec
from .stage_table import STAGE_TABLE
from .task_records import JOBS_DIR, read_status
from .tune import DIVERGED_STATE, choose, groups


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s}s ago" if s < 120 else f"{s // 60} min ago"


def _run_state(run_dir: Path, steps: int, rec: dict[str, Any] | None, submitted: bool) -> tuple[str, str]:
    ckpts = complete_checkpoints(run_dir) if run_dir.is_dir() else []
    at = max((s for s, _ in ckpts), default=None)
    progress = f"step {at}/{steps}" if at is not None else f"0/{steps}"
    if any(s >= steps for s, p in ckpts if p.name != "resume"):
        return "done", progress
    if rec and rec["state"] == "failed":
        return "failed", f"{progress}; {rec.get('error', '')}; log {rec.get('log', '')}"
    if rec and rec["state"] == "requeued":
        return "requeued", f"stopped at step {rec.get('step')}, waiting to resume (job {rec.get('job_id')})"
    if rec and rec["state"] in ("running", "done"):
        log = run_dir / "log.jsonl"
        beat = f", last log line {_ago(log.stat().st_mtime)}" if log.is_file() else ""
        return "running", f"{progress}{beat} (job {rec.get('job_id')}, log {rec.get('log', '')})"
    return ("queued" if submitted else "to do"), progress


def _stage_state(folder: Path, stage: str, status: dict[str, dict[str, Any]], output: Path) -> str:
    recs = [r for u, r in status.items() if u == stage or u.startswith(stage + "/")]
    failed = [r for r in recs if r["state"] == "failed"]
    if failed:
        return "failed: " + "; ".join(f"{r['unit']}: {r.get('error', '')} (log {r.get('log', '')})" for r in failed)
    if recs and any(r["state"] == "running" for r in recs):
        done = sum(r["state"] == "done" for r in recs)
        return f"running ({done} of {len(recs)} tasks done)"
    if output.exists() or (recs and all(r["state"] == "done" for r in recs)):
        return "done"
    return "to do"


def study_status(folder: str | Path) -> str:
    folder = Path(folder)
    if not (folder / "study.json").is_file():
        raise LensError(f"{folder} is not a study folder (no study.json); pass the folder a study wrote")
    spec = load_spec(folder)
    status = read_status(folder)
    sub_path = folder / JOBS_DIR / "submitted.json"
    submitted = json.loads(sub_path.read_text()) if sub_path.is_file() else None
    runs = plan_runs(spec)
    head = f"study {spec.name} in {folder}: {len(runs)} runs"
    if submitted:
        ids = ", ".join(f"{k} {' '.join(v)}" for k, v in submitted["jobs"].items() if v)
        head += f"; submitted to {submitted['executor']} {_ago(submitted['time'])} (jobs: {ids or 'none'})"
    lines = [head, "", f"{'run':34s} {'state':9s} detail"]
    counts: dict[str, int] = {}
    for r in runs:
        state, detail = _run_state(folder / "runs" / r.run_name, r.shape.train.steps,
                                   status.get(f"train/{r.run_name}"), submitted is not None)
        counts[state] = counts.get(state, 0) + 1
        lines.append(f"{r.run_name:34s} {state:9s} {detail}")
    for imp in imported_runs(spec.imported):
        done = (folder / "runs" / imp.run_name / "config.json").is_file()
        state = "done" if done else "to do"
        counts[state] = counts.get(state, 0) + 1
        lines.append(f"{imp.run_name:34s} {state:9s} imported from {imp.entry['path']}")
    lines += ["", "runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), "stages:"]
    for stage in STAGE_TABLE:  # the stages that run as their own jobs and leave an output (runs: listed above)
        if stage.jobs is None or not stage.output or not stage.applies(spec):
            continue
        state = (_tune_state(spec, folder, status) if stage.name == "tune"
                 else _stage_state(folder, stage.name, status, folder / stage.output))
        lines.append(f"  {stage.name:10s} {state}")
    return "\n".join(lines)


def _tune_state(spec: StudySpec, folder: Path, status: dict[str, dict[str, Any]]) -> str:
    """How many proxy runs are done or diverged, what is left; when settled, the chosen lr of each (scale, method)."""
    failed = [r for u, r in status.items() if u.startswith(("tune/", "tune-round/")) and r["state"] == "failed"]
    if failed:
        return "failed: " + "; ".join(f"{r['unit']}: {r.get('error', '')} (log {r.get('log', '')})" for r in failed)
    try:
        found = groups(spec, folder)
    except LensError as e:  # every proxy of one (scale, method) diverged
        return str(e)
    rows = [r for g in found.values() for r in g.rows]
    pending = sum(len(g.pending or []) for g in found.values())
    extending = sum(g.next is not None for g in found.values())
    diverged = sum(r["status"] == DIVERGED_STATE for r in rows)
    counts = f"{len(rows) - pending} proxy runs" + (f", {diverged} diverged" if diverged else "")
    if pending or extending:
        return f"{counts} done" + (f", {pending} of the grid to do" if pending else "") + \
            (f", {extending} lr(s) past an edge to try" if extending else "")
    return f"done ({counts}); lr " + ", ".join(f"{scale} {method} {choose(g.rows)['lr']:g}"
                                              for (scale, method), g in found.items())
