"""The package's shape holds: imports flow one way (``core`` <- ``backends`` <- ``services``,
``clients``, ``loadtest``, ``worker`` <- ``cli``), no two modules import each other even
indirectly, and Service A and Service B share only what lies beside them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mqctl"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module ``name`` is (or lies in): ``mqctl.core.errors.MQError`` -> ``mqctl.core.errors``."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every mqctl module ``module`` imports, wherever the import is (a function, TYPE_CHECKING)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(_owner(alias.name) for alias in node.names if alias.name.startswith("mqctl"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.startswith("mqctl"):
                found.update(_owner(f"{base}.{alias.name}") for alias in node.names)
    found.discard(module)
    found.discard(None)
    return {name for name in found if name is not None}


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in GRAPH[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    """No import cycle between mqctl's modules, TYPE_CHECKING and function-level imports included."""
    assert _cycles() == []


LAYERS = [
    # (modules under, may not import anything under)
    (
        "mqctl.core",
        ["mqctl.backends", "mqctl.services", "mqctl.clients", "mqctl.loadtest", "mqctl.worker", "mqctl.cli"],
    ),
    ("mqctl.backends", ["mqctl.services", "mqctl.clients", "mqctl.loadtest", "mqctl.worker", "mqctl.cli"]),
    ("mqctl.services", ["mqctl.clients", "mqctl.loadtest", "mqctl.worker", "mqctl.cli"]),
    ("mqctl.clients", ["mqctl.services", "mqctl.loadtest", "mqctl.worker", "mqctl.cli"]),
    ("mqctl.worker", ["mqctl.services", "mqctl.clients", "mqctl.loadtest", "mqctl.cli"]),
    ("mqctl.loadtest", ["mqctl.services", "mqctl.worker", "mqctl.cli"]),
    ("mqctl.services.ingest", ["mqctl.services.delivery"]),
    ("mqctl.services.delivery", ["mqctl.services.ingest"]),
]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize(("layer", "forbidden"), LAYERS, ids=[layer for layer, _ in LAYERS])
def test_imports_flow_one_way(layer: str, forbidden: list[str]) -> None:
    """Modules of a lower layer never import a higher one (nor Service A and B each other)."""
    wrong = sorted(
        f"{module} imports {imported}"
        for module, imported_set in GRAPH.items()
        if _under(module, layer)
        for imported in imported_set
        if any(_under(imported, prefix) for prefix in forbidden)
    )
    assert wrong == []


def test_the_graph_sees_imports() -> None:
    """The import graph is read right: a module known to import others is seen to."""
    assert "mqctl.core.errors" in GRAPH["mqctl.core.broker"]
    assert "mqctl.services.delivery.connection" in GRAPH["mqctl.services.delivery.pumps"]
