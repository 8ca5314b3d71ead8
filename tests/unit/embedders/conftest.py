"""Fixtures for the embedder tests: a loopback OpenAI-compatible server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vecorm.testing.openai_server import OpenAIServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A fresh OpenAI embeddings server on 127.0.0.1; stopped after the test."""
    with OpenAIServer() as server:
        yield server
