"""The DDL of a table's BM25 statistics as SQLAlchemy DDL elements: one named object per
statement (a sequence, a function, a trigger, the insert function's comment ...).

Each element compiles with the dialect of the connection that runs it, quoting every
identifier through that dialect's :class:`~sqlalchemy.sql.compiler.IdentifierPreparer`, and
names its object, so a failing statement says which one it was::

    from vecorm.search.bm25 import ddl, side_tables

    tables = side_tables(Document)
    for element in ddl.create_elements(tables, "public"):
        print(element.description)             # function "public"."documents_bm25_insert"
        connection.execute(element)            # CREATE OR REPLACE FUNCTION ...

Every function pins ``SET search_path = pg_catalog, pg_temp`` and its body names every table,
sequence and function schema-qualified, with the schema resolved when the DDL runs (see
:func:`vecorm.search.bm25.table_schema`): unqualified operators then resolve in pg_catalog only.
Writers only *append* to the side tables and never read shared counts, so unrelated
SERIALIZABLE writers never conflict through vecorm.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from sqlalchemy import String
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement
from sqlalchemy.sql.compiler import DDLCompiler, IdentifierPreparer

from vecorm.search.bm25.tables import COMPACT_EVERY, BM25Tables

#: The ``search_path`` every BM25 function runs with.
SEARCH_PATH = "pg_catalog, pg_temp"
#: The events with a statement trigger each (transition tables need one trigger per event).
TRIGGER_EVENTS: tuple[str, ...] = ("insert", "update", "delete", "truncate")
#: Every function of a table's statistics: the triggers', then rebuild and compact.
FUNCTION_EVENTS: tuple[str, ...] = (*TRIGGER_EVENTS, "rebuild", "compact")
#: The two sequences: statements written (compaction cadence) and the average-length hint.
SEQUENCES: tuple[str, ...] = ("statements", "avgdl")
COMMENT_PREFIX = "vecorm bm25 "
#: The dialect the DDL is rendered with outside a connection (signatures, migrations).
DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
# Names as the database knows them, for messages: a preparer that escapes no ``%``.
_MESSAGES = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]


def _number(value: float) -> str:
    return repr(float(value))


def _regclass(qualified: str) -> str:
    """``'"schema"."name"'::pg_catalog.regclass``. ``qualified`` comes from the dialect's
    preparer, already escaped for the driver's paramstyle (as SQLAlchemy's own
    ``nextval('...')`` is); the string literal only doubles its single quotes."""
    return "'" + qualified.replace("'", "''") + "'::pg_catalog.regclass"


class _Bodies:
    """Text of one table's function bodies: identifiers quoted by ``preparer`` and
    schema-qualified, functions qualified, constants literal."""

    def __init__(
        self,
        tables: BM25Tables,
        schema: str,
        preparer: IdentifierPreparer,
        dialect: Any = None,
    ) -> None:
        self.t = tables
        self.schema = schema
        self.preparer = preparer
        self.table = self.qualified(tables.table.name)
        self.postings = self.qualified(tables.postings.name)
        self.terms = self.qualified(tables.terms.name)
        self.deltas = self.qualified(tables.deltas.name)
        self.statements = self.qualified(sequence_name(tables, "statements"))
        self.avgdl = self.qualified(sequence_name(tables, "avgdl"))
        self.keys = [preparer.quote(key) for key in tables.keys]
        self.vector = preparer.quote(tables.config.tsvector_column)
        self.k1 = _number(tables.settings.k1)
        self.b = _number(tables.settings.b)
        self.keyed = _Keyed(self, dialect or DIALECT) if tables.distributed_by else None

    def qualified(self, name: str) -> str:
        return _Names(self.schema, self.preparer).of(name)

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

    def lexemes(self, source: str, sign: str, *, keys: bool) -> str:
        """``WITH`` the documents ``s`` of ``source`` (keys and tsvector, read once: an
        ``EXCEPT ALL`` of transition tables is not recomputed per use) and their lexemes ``x``
        (``lexeme``, ``tf``, and the keys if ``keys``), and their counts appended to the deltas
        (``sign`` '-' removes), each tsvector unnested once: unnesting
        is the dearest step of a batch, and the totals, the document frequencies and the
        postings all read ``x``."""
        key_columns = f"{self.key_list('s')}, " if keys else ""
        return f"""
    WITH s AS MATERIALIZED (
      SELECT {self.key_list("r")}, r.{self.vector} FROM {source} r
    ), x AS MATERIALIZED (
      SELECT {key_columns}u.lexeme, {self.tf("u")} AS tf
      FROM s CROSS JOIN LATERAL pg_catalog.unnest(s.{self.vector}) u
    ), total AS MATERIALIZED (
      SELECT (SELECT pg_catalog.count(*) FROM s) AS documents,
             (SELECT coalesce(pg_catalog.sum(x.tf), 0) FROM x) AS length
    ), counted AS (
      INSERT INTO {self.deltas} (term, df, length)
      SELECT '', {sign}t.documents, {sign}t.length FROM total t WHERE t.documents > 0
    ), frequencies AS (
      INSERT INTO {self.deltas} (term, df, length)
      SELECT x.lexeme, {sign}pg_catalog.count(*), 0 FROM x GROUP BY x.lexeme
    )"""

    def add(self, source: str) -> str:
        """One statement adding the documents of ``source`` (pk columns + tsvector): the
        document count / total length and the per-lexeme document frequencies go to the
        deltas, each lexeme to the postings, the totals INTO batch_*.

        The postings' ``impact`` only orders a term's postings for pruning (scores are exact
        whatever it holds), so it takes the average length from a hint that compaction keeps
        in a sequence (a sequence is read without a predicate lock), or from this batch."""
        keys = ", ".join(self.keys)
        y_keys = self.key_list("y")
        return (
            self.lexemes(source, "", keys=True)
            + f""", hint AS (
      SELECT coalesce(
               (SELECT h.last_value::float8 / 1000.0 FROM {self.avgdl} h WHERE h.last_value > 0),
               CASE WHEN t.length > 0 THEN t.length::float8 / t.documents ELSE 1.0 END
             ) AS avgdl
      FROM total t
    ), written AS (
      INSERT INTO {self.postings} ({keys}, term, tf, dl, impact)
      SELECT {y_keys}, y.lexeme, y.tf, y.dl, {self.impact("y.tf", "y.dl", "hint.avgdl")}
      FROM (SELECT {self.key_list("x")}, x.lexeme, x.tf,
                   pg_catalog.sum(x.tf) OVER (PARTITION BY {self.key_list("x")}) AS dl
            FROM x) y, hint
    )
    SELECT t.documents, t.length INTO batch_documents, batch_length FROM total t;"""
        )

    def postings_insert(self, source: str) -> str:
        # Document lengths first (MATERIALIZED): else the planner re-sums them per posting.
        return f"""    WITH d AS MATERIALIZED (
      SELECT {self.key_list("s")}, s.{self.vector} AS vector, {self.doc_length("s")} AS dl
      FROM {source} s
    )
{self.insert_postings()}
    FROM d CROSS JOIN LATERAL pg_catalog.unnest(d.vector) u;"""

    def impact(self, tf: str, dl: str, avgdl: str) -> str:
        """A posting's BM25 term weight at average document length ``avgdl``."""
        return (
            f"({tf} * ({self.k1} + 1.0)) / ({tf}\n"
            f"             + {self.k1} * (1.0 - {self.b} + {self.b} * {dl} / {avgdl}))"
        )

    def insert_postings(self) -> str:
        """``INSERT INTO postings ... SELECT`` each lexeme ``u`` of the documents ``d`` (keys,
        ``vector``, ``dl``) with its tf, the document's length and its impact at ``avgdl``;
        the caller writes the ``FROM``."""
        tf = self.tf("u")
        return f"""    INSERT INTO {self.postings} ({", ".join(self.keys)}, term, tf, dl, impact)
    SELECT {self.key_list("d")}, u.lexeme, {tf}, d.dl,
           {self.impact(tf, "d.dl", "avgdl")}"""

    def remove(self, source: str) -> str:
        """One statement removing the documents of ``source`` (as they were stored): their
        counts, negated, to the deltas, their postings deleted. A NULL tsvector has no
        postings: skipping those rows keeps an online fill (every old version NULL) from
        joining each batch against every posting written before it."""
        return (
            self.lexemes(source, "-", keys=False)
            + f"""
    DELETE FROM {self.postings} p USING s
    WHERE s.{self.vector} IS NOT NULL AND {self.key_match("p", "s")};"""
        )

    def fold(self) -> str:
        """Fold the deltas this transaction sees into the terms table (sorted upsert), drop
        the terms it brought to no document, then refresh the average-length hint.

        Only the folded terms can have reached 0 (every fold drops its own), so the drop
        looks them up by key: a scan for ``df = 0`` reads the whole terms table, one row
        per distinct word ever indexed, at every fold (180 ms at a million terms)."""
        return f"""
      WITH moved AS (DELETE FROM {self.deltas} RETURNING term, df, length),
      folded AS (
        INSERT INTO {self.terms} AS t (term, df, length)
        SELECT term, pg_catalog.sum(df), pg_catalog.sum(length) FROM moved
        GROUP BY term ORDER BY term
        ON CONFLICT (term) DO UPDATE
          SET df = t.df + excluded.df, length = t.length + excluded.length
        RETURNING t.term, t.df
      )
      SELECT pg_catalog.array_agg(f.term ORDER BY f.term) INTO emptied
      FROM folded f WHERE f.df = 0 AND f.term <> '';
      DELETE FROM {self.terms} WHERE term = ANY (emptied) AND df = 0;
{self.refresh_hint()}"""

    def refresh_hint(self) -> str:
        return f"""      PERFORM pg_catalog.setval({_regclass(self.avgdl)},
        coalesce((SELECT pg_catalog.round(1000.0 * length / df)::bigint FROM {self.terms}
                  WHERE term = '' AND df > 0), 0), true);"""

    def compaction(self) -> str:
        """Every COMPACT_EVERY-th writing statement compacts, unless another transaction is
        compacting (nobody waits). At REPEATABLE READ / SERIALIZABLE a compaction that
        committed after this transaction's snapshot makes the fold fail; the fold then rolls
        back alone (a subtransaction) and a later statement compacts."""
        return f"""
    IF pg_catalog.mod(pg_catalog.nextval({_regclass(self.statements)}), {COMPACT_EVERY}) = 0
       AND pg_catalog.pg_try_advisory_xact_lock({self.t.lock_key}) THEN
      BEGIN{self.fold()}
      EXCEPTION WHEN serialization_failure THEN
        NULL;
      END;
    END IF;"""

    def changed(self, rows: str, other: str) -> str:
        """The rows of transition table ``rows`` whose keys or tsvector are not in ``other``."""
        columns = ", ".join(self.keys) + f", {self.vector}"
        return f"(SELECT {columns} FROM {rows} EXCEPT ALL SELECT {columns} FROM {other})"

    @staticmethod
    def read_committed_check() -> str:
        return """
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
      RAISE EXCEPTION USING
        ERRCODE = 'object_not_in_prerequisite_state',
        MESSAGE = 'vecorm: rebuilding BM25 statistics needs a READ COMMITTED transaction',
        HINT = 'at ' || pg_catalog.current_setting('transaction_isolation')
          || ' the rebuild cannot see rows committed after the transaction began';
    END IF;
"""

    def rebuild(self) -> str:
        return f"""{self.read_committed_check()}    LOCK TABLE {self.table} IN SHARE MODE;
    DELETE FROM {self.postings};
    DELETE FROM {self.deltas};
    DELETE FROM {self.terms};
    INSERT INTO {self.terms} (term, df, length)
    SELECT '', pg_catalog.count(*), coalesce(pg_catalog.sum(x.dl), 0)
    FROM (SELECT {self.doc_length("s")} AS dl FROM {self.table} s) x;
    INSERT INTO {self.terms} (term, df, length)
    SELECT u.lexeme, pg_catalog.count(*), 0
    FROM {self.table} s, pg_catalog.unnest(s.{self.vector}) u
    GROUP BY u.lexeme ORDER BY u.lexeme;
    SELECT CASE WHEN df > 0 AND length > 0 THEN length::float8 / df ELSE 1.0 END
      INTO avgdl FROM {self.terms} WHERE term = '';
{self.refresh_hint()}
{self.postings_insert(self.table)}"""

    def body(self, event: str) -> str:
        """The statements of function ``event`` (between ``BEGIN`` and ``RETURN``)."""
        defer_check = """
    IF pg_catalog.current_setting('vecorm.bm25_deferred', true) = 'on' THEN
        RETURN NULL;
    END IF;"""
        if self.keyed is not None and event != "truncate":
            return (defer_check if event in TRIGGER_EVENTS else "") + self.keyed.body(event)
        if event == "insert":
            return defer_check + self.add("new_rows") + self.compaction()
        if event == "update":
            removed = self.remove(self.changed("old_rows", "new_rows"))
            return (
                defer_check
                + removed
                + self.add(self.changed("new_rows", "old_rows"))
                + (self.compaction())
            )
        if event == "delete":
            return defer_check + self.remove("old_rows") + self.compaction()
        if event == "truncate":
            # TRUNCATE is not MVCC-safe: mirror it with TRUNCATE (a DELETE would keep the
            # postings that this transaction's snapshot cannot see).
            return f"""
    TRUNCATE {self.postings}, {self.deltas}, {self.terms};"""
        if event == "rebuild":
            return self.rebuild()
        return f"""
    PERFORM pg_catalog.pg_advisory_xact_lock({self.t.lock_key});
    BEGIN{self.fold()}
    EXCEPTION WHEN serialization_failure THEN
      NULL;  -- bm25.compact() reports it: the deltas this transaction sees are still there
    END;"""


