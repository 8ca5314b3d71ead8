"""Citus operations for migrations: distribute a searchable table, replicate a lookup table.

::

    def upgrade() -> None:
        op.create_reference_table("categories")
        op.create_distributed_table("documents", "tenant_id")
        op.create_distributed_table("chunks", "tenant_id", colocate_with="documents")

    def downgrade() -> None:
        op.undistribute_table("chunks")
        op.undistribute_table("documents")
        op.undistribute_table("categories")

Before it runs, ``create_distributed_table`` checks in the catalog that every unique index of
the table (the primary key included) contains the distribution column, which Citus requires,
and says which index does not; and that the table has no triggers Citus refuses: BM25
statistics kept for the whole table (declare ``BM25(distributed_by=...)``) or triggers of
yours. The row trigger of ``SearchConfig(search_vector="trigger")`` is accepted: the call then
runs with ``citus.enable_unsafe_triggers`` on (see :func:`vecorm.scale.citus.distribute_table`).
BM25 statistics kept per the distribution column (their terms table has it) are distributed
with the table, co-located (:class:`vecorm.scale.citus.DistributeWithStatistics`).
``alembic upgrade --sql`` prints the calls (without the catalog, a plain call).
"""

from __future__ import annotations

import logging
from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations
from sqlalchemy import MetaData, Select, Table, text

from vecorm.alembic.catalog import column_type
from vecorm.alembic.operations import _qualified as qualified_table
from vecorm.alembic.renderers import OPERATIONS_IMPORT
from vecorm.errors import ConfigurationError
from vecorm.scale.citus import (
    DistributeWithStatistics,
    bm25_refusal,
    distribute_table,
    reference_table,
    undistribute_table,
)
from vecorm.schema.cluster import is_citus
from vecorm.search.bm25.ddl import TRIGGER_EVENTS, object_name

log = logging.getLogger("vecorm.alembic")


def _table(name: str, schema: str | None) -> Table:
    return Table(name, MetaData(), schema=schema)


def _run(operations: Operations, statement: Select[Any] | DistributeWithStatistics) -> None:
    """Execute ``statement``; in ``--sql`` mode print it with its values inlined."""
    context = operations.get_context()
    if context.as_sql:
        compiled = statement.compile(
            dialect=context.dialect, compile_kwargs={"literal_binds": True}
        )
        operations.execute(str(compiled))
    else:
        operations.execute(statement)


@Operations.register_operation("create_distributed_table")
class CreateDistributedTableOp(MigrateOperation):
    """``SELECT create_distributed_table('table', 'column', colocate_with => ...)``."""

    def __init__(
        self,
        table_name: str,
        column: str,
        *,
        colocate_with: str | None = None,
        shard_count: int | None = None,
        schema: str | None = None,
    ) -> None:
        self.table_name = table_name
        self.column = column
        self.colocate_with = colocate_with
        self.shard_count = shard_count
        self.schema = schema

    @classmethod
    def create_distributed_table(
        cls,
        operations: Operations,
        table_name: str,
        column: str,
        *,
        colocate_with: str | None = None,
        shard_count: int | None = None,
        schema: str | None = None,
    ) -> None:
        """Shard ``table_name`` by ``column`` over the Citus workers."""
        operations.invoke(
            cls(
                table_name,
                column,
                colocate_with=colocate_with,
                shard_count=shard_count,
                schema=schema,
            )
        )

    def reverse(self) -> UndistributeTableOp:
        return UndistributeTableOp(self.table_name, schema=self.schema, _reverse=self)


@Operations.register_operation("create_reference_table")
class CreateReferenceTableOp(MigrateOperation):
    """``SELECT create_reference_table('table')``."""

    def __init__(self, table_name: str, *, schema: str | None = None) -> None:
        self.table_name = table_name
        self.schema = schema

    @classmethod
    def create_reference_table(
        cls, operations: Operations, table_name: str, *, schema: str | None = None
    ) -> None:
        """Replicate ``table_name`` to every node (small lookup tables joined by searches)."""
        operations.invoke(cls(table_name, schema=schema))

    def reverse(self) -> UndistributeTableOp:
        return UndistributeTableOp(self.table_name, schema=self.schema, _reverse=self)


