"""The claims check: each checkable claim of docs/study.md §5, evaluated on the user's runs, with its evidence.

Verdicts: 'holds', 'does not hold', 'inconclusive'. Every comparison uses, per scale, the final step of each
run (the largest step a metric was computed at; the step is in the evidence) and, over seeds, the mean and
its range from statistics.interval: the 95% CI (spread='ci', default), mean +- std ('std') or the point
('none'); with one seed the range is the point, so single-seed orderings are taken as they are (the evidence
says n=1). An ordering whose ranges overlap is within the seed spread: 'inconclusive', never claimed.
A claim holds when every comparison it makes goes its way, does not hold when one goes decisively the
other way, and is inconclusive otherwise or when its data are missing (the reason is the evidence).

The claims' texts, and the methods claims 5 and 8 name, live in claims.json (verdicts.py reads it; method
names stay out of code outside methods/, docs/design.md convention 2); `names` overrides the named methods.
The baseline is whichever run says is_baseline. Inputs: metric rows (runner.analyze), run records
(run, method, scale, seed, is_baseline, final_val_ppl, checkpoints), and optionally per-layer similarity
arrays {(run, step): [L+1]} (claim 4), downstream rows (run, task, acc; claim 6) and a
prediction.PredictionResult (claim 7).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from ..errors import LensError
from .common import final_rows, finite
from .statistics import ALPHA, interval, order
from .verdicts import (
    FAILS,
    HOLDS,
    UNSURE,
    VERDICTS,
    ZERO,
    Claim,
    baselines,
    claim_texts,
    combine,
    expect,
    fmt_stats,
    method_absent,
    missing,
    stats_by_scale,
    steps_text,
)

__all__ = ["FAILS", "HOLDS", "UNSURE", "VERDICTS", "Claim", "check_claims", "claim_texts"]


# --------------------------------------------------------------------------- claims 1, 2: sharpness


def _baseline_vs_lowrank(cid: int, rows, runs, metric: str, column: str, rel: str, spread: str) -> Claim:
    """Baseline `rel` every low-rank method on `column` at each scale (rel '>' claim 1, '<' claim 2)."""
    base = baselines(runs)
    if not base:
        return missing(cid, "no baseline run (is_baseline) among the runs")
    fr = final_rows(rows, metric=metric)
    table = stats_by_scale(fr, column)
    if not table:
        return missing(cid, f"no {metric} rows with {column}; run `analyze` with metric {metric}")
    parts, lines, values = [], [], {}
    for scale, by_m in sorted(table.items()):
        b = next((by_m[m] for m in base if m in by_m), None)
        others = {m: s for m, s in by_m.items() if m not in base}
        values[scale] = {m: s.as_dict() for m, s in by_m.items()}
        if b is None or not others:
            lines.append(f"{scale}: skipped (needs the baseline and a low-rank method)")
            continue
        bname = next(m for m in base if m in by_m)
        for m, s in sorted(others.items()):
            v = expect(b, s, rel, spread)
            parts.append(v)
            lines.append(f"{scale}: {bname} {column} {fmt_stats(b, spread)} vs {m} {fmt_stats(s, spread)} -> {v}")
    if not parts:
        return missing(cid, "; ".join(lines) or f"no scale with {column} for both sides", **values)
    return Claim(cid, claim_texts()[cid]["text"], combine(parts), f"{column} at {steps_text(fr)}: " + "; ".join(lines),
                 values)


# --------------------------------------------------------------------------- claim 3: distinct basins


def _claim3(rows, runs, spread: str) -> Claim:
    parts, lines, values = [], [], {"imib": {}, "distinct": {}, "final_val_ppl": {}}
    im = final_rows(rows, metric="imib")
    pair = lambda r: " | ".join(sorted((str(r.get("method")), str(r.get("other_method")))))  # noqa: E731
    skipped = sorted({f"{r.get('scale')} {pair(r)}: {r['skipped']}"
                      for r in final_rows(rows, metric="imib", skipped=True)})
    table = stats_by_scale(im, "imib", pair)
    if not table:
        parts.append(UNSURE)
        lines.append("no computed imib rows" + (" (all skipped)" if skipped else ""))
    for scale, by_p in sorted(table.items()):
        for p, s in sorted(by_p.items()):
            v = expect(s, ZERO, ">", spread)
            parts.append(v)
            values["imib"].setdefault(scale, {})[p] = s.as_dict()
            lines.append(f"{scale}: IMIB {p} {fmt_stats(s, spread)} > 0 -> {v}")
    if skipped:
        lines.append("skipped pairs: " + "; ".join(skipped))
    base = baselines(runs)
    lr = [r for r in final_rows(rows, metric="landscape_random") if r.get("method") not in base]
    es, dv = stats_by_scale(lr, "es"), stats_by_scale(lr, "dv")
    if not es:
        parts.append(UNSURE)
        lines.append("no landscape_random rows (es, dv) for the low-rank methods")
    for scale in sorted(es):
        for a, b in itertools.combinations(sorted(es[scale]), 2):
            apart = [c for c, t in (("es", es), ("dv", dv)) if a in t.get(scale, {}) and b in t.get(scale, {})
                     and order(t[scale][a], t[scale][b], spread) != "~"]
            parts.append(HOLDS if apart else UNSURE)
            values["distinct"].setdefault(scale, {})[f"{a} | {b}"] = apart
            lines.append(f"{scale}: {a} vs {b} distinct on {', '.join(apart) if apart else 'neither es nor dv'}")
    ppl = stats_by_scale([{**r, "ppl": r.get("final_val_ppl")} for r in runs], "ppl")
    values["final_val_ppl"] = {sc: {m: s.as_dict() for m, s in d.items()} for sc, d in ppl.items()}
    if ppl:
        per = (f"{sc} " + ", ".join(f"{m} {s.mean:.4g}" for m, s in sorted(d.items())) for sc, d in sorted(ppl.items()))
        lines.append("final val_ppl: " + "; ".join(per))
    return Claim(3, claim_texts()[3]["text"], combine(parts), "; ".join(lines), values)


# --------------------------------------------------------------------------- claim 4: depth and step


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:

    if len(x) < 2 or np.ptp(np.asarray(y, float)) == 0 or np.ptp(np.asarray(x, float)) == 0:
        return 0.0
    if len(x) == 2:
        return float(np.sign((x[1] - x[0]) * (y[1] - y[0])))
    return float(stats.spearmanr(x, y).statistic)


def _claim4(rows, runs, per_layer, similarity: str, spread: str) -> Claim:
    info = {r["run"]: r for r in runs}
    base = baselines(runs)
    series: dict[str, dict[int, tuple[float, float]]] = {}  # run -> step -> (depth decrease, drop)
    if per_layer:
        source = f"per-layer {similarity}: depth = -Spearman(layer, similarity), drop = first - last layer"
        for (run, step), arr in per_layer.items():
            a = np.asarray(arr, float)
            if run in info and info[run]["method"] not in base and a.size >= 2 and np.all(np.isfinite(a)):
                series.setdefault(run, {})[int(step)] = (-_spearman(range(a.size), a), float(a[0] - a[-1]))
    else:
        mean, last = f"{similarity}_mean", f"{similarity}_last"
        source = f"no per-layer arrays; proxy from rows: depth = drop = {mean} - {last}"
        for r in rows:
            if r.get("metric") == "activation_similarity" and not r.get("skipped") and finite(r.get(mean)) \
                    and finite(r.get(last)) and r.get("run") in info and r.get("method") not in base:
                d = float(r[mean]) - float(r[last])
                series.setdefault(r["run"], {})[int(r["step"])] = (d, d)
    if not series:
        return missing(4, f"no activation similarity ({similarity}) of a low-rank run to the baseline")
    per_run = []
    for run, by_step in series.items():
        steps = sorted(by_step)
        trend = _spearman(steps, [by_step[s][1] for s in steps]) if len(steps) >= 2 else math.nan
        per_run.append({"run": run, "method": info[run]["method"], "scale": info[run].get("scale"),
                        "depth": by_step[steps[-1]][0], "trend": trend, "step": steps[-1], "n_steps": len(steps)})
    parts, lines, values = [], [source], {}
    depth, trend = stats_by_scale(per_run, "depth"), stats_by_scale(per_run, "trend")
    for scale in sorted(depth):
        for m in sorted(depth[scale]):
            d, t = depth[scale][m], trend.get(scale, {}).get(m)
            vd = expect(d, ZERO, ">", spread)
            vt = expect(t, ZERO, ">", spread) if t is not None else UNSURE
            parts += [vd, vt]
            values.setdefault(scale, {})[m] = {"depth": d.as_dict(), "trend": t.as_dict() if t else None}
            growth = f"Spearman {fmt_stats(t, spread)} > 0 -> {vt}" if t else "needs >= 2 steps -> inconclusive"
            lines.append(f"{scale} {m}: decrease with depth {fmt_stats(d, spread)} > 0 -> {vd}; growth with step "
                         + growth)
    values["runs"] = per_run
    return Claim(4, claim_texts()[4]["text"], combine(parts), "; ".join(lines), values)


# --------------------------------------------------------------------------- claim 5: the closest method


CLOSEST = (("cka_mean", ">"), ("cosine_mean", ">"), ("l2_mean", "<"), ("cka_last", ">"), ("cosine_last", ">"),
           ("l2_last", "<"))
"""activation_similarity column, and how the named method must compare with each other low-rank method."""


def _claim5(rows, runs, expected: str, spread: str) -> Claim:
    absent = method_absent(5, expected, runs, expected=expected)
    if absent:
        return absent
    base = baselines(runs)
    fr = [r for r in final_rows(rows, metric="activation_similarity") if r.get("method") not in base]
    if not fr:
        return missing(5, "no activation_similarity rows of low-rank runs vs the baseline")
    parts, lines, values = [], [], {"expected": expected}
    for col, rel in CLOSEST:
        for scale, by_m in sorted(stats_by_scale(fr, col).items()):
            values.setdefault(col, {})[scale] = {m: s.as_dict() for m, s in by_m.items()}
            if expected not in by_m or len(by_m) < 2:
                lines.append(f"{scale} {col}: needs {expected} and another low-rank method")
                continue
            e = by_m[expected]
            ranks = sorted(by_m, key=lambda m: -by_m[m].mean if rel == ">" else by_m[m].mean)
            vs = [expect(e, s, rel, spread) for m, s in by_m.items() if m != expected]
            parts.append(combine(vs))
            lines.append(f"{scale} {col}: {expected} {fmt_stats(e, spread)}, order " + " > ".join(ranks)
                         + f" -> {combine(vs)}")
    if not parts:
        return missing(5, "; ".join(lines), **values)
    return Claim(5, claim_texts()[5]["text"], combine(parts), f"{steps_text(fr)}: " + "; ".join(lines), values)


# --------------------------------------------------------------------------- claim 6: ppl vs downstream


def _claim6(runs, downstream, spread: str) -> Claim:

    if not downstream:
        return missing(6, "no downstream results")
    info = {r["run"]: r for r in runs}
    by_scale: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_scale.setdefault(str(r.get("scale")), []).append(r)
    parts, lines, values = [], [], {}
    for scale, rs in sorted(by_scale.items()):
        accs = {r["run"]: {d["task"]: float(d["acc"]) for d in downstream
                           if d.get("run") == r["run"] and finite(d.get("acc"))} for r in rs}
        accs = {k: v for k, v in accs.items() if v}
        tasks = set.intersection(*(set(v) for v in accs.values())) if accs else set()
        units = [{"scale": scale, "method": info[k]["method"], "ppl": info[k].get("final_val_ppl"),
                  "acc": float(np.mean([v[t] for t in tasks]))} for k, v in accs.items() if tasks]
        ppl, acc = stats_by_scale(units, "ppl").get(scale, {}), stats_by_scale(units, "acc").get(scale, {})
        methods = sorted(set(ppl) & set(acc))
        if len(methods) < 2:
            lines.append(f"{scale}: fewer than 2 methods with both final val_ppl and downstream accuracy")
            continue
        discord, undecided = [], []
        for a, b in itertools.combinations(methods, 2):
            op, oa = order(ppl[a], ppl[b], spread), order(acc[a], acc[b], spread)
            if "~" in (op, oa):
                undecided.append(f"{a}/{b}")
            elif op == oa:  # lower ppl and lower accuracy (or both higher): the rankings disagree
                discord.append(f"{a}/{b}")
        tau = float(stats.kendalltau([-ppl[m].mean for m in methods], [acc[m].mean for m in methods]).statistic)
        v = HOLDS if discord else (FAILS if not undecided else UNSURE)
        parts.append(v)
        values[scale] = {"kendall_tau": tau, "tasks": sorted(tasks), "discordant": discord, "undecided": undecided,
                         "ppl": {m: ppl[m].as_dict() for m in methods}, "acc": {m: acc[m].as_dict() for m in methods}}
        lines.append(f"{scale}: Kendall tau(-ppl, acc) {tau:.3f} over {len(methods)} methods, {len(tasks)} tasks; "
                     f"discordant pairs {', '.join(discord) or 'none'}"
                     + (f"; within spread {', '.join(undecided)}" if undecided else "") + f" -> mismatch {v}")
    if not parts:
        return missing(6, "; ".join(lines), **values)
    verdict = HOLDS if HOLDS in parts else (FAILS if all(p == FAILS for p in parts) else UNSURE)
    return Claim(6, claim_texts()[6]["text"], verdict, "; ".join(lines), values)


# --------------------------------------------------------------------------- claim 7: prediction


def _claim7(prediction, alpha: float) -> Claim:
    """Per split, decisive either way: holds when delta R^2 > 0 beyond the permutation null (p_r2 < alpha),
    does not hold when delta R^2 < 0 beyond it (p_r2_worse < alpha: worse than information-free metrics),
    inconclusive otherwise; the splits then combine as every claim's parts do."""
    if prediction is None or not getattr(prediction, "improvements", None):
        return missing(7, "no prediction result (run the predict stage with downstream results)")
    parts, lines, values = [], [], {}
    for imp in prediction.improvements:
        worse = getattr(imp, "p_r2_worse", math.nan)
        if imp.delta_r2 > 0 and finite(imp.p_r2) and imp.p_r2 < alpha:
            v = HOLDS
        elif imp.delta_r2 < 0 and finite(worse) and worse < alpha:
            v = FAILS
        else:
            v = UNSURE
        parts.append(v)
        values[imp.split] = {"delta_r2": imp.delta_r2, "p_r2": imp.p_r2, "p_r2_worse": worse,
                             "delta_mae": imp.delta_mae, "p_mae": imp.p_mae, "n_perm": imp.n_perm}
        lines.append(f"{imp.split}: delta R^2 {imp.delta_r2:+.4g} (p better {imp.p_r2:.3g}, p worse {worse:.3g}), "
                     f"delta MAE {imp.delta_mae:+.4g} (p {imp.p_mae:.3g}) -> {v}")
    return Claim(7, claim_texts()[7]["text"], combine(parts),
                 f"n = {len(prediction.units)} units; " + "; ".join(lines), values)