class _Keyed:
    """The bodies of statistics kept per value of the distribution column
    (``BM25(distributed_by=...)``), written so that Citus can run them on a shard.

    A trigger on a shard may only touch the co-located shards of the rows it was given (the
    case Citus leaves to ``citus.enable_unsafe_triggers``), and a statement that reads a
    transition table and writes a distributed table fails there ("could not find named
    tuplestore"). So each function first copies its transition table into arrays (a statement
    with no distributed table, which PostgreSQL plans alone), then writes the side tables
    from the arrays (Citus routes each row by its value, to the co-located shard on the same
    node) or filtered on ``<column> = ANY(<the values>)`` (Citus prunes that to the shard
    when it runs). All the values of one trigger call hash to the shard it fires on, so every
    statement runs on that node, locally.

    No sequence: Citus creates a plain sequence on the coordinator only, so nothing counts
    statements across a node. A statement that wrote ``n`` delta rows folds its values'
    deltas into the terms table with probability ``n / 64`` (always from 64 rows): about
    once per 64 delta rows of a value, whatever the pattern of the writes (a deterministic
    cadence can keep missing one value), each value unless another transaction holds its
    advisory lock (nobody waits). The scores never depend on it: searches add the deltas.
    """

    def __init__(self, sql: _Bodies, dialect: Any) -> None:
        self.sql = sql
        tables = sql.t
        assert tables.distributed_by is not None
        preparer = sql.preparer
        self.column = preparer.quote(tables.distributed_by)
        self.types = {
            key: dialect.type_compiler_instance.process(tables.table.c[key].type)
            for key in tables.keys
        }
        self.value_type = self.types[tables.distributed_by]
        self.arrays = [f"vecorm_key_{i}" for i in range(len(tables.keys))]
        self.value_array = self.arrays[tables.keys.index(tables.distributed_by)]

    def variables(self, event: str) -> list[str]:
        arrays = [
            f"{array} {self.types[key]}[]"
            for array, key in zip(self.arrays, self.sql.t.keys, strict=True)
        ]
        value = f"vecorm_value {self.value_type}"
        if event in ("insert", "update", "delete"):
            return [
                *arrays,
                "vecorm_vectors pg_catalog.tsvector[]",
                f"vecorm_touched {self.value_type}[]",
                f"vecorm_locked {self.value_type}[]",
                "vecorm_written bigint := 0",
                "vecorm_rows bigint",
                value,
                "avgdl float8",
                "batch_documents bigint",
                "batch_length bigint",
            ]
        if event == "rebuild":
            return ["avgdl float8"]
        if event == "compact":
            return [value]
        return []

    def rows(self) -> str:
        """The arrays as rows ``s(<keys>, <tsvector>)``, like the table's."""
        unnested = ", ".join(
            f"pg_catalog.unnest({array})" for array in [*self.arrays, "vecorm_vectors"]
        )
        columns = ", ".join([*self.sql.keys, self.sql.vector])
        return f"ROWS FROM ({unnested}) AS s({columns})"

    def load(self, source: str) -> str:
        """Copy the keys and tsvectors of ``source`` (a transition table) into the arrays."""
        sql = self.sql
        aggregated = ", ".join(
            f"pg_catalog.array_agg(s.{column})" for column in [*sql.keys, sql.vector]
        )
        targets = ", ".join([*self.arrays, "vecorm_vectors"])
        return f"""
    SELECT {aggregated}, pg_catalog.count(*), coalesce(pg_catalog.sum({sql.doc_length("s")}), 0)
      INTO {targets}, batch_documents, batch_length
    FROM {source} s;"""

    def counts(self, sign: str) -> str:
        sql = self.sql
        column = self.column
        # One statement: each is a distributed INSERT ... SELECT that Citus plans.
        return f"""
    INSERT INTO {sql.deltas} ({column}, term, df, length)
    SELECT x.{column}, '', {sign}pg_catalog.count(*), {sign}coalesce(pg_catalog.sum(x.dl), 0)
    FROM (SELECT s.{column}, {sql.doc_length("s")} AS dl FROM {self.rows()}) x
    GROUP BY x.{column}
    UNION ALL
    SELECT s.{column}, u.lexeme, {sign}pg_catalog.count(*), 0
    FROM {self.rows()}, pg_catalog.unnest(s.{sql.vector}) u
    GROUP BY s.{column}, u.lexeme;
    GET DIAGNOSTICS vecorm_rows = ROW_COUNT;
    vecorm_written := vecorm_written + vecorm_rows;"""

    def add(self) -> str:
        """Append the arrays' documents: the average length of the postings' impact (which
        only steers pruning) is this batch's."""
        sql = self.sql
        return f"""{self.counts("")}
    avgdl := CASE WHEN batch_length > 0 THEN batch_length::float8 / batch_documents
                  ELSE 1.0 END;
{sql.insert_postings()}
    FROM (SELECT {sql.key_list("s")}, s.{sql.vector} AS vector, {sql.doc_length("s")} AS dl
          FROM {self.rows()} OFFSET 0) d
    CROSS JOIN LATERAL pg_catalog.unnest(d.vector) u;"""

    def remove(self) -> str:
        """Remove the arrays' documents (as they were stored)."""
        sql = self.sql
        keys = ", ".join(f"p.{key}" for key in sql.keys)
        return f"""{self.counts("-")}
    DELETE FROM {sql.postings} p
    WHERE p.{self.column} = ANY({self.value_array}) AND ({keys}) IN (
      SELECT {sql.key_list("s")} FROM {self.rows()} WHERE s.{sql.vector} IS NOT NULL);"""

    def touch(self) -> str:
        return f"""
    vecorm_touched := pg_catalog.array_cat(vecorm_touched, {self.value_array});"""

    def fold(self, values: str) -> str:
        """Fold the deltas of the values in array ``values`` into the terms table (sorted
        upsert)."""
        sql = self.sql
        column = self.column
        return f"""
        WITH moved AS (DELETE FROM {sql.deltas} WHERE {column} = ANY({values})
                       RETURNING {column}, term, df, length)
        INSERT INTO {sql.terms} AS t ({column}, term, df, length)
        SELECT {column}, term, pg_catalog.sum(df), pg_catalog.sum(length) FROM moved
        GROUP BY {column}, term ORDER BY {column}, term
        ON CONFLICT ({column}, term) DO UPDATE
          SET df = t.df + excluded.df, length = t.length + excluded.length;
        DELETE FROM {sql.terms}
        WHERE {column} = ANY({values}) AND df = 0 AND term <> '';"""

    def value_lock(self, function: str) -> str:
        return (
            f"pg_catalog.{function}({self.sql.t.lock_class}, "
            "pg_catalog.hashtext(vecorm_value::text))"
        )

    def compaction(self) -> str:
        """With probability (delta rows written) / COMPACT_EVERY, fold the values this
        statement wrote, each unless another transaction is folding it (nobody waits). At
        REPEATABLE READ / SERIALIZABLE a fold that meets a newer one rolls back alone."""
        return f"""
    IF pg_catalog.random() * {COMPACT_EVERY} < vecorm_written THEN
      FOR vecorm_value IN
        SELECT DISTINCT v FROM pg_catalog.unnest(vecorm_touched) v ORDER BY 1
      LOOP
        IF {self.value_lock("pg_try_advisory_xact_lock")} THEN
          vecorm_locked := pg_catalog.array_append(vecorm_locked, vecorm_value);
        END IF;
      END LOOP;
      IF vecorm_locked IS NOT NULL THEN
        BEGIN{self.fold("vecorm_locked")}
        EXCEPTION WHEN serialization_failure THEN
          NULL;
        END;
      END IF;
    END IF;"""

    def changed(self, rows: str, other: str) -> str:
        return self.sql.changed(rows, other)

    def rebuild(self) -> str:
        sql = self.sql
        column = self.column
        return f"""{sql.read_committed_check()}    LOCK TABLE {sql.table} IN SHARE MODE;
    DELETE FROM {sql.postings};
    DELETE FROM {sql.deltas};
    DELETE FROM {sql.terms};
    INSERT INTO {sql.terms} ({column}, term, df, length)
    SELECT x.{column}, '', pg_catalog.count(*), coalesce(pg_catalog.sum(x.dl), 0)
    FROM (SELECT s.{column}, {sql.doc_length("s")} AS dl FROM {sql.table} s) x
    GROUP BY x.{column};
    INSERT INTO {sql.terms} ({column}, term, df, length)
    SELECT s.{column}, u.lexeme, pg_catalog.count(*), 0
    FROM {sql.table} s, pg_catalog.unnest(s.{sql.vector}) u
    GROUP BY s.{column}, u.lexeme;
    SELECT CASE WHEN pg_catalog.sum(length) > 0
                THEN pg_catalog.sum(length)::float8 / pg_catalog.sum(df) ELSE 1.0 END
      INTO avgdl FROM {sql.terms} WHERE term = '';
{sql.insert_postings()}
    FROM (SELECT {sql.key_list("s")}, s.{sql.vector} AS vector, {sql.doc_length("s")} AS dl
          FROM {sql.table} s) d
    CROSS JOIN LATERAL pg_catalog.unnest(d.vector) u;"""

    def body(self, event: str) -> str:
        if event == "insert":
            return (
                self.load("new_rows")
                + self.skip_empty()
                + self.add()
                + self.touch()
                + self.compaction()
            )
        if event == "delete":
            return (
                self.load("old_rows")
                + self.skip_empty()
                + self.remove()
                + self.touch()
                + self.compaction()
            )
        if event == "update":
            # An empty array would name no value, and Citus could not prune the statements.
            return (
                self.load(self.changed("old_rows", "new_rows"))
                + self.when_rows(self.remove() + self.touch())
                + self.load(self.changed("new_rows", "old_rows"))
                + self.when_rows(self.add() + self.touch())
                + self.compaction()
            )
        if event == "rebuild":
            return self.rebuild()
        assert event == "compact"
        return f"""
    FOR vecorm_value IN SELECT DISTINCT d.{self.column} FROM {self.sql.deltas} d ORDER BY 1
    LOOP
      PERFORM {self.value_lock("pg_advisory_xact_lock")};
      BEGIN{self.fold("ARRAY[vecorm_value]")}
      EXCEPTION WHEN serialization_failure THEN
        NULL;  -- bm25.compact() reports it: the deltas this transaction sees are still there
      END;
    END LOOP;"""

    @staticmethod
    def when_rows(statements: str) -> str:
        indented = statements.replace("\n    ", "\n      ")
        return f"""
    IF batch_documents > 0 THEN{indented}
    END IF;"""

    @staticmethod
    def skip_empty() -> str:
        return """
    IF batch_documents = 0 THEN
      RETURN NULL;
    END IF;"""


