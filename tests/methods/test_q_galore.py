"""Q-GaLore (optim/q_galore.py) against the official q_galore_torch's pure-PyTorch functions.

The official package is a dev-only test oracle, installed without its dependencies:

    pip install --no-deps q-galore-torch==1.0

Its `__init__` and its optimizer modules import bitsandbytes (CUDA); the projector (`q_galore_projector.py`) is
pure torch and is loaded as it is, under a private package name, without running `__init__` (the wheel has no
`utils/`, whose `_quantize_tensor_int8` is the optimizer's `_quantize`). The two optimizer modules are loaded with a
stand-in `bitsandbytes` (an empty base class) put in sys.modules only while they import, so that their pure-torch
`_quantize` and `_quantize_stochastic_round` can be called; the bitsandbytes Adam kernels themselves are never run
(not reproduced: optim/q_galore.py's docstring).

1. Round to nearest, INT4 projector and INT8 weights: codes, scales and zero points equal the official ones
   bitwise (fp32 and bf16), and so does the dequantised matrix.
2. Stochastic rounding: with the same noise (the same seed of torch's CPU generator), ours equals the official
   `_quantize_stochastic_round` of both the INT8 and the simulation optimizer bitwise (codes and values).
3. The projector over 12 steps with T = 2, a queue of 2 and a threshold that the cosines pass: projected gradients,
   back-projections and the adaptive interval equal the official GaLoreProjector(quant=True) bitwise in fp32.
4. Our own properties: the weights stay on their INT8 grid, stochastic rounding is unbiased, a rerun is bitwise.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types

import pytest
import torch
from lens_testutil import require_package

from lowrank_lens.config import ModelConfig
from lowrank_lens.methods import get_method
from lowrank_lens.methods.surgery import check_param_groups
from lowrank_lens.optim.q_galore import QGaLoreAdamW, dequantize, quantize
from lowrank_lens.presets import build_config

NAME = "q-galore"
# The nano shape (every target and basis splits into groups of 256), one block, a small vocabulary.
CFG = ModelConfig(hidden_size=64, intermediate_size=176, num_layers=1, num_heads=2, vocab_size=64, max_seq_len=16)
STEPS = 6
INSTALL = "official Q-GaLore missing: pip install --no-deps q-galore-torch==1.0"

BAD_VALUES = [
    ("q-galore", "method.proj_bits=1", "method.proj_bits must lie in [2, 8]"),
    ("q-galore", "method.weight_bits=9", "method.weight_bits must lie in [2, 8]"),
    ("q-galore", "method.proj_group_size=0", "method.proj_group_size must be >= 1"),
    ("q-galore", "method.weight_group_size=100", "method.weight_group_size 100 does not divide"),
    ("q-galore", "method.queue_size=0", "method.queue_size must be >= 1"),
    ("q-galore", "method.cos_threshold=2", "method.cos_threshold must lie in [-1, 1]"),
    ("q-galore", "method.gamma_proj=0.5", "method.gamma_proj must be >= 1"),
    ("q-galore", "method.stochastic_round=2", "method.stochastic_round"),
    ("q-galore", "method.proj_group_size=100", "method.proj_group_size 100 does not divide"),
]
"""Invalid settings of this method and a fragment of each one's one-line error (tests/faults/test_bad_config.py
runs them with every other method's)."""


