"""BM25 statistics in migrations: the trigger functions and triggers, compared and rendered.

The side tables (``<table>_bm25_postings`` / ``_terms`` / ``_deltas``) are ordinary tables
in the metadata, so Alembic creates and compares them itself. What it cannot see are the
functions and statement triggers that keep them exact; this module compares those (by the
digest :func:`vecorm.search.bm25.signature` stores as the insert function's comment) and renders::

    op.create_bm25_statistics('documents', ["CREATE OR REPLACE FUNCTION ...", ...])

which creates (or replaces) the functions and triggers, then fills the statistics from the
rows already in the table. Its reverse drops them, or puts back the definitions the database
had, read from the catalog (``pg_get_functiondef`` / ``pg_get_triggerdef``). A second
autogenerate against an up-to-date database renders nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations, ops
from alembic.util import DispatchPriority, PriorityDispatchResult
from sqlalchemy import DDL, Index, MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from vecorm.alembic.catalog import adopted_online, column_names
from vecorm.alembic.operations import AlterColumnExpressionOp
from vecorm.alembic.plugin import comparator
from vecorm.search import bm25
from vecorm.search.bm25 import ddl
from vecorm.search.bm25.tables import declare

_OPERATIONS_IMPORT = (
    "import vecorm.alembic  # noqa: F401  (registers op.create_vector_extension & co.)"
)


@Operations.register_operation("create_bm25_statistics")
class CreateBM25StatisticsOp(MigrateOperation):
    """Run the DDL of a table's BM25 triggers, then (``rebuild``) fill its statistics.

    ``op.create_bm25_statistics('documents', [...])``; reversed by
    ``op.drop_bm25_statistics('documents', [...])``.
    """

    def __init__(
        self,
        table_name: str,
        statements: Sequence[str],
        *,
        schema: str | None = None,
        rebuild: bool = True,
        previous: Sequence[str] | None = None,
    ) -> None:
        self.table_name = table_name
        self.statements = list(statements)
        self.schema = schema
        self.rebuild = rebuild
        self.previous = None if previous is None else list(previous)

    @classmethod
    def create_bm25_statistics(
        cls,
        operations: Operations,
        table_name: str,
        statements: Sequence[str],
        *,
        schema: str | None = None,
        rebuild: bool = True,
    ) -> None:
        """Create or replace the BM25 functions and triggers of ``table_name``."""
        operations.invoke(cls(table_name, statements, schema=schema, rebuild=rebuild))

    def reverse(self) -> MigrateOperation:
        if self.previous:
            return CreateBM25StatisticsOp(
                self.table_name,
                self.previous,
                schema=self.schema,
                rebuild=self.rebuild,
                previous=self.statements,
            )
        return DropBM25StatisticsOp(
            self.table_name, _drops_for(self.table_name, self.schema), schema=self.schema
        )

    def to_diff_tuple(self) -> tuple[str, str | None, str]:
        return ("create_bm25_statistics", self.schema, self.table_name)


@Operations.register_operation("drop_bm25_statistics")
class DropBM25StatisticsOp(MigrateOperation):
    """Drop a table's BM25 functions (and with them its triggers)."""

    def __init__(
        self,
        table_name: str,
        statements: Sequence[str],
        *,
        schema: str | None = None,
        previous: Sequence[str] | None = None,
    ) -> None:
        self.table_name = table_name
        self.statements = list(statements)
        self.schema = schema
        self.previous = None if previous is None else list(previous)

    @classmethod
    def drop_bm25_statistics(
        cls,
        operations: Operations,
        table_name: str,
        statements: Sequence[str],
        *,
        schema: str | None = None,
    ) -> None:
        """Drop the BM25 functions and triggers of ``table_name``."""
        operations.invoke(cls(table_name, statements, schema=schema))

    def reverse(self) -> MigrateOperation:
        return CreateBM25StatisticsOp(
            self.table_name, self.previous or [], schema=self.schema, previous=self.statements
        )

    def to_diff_tuple(self) -> tuple[str, str | None, str]:
        return ("drop_bm25_statistics", self.schema, self.table_name)