# --------------------------------------------------------------------------- claim 8: highest loss


def _claim8(rows, runs, highest: str, no_dense: str, spread: str) -> Claim:
    """Decided on its first half only: `highest` has the highest final val_ppl at every scale, beyond the
    seed spread.

    The second half, that `no_dense` cannot be linearly interpolated with the other methods, is not tested,
    because nothing measured on the runs could refute it: the method has no dense weights (a non-linearity
    between its factors, Method.has_dense_view), so an interpolation with another method's weights is
    undefined for every run by construction. Reading 'holds' off the imib plugin's skips would restate
    has_dense_view as a finding; a barrier between two runs of that method (its own parameterisation)
    would answer another question (are its seeds linearly connected?), not 'with the others'. The evidence
    says so, and counts imib's skips for the method as information only.
    """
    parts, lines, values = [], [], {"highest_loss_method": highest, "not_interpolable_method": no_dense}
    absent = method_absent(8, highest, runs, **values)
    if absent:
        return absent
    ppl = stats_by_scale([{**r, "ppl": r.get("final_val_ppl")} for r in runs], "ppl")
    if not ppl:
        parts.append(UNSURE)
        lines.append("no final val_ppl in the run records")
    for scale, by_m in sorted(ppl.items()):
        values.setdefault("final_val_ppl", {})[scale] = {m: s.as_dict() for m, s in by_m.items()}
        if highest not in by_m or len(by_m) < 2:
            parts.append(UNSURE)
            lines.append(f"{scale}: needs {highest} and another method")
            continue
        v = combine([expect(by_m[highest], s, ">", spread) for m, s in by_m.items() if m != highest])
        parts.append(v)
        top = max(by_m, key=lambda m: by_m[m].mean)
        lines.append(f"{scale}: highest final val_ppl {top} {fmt_stats(by_m[top], spread)}; {highest} "
                     f"{fmt_stats(by_m[highest], spread)} -> {v}")
    involved = [r for r in rows if r.get("metric") == "imib" and no_dense in (r.get("method"), r.get("other_method"))]
    skipped = [r for r in involved if r.get("skipped")]
    values["skipped_imib"] = sorted({f"{r.get('method')}-{r.get('other_method')}: {r['skipped']}" for r in skipped})
    lines.append(f"not tested: '{no_dense} cannot be linearly interpolated with the others' holds by construction "
                 f"({no_dense} has no dense weights, so no interpolation with another method is defined) and no "
                 f"run can refute it; the verdict is the perplexity half's"
                 + (f" (imib skipped {len(skipped)} of {len(involved)} rows involving {no_dense})" if involved else ""))
    return Claim(8, claim_texts()[8]["text"], combine(parts), "; ".join(lines), values)


