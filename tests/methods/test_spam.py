"""SPAM (spike-aware clipping, momentum reset, post-reset warmup) against a re-derivation of the official SPAM.py.

`OfficialSPAM` below restates TianjinYellow/SPAM-Optimizer `galore_torch/SPAM.py` (e8185fb) step for step in
its own structure: optimizer-wide counters `total_step` / `current_step`, boolean-mask indexing for the clipping,
the density group's flattened 1-D moments and its `p.data[mask].add_` decay (a no-op), and the post-reset warmup
read from torch's CosineAnnealingLR as its CosineDecay does. Ours must match it bit for bit.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from lowrank_lens.config import ModelConfig
from lowrank_lens.methods import get_method
from lowrank_lens.methods.surgery import check_param_groups, target_modules
from lowrank_lens.model import build_model
from lowrank_lens.optim.spam_adamw import SPAMAdamW, clips_at, reset_warmup_scale
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.log import read_log
from lowrank_lens.train import train

NAME = "spam"
CFG = ModelConfig(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=2, vocab_size=64, max_seq_len=16)
LR, DT, N, DELAY, THETA = 1e-2, 6, 3, 2, 3.0  # θ = 3 so that clipping really happens on these batches
STEPS = 20  # resets at 6, 12, 18


class OfficialSPAM(torch.optim.Optimizer):
    """The official SPAM.AdamW with density 1.0, restated (module docstring)."""

    def __init__(self, groups, lr, weight_decay, warmup_steps, threshold, delta_t, grad_accu_steps):
        super().__init__(groups, {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": weight_decay})
        for g in self.param_groups:
            for p in g["params"]:
                if "density" in g:
                    self.state[p]["mask"] = torch.ones(p.shape, dtype=torch.bool)
        self.total_step, self.current_step = 0, warmup_steps + 1
        self.warmup, self.thres, self.delta_t, self.accu = warmup_steps, threshold, delta_t, grad_accu_steps

    def _decay(self, step):  # CosineDecay(0.99, warmup_steps).get_dr(step)
        if step >= self.warmup:
            return 0
        sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.99)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, self.warmup + 1, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the epoch argument is deprecated, and what the official code uses
            sched.step(step)
        return sgd.param_groups[0]["lr"]

    @torch.no_grad()
    def step(self):
        scale = 1 - self._decay(self.current_step)
        for g in self.param_groups:
            for p in g["params"]:
                st, grad = self.state[p], p.grad
                st.setdefault("step", 0)
                if "density" in g:
                    grad = grad[st["mask"]]  # a flattened copy
                if "exp_avg" not in st or (self.total_step + 1) % self.delta_t == 0:
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
                m, v = st["exp_avg"], st["exp_avg_sq"]
                st["step"] += 1
                k = self.total_step + 1
                if k >= self.accu and k % self.delta_t >= self.accu:
                    mask = grad**2 > self.thres * v
                    grad[mask] = grad[mask].sign() * torch.sqrt(v[mask] * self.thres)
                m.mul_(0.9).add_(grad, alpha=0.1)
                v.mul_(0.999).addcmul_(grad, grad, value=1 - 0.999)
                step_size = g["lr"]
                step_size *= math.sqrt(1 - 0.999 ** st["step"]) / (1 - 0.9 ** st["step"])
                norm = m / v.sqrt().add_(g["eps"])
                if "density" in g:
                    full = p.grad
                    full[st["mask"]] = norm
                    full.mul_(scale)
                    p.add_(full, alpha=-step_size)
                    p.data[st["mask"]].add_(p.data[st["mask"]], alpha=-g["lr"] * g["weight_decay"])  # a copy
                else:
                    p.add_(norm, alpha=-step_size * scale)
                    if g["weight_decay"] > 0:
                        p.add_(p, alpha=-g["lr"] * g["weight_decay"])
        self.total_step += 1
        self.current_step += 1
        if (self.total_step + 1) % self.delta_t == 0:
            self.current_step = 0


def groups(model, density_key):
    targets = [m.weight for _, m in target_modules(model, get_method(NAME).Config().targets)]
    ids = {id(p) for p in targets}
    return [{"params": [p for p in model.parameters() if id(p) not in ids]}, {"params": targets, **density_key}]


def ours(model, wd=0.0, quirk=False, **kw):
    target_group = {"targets": True, **({"weight_decay": 0.0} if quirk else {})}
    return SPAMAdamW(groups(model, target_group), lr=LR, weight_decay=wd, threshold=THETA, reset_interval=DT,
                     reset_warmup=N, clip_delay=DELAY, **kw)


def run(model, opt, batches):
    for x in batches:
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_matches_the_official_algorithm_bit_for_bit(dtype, wd, base_model, batches):
    a, b = copy.deepcopy(base_model).to(dtype), copy.deepcopy(base_model).to(dtype)
    opt_a = ours(a, wd, quirk=True)  # the official code never decays the targets
    opt_b = OfficialSPAM(groups(b, {"density": 1.0}), LR, wd, N, THETA, DT, DELAY)
    clipped = 0
    for step, x in enumerate(batches):
        for model, opt in ((a, opt_a), (b, opt_b)):
            model(input_ids=x, labels=x).loss.backward()
            if opt is opt_a and clips_at(step + 1, THETA, DT, DELAY):
                clipped += sum(int((p.grad**2 > THETA * opt.state[p]["exp_avg_sq"]).sum()) for p in a.parameters())
            opt.step()
            opt.zero_grad(set_to_none=True)
        bad = [n for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True) if not torch.equal(pa, pb)]
        assert not bad, f"step {step + 1}: {bad[:3]} differ"
    assert clipped > 0  # the clipping path ran
    moved = max((pa.float() - pb.float()).abs().max().item()
                for pa, pb in zip(a.parameters(), base_model.parameters(), strict=True))
    assert moved > 1e-2


def test_targets_are_decayed_by_default_unlike_the_official_code(base_model, batches):
    a, b = copy.deepcopy(base_model), copy.deepcopy(base_model)
    run(a, ours(a, 0.1), batches[:2])
    run(b, ours(b, 0.1, quirk=True), batches[:2])
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, b.model.layers[0].mlp.up_proj.weight)


# ---- known answers ---------------------------------------------------------------------------------------
def _single(interval=4, warmup=2, delay=2, threshold=5000.0, lr=0.1):
    w = torch.nn.Parameter(torch.zeros(3, 4))
    return w, SPAMAdamW([w], lr=lr, threshold=threshold, reset_interval=interval, reset_warmup=warmup,
                        clip_delay=delay)


def test_moments_are_zero_right_after_a_reset_and_the_update_is_warmed_up():
    w, opt = _single(interval=4, warmup=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        w.grad = torch.randn(3, 4, generator=g)
        opt.step()
    before = w.detach().clone()
    w.grad = torch.randn(3, 4, generator=g)
    opt.step()  # update 4: reset, then this gradient alone (no clipping: 4 % 4 < delay)
    st = opt.state[w]
    torch.testing.assert_close(st["exp_avg"], 0.1 * w.grad, rtol=1e-6, atol=0)
    torch.testing.assert_close(st["exp_avg_sq"], 0.001 * w.grad**2, rtol=1e-6, atol=0)
    step_size = 0.1 * math.sqrt(1 - 0.999**4) / (1 - 0.9**4)  # the step counter is not reset
    direction = 0.1 * w.grad / (math.sqrt(0.001) * w.grad.abs() + 1e-6)
    torch.testing.assert_close(w.detach(), before - step_size * 0.01 * direction, rtol=1e-5, atol=1e-7)


def test_a_spiked_gradient_is_clipped_to_the_threshold():
    w, opt = _single(interval=0, delay=2, threshold=5000.0)
    w.grad = torch.ones(3, 4)
    opt.step()
    v_prev = opt.state[w]["exp_avg_sq"].clone()  # 0.001 everywhere
    m_prev = opt.state[w]["exp_avg"].clone()
    spike = torch.ones(3, 4)
    spike[1, 2], spike[0, 0] = 1000.0, -1000.0  # g² = 1e6 > 5000 · 0.001; 1 < 5 elsewhere
    w.grad = spike.clone()
    opt.step()
    bound = math.sqrt(5000.0 * 0.001)
    expected = spike.clone()
    expected[1, 2], expected[0, 0] = bound, -bound  # sign kept, magnitude sqrt(θ V_prev)
    torch.testing.assert_close(opt.state[w]["exp_avg"], 0.9 * m_prev + 0.1 * expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(opt.state[w]["exp_avg_sq"], 0.999 * v_prev + 0.001 * expected**2, rtol=1e-6, atol=0)


def test_no_clipping_in_the_first_updates_of_the_run_and_of_a_cycle():
    w, opt = _single(interval=4, delay=2, threshold=1e-3)  # any gradient would count as a spike
    for k in range(1, 10):
        w.grad = torch.full((3, 4), float(k))
        m_prev = opt.state[w]["exp_avg"].clone() if k > 1 and k % 4 else torch.zeros(3, 4)
        opt.step()
        unclipped = torch.allclose(opt.state[w]["exp_avg"], 0.9 * m_prev + 0.1 * w.grad)
        assert unclipped == (not clips_at(k, 1e-3, 4, 2)), k
    assert [k for k in range(1, 10) if clips_at(k, 1e-3, 4, 2)] == [2, 3, 6, 7]


def test_post_reset_warmup_is_the_official_cosine_decay():
    ref = OfficialSPAM([torch.nn.Parameter(torch.zeros(1))], 1.0, 0.0, 150, 0.0, 500, 20)
    for k in range(1, 1600):
        expected = 1 - ref._decay(ref.current_step)
        assert reset_warmup_scale(k, 500, 150) == expected, k
        ref.total_step += 1
        ref.current_step += 1
        if (ref.total_step + 1) % 500 == 0:
            ref.current_step = 0
    assert reset_warmup_scale(499, 500, 150) == 1.0 and reset_warmup_scale(500, 500, 150) == pytest.approx(0.01)
    assert reset_warmup_scale(650, 500, 150) == 1.0 and reset_warmup_scale(123, 0, 150) == 1.0


# ---- the plugin ----------------------------------------------------------------------------------------
def test_plugin_groups_settings_and_switches():
    cfg = build_config("nano", NAME)
    method = get_method(NAME)(cfg.method_cfg, cfg)
    model = build_model(cfg.model, seed=0)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    plain, targets = opt.param_groups
    assert not plain["targets"] and targets["targets"] and len(targets["params"]) == 7 * cfg.model.num_layers
    assert (targets["reset_interval"], targets["reset_warmup"], targets["clip_delay"]) == (8, 2, 2)
    assert plain["eps"] == 1e-6 and plain["threshold"] == 5000.0
    quirks = build_config("nano", NAME, ["optim.weight_decay=0.1", "method.official_target_decay=true",
                                         "method.official_reset_warmup=true", "optim.warmup_steps=5"])
    m2 = get_method(NAME)(quirks.method_cfg, quirks)
    plain, targets = m2.build_optimizer(build_model(quirks.model, seed=0), quirks.optim).param_groups
    assert (plain["weight_decay"], targets["weight_decay"]) == (0.1, 0.0)
    assert targets["reset_warmup"] == 5 and quirks.to_dict()["method_cfg"]["official_reset_warmup"] is True


def test_presets_follow_the_official_scripts():
    for scale, lr in {"60m": 1e-3, "130m": 8e-4, "350m": 4e-4, "1b": 2e-3}.items():
        p = get_method(NAME).preset(scale)
        assert p.optim == {"eps": 1e-6, "weight_decay": 0.0, "grad_clip": 0.0, "lr": lr}
        assert (p.params["threshold"], p.params["reset_interval"], p.params["reset_warmup"]) == (5000.0, 500, 150)
        assert p.params["clip_delay"] == 20 and not p.params["official_reset_warmup"]
    assert build_config("micro", NAME).method_cfg.reset_interval == 50


@pytest.mark.slow
def test_trains_at_micro_with_a_falling_validation_loss(tmp_path):
    sets = ["train.steps=30", "train.total_batch_size=8", "train.micro_batch_size=8", "train.eval_every=15",
            "train.checkpoints=1", "train.log_every=15", "optim.warmup_steps=3", "method.reset_interval=12",
            "method.reset_warmup=4"]
    run_dir = train(build_config("micro", NAME, sets), tmp_path)
    losses = [v["val_loss"] for v in read_log(run_dir, "val")]
    assert losses[2] < losses[1] < losses[0] - 0.5, losses
