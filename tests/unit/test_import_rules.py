"""Imports point one way: a small table of layering rules, checked on the source (AST, nothing imported).

Each rule in :data:`FORBIDDEN` says which packages a package's modules may not import; each package
in :data:`ACYCLIC` must have no import cycle among its modules. Every import counts, a function's
lazy import and a ``TYPE_CHECKING`` one included: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "secondreader"

#: (importer, imported): no module at or under ``importer`` may import ``imported`` or anything under it.
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("secondreader.training", "secondreader.audit"),
    ("secondreader.training", "secondreader.service"),
    ("secondreader.training", "secondreader.cli"),
    # the CLI is the top: nothing imports it (the service and the audit take their helpers from
    # config, dicom and model)
    *((f"secondreader.{p}", "secondreader.cli") for p in (
        "service", "audit", "model", "dicom", "outputs", "reports", "worklist", "store", "pipeline", "explain",
        "scoring", "preprocessing", "config", "stats", "vocabulary")),
    # the service is above the pipeline's layers, the audit and the worklist
    *((f"secondreader.{p}", "secondreader.service") for p in (
        "audit", "model", "dicom", "outputs", "reports", "worklist", "store", "pipeline", "explain", "scoring")),
    # the outputs are written from explicit values: the writer knows nothing of the pipeline (issue 31)
    ("secondreader.outputs", "secondreader.pipeline"),
    # models, DICOM handling and outputs know nothing of the audit, the worklist or the store
    *((f"secondreader.{p}", f"secondreader.{q}") for p in ("model", "dicom", "outputs", "explain", "scoring")
      for q in ("audit", "worklist", "store", "training")),
)

#: Packages whose modules must not import each other in a cycle.
ACYCLIC: tuple[str, ...] = tuple(f"secondreader.{p}" for p in (
    "training", "model", "dicom", "service", "outputs", "reports", "audit", "worklist"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[str]:
    """The secondreader modules ``path`` imports (``from . import x`` as ``package.x``: it may be a module)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    """Every secondreader module and the secondreader modules it imports."""
    paths = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in paths and m != name} for name, path in paths.items()}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


GRAPH = _graph()


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN)
def test_forbidden_imports(importer: str, imported: str) -> None:
    found = sorted(f"{m} imports {target}" for m, targets in GRAPH.items() if _under(m, importer)
                   for target in targets if _under(target, imported))
    assert not found, f"{importer} may not import {imported}:\n" + "\n".join(found)


def _cycles(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, set()) & nodes):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("package", ACYCLIC)
def test_no_import_cycles(package: str) -> None:
    # a package's __init__ is where its modules are found, not a module of the cycle
    modules = {m for m in GRAPH if _under(m, package) and not (SRC / Path(*m.split(".")) / "__init__.py").is_file()}
    cycles = _cycles(modules, GRAPH)
    assert not cycles, f"import cycles in {package}:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_rules_see_imports() -> None:
    """The checker itself: relative imports resolve, and a cycle is found."""
    assert "secondreader.training.common" in GRAPH["secondreader.training.train"]
    assert "secondreader.training.dense.data" in GRAPH["secondreader.training.dense.run"]
    assert _cycles({"a", "b", "c"}, {"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
