"""build_data on local corpora: formats, the held-out split, caches, multi-process handshake, errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lowrank_lens.data import MaterializedRows, StreamingRows, build_data, default_cache_dir
from lowrank_lens.data.corpus import is_val_document, open_corpus
from lowrank_lens.errors import LensError


def test_materialized_bundle_and_train_val_disjointness(jsonl_corpus, docs, make_cfg):
    cfg = make_cfg(jsonl_corpus)
    b = build_data(cfg, 512, log=lambda s: None)
    assert isinstance(b.train, MaterializedRows) and b.pad_id == b.tokenizer.pad_token_id
    assert b.val_rows.dtype == np.int32 and b.val_rows.shape[1] == 32
    val_docs = {d for d in docs if is_val_document(d, 0.2)}
    train_docs = set(docs) - val_docs
    assert 20 < len(val_docs) < 100
    assert b.train.num_rows == len(train_docs) and len(b.val_rows) == min(64, len(val_docs))
    # pad mode: each row decodes to the start of one document, which belongs to its split only
    decode = lambda row: b.tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True)  # noqa: E731
    for row in b.val_rows:
        text = decode(row)
        assert any(d.startswith(text) for d in val_docs) and not any(d.startswith(text) for d in train_docs)
    train_texts = {decode(r) for r in b.train.data}
    assert all(not any(d.startswith(t) for d in val_docs) for t in train_texts)
    json.dumps(b.fingerprint)  # provenance must be JSON-serialisable
    assert b.fingerprint["train_rows"] == b.train.num_rows and b.fingerprint["tokenizer"] == "bpe-512"


def test_split_is_stable_and_streaming_sees_the_same_documents(jsonl_corpus, docs, make_cfg, tmp_path):
    corpus = open_corpus(make_cfg(jsonl_corpus), tmp_path / "c")
    assert list(corpus.texts("train")) == [d for d in docs if not is_val_document(d, 0.2)]
    assert list(corpus.texts("val")) == [d for d in docs if is_val_document(d, 0.2)]
    capped = open_corpus(make_cfg(jsonl_corpus, max_documents=50), tmp_path / "c")
    assert list(capped.texts("train")) == [d for d in docs[:50] if not is_val_document(d, 0.2)]


def test_second_build_reuses_tokenizer_and_rows(jsonl_corpus, make_cfg):
    cfg = make_cfg(jsonl_corpus)
    lines: list[str] = []
    first = build_data(cfg, 512, log=lines.append)
    assert any("trained" in s for s in lines) and any("tokenized" in s for s in lines)
    tok_file = default_cache_dir(cfg) / "tokenizers"
    mtimes = {p: p.stat().st_mtime_ns for p in tok_file.iterdir()}
    lines.clear()
    t0 = time.perf_counter()
    second = build_data(cfg, 512, log=lines.append)
    assert time.perf_counter() - t0 < 2.0
    assert not any("trained" in s or "tokenized" in s for s in lines), lines
    assert {p: p.stat().st_mtime_ns for p in tok_file.iterdir()} == mtimes
    np.testing.assert_array_equal(first.val_rows, second.val_rows)
    np.testing.assert_array_equal(first.train.rows(3, 16), second.train.rows(3, 16))
    assert first.fingerprint == second.fingerprint


def test_non_main_rank_waits_at_the_barrier_then_reads(jsonl_corpus, make_cfg):
    cfg = make_cfg(jsonl_corpus, mode="packed")
    events: list[str] = []
    main = build_data(cfg, 512, is_main=True, barrier=lambda: events.append("barrier"), log=events.append)
    assert events[-1] == "barrier"  # the main rank builds, then releases the others
    events.clear()
    other = build_data(cfg, 512, is_main=False, barrier=lambda: events.append("barrier"), log=events.append)
    assert events[0] == "barrier" and not any("tokenized" in s for s in events)
    np.testing.assert_array_equal(main.train.rows(0, 8), np.concatenate(
        [other.train.rows(0, 8, rank=0, world=2), other.train.rows(0, 8, rank=1, world=2)]))
    assert (main.train.rows(0, 8) >= 0).all() and (main.val_rows >= 0).all()  # packed: no mask


def test_txt_jsonl_parquet_and_folder_read_through_one_path(tmp_path, docs, make_cfg):
    docs = docs[:60]
    (tmp_path / "c.txt").write_text("\n\n".join(docs) + "\n")  # one document per paragraph block
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("\n\n".join(docs[:30]))
    pq.write_table(pa.table({"text": docs[30:]}), folder / "b.parquet")
    (folder / "notes.md").write_text("ignored")
    cache = tmp_path / "cache"
    expected = [d for d in docs if not is_val_document(d, 0.2)]
    for source, field in [("c.txt", "text"), ("c.jsonl", "body"), ("c.parquet", "text"), ("folder", "text")]:
        corpus = open_corpus(make_cfg(tmp_path / source, text_field=field), cache)
        assert list(corpus.texts("train")) == expected, source


def test_local_streaming_source(jsonl_corpus, docs, make_cfg):
    b = build_data(make_cfg(jsonl_corpus, streaming=True), 512, log=lambda s: None)
    assert isinstance(b.train, StreamingRows) and b.train.num_rows is None
    batches = [b.train.rows(s, 16) for s in range(25)]  # > 1 epoch of the ~240 training documents
    fresh = build_data(make_cfg(jsonl_corpus, streaming=True), 512, log=lambda s: None)
    np.testing.assert_array_equal(fresh.train.rows(20, 16), batches[20])
    materialized = build_data(make_cfg(jsonl_corpus), 512, log=lambda s: None)
    np.testing.assert_array_equal(b.val_rows, materialized.val_rows)  # same held-out rows either way
    capped = build_data(make_cfg(jsonl_corpus, streaming=True, max_documents=50), 512, log=lambda s: None)
    first50 = [d for d in docs[:50] if not is_val_document(d, 0.2)]
    rows = np.concatenate([capped.train.rows(s, 8) for s in range(10)])  # 80 rows: two epochs of ~40
    starts = {capped.tokenizer.decode([t for t in r if t >= 0][:4]) for r in rows}
    assert all(any(d.startswith(s) for d in first50) for s in starts)


def test_missing_path_and_bad_inputs_are_one_line_errors(tmp_path, make_cfg, jsonl_corpus):
    released = []
    with pytest.raises(LensError, match="does not exist") as e:
        build_data(make_cfg(tmp_path / "nope.jsonl"), 512, barrier=lambda: released.append(1))
    assert "\n" not in str(e.value) and "nope.jsonl" in str(e.value)
    assert released == [1]  # a failing main rank still releases the others, which then fail the same way
    (tmp_path / "empty").mkdir()
    with pytest.raises(LensError, match="no .txt/.jsonl"):
        build_data(make_cfg(tmp_path / "empty"), 512)
    with pytest.raises(LensError, match="no column 'body'"):
        build_data(make_cfg(jsonl_corpus, text_field="body"), 512)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(LensError, match="bad.jsonl' failed: ArrowInvalid"):
        build_data(make_cfg(bad), 512)


def test_vocab_too_large_names_both_numbers(jsonl_corpus, make_cfg, tmp_path):
    b = build_data(make_cfg(jsonl_corpus), 512, log=lambda s: None)
    b.tokenizer.save_pretrained(tmp_path / "tok")  # a local HF tokenizer folder of 512 tokens
    with pytest.raises(LensError, match=r"512 tokens but model.vocab_size is 300.*vocab_size=512"):
        build_data(make_cfg(jsonl_corpus, tokenizer=str(tmp_path / "tok")), 300)
    ok = build_data(make_cfg(jsonl_corpus, tokenizer=str(tmp_path / "tok")), 512, log=lambda s: None)
    np.testing.assert_array_equal(ok.val_rows, b.val_rows)  # the reloaded tokenizer gives the same rows
    with pytest.raises(LensError, match="vocab_size >= 260"):
        build_data(make_cfg(jsonl_corpus), 100)


def test_unknown_hub_tokenizer_offline_is_a_lens_error(jsonl_corpus, make_cfg):
    with pytest.raises(LensError, match="could not be loaded") as e:
        build_data(make_cfg(jsonl_corpus, tokenizer="t5-base"), 32100)
    assert "\n" not in str(e.value)


def test_no_validation_documents_is_a_lens_error(tmp_path, docs, make_cfg):
    path = tmp_path / "few.jsonl"
    train_only = [d for d in docs if not is_val_document(d, 0.01)][:5]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in train_only))
    with pytest.raises(LensError, match="no validation rows"):
        build_data(make_cfg(path, val_fraction=0.01), 512)
