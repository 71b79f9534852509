"""benchmarks/gpu_check.py in its tiny mode (what it runs without a GPU): it trains both methods, times the
landscape engines (which must agree with the study's in-place engine) and compares bf16 with fp32 on one
checkpoint, and writes the three tables with finite numbers."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
from lens_testutil import REPO, one_torch_thread

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(text: str, heading: str) -> list[list[str]]:
    block = text.split(f"## {heading}")[1].split("\n## ")[0]
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:]]


@pytest.mark.slow
def test_tiny_gpu_check_writes_its_three_tables(tmp_path: Path):
    out = tmp_path / "check.md"
    with one_torch_thread():
        assert _load().main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    assert "tiny mode" in text and "measured fp32 GEMM (CPU)" in text
    train = _table(text, "Training")
    assert [r[0] for r in train] == ["full-rank", "galore"]
    for r in train:
        tok_s, mfu, loss = float(r[4].replace(",", "")), float(r[6].rstrip("%")), float(r[9])
        assert tok_s > 0 and 0 < mfu < 100 and math.isfinite(loss) and r[7] == "n/a (CPU)"
    engines = _table(text, "Landscape engines")
    assert [r[0] for r in engines][:3] == ["reference (study)", "loop", "vmap-2"]
    assert all(float(r[1]) > 0 for r in engines) and engines[0][2] == "1.00x"
    numerics = {r[0]: r for r in _table(text, "bf16 vs fp32")}
    assert set(numerics) == {"fp32", "bf16"} and numerics["fp32"][2] == "+0.00%"
    assert re.fullmatch(r"[+-]\d+\.\d+%", numerics["bf16"][2])  # a measured difference, not a placeholder


def test_peaks_of_known_devices_and_the_cpu_fallback():
    module = _load()
    import torch

    flops, source = module.peak_flops(torch.device("cpu"), 0.0)
    assert flops > 0 and source == "measured fp32 GEMM (CPU)"
    assert module.peak_flops(torch.device("cpu"), 123.0) == (123e12, "--peak-tflops")
    # the longer name must win where one name contains another (H100 PCIe before H100)
    names = list(module.PEAK_BF16_TFLOPS)
    assert names.index("H100 PCIe") < names.index("H100")
