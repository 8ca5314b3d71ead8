"""Searchable models on PostgreSQL partitioned tables (LIST or HASH, e.g. by ``tenant_id``).

Declare the partitioning with SQLAlchemy's own table option; the partition key must be part of
the primary key (PostgreSQL's rule for unique indexes on a partitioned table). vecorm's indexes
are declared once, on the parent: PostgreSQL creates them on every partition, including those
attached later::

    class Document(vecorm.Searchable, Base):
        __tablename__ = "documents"
        __table_args__ = {"postgresql_partition_by": "LIST (tenant_id)"}
        __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=1536)

        tenant_id: Mapped[int] = mapped_column(primary_key=True)
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]

    Base.metadata.create_all(engine)                        # the parent and its indexes
    with engine.begin() as conn:
        create_partition(conn, Document, "documents_t7", values=[7])   # + its HNSW and GIN
        check_partition_indexes(conn, Document)             # raises if a partition lacks one

    # Pruned to documents_t7 and its own HNSW index (see docs/scaling.md):
    session.execute(Document.nearest(q, k=10).where(Document.tenant_id == 7))

In migrations, ``op.create_partition("documents", "documents_t7", values=[7])`` (see
:mod:`vecorm.alembic.partitions`); autogenerate leaves partitions of a model's table alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, literal, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement
from sqlalchemy.sql.compiler import DDLCompiler

from vecorm.errors import ConfigurationError

_STRATEGY = re.compile(r"^\s*(LIST|HASH|RANGE)\s*\(", re.IGNORECASE)


def _table_of(target: Any) -> Table:
    table = getattr(target, "__table__", target)
    if not isinstance(table, Table):
        raise ConfigurationError(f"{target!r} is neither a mapped class nor a Table")
    return table


def partition_strategy(target: Any) -> str | None:
    """``"list"``, ``"hash"`` or ``"range"`` for a table declared with
    ``postgresql_partition_by``, else ``None``."""
    clause = _table_of(target).dialect_options["postgresql"].get("partition_by")
    if not clause:
        return None
    match = _STRATEGY.match(str(clause))
    return match.group(1).lower() if match else None


class CreatePartition(ExecutableDDLElement):
    """``CREATE TABLE [IF NOT EXISTS] name PARTITION OF parent FOR VALUES ...`` (or ``DEFAULT``);
    with ``attach=True``, ``ALTER TABLE parent ATTACH PARTITION name FOR VALUES ...``.

    Exactly one of ``values`` (LIST), ``modulus`` + ``remainder`` (HASH), ``bounds`` (RANGE:
    ``(from, to)``) or ``default=True``. Values are rendered as SQL literals by SQLAlchemy.
    """

    inherit_cache = False

    def __init__(
        self,
        parent: str,
        name: str,
        *,
        schema: str | None = None,
        values: Sequence[object] | None = None,
        modulus: int | None = None,
        remainder: int | None = None,
        bounds: tuple[object, object] | None = None,
        default: bool = False,
        if_not_exists: bool = False,
        attach: bool = False,
    ) -> None:
        chosen = [values is not None, modulus is not None, bounds is not None, default]
        if sum(chosen) != 1:
            raise ConfigurationError(
                f"partition {name!r}: give one of values=[...] (LIST), modulus= and remainder= "
                "(HASH), bounds=(from, to) (RANGE) or default=True"
            )
        if modulus is not None and (
            remainder is None or not 0 <= remainder < modulus or modulus < 1
        ):
            raise ConfigurationError(
                f"partition {name!r}: HASH needs modulus >= 1 and 0 <= remainder < modulus "
                f"(got modulus={modulus}, remainder={remainder})"
            )
        if values is not None and not list(values):
            raise ConfigurationError(f"partition {name!r}: values=[...] must not be empty")
        self.parent = parent
        self.name = name
        self.schema = schema
        self.values = None if values is None else tuple(values)
        self.modulus = modulus
        self.remainder = remainder
        self.bounds = bounds
        self.default = default
        self.if_not_exists = if_not_exists
        self.attach = attach

    def bound_sql(self, compiler: DDLCompiler) -> str:
        """``FOR VALUES IN (1, 2)`` / ``FOR VALUES WITH (MODULUS 4, REMAINDER 0)`` / ``DEFAULT``."""

        def sql_literal(value: object) -> str:
            return str(compiler.sql_compiler.process(literal(value), literal_binds=True))

        if self.default:
            return "DEFAULT"
        if self.values is not None:
            return f"FOR VALUES IN ({', '.join(sql_literal(value) for value in self.values)})"
        if self.bounds is not None:
            low, high = self.bounds
            return f"FOR VALUES FROM ({sql_literal(low)}) TO ({sql_literal(high)})"
        modulus, remainder = int(self.modulus or 0), int(self.remainder or 0)
        return f"FOR VALUES WITH (MODULUS {modulus}, REMAINDER {remainder})"


@compiles(CreatePartition)
def _compile_create_partition(element: CreatePartition, compiler: DDLCompiler, **kw: Any) -> str:
    preparer = compiler.preparer
    schema = f"{preparer.quote_schema(element.schema)}." if element.schema else ""
    exists = " IF NOT EXISTS" if element.if_not_exists else ""
    if element.attach:
        return (
            f"ALTER TABLE {schema}{preparer.quote(element.parent)} ATTACH PARTITION "
            f"{schema}{preparer.quote(element.name)} {element.bound_sql(compiler)}"
        )
    return (
        f"CREATE TABLE{exists} {schema}{preparer.quote(element.name)} PARTITION OF "
        f"{schema}{preparer.quote(element.parent)} {element.bound_sql(compiler)}"
    )


def create_partition(
    connection: Connection,
    target: Any,
    name: str,
    *,
    values: Sequence[object] | None = None,
    modulus: int | None = None,
    remainder: int | None = None,
    bounds: tuple[object, object] | None = None,
    default: bool = False,
    if_not_exists: bool = False,
) -> None:
    """Create partition ``name`` of the model's (or Table's) partitioned table.

    PostgreSQL gives it every index of the parent (vecorm's HNSW / IVFFlat and GIN included),
    built right away: on a filled table, prefer attaching a prepared table
    (:func:`attach_partition`) or see docs/scaling.md for building indexes concurrently.

    >>> create_partition(conn, Document, "documents_t7", values=[7])   # doctest: +SKIP
    """
    table = _table_of(target)
    if partition_strategy(table) is None:
        raise ConfigurationError(
            f"{table.name} is not partitioned; declare __table_args__ = "
            '{"postgresql_partition_by": "LIST (tenant_id)"} (or HASH) on the model'
        )
    connection.execute(
        CreatePartition(
            str(table.name),
            name,
            schema=table.schema,
            values=values,
            modulus=modulus,
            remainder=remainder,
            bounds=bounds,
            default=default,
            if_not_exists=if_not_exists,
        )
    )


def create_hash_partitions(
    connection: Connection, target: Any, count: int, *, prefix: str | None = None
) -> list[str]:
    """Create ``count`` HASH partitions ``<table>_p0 .. _p<count-1>``; returns their names."""
    table = _table_of(target)
    if partition_strategy(table) != "hash":
        raise ConfigurationError(f"{table.name} is not partitioned by HASH")
    stem = prefix or f"{table.name}_p"
    names = [f"{stem}{remainder}" for remainder in range(count)]
    for remainder, name in enumerate(names):
        create_partition(connection, table, name, modulus=count, remainder=remainder)
    return names


@dataclass(frozen=True)
class PartitionInfo:
    """A partition as the catalog describes it, with the parent indexes it carries."""

    name: str
    bound: str
    indexes: tuple[str, ...]  # names of the parent's indexes attached on this partition


_PARTITIONS_SQL = text(
    """
    SELECT c.relname, pg_get_expr(c.relpartbound, c.oid),
           ARRAY(SELECT pi.relname
                 FROM pg_inherits ih
                 JOIN pg_index x ON x.indexrelid = ih.inhrelid
                 JOIN pg_class pi ON pi.oid = ih.inhparent
                 WHERE x.indrelid = c.oid
                 ORDER BY pi.relname)
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:parent)
    ORDER BY c.relname
    """
)

_PARENT_INDEXES_SQL = text(
    """
    SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    WHERE x.indrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:parent) ORDER BY i.relname
    """
)


def _qualified(connection: Connection, table: Table) -> str:
    preparer = connection.dialect.identifier_preparer
    name = preparer.quote(str(table.name))
    return f"{preparer.quote_schema(table.schema)}.{name}" if table.schema else name


def partitions(connection: Connection, target: Any) -> list[PartitionInfo]:
    """The partitions of the model's table, each with the parent indexes attached to it."""
    parent = _qualified(connection, _table_of(target))
    return [
        PartitionInfo(str(name), str(bound), tuple(indexes))
        for name, bound, indexes in connection.execute(_PARTITIONS_SQL, {"parent": parent})
    ]