_WRITER_VARIABLES = ("avgdl float8", "batch_documents bigint", "batch_length bigint")
#: The terms a fold brought to no document (compaction, in writers and compact()).
_EMPTIED = "emptied text[]"
_VARIABLES: dict[str, Sequence[str]] = {
    "insert": (*_WRITER_VARIABLES, _EMPTIED),
    "update": (*_WRITER_VARIABLES, _EMPTIED),
    "delete": (*_WRITER_VARIABLES[1:], _EMPTIED),
    "rebuild": ("avgdl float8",),
    "compact": (_EMPTIED,),
}
_REFERENCING = {
    "insert": "REFERENCING NEW TABLE AS new_rows ",
    "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows ",
    "delete": "REFERENCING OLD TABLE AS old_rows ",
    "truncate": "",
}


def object_name(table_name: str, suffix: str) -> str:
    """``<table>_bm25_<suffix>``: a function, trigger or sequence of ``table_name``."""
    return f"{table_name}_bm25_{suffix}"


def sequence_name(tables: BM25Tables, which: str) -> str:
    """``<table>_bm25_statements`` / ``<table>_bm25_avgdl``."""
    return object_name(tables.base_name, which)


# --------------------------------------------------------------------------- elements


class BM25Object(ExecutableDDLElement):
    """One statement about one named object (``name``) of the BM25 statistics of table
    ``table_name`` in ``schema`` (``None``: unqualified, as Alembic names the default schema)."""

    inherit_cache = False
    #: What the object is: ``"function"``, ``"trigger"``, ``"sequence"`` ...
    kind: ClassVar[str] = "object"

    def __init__(self, table_name: str, schema: str | None, name: str) -> None:
        self.table_name = table_name
        self.schema = schema
        self.name = name

    @property
    def description(self) -> str:
        """``function public.documents_bm25_insert``: what the statement is about."""
        return f"{self.kind} {_Names(self.schema, _MESSAGES.identifier_preparer).of(self.name)}"

    def sql(self, dialect: Any = None) -> str:
        """The statement as text for ``dialect`` (PostgreSQL's default driver by default)."""
        return str(self.compile(dialect=dialect or DIALECT))


