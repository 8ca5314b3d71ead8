"""The privileges an application role needs on a searchable model, and nothing more.

vecorm's trigger functions run as the role that writes the rows (``SECURITY INVOKER``), so a
role that writes a searchable table also writes its BM25 side tables and sequences; a role
that only searches reads them. :func:`grant_access` grants exactly that to a role that owns
nothing::

    vecorm.grant_access(session, Document, "app")                 # search + write
    vecorm.grant_access(session, Document, "reporting", write=False)   # search only
    session.commit()

In a migration: ``op.grant_search_access("documents", "app")`` (see docs/security.md for the
list of privileges and why each is needed). The role also needs ``USAGE`` on the schema when
it is not ``public``; that, and ``CONNECT``, stay the application's own grants.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, inspect, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from vecorm.errors import ConfigurationError
from vecorm.schema.pgcatalog import qualified_in, relation_exists
from vecorm.search import bm25

_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]

_OWNED_SEQUENCES = text(
    "SELECT n.nspname, c.relname FROM pg_catalog.pg_depend d "
    "JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.objid "
    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
    "WHERE d.refobjid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table) "
    "AND d.deptype OPERATOR(pg_catalog.=) 'a' AND c.relkind OPERATOR(pg_catalog.=) 'S' "
    "ORDER BY c.relname"
)


def _qualified(schema: str, name: str) -> str:
    return qualified_in(_PREPARER, schema, name)


def grant_statements(
    table_name: str,
    role: str,
    *,
    schema: str,
    bm25_statistics: bool,
    write: bool = True,
    truncate: bool = False,
    owned_sequences: tuple[str, ...] = (),
    bm25_sequences: bool | tuple[str, ...] = True,
) -> list[str]:
    """``GRANT`` statements giving ``role`` search (and ``write``) access to ``table_name``
    in ``schema`` and, with ``bm25_statistics``, to its side tables and sequences.
    ``owned_sequences`` are qualified names of the table's serial sequences;
    ``bm25_sequences``: ``True`` for the statistics' own two sequences, or the qualified
    names of those they use instead (kept per distribution value: the deltas' serial)."""
    if not role or not isinstance(role, str):
        raise ConfigurationError(f"role must be a role name, not {role!r}")
    grantee = _PREPARER.quote(role)
    table = _qualified(schema, table_name)
    main = ["SELECT"] + (["INSERT", "UPDATE", "DELETE"] if write else [])
    main += ["TRUNCATE"] if truncate else []
    statements = [f"GRANT {', '.join(main)} ON TABLE {table} TO {grantee}"]
    if write:
        statements += [f"GRANT USAGE ON SEQUENCE {name} TO {grantee}" for name in owned_sequences]
    if not bm25_statistics:
        return statements
    side_privileges = {
        "postings": ["INSERT", "DELETE"],
        "terms": ["INSERT", "UPDATE", "DELETE"],  # compaction upserts the counts
        "deltas": ["INSERT", "DELETE"],
    }
    for side, privileges in side_privileges.items():
        granted = ["SELECT"] + (privileges if write else []) + (["TRUNCATE"] if truncate else [])
        statements.append(
            f"GRANT {', '.join(granted)} ON TABLE "
            f"{_qualified(schema, f'{table_name}_bm25_{side}')} TO {grantee}"
        )
    if write and not isinstance(bm25_sequences, bool):
        statements += [f"GRANT USAGE ON SEQUENCE {name} TO {grantee}" for name in bm25_sequences]
    elif write and bm25_sequences:
        # nextval counts statements; the average-length hint is read, and set by compaction.
        statements.append(
            f"GRANT USAGE ON SEQUENCE {_qualified(schema, f'{table_name}_bm25_statements')} "
            f"TO {grantee}"
        )
        statements.append(
            f"GRANT SELECT, UPDATE ON SEQUENCE {_qualified(schema, f'{table_name}_bm25_avgdl')} "
            f"TO {grantee}"
        )
    return statements


def revoke_statements(grants: list[str]) -> list[str]:
    """The ``REVOKE`` undoing each of ``grants`` (in reverse order)."""
    revoked = []
    for statement in reversed(grants):
        head, _, grantee = statement.rpartition(" TO ")
        revoked.append("REVOKE " + head.removeprefix("GRANT ") + " FROM " + grantee)
    return revoked


def table_grants(
    connection: Connection,
    table: Table,
    role: str,
    *,
    bm25_statistics: bool,
    write: bool = True,
    truncate: bool = False,
) -> list[str]:
    """:func:`grant_statements` for ``table`` as it is on ``connection`` (its schema and its
    serial sequences read from the catalog)."""
    schema = bm25.table_schema(connection, table)

    def owned_by(name: str) -> tuple[str, ...]:
        found = connection.execute(_OWNED_SEQUENCES, {"table": _qualified(schema, name)})
        return tuple(_qualified(row[0], row[1]) for row in found)

    owned = owned_by(table.name)
    counter = _qualified(schema, f"{table.name}_bm25_statements")
    sequences: bool | tuple[str, ...] = True
    if bm25_statistics and not relation_exists(connection, counter):
        # Statistics kept per distribution value: no sequence but the deltas' serial.
        sequences = owned_by(f"{table.name}_bm25_deltas")
    return grant_statements(
        table.name,
        role,
        schema=schema,
        bm25_statistics=bm25_statistics,
        write=write,
        truncate=truncate,
        owned_sequences=owned,
        bm25_sequences=sequences,
    )


def grant_access(
    target: Session | Connection,
    model: Any,
    role: str,
    *,
    write: bool = True,
    truncate: bool = False,
) -> list[str]:
    """Grant ``role`` what it needs to search (and with ``write``, to write) ``model``'s rows,
    in the current transaction; returns the statements run.

    ``truncate=True`` also lets it ``TRUNCATE`` the table (the statistics are truncated with
    it)::

        vecorm.grant_access(session, Document, "app"); session.commit()
    """
    connection = target.connection() if isinstance(target, Session) else target
    table = inspect(model).local_table
    if not isinstance(table, Table):
        raise ConfigurationError(f"{model!r} is not mapped to a table")
    statements = table_grants(
        connection,
        table,
        role,
        bm25_statistics=bm25.has_bm25(model),
        write=write,
        truncate=truncate,
    )
    for statement in statements:
        connection.exec_driver_sql(statement)
    return statements
