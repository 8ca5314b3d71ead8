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
from contextlib import contextmanager
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
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import REGCONFIG
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.schema import SchemaItem
from sqlalchemy.sql.selectable import CompoundSelect

from vecorm.config import BM25, SearchConfig
from vecorm.errors import ConfigurationError
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
    if tables is not None:
        # ``Model.__table__.create()`` or ``create_all(tables=[...])`` without the side
        # tables: make them here; a create_all that includes them makes them itself.
        for side in _not_in_this_run(tables, kw):
            side.create(connection, checkfirst=True)
        for statement in create_statements(tables, with_replica_identity=False):
            connection.exec_driver_sql(statement)


def _postings_created(target: Table, connection: Connection, **_: Any) -> None:
    for tables in _registry.values():
        if tables.postings is target:
            connection.exec_driver_sql(replica_identity_statement(tables))


def _drop_ddl(target: Table, connection: Connection, **_: Any) -> None:
    tables = _tables_of(target)
    if tables is not None:
        for statement in drop_statements(tables):
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


def _number(value: float) -> str:
    return repr(float(value))


class _Sql:
    """Text of the trigger functions for one table (identifiers quoted, constants literal)."""

    def __init__(self, tables: BM25Tables) -> None:
        self.t = tables
        self.table = tables.qualified(tables.table.name)
        self.postings = tables.qualified(tables.postings.name)
        self.terms = tables.qualified(tables.terms.name)
        self.deltas = tables.qualified(tables.deltas.name)
        self.statements = tables.qualified(f"{tables.table.name}_bm25_statements")
        self.keys = [_PREPARER.quote(key) for key in tables.keys]
        self.vector = _PREPARER.quote(tables.config.tsvector_column)
        self.k1 = _number(tables.settings.k1)
        self.b = _number(tables.settings.b)

    def key_list(self, alias: str) -> str:
        return ", ".join(f"{alias}.{key}" for key in self.keys)

    def key_match(self, left: str, right: str) -> str:
        return " AND ".join(f"{left}.{key} = {right}.{key}" for key in self.keys)

    @staticmethod
    def tf(alias: str) -> str:
        # A stripped tsvector has no positions: count the lexeme once.
        return f"coalesce(array_length({alias}.positions, 1), 1)"

    def doc_length(self, alias: str) -> str:
        return f"(SELECT coalesce(sum({self.tf('u')}), 0) FROM unnest({alias}.{self.vector}) u)"

    def add(self, source: str) -> str:
        """Statements adding the documents of ``source`` (pk columns + tsvector)."""
        avgdl = (
            f"(SELECT CASE WHEN sum(df) > 0 AND sum(length) > 0 "
            f"THEN sum(length)::float8 / sum(df) ELSE 1.0 END FROM ("
            f"SELECT df, length FROM {self.terms} WHERE term = '' UNION ALL "
            f"SELECT df, length FROM {self.deltas} WHERE term = '') c)"
        )
        return f"""
    INSERT INTO {self.deltas} (term, df, length)
    SELECT '', count(*), coalesce(sum(x.dl), 0)
    FROM (SELECT {self.doc_length("s")} AS dl FROM {source} s) x
    HAVING count(*) > 0;
    INSERT INTO {self.deltas} (term, df, length)
    SELECT u.lexeme, count(*), 0 FROM {source} s, unnest(s.{self.vector}) u
    GROUP BY u.lexeme;
    SELECT {avgdl} INTO avgdl;
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
    FROM d CROSS JOIN LATERAL unnest(d.vector) u;"""

    def remove(self, source: str) -> str:
        """Statements removing the documents of ``source`` (as they were stored)."""
        return f"""
    INSERT INTO {self.deltas} (term, df, length)
    SELECT '', -count(*), -coalesce(sum(x.dl), 0)
    FROM (SELECT {self.doc_length("s")} AS dl FROM {source} s) x
    HAVING count(*) > 0;
    INSERT INTO {self.deltas} (term, df, length)
    SELECT u.lexeme, -count(*), 0 FROM {source} s, unnest(s.{self.vector}) u
    GROUP BY u.lexeme;
    DELETE FROM {self.postings} p USING {source} s WHERE {self.key_match("p", "s")};"""

    def compact(self) -> str:
        """Fold the deltas into the terms table: sorted upsert, one compactor at a time,
        nobody waits (skipped when another transaction is compacting)."""
        return f"""
    IF current_setting('transaction_isolation') = 'read committed'
       AND pg_try_advisory_xact_lock({self.t.lock_key}) THEN
      WITH moved AS (DELETE FROM {self.deltas} RETURNING term, df, length)
      INSERT INTO {self.terms} AS t (term, df, length)
      SELECT term, sum(df), sum(length) FROM moved GROUP BY term ORDER BY term
      ON CONFLICT (term) DO UPDATE
        SET df = t.df + excluded.df, length = t.length + excluded.length;
      DELETE FROM {self.terms} WHERE df = 0 AND term <> '';
    END IF;"""

    def function(self, name: str, body: str, *, returns: str = "trigger") -> str:
        declare = "DECLARE\n    avgdl float8;\n" if returns == "trigger" or "avgdl" in body else ""
        return_line = "    RETURN NULL;\n" if returns == "trigger" else ""
        return (
            f"CREATE OR REPLACE FUNCTION {self.t.qualified(name)}() RETURNS {returns}\n"
            f"LANGUAGE plpgsql AS $vecorm$\n{declare}BEGIN{body}\n{return_line}END;\n$vecorm$"
        )


