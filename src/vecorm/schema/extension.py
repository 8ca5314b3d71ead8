"""The ``vector`` extension, made sure of before a searchable table is created.

``Base.metadata.create_all(engine)`` on a database without pgvector would fail deep inside
PostgreSQL (``type "vector" does not exist``). Before each searchable table, vecorm creates the
extension when it is missing (pgvector is a trusted extension: a role with ``CREATE`` on the
database may), or raises a :class:`~vecorm.errors.ConfigurationError` saying what to run::

    event.listen(table, "before_create", ensure_vector_extension)   # the mixin does this
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from vecorm.errors import ConfigurationError

_INSTALLED = text(
    "SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'vector'"
)


def ensure_vector_extension(target: Table, connection: Connection, **_: Any) -> None:
    """Create the ``vector`` extension if the database lacks it, or explain why it cannot."""
    if connection.execute(_INSTALLED).scalar() is not None:
        return
    savepoint = connection.begin_nested() if connection.in_transaction() else None
    try:
        connection.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
    except DBAPIError as exc:
        if savepoint is not None:
            savepoint.rollback()
        raise ConfigurationError(
            f"cannot create table {target.name!r}: the database has no 'vector' extension and "
            f"this role cannot create it ({str(exc.orig).splitlines()[0]}); run "
            "CREATE EXTENSION vector as a role with CREATE on the database (or "
            "op.create_vector_extension() in a migration), or install pgvector on the server"
        ) from None
    if savepoint is not None:
        savepoint.commit()
