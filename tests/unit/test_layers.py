"""The modules' imports point one way: no package module imports, directly or through
others, a module that imports it back (type-only imports aside)."""

from __future__ import annotations

import ast
from pathlib import Path

import paceline

ROOT = Path(paceline.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, name: str) -> set[str]:
    """Package modules ``path`` imports when it runs (not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("paceline"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("paceline"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {m for m in runtime_imports(path, name) if m in modules and m != name}
    return edges


def test_no_module_imports_one_that_imports_it_back() -> None:
    edges = graph()
    # A package's __init__ re-exporting its own modules is not a way back up.
    for name, targets in edges.items():
        edges[name] = {t for t in targets if not t.startswith(name + ".")}
    cycles: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" → ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == [], "\n".join(cycles)


def test_the_named_pairs_no_longer_import_each_other() -> None:
    edges = graph()

    def reaches(a: str, b: str) -> bool:
        todo, seen = [a], set()
        while todo:
            node = todo.pop()
            for nxt in edges.get(node, ()):
                if nxt == b or nxt.startswith(b + "."):
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    assert not reaches("paceline.engine.run", "paceline.job")
    assert not reaches("paceline.engine.run", "paceline.report")
    assert not reaches("paceline.report", "paceline.engine.run")
    assert not reaches("paceline.limiter", "paceline.keys")
