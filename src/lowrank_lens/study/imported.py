"""Imported runs in a study: checkpoint series trained elsewhere, beside or instead of the trained grid.

    [[imported]]
    path = "../pythia-70m-ckpts"        # anything `lowrank-lens import` reads (a relative path is taken
    method = "pythia"                    #   from the study file's folder); a hub id with revisions = [...]
    scale = "70m"
    seed = 0
    baseline = true                      # optional: the reference of activation similarity and the claims

The train stage imports each series once into <study>/runs/<scale>-<method>-seed<seed> (weights hard-linked,
see imports/importer.py); every later stage treats the run like a trained one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LensError
from ..imports import ImportOptions, import_series
from ..runfolder.files import run_name

log = logging.getLogger("lowrank_lens")

FIELDS = {"path": str, "method": str, "scale": str, "seed": int, "baseline": bool, "tokens": str,
          "revisions": list, "targets": list, "layout": str}
REQUIRED = ("path", "method")


@dataclass(frozen=True)
class ImportedRun:
    run_name: str
    entry: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.entry["method"])

    @property
    def scale(self) -> str:
        return str(self.entry.get("scale", "imported"))

    @property
    def seed(self) -> int:
        return int(self.entry.get("seed", 0))


def check_entries(entries: list[Any]) -> None:
    """Each [[imported]] entry: a table of known fields of the right types, path and method present."""
    for i, e in enumerate(entries):
        where = f"study imported[{i}]"
        if not isinstance(e, dict):
            raise LensError(f"{where} must be a table (path, method, scale, seed), got {type(e).__name__}")
        unknown = sorted(set(e) - set(FIELDS))
        if unknown:
            raise LensError(f"{where} has unknown field(s) {unknown}; valid: {', '.join(FIELDS)}")
        missing = [k for k in REQUIRED if not e.get(k)]
        if missing:
            raise LensError(f"{where} needs {' and '.join(missing)} (the series to import and its method label)")
        for k, v in e.items():
            tp = FIELDS[k]
            if not isinstance(v, tp) or (tp is int and isinstance(v, bool)):
                raise LensError(f"{where}.{k} must be {tp.__name__}, got {v!r}")


def imported_runs(entries: list[dict[str, Any]]) -> list[ImportedRun]:
    runs = [ImportedRun(run_name(e.get("scale", "imported"), e["method"], int(e.get("seed", 0))), e) for e in entries]
    names = [r.run_name for r in runs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise LensError(f"study imported runs {dups} repeat a (method, scale, seed); give each series its own")
    return runs


def resolve_paths(entries: list[dict[str, Any]], base: Path) -> list[dict[str, Any]]:
    """Entries with relative local paths made absolute from `base` (the study file's folder); hub ids stay."""
    out = []
    for e in entries:
        p = e.get("path")
        if isinstance(p, str) and not Path(p).is_absolute() and (base / p).exists():
            e = {**e, "path": str((base / p).resolve())}
        out.append(e)
    return out


def import_missing(runs: list[ImportedRun], runs_dir: Path) -> list[Path]:
    """Import every series not yet in runs_dir (a finished import is a run folder with its config.json)."""
    dirs = []
    for r in runs:
        dest = runs_dir / r.run_name
        if not (dest / "config.json").is_file():
            e = r.entry
            log.info(f"[import] {r.run_name} from {e['path']}")
            opts = ImportOptions(label=r.method, scale=r.scale, seed=r.seed, tokens=e.get("tokens", ""),
                                 revisions=tuple(e.get("revisions", ())), targets=tuple(e.get("targets", ())),
                                 layout=e.get("layout", "auto"), baseline=bool(e.get("baseline", False)))
            import_series(str(e["path"]), dest, opts)
        dirs.append(dest)
    return dirs
