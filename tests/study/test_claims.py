"""The claims check (findings/claims.py; docs/study.md §5): each claim on synthetic runs built to satisfy it
('holds'), built to contradict it ('does not hold'), and with its data missing or inside the seed spread
('inconclusive').

The world: methods base (the baseline), m1, m2, m3 (m3 has no dense view: its IMIB rows are skipped),
two scales, three seeds, metric rows at steps 10 and 20. The values at step 10 contradict every claim, so
a verdict that reads them instead of the final step fails the tests. Claims 5 and 8 name methods through
claims.json; the tests rename them with `names`.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lowrank_lens.errors import LensError
from lowrank_lens.findings.claims import FAILS, HOLDS, UNSURE, check_claims, claim_texts
from lowrank_lens.findings.prediction import Improvement, PredictionResult
from lowrank_lens.methods import method_names

METHODS = ("base", "m1", "m2", "m3")
SCALES = ("s", "l")
NAMES = {"method": "m1", "highest_loss_method": "m2", "not_interpolable_method": "m3"}
GOOD = {  # claim-satisfying values at the final step
    ("landscape_random", "es"): {"base": 3.0, "m1": 1.0, "m2": 1.5, "m3": 2.0},
    ("landscape_random", "dv"): {"base": 1.0, "m1": 1.0, "m2": 2.0, "m3": 3.0},
    ("landscape_pca", "es_pca1"): {"base": 1.0, "m1": 2.0, "m2": 2.5, "m3": 3.0},
    ("activation_similarity", "cka"): {"m1": 0.9, "m2": 0.7, "m3": 0.6},
    ("activation_similarity", "l2"): {"m1": 1.0, "m2": 2.0, "m3": 3.0},
}
PPL = {"base": 30.0, "m1": 31.5, "m2": 40.0, "m3": 34.0}


def world(values=None, ppl=None, seeds=(0, 1, 2), noise=0.01, imib=0.5, step10_reversed=True):
    """(rows, runs) of the synthetic study; `values` / `ppl` override GOOD / PPL entries."""
    values = {**GOOD, **(values or {})}
    ppl = {**PPL, **(ppl or {})}
    rng = np.random.default_rng(0)
    rows, runs = [], []
    jitter = lambda: noise * float(rng.normal())  # noqa: E731
    for scale, seed in itertools.product(SCALES, seeds):
        for m in METHODS:
            run = f"{m}-{scale}-{seed}"
            runs.append({"run": run, "method": m, "scale": scale, "seed": seed, "is_baseline": m == "base",
                         "final_val_ppl": ppl[m] * (1 + jitter() / 2),
                         "checkpoints": [{"step": 10, "tokens": 1000, "val_ppl": 99.0},
                                         {"step": 20, "tokens": 2000, "val_ppl": ppl[m]}]})
            for step in (10, 20):
                sub = {"run": run, "method": m, "scale": scale, "seed": seed, "step": step}
                sign = -1 if step == 10 and step10_reversed else 1
                for metric in ("landscape_random", "landscape_pca"):
                    cols = {c: sign * v[m] + jitter() for (mt, c), v in values.items() if mt == metric}
                    rows.append({"metric": metric, **sub, "kind": "checkpoint", **cols})
                if m != "base":
                    cka, l2 = values[("activation_similarity", "cka")][m], values[("activation_similarity", "l2")][m]
                    sim = {f"{k}_{w}": sign * v + jitter() for k, v in (("cka", cka), ("cosine", cka), ("l2", l2))
                           for w in ("mean", "last")}
                    rows.append({"metric": "activation_similarity", **sub, "kind": "pair",
                                 "other_run": f"base-{scale}-{seed}", "other_method": "base", **sim})
        for a, b in itertools.combinations(METHODS, 2):
            for step in (10, 20):
                sub = {"metric": "imib", "run": f"{a}-{scale}-{seed}", "method": a, "scale": scale, "seed": seed,
                       "kind": "pair", "step": step, "other_run": f"{b}-{scale}-{seed}", "other_method": b}
                if "m3" in (a, b):
                    rows.append({**sub, "skipped": "no dense view: SiLU between the factors"})
                else:
                    v = imib(a, b) if callable(imib) else imib
                    rows.append({**sub, "imib": (v if step == 20 else -1.0) + jitter()})
    return rows, runs


def per_layer_arrays(runs, layers=5, grow=True, deeper_worse=True):
    out = {}
    for r in runs:
        if r["is_baseline"]:
            continue
        for step in (10, 20):
            k = 0.02 * (step if grow else 30 - step)
            depth = np.arange(layers + 1) if deeper_worse else -np.arange(layers + 1)
            out[(r["run"], step)] = 1.0 - k * depth - 0.001 * r["seed"]
    return out


def downstream_rows(runs, acc):
    return [{"run": r["run"], "task": t, "acc": acc[r["method"]] + 0.01 * k + 0.001 * r["seed"]}
            for r in runs for k, t in enumerate(("piqa", "arc"))]


def prediction(*improvements):
    """Improvements (split, delta R^2, p better[, p worse]) as a PredictionResult."""
    return PredictionResult(units=[], target=np.zeros(0), columns={}, scores=[], coefficients=[], importance=[],
                            improvements=[Improvement(i[0], i[1], 0.01, i[2], i[2], 99,
                                                      i[3] if len(i) > 3 else 1 - i[2]) for i in improvements])


def verdicts(rows, runs, **kw):
    claims = check_claims(rows, runs, names=NAMES, **kw)
    assert [c.id for c in claims] == list(range(1, 9))
    return {c.id: c for c in claims}


# --------------------------------------------------------------------------- everything holds / fails / missing


def test_every_claim_holds_on_data_built_to_satisfy_it():
    rows, runs = world()
    acc = {"base": 0.50, "m1": 0.52, "m2": 0.40, "m3": 0.45}  # m1 worse ppl than base but better accuracy
    c = verdicts(rows, runs, per_layer=per_layer_arrays(runs), downstream=downstream_rows(runs, acc),
                 prediction=prediction(("loo", 0.2, 0.01), ("lomo", 0.1, 0.02)))
    assert {i: cl.verdict for i, cl in c.items()} == dict.fromkeys(range(1, 9), HOLDS), \
        {i: cl.evidence for i, cl in c.items() if cl.verdict != HOLDS}
    assert "final step 20" in c[1].evidence and "n=3" in c[1].evidence
    assert c[1].values["s"]["base"]["n"] == 3
    assert "m3" in c[3].evidence and "skipped pairs" in c[3].evidence
    assert c[6].values["s"]["discordant"] == ["base/m1"]
    assert all(cl.text == claim_texts()[i]["text"] for i, cl in c.items())


def test_every_claim_fails_when_reversed():
    good_rows, runs = world()
    rev = {k: {m: -v for m, v in d.items()} for k, d in GOOD.items()}
    rows, runs = world(values=rev, ppl={"m1": 45.0}, imib=lambda a, b: -0.5 if (a, b) == ("m1", "m2") else 0.5)
    rows = [r for r in rows if r.get("metric") != "imib"] + \
        [{**r, "skipped": None, "imib": 0.3} if r.get("skipped") else r for r in rows if r.get("metric") == "imib"]
    acc = {m: 1 - PPL[m] / 100 for m in METHODS} | {"m1": 0.55}  # accuracy ranks exactly as perplexity
    c = verdicts(rows, runs, per_layer=per_layer_arrays(runs, deeper_worse=False),
                 downstream=downstream_rows(runs, acc), prediction=prediction(("loo", -0.1, 0.99, 0.01)))
    assert {i: cl.verdict for i, cl in c.items()} == dict.fromkeys(range(1, 9), FAILS), \
        {i: cl.evidence for i, cl in c.items() if cl.verdict != FAILS}


def test_every_claim_is_inconclusive_without_data():
    c = verdicts([], [])
    assert {i: cl.verdict for i, cl in c.items()} == dict.fromkeys(range(1, 9), UNSURE)
    assert "no baseline run" in c[1].evidence
    assert "no downstream results" in c[6].evidence
    assert "no prediction result" in c[7].evidence


def test_missing_metric_rows_are_named():
    rows, runs = world()
    c = verdicts([r for r in rows if r["metric"] not in ("landscape_random", "imib")], runs)
    assert c[1].verdict == UNSURE and "landscape_random" in c[1].evidence
    assert c[3].verdict == UNSURE and "no computed imib rows" in c[3].evidence
    assert "not tested" in c[8].evidence and "imib skipped" not in c[8].evidence


# --------------------------------------------------------------------------- the seed spread


def test_orderings_inside_the_seed_spread_are_inconclusive():
    close = {("landscape_random", "es"): {"base": 1.01, "m1": 1.0, "m2": 1.0, "m3": 1.0},
             ("landscape_random", "dv"): {m: 1.0 for m in METHODS},
             ("landscape_pca", "es_pca1"): {"base": 1.0, "m1": 1.01, "m2": 1.01, "m3": 1.01},
             ("activation_similarity", "cka"): {"m1": 0.71, "m2": 0.7, "m3": 0.7},
             ("activation_similarity", "l2"): {"m1": 1.0, "m2": 1.0, "m3": 1.0}}
    rows, runs = world(values=close, ppl={"m2": 34.2}, noise=0.05, imib=0.001)
    c = verdicts(rows, runs)
    for i in (1, 2, 3, 5, 8):
        assert c[i].verdict == UNSURE, (i, c[i].evidence)
    # with spread 'none' the point means decide
    c = verdicts(rows, runs, spread="none")
    assert c[1].verdict in (HOLDS, FAILS) and c[2].verdict in (HOLDS, FAILS)


def test_single_seed_orderings_are_taken_as_they_are():
    rows, runs = world(seeds=(0,))
    c = verdicts(rows, runs)
    assert c[1].verdict == HOLDS and "(n=1)" in c[1].evidence
    assert c[2].verdict == HOLDS and c[5].verdict == HOLDS


# --------------------------------------------------------------------------- single claims in detail


def test_claim3_distinct_basins_parts():
    rows, runs = world(imib=lambda a, b: 0.0 if (a, b) == ("m1", "m2") else 0.5, noise=0.0)
    assert verdicts(rows, runs)[3].verdict == UNSURE  # IMIB exactly 0: not > 0, not < 0
    same = {("landscape_random", "es"): {"base": 3.0, "m1": 1.0, "m2": 1.0, "m3": 1.0},
            ("landscape_random", "dv"): {m: 1.0 for m in METHODS}}
    rows, runs = world(values=same, noise=0.0)
    c = verdicts(rows, runs)[3]
    assert c.verdict == UNSURE and "neither es nor dv" in c.evidence


def test_claim4_depth_and_step_growth():
    rows, runs = world()
    assert verdicts(rows, runs, per_layer=per_layer_arrays(runs))[4].verdict == HOLDS
    shrink = verdicts(rows, runs, per_layer=per_layer_arrays(runs, grow=False))[4]
    assert shrink.verdict == FAILS and "growth with step" in shrink.evidence
    one_step = {k: v for k, v in per_layer_arrays(runs).items() if k[1] == 20}
    assert verdicts(rows, runs, per_layer=one_step)[4].verdict == UNSURE
    # without per-layer arrays: the cka_mean - cka_last proxy from the rows
    flat = [{**r, "cka_last": r["cka_mean"] - (0.1 if r["step"] == 20 else 0.01)}
            if r["metric"] == "activation_similarity" else r for r in world(step10_reversed=False)[0]]
    proxy = verdicts(flat, runs)[4]
    assert proxy.verdict == HOLDS and "proxy" in proxy.evidence
    with pytest.raises(LensError, match="similarity"):
        check_claims(rows, runs, similarity="l2")


def test_claim5_names_the_method_from_claims_json_or_override():
    rows, runs = world()
    assert verdicts(rows, runs)[5].verdict == HOLDS
    assert check_claims(rows, runs, names={**NAMES, "method": "m2"})[4].verdict == FAILS
    missing = check_claims(rows, runs, names={**NAMES, "method": "nobody"})[4]
    assert missing.verdict == UNSURE and "names nobody, which has no run in this study" in missing.evidence


def test_a_claim_naming_a_method_absent_from_the_study_is_inconclusive_with_the_reason():
    """A study of other methods (a subset of the zoo): claims 5 and 8 name galore / relora through claims.json;
    without their runs they are inconclusive and say which method is missing, whatever the other data say."""
    rows, runs = world()
    keep = {"base", "m2", "m3"}
    rows = [r for r in rows if r["method"] in keep and r.get("other_method", "base") in keep]
    runs = [r for r in runs if r["method"] in keep]
    c5 = verdicts(rows, runs)[5]
    assert c5.verdict == UNSURE
    assert "names m1, which has no run in this study (its methods: base, m2, m3)" in c5.evidence
    c8 = check_claims(rows, runs, names={**NAMES, "highest_loss_method": "m1"})[7]
    assert c8.verdict == UNSURE and "names m1" in c8.evidence and "add m1 to the study" in c8.evidence
    assert verdicts(rows, runs)[8].verdict == HOLDS  # m2 is present and still has the highest perplexity


def test_claim8_is_decided_by_perplexity_not_by_the_imib_skip():
    """The 'cannot be interpolated' half holds by construction (no dense weights), so it is not tested:
    the verdict is the perplexity half's whether imib skipped the method's pairs, computed them or has no
    rows at all (before, a skip read 'holds', a computed row 'does not hold', no row 'inconclusive')."""
    rows, runs = world()
    computed = [{**r, "skipped": None, "imib": 0.3} if r.get("skipped") else r for r in rows]
    absent = [r for r in rows if r.get("metric") != "imib"]
    for variant in (rows, computed, absent):
        c = verdicts(variant, runs)[8]
        assert c.verdict == HOLDS, c.evidence
        assert "not tested" in c.evidence and "by construction" in c.evidence
    assert "imib skipped 36 of 36 rows involving m3" in verdicts(rows, runs)[8].evidence
    assert verdicts(*world(ppl={"m1": 45.0}))[8].verdict == FAILS  # the perplexity half still decides
    assert "tested on the first half only" in claim_texts()[8]["text"]


def test_claim6_and_claim7_partial_results():
    rows, runs = world()
    acc = {m: 1 - PPL[m] / 100 for m in METHODS}
    mixed = {"base": 0.50, "m1": 0.52, "m2": 0.40, "m3": 0.45}
    ds = [d for d in downstream_rows(runs, acc) if "-s-" in d["run"]] + \
        [d for d in downstream_rows(runs, mixed) if "-l-" in d["run"]]
    c6 = verdicts(rows, runs, downstream=ds)[6]
    assert c6.verdict == HOLDS and c6.values["s"]["kendall_tau"] == pytest.approx(1.0)  # one scale is enough
    p = verdicts(rows, runs, prediction=prediction(("loo", 0.2, 0.3)))[7]
    assert p.verdict == UNSURE and "p 0.3" in p.evidence
    assert verdicts(rows, runs, prediction=prediction(("loo", 0.2, 0.01), ("lomo", -0.1, 0.8)))[7].verdict == UNSURE


def test_claim7_is_decisive_either_way_and_inconclusive_in_between():
    """The rule is symmetric: a negative delta R^2 inside the permutation null is as inconclusive as a
    positive one inside it (before, any delta R^2 <= 0 read 'does not hold')."""
    rows, runs = world()

    def c7(*imps):
        return verdicts(rows, runs, prediction=prediction(*imps))[7].verdict

    assert c7(("loo", 0.2, 0.01, 0.99)) == HOLDS
    assert c7(("loo", -0.2, 0.99, 0.01)) == FAILS
    assert c7(("loo", -0.02, 0.7, 0.3)) == UNSURE  # slightly negative, within the null
    assert c7(("loo", 0.02, 0.3, 0.7)) == UNSURE  # slightly positive, within the null
    assert c7(("loo", 0.0, 0.5, 0.5)) == UNSURE


def test_claims_json_names_registered_methods():
    texts = claim_texts()
    assert sorted(texts) == list(range(1, 9))
    registered = set(method_names())
    for key in ("method", "highest_loss_method", "not_interpolable_method"):
        named = texts[5].get(key) or texts[8].get(key)
        assert named in registered, (key, named)
