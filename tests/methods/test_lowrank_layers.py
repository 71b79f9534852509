"""CoLA, SLTrain and ReLoRA layers and plugins against docs/methods.md §4-§6 (CPU, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lowrank_lens.errors import LensError
from lowrank_lens.methods import get_method
from lowrank_lens.methods.cola import CoLALinear
from lowrank_lens.methods.relora import ReLoRALinear, jagged_cosine
from lowrank_lens.methods.schedule import warmup_cosine
from lowrank_lens.methods.sltrain import SLTrainLinear, SparseLowRankLinear, build_weight, sample_support
from lowrank_lens.methods.surgery import check_param_groups, target_modules
from lowrank_lens.model import build_model, count_parameters
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.files import run_config_from_dict

LAYER = {"cola": CoLALinear, "sltrain": SLTrainLinear, "relora": ReLoRALinear}


def setup(method: str, overrides: tuple[str, ...] = (), scale: str = "nano", seed: int = 0, device: str = "cpu"):
    cfg = build_config(scale, method, list(overrides))
    meth = get_method(method)(cfg.method_cfg, cfg)
    model = meth.prepare_model(build_model(cfg.model, seed=seed, device=device))
    return cfg, meth, model


def layers(model, cls):
    return [m for m in model.modules() if isinstance(m, cls)]


def batch(cfg, n=2, t=16, seed=0):
    return torch.randint(0, cfg.model.vocab_size, (n, t), generator=torch.Generator().manual_seed(seed))


# ---- shared contract ---------------------------------------------------------------------------
# Closed forms of docs/methods.md §4.3 / §5.2 and the study's logged counts (docs/study.md §1.4), in millions.
COUNTS = {("cola", "60m"): 42.77, ("cola", "130m"): 94.00, ("cola", "350m"): 185.22,
          ("sltrain", "60m"): 43.53, ("sltrain", "130m"): 96.55, ("sltrain", "350m"): 194.29,
          ("relora", "60m"): 68.07, ("relora", "130m"): 178.93}


@pytest.mark.parametrize(("method", "scale"), list(COUNTS))
def test_parameter_counts_match_closed_forms(method, scale):
    _, _, model = setup(method, scale=scale, device="meta")
    assert round(count_parameters(model) / 1e6, 2) == COUNTS[(method, scale)]
    if method == "relora":  # "ReLoRA-60M ... 42.77M trainable", "130M 94.00M" (docs/study.md §1.4)
        assert round(count_parameters(model, trainable_only=True) / 1e6, 2) == COUNTS[("cola", scale)]


@pytest.mark.parametrize("method", list(LAYER))
def test_every_target_is_wrapped_and_optimizer_groups_are_complete(method):
    cfg, meth, model = setup(method)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LAYER[method])]
    assert len(wrapped) == 7 * cfg.model.num_layers
    assert all(m.layer_name == n for n, m in model.named_modules() if isinstance(m, LAYER[method]))
    assert type(model.lm_head) is torch.nn.Linear and type(model.model.embed_tokens) is torch.nn.Embedding
    check_param_groups(model, meth.build_optimizer(model, cfg.optim))
    assert run_config_from_dict(cfg.to_dict()) == cfg  # the method config survives config.json


@pytest.mark.parametrize("method", list(LAYER))
def test_factor_init_survives_transformers_init(method):
    _, _, model = setup(method)
    before = {k: v.clone() for k, v in model.state_dict().items() if "layers." in k and "norm" not in k}
    model.apply(model._init_weights)  # what HF runs on modules it thinks are uninitialised
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)


@pytest.mark.parametrize("method", list(LAYER))
def test_init_is_a_function_of_the_seeds(method):
    _, _, a = setup(method, seed=0)
    _, _, b = setup(method, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ---- CoLA (docs/methods.md §4) ----------------------------------------------------------------------
def test_cola_product_variance_is_one_over_in_plus_out():
    layer = CoLALinear(512, 1376, 128)
    layer.reset_parameters(seed=0)
    sigma = 128 ** -0.25 * (512 + 1376) ** -0.25
    assert layer.A.std().item() == pytest.approx(sigma, rel=0.02)
    prod = layer.B @ layer.A  # out x in, the linear part of the map
    assert prod.var().item() == pytest.approx(1 / (512 + 1376), rel=0.05)


@pytest.mark.parametrize("only_lr_act", [True, False])
def test_cola_only_lr_act_wiring(only_lr_act):
    cfg, _, model = setup("cola", (f"method.only_lr_act={only_lr_act}",))
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp.act_fn, torch.nn.Identity) == only_lr_act
    x = torch.randn(3, cfg.model.hidden_size)
    gate = mlp.gate_proj(x)
    expected = mlp.down_proj((gate if only_lr_act else F.silu(gate)) * mlp.up_proj(x))
    torch.testing.assert_close(mlp(x), expected)
    assert not hasattr(model.model.layers[0].self_attn, "act_fn")


def test_cola_factors_and_no_dense_view():
    cfg, meth, model = setup("cola")
    assert meth.has_dense_view is False and "SiLU" in meth.no_dense_reason
    assert meth.dense_weights(model) is None
    factors = meth.factors(model)
    names = [n for n, _ in target_modules(build_model(cfg.model, device="meta"), cfg.method_cfg.targets)]
    assert list(factors) == names
    r, d = cfg.method_cfg.rank, cfg.model.hidden_size
    f = factors["model.layers.1.mlp.down_proj"]
    assert f["A"].shape == (r, cfg.model.intermediate_size) and f["B"].shape == (d, r)
    x = torch.randn(4, cfg.model.intermediate_size)
    torch.testing.assert_close(model.model.layers[1].mlp.down_proj(x), F.silu(x @ f["A"].T) @ f["B"].T)


def test_cola_presets():
    for scale, rank, act, lr in [("60m", 128, False, 6e-3), ("130m", 256, False, 3e-3),
                                 ("350m", 256, True, 3e-3), ("1b", 512, True, 2e-3)]:
        p = get_method("cola").preset(scale)
        assert p.params == {"rank": rank, "only_lr_act": act}
        assert p.optim == {"weight_decay": 0.01, "grad_clip": 0.5, "lr": lr}
    assert build_config("micro", "cola").method_cfg.rank == 32


# ---- SLTrain (docs/methods.md §5) -------------------------------------------------------------------
def _sparse_case(n_in=7, n_out=5, r=3, nnz=9, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, n_in, generator=g, dtype=dtype, requires_grad=True)  # B x T x in
    a = torch.randn(r, n_in, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(n_out, r, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(nnz, generator=g, dtype=dtype, requires_grad=True)
    idx = sample_support(n_out * n_in, nnz, g)
    return x, a, b, v, idx


def test_sltrain_function_passes_gradcheck():
    x, a, b, v, idx = _sparse_case()
    assert torch.autograd.gradcheck(lambda *t: SparseLowRankLinear.apply(*t, idx, 0.5), (x, a, b, v))


def test_sltrain_function_matches_dense_reference():
    x, a, b, v, idx = _sparse_case(n_in=24, n_out=16, r=4, nnz=40)
    g = torch.randn(2, 4, 16, dtype=torch.float64)
    y = SparseLowRankLinear.apply(x, a, b, v, idx, 0.25)
    grads = torch.autograd.grad(y, (x, a, b, v), g)
    s = torch.zeros(16 * 24, dtype=torch.float64).index_put((idx,), v).view(16, 24)
    y_ref = F.linear(x, 0.25 * b @ a + s)
    ref = torch.autograd.grad(y_ref, (x, a, b, v), g)
    torch.testing.assert_close(y, y_ref)
    for got, want in zip(grads, ref, strict=True):
        torch.testing.assert_close(got, want)


def test_sltrain_function_under_bf16_autocast():
    x, a, b, v, idx = _sparse_case(n_in=32, n_out=16, r=4, nnz=50, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = SparseLowRankLinear.apply(x, a, b, v, idx, 0.5)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert a.grad.dtype == v.grad.dtype == x.grad.dtype == torch.float32
    w = build_weight(a.detach(), b.detach(), v.detach(), idx, 0.5)
    torch.testing.assert_close(x.grad, w.sum(0).expand_as(x), rtol=0.02, atol=0.05)


def test_sample_support_is_distinct_sorted_and_spread():
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(1000)
    for _ in range(100):
        idx = sample_support(1000, 300, g)
        assert idx.numel() == 300 and bool((idx[1:] > idx[:-1]).all()) and 0 <= idx[0] and idx[-1] < 1000
        hits[idx] += 1
    assert hits.view(10, 100).sum(1).div(100 * 300 / 10).sub(1).abs().max() < 0.05  # ten equal buckets
    assert sample_support(10, 8, g).unique().numel() == 8  # the dense path


def test_sltrain_initial_weight_is_s():
    cfg, meth, model = setup("sltrain")
    dense = meth.dense_weights(model)
    for m in layers(model, SLTrainLinear):
        n_out, n_in = m.out_features, m.in_features
        assert m.sparse_index.numel() == int(0.03 * n_out * n_in)
        assert torch.all(m.lora_B == 0) and m.lora_A.abs().max() <= 1 / math.sqrt(n_in)
        assert m.sparse_value.abs().max() <= 1 / math.sqrt(n_in)
        s = torch.zeros(n_out * n_in).index_put((m.sparse_index,), m.sparse_value.detach()).view(n_out, n_in)
        assert torch.equal(dense[m.layer_name], s)
    assert m.scale == cfg.method_cfg.alpha / cfg.method_cfg.rank


def test_sltrain_support_is_fixed_while_training():
    cfg, meth, model = setup("sltrain")
    opt = meth.build_optimizer(model, cfg.optim)
    first = layers(model, SLTrainLinear)[0]
    index, values = first.sparse_index.clone(), first.sparse_value.detach().clone()
    assert "model.layers.0.self_attn.q_proj.sparse_index" in model.state_dict()
    assert all("sparse_index" not in n for n, _ in model.named_parameters())
    ids = batch(cfg)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(first.sparse_index, index) and not torch.equal(first.sparse_value, values)
    assert first.lora_B.abs().sum() > 0  # B leaves zero, so the dense view is no longer S alone


def test_sltrain_support_depends_only_on_its_seed():
    def supports(*overrides):
        return [m.sparse_index for m in layers(setup("sltrain", overrides)[2], SLTrainLinear)]

    base = supports()
    other_train_seed = supports("train.seed=5")
    other_support_seed = supports("method.support_seed=7")
    assert all(torch.equal(a, b) for a, b in zip(base, other_train_seed, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(base, other_support_seed, strict=True))
    assert not torch.equal(base[0], base[1])  # every layer draws its own support


def test_sltrain_dense_view_is_exact():
    cfg, meth, model = setup("sltrain")
    with torch.no_grad():
        for m in layers(model, SLTrainLinear):
            m.lora_B.normal_()
    dense = meth.dense_weights(model)
    for m in layers(model, SLTrainLinear):
        x = torch.randn(3, m.in_features)
        torch.testing.assert_close(m(x), F.linear(x, dense[m.layer_name]))


def test_sltrain_presets():
    expect = {"60m": (128, 32.0, 2e-3), "130m": (256, 16.0, 3e-3), "350m": (256, 16.0, 2e-3),
              "1b": (512, 8.0, 3e-3)}
    for scale, (rank, alpha, lr) in expect.items():
        p = get_method("sltrain").preset(scale)
        assert p.params == {"rank": rank, "alpha": alpha, "density": 0.03} and p.optim == {"lr": lr}
    with pytest.raises(LensError, match="density"):
        build_config("nano", "sltrain", ["method.density=0"])


# ---- ReLoRA (docs/methods.md §6) --------------------------------------------------------------------
RELORA = ("train.steps=100", "optim.warmup_steps=10", "method.reset_every=25", "method.restart_warmup_steps=5")


def test_relora_wraps_the_existing_weight():
    cfg = build_config("nano", "relora")
    model = build_model(cfg.model, seed=0)
    w = model.model.layers[0].self_attn.q_proj.weight
    get_method("relora")(cfg.method_cfg, cfg).prepare_model(model)
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight is w and not w.requires_grad
    assert torch.all(q.lora_B == 0) and 0 < q.lora_A.abs().max() <= 1 / math.sqrt(q.in_features)


def test_relora_jagged_schedule_restarts_where_configured():
    cfg, meth, _ = setup("relora", RELORA)
    mult = [meth.lr_multiplier(s) for s in range(101)]
    env = [warmup_cosine(s, 100, 10, cfg.optim.min_lr_ratio) for s in range(101)]
    assert [s for s, m in enumerate(mult) if m == 0] == [0, 25, 50, 75, 100]
    for k in (25, 50, 75):
        target = env[k + 5]
        assert [mult[k + i] for i in range(6)] == pytest.approx([i / 5 * target for i in range(5)] + [target])
    untouched = [s for s in range(101) if s % 25 >= 5 or s < 25]
    assert [mult[s] for s in untouched] == pytest.approx([env[s] for s in untouched])
    # A first warmup longer than the cycle takes precedence, as in the reference (the study's 350m).
    assert jagged_cosine(25, 100, 30, 25, 5, 0.1) == pytest.approx(25 / 30)


def test_relora_merges_one_step_after_the_lr_hits_zero():
    _, meth, _ = setup("relora", RELORA)
    merged = [s for s in range(1, 101) if meth.is_reset_step(s)]
    assert merged == [26, 51, 76]
    assert all(meth.lr_multiplier(s - 1) == 0 for s in merged)  # the update just before used lr 0
    assert meth.lr_multiplier(26) > 0


def test_relora_defaults_scale_with_the_run():
    _, meth, _ = setup("relora", ("train.steps=40",))
    assert (meth.reset_every, meth.restart_warmup) == (10, 1)
    with pytest.raises(LensError, match="restart_warmup_steps"):
        setup("relora", ("method.reset_every=10", "method.restart_warmup_steps=10"))
    with pytest.raises(LensError, match="prune"):
        build_config("nano", "relora", ["method.prune=topk"])


def _trained(overrides=RELORA, steps=2):
    torch.manual_seed(0)  # dropout: DDP ranks see identical (all-reduced) moments, so must the copies here
    cfg, meth, model = setup("relora", overrides)
    opt = meth.build_optimizer(model, cfg.optim)
    ids = batch(cfg)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return cfg, meth, model, opt


def test_relora_merge_keeps_the_function_and_reinitialises_the_factors():
    cfg, meth, model, opt = _trained()
    with torch.no_grad():
        for m in layers(model, ReLoRALinear):
            m.lora_B.normal_(std=0.05)  # a LoRA that changes the function
    model.eval()
    ids = batch(cfg, seed=1)
    before = model(input_ids=ids).logits
    a_before = [m.lora_A.detach().clone() for m in layers(model, ReLoRALinear)]
    out = meth.after_step(26, model, opt)
    assert out["relora_merge"] == 1.0
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-4)
    for m, a in zip(layers(model, ReLoRALinear), a_before, strict=True):
        assert torch.all(m.lora_B == 0) and not torch.equal(m.lora_A, a) and m.lora_A.abs().sum() > 0
    assert meth.after_step(27, model, opt) == {"relora_merge": 0.0}


@pytest.mark.parametrize("mode", ["random", "magnitude"])
def test_relora_prunes_only_the_lora_moments(mode):
    cfg, meth, model, opt = _trained(RELORA + (f"method.prune={mode}", "method.prune_ratio=0.6"))
    lora = {id(p) for m in layers(model, ReLoRALinear) for p in (m.lora_A, m.lora_B)}
    g = torch.Generator().manual_seed(0)
    for st in opt.state.values():  # non-zero, distinct moments so the measured fraction is the pruned one
        for key in ("exp_avg", "exp_avg_sq"):
            st[key].copy_(torch.rand(st[key].shape, generator=g) + 0.5)
    steps_before = [float(st["step"]) for st in opt.state.values()]
    kept_max = {}
    for p, st in opt.state.items():
        if id(p) in lora:
            kept_max[id(p)] = st["exp_avg"].clone()
    out = meth.after_step(26, model, opt)
    zeros = total = 0
    for p, st in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            if id(p) in lora:
                zeros, total = zeros + int((st[key] == 0).sum()), total + st[key].numel()
            else:
                assert torch.all(st[key] >= 0.5)  # embeddings, norms and head keep their moments
        if id(p) in lora and mode == "magnitude":  # the survivors are the largest entries
            old, new = kept_max[id(p)], st["exp_avg"]
            assert old[new == 0].max() <= old[new != 0].min()
    assert zeros / total == pytest.approx(0.6, abs=0.02)
    assert out["relora_pruned_frac"] == pytest.approx(zeros / total)
    assert [float(st["step"]) for st in opt.state.values()] == steps_before  # Adam's step is kept


def test_relora_pruning_is_the_same_on_every_rank():
    def moments(step):
        _, meth, model, opt = _trained()
        meth.after_step(step, model, opt)
        return [st["exp_avg"].clone() for st in opt.state.values()]

    a, b, c = moments(26), moments(26), moments(51)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_relora_zero_init_bug_freezes_the_first_cycle():
    for bug in (True, False):
        cfg, meth, model = setup("relora", RELORA + (f"method.zero_init_bug={bug}",))
        ids = batch(cfg)
        model(input_ids=ids, labels=ids).loss.backward()
        grads = [(m.lora_A.grad, m.lora_B.grad) for m in layers(model, ReLoRALinear)]
        assert all(torch.all(ga == 0) for ga, _ in grads)  # B = 0 either way
        assert all(torch.all(gb == 0) for _, gb in grads) == bug  # with A = 0 too, B gets nothing
        if bug:
            opt = meth.build_optimizer(model, cfg.optim)
            opt.step()
            meth.after_step(26, model, opt)  # the first merge brings a Kaiming A back
            assert all(m.lora_A.abs().sum() > 0 for m in layers(model, ReLoRALinear))


def test_relora_dense_view_reproduces_each_layer():
    _, meth, model, _ = _trained()
    model.eval()  # dropout off: the layer is then exactly x (W + s B A)^T
    dense = meth.dense_weights(model)
    assert len(dense) == len(layers(model, ReLoRALinear))
    for m in layers(model, ReLoRALinear):
        x = torch.randn(3, m.in_features)
        torch.testing.assert_close(m(x), F.linear(x, dense[m.layer_name]))


def test_relora_presets():
    expect = {"60m": (128, 1000, 100, 1e-3, 1.0), "130m": (256, 5000, 100, 1e-3, 1.0),
              "350m": (256, 5000, 200, 5e-4, 0.0)}
    for scale, (rank, every, rw, lr, clip) in expect.items():
        p = get_method("relora").preset(scale)
        assert (p.params["rank"], p.params["reset_every"], p.params["restart_warmup_steps"]) == (rank, every, rw)
        assert p.params["alpha"] == 32 and p.params["dropout"] == 0.1
        assert (p.params["prune"], p.params["prune_ratio"]) == ("random", 0.99)
        assert p.optim == {"lr": lr, "grad_clip": clip}
    cfg = build_config("60m", "relora")
    assert cfg.train.steps % cfg.method_cfg.reset_every == 0 and cfg.method_cfg.zero_init_bug is False
