"""Statements run on a connection's DBAPI cursor, outside SQLAlchemy's execution events.

The query-time settings hook runs inside ``before_cursor_execute`` (:mod:`vecorm.search.settings`),
where executing through SQLAlchemy would fire the hook again; it and the Citus check
(:func:`vecorm.schema.cluster.is_citus`, asked from inside that hook) use this::

    execute_raw(conn, "SELECT pg_catalog.current_setting('hnsw.ef_search', true)")  # ('40',)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection


def execute_raw(conn: Connection, statement: str, arguments: Any = None) -> tuple[Any, ...]:
    """Run ``statement`` on ``conn``'s DBAPI connection, bypassing SQLAlchemy's events; the
    first row, if any (an empty tuple otherwise)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if arguments is None:
            cursor.execute(statement)
        else:
            cursor.execute(statement, arguments)
        row = cursor.fetchone() if cursor.description else None
    finally:
        cursor.close()
    return tuple(row or ())
