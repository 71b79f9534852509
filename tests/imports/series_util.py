"""Helpers of the import tests: tiny checkpoint series of three architectures, written the way other
people's trainers write them (`save_pretrained` folders checkpoint-N/ with their tokenizer), built locally.

Every model has hidden size 32 and 2 blocks, so activation similarity can compare them block by block; they
share one byte-level BPE tokenizer of 300 tokens trained here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

STEPS = (0, 10, 20)
MAKERS: dict[str, Callable[[int], torch.nn.Module]] = {
    "gpt2": lambda v: GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "gpt_neox": lambda v: GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2,
                                                           num_attention_heads=4, intermediate_size=64,
                                                           max_position_embeddings=128)),
    "llama": lambda v: LlamaForCausalLM(LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=2, num_attention_heads=4,
                                                    max_position_embeddings=128)),
}


def write_series(root: Path, model: torch.nn.Module, tokenizer, steps=STEPS, name="checkpoint-{}") -> Path:
    """save_pretrained folders of `model` at `steps`, its weights moved a little between them."""
    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        folder = root / name.format(step)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return root
