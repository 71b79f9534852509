"""The findings stage: the study's files read, every part of the findings computed, and their tables written,
before the report renders them (the report computes nothing: report/).

    write_findings(Path("studies/demo"))  ->  studies/demo/findings/findings.json
                                                              /pairwise_differences.csv, ...

It reads what the earlier stages wrote (report/collect.py's Study: run records, metric rows, cached
results, downstream and prediction tables), computes the parts with findings/parts.py (seed statistics,
the headline table, pairwise differences, matched perplexity, the claims check, the setup beside the
paper's) and writes report/findings_files.py's layout. A part that fails (or whose module is missing) is
recorded as unavailable with the reason, and the other parts and the report still stand. The folder is
replaced as a whole (written beside it, then swapped in), so a reader never sees one run's statistics
beside another run's claims.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..analysis.tables import write_csv
from ..atomic import write_json_atomic
from ..findings.parts import compute_findings
from ..findings.sources import source_findings
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
    SOURCE_DIFFERENCES,
    SOURCE_HEADLINE,
    json_safe,
    load_findings,
)
from ..report.sources import read_source, source_kind, source_labels

log = logging.getLogger("lowrank_lens")


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


def _swap_in(folder: Path, write: Callable[[Path], None]) -> Path:
    """Write <folder>/findings/ with `write(staging)` beside the old one, then swap it in whole."""
    final = folder / FINDINGS_DIR
    staging = folder / f".{FINDINGS_DIR}.partial"
    old = folder / f".{FINDINGS_DIR}.old"
    for leftover in (staging, old):  # from an interrupted earlier write
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
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
    return final


def write_findings(study_dir: Path) -> Path:
    """Compute the findings of the study in `study_dir` and write <study_dir>/findings/ (replaced whole);
    returns the folder."""
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    parts = compute_findings(study)
    final = _swap_in(study_dir, lambda staging: _write(staging, parts, study))
    failed = [k for k, (_, s) in parts.items() if not s["available"]]
    log.info(f"findings: {final}" + (f" (not available: {', '.join(failed)})" if failed else ""))
    return final


PER_SOURCE = "computed per source: each source's own report (`lowrank-lens report <source>`) has it"


def write_source_findings(paths: list[Path], out: Path) -> Path:
    """The findings of a report over several sources (report/sources.py) in <out>/findings/: the sources
    (label, path, kind, claim verdicts from each one's own findings), each one's headline quantities and
    the differences between them (findings/sources.py). Returns the folder."""
    out = Path(out)
    labels = source_labels(paths)
    studies = [(label, read_source(p)) for label, p in zip(labels, paths, strict=True)]
    found = source_findings(studies)
    listing = []
    for label, p in zip(labels, paths, strict=True):
        own = load_findings(Path(p)) if (Path(p) / FINDINGS_DIR).is_dir() else None
        listing.append({"label": label, "path": str(Path(p).resolve()), "kind": source_kind(Path(p)),
                        "findings": str(own.folder.resolve()) if own is not None else "",
                        "claims": [{k: c.get(k) for k in ("id", "text", "verdict")} for c in own.claims]
                        if own is not None else []})
    ok = {"available": True, "message": ""}
    parts = {p: {"available": False, "message": PER_SOURCE}
             for p in ("seed_summary", "headline", "statistics", "matched", "claims", "setup")}

    def write(staging: Path) -> None:
        write_csv(found["headline"], staging / SOURCE_HEADLINE)
        if found["differences"]:
            write_csv(found["differences"], staging / SOURCE_DIFFERENCES)
        write_json_atomic(staging / INDEX, json_safe({"format": FORMAT, "study": " vs ".join(labels),
                                                      "sources": listing, "parts": parts | {"sources": ok}}))

    out.mkdir(parents=True, exist_ok=True)
    final = _swap_in(out, write)
    log.info(f"findings: {final} ({len(found['differences'])} differences between {len(labels)} sources)")
    return final
