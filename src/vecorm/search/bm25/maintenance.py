"""Keeping the BM25 side tables alive: created and dropped with their table, rebuilt, compacted,
bulk-loaded."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import (
    Table,
    event,
    func,
    select,
    true,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from vecorm.errors import ConfigurationError, VecormError
from vecorm.schema.config import SearchConfig
from vecorm.schema.pgcatalog import qualified_in, relation_exists
from vecorm.search.bm25 import ddl
from vecorm.search.bm25.tables import (
    PREPARER,
    BM25Tables,
    declare,
    registered,
    side_tables,
    tables_of,
)
from vecorm.search.bm25.triggers import create_elements, table_schema


def attach(table: Table, config: SearchConfig) -> BM25Tables:
    """Declare the side tables in ``table``'s metadata and hook their triggers to
    ``create_all`` / ``drop_all``. Called by the mixin; idempotent."""
    if tables_of(table) is not None:
        return declare(table, config)
    tables = declare(table, config)
    postings = tables.postings
    # The trigger functions reference the side tables, which create_all makes after the
    # main table (metadata order); PL/pgSQL resolves names at run time, so order is moot.
    event.listen(table, "after_create", _create_ddl)
    event.listen(table, "before_drop", _drop_ddl)
    event.listen(table, "after_drop", _drop_side_tables)
    event.listen(postings, "after_create", _postings_created)
    return tables


def _create_ddl(target: Table, connection: Connection, **kw: Any) -> None:
    tables = tables_of(target)
    if tables is None:
        return
    schema = table_schema(connection, target)
    # Side tables left by a ``DROP TABLE ... CASCADE`` (PostgreSQL cannot drop them with
    # their table) describe rows that are gone: the new table starts empty, so must they.
    name = tables.base_name
    leftovers = [
        which
        for which in ("postings", "terms", "deltas")
        if relation_exists(connection, _qualified(connection, schema, ddl.object_name(name, which)))
    ]
    if leftovers:
        ddl.run(connection, [ddl.TruncateSideTables(name, schema, leftovers)])
    # ``Model.__table__.create()`` or ``create_all(tables=[...])`` without the side
    # tables: make them here; a create_all that includes them makes them itself.
    for side_table in _not_in_this_run(tables, kw):
        side_table.create(connection, checkfirst=True)
    ddl.run(connection, create_elements(tables, schema, with_replica_identity=False))
    if tables.distributed_by is None:
        ddl.run(connection, [ddl.ResetSequence(name, schema, "avgdl")])


def _qualified(connection: Connection, schema: str, name: str) -> str:
    """``"schema"."name"`` as a value (a bound parameter), quoted by the connection's dialect."""
    return qualified_in(connection.dialect.identifier_preparer, schema, name)


def _postings_created(target: Table, connection: Connection, **_: Any) -> None:
    for tables in registered():
        if tables.postings is target:
            schema = table_schema(connection, target)
            ddl.run(connection, [ddl.SetReplicaIdentity(tables.base_name, schema)])


def _drop_ddl(target: Table, connection: Connection, **_: Any) -> None:
    tables = tables_of(target)
    if tables is not None:
        schema = table_schema(connection, target)
        ddl.run(connection, ddl.drop_elements(tables.base_name, schema))


def _drop_side_tables(target: Table, connection: Connection, **kw: Any) -> None:
    tables = tables_of(target)
    if tables is not None:
        for side in _not_in_this_run(tables, kw):
            side.drop(connection, checkfirst=True)


def _not_in_this_run(tables: BM25Tables, kw: Mapping[str, Any]) -> list[Table]:
    """Side tables that the running create_all / drop_all (if any) will not handle."""
    sides = [tables.postings, tables.terms, tables.deltas]
    if not kw.get("_is_metadata_operation"):
        return sides
    runner = kw.get("_ddl_runner")
    # SQLAlchemy 2.1 keeps the run's tables in _effective_tables; 2.0 in ``tables``, where
    # None means every table of the metadata.
    effective = getattr(runner, "_effective_tables", None)
    if effective is None:
        effective = getattr(runner, "tables", None)
    if effective is None:
        return [side for side in sides if side.metadata is not tables.table.metadata]
    return [side for side in sides if side not in effective]


def _connection(target: Session | Connection) -> Connection:
    return target.connection() if isinstance(target, Session) else target


def _isolation(connection: Connection) -> str:
    return str(connection.exec_driver_sql("SHOW transaction_isolation").scalar())


def _call(connection: Connection, tables: BM25Tables, event_name: str) -> None:
    schema = table_schema(connection, tables.table)
    ddl.run(connection, [ddl.CallFunction(tables.base_name, schema, event_name)])


