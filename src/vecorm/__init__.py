"""vecorm: embeddings and hybrid search for SQLAlchemy models on PostgreSQL + pgvector.

import vecorm

class Document(vecorm.Searchable, Base):
    __tablename__ = "documents"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "content"))
    ...
"""

from vecorm.backfill import BackfillResult, backfill, stale_condition, stale_count
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
from vecorm.events import install, installed_embedder, is_installed, uninstall
from vecorm.mixin import Searchable, search_config
from vecorm.reembed import ChangeStatus, ModelChange
from vecorm.types import HalfVec, Vector

__all__ = [
    "HNSW",
    "AsyncEmbedder",
    "BackfillResult",
    "ChangeStatus",
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
    "ModelChange",
    "SearchConfig",
    "Searchable",
    "ServerError",
    "VecormError",
    "Vector",
    "backfill",
    "create_engine",
    "database",
    "database_url",
    "install",
    "installed_embedder",
    "is_installed",
    "search_config",
    "stale_condition",
    "stale_count",
    "start_embedded",
    "uninstall",
]