@Operations.register_operation("undistribute_table")
class UndistributeTableOp(MigrateOperation):
    """``SELECT undistribute_table('table')``: back to an ordinary local table."""

    def __init__(
        self,
        table_name: str,
        *,
        schema: str | None = None,
        cascade_via_foreign_keys: bool = False,
        _reverse: MigrateOperation | None = None,
    ) -> None:
        self.table_name = table_name
        self.schema = schema
        self.cascade_via_foreign_keys = cascade_via_foreign_keys
        self._reverse = _reverse

    @classmethod
    def undistribute_table(
        cls,
        operations: Operations,
        table_name: str,
        *,
        schema: str | None = None,
        cascade_via_foreign_keys: bool = False,
    ) -> None:
        """Gather ``table_name``'s shards back onto the coordinator.

        Citus undistributes tables joined by foreign keys (documents to a reference table of
        categories) only together: ``cascade_via_foreign_keys=True`` does that, and a later
        ``undistribute_table`` of a table it already brought back does nothing.
        """
        operations.invoke(
            cls(table_name, schema=schema, cascade_via_foreign_keys=cascade_via_foreign_keys)
        )

    def reverse(self) -> MigrateOperation:
        if self._reverse is None:
            raise ValueError(f"cannot reverse undistribute_table({self.table_name!r}) on its own")
        return self._reverse


_UNIQUE_WITHOUT_SQL = text(
    """
    SELECT i.relname FROM pg_catalog.pg_index x
    JOIN pg_catalog.pg_class i ON i.oid OPERATOR(pg_catalog.=) x.indexrelid
    WHERE x.indrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table) AND x.indisunique
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid OPERATOR(pg_catalog.=) x.indrelid
                        AND a.attname OPERATOR(pg_catalog.=) :column
                        AND a.attnum OPERATOR(pg_catalog.=) ANY(x.indkey::int2[]))
    ORDER BY i.relname
    """
)


# Each trigger of the table, and whether it is vecorm's search-vector row trigger: named
# <table>_<tsvector column> like its function (see vecorm.schema.generated).
_TRIGGERS_SQL = text(
    """
    SELECT t.tgname,
           p.proname OPERATOR(pg_catalog.=) t.tgname
           AND (t.tgtype::int & 1) OPERATOR(pg_catalog.=) 1 AND EXISTS (
             SELECT 1 FROM pg_catalog.pg_attribute a
             WHERE a.attrelid OPERATOR(pg_catalog.=) t.tgrelid AND NOT a.attisdropped
               AND a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.tsvector'::pg_catalog.regtype
               AND t.tgname OPERATOR(pg_catalog.=) (c.relname::pg_catalog.text
                   OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) a.attname::pg_catalog.text)
           ) AS search_vector
    FROM pg_catalog.pg_trigger t
    JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid
    JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid
    WHERE t.tgrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table) AND NOT t.tgisinternal
    ORDER BY t.tgname
    """
)


# Each foreign key of the table: the table it refers to, how Citus keeps that table ('h'
# distributed, 'n' reference, NULL local), and whether the key pairs the column with that
# table's distribution column.
_FOREIGN_KEYS_SQL = text(
    """
    SELECT k.conname, k.confrelid::pg_catalog.regclass::text, p.partmethod,
           EXISTS (
             SELECT 1
             FROM ROWS FROM (pg_catalog.unnest(k.conkey), pg_catalog.unnest(k.confkey))
               AS pair(mine, theirs)
             JOIN pg_catalog.pg_attribute a
               ON a.attrelid OPERATOR(pg_catalog.=) k.conrelid
              AND a.attnum OPERATOR(pg_catalog.=) pair.mine
              AND a.attname OPERATOR(pg_catalog.=) :column
             WHERE p.partkey IS NOT NULL AND pg_catalog.column_to_column_name(
                     k.confrelid, p.partkey) OPERATOR(pg_catalog.=) (
                       SELECT b.attname FROM pg_catalog.pg_attribute b
                       WHERE b.attrelid OPERATOR(pg_catalog.=) k.confrelid
                         AND b.attnum OPERATOR(pg_catalog.=) pair.theirs)
           ) AS paired
    FROM pg_catalog.pg_constraint k
    LEFT JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid OPERATOR(pg_catalog.=) k.confrelid
    WHERE k.contype OPERATOR(pg_catalog.=) 'f'
      AND k.conrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table)
      AND k.confrelid OPERATOR(pg_catalog.<>) k.conrelid
    ORDER BY k.conname
    """
)


