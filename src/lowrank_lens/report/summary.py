"""The report's summary block, the first thing on the page: the findings before the details.

Three parts, each read from what the study's findings stage computed (nothing is computed or decided here):
  - the claims as a verdict table, with a small interval plot per claim (the seed means and the ranges its
    verdict compared; findings/claims.py's Claim.values), and a link to the claim's evidence below;
  - each method's headline metric columns (Metric.headline) beside its final validation perplexity,
    over seeds at each run's final step;
  - the pairwise differences at matched perplexity that the statistics claim (verdict 'different'), per
    headline column, with how many pairs were compared.
The interval plots are inline SVG drawn by the template from coordinates computed here, so the page stays
one offline file and every label is escaped like any other text.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..findings.common import finite
from .collect import Study, method_colour
from .findings_files import HEADLINE, Findings
from .html import fmt

STATS_KEYS = frozenset(("mean", "n", "ci_low", "ci_high"))
"""The keys that mark a statistics.Stats.as_dict() inside a claim's values."""
CLAIM_PLOTS: dict[int, tuple[str | None, str, bool]] = {
    1: (None, "ES_rand (es)", False),
    2: (None, "ES_pca1", False),
    3: ("imib", "IMIB per pair", True),
    4: ("depth", "decrease with depth", True),
    5: ("cka_mean", "CKA to the baseline (mean over layers)", False),
    6: ("acc", "mean downstream accuracy", False),
    8: ("final_val_ppl", "final val_ppl", False),
}
"""claim id -> (the key of Claim.values to plot, or None for all its Stats; the quantity's name; whether
the claim compares with 0, so the axis shows 0). A claim missing here, or whose key matches nothing, plots
every Stats in its values; a claim without Stats (claim 7: permutation p-values) has no plot."""
PLOT = {"width": 270, "label": 98, "pitch": 9, "axis": 13, "right": 8}
"""Interval plot geometry in px: total width, label column, row pitch, axis band, right margin."""


@dataclass
class IntervalRow:
    label: str
    title: str
    y: float
    x_mean: float
    x_low: float
    x_high: float
    line: str
    dot: str


@dataclass
class IntervalPlot:
    """One claim's intervals in SVG coordinates (the template draws them)."""

    caption: str
    width: int
    height: int
    x0: float
    x1: float
    rows: list[IntervalRow]
    ticks: list[tuple[float, str]]
    zero: float | None = None
    single_seed: bool = False


