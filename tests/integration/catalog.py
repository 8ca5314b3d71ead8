"""Read what PostgreSQL actually stored: columns, generated expressions, indexes."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class IndexInfo:
    name: str
    method: str
    opclasses: tuple[str, ...]
    options: tuple[str, ...]
    definition: str


def column_types(conn: Connection, table: str, schema: str = "public") -> dict[str, str]:
    rows = conn.execute(
        text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = :t AND n.nspname = :s AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        {"t": table, "s": schema},
    )
    return {name: type_ for name, type_ in rows}


def generated_expression(
    conn: Connection, table: str, column: str, schema: str = "public"
) -> tuple[str, str]:
    """(attgenerated, expression) of a generated column: 's' means STORED."""
    row = conn.execute(
        text(
            "SELECT a.attgenerated, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE c.relname = :t AND n.nspname = :s AND a.attname = :c"
        ),
        {"t": table, "s": schema, "c": column},
    ).one()
    return str(row[0]), str(row[1])


def indexes(conn: Connection, table: str, schema: str = "public") -> dict[str, IndexInfo]:
    rows = conn.execute(
        text(
            "SELECT i.relname, am.amname, "
            " ARRAY(SELECT opc.opcname FROM unnest(x.indclass) WITH ORDINALITY u(oid, n) "
            "       JOIN pg_opclass opc ON opc.oid = u.oid ORDER BY u.n), "
            " coalesce(i.reloptions, '{}'), pg_get_indexdef(i.oid) "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
            "JOIN pg_am am ON am.oid = i.relam WHERE t.relname = :t AND n.nspname = :s"
        ),
        {"t": table, "s": schema},
    )
    return {
        name: IndexInfo(name, method, tuple(opclasses), tuple(sorted(options)), definition)
        for name, method, opclasses, options, definition in rows
    }