# --------------------------------------------------------------------------- entry point


def check_claims(rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]],
                 per_layer: Mapping[tuple[str, int], np.ndarray] | None = None,
                 downstream: Sequence[dict[str, Any]] | None = None, prediction: Any = None,
                 spread: str = "ci", similarity: str = "cka", names: Mapping[str, str] | None = None,
                 alpha: float = ALPHA) -> list[Claim]:
    """Evaluate claims 1-8 of docs/study.md §5 on the user's runs (see the module docstring).

    similarity: the per-layer quantity of claim 4 ('cka' or 'cosine', matching `per_layer`). names
    overrides the methods claims.json names: keys 'method' (claim 5), 'highest_loss_method' and
    'not_interpolable_method' (claim 8). alpha: the significance level of claim 7's permutation p-value.
    """
    interval(ZERO, spread)  # validates spread
    if similarity not in ("cka", "cosine"):
        raise LensError(f"similarity {similarity!r} is not one of cka, cosine")
    texts = claim_texts()
    named = {"method": texts[5]["method"], "highest_loss_method": texts[8]["highest_loss_method"],
             "not_interpolable_method": texts[8]["not_interpolable_method"], **(names or {})}
    return [
        _baseline_vs_lowrank(1, rows, runs, "landscape_random", "es", ">", spread),
        _baseline_vs_lowrank(2, rows, runs, "landscape_pca", "es_pca1", "<", spread),
        _claim3(rows, runs, spread),
        _claim4(rows, runs, per_layer, similarity, spread),
        _claim5(rows, runs, named["method"], spread),
        _claim6(runs, downstream, spread),
        _claim7(prediction, alpha),
        _claim8(rows, runs, named["highest_loss_method"], named["not_interpolable_method"], spread),
    ]
