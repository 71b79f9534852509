"""LoRA pre-training (frozen random W + never-merged (alpha/r) B A) against docs/methods.md §11: known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lowrank_lens.methods import get_method
from lowrank_lens.methods.lora import LoRALinear
from lowrank_lens.methods.schedule import warmup_cosine
from lowrank_lens.methods.surgery import check_param_groups
from lowrank_lens.model import build_model, count_parameters
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.files import run_config_from_dict

NAME = "lora"
BF16 = torch.bfloat16


def setup(overrides=(), scale="nano", seed=0, device="cpu"):
    cfg = build_config(scale, NAME, list(overrides))
    method = get_method(NAME)(cfg.method_cfg, cfg)
    return cfg, method, method.prepare_model(build_model(cfg.model, seed=seed, device=device))


def layers(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def batch(cfg, n=4, t=16, seed=0):
    return torch.randint(0, cfg.model.vocab_size, (n, t), generator=torch.Generator().manual_seed(seed))


def test_wraps_the_existing_weight_and_freezes_only_it():
    cfg = build_config("nano", NAME)
    model = build_model(cfg.model, seed=0)
    w = model.model.layers[0].self_attn.q_proj.weight
    method = get_method(NAME)(cfg.method_cfg, cfg)
    method.prepare_model(model)
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert len(wrapped) == 7 * cfg.model.num_layers and all(m.layer_name == n for n, m in wrapped.items())
    assert model.model.layers[0].self_attn.q_proj.weight is w and not w.requires_grad
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"{n}.weight" for n in wrapped}  # embedding, LM head and norms train (as the ReLoRA code)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])
    assert run_config_from_dict(cfg.to_dict()) == cfg


def test_b_is_zero_so_the_model_at_step_0_is_the_dense_init():
    cfg = build_config("nano", NAME)
    plain = build_model(cfg.model, seed=0).eval()
    _, _, model = setup()
    model.eval()
    ids = batch(cfg)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)  # bitwise
    for m in layers(model):
        assert torch.all(m.lora_B == 0)
        bound = 1 / math.sqrt(m.in_features)  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))
        assert 0.9 * bound < m.lora_A.abs().max() <= bound
        assert m.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_dropout_touches_only_the_lora_branch():
    """With B = 0 the LoRA branch is 0, so training-mode dropout cannot change the output at init."""
    cfg, _, model = setup(["method.dropout=0.5"])
    ids = batch(cfg)
    model.train()
    with torch.no_grad():
        noisy = model(input_ids=ids).logits
    model.eval()
    with torch.no_grad():
        assert torch.equal(noisy, model(input_ids=ids).logits)


def _trained(steps=4, overrides=()):
    torch.manual_seed(0)  # dropout
    cfg, method, model = setup(overrides)
    init = {m.layer_name: m.weight.detach().clone() for m in layers(model)}
    others = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = method.build_optimizer(model, cfg.optim)
    ids = batch(cfg)
    logs = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cfg.optim.lr * method.lr_multiplier(step)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        logs.append(method.after_step(step + 1, model, opt))
    return cfg, method, model, opt, init, others, logs


def test_w_stays_bitwise_frozen_while_everything_else_trains():
    cfg, method, model, opt, init, others, logs = _trained(overrides=["optim.weight_decay=0.1"])
    for m in layers(model):
        assert torch.equal(m.weight, init[m.layer_name]) and m.weight.grad is None
        assert m.lora_B.abs().sum() > 0  # the update left zero
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, others[n])}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= moved
    assert all(not s for s in logs)  # no merge, nothing logged
    state_ids = {id(p) for p in opt.state}
    assert not any(id(m.weight) in state_ids for m in layers(model))


def test_never_merges_and_follows_the_plain_cosine():
    cfg, method, _ = setup(["train.steps=100", "optim.warmup_steps=10"])
    assert [method.lr_multiplier(s) for s in range(101)] == [
        warmup_cosine(s, 100, 10, cfg.optim.min_lr_ratio) for s in range(101)]


def test_dense_view_is_w_plus_scaled_product_and_reproduces_each_layer():
    cfg, method, model, *_ = _trained()
    model.eval()
    dense = method.dense_weights(model)
    assert set(dense) == {m.layer_name for m in layers(model)}
    scale = cfg.method_cfg.alpha / cfg.method_cfg.rank
    assert scale == 0.25 and all(m.scale == scale for m in layers(model))
    for m in layers(model):
        w, a, b = m.weight.detach(), m.lora_A.detach(), m.lora_B.detach()
        torch.testing.assert_close(dense[m.layer_name], w + scale * (b @ a), rtol=0, atol=1e-7)
        x = torch.randn(3, 5, m.in_features)
        with torch.no_grad():
            torch.testing.assert_close(m(x), F.linear(x, dense[m.layer_name]), rtol=1e-5, atol=1e-5)


def test_dense_view_in_bf16_is_formed_as_the_forward_scales_the_product():
    """bf16, scale 5/16 (not a power of two): W + (B A) s in W's dtype, bitwise; s (B A) in fp32 differs."""
    cfg, method, model = setup(["method.alpha=5", "train.precision=bf16-pure"])
    model = model.to(BF16)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in layers(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    dense = method.dense_weights(model)
    differs = False
    for m in layers(model):
        assert m.scale == 5 / 16 and dense[m.layer_name].dtype == BF16
        assert torch.equal(dense[m.layer_name], m.weight + (m.lora_B @ m.lora_A) * m.scale)
        fp32 = (m.weight.float() + m.scale * (m.lora_B.float() @ m.lora_A.float())).to(BF16)
        differs |= not torch.equal(fp32, dense[m.layer_name])
    assert differs


def test_init_is_a_function_of_the_seed_and_survives_transformers_init():
    _, _, a = setup()
    _, _, b = setup()
    sa = a.state_dict()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in sa.items())
    assert not torch.equal(sa["model.layers.0.self_attn.q_proj.lora_A"], sa["model.layers.0.self_attn.k_proj.lora_A"])
    before = {k: v.clone() for k, v in sa.items() if ".lora_" in k}
    a.apply(a._init_weights)
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in before.items())