def _check_catalog(
    operations: Operations, operation: CreateDistributedTableOp
) -> tuple[bool, bool]:
    """Raise what Citus would refuse, in words; whether the table has triggers vecorm keeps
    (its search-vector trigger), and whether it has BM25 statistics kept per the column."""
    qualified = qualified_table(operations, operation.table_name, operation.schema)
    bind = operations.get_bind()
    offending = [
        str(name)
        for (name,) in bind.execute(
            _UNIQUE_WITHOUT_SQL, {"table": qualified, "column": operation.column}
        )
    ]
    if offending:
        raise ConfigurationError(
            f"Citus cannot distribute {operation.table_name} by {operation.column!r}: unique "
            f"index {', '.join(offending)} lacks it. Add {operation.column} to the primary "
            "key and unique constraints first"
        )
    foreign_keys = (
        bind.execute(_FOREIGN_KEYS_SQL, {"table": qualified, "column": operation.column}).all()
        if is_citus(bind)
        else []
    )
    for key, referred, kind, paired in foreign_keys:
        if kind is None:
            raise ConfigurationError(
                f"Citus cannot distribute {operation.table_name}: its foreign key {key} refers "
                f"to {referred}, a local table. Run op.create_reference_table({referred!r}) "
                f"first (or op.create_distributed_table by {operation.column!r} if it has it)"
            )
        if kind == "h" and not paired:
            raise ConfigurationError(
                f"Citus cannot distribute {operation.table_name}: its foreign key {key} to the "
                f"distributed table {referred} must pair {operation.column} with that table's "
                "distribution column (Citus keeps keys between co-located tables only)"
            )
    triggers = {
        str(name): bool(ours) for name, ours in bind.execute(_TRIGGERS_SQL, {"table": qualified})
    }
    bm25 = {object_name(operation.table_name, event) for event in TRIGGER_EVENTS}
    keyed = False
    if bm25 & triggers.keys():
        terms = qualified_table(
            operations, object_name(operation.table_name, "terms"), operation.schema
        )
        # Statistics kept per the column's values: their terms table has the column.
        keyed = column_type(bind, terms, operation.column) is not None
        if not keyed:
            raise ConfigurationError(
                f"Citus cannot distribute {operation.table_name}: "
                f"{bm25_refusal(operation.column)}. Migrate to it first: a revision that "
                "drops the side tables and makes them again keyed (autogenerate renders it), "
                "or op.drop_bm25_statistics for bm25=None"
            )
    others = sorted(name for name, ours in triggers.items() if not ours and name not in bm25)
    if others:
        raise ConfigurationError(
            f"Citus cannot distribute {operation.table_name}: it refuses tables with triggers "
            f"({', '.join(others)}). Drop them first, or, if each touches only its own row, "
            'run op.execute("SET LOCAL citus.enable_unsafe_triggers = on") before this '
            "operation (Citus leaves that to you)"
        )
    return bool(triggers), keyed


# Other Citus tables joined to the table by a foreign key, either way.
_LINKED_SQL = text(
    """
    SELECT DISTINCT x.other::pg_catalog.regclass::text FROM (
      SELECT k.conrelid AS other FROM pg_catalog.pg_constraint k
      WHERE k.contype OPERATOR(pg_catalog.=) 'f'
        AND k.confrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table)
      UNION
      SELECT k.confrelid FROM pg_catalog.pg_constraint k
      WHERE k.contype OPERATOR(pg_catalog.=) 'f'
        AND k.conrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table)
    ) x
    JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid OPERATOR(pg_catalog.=) x.other
    WHERE x.other OPERATOR(pg_catalog.<>) pg_catalog.to_regclass(:table)
    ORDER BY 1
    """
)
_IS_CITUS_TABLE_SQL = text(
    "SELECT pg_catalog.count(*) > 0 FROM pg_catalog.pg_dist_partition "
    "WHERE logicalrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table)"
)


@Operations.implementation_for(CreateDistributedTableOp)
def _create_distributed_table(operations: Operations, operation: CreateDistributedTableOp) -> None:
    target = _table(operation.table_name, operation.schema)
    context = operations.get_context()
    triggers, keyed = (False, False) if context.as_sql else _check_catalog(operations, operation)
    if keyed:
        operations.execute(
            DistributeWithStatistics(
                operation.table_name,
                operation.schema,
                operation.column,
                colocate_with=operation.colocate_with,
                shard_count=operation.shard_count,
            )
        )
        return
    _run(
        operations,
        distribute_table(
            target,
            operation.column,
            colocate_with=operation.colocate_with,
            shard_count=operation.shard_count,
            check=False,
            search_vector_trigger=triggers,
        ),
    )


