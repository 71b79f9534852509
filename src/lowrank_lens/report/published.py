"""Published C4 validation perplexities beside the user's runs (published_ppl.json, docs/methods.md §7).

The file lists, per method, the perplexities one paper table reports at the study scales (60m-1b) and the
table's setup; a number is there only when its table was read, never recalled. Every source measures the
reference repositories' way (`val_ppl_reference`), so the report puts a published number beside the run's
val_ppl_ref, and says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ..errors import LensError

FILE = "published_ppl.json"


@dataclass(frozen=True)
class Published:
    method: str
    scale: str
    ppl: float
    cite: str
    """Short citation for a table cell, e.g. 'GaLore T2'."""
    paper: str
    setup: str
    note: str = ""

    @property
    def cell(self) -> str:
        return f"{self.ppl:.2f} ({self.cite})"


def _check(data: Any) -> dict[tuple[str, str], Published]:
    """(method, scale) -> Published, with every entry's source resolved; a malformed file is a LensError."""
    try:
        sources, out = data["sources"], {}
        for entry in data["values"]:
            src = sources[entry["source"]]
            for scale, ppl in entry["ppl"].items():
                if not isinstance(ppl, (int, float)) or isinstance(ppl, bool) or not ppl > 1:
                    raise ValueError(f"{entry['method']} {scale}: perplexity {ppl!r} is not a number > 1")
                key = (str(entry["method"]), str(scale))
                if key in out:
                    raise ValueError(f"{key} is listed twice")
                out[key] = Published(*key, float(ppl), src["cite"], src["paper"], src["setup"],
                                     entry.get("note", ""))
    except (KeyError, TypeError, ValueError) as e:
        raise LensError(f"{FILE} in the installed package is malformed ({type(e).__name__}: {e}); "
                        "reinstall lowrank-lens") from None
    return out


@cache
def published() -> dict[tuple[str, str], Published]:
    """Every published value of the packaged file, keyed by (method, scale)."""
    try:
        text = (resources.files(__package__) / FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as e:
        raise LensError(f"{FILE} is missing from the installed package ({e}); reinstall lowrank-lens") from e
    data = json.loads(text)
    if data.get("definition") != "val_ppl_reference":
        raise LensError(f"{FILE}: its numbers must be in the reference definition (val_ppl_reference)")
    return _check(data)


def published_for(method: str | None, scale: str | None) -> Published | None:
    """The published perplexity of `method` at `scale`, or None (no entry, or not a study scale)."""
    return published().get((str(method), str(scale)))


def sources_note(used: list[Published]) -> str:
    """One sentence per source cited in a table: the paper and its setup (which differs from the user's)."""
    seen: dict[str, Published] = {}
    for p in used:
        seen.setdefault(p.cite, p)
    parts = [f"{p.cite} = {p.paper} ({p.setup})" for p in seen.values()]
    notes = sorted({f"{p.method}: {p.note}" for p in used if p.note})
    return ("Published: the C4 validation perplexity a paper reports for the method at the run's scale, in the "
            "reference definition, so compare it with val_ppl_ref; single published runs under the source's own "
            "setup, not the user's. " + "; ".join(parts) + (". Notes: " + "; ".join(notes) if notes else "") + ".")
