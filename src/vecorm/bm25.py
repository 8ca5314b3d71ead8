"""BM25 ranking computed in SQL from the model's generated ``tsvector``.

PostgreSQL's ``ts_rank`` knows nothing of the collection (how rare a word is, how long a
document is compared to the others), which is why full-text search in PostgreSQL ranks
poorly. BM25 needs three statistics, and vecorm keeps them in side tables that the database
maintains itself, in the writing transaction, whatever writes the rows (ORM, Core, raw SQL,
``COPY``; ``INSERT``, ``UPDATE`` of the text, ``DELETE``, ``TRUNCATE``):

``<table>_bm25_postings``
    One row per (document, lexeme): term frequency ``tf``, document length ``dl`` and an
    ``impact`` (the BM25 term-frequency part at write time). Covering indexes on (lexeme,
    impact) and (document, lexeme) let a query read a lexeme's postings, best first, or probe
    one, without touching the table; the opt-in MaxScore pruning (``BM25(prune_above=...)``)
    uses the impact order to skip most postings of very common words.
``<table>_bm25_terms``
    Compacted document frequency per lexeme; the row for ``''`` holds the number of
    documents and their total length.
``<table>_bm25_deltas``
    Append-only changes to those counts, one row per lexeme per statement. Writers only
    append, so concurrent writers never wait on a hot row for a common word; every 64th
    statement folds the deltas into ``_terms`` in sorted order under an advisory lock that
    nobody waits for (``pg_try_advisory_xact_lock``).

Statement-level ``AFTER`` triggers with transition tables (one per event: PostgreSQL refuses
transition tables on a multi-event trigger) do the bookkeeping, once per statement, so a
``COPY`` or a multi-row ``INSERT`` is one batch. The mixin declares the tables and
``create_all`` creates them with the triggers; :func:`rebuild` recomputes everything (for
rows that existed before, or after :func:`bulk_load`)::

    class Document(vecorm.Searchable, Base):
        __tablename__ = "documents"
        __vecorm__ = vecorm.SearchConfig(fields=("title", "body"), dimensions=384)
        ...

    session.execute(Document.text_search("statin myopathy risk", k=10)).all()   # BM25
    with vecorm.bm25.bulk_load(session, Document):      # statistics rebuilt once at the end
        session.execute(insert(Document), rows)

Scores are Lucene's BM25: ``sum qtf * idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl))``
with ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))``, where ``tf`` counts the positions of
the lexeme in the ``tsvector``, ``dl`` the positions of all its lexemes and ``qtf`` the
lexeme's count in the query. See docs/search-quality.md.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    REAL,
    BigInteger,
    Column,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    event,
    func,
    literal,
    literal_column,
    select,
    true,
    union_all,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import REGCONFIG
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.schema import SchemaItem
from sqlalchemy.sql.selectable import CompoundSelect

from vecorm import catalog
from vecorm.catalog import pg
from vecorm.config import BM25, SearchConfig
from vecorm.errors import ConfigurationError, VecormError
from vecorm.query import keys_equal, keys_in, row_limit

Mode = Literal["any", "all", "phrase", "websearch"]
MODES: tuple[str, ...] = ("any", "all", "phrase", "websearch")
#: Statements between two compactions of the delta table.
COMPACT_EVERY = 64
_SIDE_COLUMNS = frozenset({"term", "tf", "dl", "impact"})
_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class BM25Tables:
    """The side tables and DDL names of one searchable table."""

    table: Table
    postings: Table
    terms: Table
    deltas: Table
    config: SearchConfig

    @property
    def settings(self) -> BM25:
        assert self.config.bm25 is not None
        return self.config.bm25

    @property
    def keys(self) -> tuple[str, ...]:
        """Primary-key column names (shared by the table and the postings)."""
        return tuple(column.name for column in self.table.primary_key.columns)

    def qualified(self, name: str) -> str:
        """``"schema"."name"`` (quoted) of an object in the table's schema."""
        if self.table.schema:
            return f"{_PREPARER.quote_schema(self.table.schema)}.{_PREPARER.quote(name)}"
        return _PREPARER.quote(name)

    @property
    def base_name(self) -> str:
        return self.table.name

    def function_name(self, event_name: str) -> str:
        return f"{self.base_name}_bm25_{event_name}"

    def trigger_name(self, event_name: str) -> str:
        return f"{self.base_name}_bm25_{event_name}"

    @property
    def lock_key(self) -> int:
        """Advisory-lock key for compaction: stable across processes."""
        name = f"vecorm.bm25:{self.table.schema or ''}.{self.table.name}".encode()
        return int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)