class _Names:
    """Identifiers quoted by one dialect's preparer, qualified with ``schema`` if any."""

    def __init__(self, schema: str | None, preparer: IdentifierPreparer) -> None:
        self.schema = schema
        self.preparer = preparer

    def of(self, name: str) -> str:
        if self.schema is None:
            return self.preparer.quote(name)
        # signature() renders with schema "": '""' as SQLAlchemy 2.1 quotes it (2.0 cannot).
        schema = self.preparer.quote_schema(self.schema) if self.schema else '""'
        return f"{schema}.{self.preparer.quote(name)}"


def _names(element: BM25Object, compiler: DDLCompiler) -> _Names:
    return _Names(element.schema, compiler.preparer)


class _SequenceObject(BM25Object):
    kind = "sequence"

    def __init__(self, table_name: str, schema: str | None, which: str) -> None:
        super().__init__(table_name, schema, object_name(table_name, which))
        self.which = which


class CreateSequence(_SequenceObject):
    """``CREATE SEQUENCE IF NOT EXISTS``: ``statements`` counts writing statements,
    ``avgdl`` holds the average document length (x1000) from 0."""


class DropSequence(_SequenceObject):
    """``DROP SEQUENCE IF EXISTS``."""


class ResetSequence(_SequenceObject):
    """``SELECT setval(sequence, 0, true)``: the average-length hint of a new, empty table."""


