"""Embedders for tests: deterministic vectors and a record of every provider call."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from vecorm.embedding.embedders.base import Embedder, EmbeddingMatrix
from vecorm.embedding.embedders.hashing import HashingEmbedder


@dataclass(eq=False)  # hashable by identity, so query-embedding caches work
class RecordingEmbedder:
    """Wraps a provider and records each batch it is asked to embed.

    >>> embedder = RecordingEmbedder(HashingEmbedder(8))
    >>> _ = embedder.embed(["a", "b"]); embedder.calls
    [['a', 'b']]
    """

    inner: Embedder
    calls: list[list[str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def max_batch_size(self) -> int:
        return self.inner.max_batch_size

    @property
    def texts(self) -> list[str]:
        """Every text embedded so far, in call order."""
        return [text for batch in self.calls for text in batch]

    def embed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        with self._lock:
            self.calls.append(list(texts))
        return self.inner.embed(texts)

    async def aembed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        return self.embed(texts)

    def reset(self) -> None:
        """Forget the recorded calls."""
        with self._lock:
            self.calls.clear()


class FakeEmbedder(RecordingEmbedder):
    """A deterministic, offline provider (hashed words and trigrams) that records its calls.

    ``FakeEmbedder(dimensions=384, max_batch_size=10)``
    """

    def __init__(self, dimensions: int = 1536, max_batch_size: int = 256) -> None:
        super().__init__(HashingEmbedder(dimensions=dimensions, max_batch_size=max_batch_size))