# Side tables per searchable table; kept off Table.info so Alembic never renders it.
_registry: weakref.WeakKeyDictionary[Table, BM25Tables] = weakref.WeakKeyDictionary()


def _tables_of(table: Table) -> BM25Tables | None:
    return _registry.get(table)


def declared_tables(metadata: MetaData) -> list[BM25Tables]:
    """The :class:`BM25Tables` of every searchable table in ``metadata``."""
    found = (_tables_of(table) for table in metadata.tables.values())
    return [tables for tables in found if tables is not None]


def side_tables(model_or_table: Any) -> BM25Tables:
    """The :class:`BM25Tables` of a searchable model (or its table).

    Raises :class:`~vecorm.ConfigurationError` when the model keeps no BM25 statistics.
    """
    table = model_or_table if isinstance(model_or_table, Table) else None
    if table is None:
        from sqlalchemy import inspect

        table = inspect(model_or_table).local_table
    assert isinstance(table, Table)
    tables = _tables_of(table)
    if tables is None:
        raise ConfigurationError(
            f"table {table.name!r} keeps no BM25 statistics: its SearchConfig has bm25=None; "
            "use ranking='ts_rank' or set SearchConfig(bm25=vecorm.BM25())"
        )
    return tables


def _check_names(table: Table) -> None:
    if len(table.name) > 48:
        raise ConfigurationError(
            f"table {table.name!r}: BM25 side-table names would exceed PostgreSQL's 63 "
            "characters; shorten __tablename__ to 48 characters or set SearchConfig(bm25=None)"
        )
    clash = _SIDE_COLUMNS & {column.name for column in table.primary_key.columns}
    if clash:
        raise ConfigurationError(
            f"table {table.name!r}: primary-key column(s) {sorted(clash)} clash with the BM25 "
            "postings columns term/tf/dl/impact; rename them or set SearchConfig(bm25=None)"
        )
    if not table.primary_key.columns:
        raise ConfigurationError(f"table {table.name!r} needs a primary key for BM25")


def attach(table: Table, config: SearchConfig) -> BM25Tables:
    """Declare the side tables in ``table``'s metadata and hook their triggers to
    ``create_all`` / ``drop_all``. Called by the mixin; idempotent."""
    existing = _tables_of(table)
    if existing is not None:
        return existing
    _check_names(table)
    metadata: MetaData = table.metadata
    schema = table.schema
    keys = list(table.primary_key.columns)

    def key_columns() -> list[SchemaItem]:
        return [Column(key.name, key.type, nullable=False) for key in keys]

    name = table.name
    postings = Table(
        f"{name}_bm25_postings",
        metadata,
        *key_columns(),
        Column("term", Text, nullable=False),
        Column("tf", Integer, nullable=False),
        Column("dl", Integer, nullable=False),
        Column("impact", REAL, nullable=False),
        # Unique (document, term) covering tf and dl: a rescore probes it index-only (an
        # index rather than a primary key, whose INCLUDE Alembic would not render).
        Index(
            f"ux_{name}_bm25_postings_key",
            *(key.name for key in keys),
            "term",
            unique=True,
            postgresql_include=["tf", "dl"],
        ),
        schema=schema,
        comment="vecorm BM25 postings, maintained by triggers",
    )
    Index(
        f"ix_{name}_bm25_postings_impact",
        postings.c.term,
        postings.c.impact.desc(),
        postgresql_include=[key.name for key in keys] + ["tf", "dl"],
    )
    terms = Table(
        f"{name}_bm25_terms",
        metadata,
        Column("term", Text, primary_key=True),
        Column("df", BigInteger, nullable=False),
        Column("length", BigInteger, nullable=False),
        schema=schema,
        comment="vecorm BM25 document frequencies ('' = document count and total length)",
    )
    deltas = Table(
        f"{name}_bm25_deltas",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("term", Text, nullable=False),
        Column("df", BigInteger, nullable=False),
        Column("length", BigInteger, nullable=False),
        Index(f"ix_{name}_bm25_deltas_term", "term"),
        schema=schema,
        comment="vecorm BM25 pending frequency changes, compacted into the terms table",
    )
    tables = BM25Tables(table, postings, terms, deltas, config)
    _registry[table] = tables
    # The trigger functions reference the side tables, which create_all makes after the
    # main table (metadata order); PL/pgSQL resolves names at run time, so order is moot.
    event.listen(table, "after_create", _create_ddl)
    event.listen(table, "before_drop", _drop_ddl)
    event.listen(table, "after_drop", _drop_side_tables)
    event.listen(postings, "after_create", _postings_created)
    return tables


