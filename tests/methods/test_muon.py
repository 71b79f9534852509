"""Muon (optim/muon.py) against torch.optim.Muon + torch.optim.AdamW, and against Keller Jordan's muon.py.

1. The plugin's optimizer equals torch.optim.Muon on the target matrices plus torch.optim.AdamW on everything
   else, both driven by hand with the same changing lr, **bitwise**, in fp32 and pure bf16, for both lr shape
   scales, with and without Nesterov (fp32 only without: torch normalises the momentum buffer of bf16 weights in
   place there, optim/muon.py's docstring).
2. `KellerMuon` restates KellerJordan/Muon `muon.py` (857d1ad: `zeropower_via_newtonschulz5` with its quintic
   coefficients, `muon_update`, `SingleDeviceMuon.step`). Ours with adjust_lr="original" is its algorithm, but
   not bitwise: torch (and so ours) fuses bA + cA² and aX + BX into one addmm each, rounded to bf16 once, where
   muon.py rounds every product and sum to bf16, and muon.py scales the update by √max(1, m/n) in bf16 before
   adding it. bf16 keeps 8 significant bits (relative step 2^-8 ≈ 0.4%); through five iterations the two
   roundings drift apart by 2-4% in Frobenius norm (measured on these shapes), each as far from the exact
   iteration. So: in fp64 the two iterations agree to 1e-6 (muon.py divides by ‖D‖ + 1e-7, torch by
   max(‖D‖, eps): a relative 1e-7/‖D‖, here 1e-9 to 1e-8); in bf16 each is within 5% of the fp64 iteration and
   a whole step's ΔW of ours within 8% of muon.py's from the same state (measured: 3.4% on average, 6.1% at
   worst; a wrong shape scale or a missing Nesterov blend moves it by 40% or more); the momentum agrees bitwise.
   The weight decay, which is 1e-3 of ΔW here, is held to torch's bitwise by item 1.
3. With the official package installed (`pip install --no-deps muon-optimizer==0.1.0`, Keller Jordan's muon.py
   on PyPI; its step is the one of 857d1ad without the closure and zero-gradient handling), the restatement
   equals its SingleDeviceMuon bitwise, so item 2 compares with the official code.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from lens_testutil import require_package

from lowrank_lens.config import ModelConfig
from lowrank_lens.methods import get_method
from lowrank_lens.methods.surgery import check_param_groups, split_target_weights
from lowrank_lens.optim.muon import QUINTIC, newton_schulz, shape_scale
from lowrank_lens.presets import build_config

NAME = "muon"
CFG = ModelConfig(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=2, vocab_size=64, max_seq_len=16)
STEPS = 8
LRS = [2e-2 * (1 - s / STEPS) + 1e-3 for s in range(STEPS)]  # a changing lr reaches both parts
WD = 0.05
INSTALL = "official Muon missing: pip install --no-deps muon-optimizer==0.1.0"

BAD_VALUES = [
    ("muon", "method.momentum=1", "method.momentum must be in [0, 1)"),
    ("muon", "method.nesterov=2", "method.nesterov"),
    ("muon", "method.ns_steps=0", "method.ns_steps must be >= 1"),
    ("muon", "method.adjust_lr=spectral_norm", "method.adjust_lr must be one of original, match_rms_adamw"),
]
"""Invalid settings of this method and a fragment of each one's one-line error (tests/faults/test_bad_config.py
runs them with every other method's)."""



def _ours(model, sets=()):
    cfg = build_config("nano", NAME, [f"optim.weight_decay={WD}", *sets])
    method = get_method(NAME)(cfg.method_cfg, cfg)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    return cfg, opt


def _step(model, opts, x, lr):
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = lr
    model(input_ids=x, labels=x).loss.backward()
    for opt in opts:
        opt.step()
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(("dtype", "nesterov", "adjust"), [
    (torch.float32, True, "match_rms_adamw"), (torch.float32, True, "original"), (torch.float32, False, "original"),
    (torch.bfloat16, True, "match_rms_adamw"), (torch.bfloat16, True, "original")])
def test_equals_torch_muon_and_adamw_bitwise(base_model, batches, dtype, nesterov, adjust):
    ours_model = copy.deepcopy(base_model).to(dtype)
    cfg, ours = _ours(ours_model, [f"method.nesterov={nesterov}", f"method.adjust_lr={adjust}"])
    ref_model = copy.deepcopy(base_model).to(dtype)
    targets, plain = split_target_weights(ref_model, cfg.method_cfg.targets)
    o = cfg.optim
    muon = torch.optim.Muon(list(targets.values()), lr=o.lr, weight_decay=WD, momentum=0.95, nesterov=nesterov,
                            eps=o.eps, ns_steps=5, adjust_lr_fn=adjust)
    adamw = torch.optim.AdamW(plain, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=WD)
    for x, lr in zip(batches, LRS, strict=True):
        _step(ours_model, [ours], x, lr)
        _step(ref_model, [muon, adamw], x, lr)
    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert all(not torch.equal(a, b.to(a.dtype)) for a, b in zip(ours_model.parameters(), base_model.parameters(),
                                                                   strict=True))  # every parameter trained


