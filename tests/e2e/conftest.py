"""Shared set-up for the end-to-end tests: the examples on sys.path, one local model, a URL."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL

from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.embedders.registry import local_model_available

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def _no_remote_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach OpenAI: whatever the developer's shell holds, the key is gone."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="session", autouse=True)
def _examples_on_path() -> Iterator[None]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="session")
def local_embedder() -> Embedder:
    """all-MiniLM-L6-v2, loaded once for the whole session (skips without vecorm[local])."""
    if not local_model_available():
        pytest.skip("vecorm[local] is not installed")
    from vecorm.embedding.embedders.local import LocalEmbedder

    embedder = LocalEmbedder()
    embedder.load()
    return embedder


def url_text(url: URL) -> str:
    """The URL as the command line takes it (password included)."""
    return url.render_as_string(hide_password=False)
