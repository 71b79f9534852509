"""Reading a run directory's own files: the one lower module every reader (train, analysis, downstream,
report) goes through, so none of them imports the training code to read a config.

Layers, lowest first: errors, config  <  methods  <  runfolder  <  train / analysis / downstream  <  study.
config.py knows no method: a run config's method section is built here, with the method plugin that the
config names (`run_config_from_dict`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import RunConfig, check_run_dict
from ..errors import LensError, first_line
from ..methods import get_method


def run_name(scale: str, method: str, seed: int) -> str:
    """The folder name of a run under runs/: what training, studies and imported study runs all use."""
    return f"{scale}-{method}-seed{seed}"


def read_json_object(file: Path, what: str, fix: str) -> dict[str, Any]:
    """The JSON object in `file`; one LensError ("<what> is unreadable ..." / "... holds a JSON list") when
    it is unreadable, not strict UTF-8 JSON (RFC 8259), or not an object. `fix` ends the message."""
    try:
        d = json.loads(Path(file).read_bytes().decode())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise LensError(f"{what} is unreadable JSON ({first_line(e)}); {fix}") from None
    if not isinstance(d, dict):
        raise LensError(f"{what} holds a JSON {type(d).__name__}, not an object; {fix}")
    return d


def run_config_from_dict(d: dict) -> RunConfig:
    """A RunConfig from its JSON dict, its method section built by the plugin the dict names."""

    check_run_dict(d)
    return RunConfig.from_dict(d, get_method(d["method"]))


def read_run_json(run_dir: Path) -> dict:
    """config.json of a run as a JSON object (config, provenance, data fingerprint); one LensError naming
    the file when it is missing, unreadable, not UTF-8 JSON, or not an object."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise LensError(f"{run_dir} has no config.json; is it a lowrank-lens run directory?")
    return read_json_object(path, str(path), "restore it (training writes it once, at the start), or train "
                            "the run again")


def load_run_config(run_dir: Path) -> RunConfig:
    """Read config.json of a run (the one place where older run formats would be upgraded)."""
    path = Path(run_dir) / "config.json"
    d = read_run_json(run_dir)
    for key in ("provenance", "data_fingerprint", "format_version", "imported"):
        d.pop(key, None)
    try:
        return run_config_from_dict(d)
    except LensError as e:
        raise LensError(f"{path} is not a valid run config: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # hand-edited values of the wrong kind
        raise LensError(f"{path} is not a valid run config ({type(e).__name__}: {e}); restore it") from None


def imported_record(d: dict[str, Any]) -> dict[str, Any]:
    """config.json's "imported" record of a run made elsewhere (lowrank-lens import), {} for a native run."""
    rec = d.get("imported")
    return rec if isinstance(rec, dict) else {}


def method_label(d: dict[str, Any]) -> str:
    """The method a run's tables show: an imported run's label (what it was trained with, as its importer
    named it), else the config's method."""
    return str(imported_record(d).get("label") or d.get("method", "?"))
