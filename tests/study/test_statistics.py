"""Multi-seed statistics (findings/statistics.py) and checkpoint matching (findings/matched.py).

Known answers: a Student-t CI computed by hand, Welch's t by its formula, an exact permutation p-value
counted by hand (2 of 20 splits), Holm and Bonferroni adjustments computed by hand, and the closest
checkpoint of hand-made runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lowrank_lens.errors import LensError
from lowrank_lens.findings.matched import (
    describe_matches,
    equal_step_checkpoints,
    equal_token_checkpoints,
    matched_checkpoints,
    select_rows,
)
from lowrank_lens.findings.statistics import (
    INSUFFICIENT,
    SINGLE_SEED,
    Stats,
    adjust,
    describe,
    interval,
    order,
    pairwise_differences,
    permutation_p,
    seed_summary,
    welch_p,
)


def rows_of(means: dict[str, float], sd: float, seeds=(0, 1, 2, 3, 4), scale="s", step=10, data_seed=0,
            metric="m", column="x") -> list[dict]:
    rng = np.random.default_rng(data_seed)
    return [{"metric": metric, "run": f"{m}-{scale}-{s}", "method": m, "scale": scale, "seed": s,
             "kind": "checkpoint", "step": step, column: mu + sd * float(rng.normal())}
            for m, mu in means.items() for s in seeds]


# --------------------------------------------------------------------------- summaries


def test_describe_matches_hand_computed_t_interval():
    s = describe([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * std(=1) / sqrt(3)
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.ci_low == pytest.approx(2 - half) and s.ci_high == pytest.approx(2 + half)
    one = describe([5.0, math.nan])
    assert one.n == 1 and math.isnan(one.ci_low) and math.isnan(one.std)


def test_ci_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(1)
    covered = [(s := describe(rng.normal(3.0, 2.0, 5))).ci_low <= 3.0 <= s.ci_high for _ in range(2000)]
    assert 0.93 < np.mean(covered) < 0.97


def test_seed_summary_groups_flags_single_seed_and_ignores_skipped():
    rows = rows_of({"a": 1.0, "b": 2.0}, 0.1, seeds=(0, 1, 2))
    rows += [{"metric": "m", "run": "c-s-0", "method": "c", "scale": "s", "seed": 0, "kind": "checkpoint",
              "step": 10, "x": 7.0},
             {"metric": "m", "run": "d-s-0", "method": "d", "scale": "s", "seed": 0, "kind": "checkpoint",
              "step": 10, "skipped": "no dense view"}]
    out = {r["method"]: r for r in seed_summary(rows)}
    assert set(out) == {"a", "b", "c"}
    assert out["a"]["n"] == 3 and out["a"]["ci_low"] < out["a"]["mean"] < out["a"]["ci_high"]
    assert out["a"]["mean"] == pytest.approx(np.mean([r["x"] for r in rows[:3]]))
    assert out["a"]["seeds"] == [0, 1, 2] and out["a"]["flag"] == ""
    assert out["c"]["n"] == 1 and math.isnan(out["c"]["ci_low"]) and out["c"]["flag"] == SINGLE_SEED
    assert all(r["column"] == "x" for r in out.values())  # seed/step are keys, not values


def test_seed_summary_refuses_two_rows_for_one_seed():
    rows = rows_of({"a": 1.0}, 0.1, seeds=(0, 1))
    rows = rows + [{**r, "other_method": "z"} for r in rows]  # two pairs of a cross metric
    assert len(seed_summary(rows)) == 2  # other_method is in the default groups
    with pytest.raises(LensError, match="other_method"):
        seed_summary(rows, by=("metric", "method", "scale", "kind", "step"))


def test_interval_and_order():
    a, b = describe([10.0, 10.1, 9.9]), describe([5.0, 5.1, 4.9])
    assert order(a, b) == ">" and order(b, a) == "<"
    c = describe([10.05, 10.2, 9.8])
    assert order(a, c) == "~"
    assert interval(Stats(1.0, math.nan, 1, math.nan, math.nan), "ci") == (1.0, 1.0)
    assert interval(a, "std") == pytest.approx((a.mean - a.std, a.mean + a.std))
    with pytest.raises(LensError, match="spread"):
        interval(a, "iqr")


# --------------------------------------------------------------------------- tests and corrections


def test_welch_matches_its_formula_and_separates_large_from_null_differences():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 6), rng.normal(0.5, 2, 5)
    va, vb = a.var(ddof=1) / 6, b.var(ddof=1) / 5
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 5 + vb**2 / 4)
    assert welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert welch_p(rng.normal(0, 1, 5), rng.normal(10, 1, 5)) < 1e-4
    assert welch_p(rng.normal(0, 1, 8), rng.normal(0, 1, 8)) > 0.05  # this draw
    assert math.isnan(welch_p([1.0], [2.0, 3.0]))
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert welch_p([1.0, 1.0, 1.0], [2.0, 2.0]) == 0.0  # deterministic and distinct: a difference


def test_distinct_deterministic_methods_read_different():
    rows = rows_of({"a": 1.0, "b": 2.0, "c": 1.0}, 0.0, seeds=(0, 1, 2))
    out = {(r["method_a"], r["method_b"]): r for r in pairwise_differences(rows, "x", "m")}
    assert out[("a", "b")]["verdict"] == "different" and out[("a", "b")]["p"] == 0.0
    assert out[("a", "c")]["verdict"] == "not significant" and out[("a", "c")]["p"] == 1.0


def test_exact_permutation_p_counts_every_split():
    # 20 splits of {1..6} into 3 + 3; only the observed one and its mirror reach |diff| = 3.
    assert permutation_p([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)
    assert permutation_p([1, 2], [1, 2]) == pytest.approx(1.0)
    mc = permutation_p([1, 2, 3], [4, 5, 6], n_perm=4000, seed=3, exact_limit=0)  # Monte Carlo path
    assert mc == pytest.approx(0.1, abs=0.02)


def test_holm_and_bonferroni_match_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    # Holm: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert adjust(p, "holm")[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust(p, "bonferroni")[:4] == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert adjust(p, "none")[:4] == pytest.approx(p[:4])
    assert all(math.isnan(x[4]) for x in (adjust(p, "holm"), adjust(p, "bonferroni")))
    assert adjust([0.9, 0.2], "holm") == pytest.approx([0.9, 0.4])
    assert adjust([0.9, 0.6], "holm") == pytest.approx([1.0, 1.0])  # 2 x 0.6 capped at 1, then the running max
    with pytest.raises(LensError, match="holm"):
        adjust(p, "fdr")


def test_pairwise_differences_significance_spread_flag_and_insufficient_seeds():
    rows = rows_of({"a": 10.0, "b": 5.0, "c": 10.02}, 0.2)
    rows += rows_of({"d": 3.0}, 0.0, seeds=(0,), data_seed=1)
    out = {(r["method_a"], r["method_b"]): r for r in pairwise_differences(rows, "x", "m")}
    assert len(out) == 6
    ab, ac, ad = out[("a", "b")], out[("a", "c")], out[("a", "d")]
    assert ab["verdict"] == "different" and ab["significant"] and ab["p"] < 1e-4 and not ab["within_seed_spread"]
    assert ab["diff"] == pytest.approx(ab["mean_a"] - ab["mean_b"]) and ab["n_a"] == ab["n_b"] == 5
    assert ac["within_seed_spread"] and ac["verdict"] == "within seed spread"
    assert math.isnan(ad["p"]) and ad["verdict"] == INSUFFICIENT and ad["within_seed_spread"] is None
    # Holm over the three testable pairs of the group equals the hand-level adjust()
    keys = [k for k in out if not math.isnan(out[k]["p"])]
    assert [out[k]["p_adjusted"] for k in keys] == pytest.approx(adjust([out[k]["p"] for k in keys], "holm"))


def test_pairwise_permutation_groups_and_family():
    rows = rows_of({"a": 1.0, "b": 3.0}, 0.1, seeds=(0, 1, 2)) + \
        rows_of({"a": 1.0, "b": 3.0}, 0.1, seeds=(0, 1, 2), scale="l")
    out = pairwise_differences(rows, "x", "m", test="permutation")
    assert len(out) == 2 and {r["scale"] for r in out} == {"s", "l"}
    assert all(r["p"] == pytest.approx(0.1) for r in out)  # exact: 2 of 20 splits
    assert all(r["p_adjusted"] == pytest.approx(0.1) for r in out)  # one pair per group
    both = pairwise_differences(rows, "x", "m", test="permutation", family="all", correction="bonferroni")
    assert all(r["p_adjusted"] == pytest.approx(0.2) and not r["significant"] for r in both)
    with pytest.raises(LensError, match="no finite"):
        pairwise_differences(rows, "y", "m")
    with pytest.raises(LensError, match="welch"):
        pairwise_differences(rows, "x", "m", test="t")


# --------------------------------------------------------------------------- matched checkpoints


def run(name, method, ppls, steps=(0, 10, 20, 30), tokens_per_step=100, seed=0, scale="s", baseline=False):
    cks = [{"step": s, "tokens": s * tokens_per_step, "val_ppl": p} for s, p in zip(steps, ppls, strict=True)]
    return {"run": name, "method": method, "scale": scale, "seed": seed, "is_baseline": baseline,
            "final_val_ppl": ppls[-1], "checkpoints": cks}


RUNS = [run("A", "a", [100, 50, 40, 30], baseline=True),
        run("B", "b", [100, 60, 45, 38]),  # the worst final: target 38
        run("C", "c", [100, 36, 40, 33]),  # 36 and 40 are both 2 away: the earlier step (10) wins
        run("D", "d", [100, 90, 80, 70], seed=1)]  # alone in seed 1: its own final


def test_matched_picks_the_closest_checkpoint_with_gaps():
    m = {r["run"]: r for r in matched_checkpoints(RUNS)}
    assert m["B"]["target"] == 38 and m["B"]["step"] == 30 and m["B"]["abs_gap"] == 0
    assert m["B"]["target_source"] == "worst-final (B)"
    assert (m["A"]["step"], m["A"]["val_ppl"], m["A"]["gap"]) == (20, 40, 2)
    assert m["A"]["rel_gap"] == pytest.approx(2 / 38) and m["A"]["tokens"] == 2000
    assert m["C"]["step"] == 10 and m["C"]["gap"] == -2
    assert m["D"]["target"] == 70 and m["D"]["step"] == 30
    given = {r["run"]: r for r in matched_checkpoints(RUNS, target=45.0)}
    assert given["B"]["step"] == 20 and given["D"]["step"] == 30 and not given["D"]["reached"]
    assert "never reaches" in given["D"]["note"] and given["A"]["reached"]
    lines = describe_matches(matched_checkpoints(RUNS))
    assert any(line.startswith("A (a, s, seed 0)") and "gap +2" in line and "5.26%" in line for line in lines)
    with pytest.raises(LensError, match="worst-final"):
        matched_checkpoints(RUNS, target="best")


def test_equal_steps_and_tokens():
    runs = [run("A", "a", [9, 8, 7, 6]), run("B", "b", [9, 8, 7], steps=(0, 10, 20), tokens_per_step=300)]
    st = {r["run"]: r for r in equal_step_checkpoints(runs)}
    assert st["A"]["step"] == st["B"]["step"] == 20 and st["A"]["target_source"] == "largest common step"
    tk = {r["run"]: r for r in equal_token_checkpoints(runs)}
    assert tk["A"]["tokens"] == tk["B"]["tokens"] == 3000 and (tk["A"]["step"], tk["B"]["step"]) == (30, 10)
    closest = {r["run"]: r for r in equal_step_checkpoints(runs, step=28)}
    assert closest["A"]["step"] == 30 and closest["B"]["step"] == 20 and closest["B"]["gap"] == -8


def test_select_rows_keeps_rows_at_matched_steps():
    matches = matched_checkpoints(RUNS[:3])  # A@20, B@30, C@10
    rows = [{"metric": "m", "run": r, "method": r.lower(), "step": s, "kind": "checkpoint", "x": 1.0}
            for r in "ABC" for s in (10, 20, 30)]
    rows.append({"metric": "p", "run": "A", "other_run": "B", "step": 20, "kind": "pair", "x": 1.0})
    got = select_rows(rows, matches)
    assert sorted((r["run"], r["step"]) for r in got) == [("A", 20), ("B", 30), ("C", 10)]
    assert all(r["match"] == "matched val_ppl" for r in got)
    assert {r["run"]: r["match_gap"] for r in got} == {"A": 2, "B": 0, "C": -2}
    summary = seed_summary(got, by=("metric", "method", "scale", "kind", "match"))
    assert sorted(r["method"] for r in summary) == ["a", "b", "c"]  # one group per method at its own step


def test_power_note_says_what_few_seeds_can_show():
    from lowrank_lens.findings.statistics import power_note

    assert "cannot reach p < 0.05" in power_note(3) and "0.1" in power_note(3)
    assert permutation_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)  # the bound power_note states
    assert " can reach p < 0.05" in power_note(5)  # 2 / C(10, 5) = 0.0079
    assert "no test" in power_note(1)
