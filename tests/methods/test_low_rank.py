"""The Low-Rank method (W = B A, trained from scratch) against docs/methods.md §10, by independent re-derivation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowrank_lens.methods import get_method
from lowrank_lens.methods.low_rank import LowRankLinear
from lowrank_lens.methods.surgery import check_param_groups
from lowrank_lens.model import build_model, count_parameters
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.files import run_config_from_dict
from lowrank_lens.runfolder.log import read_log
from lowrank_lens.train import train

NAME = "low-rank"


def setup(overrides=(), scale="nano", seed=0, device="cpu"):
    cfg = build_config(scale, NAME, list(overrides))
    method = get_method(NAME)(cfg.method_cfg, cfg)
    return cfg, method, method.prepare_model(build_model(cfg.model, seed=seed, device=device))


def layers(model):
    return [m for m in model.modules() if isinstance(m, LowRankLinear)]


def batch(cfg, n=4, t=16, seed=0):
    return torch.randint(0, cfg.model.vocab_size, (n, t), generator=torch.Generator().manual_seed(seed))


def _train(steps=3):
    cfg, method, model = setup()
    opt = method.build_optimizer(model, cfg.optim)
    ids = batch(cfg)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return cfg, method, model


def test_every_target_is_factorised_and_nothing_else():
    cfg, method, model = setup()
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    assert len(wrapped) == 7 * cfg.model.num_layers and all(m.layer_name == n for n, m in wrapped.items())
    r, h, i = cfg.method_cfg.rank, cfg.model.hidden_size, cfg.model.intermediate_size
    down = wrapped["model.layers.0.mlp.down_proj"]
    assert down.A.shape == (r, i) and down.B.shape == (h, r) and r == h // 4
    assert type(model.lm_head) is torch.nn.Linear and type(model.model.embed_tokens) is torch.nn.Embedding
    assert not any(n.endswith("_proj.weight") for n, _ in model.named_parameters())  # no full-rank W left
    assert all(p.requires_grad for p in model.parameters())
    check_param_groups(model, method.build_optimizer(model, cfg.optim))
    assert run_config_from_dict(cfg.to_dict()) == cfg


def test_the_mlp_keeps_its_swiglu_and_each_layer_is_linear():
    """Unlike CoLA there is no SiLU between the factors: the layer is the linear map x -> B A x."""
    _, _, model = setup()
    mlp = model.model.layers[0].mlp
    g = torch.Generator().manual_seed(3)
    z = torch.randn(9, generator=g)
    torch.testing.assert_close(mlp.act_fn(z), F.silu(z))
    x, y = torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g)
    q = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        torch.testing.assert_close(q(2.0 * x - 3.0 * y), 2.0 * q(x) - 3.0 * q(y), rtol=1e-5, atol=1e-6)


def test_product_has_rank_at_most_r_and_is_the_dense_view():
    cfg, method, model = _train()
    dense = method.dense_weights(model)
    assert set(dense) == {m.layer_name for m in layers(model)}
    r = cfg.method_cfg.rank
    for m in layers(model):
        w = m.B.detach() @ m.A.detach()  # out x in, recomputed here
        assert torch.equal(dense[m.layer_name], w)
        exact = m.B.detach().double() @ m.A.detach().double()
        assert torch.linalg.matrix_rank(exact).item() == r < min(w.shape)  # generic factors: exactly r
        s = torch.linalg.svdvals(w.double())  # the fp32 view: beyond r only rounding noise
        assert s[r:].max() <= 1e-5 * s[0] and s[r - 1] > 1e-3 * s[0]
        x = torch.randn(3, 7, m.in_features)
        with torch.no_grad():
            torch.testing.assert_close(m(x), F.linear(x, w), rtol=1e-5, atol=1e-6)


def test_init_is_balanced_gaussian_with_product_variance_one_over_in_plus_out():
    n_in, n_out, r = 512, 1376, 128
    layer = LowRankLinear(n_in, n_out, r)
    layer.reset_parameters(seed=0)
    sigma = (r * (n_in + n_out)) ** -0.25
    for factor in (layer.A, layer.B):
        assert abs(factor.mean().item()) < 4 * sigma / factor.numel() ** 0.5
        assert factor.std().item() == pytest.approx(sigma, rel=0.02)
    assert (layer.B @ layer.A).var().item() == pytest.approx(1 / (n_in + n_out), rel=0.05)


def test_init_depends_on_the_seed_and_layer_and_survives_transformers_init():
    _, _, a = setup(seed=0)
    _, _, b = setup(seed=0)
    _, _, c = setup(["train.seed=1"], seed=1)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    key = "model.layers.0.self_attn.q_proj.A"
    assert not torch.equal(sa[key], c.state_dict()[key])
    assert not torch.equal(sa[key], sa["model.layers.0.self_attn.k_proj.A"])  # every layer draws its own
    before = {k: v.clone() for k, v in sa.items() if k.endswith((".A", ".B"))}
    a.apply(a._init_weights)  # transformers' init matches nn.Linear/Embedding/norms only
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in before.items())


COUNTS = {"60m": 42.77, "130m": 94.00, "350m": 185.22, "1b": 609.31}  # as CoLA, docs/methods.md §4.3


@pytest.mark.parametrize("scale", list(COUNTS))
def test_parameter_count_on_meta_matches_the_closed_form(scale):
    cfg, _, model = setup(scale=scale, device="meta")
    m, r = cfg.model, cfg.method_cfg.rank
    h, i, L, V = m.hidden_size, m.intermediate_size, m.num_layers, m.vocab_size
    closed = 2 * V * h + (2 * L + 1) * h + L * r * (11 * h + 3 * i)  # E + F, docs/memory.md
    assert count_parameters(model) == count_parameters(model, trainable_only=True) == closed
    assert round(closed / 1e6, 2) == COUNTS[scale]


def test_presets_and_automatic_rank():
    for scale, (rank, lr) in {"60m": (128, 6e-3), "130m": (256, 3e-3), "350m": (256, 3e-3),
                              "1b": (512, 2e-3)}.items():
        p = get_method(NAME).preset(scale)
        assert p.params == {"rank": rank} and p.optim == {"weight_decay": 0.01, "grad_clip": 0.5, "lr": lr}
        assert any("inferred" in n for n in p.notes)
    cfg = build_config("micro", NAME, ["model.hidden_size=64", "model.num_heads=4"])
    assert cfg.method_cfg.rank == 16 and cfg.to_dict()["method_cfg"]["rank"] == 16
    assert build_config("micro", NAME, ["method.rank=8"]).method_cfg.rank == 8


@pytest.mark.slow
def test_trains_at_micro_with_a_falling_validation_loss(tmp_path):
    """15 s of training; the first micro run of a session also builds the micro tokenizer and rows."""
    sets = ["train.steps=30", "train.total_batch_size=8", "train.micro_batch_size=8", "train.eval_every=15",
            "train.checkpoints=1", "train.log_every=15", "optim.warmup_steps=3"]
    run_dir = train(build_config("micro", NAME, sets), tmp_path)
    vals = read_log(run_dir, "val")
    assert [v["step"] for v in vals] == [0, 15, 30]
    losses = [v["val_loss"] for v in vals]
    assert losses[2] < losses[1] < losses[0] - 0.5, losses
