"""`lowrank-lens report`: the findings, then the page, of one study or of several sources side by side.

    report_sources([Path("studies/demo")], None)                       -> studies/demo/report/index.html
    report_sources([Path("a"), Path("b")], Path("a-vs-b"))             -> a-vs-b/report/index.html

The findings stage computes (findings_stage.write_findings / write_source_findings) and the report renders
(report/), as in a study's own stages; this module only checks the sources and the output folder first.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LensError
from ..report import write_report
from ..report.sources import source_kind
from .findings_stage import write_findings, write_source_findings


def _check_out(sources: list[Path], out: Path) -> None:
    """The combined report's folder must be new ground: not a study or run folder, not inside a source and
    not holding one (a source's own report or findings would be overwritten, or swept by its next report)."""
    resolved = [Path(p).resolve() for p in sources]
    target = Path(out).resolve()
    for src, path in zip(sources, resolved, strict=True):
        if target == path or target.is_relative_to(path) or path.is_relative_to(target):
            raise LensError(f"--out {out} is inside source {src} or holds it; give a folder of its own for the "
                            f"combined report")
    if target.is_dir():
        try:
            kind = source_kind(target)
        except LensError:
            return
        raise LensError(f"--out {out} is a {kind} folder; give a new folder for the combined report")


def report_sources(sources: list[Path], out: Path | None) -> Path:
    """One study's report (its findings recomputed first) when `out` is None, else the report over all
    `sources` in `out`; returns the page."""
    sources = [Path(p) for p in sources]
    for p in sources:
        if not p.is_dir():
            raise LensError(f"report source {p} does not exist; give study folders, run folders or imported series")
    if len(sources) == 1 and out is None:
        if source_kind(sources[0]) != "study":
            raise LensError(f"{sources[0]} is a run folder: give --out DIR for its report (or several sources)")
        write_findings(sources[0])
        return write_report(sources[0])
    if out is None:
        raise LensError(f"{len(sources)} sources need --out DIR, the folder their report is written to")
    if len({p.resolve() for p in sources}) < len(sources):
        raise LensError("a source is given twice; give each study, run folder or imported series once")
    _check_out(sources, out)
    write_source_findings(sources, out)
    return write_report(out)
