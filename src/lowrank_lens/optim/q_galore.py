"""Q-GaLore's optimizer: GaLoreAdamW with an INT4 projector, an adaptive refresh interval and INT8 weights.

Restated from q_galore_torch (VITA-Group/Q-GaLore at 5bd2f1c, PyPI q-galore-torch 1.0): `q_galore_projector.py`
(projector quantisation, adaptive gap), `q_galore_adamw8bit.py` / `q_galore_adamw8bit_simulate.py` (the step, the
weights' stochastic rounding) and `utils/quantization.py` (INT8 weights). Per projected m x n weight W:

1. Refresh when the per-matrix counter (before its increment) is a multiple of the matrix's own gap T_W (at first
   `update_proj_gap`): GaLore's SVD basis (optim/projector.py), then the cosine similarity of its first vector (the
   first row of Q, right; the first column of P, left) with the previous refresh's is appended to a queue of the last
   `queue_size` values; when the queue is full and its mean is >= `cos_threshold`, T_W = int(T_W * `gamma_proj`).
   As upstream, the queue is not cleared, so a subspace that stays similar doubles T_W at every refresh, and the
   cosine is signed (an SVD sign flip reads as -1).
2. The basis is stored quantised: affine min-max quantisation to `proj_bits` (4) bits per group of `proj_group_size`
   (256) consecutive entries of its row-major flattening, round to nearest; codes in uint8 (one per byte, as
   upstream), scales and zero points in the gradient's dtype. Projection and projection back use the dequantised
   basis s·(q - z). The cosine of step 1 reads the float basis, as upstream.
3. Adam on the projected gradient, back-projection, α and decoupled weight decay: GaLoreAdamW's own step.
4. After the update the weight is quantised again to `weight_bits` (8) bits per group of `weight_group_size` (256)
   consecutive entries, with stochastic rounding: x = w / s, q = ceil(x) with probability x - floor(x), else
   floor(x); codes clamp(q + z, 0, 255); W = (codes - z)·s (round to nearest when `stochastic_round` is off).

CUDA-only parts of the official code and how they are handled here:

- INT8 weights (QGaLoreLinear's uint8 weight + W8Linear, tied to bitsandbytes' optimizer): *simulated*. W stays a
  float parameter holding the dequantised grid values (codes - z)·s after every update, which is what W8Linear's
  forward and backward use; scales and zero points of the last quantisation are kept in the state
  (`weight_scales`, `weight_zeros`). Real INT8 storage would hold W in 1 byte per entry instead of 2 (bf16) or 4;
  the footprint counts what this implementation holds. The initial weights are quantised by round to nearest
  (`quantize_weights_`), as prepare_model_for_int8_training does. The official `--simulation` mode keeps float
  weights too but quantises them again in every forward; this follows the real INT8 mode instead.
- bitsandbytes' 8-bit blockwise Adam (Optimizer2State, optim_bits 8, for every tensor of >= 4096 entries): not
  reproduced; the moments are GaLoreAdamW's, in the parameters' dtype (the footprint says what 8 bits would save).
- The stochastic-rounding noise: upstream draws torch.rand_like from the global generator; here each draw is from
  a generator seeded by (seed, step, matrix index), so every FSDP2 rank and every resumed run draws the same noise.

Under FSDP2 the requantisation gathers the whole weight (its groups span rows), so one process and N agree
bitwise; the projector state is replicated like GaLore's. State per projected parameter: GaLore's moments, step
and proj_right, plus basis_codes (uint8), basis_scales, basis_zeros, past_vector, weight_scales, weight_zeros
(tensors), proj_gap (int) and cos_history (a list of floats, once a second refresh happened).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from ..sharding import full, set_full_
from .galore_adamw import GaLoreAdamW
from .projector import is_right, needs_refresh, orthogonal_basis, project, project_back

# Keys of a projected group besides GaLore's, with run_pretrain.py's argparse defaults (`--proj_bits` ...).
Q_GALORE_DEFAULTS: dict[str, Any] = {"proj_bits": 4, "proj_group_size": 256, "cos_threshold": 0.4,
                                     "gamma_proj": 2.0, "queue_size": 5, "weight_bits": 8,
                                     "weight_group_size": 256, "stochastic_round": True, "seed": 0}


# ---- quantisation (pure torch; the formulas of q_galore_torch's _quantize / _quantize_stochastic_round) -------
def affine_params(rows: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (group): scale (max - min) / (2^bits - 1), at least 1e-5 / (2^bits - 1), and the zero point
    -round(min / scale) clamped to the code range. Both (groups, 1), in the rows' dtype."""
    top = 2 ** bits - 1
    hi, lo = rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True)
    scales = (hi - lo).clamp(min=1e-5) / top
    zeros = (-torch.round(lo / scales)).clamp_(0, top)
    return scales, zeros


