"""The BM25 side tables of a searchable table: their declaration and the registry that finds
them (``side_tables(Document)``)."""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    REAL,
    BigInteger,
    Column,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.schema import SchemaItem

from vecorm.errors import ConfigurationError
from vecorm.schema.config import BM25, SearchConfig

#: Statements between two compactions of the delta table.
COMPACT_EVERY = 64
_SIDE_COLUMNS = frozenset({"term", "tf", "dl", "impact"})
PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class BM25Tables:
    """The side tables and DDL names of one searchable table."""

    table: Table
    postings: Table
    terms: Table
    deltas: Table
    config: SearchConfig

    @property
    def settings(self) -> BM25:
        assert self.config.bm25 is not None
        return self.config.bm25

    @property
    def keys(self) -> tuple[str, ...]:
        """Primary-key column names (shared by the table and the postings)."""
        return tuple(column.name for column in self.table.primary_key.columns)

    @property
    def distributed_by(self) -> str | None:
        """The column the statistics are kept per value of (``BM25(distributed_by=...)``)."""
        return self.settings.distributed_by

    def qualified(self, name: str) -> str:
        """``"schema"."name"`` (quoted) of an object in the table's schema."""
        if self.table.schema:
            return f"{PREPARER.quote_schema(self.table.schema)}.{PREPARER.quote(name)}"
        return PREPARER.quote(name)

    @property
    def base_name(self) -> str:
        return self.table.name

    def function_name(self, event_name: str) -> str:
        return f"{self.base_name}_bm25_{event_name}"

    def trigger_name(self, event_name: str) -> str:
        return f"{self.base_name}_bm25_{event_name}"

    @property
    def lock_key(self) -> int:
        """Advisory-lock key for compaction: stable across processes."""
        name = f"vecorm.bm25:{self.table.schema or ''}.{self.table.name}".encode()
        return int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)

    @property
    def lock_class(self) -> int:
        """The first half (int4) of the two-key advisory lock a writer takes to compact one
        value's statistics (``distributed_by``): the second half hashes the value."""
        return self.lock_key >> 32


# Side tables per searchable table; kept off Table.info so Alembic never renders it.
_registry: weakref.WeakKeyDictionary[Table, BM25Tables] = weakref.WeakKeyDictionary()


def tables_of(table: Table) -> BM25Tables | None:
    return _registry.get(table)


def registered() -> list[BM25Tables]:
    """Every :class:`BM25Tables` declared so far."""
    return list(_registry.values())


def declared_tables(metadata: MetaData) -> list[BM25Tables]:
    """The :class:`BM25Tables` of every searchable table in ``metadata``."""
    found = (tables_of(table) for table in metadata.tables.values())
    return [tables for tables in found if tables is not None]


def side_tables(model_or_table: Any) -> BM25Tables:
    """The :class:`BM25Tables` of a searchable model (or its table).

    Raises :class:`~vecorm.ConfigurationError` when the model keeps no BM25 statistics.
    """
    table = model_or_table if isinstance(model_or_table, Table) else None
    if table is None:
        from sqlalchemy import inspect

        table = inspect(model_or_table).local_table
    assert isinstance(table, Table)
    tables = tables_of(table)
    if tables is None:
        raise ConfigurationError(
            f"table {table.name!r} keeps no BM25 statistics: its SearchConfig has bm25=None; "
            "use ranking='ts_rank' or set SearchConfig(bm25=vecorm.BM25())"
        )
    return tables


def _check_names(table: Table) -> None:
    if len(table.name) > 48:
        raise ConfigurationError(
            f"table {table.name!r}: BM25 side-table names would exceed PostgreSQL's 63 "
            "characters; shorten __tablename__ to 48 characters or set SearchConfig(bm25=None)"
        )
    clash = _SIDE_COLUMNS & {column.name for column in table.primary_key.columns}
    if clash:
        raise ConfigurationError(
            f"table {table.name!r}: primary-key column(s) {sorted(clash)} clash with the BM25 "
            "postings columns term/tf/dl/impact; rename them or set SearchConfig(bm25=None)"
        )
    if not table.primary_key.columns:
        raise ConfigurationError(f"table {table.name!r} needs a primary key for BM25")


