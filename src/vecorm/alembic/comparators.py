"""Autogenerate comparators, registered in Alembic's module-level ``comparators`` registry.

Alembic 1.18+ copies that registry into every autogenerate run, so ``import vecorm.alembic``
in env.py is all it takes. What they add to Alembic's own comparison:

* ``CREATE EXTENSION IF NOT EXISTS vector`` first in the upgrade, when the metadata uses a
  pgvector type and the database lacks the extension;
* indexes present on both sides are compared from the catalog (method, key columns and
  expressions, operator classes, ``WITH`` parameters, predicate), after PostgreSQL normalised
  the metadata's version (see :mod:`vecorm.alembic.catalog`); a difference is a drop + create,
  equality removes any diff Alembic produced for that index;
* generated (``Computed``) columns are compared the same way, replacing Alembic's text comparison
  (which can only warn); a change becomes ``op.alter_column_expression(...)``;
* types from ``vecorm.*`` / ``pgvector.*`` bring their ``import`` into the revision, and the
  mixin's bookkeeping entry in ``Table.info`` stays out of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from alembic.autogenerate import comparators
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from alembic.util import DispatchPriority, PriorityDispatchResult
from pgvector.sqlalchemy import HALFVEC, SPARSEVEC, VECTOR
from sqlalchemy import Column, Computed, Index, Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeEngine

from vecorm.alembic.catalog import (
    IndexSignature,
    extension_version,
    generated_column,
    index_signature_by_oid,
    index_state,
    simulated_table,
)
from vecorm.alembic.operations import AlterColumnExpressionOp, CreateVectorExtensionOp

log = logging.getLogger("vecorm.alembic")

_PGVECTOR_TYPES = (VECTOR, HALFVEC, SPARSEVEC)
_IMPORTABLE_PREFIXES = ("vecorm.", "pgvector.")
_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


class IVFFlatCreateIndexOp(ops.CreateIndexOp):
    """A ``CreateIndexOp`` for an IVFFlat index; renders with a note on training data."""


@comparators.dispatch_for(
    "column", qualifier="postgresql", priority=DispatchPriority.FIRST, subgroup="server_default"
)
def _claim_computed_columns(
    autogen_context: AutogenContext,
    alter_column_op: ops.AlterColumnOp,
    schema: str | None,
    tname: str,
    cname: str,
    conn_col: Column[Any],
    metadata_col: Column[Any],
) -> PriorityDispatchResult:
    """Generated on both sides: compared in :func:`compare_table`, not by Alembic's warning."""
    if isinstance(conn_col.server_default, Computed) and isinstance(
        metadata_col.server_default, Computed
    ):
        return PriorityDispatchResult.STOP
    return PriorityDispatchResult.CONTINUE


@comparators.dispatch_for(
    "table", qualifier="postgresql", priority=DispatchPriority.LAST, subgroup="vecorm"
)
def compare_table(
    autogen_context: AutogenContext,
    modify_ops: ops.ModifyTableOps,
    schema: str | None,
    tname: str,
    conn_table: Table | None,
    metadata_table: Table | None,
) -> PriorityDispatchResult:
    """Compare indexes and generated columns of a table that exists on both sides."""
    connection = autogen_context.connection
    if conn_table is None or metadata_table is None or connection is None:
        return PriorityDispatchResult.CONTINUE
    indexes = _comparable_indexes(autogen_context, connection, metadata_table, schema)
    computed = [
        column
        for column in metadata_table.c
        if isinstance(column.server_default, Computed)
        and column.name in conn_table.c
        and isinstance(conn_table.c[column.name].server_default, Computed)
        and autogen_context.run_object_filters(
            column, column.name, "column", False, conn_table.c[column.name]
        )
    ]
    if not indexes and not computed:
        return PriorityDispatchResult.CONTINUE
    with simulated_table(connection, metadata_table, schema) as probe:
        if probe is None:
            return PriorityDispatchResult.CONTINUE
        expected_indexes = {index: probe.index_signature(index) for index, _ in indexes}
        expected_columns = {column: probe.generated_column(column) for column in computed}
    for index, actual in indexes:
        expected = expected_indexes[index]
        if expected is None:
            continue  # could not be simulated (e.g. a column it needs is new): Alembic decides
        _reconcile_index(modify_ops, conn_table, index, expected, actual, tname)
    for column, expected_column in expected_columns.items():
        stored = generated_column(connection, tname, column.name, schema)
        if expected_column is None or stored is None:
            continue
        if expected_column.kind != stored.kind:
            log.warning(
                "vecorm: %s.%s changes between STORED and VIRTUAL; PostgreSQL cannot alter "
                "that in place: drop and add the column in a hand-written migration",
                tname,
                column.name,
            )
        elif expected_column.expression != stored.expression:
            log.info("Detected changed generated expression on '%s.%s'", tname, column.name)
            modify_ops.ops.append(
                AlterColumnExpressionOp(
                    tname,
                    column.name,
                    _metadata_expression(autogen_context, column),
                    existing_expression=stored.expression,
                    schema=schema,
                )
            )
    return PriorityDispatchResult.CONTINUE


