"""The optimizer state each method really creates equals its closed form (docs/memory.md, methods.md §2-6).

Built as training builds it, on the meta device (nothing is allocated), with one forward/backward and one
optimizer step; the measuring code and the closed forms are those of benchmarks/bench_memory.py. A change
that adds, drops or resizes optimizer state (or parameters, or gradients) of any method fails here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from lowrank_lens.methods import method_names

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_memory.py"


def _bench():
    name = "lowrank_lens_bench_memory"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize(("preset", "precision"), [("60m", "bf16-pure")])
def test_measured_state_equals_closed_form(method: str, preset: str, precision: str) -> None:
    bench = _bench()
    r = bench.measure(preset, method, precision)
    assert r["closed"] is not None, f"{method} has no closed form in benchmarks/bench_memory.py; add one"
    assert r["counts"] == r["closed"], f"{method} at {preset}: measured {r['counts']} != closed form {r['closed']}"
    assert r["mem"]["optimizer_state_bytes"] == bench.closed_form_state_bytes(r["closed"], precision)
    size = 2 if precision == "bf16-pure" else 4
    assert r["mem"]["param_bytes"] == size * r["closed"]["params_total"]
    assert r["mem"]["grad_bytes"] == size * r["closed"]["grads"]


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
    """Spot values of the formulas themselves (bf16, 60m: h 512, i 1376, L 8, V 32000, r 128)."""
    bench = _bench()
    from lowrank_lens.presets import build_config

    plain = 2 * 32000 * 512 + 17 * 512  # embedding, LM head, 17 RMSNorms
    dense = 8 * (4 * 512 * 512 + 3 * 512 * 1376)
    full = bench.closed_form(build_config("60m", "full-rank"))
    assert full["params_total"] == plain + dense == 58_073_600
    assert full["exp_avg"] == full["exp_avg_sq"] == plain + dense and full["step"] == 2 + 17 + 56
    galore = bench.closed_form(build_config("60m", "galore"))
    # per block: 4 square (512 x r moments, r x 512 basis), gate/up 1376 x r, down r x 1376 (left side)
    assert galore["exp_avg"] == plain + 8 * 128 * (4 * 512 + 3 * 1376)
    assert galore["basis"] == 8 * 7 * 128 * 512 and galore["step"] == 0
    relora = bench.closed_form(build_config("60m", "relora"))
    assert relora["params_trainable"] == 42_770_944 and relora["params_total"] == 58_073_600 + 128 * 8 * (
        4 * 1024 + 3 * (512 + 1376))
