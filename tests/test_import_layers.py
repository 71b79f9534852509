"""The import graph of the package (every import statement, module-level or inside a function): config is
the lowest layer and names no other module but errors; readers of run folders go through runfolder/, never
the training code; no group of sub-packages imports itself in a circle; the report imports nothing of the
study (the study computes the findings, the report renders them); and the findings are pure functions, which
import neither the training code, the study nor the report."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import lowrank_lens

PKG = Path(lowrank_lens.__file__).parent


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
    assert graph["lowrank_lens.config"] == {"lowrank_lens.typed_fields", "lowrank_lens.hashing"}
    assert graph["lowrank_lens.typed_fields"] == {"lowrank_lens.errors"}
    assert graph["lowrank_lens.hashing"] == set()
    assert not any(m.startswith("lowrank_lens.methods") for m in _reachable(graph, "lowrank_lens.config"))


READERS = ("lowrank_lens.analysis", "lowrank_lens.downstream", "lowrank_lens.imports", "lowrank_lens.report",
           "lowrank_lens.findings", "lowrank_lens.runfolder", "lowrank_lens.methods", "lowrank_lens.model")


def test_readers_of_run_folders_do_not_import_the_training_code():
    """Not directly, not through anything they import: only the CLI, the Python API and the study's stages train."""
    graph = import_graph()
    for name in graph:
        if name.startswith(READERS):
            reached = _reachable(graph, name) | graph[name]
            assert not [m for m in reached if m.startswith("lowrank_lens.train")], name
    importers = {name for name, deps in graph.items() if any(d.startswith("lowrank_lens.train") for d in deps)}
    assert {m for m in importers if not m.startswith("lowrank_lens.train")} <= {
        "lowrank_lens.cli", "lowrank_lens.api", "lowrank_lens.study.train_stage", "lowrank_lens.study.tune",
        "lowrank_lens.study.tasks"}


def test_the_training_package_has_no_lazy_attributes():
    source = (PKG / "train" / "__init__.py").read_text()
    assert "__getattr__" not in source


def _package(module: str) -> str:
    """A sub-package (study, report, ...), or a top-level module (cli, config, presets ...) itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PKG / parts[1]).is_dir()) else module


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of sub-packages that import one another in a circle (strongly connected, size >= 2)."""
    edges: dict[str, set[str]] = {}
    for a, deps in graph.items():
        for b in deps:
            if _package(a) != _package(b):
                edges.setdefault(_package(a), set()).add(_package(b))
    nodes = set(edges) | {b for bs in edges.values() for b in bs}
    reach = {n: _reachable(edges, n) for n in nodes}
    groups = {frozenset(m for m in nodes if m in reach[n] and n in reach[m]) | {n} for n in nodes}
    return sorted(sorted(g) for g in groups if len(g) > 1)


def test_no_import_cycle_between_sub_packages():
    assert package_cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    graph = {"lowrank_lens.study.a": {"lowrank_lens.report.b"}, "lowrank_lens.report.b": {"lowrank_lens.train.c"},
             "lowrank_lens.train.c": {"lowrank_lens.study.d"}, "lowrank_lens.errors": set()}
    assert package_cycles(graph) == [["report", "study", "train"]]


def test_the_report_renders_and_imports_nothing_of_the_study():
    """The study computes the findings and runs the report; the report only reads their files."""
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("lowrank_lens.report"):
            assert not [d for d in deps if d.startswith("lowrank_lens.study")], name


def test_the_findings_import_neither_training_study_nor_report():
    """findings/ computes over rows already read: nothing it imports, directly or not, trains, orchestrates a
    study or renders (the study's findings stage reads the files and writes the tables)."""
    graph = import_graph()
    findings = [name for name in graph if name.startswith("lowrank_lens.findings")]
    assert "lowrank_lens.findings.common" in findings
    forbidden = ("lowrank_lens.train", "lowrank_lens.study", "lowrank_lens.report")
    for name in findings:
        assert not [d for d in _reachable(graph, name) if d.startswith(forbidden)], name


def test_findings_study_and_report_share_each_helper():
    """`finite` and `final_rows` are defined once, in findings/common.py, and every other module imports them."""
    defined: dict[str, list[str]] = {}
    for path in PKG.rglob("*.py"):
        if path.relative_to(PKG).parts[0] not in ("findings", "study", "report"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in ("finite", "final_rows"):
                defined.setdefault(node.name.lstrip("_"), []).append(_module_name(path))
    assert defined == {"finite": ["lowrank_lens.findings.common"], "final_rows": ["lowrank_lens.findings.common"]}


OPTIONAL = ("lm_eval", "pyarrow", "wandb", "torch.utils.tensorboard", "torch.distributed.device_mesh",
            "torch.distributed.fsdp", "torch.distributed.tensor")
"""What a function may import: an optional dependency (the eval extra, parquet, the loggers), or FSDP2's modules,
which need torch >= 2.6 and a build with torch.distributed (DDP and one-process runs do without)."""


def function_level_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import inside a function that is not of an OPTIONAL module."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(fn):
                if isinstance(n, ast.ImportFrom):
                    names = ["." * n.level + (n.module or "")]
                elif isinstance(n, ast.Import):
                    names = [a.name for a in n.names]
                else:
                    continue
                found += [(n.lineno, m) for m in names if not (m + ".").startswith(tuple(o + "." for o in OPTIONAL))]
    return sorted(set(found))


def test_the_lazy_import_check_tells_optional_from_internal():
    source = ("def f():\n    from .x import y\n    import scipy\n    import lm_eval\n"
              "    from torch.distributed.fsdp import fully_shard\n")
    assert function_level_imports(source) == [(2, ".x"), (3, "scipy")]


def test_functions_import_only_optional_dependencies():
    """Every module imports the package and its required dependencies at module level, so the import graph
    is the whole dependency graph and a cycle shows at once; a function imports only an OPTIONAL module."""
    lazy = {str(p.relative_to(PKG)): found for p in sorted(PKG.rglob("*.py"))
            if (found := function_level_imports(p.read_text()))}
    assert not lazy, f"imports inside functions (move them to the module's top): {lazy}"


def test_the_study_modules_import_one_another_in_layers():
    """The study's modules import one another without a cycle, so each one imports on its own."""
    graph = import_graph()
    study = {name: {d for d in deps if d.startswith("lowrank_lens.study.")}
             for name, deps in graph.items() if name.startswith("lowrank_lens.study.")}
    graphlib.TopologicalSorter(study).prepare()  # CycleError names the modules of a cycle
