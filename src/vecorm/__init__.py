"""vecorm: embeddings and hybrid search for SQLAlchemy models on PostgreSQL + pgvector.

import vecorm

class Document(vecorm.Searchable, Base):
    __tablename__ = "documents"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "content"))
    ...
"""

from vecorm.config import HNSW, Distance, IVFFlat, SearchConfig
from vecorm.embedded import EmbeddedServer, create_engine, database, database_url, start_embedded
from vecorm.embedders import AsyncEmbedder, Embedder, HashingEmbedder
from vecorm.errors import (
    ConfigurationError,
    DimensionMismatch,
    EmbeddingError,
    InvalidVector,
    ServerError,
    VecormError,
)
from vecorm.mixin import Searchable, search_config
from vecorm.types import HalfVec, Vector

__all__ = [
    "HNSW",
    "AsyncEmbedder",
    "ConfigurationError",
    "DimensionMismatch",
    "Distance",
    "EmbeddedServer",
    "Embedder",
    "EmbeddingError",
    "HalfVec",
    "HashingEmbedder",
    "IVFFlat",
    "InvalidVector",
    "SearchConfig",
    "Searchable",
    "ServerError",
    "VecormError",
    "Vector",
    "create_engine",
    "database",
    "database_url",
    "search_config",
    "start_embedded",
]
