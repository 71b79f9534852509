"""An analysis split finer than by run (analysis/plan.py): a divisible metric's pieces combine to exactly its
whole result, and shares computed apart (as Slurm array tasks or ranks do) tabulate to one process's tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_metric_contract import SETTINGS, quick_overrides

from lowrank_lens.analysis.base import Metric, part_range
from lowrank_lens.analysis.context import Context
from lowrank_lens.analysis.metrics import get_metric, metric_names
from lowrank_lens.analysis.plan import plan_units, share_of
from lowrank_lens.analysis.request import AnalysisRequest
from lowrank_lens.analysis.runner import analyze, build_metrics, compute_share
from lowrank_lens.analysis.subjects import RunRef


def test_part_range_cuts_into_contiguous_near_equal_slices():
    for total in (0, 1, 5, 30):
        for parts in (1, 2, 3, 7):
            slices = [part_range(total, i, parts) for i in range(parts)]
            assert [i for r in slices for i in r] == list(range(total))
            assert max(map(len, slices)) - min(map(len, slices)) <= 1


def _one_subject(run, name):
    (metric,) = build_metrics([name], quick_overrides(name))
    (subject,) = [s for s in metric.subjects([RunRef.open(run)], [-1], None)]
    return metric, subject


def _same(a, b):
    assert a.scalars == b.scalars and a.skipped == b.skipped
    assert sorted(a.arrays) == sorted(b.arrays)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)


DIVISIBLE = ["curvature", "landscape_random"]


@pytest.mark.parametrize("name", DIVISIBLE)
def test_pieces_combine_to_the_whole_result_bitwise(name, tiny_runs):
    metric, subject = _one_subject(tiny_runs["cola"], name)
    ctx = Context(SETTINGS)
    whole = metric.compute(subject, ctx)
    most = metric.parts(subject)
    assert most > 2
    for n in (2, 3, most):
        pieces = [metric.compute_part(subject, ctx, i, n) for i in range(n)]
        _same(metric.combine(subject, pieces), whole)


def test_a_metric_that_divides_implements_the_pieces():
    overrides = {n: get_metric(n).parts is not Metric.parts for n in metric_names()}
    assert sorted(n for n, divides in overrides.items() if divides) == DIVISIBLE
    for name in DIVISIBLE:
        cls = get_metric(name)
        assert cls.compute_part is not Metric.compute_part and cls.combine is not Metric.combine, name


def test_the_plan_cuts_subjects_only_when_they_are_fewer_than_the_processes(tiny_runs):
    runs = [RunRef.open(tiny_runs[m]) for m in ("full-rank", "galore")]
    metrics = build_metrics(["spectra", "landscape_random"], quick_overrides("landscape_random"))
    one = plan_units(metrics, runs[:1], [-1], None, 3)
    assert [(u.metric.name, u.part, u.parts) for u in one] == [
        ("spectra", 0, 1), ("landscape_random", 0, 3), ("landscape_random", 1, 3), ("landscape_random", 2, 3)]
    many = plan_units(metrics, runs, None, None, 2)  # every checkpoint of two runs: enough subjects
    assert all(u.parts == 1 for u in many)
    # The shares partition the units.
    shares = [share_of(one, (k, 3)) for k in range(3)]
    assert sorted(id(u) for s in shares for u in s) == sorted(id(u) for u in one)


def test_shares_computed_apart_tabulate_to_one_process(tiny_runs, tmp_path):
    runs = [tiny_runs["sltrain"]]
    names = ["spectra", "landscape_random", "curvature"]
    overrides = [o for n in names for o in quick_overrides(n)]
    split = tmp_path / "split-cache"
    req = AnalysisRequest(runs, metrics=names, steps=[-1], overrides=overrides, settings=SETTINGS, cache_dir=split)
    done = [compute_share(req, (k, 3)) for k in range(3)]
    assert all(d > 0 for d in done), done  # one checkpoint, yet each of the three shares had work
    pieces = sorted(p.name for p in split.rglob("*of3.json"))
    assert len(pieces) == 6, pieces  # landscape_random and curvature in three pieces each
    # A share computed again finds its pieces cached.
    assert compute_share(req, (1, 3)) == 0
    parts = analyze(runs, names, [-1], overrides=overrides, settings=SETTINGS, out=tmp_path / "a", plots=False,
                    cache_dir=split)
    whole = analyze(runs, names, [-1], overrides=overrides, settings=SETTINGS, out=tmp_path / "b", plots=False,
                    cache_dir=tmp_path / "whole-cache")
    for name in names:
        # The divisible ones are combined from the pieces now, spectra was computed whole by a share.
        assert (parts[name].computed if name in DIVISIBLE else parts[name].cached) == len(parts[name].results)
        for a, b in zip(parts[name].results, whole[name].results, strict=True):
            _same(a, b)
        assert parts[name].rows == whole[name].rows
    assert not list(split.rglob("*of3.json")), "combined pieces are removed"
    again = analyze(runs, names, [-1], overrides=overrides, settings=SETTINGS, out=tmp_path / "a", plots=False,
                    cache_dir=split)
    assert all(o.cached == len(o.results) and o.computed == 0 for o in again.values())
    # --force in a split analysis: the whole results that would hide the new pieces are dropped.
    wholes = {p.name for p in split.rglob("*.json")}
    assert compute_share(dataclasses.replace(req, force=True), (0, 3)) == 3
    left = {p.name for p in split.rglob("*.json")}
    assert len(wholes - left) == 2 and len([n for n in left if n.endswith("of3.json")]) == 2
