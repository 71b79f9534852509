"""SUMO (optim/sumo.py) against a restatement of the paper's Algorithm 1, and the invariants the paper states.

No official code was found (github.com/guy120494/SUMO, the paper's link, has no snapshot here, and no copy of it
was located), so the reference is `PaperSUMO` below: Algorithm 1 of arXiv 2505.24749 for one matrix, written in
the paper's notation (W m x n with m >= n, Q = U[:, :r] of a truncated SVD of G, R = QₜᵀQₜ₋₁, M ← RM at a
subspace switch, Ĝ = QᵀG, M ← μM + Ĝ, O = UVᵀ of M, W ← W - η(G - Q(Ĝ - s·O)) - ηλW), with a wide matrix
handled by running the algorithm on its transpose (the paper's "multiply from the right-hand side"), and s =
α·√max(m, n) (§3.2's shape factor times the projection-back scale). It is computed in fp64 from a full SVD; ours
takes its basis from GaLore's projector (an fp32 SVD), so the two agree to ~1e-7, not bitwise. The gradients
are synthetic with a clear gap below the r-th singular value, so the subspace itself is well conditioned.

The other tests check what the paper states: O is exactly orthogonal (the update's non-zero singular values all
equal lr·s), ‖O‖_F = √r' at every step (so Block 3's limiter never acts, and it is not implemented), the basis is
refreshed exactly at updates 0, K, 2K, ... from the current gradient, the moment is carried over as R·M at a
switch, and at rank = m = n SUMO is exactly-orthogonalised momentum SGD. The generic tests (test_contract,
test_optimizer_round_trip, test_memory_closed_forms, tests/train/test_resume_and_ddp) cover the plugin's groups,
state-dict round trip, footprint, kill-and-resume, DDP and FSDP2.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lowrank_lens.config import ModelConfig
from lowrank_lens.methods import get_method
from lowrank_lens.methods.surgery import check_param_groups, target_modules
from lowrank_lens.model import build_model
from lowrank_lens.optim.sumo import SUMOAdamW, orthogonalize, paper_side_right
from lowrank_lens.presets import build_config

NAME = "sumo"
CFG = ModelConfig(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=2, vocab_size=64, max_seq_len=16)
STEPS = 6
RANK, GAP, MU, ALPHA, WD = 6, 3, 0.9, 0.25, 0.1  # K = 3: refreshes at updates 0, 3, 6, 9
LRS = [1e-2 * (1 - s / 12) + 1e-3 for s in range(12)]
SHAPES = [(40, 24), (24, 40), (24, 24)]
BAD_VALUES = [
    ("sumo", "method.rank=65", "method.rank 65 exceeds 64"),
    ("sumo", "method.rank=-1", "method.rank must be >= 0"),
    ("sumo", "method.update_proj_gap=0", "method.update_proj_gap must be >= 1"),
    ("sumo", "method.scale=0", "method.scale must be positive"),
    ("sumo", "method.scale=nan", "method.scale"),
    ("sumo", "method.momentum=1", "method.momentum must be in [0, 1)"),
    ("sumo", "method.momentum=-0.1", "method.momentum must be in [0, 1)"),
    ("sumo", "method.perp_grad=2", "method.perp_grad"),
]
"""Invalid settings of this method and a fragment of each one's one-line error (tests/faults/test_bad_config.py
runs them with every other method's)."""


class PaperSUMO:
    """Algorithm 1 for one matrix, in fp64 (module docstring)."""

    def __init__(self, rank, gap, mu, alpha, perp_grad=True):
        self.rank, self.gap, self.mu, self.alpha, self.perp = rank, gap, mu, alpha, perp_grad
        self.t, self.Q, self.M = 0, None, None

    def step(self, W, G, lr, wd):
        flip = W.shape[0] < W.shape[1]  # Algorithm 1 assumes m >= n: a wide matrix runs transposed
        W, G = (W.T, G.T) if flip else (W, G)
        m, n = G.shape
        if self.t % self.gap == 0:  # Block 1 and Block 1.1
            U, _, _ = torch.linalg.svd(G, full_matrices=False)
            Q = U[:, :self.rank]
            self.M = torch.zeros(Q.shape[1], n, dtype=G.dtype) if self.t == 0 else (Q.T @ self.Q) @ self.M
            self.Q = Q
        G_hat = self.Q.T @ G
        self.M = self.mu * self.M + G_hat  # Block 2
        U, _, Vh = torch.linalg.svd(self.M, full_matrices=False)
        O = U @ Vh
        s = self.alpha * math.sqrt(max(m, n))
        step = G - self.Q @ (G_hat - s * O) if self.perp else s * self.Q @ O  # Block 4
        W = W - lr * step - lr * wd * W
        self.t += 1
        return W.T if flip else W