def _comparable_indexes(
    autogen_context: AutogenContext,
    connection: Connection,
    metadata_table: Table,
    schema: str | None,
) -> list[tuple[Index, IndexSignature]]:
    """Named metadata indexes that exist, valid and not backing a constraint, in the database."""
    found: list[tuple[Index, IndexSignature]] = []
    for index in sorted(metadata_table.indexes, key=lambda ix: str(ix.name)):
        if not isinstance(index.name, str):
            continue
        state = index_state(connection, index.name, schema)
        if state is None or not state[1] or state[2]:
            continue
        if not autogen_context.run_object_filters(index, index.name, "index", False, None):
            continue
        found.append((index, index_signature_by_oid(connection, state[0])))
    return found


def _reconcile_index(
    modify_ops: ops.ModifyTableOps,
    conn_table: Table,
    index: Index,
    expected: IndexSignature,
    actual: IndexSignature,
    tname: str,
) -> None:
    alembic_ops = [
        op
        for op in modify_ops.ops
        if isinstance(op, ops.CreateIndexOp | ops.DropIndexOp) and op.index_name == index.name
    ]
    if expected.comparable() == actual.comparable():
        # Same index in the catalog's terms: whatever Alembic saw is noise.
        for op in alembic_ops:
            modify_ops.ops.remove(op)
        return
    log.info(
        "Detected changed index %r on %r: %s -> %s",
        index.name,
        tname,
        actual.describe(),
        expected.describe(),
    )
    for op in alembic_ops:
        modify_ops.ops.remove(op)
    # Drop first: a column type change in the same revision may need the old index gone.
    modify_ops.ops.insert(
        0, ops.DropIndexOp.from_index(stored_index(conn_table, str(index.name), actual))
    )
    modify_ops.ops.append(_create_index_op(index))


def _with_ivfflat_note(op: ops.MigrateOperation) -> ops.MigrateOperation:
    """Alembic's own ``CreateIndexOp`` for an IVFFlat index, as the kind that renders a note."""
    if (
        type(op) is ops.CreateIndexOp
        and op.kw.get("postgresql_using") == "ivfflat"
        and op.index_name is not None
    ):
        log.warning(
            "vecorm: IVFFlat index %r is built from the rows present when the revision runs; "
            "on an empty table, backfill first and build it in a later revision",
            op.index_name,
        )
        return IVFFlatCreateIndexOp(
            op.index_name,
            op.table_name,
            op.columns,
            schema=op.schema,
            unique=op.unique,
            if_not_exists=op.if_not_exists,
            **op.kw,
        )
    return op


def _create_index_op(index: Index) -> ops.CreateIndexOp:
    if index.dialect_options["postgresql"]["using"] == "ivfflat":
        return IVFFlatCreateIndexOp.from_index(index)
    return ops.CreateIndexOp.from_index(index)


