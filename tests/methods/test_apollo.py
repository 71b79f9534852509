"""APOLLO / APOLLO-Mini (optim/apollo_adamw.py, methods/apollo.py, methods/apollo_mini.py) against the official
optimizer on PyPI and by hand-derived properties.

The reference package is a dev-only test dependency; install it WITHOUT its dependencies (they would pull a CUDA
torch and bitsandbytes):

    pip install --no-deps apollo-torch==1.0.3

`apollo_torch/__init__.py` imports the 8-bit GaLore optimizer (bitsandbytes), so only `apollo.py` (with its
relative imports) is loaded, under a private package name, without running that `__init__`.
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
from lowrank_lens.methods.base import DEFAULT_TARGETS
from lowrank_lens.methods.schedule import stable_seed
from lowrank_lens.methods.surgery import check_param_groups, target_modules
from lowrank_lens.model import build_model, count_parameters
from lowrank_lens.optim.apollo_adamw import ApolloAdamW, next_seed, random_projection
from lowrank_lens.optim.limiter import limit_norm_growth
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.log import read_log
from lowrank_lens.train import train

INSTALL = "reference optimizer missing: pip install --no-deps apollo-torch==1.0.3"
CFG = ModelConfig(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=2, vocab_size=64, max_seq_len=16)
GAP, LR, STEPS = 3, 1e-2, 12  # T = 3: projections are redrawn at steps 0, 3, 6, 9
# (rank, scale_type, scale, scale_front): APOLLO's channel-wise rule, and APOLLO-Mini with the limiter after
# and before the scale (the official --scale_front).
VARIANTS = {"apollo": (8, "channel", 2.0, False), "mini": (1, "tensor", 128.0, False),
            "mini-front": (1, "tensor", 128.0, True)}


def reference_optimizer():
    """The official APOLLO AdamW (apollo_torch/apollo.py), loaded without the package's __init__."""
    spec = importlib.util.find_spec("apollo_torch")
    if spec is None or not spec.submodule_search_locations:
        require_package("apollo_torch", INSTALL)  # skips loudly; fails in CI
    alias = "_reference_apollo_torch"
    if alias not in sys.modules:
        pkg = types.ModuleType(alias)
        pkg.__path__ = list(spec.submodule_search_locations)  # relative imports resolve to the same folder
        sys.modules[alias] = pkg
    return importlib.import_module(f"{alias}.apollo").AdamW


def groups(model, variant: str) -> list[dict]:
    """Plain group + projected group (the 7 target linears per block), as the official main_pretrain.py builds."""
    rank, scale_type, scale, _ = VARIANTS[variant]
    projected = [m.weight for _, m in target_modules(model, DEFAULT_TARGETS)]
    ids = {id(p) for p in projected}
    return [{"params": [p for p in model.parameters() if id(p) not in ids]},
            {"params": projected, "rank": rank, "update_proj_gap": GAP, "scale": scale, "proj_type": "std",
             "proj": "random", "scale_type": scale_type}]


def ours(model, variant: str, wd: float = 0.0, **kw) -> ApolloAdamW:
    return ApolloAdamW(groups(model, variant), lr=LR, weight_decay=wd, scale_front=VARIANTS[variant][3], **kw)


def step_all(model, opt, batches) -> list[float]:
    losses = []
    for x in batches:
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


# ---- equivalence with the official optimizer ------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_reference_bitwise_step_by_step(variant, wd, dtype, base_model, batches):
    """Bitwise on CPU with seeding="official" (the index seeds, the seed chain, the draws), the same projection,
    moments, factors, limiter and weight decay."""
    Ref = reference_optimizer()
    a, b = copy.deepcopy(base_model).to(dtype), copy.deepcopy(base_model).to(dtype)
    opt_a = ours(a, variant, wd, seeding="official")
    opt_b = Ref(groups(b, variant), lr=LR, weight_decay=wd, scale_front=VARIANTS[variant][3])
    for step, x in enumerate(batches):  # same batches; each model computes its own gradient
        for model, opt in ((a, opt_a), (b, opt_b)):
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb), f"step {step}: parameters differ"
    for pa, pb in zip(opt_a.param_groups[1]["params"], opt_b.param_groups[1]["params"], strict=True):
        assert torch.equal(opt_a.state[pa]["basis"], opt_b.state[pb]["projector"].ortho_matrix)
        assert opt_a.state[pa]["seed"] == opt_b.state[pb]["projector"].seed  # the chain advanced alike
    moved = max(((p.float() - q.float()).norm() / q.float().norm()).item()
                for p, q in zip(a.parameters(), base_model.parameters(), strict=True))
    assert moved > 0.05  # the trajectory really moved


def test_on_the_cpu_both_seedings_draw_the_same_projection():
    """"stable" always draws with a CPU generator, "official" with one on the gradient's device: on the CPU they
    coincide, so the bitwise comparison above covers the default's arithmetic too (its seeds differ only in
    where the chain starts, stable_seed(train.seed, layer name) instead of the index)."""
    cpu = torch.device("cpu")
    for right, dtype in ((True, torch.float32), (False, torch.bfloat16)):
        a = random_projection((7, 5), 3, right, 42, cpu, dtype, on_device=True)
        b = random_projection((7, 5), 3, right, 42, cpu, dtype, on_device=False)
        assert torch.equal(a, b) and a.dtype == dtype and a.shape == ((3, 5) if right else (7, 3))


