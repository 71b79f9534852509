"""The helpers every part of the findings shares (findings/common.py), each with the one meaning all call sites
use: `finite` is a real finite number, Python or numpy, never a bool or a numeric string; `final_rows` is each
subject's row at its largest step, optionally of one metric or kind, computed or skipped."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lowrank_lens.findings.common import final_rows, finite


@pytest.mark.parametrize("value", [0, 3, -2.5, 1e300, np.float32(1.5), np.float64(2.0), np.int64(7), np.int8(-1)])
def test_finite_numbers(value):
    assert finite(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"), True, False,
                                   np.bool_(True), "1.5", "nan", "", None, 1 + 2j, np.complex128(1), [1.0], {}])
def test_not_finite(value):
    assert not finite(value)


ROWS = [
    {"metric": "a", "run": "r1", "kind": "checkpoint", "step": 10, "x": 1.0},
    {"metric": "a", "run": "r1", "kind": "checkpoint", "step": 20, "x": 2.0},
    {"metric": "a", "run": "r1", "kind": "checkpoint", "step": 20, "x": 9.0},  # equal step: the first stands
    {"metric": "a", "run": "r1", "kind": "checkpoint", "step": 30, "skipped": "no dense view"},
    {"metric": "a", "run": "r1", "kind": "init-final", "step": 20, "x": 3.0},
    {"metric": "a", "run": "r1", "other_run": "r2", "kind": "pair", "step": 20, "x": 4.0},
    {"metric": "a", "run": "r2", "kind": "checkpoint", "x": 5.0},  # no step counts as 0
    {"metric": "b", "run": "r1", "kind": "checkpoint", "step": 40, "x": 6.0},
]


def test_final_rows_is_each_subjects_largest_computed_step():
    # the subject is (run, other run, kind): without `metric`, pass one metric's rows (b's step 40 stands here)
    assert [r["x"] for r in final_rows(ROWS)] == [6.0, 3.0, 4.0, 5.0]
    assert [r["x"] for r in final_rows(ROWS, metric="a")] == [2.0, 3.0, 4.0, 5.0]
    assert [r["x"] for r in final_rows(ROWS[:-1], kind="checkpoint")] == [2.0, 5.0]
    assert [r["x"] for r in final_rows(ROWS, metric="a", kind="checkpoint")] == [2.0, 5.0]
    assert [r["skipped"] for r in final_rows(ROWS, metric="a", skipped=True)] == ["no dense view"]
    assert final_rows([]) == [] and final_rows(ROWS, metric="none") == []
