"""Whether a database is a Citus cluster, and by which column Citus distributes a table.

Asked by the layers that must act differently on a cluster: query-time settings are carried
to the workers (:mod:`vecorm.search.propagation`), and a backfill claims its batches one
distribution value at a time, since Citus runs ``FOR UPDATE`` only in a query routed to one
shard (:mod:`vecorm.embedding.backfill`)::

    is_citus(conn)                            # False on plain PostgreSQL (asked once)
    distribution_column(conn, Document.__table__)   # "tenant_id", or None
"""

from __future__ import annotations

from sqlalchemy import TableClause, text
from sqlalchemy.engine import Connection

from vecorm.schema.dbapi import execute_raw
from vecorm.schema.pgcatalog import qualified_table

_CITUS_KEY = "vecorm_citus"
_DETECT = (
    "SELECT pg_catalog.count(*) FROM pg_catalog.pg_extension "
    "WHERE extname OPERATOR(pg_catalog.=) 'citus'"
)
_DISTRIBUTION_SQL = text(
    "SELECT pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) "
    "FROM pg_catalog.pg_dist_partition p "
    "WHERE p.logicalrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table) "
    "AND p.partmethod OPERATOR(pg_catalog.=) 'h'"
)


def is_citus(conn: Connection) -> bool:
    """Whether ``conn``'s database has the ``citus`` extension: asked once per DBAPI
    connection (remembered in its ``info`` while the pool keeps it), on the DBAPI cursor
    (:func:`~vecorm.schema.dbapi.execute_raw`) so that it also serves inside SQLAlchemy's
    execution events."""
    info = conn.connection.info
    found = info.get(_CITUS_KEY)
    if found is None:
        found = bool(execute_raw(conn, _DETECT)[0])
        info[_CITUS_KEY] = found
    return bool(found)


def distribution_column(conn: Connection, table: TableClause) -> str | None:
    """The column Citus hash-distributes ``table`` by; ``None`` for a local or reference
    table, or without Citus."""
    if not is_citus(conn):
        return None
    found = conn.execute(_DISTRIBUTION_SQL, {"table": qualified_table(conn, table)}).scalar()
    return None if found is None else str(found)
