"""What each submitted task of a study records in <study>/jobs/status/ (its state, Slurm job id and log file),
and the records read back (`--status`: study/status.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic

JOBS_DIR = "jobs"
"""<study>/jobs: the tasks' records (status/), their logs (logs/) and what was submitted (submitted.json)."""


def status_path(study_dir: Path, unit: str) -> Path:
    return study_dir / JOBS_DIR / "status" / f"{unit.replace('/', '__')}.json"


def mark(study_dir: Path, unit: str, state: str, **extra: Any) -> None:
    """Record a task's state (running, done, failed, requeued) with its Slurm job id and log file."""
    job = os.environ.get("SLURM_JOB_ID", "")
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    path = status_path(study_dir, unit)
    history = json.loads(path.read_text()).get("history", []) if path.is_file() else []
    record = {"unit": unit, "state": state, "job_id": job or os.environ.get("SUBMITIT_LOCAL_JOB_ID", ""),
              "host": os.uname().nodename, "time": time.time(), "log": _log_file(study_dir, job), **extra}
    record["history"] = [*history, {k: record[k] for k in ("state", "job_id", "time", *extra)}]
    write_json_atomic(path, record)


def _log_file(study_dir: Path, job: str) -> str:
    logs = sorted((study_dir / JOBS_DIR / "logs" / job).glob("*_log.err")) if job else []
    return str(logs[0]) if logs else str(study_dir / JOBS_DIR / "logs")


def read_status(study_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted((study_dir / JOBS_DIR / "status").glob("*.json")):
        rec = json.loads(p.read_text())
        out[rec["unit"]] = rec
    return out
