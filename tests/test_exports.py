"""The public API is what __all__ says, and codecs stay sans-IO (docs/design.md §3.1)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import sluicegate

PACKAGE = Path(sluicegate.__file__).parent
FORBIDDEN_IN_CODECS = {"trio", "httpx", "httpcore", "anyio", "tenacity", "sqlite3", "psycopg"}


@pytest.mark.parametrize(
    "module",
    [
        "sluicegate",
        "sluicegate._gateway",
        "sluicegate.fake",
        "sluicegate.pricing",
        "sluicegate.errors",
        "sluicegate.config",
        "sluicegate.codecs.ids",
        "sluicegate.codecs.sse",
        "sluicegate.codecs.openai_responses",
        "sluicegate.store",
    ],
)
def test_all_is_sorted_and_every_name_exists(module: str) -> None:
    mod = importlib.import_module(module)
    names = mod.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(mod, name), f"{module}.{name}"


def test_the_documented_library_api_is_exported() -> None:
    for name in (
        "open_gateway",
        "aresponses",
        "responses",
        "Response",
        "StreamEvent",
        "Gateway",
        "SluicegateError",
    ):
        assert name in sluicegate.__all__


def _sluicegate_imports(path: Path) -> tuple[set[str], set[Path]]:
    """Top-level foreign modules a file imports, and the package files it imports."""
    tree = ast.parse(path.read_text())
    foreign: set[str] = set()
    local: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                foreign.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                foreign.add((node.module or "").split(".")[0])
                continue
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            target = base.joinpath(*(node.module or "").split(".")) if node.module else base
            for candidate in (target.with_suffix(".py"), target / "__init__.py"):
                if candidate.exists():
                    local.add(candidate)
            if not node.module:  # from . import x
                for alias in node.names:
                    candidate = base / f"{alias.name}.py"
                    if candidate.exists():
                        local.add(candidate)
    return foreign, local


def test_codecs_import_no_io_library_even_transitively() -> None:
    todo = sorted((PACKAGE / "codecs").glob("*.py"))
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        foreign, local = _sluicegate_imports(path)
        bad = foreign & FORBIDDEN_IN_CODECS
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"
        # Package __init__ files re-export the whole API; the check follows modules only.
        todo.extend(p for p in local if p.name != "__init__.py" or p.parent != PACKAGE)
    assert PACKAGE / "errors.py" in seen  # the walk really is transitive
