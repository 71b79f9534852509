"""What each method really holds equals the footprint its plugin declares (docs/memory.md, issue 12 item 13).

`Method.footprint` (in each method's own file) is the closed form: parameter tensors (trainable, frozen),
added buffers, optimizer-state elements per key and parameter group, and bytes. benchmarks/bench_memory.py
measures independently: it builds as training builds, on the meta device (nothing is allocated), runs one
forward/backward and optimizer step, and reads the tensors. A change that adds, drops or resizes state,
parameters, gradients or buffers of any method without its plugin saying so fails here; a new method is
covered without editing this file or the benchmark.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from lowrank_lens.methods import method_names

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_memory.py"
PRESETS = ("micro", "60m", "130m", "350m", "1b")  # bench_memory.PRESETS: the tables of docs/memory.md
CHECKED = ("micro", "60m", "1b")
"""The presets measured here: the smallest, the paper's smallest and the largest (ranks 32, 128 and 512, every
shape rule). 130m and 350m take the same formulas at sizes in between, and cost as much again; the benchmark
measures all five whenever it writes docs/memory.md, whose "state = closed form" column says exact or differs."""


def _bench():
    name = "lowrank_lens_bench_memory"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_presets_are_the_benchmarks():
    assert _bench().PRESETS == PRESETS


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("preset", CHECKED)
def test_measured_tensors_equal_the_plugin_footprint(method: str, preset: str) -> None:
    r = _bench().measure(preset, method, "bf16-pure")
    assert r["counts"] == r["closed"], f"{method} at {preset}: measured {r['counts']} != plugin {r['closed']}"
    mem, closed = r["mem"], r["closed"]
    assert mem["param_bytes"] == 2 * closed["params_total"] and mem["grad_bytes"] == 2 * closed["grads"]
    assert mem["optimizer_state_bytes"] == closed["state_bytes"]


def test_the_shipped_tables_found_every_preset_exact() -> None:
    """docs/memory.md as shipped: a row per method at each of the five presets (the unchecked ones included),
    each measured equal to its plugin's closed form when the benchmark wrote it."""
    table = [[c.strip() for c in line.split("|")[1:-1]]
             for line in (BENCH.parents[1] / "docs" / "memory.md").read_text().splitlines() if line.startswith("|")]
    header = next(c for c in table if c[:2] == ["preset", "method"] and "state = closed form" in c)
    column = header.index("state = closed form")
    rows = {(c[0], c[1]): c[column] for c in table if len(c) == len(header) and c[0] in PRESETS}
    assert set(rows) == {(p, m) for p in PRESETS for m in method_names()}, "docs/memory.md misses rows: rerun " \
        "benchmarks/bench_memory.py"
    assert set(rows.values()) == {"exact"}, {k: v for k, v in rows.items() if v != "exact"}


@pytest.mark.parametrize("method", method_names())
def test_meta_measurement_equals_real_tensors(method: str) -> None:
    """The meta-device path (model on meta, SVD without its finiteness check, zeros_like gradients where a
    forward cannot run on meta) counts what real CPU tensors hold, at nano in both precisions."""
    bench = _bench()
    for precision in ("bf16-pure", "fp32"):
        meta = bench.measure("nano", method, precision)
        real = bench.measure("nano", method, precision, device=torch.device("cpu"))
        assert real["grads_from"] == "yes"
        assert meta["counts"] == real["counts"] == real["closed"]
        assert meta["mem"] == real["mem"]
        assert meta["state_bytes_by_key"] == real["state_bytes_by_key"]


def test_closed_forms_at_60m_by_hand() -> None:
    """Spot values of the plugins' formulas themselves (bf16, 60m: h 512, i 1376, L 8, V 32000, r 128)."""
    bench = _bench()
    from lowrank_lens.presets import build_config

    plain = 2 * 32000 * 512 + 17 * 512  # embedding, LM head, 17 RMSNorms
    dense = 8 * (4 * 512 * 512 + 3 * 512 * 1376)
    full = bench.closed_form(build_config("60m", "full-rank"))
    assert full["params_total"] == plain + dense == 58_073_600
    assert full["state"] == {"exp_avg": plain + dense, "exp_avg_sq": plain + dense, "step": 2 + 17 + 56}
    assert full["state_bytes"] == 2 * 2 * (plain + dense) + 4 * 75
    galore = bench.closed_form(build_config("60m", "galore"))
    # per block: 4 square (512 x r moments, r x 512 basis), gate/up 1376 x r, down r x 1376 (left side)
    low = 8 * 128 * (4 * 512 + 3 * 1376)
    assert galore["state_groups"] == [{"exp_avg": plain, "exp_avg_sq": plain},
                                      {"exp_avg": low, "exp_avg_sq": low, "basis": 8 * 7 * 128 * 512, "proj_right": 56}]
    relora = bench.closed_form(build_config("60m", "relora"))
    assert relora["params_trainable"] == 42_770_944 and relora["params_total"] == 58_073_600 + 128 * 8 * (
        4 * 1024 + 3 * (512 + 1376))
    sltrain = bench.closed_form(build_config("60m", "sltrain"))
    nnz = 8 * (4 * int(0.03 * 512 * 512) + 3 * int(0.03 * 512 * 1376))
    assert sltrain["buffers"] == nnz and sltrain["buffer_bytes"] == 8 * nnz  # int64 support indices