def stats_leaves(values: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every Stats dict in a claim's nested values, with the keys leading to it."""
    if isinstance(values, dict):
        if STATS_KEYS <= values.keys():
            yield path, values
            return
        for k, v in values.items():
            yield from stats_leaves(v, (*path, str(k)))


def _colours(name: str) -> tuple[str, str]:
    """(line, dot) colours of a row: a method's colour, or for a pair 'a | b' the line in a's colour and the
    dot in b's; grey when the name is no method."""
    if " | " in name:
        a, b = name.split(" | ", 1)
        return method_colour(a), method_colour(b)
    c = method_colour(name)
    return c, c


def interval_plot(claim_id: int, values: Any) -> IntervalPlot | None:
    """The claim's seed means and ranges (95% CI; the point with one seed) as plot coordinates, or None
    when its values hold no Stats."""
    focus, caption, zero = CLAIM_PLOTS.get(claim_id, (None, "", False))
    leaves = [(p, s) for p, s in stats_leaves(values) if finite(s.get("mean"))]
    if focus is not None and any(focus in p for p, _ in leaves):
        leaves = [(p, s) for p, s in leaves if focus in p]
    if not leaves:
        return None
    # a row is named by its last key other than the plotted quantity (the method or pair: it also picks the
    # colour), preceded by the other keys that tell the rows apart (the scale, with several scales)
    names = [next((k for k in reversed(p) if k != focus), "") for p, _ in leaves]
    depth = max(len(p) for p, _ in leaves)
    varying = [i for i in range(depth) if len({p[i] if i < len(p) else "" for p, _ in leaves}) > 1]
    spans = []
    for _, s in leaves:
        lo, hi = (s["ci_low"], s["ci_high"]) if s.get("n", 0) >= 2 and finite(s.get("ci_low")) \
            and finite(s.get("ci_high")) else (s["mean"], s["mean"])
        spans.append((float(lo), float(hi)))
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    if zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        pad = abs(hi) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    pad = 0.04 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    g = PLOT
    x0, x1 = float(g["label"]), float(g["width"] - g["right"])

    def x(v: float) -> float:
        return round(x0 + (v - lo) / (hi - lo) * (x1 - x0), 2)

    rows = []
    for i, ((parts, s), (a, b), name) in enumerate(zip(leaves, spans, names, strict=True)):
        label = " ".join([parts[j] for j in varying if j < len(parts) and parts[j] != name] + [name])
        line, dot = _colours(name)
        n = int(s.get("n", 0))
        rng = f" [{fmt(a)}, {fmt(b)}]" if n >= 2 and a != b else ""
        rows.append(IntervalRow(label, f"{' '.join(parts)}: {fmt(float(s['mean']))}{rng} (n={n})",
                                g["pitch"] * i + g["pitch"] / 2 + 1, x(float(s["mean"])), x(a), x(b), line, dot))
    height = g["pitch"] * len(rows) + g["axis"] + 2
    lo_t, hi_t = lo + pad, hi - pad
    ticks = [(x(lo_t), fmt(lo_t)), (x(hi_t), fmt(hi_t))]
    return IntervalPlot(caption, g["width"], height, x0, x1, rows, ticks, x(0.0) if lo <= 0 <= hi else None,
                        all(int(s.get("n", 0)) < 2 for _, s in leaves))


def verdict_rows(claims: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary's verdict table: id, text, verdict, plot (or None) per claim (the findings' claims)."""
    return [{"id": c["id"], "text": c["text"], "verdict": c["verdict"],
             "plot": interval_plot(int(c["id"]), c.get("values") or {})} for c in claims]


# --------------------------------------------------------------------------- headline metrics per method


def mean_pm(mean: float, half: float) -> str:
    """'mean ± half' with the half-width to 2 significant digits and the mean to the same decimal place
    (the digits the seed spread leaves meaningful): 267.4, 22.47 -> '267 ± 22'."""
    if not (math.isfinite(mean) and math.isfinite(half)) or half <= 0:
        return fmt(mean)
    place = 1 - math.floor(math.log10(half))  # the decimal place of the half-width's 2nd significant digit
    if place > 6 or abs(mean) >= 1e6:  # fixed decimals would be too many digits: keep it short
        return f"{mean:.3g} ± {half:.2g}"
    decimals = max(place, 0)
    return f"{round(mean, place):.{decimals}f} ± {round(half, place):.{decimals}f}"


def _cell(stats: dict[str, Any] | None) -> str:
    """'mean ± CI half-width' of one headline entry; the mean alone with one seed; '' for none."""
    if not stats or not stats.get("n"):
        return ""
    mean, lo, hi = (float(stats[k]) if finite(stats.get(k)) else math.nan for k in ("mean", "ci_low", "ci_high"))
    if int(stats["n"]) < 2 or not math.isfinite(hi):
        return fmt(mean)
    return mean_pm(mean, (hi - lo) / 2)


def headline_table(study: Study, findings: Findings) -> dict[str, Any]:
    """Methods as columns (baseline first), and as rows the final val_ppl then each metric's headline column
    at the final step (per scale, with several), each cell mean ± 95% CI half-width over seeds (the mean
    alone with one seed), from the findings' headline table. Metrics over pairs of methods have no
    per-method value and are left to their sections. Methods run across, so the table stays narrow however
    many metrics."""
    records = study.records
    entries = findings.rows(HEADLINE)
    cell = {(str(e.get("scale")), str(e.get("metric") or ""), str(e.get("method"))): e for e in entries}
    scales = sorted({str(r["scale"]) for r in records})
    methods = list(dict.fromkeys(r["method"] for r in sorted(records, key=lambda r: not r["is_baseline"])))
    defs = {md.name: md.cls.definition for md in study.metrics}
    metrics = list(dict.fromkeys((str(e["metric"]), str(e["column"])) for e in entries if e.get("metric")))
    rows = []
    for scale in scales:
        at = f" ({scale})" if len(scales) > 1 else ""
        rows.append({"label": f"final val_ppl{at}", "metric": "", "title": "validation perplexity at the final "
                     "checkpoint (token-weighted)", "cells": [_cell(cell.get((scale, "", m))) for m in methods]})
        for name, column in metrics:
            rows.append({"label": f"{column}{at}", "metric": name, "title": defs.get(name, ""),
                         "cells": [_cell(cell.get((scale, name, m))) for m in methods]})
    runs = {m: len([r for r in records if r["method"] == m]) for m in methods}
    same = len(set(runs.values())) == 1
    each = f" ({next(iter(runs.values()))} run{'s' * (next(iter(runs.values())) != 1)} per method)" if same else ""
    return {"methods": [(m, method_colour(m), "" if same else f"{runs[m]} runs") for m in methods], "rows": rows,
            "caption": f"Mean ± 95% CI half-width over seeds at each run's final step{each}; the value alone with "
                       f"one seed. Hover a row for the metric's definition; its section has the full table."}


# --------------------------------------------------------------------------- matched-perplexity differences


def matched_rows(pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per headline column (and scale): how many method pairs were compared at matched perplexity, how many
    differ (verdict 'different'), and the methods ordered by their mean there, highest first, each step
    marked '>' when that adjacent pair differs and '≈' when its difference is not claimed."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in pairs:
        groups.setdefault((str(p.get("column")), str(p.get("scale"))), []).append(p)
    several = len({sc for _, sc in groups}) > 1
    out = []
    for (col, scale), ps in groups.items():
        means: dict[str, float] = {}
        verdict: dict[frozenset, str] = {}
        for p in ps:
            means.setdefault(str(p["method_a"]), float(p.get("mean_a", math.nan)))
            means.setdefault(str(p["method_b"]), float(p.get("mean_b", math.nan)))
            verdict[frozenset((str(p["method_a"]), str(p["method_b"])))] = str(p.get("verdict"))
        ranked = sorted((m for m in means if math.isfinite(means[m])), key=lambda m: -means[m])
        chain = [(m, method_colour(m), "" if i == 0 else (
            ">" if verdict.get(frozenset((ranked[i - 1], m))) == "different" else "≈"))
            for i, m in enumerate(ranked)]
        out.append({"column": col + (f" ({scale})" if several else ""),
                    "different": sum(p.get("verdict") == "different" for p in ps), "compared": len(ps),
                    "chain": chain})
    return out


def matched_summary(matched: dict[str, Any], seeds: int) -> dict[str, Any]:
    """The matched-perplexity part of the summary, from matched_section's context."""
    if not matched.get("available"):
        return {"rows": [], "lines": [f"Not available: {matched.get('message', '')}"]}
    lines = []
    gaps = [m for m in matched.get("rows", []) if finite(m.get("rel_gap"))]
    if gaps:
        worst = max(gaps, key=lambda m: abs(m["rel_gap"]))
        lines.append(f"Each run is read at its checkpoint closest to the worst final val_ppl of its scale and seed; "
                     f"the largest relative gap is {100 * worst['rel_gap']:+.1f}% ({worst['run']}).")
    rows = matched_rows(matched.get("pairs", [])) if seeds >= 2 else []
    if seeds < 2:
        lines.append("Single seed: no difference at matched perplexity can be claimed.")
    elif not rows:
        lines.append("No metric row lies at the matched checkpoints (analyse every checkpoint to compare there).")
    return {"rows": rows, "lines": lines}


def summary(study: Study, findings: Findings | None, claims: dict[str, Any], matched: dict[str, Any]
            ) -> dict[str, Any]:
    """The summary block's context from the study, its findings and the claims / matched sections' contexts."""
    records = study.records
    methods = sorted({r["method"] for r in records})
    scales = sorted({str(r["scale"]) for r in records})
    seeds = study.seeds
    lede = (f"{len(records)} runs: {len(methods)} methods × {len(scales)} scale{'s' * (len(scales) > 1)} "
            f"({', '.join(scales)}) × {len(seeds)} seed{'s' * (len(seeds) > 1)}, final checkpoints; a verdict compares "
            f"seed means and 95% CIs (dot, bar; hover), and overlapping ranges read 'inconclusive'."
            + (" One seed: points only, compared as they are." if len(seeds) < 2 else ""))
    head_ok = findings is not None and findings.status("headline").get("available")
    setup = findings.setup() if findings is not None else None
    if setup is not None:
        setup.setdefault("short", setup.get("line", ""))
    return {"lede": lede, "setup": setup,
            "claims": verdict_rows(claims.get("objects", [])) if claims.get("available") else [],
            "claims_message": "" if claims.get("available") else claims.get("message", ""),
            "headline": headline_table(study, findings) if records and head_ok else None,
            "matched": matched_summary(matched, len(seeds))}