# ---- known answers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 4), (3, 5)], ids=["right", "left"])
@pytest.mark.parametrize("scale_type", ["channel", "tensor"])
def test_one_step_equals_hand_computed_update(shape, scale_type):
    """U = √scale · G ⊙ s with s = ‖N‖/(‖R‖+1e-8), N the first Adam step of R (bias correction in the step size)."""
    lr, scale, rank, eps, (b1, b2) = 0.1, 4.0, 2, 1e-6, (0.9, 0.999)
    g = torch.Generator().manual_seed(1)
    w0, grad = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    w = torch.nn.Parameter(w0.clone())
    w.grad = grad.clone()
    opt = ApolloAdamW([{"params": [w], "rank": rank, "scale": scale, "scale_type": scale_type, "seeds": [5]}],
                      lr=lr)
    opt.step()
    right = shape[0] >= shape[1]
    p = torch.randn((rank, shape[1]) if right else (shape[0], rank), generator=torch.Generator().manual_seed(5))
    p = p / math.sqrt(rank)  # N(0, 1/r), drawn from the parameter's seed
    assert torch.equal(opt.state[w]["basis"], p)
    r = grad @ p.t() if right else p.t() @ grad
    n = (1 - b1) * r / (math.sqrt(1 - b2) * r.abs() + eps)
    if scale_type == "tensor":
        s = n.norm() / (r.norm() + 1e-8)
    else:
        dim = 1 if right else 0  # one factor per row of G (right) or per column (left)
        s = n.norm(dim=dim, keepdim=True) / (r.norm(dim=dim, keepdim=True) + 1e-8)
    step_size = lr * math.sqrt(1 - b2) / (1 - b1)
    torch.testing.assert_close(w.detach(), w0 - step_size * math.sqrt(scale) * grad * s, rtol=1e-6, atol=1e-6)


def test_update_keeps_the_gradient_direction_per_channel_or_tensor(base_model, batches):
    """APOLLO rescales G, it never rotates it: every row (tall weights) or column (wide) of a channel-wise step
    is a non-positive multiple of G's, and a tensor-wise step is one multiple of all of G (wd 0)."""
    for variant in ("apollo", "mini"):
        model = copy.deepcopy(base_model)
        opt = ours(model, variant)
        step_all(model, opt, batches[:4])  # past a redraw
        model(input_ids=batches[4], labels=batches[4]).loss.backward()
        projected = opt.param_groups[1]["params"]
        grads, before = [p.grad.clone() for p in projected], [p.detach().clone() for p in projected]
        opt.step()
        for p, grad, w0 in zip(projected, grads, before, strict=True):
            delta = p.detach() - w0  # m x n = -step_size · U
            dims = None if variant == "mini" else (1 if grad.shape[0] >= grad.shape[1] else 0)
            keep = dims is not None
            c = (delta * grad).sum(dims, keepdim=keep) / (grad * grad).sum(dims, keepdim=keep)
            assert (c <= 0).all()
            torch.testing.assert_close(delta, c * grad, rtol=1e-4, atol=1e-8)


def test_limiter_caps_growth_at_gamma_and_only_records_first():
    state: dict = {}
    u = torch.full((4, 3), 2.0)
    first = limit_norm_growth(state, u.clone(), 1.01, "update_norm")
    assert torch.equal(first, u)  # first call: recorded, unchanged
    assert state["update_norm"].item() == pytest.approx(u.norm().item())
    limited = limit_norm_growth(state, 10 * u, 1.01, "update_norm")  # 10x growth -> 1.01x
    assert limited.norm().item() == pytest.approx(1.01 * u.norm().item(), rel=1e-6)
    assert state["update_norm"].item() == pytest.approx(1.01 * u.norm().item(), rel=1e-6)
    small = 0.5 * u
    shrunk = limit_norm_growth(state, small.clone(), 1.01, "update_norm")
    assert torch.equal(shrunk, small)  # shrinking is never limited


def test_projection_is_gaussian_with_variance_one_over_r_and_redrawn_every_t():
    p = random_projection((4000, 512), 16, right=False, seed=3, device=torch.device("cpu"), dtype=torch.float32,
                          on_device=False)
    assert p.shape == (4000, 16)
    assert abs(p.mean().item()) < 4 / math.sqrt(16 * p.numel())
    assert p.var().item() == pytest.approx(1 / 16, rel=0.02)
    w = torch.nn.Parameter(torch.zeros(6, 4))
    opt = ApolloAdamW([{"params": [w], "rank": 2, "update_proj_gap": 2, "seeds": [11]}], lr=1e-3)
    bases, seeds = [], []
    for _ in range(5):
        w.grad = torch.randn(6, 4)
        opt.step()
        bases.append(opt.state[w]["basis"].clone())
        seeds.append(opt.state[w]["seed"])
    assert torch.equal(bases[0], bases[1]) and torch.equal(bases[2], bases[3])  # steps 0-1, 2-3 share P
    assert not torch.equal(bases[1], bases[2]) and not torch.equal(bases[3], bases[4])  # redrawn at 2 and 4
    assert seeds[0] == next_seed(11) and seeds[2] == next_seed(seeds[0]) and seeds[4] == next_seed(seeds[2])


