"""The embedded corpus: stdlib docstrings (via ast) plus reST doc sources, cached once as jsonl, then
read like any local file."""

from __future__ import annotations

import json
import sys

import pytest

from lowrank_lens.data import build_data, embedded
from lowrank_lens.data.embedded import _rest_documents, embedded_corpus, pydoc_dir

PAGE = """Tutorial
********

Python is an easy to learn, powerful programming language. It has efficient high-level data
structures and a simple but effective approach to object-oriented programming.

The Python interpreter and the extensive standard library are freely available in source or
binary form for all major platforms from the Python web site.
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build the embedded corpus once for this module, with a two-page fake python-doc folder."""
    root = tmp_path_factory.mktemp("emb")
    pydoc = root / "pydoc" / "tutorial"
    pydoc.mkdir(parents=True)
    (pydoc / "index.rst.txt").write_text(PAGE)
    (pydoc / "appetite.rst.txt").write_text(PAGE.replace("Tutorial", "Whetting Your Appetite") * 3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(embedded.ENV_PYDOC, str(root / "pydoc"))
        logs: list[str] = []
        path = embedded_corpus(root / "cache", log=logs.append)
        again = embedded_corpus(root / "cache", log=logs.append)
        yield root, path, again, logs


def test_embedded_corpus_holds_stdlib_docstrings_and_pydoc_pages(built):
    root, path, again, logs = built
    assert again == path and len(logs) == 1  # the second call found the cache
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    srcs = [r["src"] for r in rows]
    assert any(s.startswith("stdlib/") for s in srcs)
    assert {s for s in srcs if s.startswith("pydoc/")} == {"pydoc/tutorial/appetite.rst.txt",
                                                         "pydoc/tutorial/index.rst.txt"}
    assert srcs.index("stdlib/abc.py") < srcs.index("stdlib/json/__init__.py")  # sorted file order
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == len(texts) and min(map(len, texts)) >= embedded.MIN_DOC_CHARS
    assert not any("site-packages" in s for s in srcs)
    assert len(rows) > 3000


def test_embedded_source_builds_through_the_local_path(built, make_cfg, monkeypatch):
    root, path, _, _ = built
    monkeypatch.setenv(embedded.ENV_PYDOC, str(root / "pydoc"))
    cfg = make_cfg("embedded", cache_dir=str(root / "cache"), max_documents=400, val_fraction=0.1)
    b = build_data(cfg, 512, log=lambda s: None)
    assert b.fingerprint["corpus"]["corpus"] == "embedded" and b.train.num_rows > 300
    text = b.tokenizer.decode([t for t in b.train.data[0] if t >= 0], skip_special_tokens=True)
    assert len(text) > 10


def test_rest_paragraphs_are_grouped_into_bounded_documents():
    para = "word " * 98  # 490 characters: three fit in one document, a fourth does not
    docs = list(_rest_documents("\n\n".join([para] * 7)))
    assert len(docs) == 3 and all(len(d) <= embedded.REST_DOC_CHARS for d in docs)
    assert list(_rest_documents("x" * 4000)) == ["x" * 4000]  # an overlong paragraph stays whole


def test_pydoc_dir_prefers_the_running_python(tmp_path, monkeypatch):
    monkeypatch.delenv(embedded.ENV_PYDOC, raising=False)
    mine = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for name in ("python3.9-doc", f"{mine}-doc", "python3.99-doc"):
        (tmp_path / name / "html" / "_sources").mkdir(parents=True)
    monkeypatch.setattr(embedded, "DEFAULT_PYDOC_GLOB", (str(tmp_path), "python3*/html/_sources"))
    assert pydoc_dir() == (tmp_path / f"{mine}-doc" / "html" / "_sources").resolve()
    (tmp_path / f"{mine}-doc" / "html" / "_sources").rmdir()
    assert pydoc_dir() == (tmp_path / "python3.99-doc" / "html" / "_sources").resolve()
    monkeypatch.setattr(embedded, "DEFAULT_PYDOC_GLOB", (str(tmp_path / "none"), "python3*/html/_sources"))
    assert pydoc_dir() is None