def stored_index(conn_table: Table, name: str, signature: IndexSignature) -> Index:
    """An :class:`~sqlalchemy.Index` on the reflected table that renders the stored index."""
    by_quoted = {_PREPARER.quote(column.name): column for column in conn_table.c}
    keys: list[Any] = [by_quoted[key] if key in by_quoted else text(key) for key in signature.keys]
    ops_by_column = {
        by_quoted[key].name: opclass
        for key, opclass, is_default in zip(
            signature.keys, signature.opclasses, signature.default_opclasses, strict=True
        )
        if key in by_quoted and not is_default
    }
    kwargs: dict[str, Any] = {"postgresql_using": signature.method}
    if signature.options:
        kwargs["postgresql_with"] = signature.with_params
    if ops_by_column:
        kwargs["postgresql_ops"] = ops_by_column
    if signature.predicate:
        kwargs["postgresql_where"] = text(signature.predicate)
    if signature.include:
        kwargs["postgresql_include"] = list(signature.include)
    index = Index(name, *keys, unique=signature.unique, **kwargs)
    if index.table is None:  # only expressions: bind it to the table by hand
        index._set_parent(conn_table)
    # Index() attaches itself to the reflected table; keep that table as reflected.
    conn_table.indexes.discard(index)
    return index


def _metadata_expression(autogen_context: AutogenContext, column: Column[Any]) -> str:
    computed = column.server_default
    assert isinstance(computed, Computed)
    return str(
        computed.sqltext.compile(
            dialect=autogen_context.dialect, compile_kwargs={"literal_binds": True}
        )
    )


@comparators.dispatch_for("schema", priority=DispatchPriority.LAST, subgroup="vecorm")
def compare_schema(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, schemas: set[str | None]
) -> PriorityDispatchResult:
    """Add the extension when needed; imports for vecorm types; no private ``Table.info``."""
    connection = autogen_context.connection
    if (
        connection is not None
        and connection.dialect.name == "postgresql"
        and _metadata_uses_pgvector(autogen_context)
        and extension_version(connection) is None
    ):
        log.info("Detected missing extension 'vector'")
        upgrade_ops.ops.insert(0, CreateVectorExtensionOp())
    for op in _walk(upgrade_ops):
        if isinstance(op, ops.OpContainer):
            op.ops = [_with_ivfflat_note(child) for child in op.ops]
    modules = {
        type(type_).__module__
        for type_ in _types_in(upgrade_ops)
        if type(type_).__module__.startswith(_IMPORTABLE_PREFIXES)
    }
    if modules:
        upgrade_ops.ops.append(ImportsOp(frozenset(f"import {module}" for module in modules)))
    return PriorityDispatchResult.CONTINUE


class ImportsOp(ops.OpContainer):
    """Renders nothing but adds ``imports`` to the revision; a no-op in diffs and when run.

    Alembic resets the import list between comparison and rendering, so the imports a vector
    column needs travel with the operations until the revision is rendered.
    """

    def __init__(self, imports: frozenset[str]) -> None:
        super().__init__(ops=())
        self.imports = imports

    def reverse(self) -> ImportsOp:
        return ImportsOp(self.imports)


def _metadata_uses_pgvector(autogen_context: AutogenContext) -> bool:
    return any(
        isinstance(column.type, _PGVECTOR_TYPES)
        for table in autogen_context.sorted_tables
        for column in table.c
    )


def _walk(operation: ops.MigrateOperation) -> Iterator[ops.MigrateOperation]:
    """``operation``, what it contains, and the operations its reverse will render."""
    yield operation
    if isinstance(operation, ops.OpContainer):
        for child in operation.ops:
            yield from _walk(child)
    reverse = getattr(operation, "_reverse", None)
    if isinstance(reverse, ops.MigrateOperation):
        yield from _walk(reverse)


def _types_in(upgrade_ops: ops.UpgradeOps) -> Iterator[TypeEngine[Any]]:
    for op in _walk(upgrade_ops):
        if isinstance(op, ops.CreateTableOp):
            for item in op.columns:
                if isinstance(item, Column):
                    yield item.type
        elif isinstance(op, ops.AddColumnOp):
            yield op.column.type
        elif isinstance(op, ops.AlterColumnOp):
            for candidate in (op.modify_type, op.existing_type):
                if isinstance(candidate, TypeEngine):
                    yield candidate
