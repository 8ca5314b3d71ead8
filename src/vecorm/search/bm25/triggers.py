"""The SQL of the BM25 trigger functions and triggers: pinned ``search_path``, everything
qualified, writers that only append."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import (
    Table,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Connection

from vecorm.errors import ConfigurationError
from vecorm.search.bm25.tables import COMPACT_EVERY, PREPARER, BM25Tables

#
# Every function vecorm creates pins ``search_path = pg_catalog, pg_temp`` (PostgreSQL's advice
# for functions run on behalf of other roles): unqualified functions and operators then resolve
# in pg_catalog only (pg_temp is never searched for them), so no role that can create objects on
# a writer's search_path can slip an overload in. Tables are schema-qualified, with the schema
# the table lives in (resolved when the DDL runs, see :func:`table_schema`), and so are the
# functions called. Writers only *append* to the side tables and never read shared counts, so
# unrelated SERIALIZABLE writers never conflict through vecorm.

SEARCH_PATH = "pg_catalog, pg_temp"


def _number(value: float) -> str:
    return repr(float(value))


_SCHEMA_OF = sql_text(
    "SELECT n.nspname FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
    "WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:name)"
)


def table_schema(connection: Connection, table: Table) -> str:
    """The schema ``table`` lives in on ``connection`` (its own, or the one the connection's
    ``search_path`` resolves it to, else the connection's current schema)."""
    if table.schema:
        return table.schema
    found = connection.execute(_SCHEMA_OF, {"name": PREPARER.quote(table.name)}).scalar()
    if found is None:
        found = connection.exec_driver_sql("SELECT pg_catalog.current_schema()").scalar()
    if found is None:
        raise ConfigurationError(
            f"table {table.name!r}: no schema to create its BM25 functions in (the "
            "search_path names no existing schema); give the model a schema"
        )
    return str(found)


class _Sql:
    """Text of the trigger functions for one table (identifiers quoted and schema-qualified,
    functions qualified, constants literal)."""

    def __init__(self, tables: BM25Tables, schema: str) -> None:
        self.t = tables
        self.schema = schema
        self.table = self.qualified(tables.table.name)
        self.postings = self.qualified(tables.postings.name)
        self.terms = self.qualified(tables.terms.name)
        self.deltas = self.qualified(tables.deltas.name)
        self.statements = self.qualified(f"{tables.table.name}_bm25_statements")
        self.avgdl = self.qualified(f"{tables.table.name}_bm25_avgdl")
        self.keys = [PREPARER.quote(key) for key in tables.keys]
        self.vector = PREPARER.quote(tables.config.tsvector_column)
        self.k1 = _number(tables.settings.k1)
        self.b = _number(tables.settings.b)

    def qualified(self, name: str) -> str:
        # signature() renders with no schema: '""' as SQLAlchemy 2.1 quotes it (2.0 cannot).
        schema = PREPARER.quote_schema(self.schema) if self.schema else '""'
        return f"{schema}.{PREPARER.quote(name)}"

    def regclass(self, qualified: str) -> str:
        return "'" + qualified.replace("'", "''") + "'::pg_catalog.regclass"

    def key_list(self, alias: str) -> str:
        return ", ".join(f"{alias}.{key}" for key in self.keys)

    def key_match(self, left: str, right: str) -> str:
        return " AND ".join(f"{left}.{key} = {right}.{key}" for key in self.keys)

    @staticmethod
    def tf(alias: str) -> str:
        # A stripped tsvector has no positions: count the lexeme once.
        return f"coalesce(pg_catalog.array_length({alias}.positions, 1), 1)"

    def doc_length(self, alias: str) -> str:
        return (
            f"(SELECT coalesce(pg_catalog.sum({self.tf('u')}), 0) "
            f"FROM pg_catalog.unnest({alias}.{self.vector}) u)"
        )

    def counts(self, source: str, sign: str) -> str:
        """Append the document count / total length and the per-lexeme document frequencies
        of ``source`` to the deltas (``sign`` '-' removes); the totals go INTO batch_*."""
        return f"""
    INSERT INTO {self.deltas} (term, df, length)
    SELECT '', {sign}pg_catalog.count(*), {sign}coalesce(pg_catalog.sum(x.dl), 0)
    FROM (SELECT {self.doc_length("s")} AS dl FROM {source} s) x
    HAVING pg_catalog.count(*) > 0
    RETURNING df, length INTO batch_documents, batch_length;
    INSERT INTO {self.deltas} (term, df, length)
    SELECT u.lexeme, {sign}pg_catalog.count(*), 0
    FROM {source} s, pg_catalog.unnest(s.{self.vector}) u
    GROUP BY u.lexeme;"""

    def add(self, source: str) -> str:
        """Statements adding the documents of ``source`` (pk columns + tsvector).

        The postings' ``impact`` only orders a term's postings for pruning (scores are exact
        whatever it holds), so it takes the average length from a hint that compaction keeps
        in a sequence (a sequence is read without a predicate lock), or from this batch."""
        return f"""{self.counts(source, "")}
    SELECT CASE WHEN h.last_value > 0 THEN h.last_value::float8 / 1000.0 END
      INTO avgdl FROM {self.avgdl} h;
    IF avgdl IS NULL THEN
      avgdl := CASE WHEN batch_length > 0 THEN batch_length::float8 / batch_documents
                    ELSE 1.0 END;
    END IF;
{self.postings_insert(source)}"""

    def postings_insert(self, source: str) -> str:
        # Document lengths first (MATERIALIZED): else the planner re-sums them per posting.
        return f"""    WITH d AS MATERIALIZED (
      SELECT {self.key_list("s")}, s.{self.vector} AS vector, {self.doc_length("s")} AS dl
      FROM {source} s
    )
    INSERT INTO {self.postings} ({", ".join(self.keys)}, term, tf, dl, impact)
    SELECT {self.key_list("d")}, u.lexeme, {self.tf("u")}, d.dl,
           ({self.tf("u")} * ({self.k1} + 1.0)) / ({self.tf("u")}
             + {self.k1} * (1.0 - {self.b} + {self.b} * d.dl / avgdl))
    FROM d CROSS JOIN LATERAL pg_catalog.unnest(d.vector) u;"""

    def remove(self, source: str) -> str:
        """Statements removing the documents of ``source`` (as they were stored)."""
        return f"""{self.counts(source, "-")}
    DELETE FROM {self.postings} p USING {source} s WHERE {self.key_match("p", "s")};"""

    def fold(self) -> str:
        """Fold the deltas this transaction sees into the terms table (sorted upsert), then
        refresh the average-length hint."""
        return f"""
      WITH moved AS (DELETE FROM {self.deltas} RETURNING term, df, length)
      INSERT INTO {self.terms} AS t (term, df, length)
      SELECT term, pg_catalog.sum(df), pg_catalog.sum(length) FROM moved
      GROUP BY term ORDER BY term
      ON CONFLICT (term) DO UPDATE
        SET df = t.df + excluded.df, length = t.length + excluded.length;
      DELETE FROM {self.terms} WHERE df = 0 AND term <> '';
{self.refresh_hint()}"""

    def refresh_hint(self) -> str:
        return f"""      PERFORM pg_catalog.setval({self.regclass(self.avgdl)},
        coalesce((SELECT pg_catalog.round(1000.0 * length / df)::bigint FROM {self.terms}
                  WHERE term = '' AND df > 0), 0), true);"""

    def compaction(self) -> str:
        """Every COMPACT_EVERY-th writing statement compacts, unless another transaction is
        compacting (nobody waits). At REPEATABLE READ / SERIALIZABLE a compaction that
        committed after this transaction's snapshot makes the fold fail; the fold then rolls
        back alone (a subtransaction) and a later statement compacts."""
        return f"""
    IF pg_catalog.mod(pg_catalog.nextval({self.regclass(self.statements)}), {COMPACT_EVERY}) = 0
       AND pg_catalog.pg_try_advisory_xact_lock({self.t.lock_key}) THEN
      BEGIN{self.fold()}
      EXCEPTION WHEN serialization_failure THEN
        NULL;
      END;
    END IF;"""

    def function(
        self, name: str, body: str, *, returns: str = "trigger", variables: Sequence[str] = ()
    ) -> str:
        declare = "".join(f"    {variable};\n" for variable in variables)
        return_line = "    RETURN NULL;\n" if returns == "trigger" else ""
        return (
            f"CREATE OR REPLACE FUNCTION {self.qualified(name)}() RETURNS {returns}\n"
            f"LANGUAGE plpgsql SET search_path = {SEARCH_PATH} AS $vecorm$\n"
            f"{'DECLARE' + chr(10) + declare if declare else ''}BEGIN{body}\n"
            f"{return_line}END;\n$vecorm$"
        )


_WRITER_VARIABLES = ("avgdl float8", "batch_documents bigint", "batch_length bigint")


def function_definitions(tables: BM25Tables, schema: str) -> dict[str, str]:
    """``{function name: CREATE OR REPLACE FUNCTION ...}`` for the triggers, rebuild and
    compact, for the table in ``schema``."""
    sql = _Sql(tables, schema)
    columns = ", ".join(sql.keys) + f", {sql.vector}"
    changed_old = f"(SELECT {columns} FROM old_rows EXCEPT ALL SELECT {columns} FROM new_rows)"
    changed_new = f"(SELECT {columns} FROM new_rows EXCEPT ALL SELECT {columns} FROM old_rows)"
    compaction = sql.compaction()
    rebuild_body = f"""
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
      RAISE EXCEPTION USING
        ERRCODE = 'object_not_in_prerequisite_state',
        MESSAGE = 'vecorm: rebuilding BM25 statistics needs a READ COMMITTED transaction',
        HINT = 'at ' || pg_catalog.current_setting('transaction_isolation')
          || ' the rebuild cannot see rows committed after the transaction began';
    END IF;
    LOCK TABLE {sql.table} IN SHARE MODE;
    DELETE FROM {sql.postings};
    DELETE FROM {sql.deltas};
    DELETE FROM {sql.terms};
    INSERT INTO {sql.terms} (term, df, length)
    SELECT '', pg_catalog.count(*), coalesce(pg_catalog.sum(x.dl), 0)
    FROM (SELECT {sql.doc_length("s")} AS dl FROM {sql.table} s) x;
    INSERT INTO {sql.terms} (term, df, length)
    SELECT u.lexeme, pg_catalog.count(*), 0
    FROM {sql.table} s, pg_catalog.unnest(s.{sql.vector}) u
    GROUP BY u.lexeme ORDER BY u.lexeme;
    SELECT CASE WHEN df > 0 AND length > 0 THEN length::float8 / df ELSE 1.0 END
      INTO avgdl FROM {sql.terms} WHERE term = '';
{sql.refresh_hint()}
{sql.postings_insert(sql.table)}"""
    defer_check = """
    IF pg_catalog.current_setting('vecorm.bm25_deferred', true) = 'on' THEN
        RETURN NULL;
    END IF;"""
    # TRUNCATE is not MVCC-safe: mirror it with TRUNCATE (a DELETE would keep the postings
    # that this transaction's snapshot cannot see).
    truncate_body = f"""
    TRUNCATE {sql.postings}, {sql.deltas}, {sql.terms};"""
    compact_body = f"""
    PERFORM pg_catalog.pg_advisory_xact_lock({tables.lock_key});
    BEGIN{sql.fold()}
    EXCEPTION WHEN serialization_failure THEN
      NULL;  -- bm25.compact() reports it: the deltas this transaction sees are still there
    END;"""
    name = tables.function_name
    return {
        name("insert"): sql.function(
            name("insert"),
            defer_check + sql.add("new_rows") + compaction,
            variables=_WRITER_VARIABLES,
        ),
        name("update"): sql.function(
            name("update"),
            defer_check + sql.remove(changed_old) + sql.add(changed_new) + compaction,
            variables=_WRITER_VARIABLES,
        ),
        name("delete"): sql.function(
            name("delete"),
            defer_check + sql.remove("old_rows") + compaction,
            variables=_WRITER_VARIABLES[1:],
        ),
        name("truncate"): sql.function(name("truncate"), truncate_body),
        name("rebuild"): sql.function(
            name("rebuild"), rebuild_body, returns="void", variables=("avgdl float8",)
        ),
        name("compact"): sql.function(name("compact"), compact_body, returns="void"),
    }


TRIGGER_EVENTS: tuple[str, ...] = ("insert", "update", "delete", "truncate")


def trigger_names(tables: BM25Tables) -> list[str]:
    """The names of the statement triggers, one per event of :data:`TRIGGER_EVENTS`."""
    return [tables.trigger_name(event_name) for event_name in TRIGGER_EVENTS]


def trigger_definitions(tables: BM25Tables, schema: str) -> dict[str, str]:
    """``{trigger name: CREATE TRIGGER ...}``: one statement-level trigger per event."""
    sql = _Sql(tables, schema)
    referencing = {
        "insert": "REFERENCING NEW TABLE AS new_rows ",
        "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows ",
        "delete": "REFERENCING OLD TABLE AS old_rows ",
        "truncate": "",
    }
    definitions = {}
    for event_name in TRIGGER_EVENTS:
        name = tables.trigger_name(event_name)
        definitions[name] = (
            f"CREATE TRIGGER {PREPARER.quote(name)} AFTER {event_name.upper()} ON {sql.table} "
            f"{referencing[event_name]}FOR EACH STATEMENT "
            f"EXECUTE FUNCTION {sql.qualified(tables.function_name(event_name))}()"
        )
    return definitions


COMMENT_PREFIX = "vecorm bm25 "


def indexed_expression(tables: BM25Tables) -> str:
    """SQL of the generated tsvector expression the statistics are computed from."""
    computed = tables.table.c[tables.config.tsvector_column].computed
    return "" if computed is None else str(computed.sqltext)


def signature(tables: BM25Tables) -> str:
    """A digest of the function and trigger definitions and of the indexed tsvector
    expression, stored as the insert function's comment so that Alembic and ``vecorm doctor``
    can tell whether the database has this version (statistics built from another
    expression are stale). Independent of the schema the table is found in."""
    schema = tables.table.schema or ""
    definitions = [
        *function_definitions(tables, schema).values(),
        *trigger_definitions(tables, schema).values(),
        indexed_expression(tables),
    ]
    return hashlib.sha256("\n".join(definitions).encode()).hexdigest()[:16]


def replica_identity_statement(tables: BM25Tables, schema: str) -> str:
    """The postings have no primary key (its INCLUDE would not survive Alembic): their unique
    (document, lexeme) index identifies rows for logical replication instead."""
    sql = _Sql(tables, schema)
    key_index = PREPARER.quote(f"ux_{tables.table.name}_bm25_postings_key")
    return f"ALTER TABLE {sql.postings} REPLICA IDENTITY USING INDEX {key_index}"


def create_statements(
    tables: BM25Tables, schema: str, *, with_replica_identity: bool = True
) -> list[str]:
    """DDL creating the functions and triggers (the side tables come from the metadata),
    after the side tables exist (a migration runs it after their ``create_table``).

    Replaces earlier versions: triggers are dropped and made again."""
    sql = _Sql(tables, schema)
    drops = [
        f"DROP TRIGGER IF EXISTS {PREPARER.quote(name)} ON {sql.table}"
        for name in trigger_definitions(tables, schema)
    ]
    comment = (
        f"COMMENT ON FUNCTION {sql.qualified(tables.function_name('insert'))}() "
        f"IS '{COMMENT_PREFIX}{signature(tables)}'"
    )
    return [
        f"CREATE SEQUENCE IF NOT EXISTS {sql.statements}",
        f"CREATE SEQUENCE IF NOT EXISTS {sql.avgdl} MINVALUE 0 START WITH 0",
        *([replica_identity_statement(tables, schema)] if with_replica_identity else []),
        *function_definitions(tables, schema).values(),
        *drops,
        *trigger_definitions(tables, schema).values(),
        comment,
    ]


def drop_statements(tables: BM25Tables, schema: str) -> list[str]:
    """DDL dropping the functions and, with them (``CASCADE``), the triggers; the sequences."""
    sql = _Sql(tables, schema)
    return [
        *(
            f"DROP FUNCTION IF EXISTS {sql.qualified(name)}() CASCADE"
            for name in function_definitions(tables, schema)
        ),
        f"DROP SEQUENCE IF EXISTS {sql.statements}",
        f"DROP SEQUENCE IF EXISTS {sql.avgdl}",
    ]
