"""Dion (optim/dion.py) against a restatement of the official single-device step, and known answers.

The official optimizer (microsoft/dion @ 0a059a4, `dion/dion.py`) is not on PyPI, and CI reaches PyPI only, so
`OfficialDion` below restates its path for unsharded matrices without a replicate mesh (`Dion.step` ->
`dion_update_ddp` at world size 1) in its own structure, keeping what decides the numbers:

- the group-level step counter and the order of the matrices (`create_param_batches` groups them by shape);
- batched matrices of batch size 1 (`torch.stack` of M, or of Mᵀ for wide matrices, and of Q);
- `orthogonalize`: Householder QR in fp32 when P is square or wide, else the randomized Cholesky QR with a
  sketch of ceil(1.25·r / 128)·128 rows; `fix_all_zero_or_nan`; `column_normalize` (sqrt of the column sum of
  squares, + epsilon, in fp32);
- `foreach_baddbmm_`: the product scaled by alpha, X scaled by beta, then added; hyperparameters as fp32 0-dim
  tensors (`torch.tensor(group[...])`), so 1-μ, 1-lr·wd and lr·√(m/n) are fp32 numbers.

Its random numbers are the official code's global-generator draws (Q at the first step, the sketches); the
restatement takes them from `initial_q` and `sketch` with our seeds, so the two runs see the same numbers and
must agree **bitwise**, in fp32 and bf16, in both orthogonalisation branches. The parameters AdamW trains use
torch.optim.AdamW on both sides (ours is torch's; the official AdamW is its own fused kernel with fp32 scalar
hyperparameters, which rounds differently).

Ours was also checked, in the session that wrote it, against the official package itself (the snapshot at
0a059a4 imported on CPU with TORCHDYNAMO_DISABLE=1, its sketch function replaced by ours, Q pre-seeded, the
AdamW parameters frozen): bitwise equal weights, momenta and Q for 8 steps in fp32 and bf16 at r = 8, 16, 32,
wd 0.01 and 0; so the restatement, which ours equals bitwise, is the official step too. With torch.compile
(inductor on CPU) the official step differs from its eager self by at most 1.1e-8 after 4 steps (fp32).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lowrank_lens.config import ModelConfig
from lowrank_lens.methods import get_method
from lowrank_lens.methods.surgery import check_param_groups, split_target_weights
from lowrank_lens.optim.dion import DionAdamW, draw_seed, initial_q, orthonormal_columns, sketch
from lowrank_lens.presets import build_config

NAME = "dion"
CFG = ModelConfig(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=2, vocab_size=64, max_seq_len=16)
STEPS = 8
LRS = [2e-2 * (1 - s / STEPS) + 1e-3 for s in range(STEPS)]
WD, SEED = 0.05, 0

BAD_VALUES = [
    ("dion", "method.mu=1", "method.mu must be in [0, 1)"),
    ("dion", "method.mu=-0.5", "method.mu must be in [0, 1)"),
    ("dion", "method.adamw_no_decay=2", "method.adamw_no_decay"),
    ("dion", "method.rank=65", "method.rank 65 exceeds 64"),
]
"""Invalid settings of this method and a fragment of each one's one-line error (tests/faults/test_bad_config.py
runs them with every other method's)."""



