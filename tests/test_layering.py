"""Imports run one way: down the layers, never round in a circle.

The layers of ``sluicegate/``, bottom first (a module may import its own layer and those below)::

    data       errors, _types, pricing      what every layer shares
    codecs     codecs/                      sans-IO wire formats (test_exports: no I/O library)
    services   config, store/, fake/,       settings, the event store, the built-in provider,
               limits/                      the limits shared on Redis
    runtime    runtime/, net/               what actors pass each other; HTTP and media I/O
    actors     actors/                      one request's chain, and the router's state
    gateway    _gateway/                    the façade, its services, the request pipeline
    server     server/                      the HTTP face
    entry      the package, _cli, __main__  the public API and the command line

Above the gateway nothing reaches past it: the server and the entry points import the gateway
through its face (``sluicegate._gateway``, its ``__init__``), never its modules, and nothing of
``runtime/``, ``net/`` or ``actors/``. Imports are read with ``ast`` wherever they are (inside
functions and ``if TYPE_CHECKING:`` too: a type-only cycle is still a cycle of design).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sluicegate

ROOT = Path(sluicegate.__file__).parent.parent

#: Bottom first: layer -> the top-level names under ``sluicegate`` it holds ("" is the package's
#: own ``__init__``).
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("data", frozenset({"errors", "_types", "pricing"})),
    ("codecs", frozenset({"codecs"})),
    ("services", frozenset({"config", "store", "fake", "limits"})),
    ("runtime", frozenset({"runtime", "net"})),
    ("actors", frozenset({"actors"})),
    ("gateway", frozenset({"_gateway"})),
    ("server", frozenset({"server"})),
    ("entry", frozenset({"", "_cli", "__main__"})),
)
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}
LAYER = {name: layer for layer, names in LAYERS for name in names}
GATEWAY = RANK["_gateway"]
#: What lies between the services and the gateway: only the gateway may reach it from above.
BENEATH_THE_GATEWAY = frozenset({"runtime", "net", "actors"})


def _modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[tuple[str, int]]:
    """The modules of the same top-level package that ``name`` imports, with their lines."""
    top = name.split(".")[0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # ``from package import module`` imports the module; a name, the package.
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c``: the nearest module
                target = target.rpartition(".")[0]
            if target.split(".")[0] == top and target != name:
                found.add((target, node.lineno))
    return found


def _graph(package: str) -> tuple[dict[str, Path], dict[str, set[tuple[str, int]]]]:
    modules = _modules(package)
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def _place(module: str) -> str:
    """A module's top-level name under ``sluicegate`` ("" for the package itself)."""
    return module.split(".")[1] if "." in module else ""


def _rank(module: str) -> int:
    """Its layer's rank; a module of no layer counts as the lowest (see the first test)."""
    return RANK.get(_place(module), -1)


def _where(modules: dict[str, Path], module: str, line: int) -> str:
    return f"{modules[module].relative_to(ROOT)}:{line}"


def test_every_module_has_a_layer() -> None:
    modules, _ = _graph("sluicegate")
    unplaced = sorted({_place(m) for m in modules} - set(RANK))
    assert not unplaced, f"put these in a layer of LAYERS (tests/test_layering.py): {unplaced}"


def test_imports_only_go_down_the_layers() -> None:
    modules, graph = _graph("sluicegate")
    upward = [
        f"{_where(modules, source, line)}: {source} ({LAYER.get(_place(source))}) imports "
        f"{target} ({LAYER.get(_place(target))})"
        for source, targets in graph.items()
        for target, line in sorted(targets)
        if _rank(target) > _rank(source)
    ]
    assert not upward, "\n".join(upward)


def test_above_the_gateway_only_its_face_is_used() -> None:
    modules, graph = _graph("sluicegate")
    reached: list[str] = []
    for source, targets in graph.items():
        if _rank(source) <= GATEWAY:
            continue
        for target, line in sorted(targets):
            inside = _place(target) == "_gateway" and target != "sluicegate._gateway"
            if inside or _place(target) in BENEATH_THE_GATEWAY:
                reached.append(f"{_where(modules, source, line)}: {source} imports {target}")
    assert not reached, "import these from sluicegate._gateway instead:\n" + "\n".join(reached)


def _cycles(graph: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    edges = {name: sorted({target for target, _ in targets}) for name, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


@pytest.mark.parametrize("package", ["sluicegate", "benchmarks"])
def test_no_import_cycles(package: str) -> None:
    modules, graph = _graph(package)
    cycles = _cycles(graph)
    lines = []
    for cycle in cycles:
        members = set(cycle)
        lines.append(" <-> ".join(cycle))
        lines += [
            f"    {_where(modules, source, line)}: imports {target}"
            for source in cycle
            for target, line in sorted(graph[source])
            if target in members
        ]
    assert not cycles, "\n".join(lines)


def test_the_reader_sees_every_kind_of_import() -> None:
    """The checks above are only as good as the reading: relative and absolute imports, from
    a package, of a submodule, in a function and under TYPE_CHECKING are all edges."""
    _, graph = _graph("sluicegate")
    targets = {name: {target for target, _ in found} for name, found in graph.items()}
    assert "sluicegate.errors" in targets["sluicegate.codecs.sse"]  # absolute
    assert "sluicegate.store" in targets["sluicegate._gateway._facade"]  # a package's face
    assert "sluicegate.server._serve" in targets["sluicegate._cli"]  # inside a function
    assert "sluicegate._gateway._objects" in targets["sluicegate._gateway._facade"]  # TYPE_CHECKING
    assert "sluicegate.codecs._bridge" in targets["sluicegate.codecs._registry"]