# (total, trainable) in millions: ReLoRA's counts (docs/study.md §1.4: 68.07M / 42.77M and 178.93M / 94.00M).
COUNTS = {"60m": (68.07, 42.77), "130m": (178.93, 94.00)}


@pytest.mark.parametrize("scale", ["60m", "130m", "350m", "1b"])
def test_parameter_count_on_meta_matches_the_closed_form(scale):
    cfg, _, model = setup(scale=scale, device="meta")
    m, r = cfg.model, cfg.method_cfg.rank
    h, i, L, V = m.hidden_size, m.intermediate_size, m.num_layers, m.vocab_size
    e, d, f = 2 * V * h + (2 * L + 1) * h, L * (4 * h * h + 3 * h * i), L * r * (11 * h + 3 * i)
    assert (count_parameters(model), count_parameters(model, trainable_only=True)) == (e + d + f, e + f)
    if scale in COUNTS:
        assert (round((e + d + f) / 1e6, 2), round((e + f) / 1e6, 2)) == COUNTS[scale]


def test_presets_and_automatic_values():
    for scale, (rank, lr) in {"60m": (128, 1e-3), "130m": (256, 1e-3), "350m": (256, 5e-4),
                              "1b": (512, 4e-4)}.items():
        p = get_method(NAME).preset(scale)
        assert p.params == {"rank": rank, "alpha": 32.0, "dropout": 0.1}
        assert p.optim == {"lr": lr, "grad_clip": 1.0} and any("inferred" in n for n in p.notes)
    cfg = build_config("micro", NAME, ["model.hidden_size=64", "model.num_heads=4"])
    assert (cfg.method_cfg.rank, cfg.method_cfg.alpha) == (16, 4.0)
    assert cfg.to_dict()["method_cfg"]["alpha"] == 4.0
    assert build_config("nano", NAME, ["method.alpha=3"]).method_cfg.alpha == 3.0
