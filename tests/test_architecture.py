"""The package's import graph follows its layout: arrows point down.

Every ``import`` of a hermetic module, at any level (in a function, or
under ``if TYPE_CHECKING``), is an edge: the model (hermetic/core/) imports
nothing above it, no modules import each other in a circle, and the
platforms import neither the executor nor the command line.
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hermetic"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    found = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    # The compiled C core is a module too (hermetic._native, built by cffi).
    found["hermetic._native"] = PACKAGE / "_native"
    return found


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The hermetic modules ``name`` imports: ``from X import y`` names the
    module X.y when there is one, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in MODULES else source)
    return {m for m in found if m == "hermetic" or m.startswith("hermetic.")}


GRAPH = {
    name: _imports(name, path) - {name} for name, path in MODULES.items() if path.suffix == ".py"
}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_is_read():
    # The parse sees the package: the facade imports the platforms and the
    # model, the Linux backend its own modules and the C core.
    assert "hermetic.platforms" in GRAPH["hermetic.executor"]
    assert "hermetic.core.spec" in GRAPH["hermetic.executor"]
    assert "hermetic.platforms.linux.run" in GRAPH["hermetic.platforms.linux"]
    assert "hermetic._native" in GRAPH["hermetic.platforms.linux.memory"]
    assert len(GRAPH) > 50


def test_core_imports_only_core():
    above = {
        (name, dep)
        for name, deps in GRAPH.items()
        if _within(name, "hermetic.core")
        for dep in deps
        if not _within(dep, "hermetic.core") and dep != "hermetic._native"
    }
    assert above == set()


def test_core_imports_only_the_stdlib_and_cffi_besides():
    stdlib = set(sys.stdlib_module_names)
    outside = set()
    for name, path in MODULES.items():
        if not _within(name, "hermetic.core") or path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = {(node.module or "").split(".")[0]}
            else:
                continue
            outside |= {(name, t) for t in tops if t not in stdlib | {"hermetic", "cffi"}}
    assert outside == set()


def test_no_import_cycles():
    # Tarjan's strongly connected components: any with more than one
    # module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_platforms_import_neither_the_executor_nor_the_cli():
    upward = {
        (name, dep)
        for name, deps in GRAPH.items()
        if _within(name, "hermetic.platforms")
        for dep in deps
        if dep in ("hermetic", "hermetic.executor", "hermetic.__main__")
        or _within(dep, "hermetic.cli")
    }
    assert upward == set()


def test_the_command_lines_subcommands_stand_on_its_shared_modules():
    """hermetic.cli builds the parser from one module per subcommand
    (imported by name, so that a command line loads its own alone); those
    use the package's shared modules, and the arrows point that way only:
    no subcommand's module imports another's or the package itself, and no
    shared module imports a subcommand's."""
    from hermetic.cli import COMMANDS

    commands = {f"hermetic.cli.{module}" for _, module, _ in COMMANDS}
    assert commands <= set(GRAPH)
    shared = (
        {n for n in GRAPH if n.startswith("hermetic.cli.")} - commands - {"hermetic.cli.__main__"}
    )
    assert shared
    wrong = {
        (name, dep)
        for name in commands | shared
        for dep in GRAPH[name]
        if dep in commands or dep == "hermetic.cli"
    }
    assert wrong == set()
