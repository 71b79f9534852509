"""The import graph of the package (every import statement, module-level or inside a function): config is
the lowest layer and names no other module but errors; readers of run folders go through run_files, not
the training code; and no two sub-packages import each other, except the one recorded below."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import lowrank_lens

PKG = Path(lowrank_lens.__file__).parent
# study/ runs the report stage and report/ computes statistics and claims with study/'s modules; making the
# report a pure renderer of tables the study stage writes is recorded as open work (issue 12 item 14).
KNOWN_PACKAGE_CYCLES = {frozenset({"study", "report"})}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["lowrank_lens", *parts])


def import_graph() -> dict[str, set[str]]:
    """module -> the lowrank_lens modules it imports (a `from pkg import name` counts pkg.name when that is
    a module, else pkg)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.startswith("lowrank_lens")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("lowrank_lens"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    out.add(sub if sub in modules else target)
        graph[name] = out & set(modules)
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_config_is_the_lowest_layer():
    graph = import_graph()
    assert graph["lowrank_lens.config"] == {"lowrank_lens.errors"}
    assert not any(m.startswith("lowrank_lens.methods") for m in _reachable(graph, "lowrank_lens.config"))


def test_readers_of_run_folders_do_not_import_the_training_code():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(("lowrank_lens.analysis", "lowrank_lens.downstream", "lowrank_lens.report")):
            assert "lowrank_lens.train.run" not in deps, name


def test_no_new_import_cycle_between_sub_packages():
    graph = import_graph()

    def package(module: str) -> str:  # a sub-package, or a top-level module (cli, config, presets ...) itself
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else "(package)"

    edges = {(package(a), package(b)) for a, deps in graph.items() for b in deps if package(a) != package(b)}
    cycles = {frozenset({a, b}) for a, b in itertools.combinations(sorted({p for e in edges for p in e}), 2)
              if (a, b) in edges and (b, a) in edges}
    assert cycles <= KNOWN_PACKAGE_CYCLES, sorted(map(sorted, cycles - KNOWN_PACKAGE_CYCLES))


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "lowrank_lens.report" in graph["lowrank_lens.study.runner"]  # imported inside run_study
