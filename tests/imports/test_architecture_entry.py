"""A new readable architecture is one `Architecture` entry (issue 26 §5): a tiny OPT, which no entry in
model/architectures.py describes, imports, and its spectra read the right matrices, once an entry for it is
registered here, with no other change. OPT's blocks hold their MLP linears directly (fc1, fc2), not in an
`mlp` container, so the entry's `stored` names them."""

from __future__ import annotations

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from lowrank_lens.analysis.runner import analyze
from lowrank_lens.errors import LensError
from lowrank_lens.imports import ImportOptions, import_series
from lowrank_lens.model.architectures import Architecture, block_index, register

OPT = Architecture("opt", ("opt",), ("*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj",
                                     "*.self_attn.out_proj", "*.fc1", "*.fc2"),
                   "model.decoder.layers", ("self_attn", "fc1", "fc2"))


@pytest.fixture(scope="module")
def opt_series(tmp_path_factory, tokenizer):
    from series_util import write_series

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32))
    return write_series(tmp_path_factory.mktemp("opt") / "series", model, tokenizer)


def test_an_unknown_architecture_is_refused_until_its_entry_is_registered(opt_series, tmp_path):
    opts = ImportOptions(seq_len=32, rows=8)
    with pytest.raises(LensError, match="architecture 'opt' is not one lowrank-lens knows"):
        import_series(str(opt_series), tmp_path / "refused", opts)
    with register(OPT):
        run = import_series(str(opt_series), tmp_path / "runs" / "opt", opts)
        for view in ("dense", "stored"):
            out = tmp_path / f"analysis-{view}"
            outcome = analyze([run], ["spectra"], overrides=[f"spectra.view={view}"], out=out, plots=False)["spectra"]
            done = [r for r in outcome.results if not r.skipped]
            assert done, [r.skipped for r in outcome.results]
            names = done[-1].info["matrices"]
            assert any(n.endswith("fc1.weight") or n.endswith("fc1") for n in names), names
            assert any("self_attn.out_proj" in n for n in names), names
            assert len(names) == 2 * 6, names  # 2 blocks x (q, k, v, out, fc1, fc2)
            assert sorted(set(done[-1].arrays["layer"].tolist())) == [0, 1]
    assert block_index("model.decoder.layers.1.fc1.weight") == 1  # an unknown layout: the first number
