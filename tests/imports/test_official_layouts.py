"""The official ReLoRA, CoLA and SLTrain scripts' checkpoint layouts (imports/layouts.py): folders the test
writes itself with the key names, orientations and side files those scripts save (their `save_pretrained`
of the wrapped LLaMA, `model_<step>/`, with `training_state.json`), imported into the matching plugin.

Each folder holds a model of ours written in the official names, so after the import every tensor must be
back exactly, and the dense view (or CoLA's factors) and the logits equal the original's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig

from lowrank_lens.imports import ImportOptions, import_series
from lowrank_lens.methods import get_method
from lowrank_lens.model import build_model
from lowrank_lens.presets import build_config
from lowrank_lens.runfolder.checkpoint import complete_checkpoints, read_meta
from lowrank_lens.runfolder.loading import load_checkpoint


def _trained_like(method: str):
    """A nano model of `method` whose every tensor is non-trivial (B is zero at init: perturb it)."""
    cfg = build_config("nano", method, [])
    plugin = get_method(method)(cfg.method_cfg, cfg)
    torch.manual_seed(0)
    model = plugin.prepare_model(build_model(cfg.model, seed=0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return cfg, plugin, model.eval()


def _official(method: str, state: dict[str, torch.Tensor], cfg) -> tuple[dict[str, torch.Tensor], dict]:
    """Our state dict in the official script's names, plus its side file {name: content}."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if method == "relora" and k.endswith((".lora_A", ".lora_B")):
            out[k + ".weight"] = v  # nn.Linear factors in the official ReLoRaLinear
        elif method == "cola" and k.endswith(".A"):
            out[k[:-2] + ".cola_a"] = v.T.contiguous()  # in x r
        elif method == "cola" and k.endswith(".B"):
            out[k[:-2] + ".cola_b"] = v.T.contiguous()  # r x out
        else:
            out[k] = v
    m = cfg.method_cfg
    if method in ("relora", "sltrain"):  # their old transformers saved the RoPE frequencies too
        for i in range(cfg.model.num_layers):
            out[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(cfg.model.hidden_size // 8)
    if method == "relora":
        side = {"relora_config.json": {"r": m.rank, "lora_alpha": m.alpha, "lora_dropout": 0.1,
                                       "keep_original_weights": True, "lora_only": False, "trainable_scaling": False}}
    elif method == "sltrain":
        side = {"splora_config.json": {"r": m.rank, "lora_alpha": m.alpha, "lora_dropout": 0.0, "sp_ratio": m.density,
                                       "trainable_scaling": False}}
    else:
        side = {}  # CoLA keeps rank and only_lr_act in its config.json
    return out, side


def _write(folder, method, cfg, tensors, side, tokenizer) -> None:
    folder.mkdir(parents=True)
    mc = cfg.model
    hf = LlamaConfig(vocab_size=mc.vocab_size, hidden_size=mc.hidden_size, intermediate_size=mc.intermediate_size,
                     num_hidden_layers=mc.num_layers, num_attention_heads=mc.num_heads,
                     max_position_embeddings=mc.max_seq_len, rms_norm_eps=mc.rms_norm_eps).to_dict()
    if method == "cola":
        hf.update(model_type="cola", rank=cfg.method_cfg.rank, only_lr_act=cfg.method_cfg.only_lr_act)
    (folder / "config.json").write_text(json.dumps(hf))
    for name, content in side.items():
        (folder / name).write_text(json.dumps(content))
    (folder / "training_state.json").write_text(json.dumps({"global_step": 700, "update_step": 100,
                                                            "tokens_seen": 12345}))
    if method == "relora":  # written by the older transformers of the ReLoRA script
        torch.save(tensors, folder / "pytorch_model.bin")
    else:
        save_file(tensors, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize("method", ["relora", "cola", "sltrain"])
def test_an_official_layout_imports_into_the_plugins_parameterization(method, tmp_path, tokenizer):
    cfg, plugin, model = _trained_like(method)
    tensors, side = _official(method, model.state_dict(), cfg)
    _write(tmp_path / "ckpts" / "model_100", method, cfg, tensors, side, tokenizer)

    run = import_series(str(tmp_path / "ckpts"), tmp_path / "run", ImportOptions(seq_len=32, rows=8))
    (step, ck), = complete_checkpoints(run)
    meta = read_meta(ck)
    assert step == 100 and meta["tokens"] == 12345 and meta["weights"].startswith("converted from model_100")
    loaded = load_checkpoint(ck)
    assert loaded.cfg.method == method and json.loads((run / "config.json").read_text())["imported"]["layout"] == method
    mine = loaded.model.state_dict()
    assert set(mine) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(mine[k], v), k
    dense, theirs = plugin.dense_weights(model), loaded.method.dense_weights(loaded.model)
    if dense is None:  # CoLA: no dense W; its factors are the object
        dense, theirs = plugin.factors(model), loaded.method.factors(loaded.model)
        assert dense and all(torch.equal(dense[n][f], theirs[n][f]) for n in dense for f in dense[n])
    else:
        assert dense.keys() == theirs.keys() and all(torch.equal(dense[n], theirs[n]) for n in dense)
    ids = torch.as_tensor(np.load(run / "val_tokens.npy")[:2]).clamp(min=0).long()
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)