class _FunctionObject(BM25Object):
    kind = "function"

    def __init__(self, table_name: str, schema: str | None, event: str) -> None:
        super().__init__(table_name, schema, object_name(table_name, event))
        self.event = event


class CreateFunction(_FunctionObject):
    """``CREATE OR REPLACE FUNCTION <table>_bm25_<event>()``: a trigger function for an event
    of :data:`TRIGGER_EVENTS`, or ``rebuild`` / ``compact`` (returning void); its body is
    written for ``tables``."""

    def __init__(self, tables: BM25Tables, schema: str, event: str) -> None:
        super().__init__(tables.base_name, schema, event)
        self.tables = tables


class DropFunction(_FunctionObject):
    """``DROP FUNCTION IF EXISTS ... CASCADE`` (a trigger function takes its trigger)."""


class CallFunction(_FunctionObject):
    """``SELECT <table>_bm25_<event>()``: run ``rebuild`` or ``compact``."""


class CommentOnFunction(_FunctionObject):
    """``COMMENT ON FUNCTION ... IS '<comment>'``: the insert function carries the signature."""

    def __init__(self, table_name: str, schema: str | None, event: str, comment: str) -> None:
        super().__init__(table_name, schema, event)
        self.comment = comment


class _TriggerObject(BM25Object):
    kind = "trigger"

    def __init__(self, table_name: str, schema: str | None, event: str) -> None:
        super().__init__(table_name, schema, object_name(table_name, event))
        self.event = event


