"""FloraAdafactor against the official optimizer on PyPI, plus known answers of Flora's compressed momentum.

The reference package is a dev-only test dependency, installed WITHOUT its dependencies:

    pip install --no-deps flora-opt==0.0.3

Its torch module imports bitsandbytes (used only by `quantization=True`) and accelerate (`FloraAccelerator`) at
the top; where they are missing, stand-ins are put in sys.modules while that one file is loaded under a private
name, without running the package's __init__ (which also tries JAX).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
from lens_testutil import require_package

from lowrank_lens.config import ModelConfig
from lowrank_lens.methods import get_method
from lowrank_lens.methods.surgery import check_param_groups, target_modules
from lowrank_lens.model import build_model
from lowrank_lens.optim.flora_adafactor import FloraAdafactor, down, next_seed, projection, up
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.log import read_log
from lowrank_lens.train import train

NAME = "flora"
INSTALL = "reference optimizer missing: pip install --no-deps flora-opt==0.0.3"
CFG = ModelConfig(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=2, vocab_size=64, max_seq_len=16)
RANK, KAPPA, LR = 8, 3, 5e-2  # κ = 3: the projection is re-drawn at updates 3, 6, 9
STEPS = 10


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def reference_flora() -> type:
    """The official `flora_opt.optimizers.torch.flora.Flora` (module docstring for how it is loaded)."""
    alias = "_reference_flora_torch"
    if alias not in sys.modules:
        if not _importable("flora_opt"):
            require_package("flora_opt", INSTALL)  # skips loudly; fails in CI
        root = Path(importlib.util.find_spec("flora_opt").submodule_search_locations[0])
        stubs: dict[str, types.ModuleType] = {}
        if not _importable("bitsandbytes"):
            bnb, functional = types.ModuleType("bitsandbytes"), types.ModuleType("bitsandbytes.functional")
            functional.quantize_blockwise = functional.dequantize_blockwise = None
            bnb.functional = functional
            stubs.update({"bitsandbytes": bnb, "bitsandbytes.functional": functional})
        if not _importable("accelerate"):
            stubs["accelerate"] = types.SimpleNamespace(Accelerator=object)
        spec = importlib.util.spec_from_file_location(alias, root / "optimizers" / "torch" / "flora.py")
        module = importlib.util.module_from_spec(spec)
        with mock.patch.dict(sys.modules, stubs):
            spec.loader.exec_module(module)
        sys.modules[alias] = module
    return sys.modules[alias].Flora


def groups(model, plain_extra=(), projected=None):
    targets = [m.weight for _, m in target_modules(model, get_method(NAME).Config().targets)]
    ids = {id(p) for p in targets}
    projected = {"rank": RANK, "kappa": KAPPA} if projected is None else projected
    return [{"params": [p for p in model.parameters() if id(p) not in ids], **dict(plain_extra)},
            {"params": targets, **projected}]


def ours(model, wd=0.0, **kw):
    return FloraAdafactor(groups(model), lr=LR, betas=(0.9, 0.8), weight_decay=wd, **kw)


def run(model, opt, batches):
    for x in batches:
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


# ---- equivalence with the official optimizer ------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_matches_the_official_optimizer_bit_for_bit(dtype, wd, base_model, batches):
    Ref = reference_flora()
    a, b = copy.deepcopy(base_model).to(dtype), copy.deepcopy(base_model).to(dtype)
    opt_a = ours(a, wd)
    # Same groups: no rank on the plain group (the official rank is per group), the defaults otherwise:
    # eps (1e-30, 1e-3), clip 1, decay -0.8, scale_parameter, seed 0, no quantization.
    opt_b = Ref(groups(b, {"rank": None}.items()), lr=LR, beta1=0.9, weight_decay=wd)
    for step, x in enumerate(batches):  # same batches; each model computes its own gradient
        for model, opt in ((a, opt_a), (b, opt_b)):
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        bad = [n for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True) if not torch.equal(pa, pb)]
        assert not bad, f"update {step + 1}: {bad[:3]} differ"
    q = a.model.layers[0].self_attn.q_proj.weight
    assert opt_a.state[q]["seed"] == opt_b.state[b.model.layers[0].self_attn.q_proj.weight]["seed"] != 0
    moved = max((pa.float() - p0.float()).abs().max().item()
                for pa, p0 in zip(a.parameters(), base_model.parameters(), strict=True))
    assert moved > 1e-2


# ---- known answers -------------------------------------------------------------------------------------------
def test_state_shapes_and_dtypes(base_model, batches):
    model = copy.deepcopy(base_model).to(torch.bfloat16)
    opt = ours(model)
    run(model, opt, batches[:1])
    layer, h, i = model.model.layers[0], CFG.hidden_size, CFG.intermediate_size
    expected = {layer.self_attn.q_proj.weight: (h, RANK), layer.mlp.up_proj.weight: (i, RANK),  # right: m x r
                layer.mlp.down_proj.weight: (RANK, i),  # wide (h x i): left, r x n
                model.model.embed_tokens.weight: (CFG.vocab_size, h)}  # plain group: full-size momentum
    for p, shape in expected.items():
        st = opt.state[p]
        assert st["exp_avg"].shape == shape and st["exp_avg_sq_row"].shape == p.shape[:1]
        assert st["exp_avg_sq_col"].shape == p.shape[1:] and st["RMS"].dim() == 0
    norm = opt.state[model.model.norm.weight]
    assert norm["exp_avg_sq"].shape == norm["exp_avg"].shape == (h,) and "exp_avg_sq_row" not in norm
    assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def _twin_runs(steps, kappa):
    """One m x n weight stepped with the same gradients by a projected and a plain (full momentum) optimizer."""
    g = torch.Generator().manual_seed(1)
    w1, w2 = (torch.nn.Parameter(torch.randn(24, 40, generator=torch.Generator().manual_seed(0))) for _ in range(2))
    low = FloraAdafactor([{"params": [w1], "rank": 12, "kappa": kappa}], lr=1e-2)
    plain = FloraAdafactor([w2], lr=1e-2)
    for t in range(steps):
        grad = torch.randn(24, 40, generator=g)
        w1.grad, w2.grad = grad.clone(), grad.clone()
        low.step()
        plain.step()
        if t == 0:
            assert torch.equal(w1, w2)  # M = 0: the first update is (1 - β1) U either way
    return w1, w2, low.state[w1], plain.state[w2]


def test_compressed_momentum_is_the_projection_of_the_full_momentum():
    """Down-projection is linear and U does not depend on the momentum, so with one projection (κ > steps) the
    r x n momentum equals L · M_full of plain Adafactor fed the same gradients (to fp32 rounding)."""
    _, _, low, plain = _twin_runs(6, kappa=1000)
    proj = projection(low["seed"], 12, (24, 40), torch.device("cpu"))
    assert proj.shape == (12, 24) and low["exp_avg"].shape == (12, 40)  # wide: left projection
    torch.testing.assert_close(low["exp_avg"], down(proj, plain["exp_avg"]), rtol=1e-5, atol=1e-6)


def test_projection_is_redrawn_every_kappa_updates_and_the_momentum_transferred():
    w1, _, low, plain = _twin_runs(7, kappa=3)
    seed = 1  # parameter 1 of optimizer seed 0
    for _ in range(2):  # re-drawn at updates 3 and 6
        seed = next_seed(seed)
    assert low["seed"] == seed
    proj = projection(seed, 12, (24, 40), torch.device("cpu"))
    # after a transfer the momentum is no longer L · M_full (up ∘ down is not the identity) ...
    assert not torch.allclose(low["exp_avg"], down(proj, plain["exp_avg"]), rtol=1e-3)
    # ... but stays close to it in the sense of the unbiased sketch: same scale, positively aligned
    full = up(proj, low["exp_avg"], (24, 40))
    cos = torch.nn.functional.cosine_similarity(full.flatten(), plain["exp_avg"].flatten(), dim=0)
    assert cos > 0.3


def test_random_projection_is_unbiased():
    """E[P Pᵀ] = I for entries N(0, 1/r): up(down(X)) averages to X over seeds (Flora's compression lemma)."""
    x = torch.randn(6, 20, generator=torch.Generator().manual_seed(3))  # wide: left L (r x 6)
    mean = sum(up(p, down(p, x), x.shape) for p in (projection(s, 4, x.shape, torch.device("cpu"))
                                                    for s in range(400))) / 400
    assert ((mean - x).norm() / x.norm()).item() < 0.15


def test_one_adafactor_step_by_hand():
    """Vector, β1 = 0: ρ_1 = 0, so V = G² + eps, U = G / sqrt(V) ≈ sign(G); RMS(U) = 1 is not clipped."""
    w0 = torch.tensor([2.0, -1.0, 0.5, 0.25])
    w = torch.nn.Parameter(w0.clone())
    w.grad = torch.tensor([0.3, -0.2, 0.0001, 4.0])
    FloraAdafactor([w], lr=0.1, betas=(0.0, 0.8)).step()
    rms = math.sqrt(sum(v * v for v in w0.tolist()) / 4)
    torch.testing.assert_close(w.detach(), w0 - 0.1 * rms * torch.sign(w.grad), rtol=1e-6, atol=1e-6)


# ---- the plugin ----------------------------------------------------------------------------------------
def test_plugin_groups_and_settings():
    cfg = build_config("nano", NAME)
    method = get_method(NAME)(cfg.method_cfg, cfg)
    model = build_model(cfg.model, seed=0)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    plain, projected = opt.param_groups
    assert "rank" not in plain and len(projected["params"]) == 7 * cfg.model.num_layers
    assert (projected["rank"], projected["kappa"]) == (cfg.model.hidden_size // 4, 10)
    assert plain["betas"] == (0.9, 0.8) and plain["eps"] == 1e-30 and plain["eps_scale"] == 1e-3
    assert plain["scale_parameter"] and plain["lr"] == 5e-2
    assert all(opt.compressed(projected, p.shape) for p in projected["params"])


def test_presets():
    for scale, rank in {"60m": 128, "130m": 256, "350m": 256, "1b": 512}.items():
        p = get_method(NAME).preset(scale)
        assert p.params["rank"] == rank and p.params["kappa"] == 1000 and p.params["decay_rate"] == 0.8
        assert p.optim == {"lr": 1e-2, "weight_decay": 0.0, "grad_clip": 0.0, "beta1": 0.9}
        assert any(n.startswith("inferred") for n in p.notes)
    assert build_config("micro", NAME, ["model.hidden_size=64", "model.num_heads=4"]).method_cfg.rank == 16


def test_a_target_the_official_rule_excludes_keeps_a_full_momentum_and_the_footprint_says_so():
    """At hidden 64 the micro MLP is 352 x 64 (aspect 5.5 > 4): official Flora keeps its momentum full-size."""
    cfg = build_config("micro", NAME, ["model.hidden_size=64", "model.num_heads=4"])
    method = get_method(NAME)(cfg.method_cfg, cfg)
    model = build_model(cfg.model, seed=0)
    opt = method.build_optimizer(model, cfg.optim)
    x = torch.randint(0, cfg.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    layer = model.model.layers[0]
    assert opt.state[layer.mlp.up_proj.weight]["exp_avg"].shape == (352, 64)
    assert opt.state[layer.self_attn.q_proj.weight]["exp_avg"].shape == (64, 16)
    held = [sum(v.numel() for p in g["params"] for v in opt.state[p].values() if torch.is_tensor(v))
            for g in opt.param_groups]
    assert held == [sum(g.values()) for g in method.footprint(cfg).state]


@pytest.mark.slow
def test_trains_at_micro_with_a_falling_validation_loss(tmp_path):
    sets = ["train.steps=30", "train.total_batch_size=8", "train.micro_batch_size=8", "train.eval_every=15",
            "train.checkpoints=1", "train.log_every=15", "optim.warmup_steps=3"]
    run_dir = train(build_config("micro", NAME, sets), tmp_path)
    losses = [v["val_loss"] for v in read_log(run_dir, "val")]
    assert losses[2] < losses[1] < losses[0] - 0.5, losses
