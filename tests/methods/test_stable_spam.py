"""Stable-SPAM (AdaClip, AdaGN, momentum reset, cosine-scaled β1) against a re-derivation of the official optimizer.

`OfficialStableSPAM` below restates TianjinYellow/StableSPAM `galore_torch/stablespam.py` (6a66da1) step for step
in its own structure: an optimizer-wide `total_steps`, the β1/γ1 factor read from torch's CosineAnnealingLR as
its CosineDecay does, python-number EMAs that become tensors at the first update, boolean-mask assignment into
`p.grad`, `torch.norm` behind an `if`, and the reset that stores fresh zero moments after the update has taken
the old ones (`fixed_reset=True` zeroes them before, the paper's order and our default). Ours must match it bit
for bit, in both orders, and every mechanism must have acted during the run.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from lowrank_lens.config import ModelConfig
from lowrank_lens.errors import LensError
from lowrank_lens.methods import get_method
from lowrank_lens.methods.surgery import check_param_groups
from lowrank_lens.model import build_model
from lowrank_lens.optim.stable_spam_adamw import StableSPAMAdamW, momentum_scale, resets_at
from lowrank_lens.presets import MODEL_SHAPES, build_config
from lowrank_lens.runfolder.log import read_log
from lowrank_lens.train import train

NAME = "stable-spam"
CFG = ModelConfig(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=2, vocab_size=64, max_seq_len=16)
LR, GAMMAS, DT, ETA = 1e-2, (0.85, 0.99999, 0.9), 6, 0.5  # γ3 0.9: the moving max forgets within a cycle
STEPS = 20  # resets at 6, 12, 18; the β1 factor falls from 1 to about 0.5 over the 20 updates

BAD_VALUES = [
    ("stable-spam", "method.gamma1=1", "method.gamma1"),
    ("stable-spam", "method.gamma2=-0.5", "method.gamma2"),
    ("stable-spam", "method.gamma3=1.5", "method.gamma3"),
    ("stable-spam", "method.reset_interval=-1", "method.reset_interval"),
    ("stable-spam", "method.decay_steps=-2", "method.decay_steps"),
    ("stable-spam", "method.decay_floor=1.5", "method.decay_floor"),
    ("stable-spam", "method.official_reset=2", "method.official_reset"),
]
"""Invalid settings of this method and a fragment of each one's one-line error (tests/faults/test_bad_config.py
runs them with every other method's)."""



