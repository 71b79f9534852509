"""GoLore (optim/golore_adamw.py, methods/golore.py) against an independent re-derivation of the official optimizer
(pkumelon/Golore `peft_pretraining/golore_torch/adamw.py` + `golore_projector.py`) and known answers.

No reference package is published, so `OfficialGoLore` below re-derives the official step from its source,
written from scratch: the projector with the `rand` flag, the `matrix` state and the first-moment re-projection,
transformers-style Adam, and the official random-matrix formula Z U diag(S^-1/2) Vᵀ of svd(ZᵀZ) in float64. It
shares with the code under test only the documented seed rule of the draws (`draw_seed`): the official code
draws from the global RNG, which no re-implementation can share.
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
from lowrank_lens.optim.galore_adamw import GaLoreAdamW
from lowrank_lens.optim.golore_adamw import GoLoreAdamW, draw_seed, random_basis
from lowrank_lens.optim.projector import orthogonal_basis
from lowrank_lens.presets import build_config

CFG = ModelConfig(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=2, vocab_size=64, max_seq_len=16)
RANK, GAP, ALPHA, LR, SEED = 8, 3, 0.25, 1e-2, 5
SWITCH, STEPS = 5, 12  # refreshes at per-parameter steps 0, 3 (SVD) and 6, 9 (random)
BETAS, EPS = (0.9, 0.999), 1e-6


def groups(model, **projected) -> list[dict]:
    targets = [m.weight for _, m in target_modules(model, get_method("golore").Config().targets)]
    ids = {id(p) for p in targets}
    return [{"params": [p for p in model.parameters() if id(p) not in ids]},
            {"params": targets, "rank": RANK, "update_proj_gap": GAP, "scale": ALPHA, **projected}]


def golore(model, reproject="random", random_from=SWITCH) -> GoLoreAdamW:
    return GoLoreAdamW(groups(model, random_from=random_from, seed=SEED), lr=LR, reproject=reproject)


def train(model, opt, batches, each=None) -> None:
    for x in batches:
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if each:
            each()


def rel_err(a, b) -> float:
    return max(((pa.float() - pb.float()).norm() / pb.float().norm()).item()
               for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def bitwise(a, b) -> bool:
    return all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


# ---- the re-derivation of the official optimizer --------------------------------------------------
def official_random_matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    """golore_projector.get_random_orthogonal_matrix(rows, cols): Z (ZᵀZ)^(-1/2) through svd(ZᵀZ)."""
    z = torch.randn((rows, cols), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u, s, vh = torch.linalg.svd(z.T @ z)
    return z @ u @ torch.diag(1 / torch.sqrt(s)) @ vh


class OfficialGoLore:
    """golore_torch/adamw.py step by step (no weight decay, bias correction on, eps 1e-6). `mode` picks what
    happens to exp_avg at a refresh: 'code' is the file as written (the re-projected moment is a local
    variable); 'every' stores it (GoLore.py's ReLoRA-style path); 'random' stores it at random refreshes only;
    'none' never re-projects."""

    def __init__(self, param_groups, mode):
        self.groups, self.mode, self.state = param_groups, mode, {}

    @torch.no_grad()
    def step(self):
        b1, b2 = BETAS
        for gi, group in enumerate(self.groups):
            for pi, p in enumerate(group["params"]):
                st = self.state.setdefault(p, {"step": 0})
                g, matrix, rand = p.grad, None, False
                right = g.dim() == 2 and g.shape[0] >= g.shape[1]
                if "rank" in group:
                    if "ortho" not in st or st["step"] % GAP == 0:
                        rand = st["step"] >= group["random_from"]
                        if rand:
                            seed = draw_seed(SEED, gi, pi, st["step"])
                            shape = (RANK, g.shape[1]) if right else (g.shape[0], RANK)
                            matrix = official_random_matrix(*shape, seed).to(g.dtype)
                        else:
                            u, _, vh = torch.linalg.svd(g.float(), full_matrices=False)
                            matrix = (vh[:RANK] if right else u[:, :RANK]).to(g.dtype)
                        st["ortho"] = matrix
                    g = g @ st["ortho"].t() if right else st["ortho"].t() @ g
                if "exp_avg" not in st:
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(g), torch.zeros_like(g)
                exp_avg = st["exp_avg"]
                if matrix is not None:
                    if "matrix" in st and (self.mode in ("code", "every") or (self.mode == "random" and rand)):
                        old = st["matrix"]
                        exp_avg = (exp_avg @ old) @ matrix.T if right else matrix.T @ (old @ exp_avg)
                        if self.mode != "code":
                            st["exp_avg"] = exp_avg
                    st["matrix"] = matrix
                st["step"] += 1
                exp_avg.mul_(b1).add_(g, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                step_size = LR * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
                n = exp_avg / st["exp_avg_sq"].sqrt().add_(EPS)
                if "rank" in group:
                    n = (n @ st["ortho"] if right else st["ortho"] @ n) * ALPHA
                p.add_(n, alpha=-step_size)

    def zero_grad(self, set_to_none=True):
        for group in self.groups:
            for p in group["params"]:
                p.grad = None


@pytest.mark.parametrize("mode", ["random", "code", "every", "none"])
def test_matches_the_official_optimizer_step_by_step(mode, base_model, batches):
    """fp32, to 1e-6 relative (measured <= 5e-8 after 12 steps): the SVD phase is GaLore's, bitwise; the random
    bases are the same polar factor computed two ways in float64 (svd(Z) here, svd(ZᵀZ) upstream), equal to
    ~1e-8 before the cast to fp32, so a few entries round to the neighbouring float."""
    a, b = copy.deepcopy(base_model), copy.deepcopy(base_model)
    ours, ref = golore(a, mode), OfficialGoLore(groups(b, random_from=SWITCH), mode)
    for step, x in enumerate(batches):
        for model, opt in ((a, ours), (b, ref)):
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        err = rel_err(a, b)
        assert err <= 1e-6, f"step {step}: relative parameter error {err:.3g}"
        if step < SWITCH + 1:  # the updates at per-parameter steps 0..5 see SVD bases only
            assert mode in ("every", "code") and step >= GAP or bitwise(a, b), step
    assert rel_err(a, copy.deepcopy(base_model)) > 0.1


# ---- known answers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_before_the_switch_it_is_galore_bitwise(dtype, base_model, batches):
    never, late, galore = (copy.deepcopy(base_model).to(dtype) for _ in range(3))
    opts = (golore(never, random_from=math.inf), golore(late), GaLoreAdamW(groups(galore), lr=LR))
    for step, x in enumerate(batches):
        for model, opt in zip((never, late, galore), opts, strict=True):
            train(model, opt, [x])
        assert bitwise(never, galore), step  # GoLore with the switch never reached is GaLore
        assert bitwise(late, galore) == (step <= SWITCH), step  # the first random refresh is at step 6


@pytest.mark.parametrize("mode", ["every", "code"])
def test_modes_that_reproject_at_svd_refreshes_leave_galore_at_the_first_refresh(mode, base_model, batches):
    a, galore = copy.deepcopy(base_model), copy.deepcopy(base_model)
    opt_a, opt_g = golore(a, mode, random_from=math.inf), GaLoreAdamW(groups(galore), lr=LR)
    for step, x in enumerate(batches[:GAP + 1]):
        train(a, opt_a, [x])
        train(galore, opt_g, [x])
        assert bitwise(a, galore) == (step < GAP), step


def _one_weight(reproject, shape=(6, 4)):
    w = torch.nn.Parameter(torch.zeros(shape))
    opt = GoLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 2, "scale": 1.0, "random_from": 2,
                        "seed": SEED}], lr=1e-2, reproject=reproject)
    return w, opt


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)], ids=["right", "left"])
def test_the_random_refresh_draws_the_documented_basis_and_reprojects_the_moment(shape):
    g = torch.Generator().manual_seed(1)
    for mode in ("random", "code"):
        w, opt = _one_weight(mode, shape)
        for _ in range(2):  # steps 0 (SVD) and 1
            w.grad = torch.randn(shape, generator=g)
            opt.step()
        st = opt.state[w]
        old_basis, old_m = st["basis"].clone(), st["exp_avg"].clone()
        w.grad = torch.randn(shape, generator=g)
        opt.step()  # step 2: the first random refresh
        right = shape[0] >= shape[1]
        expected = random_basis(shape, 2, right, draw_seed(SEED, 0, 0, 2), w.grad)
        assert torch.equal(st["basis"], expected) and bool(st["proj_right"]) is right
        assert not torch.allclose(st["basis"].abs(), orthogonal_basis(w.grad, 2, right).abs(), atol=1e-3)
        low = w.grad @ expected.t() if right else expected.t() @ w.grad
        moved = (old_m @ old_basis) @ expected.t() if right else expected.t() @ (old_basis @ old_m)
        if mode == "code":  # the official AdamW: the stored moment kept its coordinates and skipped the step
            assert torch.equal(st["exp_avg"], old_m) and "stale_exp_avg" not in st
        else:
            torch.testing.assert_close(st["exp_avg"], 0.9 * moved + 0.1 * low, rtol=1e-6, atol=1e-7)


def test_random_bases_are_orthonormal_and_the_official_polar_factor():
    # (gradient shape, side, rank, basis shape): a tall gradient takes r x n rows, a wide one m x r columns.
    for grad_shape, right, rank, shape in (((40, 32), True, 8, (8, 32)), ((24, 40), False, 6, (24, 6))):
        for seed in range(5):
            q = random_basis(grad_shape, rank, right, seed, torch.empty(0, dtype=torch.float64))
            assert q.shape == shape
            gram = q @ q.t() if right else q.t() @ q
            torch.testing.assert_close(gram, torch.eye(rank, dtype=torch.float64), rtol=0, atol=1e-12)
            torch.testing.assert_close(q, official_random_matrix(*shape, seed), rtol=0, atol=1e-6)
        fp32 = random_basis(grad_shape, rank, right, 0, torch.empty(0))
        assert fp32.dtype == torch.float32 and fp32.is_contiguous()


def test_random_bases_are_uniform_on_the_stiefel_manifold():
    """Haar: E[QᵀQ] = (r/n) I for r x n rows (E[Q Qᵀ] = (r/m) I for m x r columns), i.e. every direction
    is equally likely and each entry has variance 1/n: no preferred subspace, no extra scaling. 400 draws:
    the diagonal means have a standard error of about 0.005, the bound 0.03 is 6 of them."""
    n, r, draws = 16, 4, 400
    for right in (True, False):
        shape = (r, n) if right else (n, r)
        acc = torch.zeros(n, n, dtype=torch.float64)
        for seed in range(draws):
            q = random_basis((n, n), r, right, seed, torch.empty(0, dtype=torch.float64))
            assert q.shape == shape
            acc += q.t() @ q if right else q @ q.t()
        torch.testing.assert_close(acc / draws, torch.eye(n, dtype=torch.float64) * r / n, rtol=0, atol=0.03)


def test_draws_depend_on_parameter_and_step_only():
    a = random_basis((6, 4), 2, True, draw_seed(1, 0, 3, 9), torch.empty(0))
    assert torch.equal(a, random_basis((6, 4), 2, True, draw_seed(1, 0, 3, 9), torch.ones(0)))
    for other in ((2, 0, 3, 9), (1, 1, 3, 9), (1, 0, 4, 9), (1, 0, 3, 10)):
        assert not torch.equal(a, random_basis((6, 4), 2, True, draw_seed(*other), torch.empty(0)))


# ---- the plugin ----------------------------------------------------------------------------------------
def test_plugin_builds_galore_groups_with_the_switch():
    cfg = build_config("nano", "golore", ["train.seed=3"])
    method = get_method("golore")(cfg.method_cfg, cfg)
    model = build_model(cfg.model, seed=0)
    opt = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, opt)
    assert type(opt) is GoLoreAdamW and opt.defaults["reproject"] == "random"
    plain, projected = opt.param_groups
    assert "rank" not in plain and projected["rank"] == cfg.model.hidden_size // 4
    assert projected["random_from"] == 0.5 * cfg.train.steps and projected["seed"] == 3
    assert get_method("golore").footprint(cfg) == get_method("galore").footprint(build_config("nano", "galore"))


def test_presets():
    M = get_method("golore")
    p = M.preset("60m")
    assert p.params == {"rank": 128, "update_proj_gap": 200, "scale": 1.0, "rand_ratio": 0.8, "reproject": "random"}
    assert p.optim == {"lr": 1e-3, "weight_decay": 0.0, "grad_clip": 1.0} and "Go_pt.sh" in p.notes[0]
    for scale, rank in (("130m", 256), ("350m", 256), ("1b", 512)):
        g, q = get_method("galore").preset(scale), M.preset(scale)
        assert q.params == {**g.params, "rand_ratio": 0.8, "reproject": "random"} and q.params["rank"] == rank
        assert q.optim == g.optim and any(n.startswith("inferred") for n in q.notes)
    assert M.preset("micro").params["rand_ratio"] == 0.5 and build_config("micro", "golore").method_cfg.rank == 32


@pytest.mark.slow
def test_trains_at_micro_with_a_falling_validation_loss(tmp_path):
    """A short micro run that crosses the switch (T 10, switch at 15 of 30: the refresh at step 20 is random)."""
    from lowrank_lens.runfolder.log import read_log
    from lowrank_lens.train import train as train_run

    sets = ["train.steps=30", "train.total_batch_size=8", "train.micro_batch_size=8", "train.eval_every=15",
            "train.checkpoints=1", "train.log_every=15", "optim.warmup_steps=3"]
    vals = read_log(train_run(build_config("micro", "golore", sets), tmp_path), "val")
    losses = [v["val_loss"] for v in vals]
    assert [v["step"] for v in vals] == [0, 15, 30] and losses[2] < losses[1] < losses[0] - 0.5, losses