class CreateTrigger(_TriggerObject):
    """``CREATE TRIGGER <table>_bm25_<event> AFTER <EVENT> ... FOR EACH STATEMENT``."""


class DropTrigger(_TriggerObject):
    """``DROP TRIGGER IF EXISTS ... ON <table>``."""


class SetReplicaIdentity(BM25Object):
    """``ALTER TABLE <postings> REPLICA IDENTITY USING INDEX <its unique key>``: the postings
    have no primary key (its INCLUDE would not survive Alembic), so logical replication
    identifies their rows by the unique (document, lexeme) index."""

    kind = "table"

    def __init__(self, table_name: str, schema: str | None) -> None:
        super().__init__(table_name, schema, object_name(table_name, "postings"))


class TruncateSideTables(BM25Object):
    """``TRUNCATE`` side tables (``postings``, ``terms``, ``deltas``) that a ``DROP TABLE ...
    CASCADE`` left behind."""

    kind = "table"

    def __init__(self, table_name: str, schema: str | None, which: Sequence[str]) -> None:
        names = [object_name(table_name, each) for each in which]
        super().__init__(table_name, schema, ", ".join(names))
        self.names = names


@compiles(CreateSequence)
def _create_sequence(element: CreateSequence, compiler: DDLCompiler, **_: Any) -> str:
    floor = " MINVALUE 0 START WITH 0" if element.which == "avgdl" else ""
    return f"CREATE SEQUENCE IF NOT EXISTS {_names(element, compiler).of(element.name)}{floor}"


