"""The ``>>>`` examples of vecorm's docstrings run (no database: they must not need one).

Most docstrings show plain ``::`` examples that need an engine; only ``>>>`` ones are doctests.
Modules whose optional dependency is missing are left out, as an import would fail.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import vecorm

#: Module prefix -> the optional package it imports.
OPTIONAL = {
    "vecorm.embedding.embedders.local": "sentence_transformers",
    "vecorm.embedding.embedders.openai": "openai",
    "vecorm.testing": "pytest_postgresql",
    "vecorm.tools": "click",
    "vecorm.schema.sqlmodel": "sqlmodel",
}


def _available(name: str) -> bool:
    for prefix, dependency in OPTIONAL.items():
        if name.startswith(prefix) and importlib.util.find_spec(dependency) is None:
            return False
    return True


def _modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(vecorm.__path__, "vecorm.")
        if _available(info.name)
    )


def _doctests(module: ModuleType) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module) if test.examples]


MODULES = [name for name in _modules() if _doctests(importlib.import_module(name))]


def test_the_public_names_carry_doctests() -> None:
    assert {"vecorm.engine", "vecorm.search.tsquery", "vecorm.embedding.embedders.hashing"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    module = importlib.import_module(name)
    output: list[str] = []
    for test in _doctests(module):
        runner.run(test, out=output.append)
    assert runner.failures == 0, "".join(output)