def quantize(w: torch.Tensor, group_size: int, bits: int,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise affine quantisation of `w` (numel divisible by group_size) -> (codes uint8 (groups, g), scales,
    zeros). Without `noise`, round to nearest; with `noise` (uniform [0, 1), shape (groups, g), w's dtype), round
    up with probability equal to the fractional part of w / scale (stochastic rounding)."""
    rows = w.reshape(-1, group_size)
    scales, zeros = affine_params(rows, bits)
    scaled = rows / scales
    if noise is None:
        levels = torch.round(scaled)
    else:
        down = torch.floor(scaled)
        levels = torch.where(noise < scaled - down, torch.ceil(scaled), down)
    codes = torch.clamp(levels + zeros, 0, 2 ** bits - 1)
    return codes.to(torch.uint8), scales, zeros


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """scales·(codes - zeros) in the scales' dtype, reshaped to `shape`."""
    return (scales * (codes.to(scales.dtype) - zeros)).reshape(shape)


def draw_seed(seed: int, step: int, index: int) -> int:
    """Seed of the rounding noise of matrix `index` after update `step`: a function of these numbers only."""
    return ((seed * 1_000_003 + step) * 10_007 + index) % (2 ** 63)


def rounding_noise(like: torch.Tensor, group_size: int, seed: int) -> torch.Tensor:
    """Uniform [0, 1) noise of shape (numel / g, g) in like's dtype from a generator seeded with `seed`."""
    device = like.device if like.device.type != "meta" else torch.device("cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.rand((like.numel() // group_size, group_size), generator=gen, dtype=like.dtype, device=like.device)


class QGaLoreAdamW(GaLoreAdamW):
    """GaLoreAdamW whose projected groups keep an INT4 basis refreshed adaptively and INT8-grid weights.

    A projected group takes GaLore's keys and those of `Q_GALORE_DEFAULTS`; plain groups are GaLoreAdamW's.
    Call `quantize_weights_()` once before training to put the initial weights on their INT8 grid.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "rank" in param_group:
            param_group = {**Q_GALORE_DEFAULTS, **param_group}
            for key in ("proj_bits", "weight_bits"):
                if not 1 <= int(param_group[key]) <= 8:
                    raise ValueError(f"{key} must lie in [1, 8] (codes are stored in uint8), got {param_group[key]}")
            if int(param_group["queue_size"]) < 1 or float(param_group["gamma_proj"]) < 1.0:
                raise ValueError(f"queue_size must be >= 1 and gamma_proj >= 1, got {param_group['queue_size']} "
                                 f"and {param_group['gamma_proj']}")
            params = param_group["params"]
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            for p in params:
                basis = min(int(param_group["rank"]), *p.shape) * min(p.shape)
                if p.numel() % param_group["weight_group_size"] or basis % param_group["proj_group_size"]:
                    raise ValueError(f"a {tuple(p.shape)} weight ({p.numel()} entries) and its basis ({basis}) "
                                     f"must split into groups of {param_group['weight_group_size']} and "
                                     f"{param_group['proj_group_size']}")
            param_group["params"] = params
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Torch casts every state tensor of a floating parameter to its dtype; the basis codes (integers in
        [0, 2^bits - 1], exact in bf16 and fp32) are put back in uint8."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if "basis_codes" in state:
                state["basis_codes"] = state["basis_codes"].to(torch.uint8)

    @torch.no_grad()
    def quantize_weights_(self) -> None:
        """Round every projected weight to nearest on its INT8 grid (the initial quantisation)."""
        for group in self.param_groups:
            if "rank" in group:
                for p in group["params"]:
                    whole = full(p.detach())
                    codes, scales, zeros = quantize(whole, group["weight_group_size"], group["weight_bits"])
                    set_full_(p, dequantize(codes, scales, zeros, whole.shape).to(whole.dtype))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = super().step(closure)
        for group in self.param_groups:
            if "rank" not in group:
                continue
            for index, p in enumerate(group["params"]):
                if p.grad is not None:
                    self._requantize(p, self.state[p], group, index)
        return loss

    def _requantize(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any], index: int) -> None:
        """W <- its INT8-grid value after the update (step 4 of the module docstring); keeps scales and zeros."""
        whole = full(p.detach())
        size = group["weight_group_size"]
        noise = (rounding_noise(whole, size, draw_seed(group["seed"], state["step"], index))
                 if group["stochastic_round"] else None)
        codes, scales, zeros = quantize(whole, size, group["weight_bits"], noise)
        set_full_(p, dequantize(codes, scales, zeros, whole.shape).to(whole.dtype))
        state["weight_scales"], state["weight_zeros"] = scales, zeros

    # ---- the projector ----------------------------------------------------------------------------
    def _project(self, state: dict[str, Any], grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        right = is_right(grad.shape)
        state.setdefault("proj_gap", int(group["update_proj_gap"]))
        has_basis = "basis_codes" in state
        if needs_refresh(state["step"], state["proj_gap"], has_basis):
            previous = self._basis(state, grad.shape, group) if has_basis else None
            basis = orthogonal_basis(grad, group["rank"], right, previous)
            self._adapt_gap(state, basis[0] if right else basis[:, 0], group)
            codes, scales, zeros = quantize(basis, group["proj_group_size"], group["proj_bits"])
            state.update(basis_codes=codes, basis_scales=scales, basis_zeros=zeros)
            state["proj_right"] = torch.tensor(float(right), dtype=grad.dtype, device=grad.device)
        return project(grad, self._basis(state, grad.shape, group), right)

    @staticmethod
    def _adapt_gap(state: dict[str, Any], first: torch.Tensor, group: dict[str, Any]) -> None:
        """Step 1 of the module docstring: queue the cosine with the previous first vector, lengthen T_W."""
        if "past_vector" in state:
            history = state.setdefault("cos_history", [])
            size = int(group["queue_size"])
            if len(history) == size:
                history.pop(0)
            history.append(F.cosine_similarity(state["past_vector"], first, dim=0).item())
            if len(history) == size and sum(history) / size >= group["cos_threshold"]:
                state["proj_gap"] = int(state["proj_gap"] * group["gamma_proj"])
        state["past_vector"] = first.clone()

    @staticmethod
    def _basis(state: dict[str, Any], shape: torch.Size, group: dict[str, Any]) -> torch.Tensor:
        """The dequantised basis: r' x n (right) or m x r' (left), r' = min(rank, m, n)."""
        m, n = shape
        k = min(int(group["rank"]), m, n)
        return dequantize(state["basis_codes"], state["basis_scales"], state["basis_zeros"],
                          (k, n) if is_right(shape) else (m, k))

    def _direction(self, state: dict[str, Any], grad: torch.Tensor, low: torch.Tensor,
                   norm_low: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        back = project_back(norm_low, self._basis(state, grad.shape, group), is_right(grad.shape))
        return back.mul_(group["scale"])


def build(params: Iterable[dict[str, Any]], **kwargs: Any) -> QGaLoreAdamW:
    """QGaLoreAdamW over these groups, with the initial weights put on their INT8 grid."""
    opt = QGaLoreAdamW(params, **kwargs)
    opt.quantize_weights_()
    return opt
