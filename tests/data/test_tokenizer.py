"""The trained BPE: deterministic, byte-level (no <unk>), the four special tokens first, and a content
hash that survives a save/load round trip (caches key on it)."""

from __future__ import annotations

from lowrank_lens.data.tokenizer import SPECIAL_TOKENS, adds_eos, tokenizer_hash, train_bpe, wrap_bpe


def test_bpe_training_is_deterministic(docs):
    assert train_bpe(docs, 512).to_str() == train_bpe(docs, 512).to_str()


def test_bpe_layout_and_round_trip(docs, tmp_path):
    raw = train_bpe(docs, 512)
    assert [raw.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    raw.save(str(tmp_path / "bpe.json"))
    tok = wrap_bpe(tmp_path / "bpe.json", seq_len=32)
    assert len(tok) == 512 and tok.eos_token_id == 2 and tok.pad_token_id == 3 and not adds_eos(tok)
    text = "Ünïcode ✓ and words never seen: zyzzyva"  # byte-level: anything encodes and decodes exactly
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == text
    again = wrap_bpe(tmp_path / "bpe.json", seq_len=32)
    assert tokenizer_hash(tok) == tokenizer_hash(again)
