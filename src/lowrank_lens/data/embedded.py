"""The embedded corpus: English text that every machine with Python has, so demos and tests run offline.

Two parts, written once to a cached jsonl (one {"text", "src"} object per document) that is then read
through the same local-file path as a user's own corpus:

1. Docstrings of the standard library, read with `ast` from the stdlib .py sources (files sorted by
   relative path; modules are never imported, so nothing runs). Test folders and site-packages are
   skipped: tests hold little prose and site-packages is not the stdlib. Docstrings shorter than
   `MIN_DOC_CHARS` ("Return self.") are dropped, exact duplicates are kept once.
2. The reST sources of the Python documentation when Debian's python3-doc is installed
   (`/usr/share/doc/python3*/html/_sources/**/*.txt`, about 11 MB), or any folder of reST/.txt files named
   by $LOWRANK_LENS_PYDOC_DIR. Each file is cut at blank lines into paragraphs, and consecutive
   paragraphs are grouped into documents of at most `REST_DOC_CHARS` characters, so a document is about
   one padded row (a whole page would be truncated to its first few hundred tokens).

The result depends only on the Python installation (and the doc folder), so it is deterministic for a
given Python; the cache key is a hash of the version and of the file listings.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import sysconfig
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from ..atomic import atomic_path
from ..hashing import stable_hash

ENV_PYDOC = "LOWRANK_LENS_PYDOC_DIR"
DEFAULT_PYDOC_GLOB = ("/usr/share/doc", "python3*/html/_sources")
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
MIN_DOC_CHARS = 40
REST_DOC_CHARS = 1500
FORMAT_VERSION = 1  # bump when the extraction rules change, so old caches are not reused


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[Path]:
    """The stdlib .py files, sorted by relative path (os.walk order is filesystem dependent)."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
        out += [Path(d) / f for f in files if f.endswith(".py")]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _version_key(p: Path) -> tuple:
    """Natural sort key so python3.12 ranks above python3.9."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p)))


def pydoc_dir() -> Path | None:
    """The folder of reST sources: $LOWRANK_LENS_PYDOC_DIR, else python3-doc's _sources, else None.

    With several python3.X-doc packages installed, the running Python's version wins, else the newest.
    """
    env = os.environ.get(ENV_PYDOC)
    if env:
        return Path(env) if Path(env).is_dir() else None
    root, pattern = DEFAULT_PYDOC_GLOB
    found = sorted({p.resolve() for p in Path(root).glob(pattern) if p.is_dir()}, key=_version_key)
    if not found:
        return None
    mine = f"python{sys.version_info.major}.{sys.version_info.minor}"
    exact = [p for p in found if any(part.startswith(mine) for part in p.parts)]
    return (exact or found)[-1]


def pydoc_files(root: Path | None) -> list[Path]:
    if root is None:
        return []
    return sorted((p for p in root.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def _docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings in source order (depth first), module first."""
    if isinstance(tree, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(tree):
        yield from _docstrings(child)


def _rest_documents(text: str) -> Iterator[str]:
    """Group blank-line separated paragraphs into documents of at most REST_DOC_CHARS characters."""
    chunk: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        if chunk and size + len(para) > REST_DOC_CHARS:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
        chunk.append(para)
        size += len(para) + 2
    if chunk:
        yield "\n\n".join(chunk)


def iter_documents(stdlib: Path, pydoc: Path | None) -> Iterator[tuple[str, str]]:
    """(source, text) pairs of the embedded corpus, deduplicated, in a fixed order."""
    seen: set[str] = set()

    def fresh(text: str) -> bool:
        key = stable_hash(text, 32)
        if len(text) < MIN_DOC_CHARS or key in seen:
            return False
        seen.add(key)
        return True

    for path in stdlib_files(stdlib):
        try:
            with warnings.catch_warnings():  # invalid escape sequences in old modules warn while parsing
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue  # a file this Python cannot parse has no docstrings for us
        rel = path.relative_to(stdlib).as_posix()
        for doc in _docstrings(tree):
            if fresh(doc):
                yield f"stdlib/{rel}", doc
    if pydoc is not None:
        for path in pydoc_files(pydoc):
            rel = path.relative_to(pydoc).as_posix()
            for doc in _rest_documents(path.read_text(encoding="utf-8", errors="replace")):
                if fresh(doc.strip()):
                    yield f"pydoc/{rel}", doc.strip()


def embedded_key(stdlib: Path, pydoc: Path | None) -> str:
    """Cheap cache key: Python version plus (relative path, size) listings of both inputs."""
    def listing(root: Path | None, files: list[Path]) -> list:
        return [] if root is None else [[p.relative_to(root).as_posix(), p.stat().st_size] for p in files]

    return stable_hash({
        "version": FORMAT_VERSION, "python": sys.version, "stdlib": str(stdlib),
        "stdlib_files": listing(stdlib, stdlib_files(stdlib)),
        "pydoc": str(pydoc), "pydoc_files": listing(pydoc, pydoc_files(pydoc)),
    })


def embedded_corpus(cache_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Path of the cached embedded-corpus jsonl, extracting it first if needed (atomic write)."""
    stdlib, pydoc = stdlib_dir(), pydoc_dir()
    dest = cache_dir / "corpora" / f"embedded-{embedded_key(stdlib, pydoc)}.jsonl"
    if dest.exists():
        return dest
    n = chars = 0
    with atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for src, text in iter_documents(stdlib, pydoc):
            f.write(json.dumps({"text": text, "src": src}, ensure_ascii=False) + "\n")
            n += 1
            chars += len(text)
    where = f"stdlib docstrings + {pydoc}" if pydoc else "stdlib docstrings only (python3-doc not found)"
    log(f"data: built the embedded corpus from {where}: {n} documents, {chars / 1e6:.1f} M characters")
    return dest
