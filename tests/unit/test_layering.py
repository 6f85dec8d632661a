"""The package layout (docs/adr/0022-package-layout.md) holds: no import cycles, each
package imports only the packages below it, the runtime never imports tooling, and the
built-in plugins are the ``fedkafka_builtin`` package (never a top-level ``plugins``).

The import graph is read with ``ast`` (every ``import``, at module level or inside a
function); imports under ``if TYPE_CHECKING:`` never run, so they may form a cycle, but
only inside one package. Every module is also imported in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Import roots → their directory.
SOURCES = {"federation": ROOT / "federation",
           "fedkafka_builtin": ROOT / "plugins" / "fedkafka_builtin"}

RUNTIME = ("protocol", "core", "store", "security", "plugin", "clusters", "controller",
           "nameservice", "proxy", "exporter")
TOOLING = ("cli", "tooling")
_BASE = {"federation", "protocol", "core"}
#: Package → the packages its modules may import (besides itself). "federation" is the
#: root package (its __init__: the name and version); "builtin" is fedkafka_builtin.
MAY_IMPORT: dict[str, set[str]] = {
    "federation": set(),
    "protocol": {"federation"},
    "core": {"federation", "protocol"},
    "store": _BASE,
    "security": _BASE,
    "plugin": _BASE | {"store", "security"},
    "clusters": _BASE | {"store", "security", "plugin"},
    "controller": _BASE | {"store", "security", "plugin", "clusters"},
    "nameservice": _BASE,
    "proxy": _BASE | {"store", "security", "plugin", "clusters", "controller", "nameservice"},
    "exporter": _BASE | {"store", "security", "plugin", "clusters", "controller"},
    "builtin": _BASE | {"store", "security", "plugin"},
    "cli": {"federation", *RUNTIME, "builtin", "tooling"},
    "tooling": {"federation", *RUNTIME, "builtin"},  # benchmarks measure the backends
}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods: dict[str, tuple[Path, bool]] = {}
    for root, directory in SOURCES.items():
        for path in directory.rglob("*.py"):
            parts = [root, *path.relative_to(directory).with_suffix("").parts]
            is_pkg = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


MODULES = _modules()


def _package(module: str) -> str:
    """The layer a module belongs to (``federation.proxy.server`` → ``proxy``)."""
    if module.startswith("fedkafka_builtin"):
        return "builtin"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "federation"


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, type_only: bool = False
             ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``tree`` and whether it is type-only."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _type_checking(child):
            for node in child.body:
                yield from _imports(ast.Module(body=[node], type_ignores=[]), True)
            for node in child.orelse:
                yield from _imports(ast.Module(body=[node], type_ignores=[]), type_only)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, type_only
        yield from _imports(child, type_only)


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, dict[str, tuple[int, bool]]]:
    """module → {imported module: (line, type-only)}; a module's own packages left out
    (they are always initialised first)."""
    graph: dict[str, dict[str, tuple[int, bool]]] = {}
    for module, (path, is_pkg) in MODULES.items():
        package = module if is_pkg else module.rpartition(".")[0]
        edges: dict[str, tuple[int, bool]] = {}
        for node, type_only in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1]
                                    + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                           for a in node.names]
            for target in targets:
                found = _resolve(target)
                if found and found != module and not module.startswith(found + "."):
                    old = edges.get(found)
                    if old is None or (old[1] and not type_only):
                        edges[found] = (node.lineno, type_only)
        graph[module] = edges
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_seen() -> None:
    assert "federation.proxy.server" in MODULES and "fedkafka_builtin.acl" in MODULES
    assert {_package(m) for m in MODULES} == set(MAY_IMPORT)


def test_no_import_cycles() -> None:
    runtime = {m: {t for t, (_, type_only) in e.items() if not type_only}
               for m, e in GRAPH.items()}
    cycles = _cycles(runtime)
    assert not cycles, "import cycles (move the shared piece down, or pass a callable in):\n" + \
        "\n".join(" ↔ ".join(c) for c in cycles)


def test_type_only_cycles_stay_inside_one_package() -> None:
    everything = {m: set(e) for m, e in GRAPH.items()}
    crossing = [c for c in _cycles(everything) if len({_package(m) for m in c}) > 1]
    assert not crossing, f"cycles across packages through TYPE_CHECKING imports: {crossing}"


def test_each_package_imports_only_the_packages_below_it() -> None:
    bad = [f"{m}:{line} imports {t}{' (type-only)' if type_only else ''}"
           for m, edges in sorted(GRAPH.items()) for t, (line, type_only) in edges.items()
           if _package(t) != _package(m) and _package(t) not in MAY_IMPORT[_package(m)]]
    assert not bad, "layering (docs/adr/0022-package-layout.md):\n" + "\n".join(bad)


def test_runtime_never_imports_tooling() -> None:
    bad = [f"{m} → {t}" for m, edges in GRAPH.items() for t in edges
           if _package(m) in (*RUNTIME, "builtin") and _package(t) in TOOLING]
    assert not bad, bad


@pytest.mark.parametrize("directory", ["federation", "plugins", "tests", "scripts"])
def test_nothing_imports_a_top_level_plugins_package(directory: str) -> None:
    bad = []
    for path in (ROOT / directory).rglob("*.py"):
        for node, _ in _imports(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if not node.level else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names
                    if n == "plugins" or n.startswith("plugins.")]
    assert not bad, f"import fedkafka_builtin, not plugins: {bad}"


def test_pyproject_installs_every_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {m for m, (_, is_pkg) in MODULES.items() if is_pkg}
    assert set(config["packages"]) == packages
    assert config["package-dir"] == {"fedkafka_builtin": "plugins/fedkafka_builtin"}


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n")
    modules = sorted(m for m in MODULES if not m.endswith("__main__"))
    result = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