@compiles(DropSequence)
def _drop_sequence(element: DropSequence, compiler: DDLCompiler, **_: Any) -> str:
    return f"DROP SEQUENCE IF EXISTS {_names(element, compiler).of(element.name)}"


@compiles(ResetSequence)
def _reset_sequence(element: ResetSequence, compiler: DDLCompiler, **_: Any) -> str:
    sequence = _regclass(_names(element, compiler).of(element.name))
    return f"SELECT pg_catalog.setval({sequence}, 0, true)"


@compiles(CreateFunction)
def _create_function(element: CreateFunction, compiler: DDLCompiler, **_: Any) -> str:
    assert element.schema is not None  # bodies qualify every name
    sql = _Bodies(element.tables, element.schema, compiler.preparer, compiler.dialect)
    returns = "trigger" if element.event in TRIGGER_EVENTS else "void"
    variables: Sequence[str] = (
        _VARIABLES.get(element.event, ())
        if sql.keyed is None
        else sql.keyed.variables(element.event)
    )
    declare = "".join(f"    {variable};\n" for variable in variables)
    return_line = "    RETURN NULL;\n" if returns == "trigger" else ""
    return (
        f"CREATE OR REPLACE FUNCTION {sql.qualified(element.name)}() RETURNS {returns}\n"
        f"LANGUAGE plpgsql SET search_path = {SEARCH_PATH} AS $vecorm$\n"
        f"{'DECLARE' + chr(10) + declare if declare else ''}BEGIN{sql.body(element.event)}\n"
        f"{return_line}END;\n$vecorm$"
    )


