"""The example of the README's "From Python" section runs as a user runs it: a tiny GPT-2 trained by a real
transformers.Trainer with the LensCallback, the series read back, a comparison with the initial weights and a
figure (examples/trainer_lens.py, a `# %%` script)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lens_testutil import PYTHON, cli_env

import lowrank_lens as ll

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trainer_lens.py"


@pytest.mark.slow
def test_the_trainer_example_runs(tmp_path):
    res = subprocess.run([PYTHON, str(EXAMPLE), str(tmp_path)], env={**cli_env(), "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    series = ll.read_lens(tmp_path / "lens.jsonl")
    assert sorted(series[series.metric == "spectra"]["step"]) == [0, 5, 10, 15, 20]
    assert sorted(series[series.metric == "update_spectra"]["step"]) == [5, 10, 15, 20]
    assert (tmp_path / "lens_series.png").stat().st_size > 1000
    assert "interpolation" in res.stdout and "figure:" in res.stdout
