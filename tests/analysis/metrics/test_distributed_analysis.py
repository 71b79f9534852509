"""`torchrun ... -m lowrank_lens analyze`: the ranks split the units of work and rank 0 writes the tables,
which equal one process's (separate result caches, so neither run reads the other's results). One checkpoint
on two ranks: spectra is one unit, the landscape's directions and the Hessian probes are cut in two pieces
(analysis/plan.py), so both ranks compute and rank 0 combines what the other computed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from test_metric_contract import quick_overrides

from lowrank_lens.analysis.tables import read_csv

METRICS = ["spectra", "landscape_random", "curvature"]
# Timings and where a result was computed differ by process; everything the tables report must not.
NOT_COMPARED = {"seconds"}


def analyze_cli(runs, out, cache, launcher):
    sets = [a for m in METRICS for o in quick_overrides(m) for a in ("--set", o)]
    cmd = [*launcher, "-m", "lowrank_lens", "analyze", *map(str, runs), "--metrics", ",".join(METRICS),
           "--steps", "final", "--sequences", "8", "--batch-size", "8", "--cache-dir", str(cache), "--out", str(out),
           "--no-plots", *sets]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_analysis_over_two_gloo_ranks_equals_one_process(tiny_runs, tmp_path):
    runs = [tiny_runs["cola"]]
    analyze_cli(runs, tmp_path / "one", tmp_path / "cache-one", [sys.executable])
    two = analyze_cli(runs, tmp_path / "two", tmp_path / "cache-two",
                      [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])
    for metric in METRICS:
        a, b = read_csv(tmp_path / "one" / f"{metric}.csv"), read_csv(tmp_path / "two" / f"{metric}.csv")
        assert a, metric
        strip = [[{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in rows] for rows in (a, b)]
        assert strip[0] == strip[1], metric
    # Both ranks took part: each computed results of its own share.
    log = two.stderr + two.stdout
    counts = dict(re.findall(r"analysis rank (\d)/2: (\d+) results computed", log))
    assert counts == {"0": "3", "1": "2"}, counts  # spectra + a piece of each; a piece of each
    assert log.count("combined from 2 pieces") == 2, log[-3000:]