def _drops_for(table_name: str, schema: str | None) -> list[str]:
    return [element.sql() for element in ddl.drop_elements(table_name, schema)]


def _execute(operations: Operations, name: str, table_name: str, statement: str) -> None:
    """Run one statement of a revision; a database error names the operation and the object
    (each statement is about one: its first line says which)."""
    try:
        operations.execute(DDL(statement))  # type: ignore[no-untyped-call]
    except DBAPIError as error:
        first_line = statement.strip().splitlines()[0] if statement.strip() else ""
        error.add_note(f"vecorm: in op.{name}({table_name!r}): {first_line}")
        raise


@Operations.implementation_for(CreateBM25StatisticsOp)
def _create(operations: Operations, operation: CreateBM25StatisticsOp) -> None:
    table_name = operation.table_name
    for statement in operation.statements:
        _execute(operations, "create_bm25_statistics", table_name, statement)
    if operation.rebuild and operation.statements:
        call = ddl.CallFunction(table_name, operation.schema, "rebuild")
        with ddl.naming(call):
            operations.execute(call)


@Operations.implementation_for(DropBM25StatisticsOp)
def _drop(operations: Operations, operation: DropBM25StatisticsOp) -> None:
    for statement in operation.statements:
        _execute(operations, "drop_bm25_statistics", operation.table_name, statement)


# --------------------------------------------------------------------------- comparison


_INSTALLED = text(
    """
    SELECT n.nspname AS schema, p.proname AS name, p.oid AS oid,
           obj_description(p.oid, 'pg_proc') AS comment
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE p.proname LIKE '%\\_bm25\\_insert' AND obj_description(p.oid, 'pg_proc') LIKE :prefix
    """
)


def _installed(connection: Connection) -> dict[tuple[str | None, str], str]:
    """``{(schema, table): signature}`` of BM25 statistics present in the database."""
    found: dict[tuple[str | None, str], str] = {}
    default = connection.dialect.default_schema_name
    for row in connection.execute(_INSTALLED, {"prefix": bm25.COMMENT_PREFIX + "%"}):
        schema = None if row.schema == default else row.schema
        table = row.name[: -len("_bm25_insert")]
        found[(schema, table)] = row.comment[len(bm25.COMMENT_PREFIX) :]
    return found


# Objects by schema and name, quoted by the server (a bound value is not escaped for the
# driver's paramstyle as compiled SQL is).
_FUNCTION = text(
    "SELECT pg_catalog.pg_get_functiondef(p.oid), pg_catalog.obj_description(p.oid, 'pg_proc') "
    "FROM pg_catalog.pg_proc p "
    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace "
    "WHERE n.nspname OPERATOR(pg_catalog.=) coalesce(:schema, pg_catalog.current_schema()) "
    "AND p.proname OPERATOR(pg_catalog.=) :name AND p.pronargs OPERATOR(pg_catalog.=) 0"
)
_TRIGGERS = text(
    "SELECT t.tgname, pg_catalog.pg_get_triggerdef(t.oid) FROM pg_catalog.pg_trigger t "
    "JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
    "WHERE n.nspname OPERATOR(pg_catalog.=) coalesce(:schema, pg_catalog.current_schema()) "
    "AND c.relname OPERATOR(pg_catalog.=) :table AND t.tgname OPERATOR(pg_catalog.=) ANY(:names) "
    "ORDER BY t.tgname"
)


def _escaped(definition: str) -> str:
    """Catalog text as a revision statement: ``op.execute(DDL(...))`` reads ``%%`` as ``%``."""
    return definition.replace("%", "%%")


