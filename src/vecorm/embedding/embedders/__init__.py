"""Embedding providers: one module per provider, all following :class:`Embedder`.

from vecorm.embedding.embedders import HashingEmbedder
vectors = HashingEmbedder(dimensions=64).embed(["hello world"])
"""

from vecorm.embedding.embedders.base import AsyncEmbedder, Embedder, check_embeddings
from vecorm.embedding.embedders.hashing import HashingEmbedder

__all__ = ["AsyncEmbedder", "Embedder", "HashingEmbedder", "check_embeddings"]
