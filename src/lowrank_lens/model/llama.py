"""LLaMA-style decoders from presets, on transformers' LlamaForCausalLM (docs/methods.md §1.1).

SwiGLU MLP, RMSNorm eps 1e-6, RoPE base 10000, no biases, untied embedding and LM head, every Linear and
Embedding initialised N(0, 0.02^2). Unlike the reference configs we set no pad_token_id: the reference's
-1 silently freezes embedding row 31999 (a real T5 token); pad positions are masked out of the loss here.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ..config import ModelConfig


def llama_config(cfg: ModelConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.rms_norm_eps,
        initializer_range=cfg.init_std,
        hidden_act="silu",
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        rope_theta=10000.0,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        use_cache=False,
    )


def build_model(cfg: ModelConfig, seed: int | None = None, device: str | torch.device = "cpu") -> LlamaForCausalLM:
    """Build the model with a reproducible init. `device='meta'` allocates nothing (for counting)."""
    hf_cfg = llama_config(cfg)
    if str(device) == "meta":
        with torch.device("meta"):
            return LlamaForCausalLM(hf_cfg)
    # Initialise on CPU from an explicit generator state so the weights depend only on `seed`,
    # not on the device or on whatever consumed the global RNG before.
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = LlamaForCausalLM(hf_cfg)
    return model.to(device)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