def _current_definitions(connection: Connection, table_name: str, schema: str | None) -> list[str]:
    """The database's own text of the functions and triggers, to put back on downgrade."""
    statements = []
    comment = None
    for event in ddl.FUNCTION_EVENTS:
        name = ddl.object_name(table_name, event)
        found = connection.execute(_FUNCTION, {"schema": schema, "name": name}).first()
        if found is None:
            continue
        statements.append(_escaped(str(found[0])))
        comment = found[1] if event == "insert" else comment
    names = [ddl.object_name(table_name, event) for event in ddl.TRIGGER_EVENTS]
    rows = connection.execute(_TRIGGERS, {"schema": schema, "table": table_name, "names": names})
    for row in rows:
        event = row[0][len(table_name) + len("_bm25_") :]
        statements.insert(0, ddl.DropTrigger(table_name, schema, event).sql())
        statements.append(_escaped(str(row[1])))
    if comment:
        statements.append(ddl.CommentOnFunction(table_name, schema, "insert", comment).sql())
    return statements


def _alters_expression(upgrade_ops: ops.UpgradeOps, key: tuple[str | None, str]) -> bool:
    """Whether ``upgrade_ops`` changes a generated column's expression on table ``key``."""
    return any(
        isinstance(operation, ops.ModifyTableOps)
        and (operation.schema, operation.table_name) == key
        and any(isinstance(each, AlterColumnExpressionOp) for each in operation.ops)
        for operation in upgrade_ops.ops
    )


@comparator("vecorm.bm25", "schema", priority=DispatchPriority.LAST, subgroup="vecorm_bm25")
def compare_bm25(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, schemas: set[str | None]
) -> PriorityDispatchResult:
    """Emit ``op.create_bm25_statistics`` where the triggers are missing or differ, and
    ``op.drop_bm25_statistics`` where a model no longer keeps BM25 statistics."""
    connection = autogen_context.connection
    metadata = autogen_context.metadata
    if connection is None or metadata is None or connection.dialect.name != "postgresql":
        return PriorityDispatchResult.CONTINUE
    metadatas = metadata if isinstance(metadata, Sequence) else [metadata]
    declared = {
        (tables.table.schema, tables.table.name): tables
        for each in metadatas
        for tables in bm25.declared_tables(each)
    }
    installed = _installed(connection)
    for key, tables in declared.items():
        if key[0] not in schemas and not (key[0] is None and None in schemas):
            continue
        stored = _stored_distribution(connection, tables)
        if stored is not _MISSING and stored != tables.distributed_by:
            _reshape(upgrade_ops, connection, tables, stored)
            continue
        found = installed.get(key)
        if found == bm25.signature(tables):
            continue
        previous = _current_definitions(connection, key[1], key[0]) if found else None
        schema = bm25.table_schema(connection, tables.table)
        upgrade_ops.ops.append(
            CreateBM25StatisticsOp(
                key[1],
                bm25.create_statements(tables, schema),
                schema=key[0],
                previous=previous,
                # An expression change in this revision rebuilds the statistics itself; the
                # online path's fill counts the rows batch by batch, without the lock.
                rebuild=not (
                    _alters_expression(upgrade_ops, key) or adopted_online(connection, tables.table)
                ),
            )
        )
    metadata_tables = {
        (table.schema, table.name) for each in metadatas for table in each.tables.values()
    }
    for key in installed.keys() - declared.keys():
        if key not in metadata_tables:
            continue  # the table itself is gone or not ours: its drop takes the triggers
        upgrade_ops.ops.append(
            DropBM25StatisticsOp(
                key[1],
                _drops_for(key[1], key[0]),
                schema=key[0],
                previous=_current_definitions(connection, key[1], key[0]),
            )
        )
    return PriorityDispatchResult.CONTINUE


_MISSING = object()
_TERMS_COLUMNS = frozenset({"term", "df", "length"})


def _stored_distribution(connection: Connection, tables: bm25.BM25Tables) -> object:
    """The column the stored statistics are kept per value of (``None``: the whole table), or
    :data:`_MISSING` when the database has no terms table yet."""
    terms = tables.terms
    name = connection.dialect.identifier_preparer.format_table(terms)
    columns = column_names(connection, name)
    if not columns:
        return _MISSING
    extra = sorted(columns - _TERMS_COLUMNS)
    return extra[0] if len(extra) == 1 else None


