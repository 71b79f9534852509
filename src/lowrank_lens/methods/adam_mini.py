"""Adam-mini: full-rank weights; AdamW with one second moment per block (an attention head, an output neuron,
a token, a norm) instead of one per weight (Zhang et al., ICLR 2025, arXiv 2406.16793; docs/methods.md §21).

The optimizer is `optim/adam_mini.py`. The partition is the official one (zyushun/Adam-mini 1.1.1, whose rules
match words in parameter names) as it falls on transformers' LlamaForCausalLM names, the names it lists for
Hugging Face models:

- `q_proj`, `k_proj`: one block per attention head (head_dim rows of h inputs; the official `dim`·`dim` /
  `n_heads` entries, with dim = hidden and n_heads = num_heads);
- `embed_tokens`, `lm_head`: one block per token (a row);
- `v_proj`, `o_proj` and the MLP's `gate_proj`, `up_proj`, `down_proj`: one block per output neuron (a row);
  `method.value_blocks=layer` makes `v_proj` one block, as the README advises for runs shorter than 10K-20K
  steps (`optimizer.wv_names = {}`, which its torchtitan Llama scripts set);
- the RMSNorm gains, which no rule names: one block per tensor (the official fallback).

The official code gives weight decay 0 to parameters whose names contain "norm", "ln" or "bias" (here the
RMSNorm gains); `method.norm_no_decay=True` does that, off by default so that optim.weight_decay reaches every
group as in every other method. The model is untouched, so the dense view is the weight itself.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig, OptimConfig, RunConfig
from ..errors import LensError
from ..optim.adam_mini import AdamMini
from . import register
from .base import BaseMethodConfig, Method, MethodPreset
from .shapes import Footprint, model_modules, model_parameters, param_bytes

VALUE_BLOCKS = ("neuron", "layer")

# Parameter name -> block rule of the official partition on LlamaForCausalLM names (module docstring); the first
# matching pattern wins. "value" is v_proj: "row" or "tensor" by method.value_blocks; "norm" is a "tensor" block.
_RULES = (("model.embed_tokens.weight", "row"), ("lm_head.weight", "row"), ("*.self_attn.q_proj.weight", "head"),
          ("*.self_attn.k_proj.weight", "head"), ("*.self_attn.v_proj.weight", "value"),
          ("*.self_attn.o_proj.weight", "row"), ("*.mlp.gate_proj.weight", "row"), ("*.mlp.up_proj.weight", "row"),
          ("*.mlp.down_proj.weight", "row"), ("*norm.weight", "norm"))
# Parameter groups in this order, those that hold a parameter: (blocks, a norm group).
_GROUPS = (("row", False), ("head", False), ("tensor", False), ("tensor", True))


def block_rule(name: str, value_blocks: str) -> tuple[str, bool]:
    """(blocks, is a norm) of the parameter called `name`: its group in _GROUPS."""
    for pattern, rule in _RULES:
        if fnmatch.fnmatchcase(name, pattern):
            if rule == "value":
                return ("row" if value_blocks == "neuron" else "tensor"), False
            return ("tensor", True) if rule == "norm" else (rule, False)
    raise LensError(f"adam-mini has no block rule for parameter {name!r}; it partitions LlamaForCausalLM's "
                    f"parameters (methods/adam_mini.py)")


def head_rows(model: ModelConfig) -> int:
    """Rows of a q/k projection per attention head: the head dimension."""
    return model.hidden_size // model.num_heads


@dataclass
class AdamMiniConfig(BaseMethodConfig):
    value_blocks: str = "neuron"
    """'neuron': one second moment per output neuron of v_proj (the official default); 'layer': one for the whole
    v_proj (the official README's advice for runs shorter than 10K-20K steps, `wv_names = {}`)."""
    norm_no_decay: bool = False
    """True: the RMSNorm gains get weight decay 0, as in the official code (names with 'norm', 'ln' or 'bias');
    False: every group decays with optim.weight_decay."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value_blocks not in VALUE_BLOCKS:
            raise LensError(f"method.value_blocks must be one of {', '.join(VALUE_BLOCKS)}, got {self.value_blocks!r}")


_OFFICIAL = {"value_blocks": "neuron", "norm_no_decay": False}
_README = "zyushun/Adam-mini @ 402aadf README"
# lr per scale and where it comes from: no C4 LLaMA script or released lr exists for these sizes.
_RECIPE_LR = (f"the recipe's AdamW lr (the full-rank preset), as the {_README} recommends AdamW's lr, betas, eps and "
              "wd; Stable-SPAM Table 2 (arXiv 2502.17055), whose Adam-mini row is the published number at these "
              "scales, did not release its lr")
_REFERENCE = {"60m": (1e-3, _RECIPE_LR), "130m": (1e-3, _RECIPE_LR), "350m": (1e-3, _RECIPE_LR),
              "1b": (1e-3, _RECIPE_LR)}
_SETTINGS = ("method.value_blocks neuron, method.norm_no_decay False (the official code's partition with its default "
             "per-neuron Value, as Stable-SPAM's utils/setup.py builds it, TianjinYellow/StableSPAM @ 6a66da1)")


@register
class AdamMiniMethod(Method):
    """Full-rank weights; AdamW whose second moment is one number per head, neuron, token or norm."""

    name = "adam-mini"
    description = ("Full-rank weights; AdamW with one second moment per block (attention head for q/k, output neuron "
                   "for v/o/MLP, token for embedding and LM head, whole tensor for norms) instead of one per weight")
    colour = "#843c39"
    Config = AdamMiniConfig
    memory_formula = ("P trainable, full-size gradients; state P first moments plus one second moment per block: "
                      "2V + L(3h + 2i) rows, 2LH heads and 2L + 1 norms (H heads), in the parameters' dtype; the "
                      "step counters are python ints.")

    @classmethod
    def preset(cls, scale: str) -> MethodPreset:
        optim = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
        if scale not in _REFERENCE:
            return MethodPreset(params=dict(_OFFICIAL), optim=optim, notes=[
                f"Adam-mini {scale}: the recipe's lr, betas (0.9, 0.999), eps 1e-8, wd 0, {_SETTINGS}"])
        lr, source = _REFERENCE[scale]
        return MethodPreset(params=dict(_OFFICIAL), optim={**optim, "lr": lr}, notes=[
            f"Adam-mini {scale}: lr {lr:g}, betas (0.9, 0.999), eps 1e-8, wd 0, {_SETTINGS}; lr: {source}; betas, "
            "eps: the package defaults setup.py keeps; wd: its scripts' 0",
            "the official torchtitan Llama 2 example (examples/llama/train.py, train_configs/llama2_scaling_law.toml) "
            "uses another recipe: lr 2e-4 at 1B (6e-4 noted), betas (0.9, 0.95), wd 0.1 without decay on norms, "
            "sequence 512, one block for all of v_proj (--set method.value_blocks=layer method.norm_no_decay=True)"])

    @classmethod
    def footprint(cls, run: RunConfig) -> Footprint:
        """One group per block rule in _GROUPS order: exp_avg per entry, exp_avg_sq per block."""
        value_blocks, rows_per_head = run.method_cfg.value_blocks, head_rows(run.model)
        state: dict[tuple[str, bool], dict[str, int]] = {}
        for name, (kind, shape) in model_modules(run.model).items():
            if kind == "other":
                continue
            blocks, norm = block_rule(f"{name}.weight", value_blocks)
            count = {"row": shape[0], "head": shape[0] // rows_per_head, "tensor": 1}[blocks]
            group = state.setdefault((blocks, norm), {"exp_avg": 0, "exp_avg_sq": 0})
            group["exp_avg"] += math.prod(shape)
            group["exp_avg_sq"] += count
        groups = tuple(state[key] for key in _GROUPS if key in state)
        elements = sum(g["exp_avg"] + g["exp_avg_sq"] for g in groups)
        return Footprint(trainable=tuple(model_parameters(run.model).values()), state=groups,
                         state_bytes=param_bytes(run) * elements)

    def build_optimizer(self, model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        cfg: AdamMiniConfig = self.cfg
        split: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                split.setdefault(block_rule(name, cfg.value_blocks), []).append(p)
        groups = []
        for (blocks, norm), params in ((key, split[key]) for key in _GROUPS if key in split):
            group = {"params": params, "blocks": blocks, "head_rows": head_rows(self.run.model)}
            if norm and cfg.norm_no_decay:
                group["weight_decay"] = 0.0
            groups.append(group)
        return AdamMini(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                        weight_decay=optim.weight_decay)
