"""CoLA: every target linear becomes a low-rank bottleneck with a SiLU inside (docs/methods.md §4).

    y = B silu(A x)      A: r x in (in -> r), B: out x r (r -> out), no bias

There is no full-rank W anywhere in the 7 projections, and because of the SiLU no dense matrix reproduces a
layer, so `dense_weights` returns None and analyses read `factors()` instead. Init (docs/methods.md §4.2): A, B ~
N(0, sigma^2) with sigma = r^(-1/4) (in+out)^(-1/4), so an entry of the linear product B A has variance
r sigma^4 = 1/(in+out). The layer is a plain nn.Module (not an nn.Linear), so transformers' `_init_weights`,
which matches nn.Linear / nn.Embedding / *Norm classes, never overwrites this init.

`only_lr_act` (docs/methods.md §4.1): when True the MLP's own SwiGLU SiLU is dropped, out = down(gate(x) * up(x)),
leaving the SiLUs inside the factorised layers as the only non-linearities. The official configs keep the
outer SiLU at 60m/130m (`only_lr_act: false`) and drop it at 350m and above (the ColaConfig default, True).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .base import MethodPreset
from .factored import FactoredLinear, FactoredMethod
from .ranks import RankedConfig
from .reading import CheckpointReader, drop_rope_buffers, refuse_keys, side_json, tensor_stems


class CoLALinear(FactoredLinear):
    """y = B silu(A x); replaces a bias-free nn.Linear (in -> out) (docs/methods.md §4.1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> [..., out]
        return F.linear(F.silu(F.linear(x, self.A)), self.B)  # [..., r] in between


@dataclass
class CoLAConfig(RankedConfig):
    rank: int = 0
    """r; 0 = model.hidden_size // 4 (ColaConfig's own default), resolved from the final shape."""
    only_lr_act: bool = True
    """Drop the MLP's outer SwiGLU SiLU: down(gate(x) * up(x)). ColaConfig's default; the official 60m and
    130m configs set it False."""


class CoLAReader(CheckpointReader):
    """Reads the official CoLA model's checkpoints too (`lowrank-lens import`)."""

    @classmethod
    def official_layout(cls, folder: Path, keys: list[str]) -> bool:
        """The official CoLA model's save_pretrained: config.json with model_type 'cola', and per target
        t.cola_a (in x r) and t.cola_b (r x out), stored transposed against nn.Linear."""
        return side_json(folder, "config.json").get("model_type") == "cola" or any(k.endswith(".cola_a") for k in keys)

    @classmethod
    def from_official(cls, folder: Path, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """A = cola_a^T (r x in), B = cola_b^T (out x r); rank and only_lr_act from config.json. A bias on a
        factorised layer (attention_bias / mlp_bias) has no counterpart here and is refused."""
        state, hf = drop_rope_buffers(state), side_json(folder, "config.json")
        stems = tensor_stems(state, ".cola_a")
        refuse_keys({k: v for k, v in state.items() if k.rpartition(".")[0] in stems}, ".bias", CoLA.name,
                    "a bias on a factorised layer")
        rename, out = {"cola_a": "A", "cola_b": "B"}, {}
        for k, v in state.items():
            stem, _, leaf = k.rpartition(".")
            if leaf in rename:
                out[f"{stem}.{rename[leaf]}"] = v.T.contiguous()
            else:
                out[k] = v
        return out, {"rank": int(hf.get("rank") or state[f"{stems[0]}.cola_a"].shape[1]),
                     "only_lr_act": bool(hf.get("only_lr_act", True))}


_STUDY = {  # rank, only_lr_act, lr: docs/study.md §1.4 (60m/130m/350m) and docs/methods.md §4.3-4.4 (1b)
    "60m": (128, False, 6e-3),
    "130m": (256, False, 3e-3),
    "350m": (256, True, 3e-3),
    "1b": (512, True, 2e-3),
}


@register
class CoLA(FactoredMethod):
    """Low-rank bottleneck layers with an inner SiLU; AdamW with wd 0.01 on all parameters, clip 0.5."""

    name = "cola"
    description = ("Every target linear becomes a rank-r bottleneck B silu(A x) (no full-rank weight); AdamW "
                   "with wd 0.01 on all parameters, clip 0.5")
    colour = "#d62728"
    Config = CoLAConfig
    Reader = CoLAReader
    Layer = CoLALinear
    has_dense_view = False
    no_dense_reason = ("CoLA puts a SiLU between its factors (y = B silu(A x)), so no matrix W with y = W x "
                       "exists (docs/methods.md §4.1); use CoLA.factors() for A and B")

    memory_formula = "E + L·r·(11h + 3i) trainable (A: r x in, B: out x r per target); state 2 x that + `step`s."

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        # docs/methods.md §4.4 / §8 item 2: torch AdamW, wd 0.01 on every parameter (norms and embeddings
        # too), clip 0.5.
        optim: dict[str, float] = {"weight_decay": 0.01, "grad_clip": 0.5}
        if scale not in _STUDY:
            return MethodPreset(params={"rank": 0, "only_lr_act": False}, optim=optim,
                                notes=[f"CoLA {scale}: rank = hidden/4 (the 60m ratio 128/512), only_lr_act False "
                                       "(the outer SiLU kept, as in the official 60m/130m configs), AdamW wd 0.01 "
                                       "on all parameters, clip 0.5"])
        rank, only_lr_act, lr = _STUDY[scale]
        notes = [f"CoLA {scale}: r {rank}, only_lr_act {only_lr_act}, lr {lr:g}, AdamW wd 0.01 on all "
                 "parameters, clip 0.5 (docs/methods.md §4.4, docs/study.md §1.4)"]
        if scale == "60m":
            notes.append("the official CoLA 60m script warms up 2K steps (20%); we keep the shared recipe's 10% "
                         "warmup")
        if scale == "130m":
            notes.append("rank 256 = d/3 at 130m, as in the official config (docs/methods.md §4.3)")
        if scale == "1b":
            notes.append("1b is not in the study: official script values (docs/methods.md §4.4)")
        notes.append("the official configs set pad_token_id 0 (frozen embedding row 0); we set no pad id")
        return MethodPreset(params={"rank": rank, "only_lr_act": only_lr_act}, optim={**optim, "lr": lr},
                            notes=notes)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        cfg: CoLAConfig = self.cfg
        parents = {p: model.get_submodule(p) if p else model
                   for p in (name.rpartition(".")[0] for name in self.factorize(model))}
        if cfg.only_lr_act:
            # Only MLPs whose projections were factorised lose their activation (LlamaMLP calls self.act_fn).
            for parent in parents.values():
                if isinstance(getattr(parent, "act_fn", None), nn.Module):
                    parent.act_fn = nn.Identity()
        return model

    def dense_weights(self, model: nn.Module) -> None:
        return None

    def factors(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        """{layer name: {"A": r x in, "B": out x r}} (detached); the layer computes B silu(A x)."""
        return {m.layer_name: {"A": m.A.detach(), "B": m.B.detach()}
                for m in model.modules() if isinstance(m, CoLALinear)}