def _compaction_check(sql: _Sql) -> str:
    # Every COMPACT_EVERY-th writing statement on the table compacts (a sequence counts them).
    counter = sql.statements.replace("'", "''")
    return f"""
    IF mod(nextval('{counter}'::regclass), {COMPACT_EVERY}) = 0 THEN
{sql.compact()}
    END IF;"""


def function_definitions(tables: BM25Tables) -> dict[str, str]:
    """``{function name: CREATE OR REPLACE FUNCTION ...}`` for the triggers and rebuild."""
    sql = _Sql(tables)
    columns = ", ".join(sql.keys) + f", {sql.vector}"
    changed_old = f"(SELECT {columns} FROM old_rows EXCEPT ALL SELECT {columns} FROM new_rows)"
    changed_new = f"(SELECT {columns} FROM new_rows EXCEPT ALL SELECT {columns} FROM old_rows)"
    compaction = _compaction_check(sql)
    rebuild_body = f"""
    LOCK TABLE {sql.table} IN SHARE MODE;
    DELETE FROM {sql.postings};
    DELETE FROM {sql.deltas};
    DELETE FROM {sql.terms};
    INSERT INTO {sql.terms} (term, df, length)
    SELECT '', count(*), coalesce(sum(x.dl), 0)
    FROM (SELECT {sql.doc_length("s")} AS dl FROM {sql.table} s) x;
    INSERT INTO {sql.terms} (term, df, length)
    SELECT u.lexeme, count(*), 0 FROM {sql.table} s, unnest(s.{sql.vector}) u
    GROUP BY u.lexeme ORDER BY u.lexeme;
    SELECT CASE WHEN df > 0 AND length > 0 THEN length::float8 / df ELSE 1.0 END
      INTO avgdl FROM {sql.terms} WHERE term = '';
{sql.postings_insert(sql.table)}"""
    defer_check = """
    IF current_setting('vecorm.bm25_deferred', true) = 'on' THEN
        RETURN NULL;
    END IF;"""
    return {
        tables.function_name("insert"): sql.function(
            tables.function_name("insert"), defer_check + sql.add("new_rows") + compaction
        ),
        tables.function_name("update"): sql.function(
            tables.function_name("update"),
            defer_check + sql.remove(changed_old) + sql.add(changed_new) + compaction,
        ),
        tables.function_name("delete"): sql.function(
            tables.function_name("delete"), defer_check + sql.remove("old_rows") + compaction
        ),
        tables.function_name("truncate"): sql.function(
            tables.function_name("truncate"),
            f"""
    DELETE FROM {sql.postings};
    DELETE FROM {sql.deltas};
    DELETE FROM {sql.terms};""",
        ),
        tables.function_name("rebuild"): sql.function(
            tables.function_name("rebuild"), rebuild_body, returns="void"
        ),
        tables.function_name("compact"): sql.function(
            tables.function_name("compact"), sql.compact(), returns="void"
        ),
    }