# ---- Keller Jordan's muon.py, restated -------------------------------------------------------------------------
def keller_zeropower(g: torch.Tensor, steps: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """muon.py's zeropower_via_newtonschulz5 (in `dtype`; the official one is bf16)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    if g.size(-2) > g.size(-1):
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    return x.mT if g.size(-2) > g.size(-1) else x


class KellerMuon(torch.optim.Optimizer):
    """muon.py's SingleDeviceMuon (momentum 0.95, Nesterov, 5 iterations), restated."""

    def __init__(self, params, lr, weight_decay):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": 0.95})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                grad, buf = p.grad, state["momentum_buffer"]
                buf.lerp_(grad, 1 - beta)
                update = keller_zeropower(grad.lerp_(buf, beta), 5)  # muon.py blends into the gradient in place
                update *= max(1, grad.size(-2) / grad.size(-1)) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.reshape(p.shape), alpha=-group["lr"])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("shape", [(32, 32), (88, 32), (32, 88), (344, 128)])
def test_newton_schulz_is_muon_py_iteration(shape):
    assert QUINTIC == (3.4445, -4.7750, 2.0315)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        d = torch.randn(shape, generator=g) * torch.rand((), generator=g)
        exact = keller_zeropower(d, 5, torch.float64)
        # The same algebra: only the normalisation differs, D / (‖D‖ + 1e-7) against D / max(‖D‖, eps).
        assert _rel(newton_schulz(d, 5, 1e-7, torch.float64), exact) < 1e-6
        ours, theirs = newton_schulz(d, 5, 1e-7), keller_zeropower(d, 5)
        assert ours.dtype == theirs.dtype == torch.bfloat16 and ours.shape == d.shape
        assert _rel(ours, exact) < 0.05 and _rel(theirs, exact) < 0.05  # each is bf16 rounding away from it
        assert _rel(ours, theirs) < 0.06  # measured at most 4.5%
        assert torch.linalg.svdvals(ours.float()).max() < 1.3  # the quintic overshoots 1 a little, never more


def test_step_is_muon_py_step_to_bf16_rounding(base_model, batches):
    """From the same weights and momentum, one update of ours (adjust_lr original) and of muon.py."""
    model = copy.deepcopy(base_model)
    cfg, ours = _ours(model, ["method.adjust_lr=original"])
    targets, _ = split_target_weights(model, cfg.method_cfg.targets)
    worst = []
    for x, lr in zip(batches, LRS, strict=True):
        before = {n: p.detach().clone() for n, p in targets.items()}
        buffers = {n: ours.state[p]["momentum_buffer"].clone() for n, p in targets.items() if ours.state[p]}
        model(input_ids=x, labels=x).loss.backward()
        grads = {n: p.grad.clone() for n, p in targets.items()}
        copies = {n: torch.nn.Parameter(w.clone()) for n, w in before.items()}
        keller = KellerMuon(list(copies.values()), lr=lr, weight_decay=WD)
        for n, c in copies.items():
            c.grad = grads[n].clone()
            if n in buffers:
                keller.state[c]["momentum_buffer"] = buffers[n].clone()
        keller.step()
        for group in ours.param_groups:
            group["lr"] = lr
        ours.step()
        model.zero_grad(set_to_none=True)
        for n, p in targets.items():
            assert torch.equal(ours.state[p]["momentum_buffer"], keller.state[copies[n]]["momentum_buffer"]), n
            worst.append(_rel(p.detach() - before[n], copies[n].detach() - before[n]))
    assert max(worst) < 0.08  # measured: mean 3.4%, worst 6.1% over these 8 x 14 updates


def test_shape_scales():
    assert shape_scale("original", (88, 32)) == (88 / 32) ** 0.5 and shape_scale("original", (32, 88)) == 1.0
    assert shape_scale("match_rms_adamw", (32, 88)) == 0.2 * 88 ** 0.5


def test_restatement_is_the_official_muon_py(base_model, batches):
    require_package("muon", INSTALL)
    official = importlib.import_module("muon")
    if not hasattr(official, "SingleDeviceMuon"):
        pytest.skip("the installed `muon` module is not Keller Jordan's muon.py")
    models = [copy.deepcopy(base_model) for _ in range(2)]
    matrices = [list(split_target_weights(m, get_method(NAME).Config().targets)[0].values()) for m in models]
    for m, params in zip(models, matrices, strict=True):  # only the matrices train: the AdamW part is torch's
        keep = {id(p) for p in params}
        for p in m.parameters():
            p.requires_grad_(id(p) in keep)
    opts = [KellerMuon(matrices[0], lr=2e-2, weight_decay=WD),
            official.SingleDeviceMuon(matrices[1], lr=2e-2, weight_decay=WD, momentum=0.95)]
    for x in batches:
        for m, opt in zip(models, opts, strict=True):
            m(input_ids=x, labels=x).loss.backward()
            opt.step()
            m.zero_grad(set_to_none=True)
    for a, b in zip(*matrices, strict=True):
        assert torch.equal(a, b)


def test_one_optimizer_after_a_reload(base_model, batches):
    """The inner AdamW sees the wrapper's groups and state, also after load_state_dict replaced them, so the
    loop's lr schedule (group["lr"] on every group) reaches both rules."""
    model = copy.deepcopy(base_model)
    _, opt = _ours(model)
    _step(model, [opt], batches[0], 1e-2)
    fresh = _ours(copy.deepcopy(base_model))[1]
    fresh.load_state_dict(opt.state_dict())
    for o in (opt, fresh):
        assert o._adamw.param_groups == [o.param_groups[1]] and o._adamw.param_groups[0] is o.param_groups[1]
        assert o._adamw.state is o.state
    assert [g["matrix"] for g in fresh.param_groups] == [True, False]