class OfficialDion(torch.optim.Optimizer):
    """dion/dion.py's single-device Dion step, restated (module docstring); `draws(i, t, P)` gives the sketch."""

    def __init__(self, params, lr, mu, weight_decay, rank, epsilon=1e-8):
        super().__init__(params, {"lr": lr, "mu": mu, "weight_decay": weight_decay, "epsilon": epsilon,
                                  "rank": rank, "step": 0})
        self.index = {p: i for i, p in enumerate(self.param_groups[0]["params"])}

    @torch.no_grad()
    def step(self):
        group = self.param_groups[0]
        group["step"] += 1
        lr, mu, wd, eps = (torch.tensor(group[k]) for k in ("lr", "mu", "weight_decay", "epsilon"))
        params = group["params"]
        by_shape = [p for shape in dict.fromkeys(tuple(p.shape) for p in params) for p in params
                    if tuple(p.shape) == shape]
        for p in by_shape:
            state, i = self.state[p], self.index[p]
            m, n = p.shape
            if not state:
                state["momentum"] = torch.zeros_like(p)
                state["Q"] = initial_q((min(m, n), min(group["rank"], m, n)), draw_seed(SEED, i), p)
            wide = m < n
            M, Q = [state["momentum"]], [state["Q"]]
            torch._foreach_add_(M, [p.grad])
            mb = torch.stack([t.mT for t in M]) if wide else torch.stack(M)
            qb = torch.stack(Q).to(mb.dtype)
            pb = self._orthogonalize(mb @ qb, i, group["step"])
            rb = mb.mT @ pb
            zero = (mb == 0).all(dim=(-2, -1), keepdim=True)
            pb, rb = pb.nan_to_num() * ~zero, rb.nan_to_num() * ~zero + qb * zero
            self._baddbmm(M, pb, rb, alpha=-(1 - mu), beta=1.0, wide=wide)
            r32 = rb.to(torch.float32)
            qb = (r32 / (torch.sqrt(r32.square().sum(dim=-2, keepdim=True)) + eps)).to(rb.dtype)
            self._baddbmm([p], pb, qb, alpha=-(((m / n) ** 0.5) * lr), beta=1 - lr * wd, wide=wide)
            torch._foreach_copy_(Q, qb.to(Q[0].dtype).unbind(dim=0))

    @staticmethod
    def _orthogonalize(pb, i, step):
        dtype = pb.dtype
        if pb.size(-2) <= pb.size(-1):
            out, _ = torch.linalg.qr(pb.to(torch.float32))
        else:
            sb = sketch(pb.size(-2), pb.size(-1), draw_seed(SEED, i, step), pb[0]).unsqueeze(0)
            _, r = torch.linalg.qr((sb @ pb).to(torch.float32), mode="r")
            out = torch.linalg.solve_triangular(r, pb.to(torch.float32), upper=True, left=False)
            r, _ = torch.linalg.cholesky_ex(out.mT @ out, upper=True)
            out = torch.linalg.solve_triangular(r, out, upper=True, left=False)
        return out.to(dtype).contiguous()

    @staticmethod
    def _baddbmm(xs, a, b, alpha, beta, wide):
        update = list((b @ a.mT if wide else a @ b.mT).unbind(dim=0))
        torch._foreach_mul_(xs, beta)
        torch._foreach_add_(xs, torch._foreach_mul(update, alpha))


def _ours(model, rank, sets=()):
    cfg = build_config("nano", NAME, [f"optim.weight_decay={WD}", f"method.rank={rank}", f"train.seed={SEED}",
                                      *sets])
    opt = get_method(NAME)(cfg.method_cfg, cfg).build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    return cfg, opt


def _train(model, opts, batches):
    for x, lr in zip(batches, LRS, strict=True):
        for opt in opts:
            for group in opt.param_groups:
                group["lr"] = lr
        model(input_ids=x, labels=x).loss.backward()
        for opt in opts:
            opt.step()
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("rank", [8, 32])  # 32: square matrices take the Householder branch, the others sketch
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_the_official_step_bitwise(base_model, batches, rank, dtype):
    ours_model = copy.deepcopy(base_model).to(dtype)
    cfg, ours = _ours(ours_model, rank)
    ref_model = copy.deepcopy(base_model).to(dtype)
    targets, plain = split_target_weights(ref_model, cfg.method_cfg.targets)
    o = cfg.optim
    official = OfficialDion([{"params": list(targets.values())}], lr=o.lr, mu=0.95, weight_decay=WD, rank=rank)
    adamw = torch.optim.AdamW(plain, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=WD)
    _train(ours_model, [ours], batches)
    _train(ref_model, [official, adamw], batches)
    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(ours.param_groups[0]["params"], official.param_groups[0]["params"], strict=True):
        assert torch.equal(ours.state[a]["momentum"], official.state[b]["momentum"])
        assert torch.equal(ours.state[a]["Q"], official.state[b]["Q"])
        assert ours.state[a]["step"] == STEPS
    assert all(not torch.equal(a, b.to(a.dtype)) for a, b in zip(ours_model.parameters(), base_model.parameters(),
                                                                   strict=True))