# ---- the method plugins ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["apollo", "apollo-mini"])
def test_plugin_groups_settings_and_seeds(name):
    cfg = build_config("nano", name)
    method = get_method(name)(cfg.method_cfg, cfg)
    model = build_model(cfg.model, seed=0)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    plain, projected = opt.param_groups
    names = [n for n, _ in target_modules(model, cfg.method_cfg.targets)]
    assert len(projected["params"]) == len(names) == 7 * cfg.model.num_layers
    assert "rank" not in plain and plain["eps"] == projected["eps"] == 1e-6
    assert projected["rank"] == (cfg.model.hidden_size // 4 if name == "apollo" else 1)
    assert projected["scale_type"] == ("channel" if name == "apollo" else "tensor")
    assert projected["seeding"] == "stable"
    assert projected["seeds"] == [stable_seed(cfg.train.seed, "random projection", n) for n in names]
    official = build_config("nano", name, ["method.projection_seed=official"])
    opt = get_method(name)(official.method_cfg, official).build_optimizer(model, official.optim)
    first = len(opt.param_groups[0]["params"]) + 1  # the official seed: 1-based index over all groups
    assert opt.param_groups[1]["seeds"] == list(range(first, first + len(names)))
    assert opt.param_groups[1]["seeding"] == "official"


def test_run_seeding_follows_train_seed_and_official_ignores_it():
    def first_basis(sets):
        cfg = build_config("nano", "apollo", sets)
        model = build_model(cfg.model, seed=0)
        opt = get_method("apollo")(cfg.method_cfg, cfg).build_optimizer(model, cfg.optim)
        x = torch.randint(0, cfg.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        return opt.state[opt.param_groups[1]["params"][0]]["basis"]

    assert torch.equal(first_basis([]), first_basis([]))
    assert not torch.equal(first_basis([]), first_basis(["train.seed=1"]))
    official = ["method.projection_seed=official"]
    assert torch.equal(first_basis(official), first_basis([*official, "train.seed=1"]))


def test_presets_follow_the_official_scripts():
    apollo, mini = get_method("apollo"), get_method("apollo-mini")
    for scale, rank in {"60m": 128, "130m": 192, "350m": 256, "1b": 256}.items():
        p = apollo.preset(scale).params
        assert (p["rank"], p["scale"], p["scale_type"], p["scale_front"], p["update_proj_gap"]) == \
            (rank, 1.0, "channel", False, 200)
        assert apollo.preset(scale).optim == {"lr": 1e-2, "weight_decay": 0.0}
    for scale, (value, front) in {"60m": (128, True), "130m": (192, True), "350m": (128, False),
                                  "1b": (128, False)}.items():
        p = mini.preset(scale).params
        assert (p["rank"], p["scale"], p["scale_type"], p["scale_front"]) == (1, value, "tensor", front)
    assert build_config("micro", "apollo").method_cfg.rank == 32  # automatic: hidden // 4 of the final shape
    assert build_config("micro", "apollo", ["model.hidden_size=64", "model.num_heads=4"]).method_cfg.rank == 16
    cfg = build_config("60m", "apollo")
    assert (cfg.optim.grad_clip, cfg.optim.warmup_steps, cfg.train.steps) == (0.0, 1000, 10_000)


def test_footprint_at_60m_by_hand_and_parameter_count_on_meta():
    h, i, L = 512, 1376, 8
    for name, r in (("apollo", 128), ("apollo-mini", 1)):
        cfg = build_config("60m", name)
        fp = get_method(name).footprint(cfg)
        low = L * r * (4 * h + 3 * i)  # 4 square, gate/up (i x h: right, i x r), down (h x i: left, r x i)
        assert fp.state[1] == {"exp_avg": low, "exp_avg_sq": low, "basis": L * 7 * r * h, "update_norm": 7 * L}
        assert fp.replicated_state == (1,)
        method = get_method(name)(cfg.method_cfg, cfg)
        model = method.prepare_model(build_model(cfg.model, device="meta"))
        assert count_parameters(model) == sum(fp.trainable) == 58_073_600  # the model is untouched
    off = build_config("60m", "apollo", ["method.limiter=false"])
    assert "update_norm" not in get_method("apollo").footprint(off).state[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["apollo", "apollo-mini"])
def test_trains_at_micro_with_a_falling_validation_loss(name, tmp_path):
    sets = ["train.steps=30", "train.total_batch_size=8", "train.micro_batch_size=8", "train.eval_every=15",
            "train.checkpoints=1", "train.log_every=15", "optim.warmup_steps=3"]
    run_dir = train(build_config("micro", name, sets), tmp_path)
    losses = [v["val_loss"] for v in read_log(run_dir, "val")]
    assert losses[2] < losses[1] < losses[0] - 0.5, losses
