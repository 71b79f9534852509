"""GaLoreAdamW / FiraAdamW against the official optimizers published on PyPI (docs/methods.md §2.2, §3.2).

The reference packages are dev-only test dependencies. Install them WITHOUT their dependencies (they
would otherwise pull a CUDA torch and bitsandbytes):

    pip install --no-deps galore-torch==1.0 fira==1.0.2

`galore_torch/__init__.py` imports bitsandbytes, so only the module files we need are loaded, under a
private package name, without running that `__init__`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import sys
import types

import pytest
import torch
from lens_testutil import require_package

from lowrank_lens.config import ModelConfig
from lowrank_lens.methods import get_method
from lowrank_lens.methods.surgery import check_param_groups, target_modules
from lowrank_lens.model import build_model
from lowrank_lens.optim import FiraAdamW, GaLoreAdamW
from lowrank_lens.optim.projector import SVDFallbackWarning
from lowrank_lens.presets import build_config

INSTALL = "reference optimizers missing: pip install --no-deps galore-torch==1.0 fira==1.0.2"
CFG = ModelConfig(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=2, vocab_size=64, max_seq_len=16)
RANK, GAP, ALPHA, LR = 8, 3, 0.25, 1e-2  # T = 3: the subspace is refreshed at steps 0, 3, 6, 9
STEPS = 12


def _reference_module(package: str, module: str) -> types.ModuleType:
    """Load `package.module` from the installed files without executing the package's __init__."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        require_package(package, INSTALL)  # skips loudly; fails in CI, whose README command installs them
    alias = f"_reference_{package}"
    if alias not in sys.modules:
        pkg = types.ModuleType(alias)
        pkg.__path__ = list(spec.submodule_search_locations)  # relative imports resolve to the same folder
        sys.modules[alias] = pkg
    return importlib.import_module(f"{alias}.{module}")


def reference_optimizer(method: str):
    """The official AdamW of GaLore (galore_torch/adamw.py) or Fira (fira/fira_adamw.py)."""
    return _reference_module(*{"galore": ("galore_torch", "adamw"), "fira": ("fira", "fira_adamw")}[method]).AdamW


def groups(model, alpha_key: str = "scale", rank: int = RANK) -> list[dict]:
    """Plain group + projected group (the 7 target linears per block), as the reference scripts build them."""
    projected = [m.weight for _, m in target_modules(model, get_method("galore").Config().targets)]
    ids = {id(p) for p in projected}
    plain = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": plain},
            {"params": projected, "rank": rank, "update_proj_gap": GAP, alpha_key: ALPHA, "proj_type": "std"}]


def train(model, opt, batches) -> list[float]:
    losses = []
    for x in batches:
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def ours(method: str, model, wd: float = 0.0, **kw) -> torch.optim.Optimizer:
    cls = GaLoreAdamW if method == "galore" else FiraAdamW
    return cls(groups(model), lr=LR, weight_decay=wd, **kw)


