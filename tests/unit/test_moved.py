"""vecorm 0.1's module paths still import, for one release, with a warning naming the new one;
the providers are where users look for them."""

from __future__ import annotations

import importlib
import sys

import pytest

import vecorm
from vecorm._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_imports_with_a_deprecation_warning(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=MOVED[old][0].replace(".", r"\.")):
        module = importlib.import_module(old)
    for target in MOVED[old]:
        new = importlib.import_module(target)
        public = [name for name in vars(new) if not name.startswith("_")]
        assert all(getattr(module, name) is getattr(new, name) for name in public[:20])


def test_split_modules_keep_both_halves() -> None:
    sys.modules.pop("vecorm.query", None)
    with pytest.warns(DeprecationWarning):
        query = importlib.import_module("vecorm.query")
    assert query.nearest is vecorm.search.vector.nearest
    assert query.search_options is vecorm.search_options


def test_public_paths_do_not_warn() -> None:
    from vecorm import bm25
    from vecorm.embedders import HashingEmbedder, LocalEmbedder, OpenAIEmbedder
    from vecorm.types import Vector

    assert bm25.rebuild is vecorm.search.bm25.rebuild
    assert LocalEmbedder.__module__ == "vecorm.embedding.embedders.local"
    assert OpenAIEmbedder.__module__ == "vecorm.embedding.embedders.openai"
    assert HashingEmbedder is vecorm.HashingEmbedder and Vector is vecorm.Vector


def test_an_old_path_does_not_replace_a_public_function() -> None:
    """``import vecorm.backfill`` (the old module path) leaves ``vecorm.backfill`` the
    function; the old module is still importable from."""
    from vecorm.embedding.backfill import backfill

    sys.modules.pop("vecorm.backfill", None)
    with pytest.warns(DeprecationWarning, match="vecorm.backfill moved"):
        importlib.import_module("vecorm.backfill")
    assert vecorm.backfill is backfill
    from vecorm.backfill import stale_count  # type: ignore[import-not-found]

    assert stale_count is vecorm.stale_count
