"""c4: without the hub it fails at once with one actionable line; the real code path (train split
shuffled with the training seed, validation split with 42, streaming rows) runs on a local stand-in."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from datasets import load_dataset

from lowrank_lens.data import StreamingRows, build_data, corpus
from lowrank_lens.errors import LensError


def test_c4_offline_fails_fast_with_one_line(make_cfg):
    t0 = time.perf_counter()
    with pytest.raises(LensError, match="needs the Hugging Face hub") as e:
        build_data(make_cfg("c4"), 512)
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and "data.source=" in msg


@pytest.fixture
def fake_c4(tmp_path, docs, monkeypatch):
    """Stand in for load_dataset('allenai/c4', 'en', split=..., streaming=True) with local jsonl files."""
    files = {}
    for split, part in [("train", docs[:200]), ("validation", docs[200:])]:
        files[split] = tmp_path / f"c4-{split}.jsonl"
        files[split].write_text("".join(json.dumps({"text": d, "timestamp": "2019", "url": f"u{i}"}) + "\n"
                                        for i, d in enumerate(part)))
    calls = []

    def fake_load(path, name, split, streaming):
        calls.append((path, name, split, streaming))
        return load_dataset("json", data_files=str(files[split]), split="train", streaming=True)

    monkeypatch.setattr(corpus, "_hub_load_dataset", fake_load)
    return calls, docs


def test_c4_code_path_through_a_local_stand_in(fake_c4, make_cfg):
    calls, docs = fake_c4
    b = build_data(make_cfg("c4", val_tokens=40 * 32), 512, log=lambda s: None)
    assert ("allenai/c4", "en", "train", True) in calls and ("allenai/c4", "en", "validation", True) in calls
    assert isinstance(b.train, StreamingRows) and b.fingerprint["streaming"]
    assert b.val_rows.shape == (40, 32)
    # validation rows come from the validation split, in its seed-42 buffered-shuffle order
    val_order = [ex["text"] for ex in corpus._hub_load_dataset("allenai/c4", "en", split="validation",
                                                               streaming=True).shuffle(seed=42)]
    decoded = [b.tokenizer.decode([t for t in r if t >= 0], skip_special_tokens=True) for r in b.val_rows]
    assert all(d.startswith(t) for d, t in zip(val_order, decoded, strict=False))
    assert val_order != docs[200:240]  # the shuffle did reorder
    # training rows are the train split shuffled with data.shuffle_seed; fast-forward = walking
    walked = [b.train.rows(s, 8) for s in range(30)]  # 240 rows > 200 documents: a second epoch
    fresh = build_data(make_cfg("c4", val_tokens=40 * 32), 512, log=lambda s: None)
    np.testing.assert_array_equal(fresh.train.rows(29, 8), walked[29])
    first = b.tokenizer.decode([t for t in walked[0][0] if t >= 0], skip_special_tokens=True)
    assert any(d.startswith(first) for d in docs[:200])
