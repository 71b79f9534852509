"""docs/design.md convention 2: method names appear only in methods/, optim/ and presets.py.

Code (identifiers and non-docstring strings) is checked; prose in docstrings, field docstrings (bare string
statements) and comments may cite methods.
"""

import ast
import re
from pathlib import Path

import lowrank_lens
from lowrank_lens.methods import method_names

PKG = Path(lowrank_lens.__file__).parent
ALLOWED = ("methods", "optim")


def _code_words(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            out.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            out.append((node.lineno, node.attr))
    return out


def name_offences(names: list[str], words: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The code words that name a method. A one-word name (galore, lora) is found inside any string or
    identifier; a hyphenated name that is also an English phrase ('low-rank') only as a whole string (the
    way code would compare with it), so prose such as 'the low-rank methods' in a message is not flagged."""
    words_only = [n for n in names if "-" not in n]
    pattern = re.compile(r"(?<![a-z])(" + "|".join(re.escape(n) for n in words_only) + r")(?![a-z])", re.I) \
        if words_only else None
    phrases = {n.lower() for n in names if "-" in n}
    return [(line, w) for line, w in words
            if (pattern is not None and pattern.search(w)) or w.strip().lower() in phrases]


def test_the_name_check_tells_code_from_prose():
    words = [(1, "galore"), (2, "relora"), (3, "the low-rank methods"), (4, "low-rank"), (5, "GaLore rank")]
    assert name_offences(["galore", "low-rank"], words) == [(1, "galore"), (4, "low-rank"), (5, "GaLore rank")]


def test_no_method_names_outside_their_plugins():
    names = [n for n in method_names() if n != "full-rank"]
    assert names, "no low-rank methods registered"
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ALLOWED or rel.name == "presets.py":
            continue
        offenders += [f"{rel}:{line}: {word!r}"
                      for line, word in name_offences(names, _code_words(ast.parse(path.read_text())))]
    assert not offenders, "method names outside methods/: " + ", ".join(offenders)


MAX_LINES = 400


def test_no_module_is_over_the_size_limit():
    """docs/design.md conventions: a module holds one concept in at most 400 lines."""
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"
