"""A deterministic, offline embedder for tests and demos.

Words and character trigrams are hashed into signed buckets (the "hashing trick") and the
result is L2-normalised, so the same text always gives the same vector and texts that share
words are close in cosine distance. No model, no network::

    embedder = HashingEmbedder(dimensions=384)
    a, b = embedder.embed(["postgres vector search", "vector search in postgres"])
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vecorm.embedding.embedders.base import EmbeddingMatrix

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class HashingEmbedder:
    """Hashed bag of words and character trigrams, L2-normalised: deterministic and offline,
    for tests and demos.

    >>> embedder = HashingEmbedder(dimensions=8)
    >>> embedder.model_name
    'vecorm-hashing-8'
    >>> vector = embedder.embed(["autovacuum tuning"])[0]
    >>> len(vector), round(float((vector**2).sum()), 6)
    (8, 1.0)
    >>> bool((embedder.embed(["autovacuum tuning"])[0] == vector).all())
    True
    """

    dimensions: int = 1536
    max_batch_size: int = 256
    word_weight: float = 1.0
    trigram_weight: float = 0.35

    @property
    def model_name(self) -> str:
        return f"vecorm-hashing-{self.dimensions}"

    def embed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        """Embed ``texts``; one normalised row each."""
        matrix = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            self._fill(matrix[row], text)
        return matrix

    async def aembed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        """Same as :meth:`embed`; hashing is cheap enough not to need a thread."""
        return self.embed(texts)

    def _fill(self, row: np.ndarray, text: str) -> None:
        words = [word.lower() for word in _WORD.findall(text)]
        for word in words:
            self._add(row, "w:" + word, self.word_weight)
            padded = f"<{word}>"
            for start in range(len(padded) - 2):
                self._add(row, "t:" + padded[start : start + 3], self.trigram_weight)
        norm = float(np.linalg.norm(row))
        if norm == 0.0:
            row[0] = 1.0  # empty text still gets a valid unit vector (cosine needs a norm)
        else:
            row /= norm

    def _add(self, row: np.ndarray, feature: str, weight: float) -> None:
        digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % self.dimensions
        sign = 1.0 if digest[4] & 1 else -1.0
        row[bucket] += sign * weight
