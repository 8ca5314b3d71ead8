"""Query-text embedding: a repeated search text costs no provider call."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

import vecorm
from vecorm.embedding.embedders import query as query_module
from vecorm.embedding.embedders.base import EmbeddingMatrix
from vecorm.embedding.embedders.query import aembed_query, embed_query
from vecorm.testing import FakeEmbedder


def test_repeated_text_is_embedded_once() -> None:
    embedder = FakeEmbedder(dimensions=8)
    first = embed_query(embedder, "vacuum tuning")
    again = embed_query(embedder, "vacuum tuning")
    embed_query(embedder, "index bloat")
    assert embedder.calls == [["vacuum tuning"], ["index bloat"]]
    assert again is first
    assert not first.flags.writeable  # a cached vector cannot be changed by a caller


def test_least_recently_used_text_is_evicted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(query_module, "QUERY_CACHE_SIZE", 2)
    embedder = FakeEmbedder(dimensions=8)
    for text in ("a", "b", "a", "c", "a", "b"):
        embed_query(embedder, text)
    # "b" was the least recently used when "c" arrived, so only it is embedded again.
    assert embedder.calls == [["a"], ["b"], ["c"], ["b"]]


def test_caches_are_per_provider() -> None:
    first, second = FakeEmbedder(dimensions=8), FakeEmbedder(dimensions=8)
    embed_query(first, "same text")
    embed_query(second, "same text")
    assert first.calls == second.calls == [["same text"]]


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_search_text_is_refused(text: str) -> None:
    embedder = FakeEmbedder(dimensions=8)
    with pytest.raises(vecorm.EmbeddingError, match="empty search text"):
        embed_query(embedder, text)
    assert embedder.calls == []


async def test_async_path_shares_the_cache() -> None:
    embedder = FakeEmbedder(dimensions=8)
    first = await aembed_query(embedder, "hybrid search")
    again = embed_query(embedder, "hybrid search")
    assert embedder.calls == [["hybrid search"]]
    np.testing.assert_array_equal(first, again)


class _Unhashable:
    """A provider without identity hashing: it works, uncached."""

    __hash__ = None  # type: ignore[assignment]
    dimensions = 4
    model_name = "unhashable"
    max_batch_size = 8

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        self.calls += 1
        return np.ones((len(texts), 4), dtype=np.float32)


async def test_unhashable_provider_works_without_a_cache() -> None:
    embedder = _Unhashable()
    embed_query(embedder, "x")
    await aembed_query(embedder, "x")  # no aembed: runs embed in a worker thread
    assert embedder.calls == 2
