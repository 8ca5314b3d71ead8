"""Old module paths of vecorm 0.1 (``vecorm.query``, ``vecorm.bm25`` ...), importable for one
more release: each resolves to its module in the layered packages, with a
``DeprecationWarning`` naming the new path.

A meta-path finder rather than a file per old name keeps the package root to the public API.
A module that was split (``vecorm.query`` into :mod:`vecorm.search.vector` and
:mod:`vecorm.search.settings`) comes back as one module holding the public names of both.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

#: ``old module -> the new module(s) its names live in``.
MOVED: dict[str, tuple[str, ...]] = {
    "vecorm.config": ("vecorm.schema.config",),
    "vecorm.indexes": ("vecorm.schema.indexes",),
    "vecorm.drivers": ("vecorm.schema.drivers",),
    "vecorm.lexical": ("vecorm.schema.generated",),
    "vecorm.sqlmodel": ("vecorm.schema.sqlmodel",),
    "vecorm.query": ("vecorm.search.vector", "vecorm.search.settings"),
    "vecorm.textsearch": ("vecorm.search.text", "vecorm.search.tsquery"),
    "vecorm.bm25": ("vecorm.search.bm25",),
    "vecorm.hybrid": ("vecorm.search.hybrid",),
    "vecorm.evaluation": ("vecorm.tools.evaluation",),
    "vecorm.events": ("vecorm.embedding.events",),
    "vecorm.backfill": ("vecorm.embedding.backfill",),
    "vecorm.reembed": ("vecorm.embedding.reembed",),
    "vecorm.adopt": ("vecorm.embedding.adopt",),
    "vecorm.source": ("vecorm.embedding.source",),
    "vecorm.partitioning": ("vecorm.scale.partitioning",),
    "vecorm.citus": ("vecorm.scale.citus",),
    "vecorm.routing": ("vecorm.scale.routing",),
    "vecorm.index_build": ("vecorm.scale.index_build",),
    "vecorm.cli": ("vecorm.tools.cli",),
    "vecorm.clitools": ("vecorm.tools.clitools",),
    "vecorm.demo": ("vecorm.tools.demo",),
    "vecorm.doctor": ("vecorm.tools.doctor",),
    "vecorm.bench": ("vecorm.tools.bench",),
    "vecorm.scaffold": ("vecorm.tools.scaffold",),
    "vecorm.embedded": ("vecorm.engine", "vecorm.tools.embedded"),
    "vecorm.embedders.base": ("vecorm.embedding.embedders.base",),
    "vecorm.embedders.hashing": ("vecorm.embedding.embedders.hashing",),
    "vecorm.embedders.local": ("vecorm.embedding.embedders.local",),
    "vecorm.embedders.openai": ("vecorm.embedding.embedders.openai",),
    "vecorm.embedders.query": ("vecorm.embedding.embedders.query",),
}


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, targets: Sequence[str]) -> None:
        self.targets = tuple(targets)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(
            f"{spec.name} moved to {' and '.join(self.targets)}; the old path goes away in "
            "the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        if len(self.targets) == 1:
            return importlib.import_module(self.targets[0])
        combined = types.ModuleType(spec.name, f"vecorm 0.1's {spec.name}")
        for target in reversed(self.targets):
            module = importlib.import_module(target)
            combined.__dict__.update(
                (name, value) for name, value in vars(module).items() if not name.startswith("__")
            )
        return combined

    def exec_module(self, module: types.ModuleType) -> None:
        """The module is complete when created."""


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        targets = MOVED.get(fullname)
        if targets is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(targets))


class _Package(types.ModuleType):
    """The ``vecorm`` package, whose public functions an old path cannot replace.

    Importing a submodule sets it as an attribute of its package, so ``import
    vecorm.backfill`` (the old path) would turn ``vecorm.backfill``, the function, into the
    module for the whole process. The package keeps the function; the old module is still
    in ``sys.modules`` for ``from vecorm.backfill import ...``.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and f"{self.__name__}.{name}" in MOVED:
            current = self.__dict__.get(name)
            if current is not None and not isinstance(current, types.ModuleType):
                return
        super().__setattr__(name, value)


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once), and guard the package's public names."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
    package = sys.modules.get("vecorm")
    if package is not None and type(package) is types.ModuleType:
        package.__class__ = _Package
