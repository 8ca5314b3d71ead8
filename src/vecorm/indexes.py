"""Index declarations: HNSW / IVFFlat on the embedding, GIN on the tsvector.

Names are deterministic (``ix_<table>_<column>_<method>``, shortened with a hash past
PostgreSQL's 63 characters) because Alembic compares indexes by name::

    vector_index(table.c.embedding, SearchConfig(fields=("body",)))
    # Index('ix_documents_embedding_hnsw', embedding, postgresql_using='hnsw',
    #       postgresql_with={'m': 16, 'ef_construction': 64},
    #       postgresql_ops={'embedding': 'vector_cosine_ops'})
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Column, Index

from vecorm.config import SearchConfig

MAX_IDENTIFIER_LENGTH = 63


def index_name(table_name: str, column_name: str, method: str) -> str:
    """Deterministic index name, at most 63 characters.

    >>> index_name("documents", "embedding", "hnsw")
    'ix_documents_embedding_hnsw'
    """
    name = f"ix_{table_name}_{column_name}_{method}"
    if len(name) <= MAX_IDENTIFIER_LENGTH:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{name[: MAX_IDENTIFIER_LENGTH - 9]}_{digest}"


def vector_index(column: Column[object], config: SearchConfig) -> Index | None:
    """The HNSW or IVFFlat index for ``column``, or ``None`` when ``config.index`` is None."""
    if config.index is None:
        return None
    return Index(
        index_name(_table_name(column), column.name, config.index.method),
        column,
        postgresql_using=config.index.method,
        postgresql_with=config.index.with_params,
        postgresql_ops={column.name: config.opclass},
    )


def text_index(column: Column[object]) -> Index:
    """The GIN index on a tsvector ``column``."""
    return Index(
        index_name(_table_name(column), column.name, "gin"), column, postgresql_using="gin"
    )


def _table_name(column: Column[object]) -> str:
    table = column.table
    return str(table.name)