def rebuild(target: Session | Connection, model: Any) -> None:
    """Recompute all BM25 statistics of ``model``'s table from its rows, in the current
    READ COMMITTED transaction (the table is locked against writers meanwhile)::

        vecorm.search.bm25.rebuild(session, Document); session.commit()

    At REPEATABLE READ or SERIALIZABLE it raises :class:`~vecorm.errors.ConfigurationError`:
    such a transaction cannot see rows committed after it began, so their statistics would
    be lost.
    """
    tables = side_tables(model)
    connection = _connection(target)
    level = _isolation(connection)
    if level != "read committed":
        raise ConfigurationError(
            f"bm25.rebuild({tables.table.name}) needs a READ COMMITTED transaction, not "
            f"{level.upper()}: it could not see rows committed after this transaction began; "
            "run it in a new transaction at the default isolation level"
        )
    _call(connection, tables, "rebuild")


def compact(target: Session | Connection, model: Any) -> None:
    """Fold pending frequency deltas into the terms table now (writers do it every
    64 statements; this is for after a burst of small writes). Waits for a compaction in
    progress elsewhere. At REPEATABLE READ / SERIALIZABLE, when another compaction committed
    after this transaction began it raises :class:`~vecorm.errors.VecormError` (nothing is
    lost; the transaction stays usable): compact in a new transaction."""
    tables = side_tables(model)
    connection = _connection(target)
    _call(connection, tables, "compact")
    if _isolation(connection) == "read committed":
        return
    left = connection.execute(select(tables.deltas.c.id).limit(1)).first()
    if left is not None:
        raise VecormError(
            f"bm25.compact({tables.table.name}): another compaction committed after this "
            "transaction's snapshot, so these deltas cannot be folded here; nothing was lost "
            "and writers keep compacting; call compact() again in a new transaction"
        )


@contextmanager
def bulk_load(target: Session | Connection, model: Any) -> Iterator[None]:
    """Load many rows without per-statement statistics, then rebuild them once.

    Inside one READ COMMITTED transaction (like building an index after a load)::

        with session.begin(), vecorm.search.bm25.bulk_load(session, Document):
            session.execute(insert(Document), rows)

    At REPEATABLE READ / SERIALIZABLE a rebuild could not see other transactions' rows, so
    the triggers stay on instead (exact, and one batch per statement). An error inside the
    block propagates as it was raised.
    """
    connection = _connection(target)
    if _isolation(connection) != "read committed":
        yield
        if isinstance(target, Session):
            target.flush()
        return
    deferred = select(func.pg_catalog.set_config("vecorm.bm25_deferred", "on", true()))
    resumed = select(func.pg_catalog.set_config("vecorm.bm25_deferred", "off", true()))
    connection.execute(deferred)
    try:
        yield
        if isinstance(target, Session):
            target.flush()
    except BaseException:
        # Put the triggers back and count the rows loaded so far if the transaction still
        # works; if the database aborted it, its rollback undoes both. Never hide the error.
        with suppress(SQLAlchemyError):
            connection.execute(resumed)
            rebuild(connection, model)
        raise
    connection.execute(resumed)
    rebuild(connection, model)


def reconcile_document_count(connection: Connection, table_name: str, schema: str) -> int:
    """Count into the statistics the documents no trigger counted; returns how many.

    The online adoption (``SearchConfig(search_vector="trigger")``, docs/adopting.md) creates
    the BM25 triggers in the transaction that adds the (NULL) tsvector column, so every write
    after it is counted exactly, but the rows already there never were. A NULL tsvector has no
    lexemes and no length, so only the document count misses them; it is the table's row count
    minus the counted documents, read in one statement (one snapshot: a writer's rows and its
    deltas commit together), without a lock. Running it again adds nothing::

        reconcile_document_count(connection, "documents", "public")   # 200000, then 0
    """
    sql = _names(table_name, schema)
    missing = f"""
        WITH c AS (
          SELECT (SELECT pg_catalog.count(*) FROM {sql["table"]})
               - (SELECT coalesce(pg_catalog.sum(df), 0) FROM {sql["terms"]} WHERE term = '')
               - (SELECT coalesce(pg_catalog.sum(df), 0) FROM {sql["deltas"]} WHERE term = '')
               AS missing
        )
        INSERT INTO {sql["deltas"]} (term, df, length)
        SELECT '', c.missing, 0 FROM c WHERE c.missing <> 0
        RETURNING df"""
    added = connection.exec_driver_sql(missing).scalar()
    return int(added or 0)


def _names(table_name: str, schema: str) -> dict[str, str]:
    def qualified(name: str) -> str:
        return qualified_in(PREPARER, schema, name)

    return {
        "table": qualified(table_name),
        "terms": qualified(f"{table_name}_bm25_terms"),
        "deltas": qualified(f"{table_name}_bm25_deltas"),
    }