class OfficialStableSPAM(torch.optim.Optimizer):
    """The official StableSPAM (amsgrad off) restated (module docstring), counting what its mechanisms did."""

    def __init__(self, params, lr, weight_decay, gammas, total_t, eta_min, update_proj_gap, fixed_reset=False):
        super().__init__(params, {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": weight_decay})
        self.g1, self.g2, self.theta = gammas
        self.gap, self.fixed_reset, self.total_steps = update_proj_gap, fixed_reset, 0
        self._sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)  # CosineDecay(1.0, total_T, eta)
        self._cosine = torch.optim.lr_scheduler.CosineAnnealingLR(self._sgd, total_t + 1, eta_min)
        self.clipped = self.rescaled = self.resets = 0

    def factor(self, step):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the epoch argument is deprecated, and what the official code uses
            self._cosine.step(step)
        return self._sgd.param_groups[0]["lr"]

    @torch.no_grad()
    def step(self):
        self.total_steps += 1
        scale = self.factor(self.total_steps)
        reset = self.gap != 0 and self.total_steps % self.gap == 0
        self.resets += reset
        for g in self.param_groups:
            for p in g["params"]:
                p.data.mul_(1 - g["lr"] * g["weight_decay"])
                grad, st = p.grad, self.state[p]
                if "exp_avg" not in st:
                    st.update(step=0, exp_avg=torch.zeros_like(grad), exp_avg_sq=torch.zeros_like(grad), m_norm_t=0,
                              v_norm_t=0, m_max_t=0)
                m, v = st["exp_avg"], st["exp_avg_sq"]
                biggest = torch.max(grad.abs())
                st["step"] += 1
                st["m_max_t"] = self.theta * st["m_max_t"] + (1 - self.theta) * biggest
                bound = st["m_max_t"] / (1 - self.theta ** st["step"])
                mask = grad.abs() > bound
                if mask.sum() > 0:
                    self.clipped += int(mask.sum())
                    grad[mask] = grad[mask] / biggest * bound  # into p.grad itself
                norm = torch.norm(grad)
                decay = self.g1 * scale
                st["m_norm_t"] = decay * st["m_norm_t"] + (1 - decay) * norm
                st["v_norm_t"] = self.g2 * st["v_norm_t"] + (1 - self.g2) * norm**2
                c = (st["m_norm_t"] / (1 - decay ** st["step"])) / (
                    torch.sqrt(st["v_norm_t"] / (1 - self.g2 ** st["step"])) + g["eps"])
                if norm > 0:
                    grad = grad / norm * c
                    self.rescaled += not math.isclose(torch.norm(grad.float()).item(), norm.item(), rel_tol=1e-2)
                if reset:
                    if self.fixed_reset:
                        m.zero_()
                        v.zero_()
                    else:  # the update below still runs on m and v, the old moments
                        st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
                    st["step"] = 1
                beta1 = g["betas"][0] * scale
                bc1, bc2 = 1 - beta1 ** st["step"], 1 - 0.999 ** st["step"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(0.999).addcmul_(grad, grad, value=1 - 0.999)
                p.add_(m / (v.sqrt() / math.sqrt(bc2)).add_(g["eps"]), alpha=-(g["lr"] / bc1))


def ours(model, wd=0.0, official_reset=False, **kw):
    g1, g2, g3 = GAMMAS
    return StableSPAMAdamW(model.parameters(), lr=LR, weight_decay=wd, gamma1=g1, gamma2=g2, gamma3=g3,
                           reset_interval=DT, decay_steps=STEPS, decay_floor=ETA, official_reset=official_reset, **kw)


@pytest.mark.parametrize("official_reset", [False, True], ids=["reset-first", "official-reset"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_matches_the_official_algorithm_bit_for_bit(official_reset, dtype, wd, base_model, batches):
    a, b = copy.deepcopy(base_model).to(dtype), copy.deepcopy(base_model).to(dtype)
    opt_a = ours(a, wd, official_reset)
    opt_b = OfficialStableSPAM(b.parameters(), LR, wd, GAMMAS, STEPS, ETA, DT, fixed_reset=not official_reset)
    for step, x in enumerate(batches):
        for model, opt in ((a, opt_a), (b, opt_b)):
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        bad = [n for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True) if not torch.equal(pa, pb)]
        assert not bad, f"step {step + 1}: {bad[:3]} differ"
    # every mechanism acted: spikes clipped, norms rescaled, 3 resets, β1 scaled down by the cosine
    assert opt_b.clipped > 0 and opt_b.rescaled > 0 and opt_b.resets == 3, (opt_b.clipped, opt_b.rescaled)
    assert opt_b.factor(STEPS) < 0.51
    moved = max((pa.float() - pb.float()).abs().max().item()
                for pa, pb in zip(a.parameters(), base_model.parameters(), strict=True))
    assert moved > 1e-2


def test_the_two_reset_orders_differ_in_the_trained_weights(base_model, batches):
    a, b = copy.deepcopy(base_model), copy.deepcopy(base_model)
    for model, opt in ((a, ours(a)), (b, ours(b, official_reset=True))):
        for x in batches[:DT]:
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, b.model.layers[0].mlp.up_proj.weight)


# ---- known answers ---------------------------------------------------------------------------------------
def _single(**kw):
    w = torch.nn.Parameter(torch.zeros(3, 4))
    args = {"lr": 0.1, "gamma1": 0.5, "gamma2": 0.9, "gamma3": 0.9, "reset_interval": 2, "decay_steps": 0} | kw
    return w, StableSPAMAdamW([w], **args)


def test_a_spike_is_scaled_to_the_moving_max_and_the_gradient_to_the_norm_average():
    w, opt = _single()
    w.grad = torch.ones(3, 4)
    opt.step()  # update 1: max 1, A = 0.1, threshold 1: nothing clipped; n1 = sqrt(12)
    spike = torch.ones(3, 4)
    spike[1, 2], spike[0, 0] = 1000.0, -1000.0
    w.grad = spike.clone()
    opt.step()  # update 2 resets (ΔT 2): M then holds (1 - β1) times this update's stabilised gradient alone
    threshold = (0.9 * 0.1 + 0.1 * 1000.0) / (1 - 0.9**2)  # A_2 / (1 - γ3^2), about 526.8
    clipped = spike.clone()
    clipped[1, 2], clipped[0, 0] = threshold, -threshold  # g / max|g| · threshold, the sign kept
    n1, n2 = math.sqrt(12), clipped.norm().item()
    mu, nu = (0.5 * 0.5 * n1 + 0.5 * n2) / (1 - 0.5**2), (0.9 * 0.1 * n1**2 + 0.1 * n2**2) / (1 - 0.9**2)
    expected = clipped / n2 * mu / (math.sqrt(nu) + 1e-8)
    st = opt.state[w]
    torch.testing.assert_close(st["exp_avg"], 0.1 * expected, rtol=1e-5, atol=0)
    assert st["step"] == 1 and st["update"] == 2
    torch.testing.assert_close(st["clip_max"], torch.tensor(0.9 * 0.1 + 0.1 * 1000.0), rtol=1e-6, atol=0)


def test_the_reset_update_is_adams_first_by_default_and_runs_on_the_old_moments_officially():
    for official in (False, True):
        w, opt = _single(reset_interval=3, official_reset=official, gamma3=0.0)  # γ3 0: no clipping
        twin, never = _single(reset_interval=0, gamma3=0.0)  # the moments as they would be without a reset
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            before = w.detach().clone()
            w.grad = torch.randn(3, 4, generator=g)
            twin.grad = w.grad.clone()
            opt.step()  # update 3 resets
            never.step()
        st, moved = opt.state[w], w.detach() - before
        assert st["step"] == 1 and st["update"] == 3
        if official:  # the old moments, with the bias corrections of k = 1, then zeroed for the next update
            m, v = never.state[twin]["exp_avg"], never.state[twin]["exp_avg_sq"]
            torch.testing.assert_close(moved, -0.1 / 0.1 * m / (v.sqrt() / math.sqrt(0.001) + 1e-8))
            assert not st["exp_avg"].any() and not st["exp_avg_sq"].any()
        else:  # Adam's first update: M / sqrt(V) = sign(g) up to eps, so every entry moves by lr
            torch.testing.assert_close(moved.abs(), torch.full((3, 4), 0.1), rtol=1e-4, atol=0)
            assert st["exp_avg"].any()


def test_a_zero_gradient_leaves_everything_finite_and_the_weight_in_place():
    w, opt = _single(weight_decay=0.0)
    for _ in range(3):
        w.grad = torch.zeros(3, 4)
        opt.step()
    assert not w.detach().any()
    assert all(torch.isfinite(opt.state[w][k]).all() for k in ("exp_avg", "exp_avg_sq", "clip_max", "norm_avg"))


def test_the_beta1_factor_is_the_official_cosine_decay():
    ref = OfficialStableSPAM([torch.nn.Parameter(torch.zeros(1))], 1.0, 0.0, GAMMAS, 20000, 0.5, 1000)
    for t in range(1, 20004):
        assert momentum_scale(t, 20000, 0.5) == ref.factor(t), t
    assert momentum_scale(1, 20000, 0.5) == pytest.approx(1.0)
    assert momentum_scale(20000, 20000, 0.5) == pytest.approx(0.5)
    assert momentum_scale(7, 0, 0.5) == 1.0 == momentum_scale(7, 100, 1.0)
    assert [t for t in range(1, 3001) if resets_at(t, 1000)] == [1000, 2000, 3000] and not resets_at(5, 0)


# ---- the plugin ----------------------------------------------------------------------------------------
def test_plugin_groups_settings_and_switch():
    cfg = build_config("nano", NAME)
    method = get_method(NAME)(cfg.method_cfg, cfg)
    model = build_model(cfg.model, seed=0)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    (group,) = opt.param_groups
    assert len(group["params"]) == len(list(model.parameters()))  # every parameter, one algorithm
    assert (group["reset_interval"], group["gamma3"], group["decay_steps"]) == (8, 0.875, cfg.train.steps)
    assert (group["gamma1"], group["gamma2"], group["decay_floor"], group["eps"]) == (0.85, 0.99999, 0.5, 1e-8)
    assert not group["official_reset"]
    other = build_config("nano", NAME, ["method.official_reset=true", "train.steps=30"])
    (group,) = get_method(NAME)(other.method_cfg, other).build_optimizer(model, other.optim).param_groups
    assert group["official_reset"] and group["decay_steps"] == 30 == other.to_dict()["method_cfg"]["decay_steps"]
    assert build_config("nano", NAME, ["method.decay_steps=7"]).method_cfg.decay_steps == 7


def test_presets_follow_the_official_scripts():
    for scale, lr in {"60m": 1e-3, "130m": 8e-4, "350m": 4e-4, "1b": 2e-3}.items():
        p = get_method(NAME).preset(scale)
        assert p.optim == {"eps": 1e-8, "weight_decay": 0.0, "grad_clip": 0.0, "lr": lr}
        assert p.params == {"gamma1": 0.85, "gamma2": 0.99999, "gamma3": 0.999, "reset_interval": 1000,
                            "decay_steps": 0, "decay_floor": 0.5, "official_reset": False}
        assert build_config(scale, NAME).method_cfg.decay_steps == build_config(scale, NAME).train.steps
    assert set(MODEL_SHAPES) == {"nano", "micro", "60m", "130m", "350m", "1b"}
    micro = build_config("micro", NAME).method_cfg
    assert (micro.reset_interval, micro.gamma3) == (50, 0.98)


@pytest.mark.parametrize("override", [
    "method.gamma1=1", "method.gamma1=-0.1", "method.gamma2=1.5", "method.gamma3=1", "method.reset_interval=-1",
    "method.decay_steps=-5", "method.decay_floor=1.5", "method.decay_floor=-0.1", "method.official_reset=2"])
def test_bad_settings_are_one_line_errors_naming_the_field(override):
    with pytest.raises(LensError) as exc:
        build_config("nano", NAME, [override])
    message = str(exc.value)
    assert "\n" not in message and override.partition("=")[0] in message, message


@pytest.mark.slow
def test_trains_at_micro_with_a_falling_validation_loss(tmp_path):
    sets = ["train.steps=30", "train.total_batch_size=8", "train.micro_batch_size=8", "train.eval_every=15",
            "train.checkpoints=1", "train.log_every=15", "optim.warmup_steps=3", "method.reset_interval=12"]
    run_dir = train(build_config("micro", NAME, sets), tmp_path)
    losses = [v["val_loss"] for v in read_log(run_dir, "val")]
    assert losses[2] < losses[1] < losses[0] - 0.5, losses