def _official(module: str) -> types.ModuleType:
    """q_galore_torch.<module> from the installed files, without the package's __init__ (bitsandbytes)."""
    spec = importlib.util.find_spec("q_galore_torch")
    if spec is None or not spec.submodule_search_locations:
        require_package("q_galore_torch", INSTALL)
    alias = "_reference_q_galore_torch"
    if alias not in sys.modules:
        pkg = types.ModuleType(alias)
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules[alias] = pkg
    name = f"{alias}.{module}"
    if name in sys.modules or "adamw8bit" not in module:
        return importlib.import_module(name)
    stub = {"bitsandbytes": types.ModuleType("bitsandbytes"), "bitsandbytes.optim": types.ModuleType("b.o"),
            "bitsandbytes.optim.optimizer": types.ModuleType("b.o.o"), "bitsandbytes.functional": types.ModuleType("f")}
    stub["bitsandbytes.optim.optimizer"].Optimizer2State = object  # the base class only; its kernels never run
    saved = {k: sys.modules.get(k) for k in stub}
    sys.modules.update(stub)
    try:
        return importlib.import_module(name)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_to_nearest_equals_official(dtype):
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 16, generator=gen))[0].to(dtype)  # a left projector, m x r
    projector = _official("q_galore_projector").GaLoreProjector(16, quant=True, group_size=256, n_bit=4)
    codes, scales, zeros, _ = projector._quantize(basis, q_group_size=256, n_bit=4)
    ours = quantize(basis, 256, 4)
    for a, b in zip(ours, (codes, scales, zeros), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    official_basis = (scales * (codes.to(scales.dtype) - zeros)).reshape(basis.shape)
    assert torch.equal(dequantize(*ours, basis.shape), official_basis)

    weight = (torch.randn(48, 64, generator=gen) * 0.02).to(dtype)
    codes, scales, zeros = _official("q_galore_adamw8bit").AdamW8bit._quantize(None, weight, q_group_size=256)
    ours = quantize(weight, 256, 8)
    assert torch.equal(ours[0].reshape(weight.shape), codes)
    assert torch.equal(ours[1], scales) and torch.equal(ours[2], zeros)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stochastic_rounding_equals_official(dtype):
    weight = (torch.randn(32, 64, generator=torch.Generator().manual_seed(1)) * 0.02).to(dtype)
    real = _official("q_galore_adamw8bit").AdamW8bit
    sim = _official("q_galore_adamw8bit_simulate").AdamW8bit
    torch.manual_seed(7)
    codes, scales, zeros = real._quantize_stochastic_round(None, weight.clone(), q_group_size=256)
    torch.manual_seed(7)
    values = sim._quantize_stochastic_round(None, weight.clone(), q_group_size=256)
    noise = torch.rand((weight.numel() // 256, 256), generator=torch.Generator().manual_seed(7), dtype=dtype)
    ours = quantize(weight, 256, 8, noise)
    assert torch.equal(ours[0].reshape(weight.shape), codes)
    assert torch.equal(ours[1], scales) and torch.equal(ours[2], zeros)
    assert torch.equal(dequantize(*ours, weight.shape), values)


@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])  # right and left projector
def test_projector_and_adaptive_gap_equal_official(shape):
    rank, gap, group = 8, 2, {"rank": 8, "update_proj_gap": 2, "scale": 0.25, "proj_group_size": 128, "proj_bits": 4,
                              "cos_threshold": -1.0, "gamma_proj": 2.0, "queue_size": 2}
    official = _official("q_galore_projector").GaLoreProjector(
        rank, update_proj_gap=gap, scale=0.25, quant=True, group_size=128, n_bit=4, cos_threshold=-1.0,
        gamma_proj=2, queue_size=2)
    weight = torch.zeros(shape, requires_grad=True)
    opt = QGaLoreAdamW([{"params": [weight], **group}])
    group = opt.param_groups[0]
    state = {"step": 0}
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(shape, generator=gen)
    gaps = []
    for step in range(12):
        grad = base + 0.3 * torch.randn(shape, generator=gen)
        low = opt._project(state, grad, group)
        assert torch.equal(low, official.project(grad, step)), step
        direction = opt._direction(state, grad, low, low, group)
        assert torch.equal(direction, official.project_back(low)), step
        assert state["proj_gap"] == official.update_proj_gap
        gaps.append(state["proj_gap"])
        state["step"] += 1
    assert official.svd_count == 4 and gaps[-1] == 8  # refreshes at 0, 2, 4, 8; the gap doubled at 4 and 8


def _train(base_model, batches, steps=STEPS, sets=()):
    model = copy.deepcopy(base_model)
    cfg = build_config("nano", NAME, ["method.update_proj_gap=2", *sets])
    method = get_method(NAME)(cfg.method_cfg, cfg)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    for x in batches[:steps]:
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
    return model, opt


def test_weights_stay_on_their_int8_grid_and_rerun_is_bitwise(base_model, batches):
    model, opt = _train(base_model, batches)
    again, _ = _train(base_model, batches)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    projected = opt.param_groups[1]["params"]
    for p in projected:
        state = opt.state[p]
        rows = p.detach().reshape(-1, 256)
        levels = rows / state["weight_scales"] + state["weight_zeros"]
        assert (levels - levels.round()).abs().max() < 1e-3
        assert levels.round().min() >= 0 and levels.round().max() <= 255
        assert state["basis_codes"].dtype == torch.uint8 and int(state["basis_codes"].max()) <= 15
    moved = sum(not torch.equal(p, q) for p, q in zip(base_model.parameters(), model.parameters(), strict=True))
    assert moved == len(list(model.parameters()))


def test_stochastic_rounding_is_unbiased():
    """Inside the grid's range; within a step of its ends the clamp of the rounded zero point biases the codes, as
    upstream (the grid is [-z, 2^b - 1 - z]·s with z = round(-min / s), not [min, max])."""
    w = torch.linspace(-1, 1, 256).reshape(1, 256)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([dequantize(*quantize(w, 256, 4, torch.rand(1, 256, generator=gen)), w.shape)
                         for _ in range(2000)])
    step = float(quantize(w, 256, 4)[1])
    inside = (w.abs() < 1 - 1.5 * step)
    assert ((draws.mean(0) - w).abs()[inside]).max() < 0.1 * step  # 2000 draws: standard error <= step / 89
    nearest = dequantize(*quantize(w, 256, 4), w.shape)
    assert (nearest - w).abs().max() <= step / 2 + 1e-6


def test_footprint_counts_uint8_codes_as_one_byte():
    cfg = build_config("nano", NAME)
    fp = get_method(NAME).footprint(cfg)
    floats = sum(v for g in fp.state for k, v in g.items() if k != "basis_codes")
    assert fp.state_bytes == 4 * floats + fp.state[1]["basis_codes"]