@compiles(DropFunction)
def _drop_function(element: DropFunction, compiler: DDLCompiler, **_: Any) -> str:
    return f"DROP FUNCTION IF EXISTS {_names(element, compiler).of(element.name)}() CASCADE"


@compiles(CallFunction)
def _call_function(element: CallFunction, compiler: DDLCompiler, **_: Any) -> str:
    return f"SELECT {_names(element, compiler).of(element.name)}()"


@compiles(CommentOnFunction)
def _comment_on_function(element: CommentOnFunction, compiler: DDLCompiler, **_: Any) -> str:
    comment = compiler.sql_compiler.render_literal_value(element.comment, String())
    return f"COMMENT ON FUNCTION {_names(element, compiler).of(element.name)}() IS {comment}"


@compiles(CreateTrigger)
def _create_trigger(element: CreateTrigger, compiler: DDLCompiler, **_: Any) -> str:
    names = _names(element, compiler)
    return (
        f"CREATE TRIGGER {compiler.preparer.quote(element.name)} AFTER "
        f"{element.event.upper()} ON {names.of(element.table_name)} "
        f"{_REFERENCING[element.event]}FOR EACH STATEMENT EXECUTE FUNCTION "
        f"{names.of(object_name(element.table_name, element.event))}()"
    )


@compiles(DropTrigger)
def _drop_trigger(element: DropTrigger, compiler: DDLCompiler, **_: Any) -> str:
    table = _names(element, compiler).of(element.table_name)
    return f"DROP TRIGGER IF EXISTS {compiler.preparer.quote(element.name)} ON {table}"


@compiles(SetReplicaIdentity)
def _set_replica_identity(element: SetReplicaIdentity, compiler: DDLCompiler, **_: Any) -> str:
    key_index = compiler.preparer.quote(f"ux_{element.table_name}_bm25_postings_key")
    postings = _names(element, compiler).of(element.name)
    return f"ALTER TABLE {postings} REPLICA IDENTITY USING INDEX {key_index}"


@compiles(TruncateSideTables)
def _truncate(element: TruncateSideTables, compiler: DDLCompiler, **_: Any) -> str:
    names = _names(element, compiler)
    return f"TRUNCATE {', '.join(names.of(name) for name in element.names)}"


# --------------------------------------------------------------------------- sets of them


def function_elements(tables: BM25Tables, schema: str) -> list[CreateFunction]:
    """A :class:`CreateFunction` per function of :data:`FUNCTION_EVENTS`."""
    return [CreateFunction(tables, schema, event) for event in FUNCTION_EVENTS]


def trigger_elements(tables: BM25Tables, schema: str) -> list[CreateTrigger]:
    """A :class:`CreateTrigger` per event of :data:`TRIGGER_EVENTS`."""
    return [CreateTrigger(tables.base_name, schema, event) for event in TRIGGER_EVENTS]


def create_elements(
    tables: BM25Tables, schema: str, signature: str, *, with_replica_identity: bool = True
) -> list[BM25Object]:
    """The sequences, (the postings' replica identity,) the functions, the triggers (dropped
    and made again) and the insert function's ``signature`` comment, in that order."""
    name = tables.base_name
    # Statistics kept per distribution value use no sequence (Citus keeps one on one node).
    sequences = SEQUENCES if tables.distributed_by is None else ()
    return [
        *(CreateSequence(name, schema, which) for which in sequences),
        *([SetReplicaIdentity(name, schema)] if with_replica_identity else []),
        *function_elements(tables, schema),
        *(DropTrigger(name, schema, event) for event in TRIGGER_EVENTS),
        *trigger_elements(tables, schema),
        CommentOnFunction(name, schema, "insert", COMMENT_PREFIX + signature),
    ]


def drop_elements(table_name: str, schema: str | None) -> list[BM25Object]:
    """The functions of ``table_name``'s statistics (``CASCADE`` takes the triggers), then the
    sequences."""
    return [
        *(DropFunction(table_name, schema, event) for event in FUNCTION_EVENTS),
        *(DropSequence(table_name, schema, which) for which in SEQUENCES),
    ]


@contextmanager
def naming(element: BM25Object) -> Iterator[None]:
    """Add the object a failing statement was about to the database error's notes."""
    try:
        yield
    except DBAPIError as error:
        error.add_note(f"vecorm: while running the BM25 DDL of {element.description}")
        raise


def run(connection: Connection, elements: Sequence[BM25Object]) -> None:
    """Execute ``elements`` in order on ``connection``; an error names the object."""
    for element in elements:
        with naming(element):
            connection.execute(element)
