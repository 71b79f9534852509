"""The findings folder: what the study's findings stage (study/findings_stage.py) writes and the report reads.

    <study>/findings/findings.json              format, seeds, each part's status (available, or why not),
                                                the statistics' alpha / CI level / power note, the matched
                                                comparison's lines and notes
                    /seed_summary/<metric>.csv  mean, std, n, CI per group and column, over seeds
                    /headline.csv               per scale and method: final val_ppl and each headline column
                    /pairwise_differences.csv   method pairs over seeds at the final step (Welch, Holm)
                    /matched_checkpoints.csv    each run's checkpoint at its group's matched perplexity
                    /matched_metrics.csv        headline columns there, over seeds
                    /matched_pairwise.csv       and pairwise
                    /claims.json                the claims: id, text, verdict, evidence, values

The layout lives here, below both, because the study writes it and the report only reads it: the report
imports nothing from study/ (tests/test_import_layers.py), so it renders exactly what was computed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.tables import read_csv
from ..errors import LensError

FINDINGS_DIR = "findings"
FORMAT = 1
INDEX = "findings.json"
SEED_SUMMARY_DIR = "seed_summary"
HEADLINE = "headline.csv"
PAIRWISE = "pairwise_differences.csv"
MATCHED_CHECKPOINTS = "matched_checkpoints.csv"
MATCHED_METRICS = "matched_metrics.csv"
MATCHED_PAIRWISE = "matched_pairwise.csv"
CLAIMS = "claims.json"
SETUP = "setup.json"
SOURCE_HEADLINE = "source_headline.csv"
SOURCE_DIFFERENCES = "source_differences.csv"


def json_safe(obj: Any) -> Any:
    """`obj` with NaN / inf as None and tuples as lists, so the file is standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # a numpy / torch scalar
        return json_safe(obj.item())
    return obj


@dataclass
class Findings:
    """One study's findings as written; `path(name)` is a file to link or copy (None when not written)."""

    folder: Path
    index: dict[str, Any]
    claims: list[dict[str, Any]] = field(default_factory=list)

    def status(self, part: str) -> dict[str, Any]:
        return (self.index.get("parts") or {}).get(part) or {
            "available": False, "message": f"the findings hold no '{part}' part (written by an older version?)"}

    def path(self, name: str) -> Path | None:
        p = self.folder / name
        return p if p.is_file() else None

    def rows(self, name: str) -> list[dict[str, Any]]:
        p = self.path(name)
        return read_csv(p) if p is not None else []

    def setup(self) -> dict[str, Any] | None:
        """setup.json: the study's distance from the paper's protocol (findings/setup.py), or None."""
        p = self.path(SETUP)
        return json.loads(p.read_text()) if p is not None else None

    def seed_summary(self, metric: str) -> list[dict[str, Any]]:
        return self.rows(f"{SEED_SUMMARY_DIR}/{metric}.csv")


def missing_message(study_dir: Path) -> str:
    return (f"no findings in {Path(study_dir) / FINDINGS_DIR} (the study's findings stage computes the statistics "
            f"and claims: `lowrank-lens study {study_dir} --stages report`)")


def load_findings(study_dir: Path) -> Findings | None:
    """The study's findings, or None when the findings stage has not run. A findings folder that cannot
    be read is an error that says so (never rendered as if it had no findings)."""
    folder = Path(study_dir) / FINDINGS_DIR
    if not (folder / INDEX).is_file():
        return None
    try:
        index = json.loads((folder / INDEX).read_text())
        claims = json.loads((folder / CLAIMS).read_text())["claims"] if (folder / CLAIMS).is_file() else []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LensError(f"the findings in {folder} are unreadable ({type(e).__name__}: {e}); recompute them with "
                        f"`lowrank-lens study {study_dir} --stages report`") from e
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else "?"
        raise LensError(f"the findings in {folder} have format {got}, this version reads {FORMAT}; recompute them "
                        f"with `lowrank-lens study {study_dir} --stages report`")
    return Findings(folder, index, claims if isinstance(claims, list) else [])