TRIGGER_EVENTS: tuple[str, ...] = ("insert", "update", "delete", "truncate")


def trigger_definitions(tables: BM25Tables) -> dict[str, str]:
    """``{trigger name: CREATE TRIGGER ...}``: one statement-level trigger per event."""
    sql = _Sql(tables)
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
            f"EXECUTE FUNCTION {tables.qualified(tables.function_name(event_name))}()"
        )
    return definitions


COMMENT_PREFIX = "vecorm bm25 "


def signature(tables: BM25Tables) -> str:
    """A digest of the function and trigger definitions, stored as the insert function's
    comment so that Alembic can tell whether the database has this version."""
    definitions = [*function_definitions(tables).values(), *trigger_definitions(tables).values()]
    return hashlib.sha256("\n".join(definitions).encode()).hexdigest()[:16]


def replica_identity_statement(tables: BM25Tables) -> str:
    """The postings have no primary key (its INCLUDE would not survive Alembic): their unique
    (document, lexeme) index identifies rows for logical replication instead."""
    key_index = _PREPARER.quote(f"ux_{tables.table.name}_bm25_postings_key")
    return (
        f"ALTER TABLE {tables.qualified(tables.postings.name)} "
        f"REPLICA IDENTITY USING INDEX {key_index}"
    )


def create_statements(tables: BM25Tables, *, with_replica_identity: bool = True) -> list[str]:
    """DDL creating the functions and triggers (the side tables come from the metadata),
    after the side tables exist (a migration runs it after their ``create_table``).

    Replaces earlier versions: triggers are dropped and made again."""
    sql = _Sql(tables)
    drops = [
        f"DROP TRIGGER IF EXISTS {_PREPARER.quote(name)} ON {sql.table}"
        for name in trigger_definitions(tables)
    ]
    comment = (
        f"COMMENT ON FUNCTION {tables.qualified(tables.function_name('insert'))}() "
        f"IS '{COMMENT_PREFIX}{signature(tables)}'"
    )
    return [
        f"CREATE SEQUENCE IF NOT EXISTS {sql.statements}",
        *([replica_identity_statement(tables)] if with_replica_identity else []),
        *function_definitions(tables).values(),
        *drops,
        *trigger_definitions(tables).values(),
        comment,
    ]


def drop_statements(tables: BM25Tables) -> list[str]:
    """DDL dropping the functions and, with them (``CASCADE``), the triggers; the counter."""
    return [
        *(
            f"DROP FUNCTION IF EXISTS {tables.qualified(name)}() CASCADE"
            for name in function_definitions(tables)
        ),
        f"DROP SEQUENCE IF EXISTS {_Sql(tables).statements}",
    ]


# --------------------------------------------------------------------------- maintenance


def _connection(target: Session | Connection) -> Connection:
    return target.connection() if isinstance(target, Session) else target


def rebuild(target: Session | Connection, model: Any) -> None:
    """Recompute all BM25 statistics of ``model``'s table from its rows, in the current
    transaction (the table is locked against writers meanwhile)::

        vecorm.bm25.rebuild(session, Document); session.commit()
    """
    tables = side_tables(model)
    name = tables.qualified(tables.function_name("rebuild"))
    _connection(target).exec_driver_sql(f"SELECT {name}()")