def rel_err(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(((pa.float() - pb.float()).norm() / pb.float().norm()).item()
               for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


# ---- equivalence with the official optimizers ------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("method", ["galore", "fira"])
def test_matches_reference_step_by_step(method, wd, dtype, base_model, batches):
    Ref = reference_optimizer(method)
    a, b = copy.deepcopy(base_model).to(dtype), copy.deepcopy(base_model).to(dtype)
    opt_a = ours(method, a, wd)
    opt_b = Ref(groups(b, "scale" if method == "galore" else "alpha"), lr=LR, weight_decay=wd,
                no_deprecation_warning=True)
    for step, x in enumerate(batches):  # same batches; each model computes its own gradient
        for model, opt in ((a, opt_a), (b, opt_b)):
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        err = rel_err(a, b)
        assert err <= 1e-6, f"step {step}: relative parameter error {err:.3g}"
    assert rel_err(a, copy.deepcopy(base_model).to(dtype)) > 0.1  # the trajectory really moved


# ---- Fira: paper's Algorithm 1 vs the official code -----------------------------------------------
def test_fira_paper_mode_differs_from_code_mode(base_model, batches):
    a, b = copy.deepcopy(base_model), copy.deepcopy(base_model)
    train(a, ours("fira", a, residual="code"), batches[:4])
    train(b, ours("fira", b, residual="paper"), batches[:4])
    assert rel_err(a, b) > 1e-3


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_fira_one_step_equals_hand_computed_update(mode):
    # G = [[2, 1], [1, 2]]: singular values 3 and 1, top right-singular vector (1, 1)/√2 (sign irrelevant).
    # Square -> right projector Q (1 x 2), R = G Qᵀ = (3/√2)(1, 1)ᵀ, R Q = 1.5 · ones.
    lr, alpha, eps, (b1, b2) = 0.1, 0.25, 1e-6, (0.9, 0.999)
    w0 = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    w = torch.nn.Parameter(w0.clone())
    w.grad = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    opt = FiraAdamW([{"params": [w], "rank": 1, "update_proj_gap": 10, "scale": alpha}], lr=lr, residual=mode)
    opt.step()

    r = 3 / math.sqrt(2)  # |R_i| for both rows
    n = (1 - b1) * r / (math.sqrt(1 - b2) * r + eps)  # |N_i| after one step: M/(√V + eps), uncorrected
    phi = n / (r + 1e-8)  # per-row ‖N_i‖ / (‖R_i‖ + 1e-8), equal for both rows here
    step_size = lr * math.sqrt(1 - b2) / (1 - b1)
    ones, g = torch.ones(2, 2), w.grad
    pn = n / math.sqrt(2) * ones  # P·N = N Q
    if mode == "code":
        update = alpha * pn + phi * (g - alpha * 1.5 * ones)  # S = G - α·R Q, not scaled by α
    else:
        update = alpha * (pn + phi * (g - 1.5 * ones))  # S = G - R Q, α on both terms
    torch.testing.assert_close(w.detach(), w0 - step_size * update, rtol=1e-6, atol=1e-6)


def test_fira_limiter_caps_residual_growth_at_gamma():
    w = torch.nn.Parameter(torch.zeros(6, 4))
    opt = FiraAdamW([{"params": [w], "rank": 1, "update_proj_gap": 100, "scale": 1.0}], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    w.grad = torch.randn(6, 4, generator=g)
    opt.step()
    first = opt.state[w]["residual_norm"].item()
    q = opt.state[w]["basis"]  # 1 x 4 (right projector)
    # A spike outside the subspace: R = G Qᵀ is unchanged, the residual grows about 100x.
    w.grad = w.grad + 100 * (w.grad - w.grad @ q.t() @ q)
    opt.step()
    assert opt.state[w]["residual_norm"].item() == pytest.approx(1.01 * first, rel=1e-5)


# ---- state: shapes, plain tensors, exact resume ----------------------------------------------------
def test_projected_state_has_projected_shapes(base_model, batches):
    model = copy.deepcopy(base_model)
    opt = ours("galore", model)
    train(model, opt, batches[:1])
    layer = model.model.layers[0]
    h, f = CFG.hidden_size, CFG.intermediate_size
    expected = {  # (moments, basis, right?) per weight of torch layout out x in
        layer.self_attn.q_proj.weight: ((h, RANK), (RANK, h), True),  # square: right, out x r
        layer.mlp.up_proj.weight: ((f, RANK), (RANK, h), True),  # tall: right, out x r
        layer.mlp.down_proj.weight: ((RANK, f), (h, RANK), False),  # wide: left, r x in
    }
    for p, (moments, basis, right) in expected.items():
        st = opt.state[p]
        assert st["exp_avg"].shape == st["exp_avg_sq"].shape == moments
        assert st["basis"].shape == basis and bool(st["proj_right"]) is right
    assert opt.state[model.model.embed_tokens.weight]["exp_avg"].shape == (CFG.vocab_size, h)  # plain group


# ---- SVD failure (GaLore issue #58) ----------------------------------------------------------------
def _failing_svd(monkeypatch, fail_calls):
    """torch.linalg.svd raising LinAlgError on the listed call numbers (0-based)."""
    real, calls = torch.linalg.svd, {"n": 0}

    def svd(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] - 1 in fail_calls:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", svd)
    return calls


def test_svd_failing_once_warns_and_training_continues(monkeypatch, base_model, batches):
    model = copy.deepcopy(base_model)
    opt = ours("galore", model)
    _failing_svd(monkeypatch, {0})
    with pytest.warns(SVDFallbackWarning, match="retry succeeded"):
        losses = train(model, opt, batches[:5])
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_svd_failing_at_refresh_keeps_previous_projector(monkeypatch):
    w = torch.nn.Parameter(torch.zeros(5, 3))
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 2, "scale": 1.0}], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    w.grad = torch.randn(5, 3, generator=g)
    opt.step()
    before = opt.state[w]["basis"].clone()
    _failing_svd(monkeypatch, set(range(100)))  # every attempt fails from now on
    with pytest.warns(SVDFallbackWarning, match="keeping the previous projector"):
        for _ in range(3):  # steps 1, 2 (refresh due: 2 % T == 0), 3
            w.grad = torch.randn(5, 3, generator=g)
            opt.step()
    assert torch.equal(opt.state[w]["basis"], before)
    assert torch.isfinite(w).all() and opt.state[w]["step"] == 4


def test_svd_failing_before_any_projector_uses_coordinate_axes(monkeypatch):
    w = torch.nn.Parameter(torch.zeros(3, 5))  # wide: left projector, m x r
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "scale": 1.0}], lr=1e-2)
    _failing_svd(monkeypatch, set(range(100)))
    w.grad = torch.randn(3, 5)
    with pytest.warns(SVDFallbackWarning, match="coordinate axes"):
        opt.step()
    assert torch.equal(opt.state[w]["basis"], torch.eye(3)[:, :2])
    assert torch.isfinite(w).all()


