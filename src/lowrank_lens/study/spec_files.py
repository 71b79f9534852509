"""A study argument read into a StudySpec, and the record a study folder keeps of it.

`load_spec` takes a study file (TOML/JSON with the fields of `StudySpec`), the name of a named study
(`study_presets`: study/presets.py and study/ladder.py) or an existing study folder, whose `study.json`
(`write_study_record`: the resolved spec and its run list) makes the folder itself a study argument, so a
study can be re-run in place.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Callable
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import LensError
from .imported import resolve_paths
from .ladder import ladder_presets
from .presets import demo, demo_tune, paper, zoo
from .spec import StudySpec, run_names


def study_presets() -> dict[str, Callable[[], StudySpec]]:
    return {"demo": demo, "demo-tune": demo_tune, **ladder_presets(), "paper": paper, "zoo": zoo}


def existing_study_folder(source: str | Path) -> Path | None:
    """The study folder `source` names (a folder holding a study.json, not a preset name), else None."""
    path = Path(source)
    return path if str(source) not in study_presets() and (path / "study.json").is_file() else None


def load_spec(source: str | Path) -> StudySpec:
    """A StudySpec from a TOML/JSON file, a preset name (see `study_presets`), or an existing study folder
    (its `study.json` record, whose "spec" holds the resolved spec), so a study can be re-run in place."""
    presets = study_presets()
    if str(source) in presets:
        return presets[str(source)]()
    folder = existing_study_folder(source)
    path = folder / "study.json" if folder else Path(source)
    if not path.is_file():
        raise LensError(f"study {source!r} is neither a file, a study folder nor a preset; presets: "
                        f"{', '.join(presets)}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LensError(f"study file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        d = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise LensError(f"cannot parse study file {path}: {str(e).splitlines()[0]}") from None
    if isinstance(d, dict) and isinstance(d.get("spec"), dict):
        d = d["spec"]  # a study folder's study.json record
    if not isinstance(d, dict):
        raise LensError(f"study file {path} must hold a table of study fields (name, methods, ...), "
                        f"not a {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(StudySpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise LensError(f"unknown study field(s) {unknown} in {path}; valid: {', '.join(sorted(known))}")
    if isinstance(d.get("imported"), list) and folder is None:  # a study file: its paths are relative to it
        d["imported"] = resolve_paths(d["imported"], path.parent)
    return StudySpec(**d)


def write_study_record(spec: StudySpec, out: Path) -> None:
    """<out>/study.json: the resolved spec and its run list (what --status and submitted tasks read)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "study.json", {"spec": spec.to_dict(), "runs": run_names(spec)})
