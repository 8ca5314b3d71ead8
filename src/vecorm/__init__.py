"""vecorm: embeddings and hybrid search for SQLAlchemy models on PostgreSQL + pgvector.

import vecorm

class Document(vecorm.Searchable, Base):
    __tablename__ = "documents"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "content"))
    ...

The package is layered (docs/architecture.md): :mod:`vecorm.schema`, :mod:`vecorm.embedding`,
:mod:`vecorm.search`, :mod:`vecorm.scale`, the facade :mod:`vecorm.mixin`, then
:mod:`vecorm.alembic`, :mod:`vecorm.tools` and :mod:`vecorm.testing`. Everything a user needs is
named here.
"""

from vecorm import _moved
from vecorm.embedding.backfill import BackfillResult, backfill, stale_condition, stale_count
from vecorm.embedding.embedders import AsyncEmbedder, Embedder, HashingEmbedder
from vecorm.embedding.embedders.chunking import Chunk, Chunker, chunk_characters, chunk_tokens
from vecorm.embedding.events import install, installed_embedder, is_installed, uninstall
from vecorm.embedding.passages import rechunk
from vecorm.embedding.reembed import ChangeStatus, ModelChange
from vecorm.embedding.worker import Worker
from vecorm.engine import batch_inserts, create_async_engine, create_engine, database_url
from vecorm.errors import (
    BulkInsertError,
    ConfigurationError,
    DimensionMismatch,
    EmbeddingError,
    IndexBuildError,
    InvalidVector,
    ReplicaLagError,
    ServerError,
    VecormError,
    VecormWarning,
    VectorDimensionsError,
    VectorElementTypeError,
)
from vecorm.mixin import Passage, Searchable
from vecorm.scale.bulk_insert import BulkInsertResult, bulk_insert
from vecorm.scale.index_build import IndexBuildMemoryWarning, build_model_index
from vecorm.scale.partitioning import (
    check_partition_indexes,
    create_hash_partitions,
    create_partition,
)
from vecorm.scale.routing import RoutingSession, wait_for_replay
from vecorm.schema.config import (
    BM25,
    HNSW,
    Distance,
    Embedding,
    IVFFlat,
    SearchConfig,
    search_config,
)
from vecorm.schema.drivers import register_array_types
from vecorm.schema.passages import PassageConfig
from vecorm.schema.types import Bit, HalfVec, HalfVector, SparseVec, Vector
from vecorm.search import bm25
from vecorm.search.bm25 import BM25Arm
from vecorm.search.grants import grant_access
from vecorm.search.hybrid import hybrid_search
from vecorm.search.passages import passage_hybrid_search, passage_search, passage_text_search
from vecorm.search.settings import (
    apply_search_settings,
    install_search_settings,
    search_options,
    search_settings_installed,
    uninstall_search_settings,
)
from vecorm.search.text import TsRankArm, text_search
from vecorm.tools.embedded import EmbeddedServer, database, start_embedded
from vecorm.tools.evaluation import EvaluationReport, evaluate

_moved.install()  # vecorm 0.1's module paths (vecorm.query ...), for one more release

__all__ = [
    "BM25",
    "HNSW",
    "AsyncEmbedder",
    "BM25Arm",
    "BackfillResult",
    "Bit",
    "BulkInsertError",
    "BulkInsertResult",
    "ChangeStatus",
    "Chunk",
    "Chunker",
    "ConfigurationError",
    "DimensionMismatch",
    "Distance",
    "EmbeddedServer",
    "Embedder",
    "Embedding",
    "EmbeddingError",
    "EvaluationReport",
    "HalfVec",
    "HalfVector",
    "HashingEmbedder",
    "IVFFlat",
    "IndexBuildError",
    "IndexBuildMemoryWarning",
    "InvalidVector",
    "ModelChange",
    "Passage",
    "PassageConfig",
    "ReplicaLagError",
    "RoutingSession",
    "SearchConfig",
    "Searchable",
    "ServerError",
    "SparseVec",
    "TsRankArm",
    "VecormError",
    "VecormWarning",
    "Vector",
    "VectorDimensionsError",
    "VectorElementTypeError",
    "Worker",
    "apply_search_settings",
    "backfill",
    "batch_inserts",
    "bm25",
    "build_model_index",
    "bulk_insert",
    "check_partition_indexes",
    "chunk_characters",
    "chunk_tokens",
    "create_async_engine",
    "create_engine",
    "create_hash_partitions",
    "create_partition",
    "database",
    "database_url",
    "evaluate",
    "grant_access",
    "hybrid_search",
    "install",
    "install_search_settings",
    "installed_embedder",
    "is_installed",
    "passage_hybrid_search",
    "passage_search",
    "passage_text_search",
    "rechunk",
    "register_array_types",
    "search_config",
    "search_options",
    "search_settings_installed",
    "stale_condition",
    "stale_count",
    "start_embedded",
    "text_search",
    "uninstall",
    "uninstall_search_settings",
    "wait_for_replay",
]
