"""t5-base has 32,100 entries for the reference's 32,000-row embedding: added sentinels beyond the model's
vocabulary are accepted and mapped to unk; any other overflow is an error."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lowrank_lens.data.rows import RowEncoder
from lowrank_lens.data.tokenizer import check_tokenizer
from lowrank_lens.errors import LensError


def _t5_like(base: int, sentinels: int) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, base)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": [f"<extra_id_{i}>" for i in range(sentinels)]})
    return fast


def test_added_sentinels_above_the_model_vocab_map_to_unk():
    tok = _t5_like(300, 10)
    assert len(tok) == 310
    unk = check_tokenizer(tok, "t5-like", 300)
    assert unk == 2
    enc = RowEncoder(tok, "pad", 8, vocab_limit=300, unk_id=unk)
    row = enc.pad_rows(["w5 <extra_id_3> w7"])[0]
    assert row.max() < 300 and list(row[:4]) == [5, 2, 7, 1] and np.all(row[4:] == -1)


def test_real_overflow_is_an_error():
    with pytest.raises(LensError, match="has 310 tokens but model.vocab_size is 250"):
        check_tokenizer(_t5_like(300, 10), "t5-like", 250)