def _check_distributed_by(table: Table, column: str) -> None:
    keys = [key.name for key in table.primary_key.columns]
    if column not in keys:
        raise ConfigurationError(
            f"table {table.name!r}: BM25(distributed_by={column!r}) must name a primary-key "
            f"column ({', '.join(keys)}); declare {column} with mapped_column(primary_key=True)"
        )


def declare(table: Table, config: SearchConfig) -> BM25Tables:
    """Declare the side tables in ``table``'s metadata (idempotent); returns them."""
    existing = tables_of(table)
    if existing is not None:
        return existing
    _check_names(table)
    assert config.bm25 is not None
    distributed_by = config.bm25.distributed_by
    if distributed_by is not None:
        _check_distributed_by(table, distributed_by)
    metadata: MetaData = table.metadata
    schema = table.schema
    keys = list(table.primary_key.columns)

    def key_columns() -> list[SchemaItem]:
        return [Column(key.name, key.type, nullable=False) for key in keys]

    def distribution_column(**options: Any) -> list[SchemaItem]:
        if distributed_by is None:
            return []
        return [Column(distributed_by, table.c[distributed_by].type, nullable=False, **options)]

    name = table.name
    postings = Table(
        f"{name}_bm25_postings",
        metadata,
        *key_columns(),
        Column("term", Text, nullable=False),
        Column("tf", Integer, nullable=False),
        Column("dl", Integer, nullable=False),
        Column("impact", REAL, nullable=False),
        # Unique (document, term) covering tf and dl: a rescore probes it index-only (an
        # index rather than a primary key, whose INCLUDE Alembic would not render).
        Index(
            f"ux_{name}_bm25_postings_key",
            *(key.name for key in keys),
            "term",
            unique=True,
            postgresql_include=["tf", "dl"],
        ),
        schema=schema,
        comment="vecorm BM25 postings, maintained by triggers",
    )
    # Keyed by the distribution value first: a search filtered on one value reads its own.
    Index(
        f"ix_{name}_bm25_postings_impact",
        *([postings.c[distributed_by]] if distributed_by else []),
        postings.c.term,
        postings.c.impact.desc(),
        postgresql_include=[key.name for key in keys if key.name != distributed_by] + ["tf", "dl"],
    )
    terms = Table(
        f"{name}_bm25_terms",
        metadata,
        *distribution_column(primary_key=True),
        Column("term", Text, primary_key=True),
        Column("df", BigInteger, nullable=False),
        Column("length", BigInteger, nullable=False),
        schema=schema,
        comment="vecorm BM25 document frequencies ('' = document count and total length)",
    )
    deltas = Table(
        f"{name}_bm25_deltas",
        metadata,
        *distribution_column(primary_key=True),
        # Per distribution value, a bigserial: Citus cannot undistribute an identity column.
        Column("id", BigInteger, primary_key=True, autoincrement=True)
        if distributed_by
        else Column("id", BigInteger, Identity(), primary_key=True),
        Column("term", Text, nullable=False),
        Column("df", BigInteger, nullable=False),
        Column("length", BigInteger, nullable=False),
        Index(f"ix_{name}_bm25_deltas_term", *([distributed_by] if distributed_by else []), "term"),
        schema=schema,
        comment="vecorm BM25 pending frequency changes, compacted into the terms table",
    )
    tables = BM25Tables(table, postings, terms, deltas, config)
    _registry[table] = tables
    return tables


def has_bm25(model: Any) -> bool:
    """Whether ``model`` keeps BM25 statistics."""
    from sqlalchemy import inspect

    table = inspect(model).local_table
    return isinstance(table, Table) and tables_of(table) is not None
