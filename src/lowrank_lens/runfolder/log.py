"""Reading a run's log.jsonl (one JSON record per logged step and per validation; train/logs.py writes it) and its
lens.jsonl (the in-training lens, callback.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import LensError


def parse_log(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for each record of a log.jsonl, in order: the one reader of the file.

    A last line that is not a record is dropped: a run killed mid-write leaves a torn line there. An
    unreadable line before it (binary garbage, a hand edit) means the file was damaged: a LensError
    naming the line, since guessing which records to keep could silently lose a training curve.
    """
    lines = [(no, raw) for no, raw in enumerate(Path(path).read_bytes().split(b"\n"), 1) if raw.strip()]
    out = []
    for i, (no, raw) in enumerate(lines):
        try:
            line = raw.decode()  # invalid UTF-8: UnicodeDecodeError, a ValueError
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
                raise ValueError("not a JSON object with an integer step")
        except ValueError as e:
            if i == len(lines) - 1:
                break
            raise LensError(f"{path} line {no} is not a log record ({str(e).splitlines()[0][:120]}); the log is "
                            f"damaged — delete that line (e.g. sed -i '{no}d' {path}) and rerun") from None
        out.append((line, record))
    return out


def read_log(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    return [r for _, r in parse_log(path) if kind is None or r.get("kind") == kind]


LENS_FILE = "lens.jsonl"
"""The in-training lens series of a run (train.lens): one record per metric and observed step."""


def read_lens_rows(path: Path) -> list[dict[str, Any]]:
    """The records of a lens series: a run folder's lens.jsonl, or a LensCallback's out file ([] if absent)."""
    path = Path(path)
    path = path / LENS_FILE if path.is_dir() else path
    return [r for _, r in parse_log(path)] if path.is_file() else []