def test_svd_out_of_memory_is_raised_not_hidden_by_a_fallback(monkeypatch):
    w = torch.nn.Parameter(torch.zeros(5, 3))
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "scale": 1.0}], lr=1e-2)

    def svd(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(torch.linalg, "svd", svd)
    w.grad = torch.randn(5, 3)
    with pytest.raises(torch.OutOfMemoryError):
        opt.step()


# ---- the method plugins ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["galore", "fira"])
def test_plugin_groups_and_settings(name):
    cfg = build_config("nano", name)
    method = get_method(name)(cfg.method_cfg, cfg)
    model = build_model(cfg.model, seed=0)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    plain, projected = opt.param_groups
    targets = [m.weight for _, m in target_modules(model, cfg.method_cfg.targets)]
    assert [id(p) for p in projected["params"]] == [id(p) for p in targets]
    assert len(targets) == 7 * cfg.model.num_layers
    assert "rank" not in plain and plain["lr"] == projected["lr"] == cfg.optim.lr
    assert plain["eps"] == projected["eps"] == 1e-6
    assert projected["rank"] == cfg.model.hidden_size // 4
    assert (type(opt) is FiraAdamW) == (name == "fira")


@pytest.mark.parametrize("name", ["galore", "fira"])
def test_presets_follow_the_study(name):
    M = get_method(name)
    for scale, rank in (("60m", 128), ("130m", 256), ("350m", 256)):
        p = M.preset(scale)
        assert p.params["rank"] == rank and p.params["update_proj_gap"] == 200 and p.params["scale"] == 0.25
        assert p.optim["lr"] == 1e-2
    one_b = M.preset("1b")
    assert one_b.params["rank"] == 512 and one_b.params["scale"] == (0.0625 if name == "fira" else 0.25)
    assert any("1024" in n for n in one_b.notes) == (name == "galore")
    assert M.preset("micro").params["rank"] == 0  # automatic: hidden // 4 of the final shape
    assert build_config("micro", name).method_cfg.rank == 32
