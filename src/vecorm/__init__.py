"""vecorm: embeddings and hybrid search for SQLAlchemy models on PostgreSQL + pgvector.

import vecorm

class Document(vecorm.Searchable, Base):
    __tablename__ = "documents"
    __vecorm__ = vecorm.SearchConfig(fields=("title", "content"))
    ...
"""

from vecorm.backfill import BackfillResult, backfill, stale_condition, stale_count
from vecorm.bm25 import BM25Arm
from vecorm.config import BM25, HNSW, Distance, IVFFlat, SearchConfig
from vecorm.drivers import register_array_types
from vecorm.embedded import (
    EmbeddedServer,
    create_async_engine,
    create_engine,
    database,
    database_url,
    start_embedded,
)
from vecorm.embedders import AsyncEmbedder, Embedder, HashingEmbedder
from vecorm.errors import (
    ConfigurationError,
    DimensionMismatch,
    EmbeddingError,
    IndexBuildError,
    InvalidVector,
    ReplicaLagError,
    ServerError,
    VecormError,
)
from vecorm.evaluation import EvaluationReport, evaluate
from vecorm.events import install, installed_embedder, is_installed, uninstall
from vecorm.grants import grant_access
from vecorm.hybrid import hybrid_search
from vecorm.index_build import IndexBuildMemoryWarning, build_model_index
from vecorm.mixin import Searchable, search_config
from vecorm.partitioning import check_partition_indexes, create_hash_partitions, create_partition
from vecorm.query import (
    apply_search_settings,
    install_search_settings,
    search_options,
    search_settings_installed,
    uninstall_search_settings,
)
from vecorm.reembed import ChangeStatus, ModelChange
from vecorm.routing import RoutingSession, wait_for_replay
from vecorm.textsearch import TsRankArm, text_search
from vecorm.types import Bit, HalfVec, HalfVector, SparseVec, Vector

__all__ = [
    "BM25",
    "HNSW",
    "AsyncEmbedder",
    "BM25Arm",
    "BackfillResult",
    "Bit",
    "ChangeStatus",
    "ConfigurationError",
    "DimensionMismatch",
    "Distance",
    "EmbeddedServer",
    "Embedder",
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
    "ReplicaLagError",
    "RoutingSession",
    "SearchConfig",
    "Searchable",
    "ServerError",
    "SparseVec",
    "TsRankArm",
    "VecormError",
    "Vector",
    "apply_search_settings",
    "backfill",
    "build_model_index",
    "check_partition_indexes",
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
