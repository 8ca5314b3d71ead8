"""The package's layers, enforced: every import inside ``src/vecorm`` (function-level ones
included) points down or sideways within its own layer, and no module imports itself back
through others (no cycles)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import vecorm

ROOT = Path(vecorm.__file__).parent

#: Lowest first. A module may import its own layer and the layers before it.
LAYERS: list[tuple[str, ...]] = [
    ("vecorm.errors", "vecorm.objects", "vecorm.engine", "vecorm.progress", "vecorm._moved"),
    ("vecorm.embedding.embedders",),
    ("vecorm.schema", "vecorm.types"),
    ("vecorm.embedding",),
    ("vecorm.search",),
    ("vecorm.scale",),
    ("vecorm.mixin",),
    ("vecorm.alembic", "vecorm.tools", "vecorm.ext"),
    ("vecorm.testing",),
    ("vecorm", "vecorm.embedders"),
]
#: Peers within one layer that must not import each other.
SEPARATE = [
    ("vecorm.alembic", "vecorm.tools", "vecorm.ext"),
    ("vecorm.embedding", "vecorm.search"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in ROOT.rglob("*.py")}


def imports_of(path: Path, name: str) -> Iterator[str]:
    """Every vecorm module ``path`` imports, at any depth in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("vecorm"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("vecorm"):
                continue
            known = modules()
            for alias in node.names:
                child = f"{base}.{alias.name}"
                yield child if child in known else base


def layer_of(name: str) -> int:
    best = (-1, -1)
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                best = max(best, (len(prefix), rank))
    assert best[0] >= 0, f"{name} is in no layer"
    return best[1]


def group_of(name: str) -> str | None:
    for pair in SEPARATE:
        for prefix in pair:
            if name == prefix or name.startswith(prefix + "."):
                if prefix == "vecorm.embedding" and name.startswith("vecorm.embedding.embedders"):
                    return None
                return prefix
    return None


GRAPH = {
    name: sorted({target for target in imports_of(path, name) if target != name})
    for name, path in modules().items()
}


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_point_down(name: str) -> None:
    upward = [target for target in GRAPH[name] if layer_of(target) > layer_of(name)]
    assert upward == [], f"{name} imports from a higher layer"
    mine = group_of(name)
    sideways = [
        target
        for target in GRAPH[name]
        if mine is not None
        and group_of(target) not in (None, mine)
        and layer_of(target) == layer_of(name)
    ]
    assert sideways == [], f"{name} imports a separate peer"


def test_no_import_cycles() -> None:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, "cycle: " + " -> ".join([*trail, name])
        state[name] = 1
        for target in GRAPH.get(name, []):
            if target.startswith("vecorm") and target in GRAPH and not _package_of(name, target):
                visit(target, [*trail, name])
        state[name] = 2
        order.append(name)

    for name in sorted(GRAPH):
        visit(name, [])
    assert len(order) == len(GRAPH)


def _package_of(name: str, target: str) -> bool:
    """A module importing its own package's ``__init__`` (a re-export) is not a cycle edge
    when the package only re-exports it."""
    return name.startswith(target + ".")


def test_the_top_level_is_the_public_api_and_the_layers() -> None:
    top = sorted(path.name for path in ROOT.iterdir() if not path.name.startswith("__"))
    assert top == [
        "_moved.py",
        "alembic",
        "data",
        "embedders",
        "embedding",
        "engine.py",
        "errors.py",
        "ext",
        "mixin.py",
        "objects.py",
        "progress.py",
        "py.typed",
        "scale",
        "schema",
        "search",
        "testing",
        "tools",
        "types.py",
    ]
