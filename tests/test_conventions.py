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


def test_no_method_names_outside_their_plugins():
    names = [n for n in method_names() if n != "full-rank"]
    assert names, "no low-rank methods registered"
    pattern = re.compile(r"(?<![a-z])(" + "|".join(re.escape(n) for n in names) + r")(?![a-z])", re.I)
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ALLOWED or rel.name == "presets.py":
            continue
        for line, word in _code_words(ast.parse(path.read_text())):
            if pattern.search(word):
                offenders.append(f"{rel}:{line}: {word!r}")
    assert not offenders, "method names outside methods/: " + ", ".join(offenders)