@pytest.mark.parametrize("shape", [(300, 16), (16, 16), (88, 32)])
def test_orthonormal_columns_span_the_input(shape):
    p = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    q = orthonormal_columns(p, seed=1)
    assert q.shape == p.shape
    torch.testing.assert_close(q.T @ q, torch.eye(shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(q @ (q.T @ p), p, atol=1e-4, rtol=0)  # the same column space
    q_other = orthonormal_columns(p, seed=2)  # another sketch: the same basis up to column signs and rounding
    torch.testing.assert_close((q_other * q).sum(0).abs(), torch.ones(shape[1]), atol=1e-5, rtol=0)


def _one_step(rank, wd=0.0, grad=None):
    w = torch.nn.Parameter(torch.randn(48, 24, generator=torch.Generator().manual_seed(4)) * 0.02)
    w.grad = torch.randn(48, 24, generator=torch.Generator().manual_seed(5)) if grad is None else grad
    opt = DionAdamW([{"params": [w], "matrix": True}], lr=0.01, mu=0.9, weight_decay=wd, rank=rank, seed=7)
    before, g = w.detach().clone(), w.grad.clone()
    opt.step()
    return w.detach(), before, g, opt.state[w]


def test_full_rank_error_feedback_keeps_mu_times_the_momentum():
    """At r = min(m, n), P·Pᵀ is the identity on B's columns, so M - (1-μ)·P·Pᵀ·B = μ·(M + G)."""
    _, _, g, state = _one_step(rank=24)
    torch.testing.assert_close(state["momentum"], 0.9 * g, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank", [4, 24])
def test_the_update_has_the_spectral_scale(rank):
    """P has orthonormal columns and Q unit columns, so ‖ΔW‖_F = lr·√(m/n)·√r' (wd 0)."""
    w, before, _, state = _one_step(rank)
    assert state["Q"].shape == (24, rank) and state["step"] == 1
    torch.testing.assert_close(state["Q"].norm(dim=0), torch.ones(rank), atol=1e-5, rtol=0)
    assert (w - before).norm().item() == pytest.approx(0.01 * math.sqrt(48 / 24) * math.sqrt(rank), rel=1e-4)


def test_a_zero_momentum_only_decays_the_weight():
    """The official guard: with M = 0, P = 0 and R = Q (no NaN from the QR of a zero matrix)."""
    w, before, _, state = _one_step(rank=4, wd=0.1, grad=torch.zeros(48, 24))
    q0 = initial_q((24, 4), draw_seed(7, 0), before)
    assert torch.equal(w, before * (1 - torch.tensor(0.01) * torch.tensor(0.1)))
    torch.testing.assert_close(state["Q"], q0 / q0.norm(dim=0), atol=1e-6, rtol=0)


def test_draws_follow_the_seed_not_the_global_generator():
    torch.manual_seed(123)
    a = _one_step(rank=4)[3]["Q"]
    torch.manual_seed(456)
    b = _one_step(rank=4)[3]["Q"]
    assert torch.equal(a, b)  # the same for every rank and after a resume
    assert not torch.equal(initial_q((24, 4), draw_seed(7, 0), a), initial_q((24, 4), draw_seed(8, 0), a))


def test_adamw_no_decay_spares_only_the_adamw_group(base_model):
    model = copy.deepcopy(base_model)
    _, opt = _ours(model, 8, ["method.adamw_no_decay=True"])
    assert [(g["matrix"], g["weight_decay"]) for g in opt.param_groups] == [(True, WD), (False, 0.0)]
    assert opt.replicated_state(opt.param_groups[0]) and not opt.replicated_state(opt.param_groups[1])
