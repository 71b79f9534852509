import pytest
import torch

from lowrank_lens.model import build_model, count_parameters
from lowrank_lens.presets import MODEL_SHAPES, build_config

# docs/methods.md §1.1, counted at vocab 32000.
EXPECTED_M = {"60m": 58.07, "130m": 134.11, "350m": 367.97, "1b": 1339.08}


@pytest.mark.parametrize("scale", list(EXPECTED_M))
def test_reference_shapes_have_the_published_parameter_counts(scale):
    model = build_model(MODEL_SHAPES[scale], device="meta")
    assert round(count_parameters(model) / 1e6, 2) == EXPECTED_M[scale]
    cfg = model.config
    assert cfg.tie_word_embeddings is False and cfg.rms_norm_eps == 1e-6 and cfg.initializer_range == 0.02
    assert not any("bias" in n for n, _ in model.named_parameters())


def test_init_is_seeded_and_normal():
    shape = MODEL_SHAPES["nano"]
    a, b = build_model(shape, seed=3), build_model(shape, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    w = a.model.layers[0].mlp.up_proj.weight
    assert abs(w.std().item() - 0.02) < 0.002 and torch.all(a.model.norm.weight == 1)
    assert a.lm_head.weight.data_ptr() != a.model.embed_tokens.weight.data_ptr()


def test_reference_recipe():
    cfg = build_config("60m", "full-rank")
    assert (cfg.data.source, cfg.data.tokenizer, cfg.data.seq_len, cfg.data.mode) == ("c4", "t5-base", 256, "pad")
    assert (cfg.train.steps, cfg.train.total_batch_size, cfg.optim.warmup_steps) == (10_000, 512, 1000)
    assert cfg.optim.min_lr_ratio == 0.1 and cfg.train.precision == "bf16-pure"
