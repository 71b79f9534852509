"""Which checkpoint of each run to compare: matched validation perplexity, equal steps, or equal tokens.

The paper's first claim (docs/study.md §3.1 item 1, §5 item 3) is that low-rank methods differ from full-rank
and from one another "even when validation perplexity is close". Comparing every method at its final step
mixes that question with "which method trained further": a better-trained solution may be sharper or more
separated just because it is further along. So, per group of runs that share a scale and seed:

- `matched_checkpoints`: the target is the worst (highest) final validation perplexity among the group's
  methods (every method reaches it, the worst one at its end), or a given value; each run contributes the
  checkpoint whose val_ppl is closest to the target (ties -> the earlier step), with the absolute and
  relative gap, and whether the run's checkpoints reach the target at all.
- `equal_step_checkpoints` / `equal_token_checkpoints`: the largest step (token count) every run of the
  group has (or a given one), and each run's checkpoint closest to it.
- `select_rows`: the metric rows at the matched checkpoints, tagged with the criterion (`match`) so the
  statistics can group methods at their matched steps (statistics.seed_summary / pairwise_differences
  with `match` in place of `step`); `describe_matches` says how close each match is, for the report.

Run records: dicts with run, method, scale, seed, is_baseline, final_val_ppl and checkpoints, a list of
{step, tokens, val_ppl} (a missing or NaN val_ppl leaves that checkpoint out of the perplexity match).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import LensError

WORST_FINAL = "worst-final"
GROUP_BY = ("scale", "seed")
CRITERIA = ("val_ppl", "step", "tokens")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _final_ppl(run: dict[str, Any]) -> float | None:
    """final_val_ppl, else the val_ppl of the last checkpoint that has one."""
    v = _num(run.get("final_val_ppl"))
    if v is not None:
        return v
    for c in sorted(run.get("checkpoints") or [], key=lambda c: c["step"], reverse=True):
        if (v := _num(c.get("val_ppl"))) is not None:
            return v
    return None


def _group_runs(runs: Sequence[dict[str, Any]], by: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    if not runs:
        raise LensError("no run records given; pass the runs of the study (run, method, scale, seed, checkpoints)")
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        missing = [k for k in ("run", "method", "checkpoints") if k not in r]
        if missing:
            raise LensError(f"run record {r.get('run', r)!r} lacks {', '.join(missing)}")
        out.setdefault(tuple(r.get(k) for k in by), []).append(r)
    return out


def _closest(run: dict[str, Any], key: str, target: float) -> dict[str, Any] | None:
    """The checkpoint whose `key` is closest to target; ties go to the earlier step."""
    cands = [(abs(v - target), int(c["step"]), c) for c in run["checkpoints"] if (v := _num(c.get(key))) is not None]
    if not cands:
        return None
    return min(cands, key=lambda t: (t[0], t[1]))[2]


def _match_row(run: dict[str, Any], criterion: str, target: float, source: str) -> dict[str, Any]:
    row = {"run": run["run"], "method": run["method"], "scale": run.get("scale"), "seed": run.get("seed"),
           "is_baseline": bool(run.get("is_baseline")), "criterion": criterion, "target": target,
           "target_source": source}
    c = _closest(run, criterion, target)
    if c is None:
        return row | {"step": None, "tokens": None, "val_ppl": None, "gap": math.nan, "abs_gap": math.nan,
                      "rel_gap": math.nan, "note": f"no checkpoint with a {criterion} value"}
    v = float(c[criterion])
    gap = v - target
    row |= {"step": int(c["step"]), "tokens": c.get("tokens"), "val_ppl": _num(c.get("val_ppl")), "gap": gap,
            "abs_gap": abs(gap), "rel_gap": abs(gap) / abs(target) if target else math.nan, "note": ""}
    if criterion == "val_ppl":
        lowest = min(float(x["val_ppl"]) for x in run["checkpoints"] if _num(x.get("val_ppl")) is not None)
        row["reached"] = lowest <= target
        if not row["reached"]:
            row["note"] = f"never reaches the target (best val_ppl {lowest:.4g})"
    return row


def matched_checkpoints(run_records: Sequence[dict[str, Any]], target: str | float = WORST_FINAL,
                        by: Sequence[str] = GROUP_BY) -> list[dict[str, Any]]:
    """Per group of `by` (scale, seed), each run's checkpoint with val_ppl closest to the target.

    target 'worst-final': the highest final val_ppl among the group's runs (target_source names that run);
    a number: that perplexity for every group. Rows: run, method, scale, seed, is_baseline, criterion
    ('val_ppl'), target, target_source, step, tokens, val_ppl, gap (val_ppl - target), abs_gap, rel_gap
    (abs_gap / target), reached (some checkpoint at or below the target) and note.
    """
    out = []
    for _, runs in _group_runs(run_records, by).items():
        if target == WORST_FINAL:
            finals = [(p, r["run"]) for r in runs if (p := _final_ppl(r)) is not None]
            if not finals:
                raise LensError(f"no final val_ppl in runs {', '.join(r['run'] for r in runs)}; cannot pick the "
                                f"worst-final target (give a number instead)")
            value, worst = max(finals)
            source = f"{WORST_FINAL} ({worst})"
        else:
            value = _num(target)
            if value is None or value <= 0:
                raise LensError(f"target {target!r} must be {WORST_FINAL!r} or a positive perplexity")
            source = "given"
        out += [_match_row(r, "val_ppl", value, source) for r in runs]
    return out


def _equal(run_records: Sequence[dict[str, Any]], key: str, value: float | None,
           by: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for gkey, runs in _group_runs(run_records, by).items():
        if value is None:
            have = [{v for c in r["checkpoints"] if (v := _num(c.get(key))) is not None} for r in runs]
            common = set.intersection(*have) if all(have) else set()
            if not common:
                raise LensError(f"runs {', '.join(r['run'] for r in runs)} ({dict(zip(by, gkey, strict=True))}) "
                                f"share no {key}; give the {key} to compare at")
            target, source = max(common), f"largest common {key}"
        else:
            target, source = float(value), "given"
        out += [_match_row(r, key, target, source) for r in runs]
    return out


def equal_step_checkpoints(run_records: Sequence[dict[str, Any]], step: int | None = None,
                           by: Sequence[str] = GROUP_BY) -> list[dict[str, Any]]:
    """Per group, each run's checkpoint at (closest to) `step`, default the largest step all its runs have.
    Same row layout as matched_checkpoints with criterion 'step'."""
    return _equal(run_records, "step", step, by)


def equal_token_checkpoints(run_records: Sequence[dict[str, Any]], tokens: int | None = None,
                            by: Sequence[str] = GROUP_BY) -> list[dict[str, Any]]:
    """Per group, each run's checkpoint at (closest to) `tokens` seen, default the largest count all its
    runs have (runs with different batch sizes reach a token count at different steps)."""
    return _equal(run_records, "tokens", tokens, by)


def select_rows(rows: Sequence[dict[str, Any]], matches: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metric rows whose (run, step) is a match, as copies tagged match = 'matched <criterion>' and
    match_gap = the match's gap. For a pair row (other_run set) the other run must be matched at the same
    step too. Group the result by `match` instead of `step` (the matched steps differ between methods)."""
    at = {(m["run"], m["step"]): m for m in matches if m.get("step") is not None}
    out = []
    for r in rows:
        m = at.get((r.get("run"), r.get("step")))
        if m is None:
            continue
        other = r.get("other_run")
        if other is not None and r.get("kind") == "pair" and (other, r.get("step")) not in at \
                and any(x["run"] == other for x in matches):
            continue  # the other run is matched elsewhere: this pair is not at both matched checkpoints
        out.append({**r, "match": f"matched {m['criterion']}", "match_gap": m["gap"]})
    return out


def describe_matches(matches: Sequence[dict[str, Any]]) -> list[str]:
    """One line per match saying how close it is, for the report."""
    lines = []
    for m in matches:
        where = f"{m['run']} ({m['method']}, {m.get('scale')}, seed {m.get('seed')})"
        if m.get("step") is None:
            lines.append(f"{where}: no match ({m['note']})")
            continue
        target = f"{m['criterion']} target {m['target']:.6g} [{m['target_source']}]"
        got = f"step {m['step']}, tokens {m.get('tokens')}, val_ppl {m['val_ppl']:.4g}" \
            if m.get("val_ppl") is not None else f"step {m['step']}, tokens {m.get('tokens')}"
        gap = f"gap {m['gap']:+.4g} ({100 * m['rel_gap']:.2f}%)" if math.isfinite(m["rel_gap"]) else \
            f"gap {m['gap']:+.4g}"
        lines.append(f"{where}: {target} -> {got}; {gap}" + (f"; {m['note']}" if m.get("note") else ""))
    return lines