@Operations.implementation_for(CreateReferenceTableOp)
def _create_reference_table(operations: Operations, operation: CreateReferenceTableOp) -> None:
    _run(operations, reference_table(_table(operation.table_name, operation.schema)))


@Operations.implementation_for(UndistributeTableOp)
def _undistribute_table(operations: Operations, operation: UndistributeTableOp) -> None:
    target = _table(operation.table_name, operation.schema)
    cascade = operation.cascade_via_foreign_keys
    if not operations.get_context().as_sql:
        bind = operations.get_bind()
        quoted = qualified_table(operations, operation.table_name, operation.schema)
        if not bind.execute(_IS_CITUS_TABLE_SQL, {"table": quoted}).scalar():
            log.info("%s is not distributed (any more): nothing to undistribute", quoted)
            return
        linked = [str(name) for (name,) in bind.execute(_LINKED_SQL, {"table": quoted})]
        if linked and not cascade:
            raise ConfigurationError(
                f"Citus cannot undistribute {operation.table_name} alone: foreign keys join it "
                f"to {', '.join(linked)}. Pass cascade_via_foreign_keys=True to bring them back "
                "together (a later undistribute_table of those then does nothing)"
            )
    if operations.get_context().as_sql:
        _run(operations, undistribute_table(target, cascade_via_foreign_keys=cascade))
        return
    bind = operations.get_bind()
    # Citus makes the table again without its comment: put it back, as autogenerate knows it.
    comment = _comment_restored(bind, operation.table_name, operation.schema, operations)
    _run(operations, undistribute_table(target, cascade_via_foreign_keys=cascade))
    if comment:
        bind.exec_driver_sql(comment)
    # BM25 statistics per distribution value were distributed with the table: back with it.
    for side in ("postings", "terms", "deltas"):
        name = object_name(operation.table_name, side)
        quoted = qualified_table(operations, name, operation.schema)
        if bind.execute(_IS_CITUS_TABLE_SQL, {"table": quoted}).scalar():
            comment = _comment_restored(bind, name, operation.schema, operations)
            _run(operations, undistribute_table(_table(name, operation.schema)))
            if comment:
                bind.exec_driver_sql(comment)


# ``COMMENT ON TABLE ... IS ...`` putting back a table's comment, written by the server.
_COMMENT_SQL = text(
    "SELECT pg_catalog.format('COMMENT ON TABLE %s IS %L', c.oid::pg_catalog.regclass, "
    "pg_catalog.obj_description(c.oid, 'pg_class')) FROM pg_catalog.pg_class c "
    "WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table) "
    "AND pg_catalog.obj_description(c.oid, 'pg_class') IS NOT NULL"
)


def _comment_restored(
    bind: Any, table_name: str, schema: str | None, operations: Operations
) -> str | None:
    quoted = qualified_table(operations, table_name, schema)
    found = bind.execute(_COMMENT_SQL, {"table": quoted}).scalar()
    return None if found is None else str(found)


def _schema(schema: str | None) -> str:
    return f", schema={schema!r}" if schema else ""


@renderers.dispatch_for(CreateDistributedTableOp)
def _render_distributed(autogen_context: AutogenContext, op: CreateDistributedTableOp) -> str:
    if autogen_context.imports is not None:
        autogen_context.imports.add(OPERATIONS_IMPORT)
    extra = ""
    if op.colocate_with:
        extra += f", colocate_with={op.colocate_with!r}"
    if op.shard_count:
        extra += f", shard_count={op.shard_count!r}"
    return (
        f"op.create_distributed_table({op.table_name!r}, {op.column!r}{extra}{_schema(op.schema)})"
    )


@renderers.dispatch_for(CreateReferenceTableOp)
def _render_reference(autogen_context: AutogenContext, op: CreateReferenceTableOp) -> str:
    if autogen_context.imports is not None:
        autogen_context.imports.add(OPERATIONS_IMPORT)
    return f"op.create_reference_table({op.table_name!r}{_schema(op.schema)})"


@renderers.dispatch_for(UndistributeTableOp)
def _render_undistribute(autogen_context: AutogenContext, op: UndistributeTableOp) -> str:
    if autogen_context.imports is not None:
        autogen_context.imports.add(OPERATIONS_IMPORT)
    cascade = ", cascade_via_foreign_keys=True" if op.cascade_via_foreign_keys else ""
    return f"op.undistribute_table({op.table_name!r}{_schema(op.schema)}{cascade})"
