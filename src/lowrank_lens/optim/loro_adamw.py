"""LOROAdamW: low-rank Riemannian optimizer for W = B A factor pairs (Mo, Huang & Pan, ICLR 2025).

Faithful to the official `loro_torch/loro_optim.py` (mzf666/LORO-main, `--loro_type loro`) together with the
training script's state refresh (`run_c4.py`, `--loro_refresh all --loro_refresh_freq K`), per update:

1. every trainable tensor gets transformers-style Adam moments (python-int `step`, eps default 1e-6):
   M ← β1 M + (1-β1) g, V ← β2 V + (1-β2) g², N = M / (√V + eps) (bias-uncorrected), and the step size
   η = lr √(1-β2^t) / (1-β1^t) with the bias correction folded in;
2. plain groups: W ← W - η N, then decoupled weight decay W ← W - lr · wd · W;
3. factor groups (`lowrank`: params listed as pairs B_1, A_1, B_2, A_2, ... with B: out x r, A: r x in):
   - lazy update (most steps): B ← B - η s N_B, A ← A - η s N_A with s = `lazy_scale` (official
     `--loro_lr_scaler -1`: r / hidden_size), then B ← B - η wd B (η, not lr: as the official code);
   - exact update every `exact_every` = K updates (the official `(update_step + 1) % loro_freq == 0`, i.e.
     updates K, 2K, ...): N_B and N_A stand for G Aᵀ and Bᵀ G, and B A moves to the rank-r truncated SVD of
     B A - η P_T(G), P_T the projection onto the tangent space of the rank-r manifold at B A
     (`loro_exact_update`); no lazy scale and no weight decay on that step, as in the official code;
4. after an exact update the moments of the groups `refresh` names ("all": every group, as the scripts;
   "lowrank"; "regular"; "none") are reset to zero with step 0, so Adam restarts with its bias correction.

`updates` (the factor group's count of updates done) is a group key, so it travels in `state_dict()`; the
method plugin keeps it equal to the training loop's step. Under FSDP2 the factors and every moment are sharded
like their parameters: the lazy step is elementwise on the shards; the exact step gathers B, A, N_B, N_A of one
layer (`sharding.full`), computes what one process computes, and writes each rank's rows back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..sharding import full, set_full_
from .paramwise import closure_loss

REFRESH_MODES = ("all", "lowrank", "regular", "none")


def adam_direction(state: dict[str, Any], grad: torch.Tensor, group: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """Step 1: update the moments on `grad`; return N = M / (√V + eps) and the bias-corrected step size."""
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(grad)
        state["exp_avg_sq"] = torch.zeros_like(grad)
    state["step"] = state.get("step", 0) + 1
    beta1, beta2 = group["betas"]
    state["exp_avg"].mul_(beta1).add_(grad, alpha=1.0 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    denom = state["exp_avg_sq"].sqrt().add_(group["eps"])
    step_size = group["lr"] * math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
    return state["exp_avg"] / denom, step_size


@torch.no_grad()
def loro_exact_update(B: torch.Tensor, A: torch.Tensor, dB: torch.Tensor, dA: torch.Tensor,
                      lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact LORO step (official eq. 10): new balanced factors of the rank-r truncated SVD of
    B A - lr P_T(G), where dB = G Aᵀ (out x r) and dA = Bᵀ G (r x in) are all that is known of G.

    With B = U R_B and Aᵀ = V R_A (QR), so B A = U R_B R_Aᵀ Vᵀ: G V = dB R_A⁻¹, Uᵀ G = R_B⁻ᵀ dA, and
    P_T(G) = U K0 Vᵀ + U (Q1 K1)ᵀ + (Q2 K2) Vᵀ with K0 = Uᵀ G V and the QRs of the row-space part outside V,
    Q1 K1 = (Uᵀ G (I - V Vᵀ))ᵀ, and of the column-space part outside U, Q2 K2 = (I - U Uᵀ) G V. Then
    B A - lr P_T(G) = [U Q2] C [V Q1]ᵀ with the 2r x 2r core C = [[R_B R_Aᵀ - lr K0, -lr K1ᵀ], [-lr K2, 0]],
    and C's top-r SVD gives B' = [U Q2] U_r √S_r, A' = √S_r V_rᵀ [V Q1]ᵀ. As the official code: fp32 throughout
    (the result in B's dtype), K0 from dA and the column part from dB (with Adam's N in place of the factor
    gradients the two need not agree).
    """
    dtype, r = B.dtype, B.shape[1]
    B, A, dB, dA = B.float(), A.float(), dB.float(), dA.float()
    U, RB = torch.linalg.qr(B)  # out x r, r x r
    V, RA = torch.linalg.qr(A.t())  # in x r, r x r
    GV = torch.linalg.solve_triangular(RA, dB, upper=True, left=False)  # dB R_A⁻¹: out x r
    UtG = torch.linalg.solve_triangular(RB.t(), dA, upper=False)  # R_B⁻ᵀ dA: r x in
    K0 = UtG @ V
    Q1, K1 = torch.linalg.qr((UtG - K0 @ V.t()).t())  # in x r, r x r
    Q2, K2 = torch.linalg.qr(GV - U @ (U.t() @ GV))  # out x r, r x r (never forms the out x out U Uᵀ)
    core = torch.zeros(2 * r, 2 * r, dtype=B.dtype, device=B.device)
    core[:r, :r] = RB @ RA.t() - lr * K0
    core[:r, r:] = -lr * K1.t()
    core[r:, :r] = -lr * K2
    Uc, S, Vch = torch.linalg.svd(core)
    root = S[:r].sqrt()
    B_new = torch.cat([U, Q2], dim=1) @ (Uc[:, :r] * root)
    A_new = (root[:, None] * Vch[:r]) @ torch.cat([V, Q1], dim=1).t()
    return B_new.to(dtype), A_new.to(dtype)