def _gradients(shape, steps, seed, rank=RANK):
    """G_t = A_t diag(10, 9, ..) B_t on a slowly turning rank-`rank` part, + noise 0.01: a clear spectral gap."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    a = torch.randn(m, rank, generator=g, dtype=torch.float64)
    b = torch.randn(rank, n, generator=g, dtype=torch.float64)
    out = []
    for _ in range(steps):
        a = a + 0.3 * torch.randn(m, rank, generator=g, dtype=torch.float64)
        b = b + 0.3 * torch.randn(rank, n, generator=g, dtype=torch.float64)
        qa, qb = torch.linalg.qr(a)[0], torch.linalg.qr(b.T)[0]
        spectrum = torch.arange(10, 10 - rank, -1, dtype=torch.float64)
        out.append(qa @ torch.diag(spectrum) @ qb.T + 0.01 * torch.randn(m, n, generator=g, dtype=torch.float64))
    return out


def _optimizer(w, **kw):
    settings = {"lr": LRS[0], "weight_decay": WD, "rank": RANK, "update_proj_gap": GAP, "scale": ALPHA, "momentum": MU}
    return SUMOAdamW([{"params": [w], "matrix": True}], **{**settings, **kw})


def _run(shape, grads, dtype=torch.float64, **kw):
    w = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=dtype) * 0.1)
    opt, states = _optimizer(w, **kw), []
    for g, lr in zip(grads, LRS, strict=False):
        opt.param_groups[0]["lr"] = lr
        w.grad = g.to(dtype)
        before = w.detach().clone()
        opt.step()
        states.append({"before": before, "after": w.detach().clone(), "grad": w.grad.clone(),
                       **{k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[w].items()}})
    return w.detach(), states


@pytest.mark.parametrize("perp_grad", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_algorithm_1_restated(shape, perp_grad):
    grads = _gradients(shape, 10, seed=1)
    ours, _ = _run(shape, grads, perp_grad=perp_grad)
    paper = PaperSUMO(RANK, GAP, MU, ALPHA, perp_grad)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 0.1
    for g, lr in zip(grads, LRS, strict=False):
        w = paper.step(w, g, lr, WD)
    torch.testing.assert_close(ours, w, rtol=1e-6, atol=1e-6)  # the basis is an fp32 SVD's (entries of W ~0.1)


def test_model_trains_as_algorithm_1_plus_torch_adamw(base_model, batches):
    """The plugin on a tiny LLaMA = PaperSUMO on each target matrix + torch AdamW on the rest (fp32, ~1e-5)."""
    sets = [f"method.rank={RANK}", f"method.update_proj_gap={GAP}", f"optim.weight_decay={WD}"]
    cfg = build_config("nano", NAME, sets)
    ours_model, ref_model = copy.deepcopy(base_model), copy.deepcopy(base_model)
    ours = get_method(NAME)(cfg.method_cfg, cfg).build_optimizer(ours_model, cfg.optim)
    check_param_groups(ours_model, ours)
    targets = {id(m.weight) for _, m in target_modules(ref_model, cfg.method_cfg.targets)}
    matrices = [p for p in ref_model.parameters() if id(p) in targets]
    paper = [PaperSUMO(RANK, GAP, MU, ALPHA) for _ in matrices]
    o = cfg.optim
    adamw = torch.optim.AdamW([p for p in ref_model.parameters() if id(p) not in targets], lr=o.lr,
                              betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=WD)
    for x, lr in zip(batches, LRS, strict=False):
        for opt in (ours, adamw):
            for group in opt.param_groups:
                group["lr"] = lr
        for model in (ours_model, ref_model):
            model(input_ids=x, labels=x).loss.backward()
        ours.step()
        adamw.step()
        with torch.no_grad():
            for p, alg in zip(matrices, paper, strict=True):
                p.copy_(alg.step(p.double(), p.grad.double(), lr, WD))
        for model in (ours_model, ref_model):
            model.zero_grad(set_to_none=True)
    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert all(not torch.equal(a, b) for a, b in zip(ours_model.parameters(), base_model.parameters(), strict=True))


def _inv_sqrt(gram):
    evals, evecs = torch.linalg.eigh(gram)
    return evecs @ torch.diag(evals.rsqrt()) @ evecs.T


@pytest.mark.parametrize("shape", SHAPES)
def test_the_step_in_the_subspace_is_exactly_orthogonal(shape):
    """O = UVᵀ of M, the polar factor (MMᵀ)^(-1/2)M; the update s·QO has r' singular values, all equal to s."""
    right = paper_side_right(shape)
    s = ALPHA * math.sqrt(max(shape))
    _, states = _run(shape, _gradients(shape, 7, seed=2), perp_grad=False, weight_decay=0.0)
    for st, lr in zip(states, LRS, strict=False):
        moment = st["moment"]
        ortho = orthogonalize(moment)
        small = ortho.T @ ortho if right else ortho @ ortho.T
        torch.testing.assert_close(small, torch.eye(RANK, dtype=small.dtype), atol=1e-12, rtol=0)
        assert ortho.norm().item() == pytest.approx(math.sqrt(RANK), rel=1e-12)  # Block 3's ratio is always 1
        polar = moment @ _inv_sqrt(moment.T @ moment) if right else _inv_sqrt(moment @ moment.T) @ moment
        torch.testing.assert_close(ortho, polar, atol=1e-8, rtol=0)
        sv = torch.linalg.svdvals((st["before"] - st["after"]) / lr)
        torch.testing.assert_close(sv[:RANK], torch.full((RANK,), s, dtype=sv.dtype), atol=1e-6, rtol=0)
        assert sv[RANK:].max().item() < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_subspace_refreshes_every_k_updates_from_the_current_gradient(shape):
    grads = _gradients(shape, 10, seed=3)
    _, states = _run(shape, grads)
    right = paper_side_right(shape)
    m, n = shape
    for t, st in enumerate(states):
        q = st["basis"]
        assert q.shape == ((RANK, n) if right else (m, RANK))
        assert st["moment"].shape == ((m, RANK) if right else (RANK, n))
        assert st["step"] == t + 1
        changed = t == 0 or not torch.equal(q, states[t - 1]["basis"])
        assert changed == (t % GAP == 0), t
        if t % GAP == 0:  # the top-r' singular subspace of this update's gradient, on the paper's side
            u, _, vh = torch.linalg.svd(st["grad"], full_matrices=False)
            top = vh[:RANK].T if right else u[:, :RANK]
            basis = q.T if right else q
            torch.testing.assert_close(basis @ basis.T, top @ top.T, atol=1e-6, rtol=0)
            torch.testing.assert_close(basis.T @ basis, torch.eye(RANK, dtype=q.dtype), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_moment_is_carried_into_the_new_subspace(shape):
    """At a switch, M ← μ·(Q_newᵀQ_old)·M + Ĝ (left; M·Q_oldQ_newᵀ on the right); between switches M ← μM + Ĝ."""
    grads = _gradients(shape, 7, seed=4)
    _, states = _run(shape, grads)
    right = paper_side_right(shape)
    for t in range(1, len(states)):
        old, new = states[t - 1], states[t]
        q_old, q_new, g = old["basis"], new["basis"], new["grad"]
        low = g @ q_new.T if right else q_new.T @ g
        carried = old["moment"] @ (q_old @ q_new.T) if right else (q_new.T @ q_old) @ old["moment"]
        if t % GAP:  # no switch: no transport (R would be the identity only to the fp32 basis's rounding)
            assert torch.equal(q_old, q_new)
            carried = old["moment"]
        torch.testing.assert_close(new["moment"], MU * carried + low, atol=1e-10, rtol=1e-10)


def test_an_unchanged_subspace_keeps_the_full_space_moment():
    """Q_new spanning Q_old's space: Q_new·M' = Q_old·M exactly (R is then orthogonal), whatever the signs."""
    g = torch.Generator().manual_seed(5)
    u = torch.linalg.qr(torch.randn(30, 4, generator=g, dtype=torch.float64))[0]
    grads = [u @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ torch.randn(
        4, 20, generator=g, dtype=torch.float64) for _ in range(4)]
    _, states = _run((30, 20), grads, rank=4, update_proj_gap=2, momentum=0.5)
    before, after = states[1], states[2]
    full_before = before["basis"] @ before["moment"]
    full_after = after["basis"] @ after["moment"]
    torch.testing.assert_close(full_after, 0.5 * full_before + after["basis"] @ (after["basis"].T @ after["grad"]),
                               atol=1e-6, rtol=0)  # the basis is orthonormal to an fp32 SVD's rounding


@pytest.mark.parametrize("perp_grad", [True, False])
def test_full_rank_square_is_exactly_orthogonalised_momentum_sgd(perp_grad):
    """r' = m = n: Q is orthogonal, G_⊥ = 0, so W ← (1 - lr·wd)W - lr·α·√n·UVᵀ(B) with B ← μB + G."""
    n = 16
    grads = [torch.randn(n, n, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in range(9)]
    ours, _ = _run((n, n), grads, rank=n, perp_grad=perp_grad)
    w = torch.randn((n, n), generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 0.1
    b = torch.zeros(n, n, dtype=torch.float64)
    for g, lr in zip(grads, LRS, strict=False):
        b = MU * b + g
        u, _, vh = torch.linalg.svd(b)
        w = (1 - lr * WD) * w - lr * ALPHA * math.sqrt(n) * (u @ vh)
    torch.testing.assert_close(ours, w, atol=1e-6, rtol=0)


def test_perp_grad_adds_the_gradient_outside_the_subspace():
    """Both runs see the same gradients, so the same bases and moments: they differ by lr·G_⊥ per update."""
    grads = _gradients((40, 24), 4, seed=6)
    with_perp, states = _run((40, 24), grads)
    without, _ = _run((40, 24), grads, perp_grad=False)
    delta = torch.zeros_like(with_perp)
    for st, lr in zip(states, LRS, strict=False):
        q, g = st["basis"], st["grad"]
        delta = (1 - lr * WD) * delta - lr * (g - q @ (q.T @ g))
    torch.testing.assert_close(with_perp - without, delta, atol=1e-9, rtol=0)


def test_a_zero_gradient_only_decays_the_weight():
    w = torch.nn.Parameter(torch.randn(12, 8, generator=torch.Generator().manual_seed(7)))
    w.grad = torch.zeros(12, 8)
    before = w.detach().clone()
    opt = _optimizer(w, rank=4)
    opt.step()
    assert torch.equal(w.detach(), before * (1 - LRS[0] * WD))
    assert not opt.state[w]["moment"].any()


def test_runs_are_deterministic(base_model, batches):
    results = []
    for _ in range(2):
        model = copy.deepcopy(base_model)
        cfg = build_config("nano", NAME, [f"method.rank={RANK}", f"method.update_proj_gap={GAP}"])
        opt = get_method(NAME)(cfg.method_cfg, cfg).build_optimizer(model, cfg.optim)
        for x in batches:
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        results.append((model, opt))
    (m1, o1), (m2, o2) = results
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters(), strict=True))
    for a, b in zip(o1.param_groups[0]["params"], o2.param_groups[0]["params"], strict=True):
        assert torch.equal(o1.state[a]["moment"], o2.state[b]["moment"])
        assert torch.equal(o1.state[a]["basis"], o2.state[b]["basis"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plugin_groups_state_and_shape_scale(dtype):
    cfg = build_config("nano", NAME)
    model = build_model(cfg.model, seed=0).to(dtype)
    opt = get_method(NAME)(cfg.method_cfg, cfg).build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    matrix, plain = opt.param_groups
    targets = [m.weight for _, m in target_modules(model, cfg.method_cfg.targets)]
    assert [id(p) for p in matrix["params"]] == [id(p) for p in targets] and matrix["matrix"] and not plain["matrix"]
    assert matrix["rank"] == cfg.model.hidden_size // 4 == 16 and matrix["update_proj_gap"] == 10
    assert opt.replicated_state(matrix) and not opt.replicated_state(plain)
    x = torch.randint(0, cfg.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    for p in targets:
        m, n = p.shape
        st = opt.state[p]
        assert st["basis"].dtype == st["moment"].dtype == dtype
        assert st["moment"].numel() == 16 * min(m, n) and st["basis"].numel() == 16 * max(m, n)
    w = torch.nn.Parameter(torch.zeros(48, 24, dtype=torch.float64))
    w.grad = _gradients((48, 24), 1, seed=8)[0]
    _optimizer(w, perp_grad=False, weight_decay=0.0).step()  # ‖ΔW‖_F = lr·α·√max(m, n)·√r'
    assert w.norm().item() == pytest.approx(LRS[0] * ALPHA * math.sqrt(48) * math.sqrt(RANK), rel=1e-6)


def test_presets_cite_the_paper():
    M = get_method(NAME)
    for scale, rank, gap in (("60m", 128, 200), ("130m", 256, 250), ("350m", 256, 200), ("1b", 512, 200)):
        p = M.preset(scale)
        assert (p.params["rank"], p.params["update_proj_gap"], p.params["scale"]) == (rank, gap, 0.25)
        assert p.optim["lr"] == 1e-2 and "Table 3" in p.notes[0]
    assert "Table 9" in M.preset("130m").notes[0]
    for scale, steps in (("nano", 20), ("micro", 150)):
        cfg = build_config(scale, NAME)
        assert cfg.method_cfg.rank == cfg.model.hidden_size // 4 and steps // cfg.method_cfg.update_proj_gap >= 2
