"""fopproxy's modules import each other without a cycle, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fopproxy"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """Every fopproxy module `tree` imports anywhere: top level, in functions, under TYPE_CHECKING."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from fopproxy.metrics import http` imports the submodule, not just the package.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            known = target
            while known and known not in modules:
                known = known.rpartition(".")[0]
            if known and known != name:
                found.add(known)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {
        module_name(p): imported(ast.parse(p.read_text()), module_name(p), p.name == "__init__.py", modules)
        for p in paths
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_sees_a_lazy_import_cycle() -> None:
    """A cycle closed only by a function-level import is still found."""
    modules = {"fopproxy", "fopproxy.a", "fopproxy.b"}
    a = ast.parse("from fopproxy import b\n")
    b = ast.parse("def f() -> None:\n    from fopproxy.a import g\n")
    graph = {
        "fopproxy.a": imported(a, "fopproxy.a", False, modules),
        "fopproxy.b": imported(b, "fopproxy.b", False, modules),
    }
    assert find_cycle(graph) == ["fopproxy.a", "fopproxy.b", "fopproxy.a"]


def test_fopproxy_has_no_import_cycle() -> None:
    """Every module can be read without the ones that import it (one wiring module, no circles)."""
    graph = import_graph()
    assert "fopproxy.cli" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