def _variant(tables: bm25.BM25Tables, distributed_by: str | None) -> bm25.BM25Tables:
    """The side tables ``tables.table`` would have with statistics kept per value of
    ``distributed_by`` (declared on a copy of the table, in metadata of their own)."""
    copy = tables.table.to_metadata(MetaData())
    settings = replace(tables.settings, distributed_by=distributed_by)
    return declare(copy, replace(tables.config, bm25=settings))


def _reshape(
    upgrade_ops: ops.UpgradeOps,
    connection: Connection,
    tables: bm25.BM25Tables,
    stored: object,
) -> None:
    """The statistics change shape (kept for the whole table <-> per value of a column): the
    side tables are dropped and created in the new shape, and filled from the rows.

    Alembic alone renders ``add_column(..., nullable=False)`` on the terms table, which fails
    on its first row, and cannot change its primary key; so its operations on the three side
    tables are replaced by: the old functions dropped, the old side tables dropped (indexes
    first, so that the downgrade rebuilds them), the new ones created, the new functions
    created and the statistics rebuilt. The downgrade does the reverse, old shape included.
    """
    table = tables.table
    schema = bm25.table_schema(connection, table)
    old = _variant(tables, stored if isinstance(stored, str) else None)
    sides = {(side.schema, side.name) for side in (tables.postings, tables.terms, tables.deltas)}
    upgrade_ops.ops[:] = [
        each
        for each in upgrade_ops.ops
        if not (isinstance(each, ops.ModifyTableOps) and (each.schema, each.table_name) in sides)
    ]
    steps: list[MigrateOperation] = [
        DropBM25StatisticsOp(
            table.name,
            _drops_for(table.name, table.schema),
            schema=table.schema,
            previous=bm25.create_statements(old, schema),
        )
    ]
    for side in (old.postings, old.terms, old.deltas):
        steps.extend(ops.DropIndexOp.from_index(index) for index in _sorted(side.indexes))
        steps.append(ops.DropTableOp.from_table(side))
    for side in (tables.postings, tables.terms, tables.deltas):
        steps.append(ops.CreateTableOp.from_table(side))
        steps.extend(ops.CreateIndexOp.from_index(index) for index in _sorted(side.indexes))
    steps.append(
        CreateBM25StatisticsOp(
            table.name, bm25.create_statements(tables, schema), schema=table.schema
        )
    )
    upgrade_ops.ops.extend(steps)


def _sorted(indexes: set[Index]) -> list[Index]:
    return sorted(indexes, key=lambda index: str(index.name))


# --------------------------------------------------------------------------- rendering


def _literal(statement: str) -> str:
    if '"""' in statement or "\\" in statement:
        return repr(statement)
    return '"""' + statement + '"""'


def _render_statements(statements: Sequence[str]) -> str:
    return "[\n        " + ",\n        ".join(_literal(s) for s in statements) + ",\n    ]"


def _render(name: str, operation: Any, autogen_context: AutogenContext, extra: str = "") -> str:
    if autogen_context.imports is not None:
        autogen_context.imports.add(_OPERATIONS_IMPORT)
    schema = f", schema={operation.schema!r}" if operation.schema else ""
    return (
        f"op.{name}(\n    {operation.table_name!r},\n    "
        f"{_render_statements(operation.statements)}{schema}{extra},\n)"
    )


@renderers.dispatch_for(CreateBM25StatisticsOp)
def _render_create(autogen_context: AutogenContext, operation: CreateBM25StatisticsOp) -> str:
    extra = "" if operation.rebuild else ", rebuild=False"
    return _render("create_bm25_statistics", operation, autogen_context, extra)


@renderers.dispatch_for(DropBM25StatisticsOp)
def _render_drop(autogen_context: AutogenContext, operation: DropBM25StatisticsOp) -> str:
    return _render("drop_bm25_statistics", operation, autogen_context)
