"""Vector indexes set aside during a bulk load and built again after it, as they were.

Loading rows into an HNSW index inserts each into the graph; building the graph once over
the loaded rows is several times faster (and an IVFFlat index built on an empty table has no
centroids worth the name). :func:`vector_indexes` reads the table's HNSW and IVFFlat indexes
from the catalog (``pg_get_indexdef``, tablespace, comment), :func:`drop_indexes` drops them
inside the caller's transaction and :func:`recreate_indexes` runs the saved definitions again,
so the index that comes back is the one that was there, name and all (Alembic autogenerate
sees no difference); a rollback brings the old one back instead::

    saved = vector_indexes(connection, Document.__table__)
    drop_indexes(connection, saved)
    ...  # COPY the rows
    recreate_indexes(connection, saved, maintenance_work_mem="1GB")

Dropping an index takes an ACCESS EXCLUSIVE lock on the table until the transaction ends:
readers of the table wait for the load. Partitioned tables keep their indexes (a partitioned
index's definition names only the parent), and so does a role that does not own the table
(only an owner may drop an index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Table, func, select, text, true
from sqlalchemy.engine import Connection

from vecorm.scale.index_build import format_memory, parse_memory
from vecorm.schema.pgcatalog import qualified_table

__all__ = ["SavedIndex", "drop_indexes", "recreate_indexes", "vector_indexes"]

_VECTOR_INDEXES = text(
    "SELECT n.nspname, i.relname, pg_catalog.pg_get_indexdef(i.oid), s.spcname, "
    "pg_catalog.obj_description(i.oid, 'pg_class') "
    "FROM pg_catalog.pg_index x "
    "JOIN pg_catalog.pg_class i ON i.oid OPERATOR(pg_catalog.=) x.indexrelid "
    "JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) x.indrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) i.relnamespace "
    "JOIN pg_catalog.pg_am a ON a.oid OPERATOR(pg_catalog.=) i.relam "
    "LEFT JOIN pg_catalog.pg_tablespace s ON s.oid OPERATOR(pg_catalog.=) i.reltablespace "
    "WHERE x.indrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table) "
    "AND c.relkind OPERATOR(pg_catalog.=) 'r' AND x.indisvalid "
    "AND pg_catalog.pg_has_role(c.relowner, 'USAGE') "
    "AND a.amname OPERATOR(pg_catalog.=) ANY (ARRAY['hnsw', 'ivfflat']) "
    "ORDER BY i.relname"
)
_COMMENT = text(
    "SELECT pg_catalog.format('COMMENT ON INDEX %I.%I IS %L', CAST(:schema AS pg_catalog.text), "
    "CAST(:name AS pg_catalog.text), CAST(:text AS pg_catalog.text))"
)
#: Run catalog text as it is: ``%`` in an index predicate is not a parameter marker.
_AS_IS = {"no_parameters": True}


@dataclass(frozen=True)
class SavedIndex:
    """An index as the catalog describes it: enough to create it again."""

    schema: str
    name: str
    definition: str
    tablespace: str | None = None
    comment: str | None = None


def vector_indexes(connection: Connection, table: Table) -> list[SavedIndex]:
    """The valid HNSW and IVFFlat indexes of ``table`` that the current role may drop (it
    acts as the table's owner); none on a partitioned table."""
    rows = connection.execute(_VECTOR_INDEXES, {"table": qualified_table(connection, table)}).all()
    return [
        SavedIndex(str(schema), str(name), str(definition), tablespace, comment)
        for schema, name, definition, tablespace, comment in rows
    ]


def drop_indexes(connection: Connection, indexes: Sequence[SavedIndex]) -> None:
    """``DROP INDEX`` each of ``indexes`` in the current transaction."""
    preparer = connection.dialect.identifier_preparer
    for index in indexes:
        name = f"{preparer.quote_schema(index.schema)}.{preparer.quote(index.name)}"
        connection.exec_driver_sql(f"DROP INDEX {name}", execution_options=_AS_IS)


def recreate_indexes(
    connection: Connection,
    indexes: Sequence[SavedIndex],
    *,
    maintenance_work_mem: str | None = None,
) -> None:
    """Create ``indexes`` again from their saved definitions, in their tablespace and with
    their comment; ``maintenance_work_mem`` (e.g. ``"1GB"``) applies to these builds only."""
    if not indexes:
        return
    restore: dict[str, str] = {}
    settings: dict[str, str | None] = {"default_tablespace": None}
    if maintenance_work_mem is not None:
        settings["maintenance_work_mem"] = format_memory(parse_memory(maintenance_work_mem))
    for name in settings:
        restore[name] = connection.execute(select(func.current_setting(name))).scalar_one()
    if "maintenance_work_mem" in settings:
        _set(connection, "maintenance_work_mem", settings["maintenance_work_mem"] or "")
    for index in indexes:
        _set(connection, "default_tablespace", index.tablespace or "")
        connection.exec_driver_sql(index.definition, execution_options=_AS_IS)
        if index.comment is not None:
            comment = connection.execute(
                _COMMENT, {"schema": index.schema, "name": index.name, "text": index.comment}
            ).scalar_one()
            connection.exec_driver_sql(comment, execution_options=_AS_IS)
    # Set LOCAL-style (a failed build's rollback restores them too): put them back now.
    for name, value in restore.items():
        _set(connection, name, value)


def _set(connection: Connection, name: str, value: str) -> None:
    connection.execute(select(func.set_config(name, value, true())))