def _create_ddl(target: Table, connection: Connection, **kw: Any) -> None:
    tables = _tables_of(target)
    if tables is None:
        return
    schema = table_schema(connection, target)
    sql = _Sql(tables, schema)
    # Side tables left by a ``DROP TABLE ... CASCADE`` (PostgreSQL cannot drop them with
    # their table) describe rows that are gone: the new table starts empty, so must they.
    leftovers = [
        side
        for side in (sql.postings, sql.terms, sql.deltas)
        if connection.execute(_EXISTS, {"name": side}).scalar() is not None
    ]
    if leftovers:
        connection.exec_driver_sql(f"TRUNCATE {', '.join(leftovers)}")
    # ``Model.__table__.create()`` or ``create_all(tables=[...])`` without the side
    # tables: make them here; a create_all that includes them makes them itself.
    for side_table in _not_in_this_run(tables, kw):
        side_table.create(connection, checkfirst=True)
    for statement in create_statements(tables, schema, with_replica_identity=False):
        connection.exec_driver_sql(statement)
    connection.exec_driver_sql(f"SELECT pg_catalog.setval({sql.regclass(sql.avgdl)}, 0, true)")


def _postings_created(target: Table, connection: Connection, **_: Any) -> None:
    for tables in _registry.values():
        if tables.postings is target:
            statement = replica_identity_statement(tables, table_schema(connection, target))
            connection.exec_driver_sql(statement)


def _drop_ddl(target: Table, connection: Connection, **_: Any) -> None:
    tables = _tables_of(target)
    if tables is not None:
        for statement in drop_statements(tables, table_schema(connection, target)):
            connection.exec_driver_sql(statement)


def _drop_side_tables(target: Table, connection: Connection, **kw: Any) -> None:
    tables = _tables_of(target)
    if tables is not None:
        for side in _not_in_this_run(tables, kw):
            side.drop(connection, checkfirst=True)


def _not_in_this_run(tables: BM25Tables, kw: Mapping[str, Any]) -> list[Table]:
    """Side tables that the running create_all / drop_all (if any) will not handle."""
    sides = [tables.postings, tables.terms, tables.deltas]
    if not kw.get("_is_metadata_operation"):
        return sides
    runner = kw.get("_ddl_runner")
    effective = getattr(runner, "_effective_tables", None)
    if effective is None:
        return []
    return [side for side in sides if side not in effective]


# --------------------------------------------------------------------------- trigger SQL
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
_EXISTS = sql_text("SELECT pg_catalog.to_regclass(:name)")


def table_schema(connection: Connection, table: Table) -> str:
    """The schema ``table`` lives in on ``connection`` (its own, or the one the connection's
    ``search_path`` resolves it to, else the connection's current schema)."""
    if table.schema:
        return table.schema
    found = connection.execute(_SCHEMA_OF, {"name": _PREPARER.quote(table.name)}).scalar()
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
        self.keys = [_PREPARER.quote(key) for key in tables.keys]
        self.vector = _PREPARER.quote(tables.config.tsvector_column)
        self.k1 = _number(tables.settings.k1)
        self.b = _number(tables.settings.b)

    def qualified(self, name: str) -> str:
        return f"{_PREPARER.quote_schema(self.schema)}.{_PREPARER.quote(name)}"

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
            f"CREATE TRIGGER {_PREPARER.quote(name)} AFTER {event_name.upper()} ON {sql.table} "
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
    key_index = _PREPARER.quote(f"ux_{tables.table.name}_bm25_postings_key")
    return f"ALTER TABLE {sql.postings} REPLICA IDENTITY USING INDEX {key_index}"