def compact(target: Session | Connection, model: Any) -> None:
    """Fold pending frequency deltas into the terms table now (writers do it every
    64 statements; this is for after a burst of small writes)."""
    tables = side_tables(model)
    name = tables.qualified(tables.function_name("compact"))
    _connection(target).exec_driver_sql(f"SELECT {name}()")


@contextmanager
def bulk_load(target: Session | Connection, model: Any) -> Iterator[None]:
    """Load many rows without per-statement statistics, then rebuild them once.

    Inside one transaction (like building an index after a load)::

        with session.begin(), vecorm.bm25.bulk_load(session, Document):
            session.execute(insert(Document), rows)
    """
    connection = _connection(target)
    connection.execute(select(func.set_config("vecorm.bm25_deferred", "on", true())))
    try:
        yield
        if isinstance(target, Session):
            target.flush()
    finally:
        connection.execute(select(func.set_config("vecorm.bm25_deferred", "off", true())))
    rebuild(connection, model)


# --------------------------------------------------------------------------- ranking


def _keys(table: Table, names: Sequence[str]) -> list[ColumnElement[Any]]:
    return [table.c[name] for name in names]


def _constant(value: float) -> ColumnElement[float]:
    """A float written into the SQL: a bound value would let a prepared statement's generic
    plan guess (psycopg prepares a statement after its fifth run)."""
    return literal_column(repr(float(value)), Float)


def _integer(value: int) -> ColumnElement[int]:
    return literal_column(str(int(value)), Integer)


def query_terms(text: str, language: str) -> Select[Any]:
    """``SELECT term, qtf``: the lexemes of ``text`` (stop words removed) and how often each
    occurs in it (a repeated query word counts that many times, as in Lucene)."""
    from vecorm.textsearch import clean_search_text

    vector = func.to_tsvector(
        cast(literal(language), REGCONFIG), bindparam(None, clean_search_text(text), type_=Text)
    )
    lexemes = (
        func.unnest(vector)
        .table_valued("lexeme", "positions", "weights")
        .render_derived(name="lexemes")
    )
    qtf = func.coalesce(func.array_length(lexemes.c.positions, 1), 1)
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
            func.sum(counts.c.df).label("df"),
            func.sum(counts.c.length).label("length"),
        )
        .group_by(counts.c.term)
        .cte(f"{prefix}_totals")
        .prefix_with("MATERIALIZED")
    )
    collection = (
        select(
            cast(totals.c.df, Float).label("n"),
            func.coalesce(
                cast(totals.c.length, Float) / cast(func.nullif(totals.c.df, 0), Float),
                _constant(1.0),
            ).label("avgdl"),
        )
        .where(totals.c.term == literal_column("''", Text))
        .subquery(f"{prefix}_collection")
    )
    idf = func.ln(
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
        .where(totals.c.term != literal_column("''", Text), totals.c.df > _integer(0))
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
        select(*key_columns, func.sum(term_score).label("score"))
        .select_from(weighted.join(postings, postings.c.term == weighted.c.term))
        .group_by(*key_columns)
    )
    if only is not None:
        exhaustive = exhaustive.where(keys_in(key_columns, only))
    if mode == "all":
        exhaustive = exhaustive.having(
            func.count() == select(func.count()).select_from(query).scalar_subquery()
        )
    scored: Select[Any] | CompoundSelect[Any] = exhaustive
    if pruned:
        assert threshold is not None
        many = select(func.sum(weighted.c.df)).scalar_subquery() > _integer(threshold)
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
                func.sum(contribution(probe.c.tf, probe.c.dl)).label("score"),
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
    cumulative = func.sum(bound).over(order_by=(bound, weighted.c.term))
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
        select(func.max(bounds.c.cumulative)).where(bounds.c.optional).scalar_subquery(),
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
        .having(func.sum(term_score) + optional_bound >= threshold)
        .cte("bm25_survivors")
        .prefix_with("MATERIALIZED")
    )
    return exact(survivors)
