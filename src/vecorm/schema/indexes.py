"""Index declarations: HNSW / IVFFlat on the embedding, GIN on the tsvector.

Names are deterministic (``ix_<table>_<column>_<method>``, shortened with a hash past
PostgreSQL's 63 characters) because Alembic compares indexes by name::

    vector_index(table.c.embedding, SearchConfig(fields=("body",)))
    # Index('ix_documents_embedding_hnsw', embedding, postgresql_using='hnsw',
    #       postgresql_with={'m': 16, 'ef_construction': 64},
    #       postgresql_ops={'embedding': 'vector_cosine_ops'})

An index of another precision than the column (``HNSW(precision="halfvec" | "bit")``) is an
*expression* index, named after its precision so that changing it builds the new index
before the old one is dropped::

    vector_index(table.c.embedding, SearchConfig(fields=("body",), index=HNSW(precision="bit")))
    # Index('ix_documents_embedding_bit_hnsw',
    #       CAST(binary_quantize(embedding) AS BIT(1536)), postgresql_using='hnsw', ...,
    #       postgresql_ops={'embedding_bit': 'bit_hamming_ops'})
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import Column, Index, cast, func
from sqlalchemy.sql.elements import ColumnElement

from vecorm.schema.config import SearchConfig
from vecorm.schema.types import Bit, HalfVec

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


#: ``Index.info`` key set on an index adopted under ``SearchConfig(vector_index_name=...)``;
#: vecorm's Alembic comparator reports (never rebuilds) such an index when it differs.
ADOPTED_INFO_KEY = "vecorm_adopted"


def vector_index_name(table_name: str, column_name: str, config: SearchConfig) -> str | None:
    """The vector index's name: ``config.vector_index_name``, else :func:`index_name`'s."""
    if config.index is None:
        return None
    if config.vector_index_name is not None:
        return config.vector_index_name
    method = config.index.method
    if config.index_is_expression:
        method = f"{config.index_precision}_{method}"
    return index_name(table_name, column_name, method)


def indexed_expression(column: ColumnElement[Any], config: SearchConfig) -> ColumnElement[Any]:
    """What the vector index is built on: ``column``, ``column::halfvec(N)`` or
    ``binary_quantize(column)::bit(N)``; a query must order by the same expression to use it.
    """
    precision = config.index_precision
    if precision is None or precision == config.storage:
        return column
    return precision_expression(column, precision, config.dimensions)


def precision_expression(
    column: ColumnElement[Any], precision: str | None, dimensions: int
) -> ColumnElement[Any]:
    """``column`` as an index of ``precision`` stores it: as is (``None``), cast to
    ``halfvec(dimensions)``, or ``binary_quantize(column)::bit(dimensions)``."""
    if precision is None:
        return column
    if precision == "halfvec":
        return cast(column, HalfVec(dimensions))
    if precision == "bit":
        return cast(func.binary_quantize(column), Bit(dimensions))
    raise ValueError(f"precision must be None, 'halfvec' or 'bit', not {precision!r}")


def vector_index(column: Column[object], config: SearchConfig) -> Index | None:
    """The HNSW or IVFFlat index for ``column``, or ``None`` when ``config.index`` is None."""
    name = vector_index_name(_table_name(column), column.name, config)
    if config.index is None or name is None:
        return None
    key: ColumnElement[Any] = column
    ops_key = column.name
    if config.index_is_expression:
        ops_key = f"{column.name}_{config.index_precision}"
        key = indexed_expression(column, config).label(ops_key)
    return Index(
        name,
        key,
        postgresql_using=config.index.method,
        postgresql_with=config.index.with_params,
        postgresql_ops={ops_key: config.opclass},
        info={ADOPTED_INFO_KEY: True} if config.vector_index_name is not None else {},
    )


def text_index(column: Column[object]) -> Index:
    """The GIN index on a tsvector ``column``."""
    return Index(
        index_name(_table_name(column), column.name, "gin"), column, postgresql_using="gin"
    )


def _table_name(column: Column[object]) -> str:
    table = column.table
    return str(table.name)