def create_statements(
    tables: BM25Tables, schema: str, *, with_replica_identity: bool = True
) -> list[str]:
    """DDL creating the functions and triggers (the side tables come from the metadata),
    after the side tables exist (a migration runs it after their ``create_table``).

    Replaces earlier versions: triggers are dropped and made again."""
    sql = _Sql(tables, schema)
    drops = [
        f"DROP TRIGGER IF EXISTS {_PREPARER.quote(name)} ON {sql.table}"
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


# --------------------------------------------------------------------------- maintenance


def _connection(target: Session | Connection) -> Connection:
    return target.connection() if isinstance(target, Session) else target


def _isolation(connection: Connection) -> str:
    return str(connection.exec_driver_sql("SHOW transaction_isolation").scalar())


def _call(connection: Connection, tables: BM25Tables, event_name: str) -> None:
    name = _Sql(tables, table_schema(connection, tables.table)).qualified(
        tables.function_name(event_name)
    )
    connection.exec_driver_sql(f"SELECT {name}()")


def rebuild(target: Session | Connection, model: Any) -> None:
    """Recompute all BM25 statistics of ``model``'s table from its rows, in the current
    READ COMMITTED transaction (the table is locked against writers meanwhile)::

        vecorm.bm25.rebuild(session, Document); session.commit()

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

        with session.begin(), vecorm.bm25.bulk_load(session, Document):
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


# --------------------------------------------------------------------------- ranking


def _keys(table: Table, names: Sequence[str]) -> list[ColumnElement[Any]]:
    return [table.c[name] for name in names]


def _constant(value: float) -> ColumnElement[float]:
    """A float written into the SQL: a bound value would let a prepared statement's generic
    plan guess (psycopg prepares a statement after its fifth run). Typed, so that arithmetic
    with it matches pg_catalog's float8 operators exactly (an implicit cast could resolve to
    an overload on the caller's search_path)."""
    return literal_column(f"CAST({float(value)!r} AS DOUBLE PRECISION)", Float)


def _integer(value: int) -> ColumnElement[int]:
    return literal_column(str(int(value)), Integer)


def query_terms(text: str, language: str) -> Select[Any]:
    """``SELECT term, qtf``: the lexemes of ``text`` (stop words removed) and how often each
    occurs in it (a repeated query word counts that many times, as in Lucene)."""
    from vecorm.textsearch import clean_search_text

    vector = catalog.to_tsvector(
        cast(literal(language), REGCONFIG), bindparam(None, clean_search_text(text), type_=Text)
    )
    lexemes = (
        pg.unnest(vector)
        .table_valued("lexeme", "positions", "weights")
        .render_derived(name="lexemes")
    )
    qtf = cast(func.coalesce(pg.array_length(lexemes.c.positions, _integer(1)), _integer(1)), Float)
    return select(lexemes.c.lexeme.label("term"), qtf.label("qtf"))


def scores(
    model: Any,
    text: str,
    *,
    mode: Mode = "any",
    where: Sequence[ColumnElement[bool]] = (),
    depth: int = 100,
    k1: float | None = None,
    b: float | None = None,
    prune_above: int | Literal["config"] | None = "config",
    seed: int | None = None,
    only: Select[Any] | None = None,
    prefix: str = "bm25",
) -> Select[Any]:
    """``pk_0 .. pk_n, score`` of the ``depth`` best BM25 matches of ``text``, best first.

    An unfiltered any-term query whose terms hold more than ``prune_above`` postings is
    ranked with MaxScore pruning (:func:`_max_score`, exact); otherwise, with ``where``,
    another mode or ``prune_above=None`` every posting of the query terms is scored.
    ``only`` (a ``SELECT`` of primary-key tuples) scores just those rows, every one of them
    that matches, through the (document, lexeme) index: a hybrid search completes the
    lexical score of rows that only its semantic arm found this way. ``prefix`` names the
    statement's CTEs, so that two of these can share one statement.
    """
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    tables = side_tables(model)
    settings = tables.settings
    k1_value = settings.k1 if k1 is None else float(k1)
    b_value = settings.b if b is None else float(b)
    BM25(k1=k1_value, b=b_value)  # validate
    threshold = settings.prune_above if prune_above == "config" else prune_above
    BM25(prune_above=threshold, seed=settings.seed if seed is None else seed)  # validate
    seed_postings = settings.seed if seed is None else seed
    postings, terms, deltas = tables.postings, tables.terms, tables.deltas
    language = tables.config.language
    names = tables.keys

    query = query_terms(text, language).cte(f"{prefix}_query").prefix_with("MATERIALIZED")
    wanted = select(query.c.term).union_all(select(literal_column("''", Text)))
    counts = union_all(
        select(terms.c.term, terms.c.df, terms.c.length).where(terms.c.term.in_(wanted)),
        select(deltas.c.term, deltas.c.df, deltas.c.length).where(deltas.c.term.in_(wanted)),
    ).subquery(f"{prefix}_counts")
    totals = (
        select(
            counts.c.term,
            cast(pg.sum(counts.c.df), Float).label("df"),
            cast(pg.sum(counts.c.length), Float).label("length"),
        )
        .group_by(counts.c.term)
        .cte(f"{prefix}_totals")
        .prefix_with("MATERIALIZED")
    )
    collection = (
        select(
            totals.c.df.label("n"),
            func.coalesce(
                totals.c.length / func.nullif(totals.c.df, _constant(0.0), type_=Float),
                _constant(1.0),
            ).label("avgdl"),
        )
        .where(totals.c.term == literal_column("''", Text))
        .subquery(f"{prefix}_collection")
    )
    idf = pg.ln(
        _constant(1.0)
        + (collection.c.n - totals.c.df + _constant(0.5)) / (totals.c.df + _constant(0.5))
    )
    weighted = (
        select(
            totals.c.term,
            totals.c.df,
            (idf * query.c.qtf).label("idf"),
            collection.c.avgdl,
        )
        .select_from(totals.join(collection, true()).join(query, query.c.term == totals.c.term))
        .where(totals.c.term != literal_column("''", Text), totals.c.df > _constant(0.0))
        .cte(f"{prefix}_terms")
        .prefix_with("MATERIALIZED")
    )
    k1_param = _constant(k1_value)
    b_param = _constant(b_value)

    def contribution(tf_column: Any, dl_column: Any) -> ColumnElement[Any]:
        tf = cast(tf_column, Float)
        dl = cast(dl_column, Float)
        part: ColumnElement[Any] = (
            weighted.c.idf
            * tf
            * (k1_param + _constant(1.0))
            / (tf + k1_param * (_constant(1.0) - b_param + b_param * dl / weighted.c.avgdl))
        )
        return part

    term_score = contribution(postings.c.tf, postings.c.dl)
    key_columns = _keys(postings, names)
    pruned = mode == "any" and not where and threshold is not None and only is None
    exhaustive = (
        select(*key_columns, pg.sum(term_score).label("score"))
        .select_from(weighted.join(postings, postings.c.term == weighted.c.term))
        .group_by(*key_columns)
    )
    if only is not None:
        exhaustive = exhaustive.where(keys_in(key_columns, only))
    if mode == "all":
        exhaustive = exhaustive.having(
            pg.count(literal_column("*"))
            == select(pg.count(literal_column("*"))).select_from(query).scalar_subquery()
        )
    scored: Select[Any] | CompoundSelect[Any] = exhaustive
    if pruned:
        assert threshold is not None
        many = select(pg.sum(weighted.c.df)).scalar_subquery() > _constant(threshold)
        scored = union_all(
            exhaustive.where(~many),
            _max_score(
                postings,
                weighted,
                names,
                term_score,
                contribution,
                seed=seed_postings,
                depth=depth,
                k1=k1_param,
            ).where(many),
        )
    ranked = scored.subquery(f"{prefix}_scored")
    score = ranked.c.score.label("score")
    keys = [ranked.c[name] for name in names]
    stmt = select(*(key.label(f"pk_{i}") for i, key in enumerate(keys)), score)
    if where or mode in ("phrase", "websearch"):
        from vecorm.textsearch import matches, tsquery_expression

        table_keys = _keys(tables.table, names)
        stmt = stmt.join(tables.table, keys_equal(table_keys, keys)).where(*where)
        if mode in ("phrase", "websearch"):
            stmt = stmt.where(
                matches(model, tsquery_expression(text, language=language, mode=mode))
            )
    stmt = stmt.order_by(score.desc(), *keys)
    return stmt if only is not None else stmt.limit(row_limit(depth))


@dataclass(frozen=True)
class BM25Arm:
    """The BM25 lexical arm of :func:`vecorm.hybrid.hybrid_search` (the default)::

        hybrid_search(Document, "statin myopathy", lexical=BM25Arm(k1=1.2, b=0.75))

    ``k1`` / ``b`` / ``prune_above`` / ``seed`` default to the model's :class:`~vecorm.BM25`.
    """

    mode: Mode = "any"
    k1: float | None = None
    b: float | None = None
    prune_above: int | Literal["config"] | None = "config"
    seed: int | None = None

    def candidates(
        self, model: Any, text: str, *, where: Sequence[ColumnElement[bool]], depth: int
    ) -> Select[Any]:
        """``pk_0 .., score`` of the ``depth`` best BM25 matches under ``where``."""
        return scores(
            model,
            text,
            mode=self.mode,
            where=where,
            depth=depth,
            k1=self.k1,
            b=self.b,
            prune_above=self.prune_above,
            seed=self.seed,
        )

    def scores_of(self, model: Any, text: str, *, keys: Select[Any]) -> Select[Any]:
        """``pk_0 .., score`` of the rows in ``keys`` that match ``text`` (the others score 0)."""
        return scores(
            model, text, mode=self.mode, k1=self.k1, b=self.b, only=keys, prefix="bm25_fill"
        )


def has_bm25(model: Any) -> bool:
    """Whether ``model`` keeps BM25 statistics."""
    from sqlalchemy import inspect

    table = inspect(model).local_table
    return isinstance(table, Table) and _tables_of(table) is not None


def _max_score(
    postings: Table,
    weighted: Any,
    names: Sequence[str],
    term_score: ColumnElement[Any],
    contribution: Callable[[Any, Any], ColumnElement[Any]],
    *,
    seed: int,
    depth: int,
    k1: ColumnElement[float],
) -> Select[Any]:
    """Exact top-``depth`` without scoring every posting (MaxScore, Turtle & Flood 1995).

    1. A threshold: the ``depth``-th best exact score among the documents holding each term's
       ``seed`` best postings (by stored impact): the true ``depth``-th score is at least
       that high.
    2. A term's contribution never exceeds ``idf * (k1 + 1)``. Terms (cheapest bound first)
       whose bounds together stay under the threshold are *non-essential*: a document with
       only those cannot make the top ``depth``. Only the essential terms' postings are read.
    3. Documents whose essential partial score plus the non-essential bounds reaches the
       threshold are rescored exactly over every query term.

    The stored impact only steers step 1, so the result is exact whatever it holds.
    """
    key_columns = _keys(postings, names)
    best = (
        select(*key_columns)
        .where(postings.c.term == weighted.c.term)
        .order_by(postings.c.impact.desc())
        .limit(_integer(seed))
        .lateral("bm25_best")
    )
    seeds = (
        select(*(best.c[name] for name in names))
        .select_from(weighted.join(best, true()))
        .distinct()
        .cte("bm25_seeds")
        .prefix_with("MATERIALIZED")
    )

    def exact(candidates: Any) -> Select[Any]:
        # One index probe per (candidate, term); LIMIT 1 keeps the planner from turning the
        # probes into a scan of every posting of the terms.
        probe = (
            select(postings.c.tf, postings.c.dl)
            .where(
                postings.c.term == weighted.c.term,
                *(postings.c[name] == candidates.c[name] for name in names),
            )
            .limit(_integer(1))
            .lateral("bm25_probe")
        )
        candidate_keys = [candidates.c[name] for name in names]
        return (
            select(
                *(key.label(name) for key, name in zip(candidate_keys, names, strict=True)),
                pg.sum(contribution(probe.c.tf, probe.c.dl)).label("score"),
            )
            .select_from(candidates.join(weighted, true()).join(probe, true()))
            .group_by(*candidate_keys)
        )

    seeded = exact(seeds).subquery("bm25_seeded")
    kth = (
        select(
            func.coalesce(
                select(seeded.c.score)
                .order_by(seeded.c.score.desc())
                .offset(_integer(depth - 1))
                .limit(_integer(1))
                .scalar_subquery(),
                _constant(0.0),
            ).label("score")
        )
        .cte("bm25_threshold")
        .prefix_with("MATERIALIZED")
    )
    threshold = select(kth.c.score).scalar_subquery()
    bound = weighted.c.idf * (k1 + _constant(1.0))
    cumulative = pg.sum(bound).over(order_by=(bound, weighted.c.term))
    bounds = (
        select(
            weighted.c.term,
            (cumulative < threshold).label("optional"),
            cumulative.label("cumulative"),
        )
        .cte("bm25_bounds")
        .prefix_with("MATERIALIZED")
    )
    optional_bound = func.coalesce(
        select(pg.max(bounds.c.cumulative)).where(bounds.c.optional).scalar_subquery(),
        _constant(0.0),
    )
    survivors = (
        select(*key_columns)
        .select_from(
            weighted.join(postings, postings.c.term == weighted.c.term).join(
                bounds, and_(bounds.c.term == weighted.c.term, ~bounds.c.optional)
            )
        )
        .group_by(*key_columns)
        .having(pg.sum(term_score) + optional_bound >= threshold)
        .cte("bm25_survivors")
        .prefix_with("MATERIALIZED")
    )
    return exact(survivors)
