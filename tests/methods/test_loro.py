"""LORO (optim/loro_adamw.py, methods/loro.py) against an independent re-derivation of the official optimizer
(mzf666/LORO-main `loro_torch/loro_optim.py`, `--loro_type loro`, with `run_c4.py`'s refresh after each exact
step) and its schedule (`peft_pretraining/training_utils.py`, `cosine_restart`), plus known answers.

No reference package is published; `OfficialLORO` re-derives the official step in the official layout
(weight_out M = B: out x r, weight_in N = Aᵀ: in x r) with the official linear algebra: general `solve` for the
R⁻¹ products, the out x out U Uᵀ, and the SVD of the 2r x 2r core assembled as S_aug - lr·Sigma.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lowrank_lens.methods import get_method
from lowrank_lens.methods.loro import LOROLinear, loro_schedule
from lowrank_lens.methods.schedule import warmup_cosine
from lowrank_lens.methods.surgery import check_param_groups
from lowrank_lens.model import build_model, count_parameters
from lowrank_lens.optim.loro_adamw import LOROAdamW, loro_exact_update
from lowrank_lens.presets import build_config

NAME = "loro"
K = 4  # exact steps at updates 4, 8, 12 in the step-by-step comparison


def setup(overrides=(), scale="nano", device="cpu"):
    cfg = build_config(scale, NAME, list(overrides))
    method = get_method(NAME)(cfg.method_cfg, cfg)
    return cfg, method, method.prepare_model(build_model(cfg.model, seed=0, device=device))


def layers(model):
    return [m for m in model.modules() if isinstance(m, LOROLinear)]


def batches(cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.model.vocab_size, (4, 32), generator=g) for _ in range(n)]


def rel_err(a, b) -> float:
    return max(((pa - pb).norm() / pb.norm()).item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


# ---- the exact step: a known answer -----------------------------------------------------------------
def tangent_step_truncated(B, A, G, lr):
    """Dense float64: the rank-r truncated SVD of B A - lr P_T(G), P_T(G) = P_U G + G P_V - P_U G P_V."""
    B, A, G = B.double(), A.double(), G.double()
    pu = B @ torch.linalg.pinv(B)  # projector onto col(B)
    pv = torch.linalg.pinv(A) @ A  # projector onto row(A)
    x = B @ A - lr * (pu @ G + G @ pv - pu @ G @ pv)
    u, s, vh = torch.linalg.svd(x)
    r = B.shape[1]
    return (u[:, :r] * s[:r]) @ vh[:r], s


@pytest.mark.parametrize("shape", [(40, 24, 5), (24, 40, 6), (32, 32, 16)])
def test_exact_update_is_the_retracted_riemannian_gradient_step(shape):
    out, inn, r = shape
    g = torch.Generator().manual_seed(out + r)
    B, A, G = (torch.randn(s, generator=g) for s in ((out, r), (r, inn), (out, inn)))
    lr = 0.3
    B1, A1 = loro_exact_update(B, A, G @ A.t(), B.t() @ G, lr)  # the factor gradients of a true G
    expected, s = tangent_step_truncated(B, A, G, lr)
    W1 = B1.double() @ A1.double()
    assert ((W1 - expected).norm() / expected.norm()).item() < 1e-5  # fp32 QR/SVD vs a float64 reference
    assert torch.linalg.matrix_rank(W1).item() == r  # the product stays of rank r
    # Balanced factors: B'ᵀB' = A'A'ᵀ = diag(σ_1..σ_r) of the truncated matrix.
    for gram in (B1.t() @ B1, A1 @ A1.t()):
        torch.testing.assert_close(gram.double(), torch.diag(s[:r]), rtol=1e-4, atol=1e-4 * s[0].item())
    bf = loro_exact_update(B.bfloat16(), A.bfloat16(), (G @ A.t()).bfloat16(), (B.t() @ G).bfloat16(), lr)
    assert all(t.dtype == torch.bfloat16 for t in bf)  # computed in fp32, returned in the factors' dtype


# ---- the re-derivation of the official optimizer --------------------------------------------------
class OfficialLORO:
    """LOROAdamW.step(use_exact_loro) then, at exact steps, refresh_states('all'), as run_c4.py calls them."""

    def __init__(self, model, lr, scaler, betas=(0.9, 0.999), eps=1e-6):
        self.lr, self.scaler, self.betas, self.eps = lr, scaler, betas, eps
        self.pairs = [(m.B, m.A) for m in layers(model)]
        ids = {id(p) for pair in self.pairs for p in pair}
        self.regular = [p for p in model.parameters() if id(p) not in ids]
        self.state, self.update_step = {}, 0

    def _moments(self, key, grad):
        st = self.state.setdefault(key, {"step": 0})
        if "exp_avg" not in st:
            st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
        b1, b2 = self.betas
        st["step"] += 1
        st["exp_avg"].mul_(b1).add_(grad, alpha=1 - b1)
        st["exp_avg_sq"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = st["exp_avg_sq"].sqrt().add_(self.eps)
        step_size = self.lr * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
        return st["exp_avg"] / denom, step_size

    @staticmethod
    def exact(M, N, dM, dN, lr):
        n, r = M.shape
        U, Rm = torch.linalg.qr(M)
        V, Rn = torch.linalg.qr(N)
        G_x_V = torch.linalg.solve(Rn.T, dM.T).T
        Ut_x_G = torch.linalg.solve(Rm.T, dN.T)
        K0 = Ut_x_G @ V
        Y1 = (Ut_x_G - Ut_x_G @ V @ V.T).T
        Y2 = G_x_V - U @ U.T @ G_x_V
        Q1, K1 = torch.linalg.qr(Y1)
        Q2, K2 = torch.linalg.qr(Y2)
        Sigma = torch.cat([torch.cat([K0, K1.T], 1), torch.cat([K2, torch.zeros(r, r)], 1)], 0)
        S_aug = torch.zeros(2 * r, 2 * r)
        S_aug[:r, :r] = Rm @ Rn.T
        U_sig, S_sig, Vh_sig = torch.linalg.svd(S_aug - lr * Sigma)
        S_sig_sqrt = S_sig.pow(0.5).diag()[:, :r]
        return torch.cat([U, Q2], 1) @ U_sig @ S_sig_sqrt, torch.cat([V, Q1], 1) @ Vh_sig.T @ S_sig_sqrt

    @torch.no_grad()
    def step(self, exact_every):
        use_exact = (self.update_step + 1) % exact_every == 0
        for p in self.regular:
            n, step_size = self._moments(p, p.grad)
            p.add_(n, alpha=-step_size)
        for B, A in self.pairs:
            M, N = B.data, A.data.T  # official storage; N is a view of A
            dM, lr = self._moments((id(B), "out"), B.grad)
            dN, _ = self._moments((id(A), "in"), A.grad.T)
            if use_exact:
                M_new, N_new = self.exact(M, N, dM, dN, lr)
                M.copy_(M_new)
                N.copy_(N_new)
            else:
                M -= lr * self.scaler * dM
                N -= lr * self.scaler * dN
        if use_exact:  # refresh_states("all"): every moment and step count restarts
            self.state = {}
        self.update_step += 1
        return use_exact


def _official_from(opt, a, b, lr, scaler) -> OfficialLORO:
    """An OfficialLORO on model `b` (a copy of `a`) holding `opt`'s state, moments of A transposed to the
    official (in x r) layout."""
    ref = OfficialLORO(b, lr=lr, scaler=scaler)
    pairs_a = {id(p): kind for m in layers(a) for p, kind in ((m.B, "out"), (m.A, "in"))}
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        st = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state.get(pa, {}).items()}
        kind = pairs_a.get(id(pa))
        if kind == "in":
            st = {k: v.t() if torch.is_tensor(v) else v for k, v in st.items()}
        if st:
            ref.state[pb if kind is None else (id(pb), kind)] = st
    ref.update_step = opt.param_groups[1]["updates"]
    return ref


def test_matches_the_official_optimizer_step_by_step():
    """Each update from the same state (the reference is re-seeded with our model and optimizer state before
    every step, so an early rounding difference is not carried and amplified by the later Adam restarts):
    lazy updates and the plain AdamW are bitwise the official floats. At exact updates the product B A agrees
    to 1e-5 (fp32; measured ~1e-6: we solve triangular systems where upstream runs general LU solves and apply
    U Uᵀ as U (Uᵀ x)), the factors to 1e-4: near-equal singular values of the core leave the split of B A into
    B and A less determined than B A itself (measured ~1e-5)."""
    cfg, method, a = setup([f"method.exact_every={K}"])
    opt = method.build_optimizer(a, cfg.optim)
    scaler = cfg.method_cfg.rank / cfg.model.hidden_size
    exact_steps = []
    for step, x in enumerate(batches(cfg, 3 * K)):
        b = copy.deepcopy(a)
        ref = _official_from(opt, a, b, cfg.optim.lr, scaler)
        for model in (a, b):
            model(input_ids=x, labels=x).loss.backward()
        opt.step()
        exact = ref.step(K)
        for model in (a, b):
            model.zero_grad(set_to_none=True)
        assert method.after_step(step + 1, a, opt)["loro_exact"] == float(exact)
        la, lb = layers(a), layers(b)
        ids = {id(t) for m in la for t in (m.B, m.A)}
        plain = [(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True) if id(pa) not in ids]
        assert all(torch.equal(pa, pb) for pa, pb in plain), step
        if not exact:
            assert all(torch.equal(p.B, q.B) and torch.equal(p.A, q.A) for p, q in zip(la, lb, strict=True)), step
            continue
        exact_steps.append(step + 1)
        for p, q in zip(la, lb, strict=True):
            wa, wb = p.B @ p.A, q.B @ q.A
            assert ((wa - wb).norm() / wb.norm()).item() <= 1e-5, (step, p.layer_name)
            assert max(((u - v).norm() / v.norm()).item() for u, v in ((p.B, q.B), (p.A, q.A))) <= 1e-4
        assert all(st["step"] == 0 and not st["exp_avg"].any() for st in opt.state.values())  # refresh "all"
    assert exact_steps == [K, 2 * K, 3 * K]
    assert rel_err(a, setup()[2]) > 0.05  # it trained


def test_lazy_step_is_the_scaled_adam_direction_and_refresh_follows_the_mode():
    g = torch.Generator().manual_seed(0)
    for mode, zeroed in (("all", {"w", "B", "A"}), ("lowrank", {"B", "A"}), ("regular", {"w"}), ("none", set())):
        w = torch.nn.Parameter(torch.randn(5, generator=g))
        B, A = (torch.nn.Parameter(torch.randn(s, generator=g)) for s in ((6, 2), (2, 4)))
        opt = LOROAdamW([{"params": [w]}, {"params": [B, A], "lowrank": True, "lazy_scale": 0.5, "exact_every": 2}],
                        lr=0.1, refresh=mode)
        for p in (w, B, A):
            p.grad = torch.randn(p.shape, generator=g)
        before = B.detach().clone()
        opt.step()  # update 1: lazy. First Adam step: N = 0.1 g / (√0.001 |g| + eps), η = lr √0.001 / 0.1
        n = 0.1 * B.grad / (math.sqrt(0.001) * B.grad.abs() + 1e-6)
        torch.testing.assert_close(B.detach(), before - 0.1 * math.sqrt(0.001) / 0.1 * 0.5 * n, rtol=1e-6, atol=1e-7)
        assert all(opt.state[p]["step"] == 1 for p in (w, B, A))
        opt.step()  # update 2: exact, then the refresh
        names = {"w": w, "B": B, "A": A}
        for key, p in names.items():
            st = opt.state[p]
            assert (st["step"] == 0 and not st["exp_avg"].any() and not st["exp_avg_sq"].any()) == (key in zeroed)
        assert opt.param_groups[1]["updates"] == 2


# ---- the schedule ----------------------------------------------------------------------------------
def official_lambda(step, *, N, W, cycle, rw, adjust, min_ratio, eps=1e-6):
    """_get_cosine_schedule_with_multiple_warmups_lambda (lr_jag_after_warmup False)."""
    if step < W:
        top = 0.5 * (1.0 + math.cos(math.pi * float(-adjust) / float(max(1, N - W))))
        number, into = step // cycle, step % cycle
        if into < rw and number != 0:
            mult = float(number * cycle) / float(max(1, W)) * (top - min_ratio) + min_ratio
            return float(into) / float(max(1, rw)) * (mult - eps) + eps
        return float(step) / float(max(1, W)) * (top - min_ratio) + min_ratio
    cur = step + adjust
    number, into = cur // cycle, cur % cycle
    if into < rw and number > 0:
        progress = float(number * cycle - W) / float(max(1, N - W))
        mult = min_ratio + (1.0 - min_ratio) * (0.5 * (1.0 + math.cos(math.pi * progress)))
        return float(into) / float(max(1, rw)) * (mult - eps) + eps
    progress = float(cur - W) / float(max(1, N - W))
    return min_ratio + (1.0 - min_ratio) * (0.5 * (1.0 + math.cos(math.pi * progress)))


# (scale, steps, warmup, K, lr_adjust_steps): scripts/loro_c4/llama_<scale>.sh
SCRIPTS = [("60m", 10_000, 1000, 500, -1000), ("130m", 20_000, 2000, 500, -2000),
           ("350m", 60_000, 2000, 500, -6000), ("1b", 100_000, 10_000, 200, -10_000)]


@pytest.mark.parametrize("scale, steps, warmup, k, adjust", SCRIPTS)
def test_schedule_is_the_official_one_to_the_last_bit(scale, steps, warmup, k, adjust):
    cfg = build_config(scale, NAME, [f"optim.warmup_steps={warmup}"])
    method = get_method(NAME)(cfg.method_cfg, cfg)
    assert (cfg.train.steps, cfg.method_cfg.exact_every, round(cfg.method_cfg.lr_shift * steps)) == (steps, k, -adjust)
    for step in range(steps):
        ref = official_lambda(step, N=steps, W=warmup, cycle=k, rw=5, adjust=adjust, min_ratio=0.1)
        assert method.lr_multiplier(step) == ref, step
    assert method.lr_multiplier(0) == 0.1  # the first warmup starts at min_lr_ratio
    restart = -adjust + k  # the first re-warmup of the cosine phase: s = step - shift reaches K
    assert method.lr_multiplier(restart) == 1e-6 and method.lr_multiplier(restart - 1) > 0.5
    assert loro_schedule(restart, steps, warmup, k, 5, -adjust, 0.1) == 1e-6


def test_cosine_switch_uses_the_shared_schedule():
    cfg, method, _ = setup(["method.schedule=cosine"])
    o = cfg.optim
    assert [method.lr_multiplier(s) for s in range(20)] == [warmup_cosine(s, 20, o.warmup_steps, o.min_lr_ratio)
                                                           for s in range(20)]


# ---- the plugin ------------------------------------------------------------------------------------
def test_factorises_every_target_with_xavier_factors_and_groups_pairs():
    cfg, method, model = setup()
    wrapped = layers(model)
    r, h = cfg.method_cfg.rank, cfg.model.hidden_size
    assert len(wrapped) == 7 * cfg.model.num_layers and r == h // 4
    assert not any(n.endswith("_proj.weight") for n, _ in model.named_parameters())
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    plain, lowrank = opt.param_groups
    assert lowrank["params"] == [p for m in wrapped for p in (m.B, m.A)]
    assert lowrank["lazy_scale"] == r / h and lowrank["exact_every"] == 10 and opt.defaults["refresh"] == "all"
    assert plain["eps"] == lowrank["eps"] == 1e-6
    big = LOROLinear(512, 1376, 128)
    big.reset_parameters(seed=0)
    assert big.A.std().item() == pytest.approx(math.sqrt(2 / (512 + 128)), rel=0.02)
    assert big.B.std().item() == pytest.approx(math.sqrt(2 / (1376 + 128)), rel=0.02)


def test_training_keeps_rank_r_logs_exact_steps_and_the_dense_view_is_b_a():
    cfg, method, model = setup(["method.exact_every=3"])
    opt = method.build_optimizer(model, cfg.optim)
    logs = []
    for step, x in enumerate(batches(cfg, 6)):
        for group in opt.param_groups:
            group["lr"] = cfg.optim.lr * method.lr_multiplier(step)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        logs.append(method.after_step(step + 1, model, opt)["loro_exact"])
    assert logs == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    dense = method.dense_weights(model)
    for m in layers(model):
        w = dense[m.layer_name]
        assert torch.equal(w, m.B.detach() @ m.A.detach())
        r = cfg.method_cfg.rank
        assert torch.linalg.matrix_rank(m.B.detach().double() @ m.A.detach().double()).item() == r < min(w.shape)
        sv = torch.linalg.svdvals(w.double())  # the fp32 product: beyond r only rounding noise
        assert sv[r:].max() <= 1e-5 * sv[0]


def test_after_step_realigns_the_update_count_with_the_loop():
    cfg, method, model = setup()
    opt = method.build_optimizer(model, cfg.optim)
    method.after_step(7, model, opt)  # e.g. one update skipped as non-finite: the loop's step is what counts
    assert opt.param_groups[1]["updates"] == 7


COUNTS = {"60m": 42.77, "130m": 94.00, "350m": 185.22, "1b": 609.31}  # Low-Rank's (docs/methods.md §10.3)


@pytest.mark.parametrize("scale", list(COUNTS))
def test_parameter_count_on_meta_is_low_ranks(scale):
    cfg, _, model = setup(scale=scale, device="meta")
    assert round(count_parameters(model) / 1e6, 2) == COUNTS[scale]
    assert get_method(NAME).footprint(cfg).trainable == get_method("low-rank").footprint(
        build_config(scale, "low-rank")).trainable


def test_presets_follow_the_scripts():
    expected = {"60m": (128, 1e-2, 500), "130m": (256, 1e-2, 500), "350m": (256, 1e-2, 500), "1b": (512, 5e-3, 200)}
    for scale, (rank, lr, k) in expected.items():
        cfg = build_config(scale, NAME)
        m = cfg.method_cfg
        assert (m.rank, cfg.optim.lr, m.exact_every, m.restart_warmup_steps, m.lr_shift) == (rank, lr, k, 5, 0.1)
        assert (m.refresh, m.schedule, cfg.optim.weight_decay, cfg.optim.grad_clip, cfg.optim.eps) == (
            "all", "loro", 0.0, 0.0, 1e-6)
        assert f"llama_{scale}.sh" in cfg.notes[0]
    assert build_config("micro", NAME).method_cfg.rank == 32 and build_config("nano", NAME).method_cfg.lr_shift == 0


def test_350m_keeps_the_scripts_warmup():
    assert build_config("350m", NAME).optim.warmup_steps == 2000


@pytest.mark.slow
def test_trains_at_micro_with_a_falling_validation_loss(tmp_path):
    """A short micro run with exact steps and refreshes at 10, 20, 30."""
    from lowrank_lens.runfolder.log import read_log
    from lowrank_lens.train import train

    sets = ["train.steps=30", "train.total_batch_size=8", "train.micro_batch_size=8", "train.eval_every=15",
            "train.checkpoints=1", "train.log_every=15", "optim.warmup_steps=3"]
    vals = read_log(train(build_config("micro", NAME, sets), tmp_path), "val")
    losses = [v["val_loss"] for v in vals]
    assert [v["step"] for v in vals] == [0, 15, 30] and losses[2] < losses[1] < losses[0] - 0.5, losses