def check_partition_indexes(connection: Connection, target: Any) -> list[PartitionInfo]:
    """Raise :class:`ConfigurationError` if some partition lacks one of the parent's indexes.

    Returns the partitions. A partition can lack one after ``CREATE INDEX ... ON ONLY`` or a
    failed concurrent build (see :mod:`vecorm.scale.index_build`).
    """
    parent = _qualified(connection, _table_of(target))
    expected = {
        str(name) for (name,) in connection.execute(_PARENT_INDEXES_SQL, {"parent": parent})
    }
    found = partitions(connection, target)
    missing = {
        info.name: sorted(expected - set(info.indexes))
        for info in found
        if expected - set(info.indexes)
    }
    if missing:
        details = "; ".join(f"{name} lacks {', '.join(names)}" for name, names in missing.items())
        raise ConfigurationError(
            f"partitions of {parent} miss indexes of the parent: {details}. Build them with "
            "vecorm.scale.index_build.build_index(...) or re-attach the partition"
        )
    return found


def attach_partition(
    connection: Connection,
    target: Any,
    name: str,
    *,
    values: Sequence[object] | None = None,
    modulus: int | None = None,
    remainder: int | None = None,
    bounds: tuple[object, object] | None = None,
    default: bool = False,
) -> None:
    """``ALTER TABLE parent ATTACH PARTITION name FOR VALUES ...`` for an existing table.

    PostgreSQL adopts an index of ``name`` that matches each parent index and builds the others
    (build them first, e.g. concurrently, to keep the attach short).
    """
    table = _table_of(target)
    connection.execute(
        CreatePartition(
            str(table.name),
            name,
            schema=table.schema,
            values=values,
            modulus=modulus,
            remainder=remainder,
            bounds=bounds,
            default=default,
            attach=True,
        )
    )


def partition_names(infos: Iterable[PartitionInfo]) -> list[str]:
    """Names of ``infos`` in order (a convenience for assertions and logs)."""
    return [info.name for info in infos]
