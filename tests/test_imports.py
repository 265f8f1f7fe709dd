"""The shape of the code: no import cycle among the modules of exo_core and the plugins, no module over
400 lines (STYLE.md: "split by concept before a file grows past ~400"), orchestration independent of the CLI.

The import graph is static (``ast``): the imports a module runs when it is imported, i.e. those at module
level, in class bodies and in module-level ``if``/``try`` blocks; imports inside functions run later and
those under ``if TYPE_CHECKING:`` never run, so neither can make importing a module fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def _source_roots() -> list[tuple[Path, Path]]:
    """(directory an import name is relative to, package directory) for exo_core and each plugin."""
    roots = [(ROOT, ROOT / "exo_core")]
    for plugin in sorted((ROOT / "plugins").iterdir()):
        roots.extend((plugin, pkg) for pkg in sorted(plugin.glob("exo_*")) if (pkg / "__init__.py").exists())
    return roots


def _modules(roots: list[tuple[Path, Path]]) -> dict[str, Path]:
    """Module name -> file, for every module of the given packages (package tests excluded)."""
    found: dict[str, Path] = {}
    for base, package in roots:
        for path in sorted(package.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            if "tests" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported (function bodies and TYPE_CHECKING excluded)."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try | ast.TryStar):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _import_time_statements(block)
        elif isinstance(node, ast.With | ast.For | ast.While | ast.ClassDef):
            yield from _import_time_statements(node.body)
            if isinstance(node, ast.For | ast.While):
                yield from _import_time_statements(node.orelse)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules among ``modules`` that importing ``name`` imports directly."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _import_time_statements(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # `from pkg import sub` imports the module pkg.sub; `from pkg import name` runs pkg only
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in out if m in modules and m != name}


def import_graph(roots: list[tuple[Path, Path]]) -> dict[str, set[str]]:
    modules = _modules(roots)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(sorted(c), graph) for c in components]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & set(component)):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - a component always has one


def test_no_import_cycle() -> None:
    graph = import_graph(_source_roots())
    assert "exo_core.cli" in graph and "exo_discovery_udp.plugin" in graph  # the walk found the code
    cycles = [" -> ".join(c) for c in find_cycles(graph)]
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_walk_sees_cycles_and_skips_what_does_not_run(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("try:\n    from . import c\nexcept ImportError:\n    pass\n")
    (pkg / "c.py").write_text("class C:\n    import pkg.a\n")
    (pkg / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
        "def f():\n    import pkg.a\n"
    )
    graph = import_graph([(tmp_path, pkg)])
    assert graph["pkg.d"] == set()
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_orchestration_does_not_know_the_command_line() -> None:
    """Launching a node lives with the CLI commands: orchestration takes settings objects, never an
    ``argparse.Namespace``, and imports nothing of the CLI, not even for type checking."""
    cli_side = ("argparse", "exo_core.cli", "exo_core.cliflags", "exo_core.commands", "exo_core.launch")
    offenders = []
    for path in sorted((ROOT / "exo_core" / "orchestration").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith(cli_side)]
    assert offenders == []


def _sizes() -> dict[str, int]:
    files = [p for _, package in _source_roots() for p in package.rglob("*.py") if "tests" not in p.parts]
    return {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in files}


def test_no_module_over_the_limit() -> None:
    sizes = _sizes()
    over = {path: n for path, n in sorted(sizes.items()) if n > MAX_LINES}
    assert over == {}, f"modules over {MAX_LINES} lines: split them by concept"
