"""Embedding providers: one module per provider, all following :class:`Embedder`.

from vecorm.embedders import HashingEmbedder
vectors = HashingEmbedder(dimensions=64).embed(["hello world"])
"""

from vecorm.embedders.base import AsyncEmbedder, Embedder, check_embeddings
from vecorm.embedders.hashing import HashingEmbedder

__all__ = ["AsyncEmbedder", "Embedder", "HashingEmbedder", "check_embeddings"]
