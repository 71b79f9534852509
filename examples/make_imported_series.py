"""Write two small checkpoint series the way other trainers write them, to try `lowrank-lens import` and
examples/imported.toml offline: a GPT-2 and a GPT-NeoX (hidden 64, 2 blocks), each as checkpoint-N/ folders
of save_pretrained, trained for a few hundred steps on the embedded corpus with one shared BPE tokenizer.

    python examples/make_imported_series.py examples/series      # then: lowrank-lens study examples/imported.toml
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from lowrank_lens.data import build_data
from lowrank_lens.presets import build_config

STEPS, SAVE_EVERY, BATCH = 300, 100, 16


def main(out: Path) -> None:
    cfg = build_config("nano", "full-rank", [])  # the embedded corpus and its 512-token BPE
    data = build_data(cfg.data, cfg.model.vocab_size)
    makers = {
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128)),
        "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                                                             num_attention_heads=4, intermediate_size=256,
                                                             max_position_embeddings=128)),
    }
    from lowrank_lens.data import to_model_inputs

    for name, make in makers.items():
        torch.manual_seed(0)
        model = make()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for step in range(STEPS + 1):
            if step % SAVE_EVERY == 0:
                folder = out / name / f"checkpoint-{step}"
                model.save_pretrained(folder)
                data.tokenizer.save_pretrained(folder)
                print(f"{folder}")
            if step == STEPS:
                break
            ids, labels = to_model_inputs(data.train.rows(step, BATCH), data.pad_id)
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/series"))