class LOROAdamW(torch.optim.Optimizer):
    """AdamW for plain groups and LORO for factor groups (module docstring).

    A factor group is a dict with `params` = [B_1, A_1, B_2, A_2, ...], `lowrank=True`, and optionally
    `lazy_scale` (s, default 1), `exact_every` (K, default 1: the official `--loro_freq` default) and
    `updates` (updates done, default 0). `refresh` is optimizer-wide.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 refresh: str = "all") -> None:
        if lr < 0.0 or eps < 0.0 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"need lr >= 0, eps >= 0 and betas in [0, 1), got {lr}, {eps}, {betas}")
        if refresh not in REFRESH_MODES:
            raise ValueError(f"refresh {refresh!r} is not one of {', '.join(REFRESH_MODES)}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "refresh": refresh})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if param_group.get("lowrank"):
            group = {"lazy_scale": 1.0, "exact_every": 1, "updates": 0, **param_group}
            params = group["params"]
            group["params"] = params = [params] if isinstance(params, torch.Tensor) else list(params)
            pairs = list(zip(params[0::2], params[1::2], strict=False))
            if len(params) % 2 or any(b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0] for b, a in pairs):
                raise ValueError("a lowrank group lists factor pairs B (out x r), A (r x in): B_1, A_1, B_2, ...; got "
                                 f"shapes {[tuple(p.shape) for p in params[:4]]}")
            if int(group["exact_every"]) < 1 or not group["lazy_scale"] > 0:
                raise ValueError(f"exact_every must be >= 1 and lazy_scale > 0, got {group['exact_every']} and "
                                 f"{group['lazy_scale']}")
            param_group = group
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        refresh = None
        for group in self.param_groups:
            if not group.get("lowrank"):
                self._plain_step(group)
                continue
            exact = (group["updates"] + 1) % group["exact_every"] == 0
            self._factor_step(group, exact)
            group["updates"] += 1
            refresh = group["refresh"] if exact else refresh
        if refresh is not None:  # after every group stepped, as the script refreshes after optimizer.step()
            self.refresh_states(refresh)
        return loss

    def refresh_states(self, mode: str) -> None:
        """Step 4: zero the moments and the step count of the groups `mode` names."""
        kinds = {"all": (True, False), "lowrank": (True,), "regular": (False,), "none": ()}[mode]
        for group in self.param_groups:
            if bool(group.get("lowrank")) in kinds:
                for p in group["params"]:
                    self.state[p].update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))

    def _plain_step(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            update, step_size = adam_direction(self.state[p], p.grad, group)
            p.add_(update, alpha=-step_size)
            if group["weight_decay"] > 0.0:
                p.add_(p, alpha=-group["lr"] * group["weight_decay"])

    def _factor_step(self, group: dict[str, Any], exact: bool) -> None:
        params, wd = group["params"], group["weight_decay"]
        for B, A in zip(params[0::2], params[1::2], strict=True):
            if B.grad is None or A.grad is None:
                continue
            dB, lr = adam_direction(self.state[B], B.grad, group)
            dA, _ = adam_direction(self.state[A], A.grad, group)  # same step count, so the same step size
            if exact:
                new_B, new_A = loro_exact_update(full(B), full(A), full(dB), full(dA), lr)
                set_full_(B, new_B)
                set_full_(A, new_A)
                continue
            for p, d in ((B, dB), (A, dA)):  # M -= (lr·s)·dM, as written upstream (bitwise the same floats)
                p.sub_(d * (lr * group["lazy_scale"]))
                if wd > 0.0:
                    p.sub_(p * (lr * wd))
