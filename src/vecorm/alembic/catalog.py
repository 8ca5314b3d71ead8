"""What PostgreSQL stored, read from the catalog, and how a metadata object *would* be stored.

Alembic compares indexes by name, uniqueness and key expressions, and generated columns by
rendered text; it does not see a changed ``USING hnsw`` method, ``WITH (m = 16)`` parameters,
an operator class or its parameters, a collation, a predicate, an INCLUDE list, or a rewritten
``GENERATED ALWAYS AS (...)`` expression. vecorm compares those from the catalog (``pg_index``,
``pg_class.reloptions``, ``pg_opclass``, ``pg_am``, ``pg_get_expr``, ``pg_get_indexdef``).

To compare like with like, the metadata side is *normalised by PostgreSQL itself*: inside a
savepoint, a temporary copy of the table (``CREATE TEMP TABLE t (LIKE schema.t)``, empty, so an
HNSW build costs nothing) receives the metadata's index or generated column, the catalog text is
read back, and the savepoint is rolled back::

    with simulated_table(connection, "documents", None) as probe:
        expected = probe.index_signature(metadata_index)
    actual = index_signature(connection, "ix_documents_embedding_hnsw", None)
    expected == actual   # canonical catalog text on both sides, never vecorm's own strings
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Column, Index, MetaData, Table, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import CompileError, DBAPIError
from sqlalchemy.schema import CreateColumn, CreateIndex

from vecorm.schema.generated import qualified_name, trigger_of

log = logging.getLogger("vecorm.alembic")


@dataclass(frozen=True)
class IndexSignature:
    """An index as the catalog describes it; equal signatures mean nothing to rebuild.

    ``keys`` are the bare key columns and expressions (``pg_get_indexdef(oid, k, false)``);
    ``key_definitions`` the same keys as ``pg_get_indexdef(oid)`` prints them, with what
    PostgreSQL adds when it is not the default: collation, operator class and its parameters,
    direction and NULLS order (``lower((name)::text) COLLATE "C" text_pattern_ops DESC``).
    """

    method: str
    unique: bool
    keys: tuple[str, ...]
    key_definitions: tuple[str, ...]
    opclasses: tuple[str, ...]
    include: tuple[str, ...]
    options: tuple[str, ...]  # reloptions in stored order, e.g. ('m=16', 'ef_construction=64')
    predicate: str | None
    nulls_not_distinct: bool = False

    def comparable(self) -> tuple[object, ...]:
        """Everything, but ``options`` in any order (``WITH (m=16, ef_construction=64)`` is the
        same index either way); ``keys`` are in ``key_definitions`` already."""
        return (
            self.method,
            self.unique,
            self.nulls_not_distinct,
            self.key_definitions,
            self.opclasses,
            self.include,
            tuple(sorted(self.options)),
            self.predicate,
        )

    @property
    def with_params(self) -> dict[str, object]:
        """``reloptions`` as ``postgresql_with`` keywords, numbers as numbers."""
        params: dict[str, object] = {}
        for option in self.options:
            key, _, value = option.partition("=")
            params[key] = _number_or_text(value)
        return params

    def describe(self) -> str:
        """Short text for logs: ``hnsw (embedding vector_cosine_ops) WITH (m=16)``, with
        ``UNIQUE``, ``INCLUDE``, ``NULLS NOT DISTINCT`` and ``WHERE`` when the index has them."""
        text = f"{self.method} ({', '.join(self.key_definitions)})"
        if self.unique:
            text = f"UNIQUE {text}"
        if self.include:
            text += f" INCLUDE ({', '.join(self.include)})"
        if self.nulls_not_distinct:
            text += " NULLS NOT DISTINCT"
        if self.options:
            text += f" WITH ({', '.join(self.options)})"
        if self.predicate:
            text += f" WHERE {self.predicate}"
        return text


@dataclass(frozen=True)
class GeneratedColumn:
    """A generated column: ``kind`` is ``'s'`` (stored) or ``'v'`` (virtual)."""

    kind: str
    expression: str
    type_sql: str


_INDEX_SQL = """
    SELECT am.amname,
           x.indisunique,
           x.indnkeyatts,
           x.indnatts,
           ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, false)
                 FROM generate_series(1, x.indnatts) AS k ORDER BY k) AS defs,
           ARRAY(SELECT opc.opcname FROM unnest(x.indclass::oid[]) WITH ORDINALITY AS u(oid, n)
                 JOIN pg_opclass opc ON opc.oid = u.oid ORDER BY u.n) AS opclasses,
           coalesce(i.reloptions, '{}'::text[]),
           pg_get_expr(x.indpred, x.indrelid),
           pg_get_indexdef(x.indexrelid),
           {nulls_not_distinct}
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_am am ON am.oid = i.relam
    WHERE x.indexrelid OPERATOR(pg_catalog.=) :oid
    """

_INDEX_OID_SQL = text(
    """
    SELECT i.oid, x.indisvalid,
           EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.oid)
    FROM pg_class i
    JOIN pg_index x ON x.indexrelid = i.oid
    JOIN pg_namespace n ON n.oid = i.relnamespace
    WHERE i.relname OPERATOR(pg_catalog.=) :name
      AND n.nspname OPERATOR(pg_catalog.=) coalesce(:schema, pg_catalog.current_schema())
    """
)

_TEMP_INDEX_OID_SQL = text(
    "SELECT i.oid FROM pg_catalog.pg_class i WHERE i.relname OPERATOR(pg_catalog.=) :name "
    "AND i.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()"
)

_GENERATED_SQL = text(
    """
    SELECT a.attgenerated, pg_get_expr(d.adbin, d.adrelid), format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a
    JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid OPERATOR(pg_catalog.=) :relid AND a.attname OPERATOR(pg_catalog.=) :column
      AND a.attgenerated OPERATOR(pg_catalog.<>) ''
      AND NOT a.attisdropped
    """
)

_TABLE_OID_SQL = text(
    """
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname OPERATOR(pg_catalog.=) :name
      AND n.nspname OPERATOR(pg_catalog.=) coalesce(:schema, pg_catalog.current_schema())
    """
)

_COLUMN_TYPE_SQL = text(
    """
    SELECT format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a
    WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table)
      AND a.attname OPERATOR(pg_catalog.=) :column AND NOT a.attisdropped
    """
)

_COLUMN_NAMES_SQL = text(
    """
    SELECT a.attname FROM pg_catalog.pg_attribute a
    WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table)
      AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
    """
)

_EXTENSION_SQL = text(
    "SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) :name"
)


def extension_version(connection: Connection, name: str = "vector") -> str | None:
    """Installed version of extension ``name``, or ``None``."""
    return connection.execute(_EXTENSION_SQL, {"name": name}).scalar_one_or_none()


def table_oid(connection: Connection, name: str, schema: str | None) -> int | None:
    """OID of table ``schema.name`` (``current_schema()`` when ``schema`` is None)."""
    return connection.execute(_TABLE_OID_SQL, {"name": name, "schema": schema}).scalar()


def column_type(connection: Connection, table_sql: str, column: str) -> str | None:
    """``format_type`` of ``column`` on ``table_sql`` (a quoted, maybe qualified name), e.g.
    ``'vector(384)'``; ``None`` when the table or the column does not exist."""
    found = connection.execute(_COLUMN_TYPE_SQL, {"table": table_sql, "column": column}).scalar()
    return None if found is None else str(found)


def column_names(connection: Connection, table_sql: str) -> set[str]:
    """The columns of ``table_sql`` (a quoted, maybe qualified name); empty when the table
    does not exist."""
    rows = connection.execute(_COLUMN_NAMES_SQL, {"table": table_sql}).scalars()
    return {str(name) for name in rows}


def adopted_online(connection: Connection, table: Table) -> bool:
    """Whether autogenerate adds ``table``'s trigger-kept tsvector column to the existing table
    (the online path of docs/adopting.md): the table exists, the column does not yet.

    The BM25 comparator then renders ``rebuild=False`` and the online comparator's
    ``op.fill_search_vector(..., bm25=True)`` counts the rows: both decide from this, so the
    result does not depend on which of them Alembic runs first.
    """
    trigger = trigger_of(table)
    if trigger is None or table_oid(connection, table.name, table.schema) is None:
        return False
    return column_type(connection, qualified_name(table.schema, table.name), trigger.column) is None


def index_state(
    connection: Connection, name: str, schema: str | None
) -> tuple[int, bool, bool] | None:
    """``(oid, is_valid, backs_constraint)`` of index ``name``, or ``None`` when absent."""
    row = connection.execute(_INDEX_OID_SQL, {"name": name, "schema": schema}).first()
    return None if row is None else (int(row[0]), bool(row[1]), bool(row[2]))


def index_signature_by_oid(connection: Connection, oid: int) -> IndexSignature:
    """The :class:`IndexSignature` of the index with ``oid``."""
    version = connection.dialect.server_version_info
    # pg_index.indnullsnotdistinct exists from PostgreSQL 15 on.
    nulls = "x.indnullsnotdistinct" if version is None or version >= (15,) else "false"
    statement = text(_INDEX_SQL.replace("{nulls_not_distinct}", nulls))
    row = connection.execute(statement, {"oid": oid}).one()
    (method, unique, nkeys, _natts, defs, opclasses, options, predicate, definition,
     nulls_not_distinct) = row  # fmt: skip
    keys = tuple(defs[:nkeys])
    return IndexSignature(
        method=str(method),
        unique=bool(unique),
        keys=keys,
        key_definitions=key_definitions(str(definition), keys),
        opclasses=tuple(opclasses[:nkeys]),
        include=tuple(defs[nkeys:]),
        options=tuple(options),
        predicate=predicate,
        nulls_not_distinct=bool(nulls_not_distinct),
    )


#: ``CREATE [UNIQUE] INDEX name ON [ONLY] [schema.]table USING method (`` as
#: ``pg_get_indexdef`` prints it: each name bare (``[a-z0-9_$]``) or quoted with ``""`` escapes.
_IDENTIFIER = r'(?:"(?:[^"]|"")+"|[^\s".(]+)'
_INDEXDEF_HEAD = re.compile(
    rf"^CREATE (?:UNIQUE )?INDEX {_IDENTIFIER} ON (?:ONLY )?(?:{_IDENTIFIER}\.)?{_IDENTIFIER} "
    rf"USING {_IDENTIFIER} \("
)


def key_definitions(definition: str, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The key list of ``pg_get_indexdef`` output ``definition``, one text per key.

    ``keys`` (the bare keys, in order) check the split: each item starts with its key.
    """
    head = _INDEXDEF_HEAD.match(definition)
    if head is None:
        raise ValueError(f"unexpected index definition: {definition}")
    items: list[str] = []
    depth = 0
    quote: str | None = None
    start = position = head.end()
    while position < len(definition):
        char = definition[position]
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char  # a doubled quote closes and reopens: same outcome
        elif char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                items.append(definition[start:position].strip())
                break
            depth -= 1
        elif char == "," and depth == 0:
            items.append(definition[start:position].strip())
            start = position + 1
        position += 1
    if len(items) != len(keys) or not all(
        item.startswith(key) for item, key in zip(items, keys, strict=True)
    ):
        raise ValueError(f"cannot split the keys {keys} out of: {definition}")
    return tuple(items)


def index_signature(connection: Connection, name: str, schema: str | None) -> IndexSignature | None:
    """The stored :class:`IndexSignature` of index ``name``, or ``None`` when absent."""
    state = index_state(connection, name, schema)
    return None if state is None else index_signature_by_oid(connection, state[0])


def generated_column(
    connection: Connection, table: str, column: str, schema: str | None
) -> GeneratedColumn | None:
    """The stored generation expression of ``table.column``, or ``None`` if not generated."""
    relid = table_oid(connection, table, schema)
    if relid is None:
        return None
    row = connection.execute(_GENERATED_SQL, {"relid": relid, "column": column}).first()
    return None if row is None else GeneratedColumn(str(row[0]), str(row[1]), str(row[2]))


class SimulatedTable:
    """An empty temporary copy of a table on which metadata objects are created and read back.

    Made by :func:`simulated_table`; everything it creates vanishes with its savepoint.
    """

    def __init__(self, connection: Connection, table: Table) -> None:
        self.connection = connection
        # Unqualified, same name: pg_temp comes first in the search path for relations.
        self.table = table

    def index_signature(self, index: Index) -> IndexSignature | None:
        """How PostgreSQL stores ``index`` (a metadata index of the real table), or ``None``."""
        probe_name = f"vecorm_probe_{uuid.uuid4().hex[:16]}"
        copy = _index_copy(index, self.table, probe_name)
        try:
            with self.connection.begin_nested():
                self.connection.execute(CreateIndex(copy))
                oid = self.connection.execute(_TEMP_INDEX_OID_SQL, {"name": probe_name}).scalar()
                assert oid is not None
                signature = index_signature_by_oid(self.connection, int(oid))
                raise _Rollback(signature)
        except _Rollback as done:
            assert isinstance(done.value, IndexSignature)
            return done.value
        except DBAPIError as exc:
            log.info("vecorm: cannot simulate index %s: %s", index.name, exc.orig)
            return None
        except CompileError as exc:
            log.info("vecorm: cannot simulate index %s: %s", index.name, exc)
            return None

    def generated_column(self, column: Column[object]) -> GeneratedColumn | None:
        """How PostgreSQL stores metadata ``column``'s generation expression, or ``None``."""
        probe = Column(column.name, column.type, column.server_default)  # type: ignore[arg-type]
        Table(self.table.name, MetaData(), probe)
        quoted_table = self.connection.dialect.identifier_preparer.quote(self.table.name)
        quoted_column = self.connection.dialect.identifier_preparer.quote(column.name)
        add = CreateColumn(probe).compile(dialect=self.connection.dialect)
        try:
            with self.connection.begin_nested():
                self.connection.execute(
                    text(
                        f"ALTER TABLE pg_temp.{quoted_table} DROP COLUMN IF EXISTS {quoted_column}"
                    )
                )
                self.connection.execute(
                    text(f"ALTER TABLE pg_temp.{quoted_table} ADD COLUMN {add}")
                )
                relid = self.connection.execute(
                    text("SELECT to_regclass(:name)::oid"), {"name": f"pg_temp.{quoted_table}"}
                ).scalar_one()
                row = self.connection.execute(
                    _GENERATED_SQL, {"relid": relid, "column": column.name}
                ).first()
                result = (
                    None if row is None else GeneratedColumn(str(row[0]), str(row[1]), str(row[2]))
                )
                raise _Rollback(result)
        except _Rollback as done:
            assert done.value is None or isinstance(done.value, GeneratedColumn)
            return done.value
        except DBAPIError as exc:
            log.info("vecorm: cannot simulate column %s: %s", column.name, exc.orig)
            return None


class _Rollback(Exception):
    """Carries a result out of a savepoint that must be rolled back."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value


@contextmanager
def simulated_table(
    connection: Connection, metadata_table: Table, schema: str | None
) -> Iterator[SimulatedTable | None]:
    """A :class:`SimulatedTable` copied from the stored ``schema.<metadata_table.name>``.

    Yields ``None`` (and logs why) if the copy cannot be made, e.g. on a read-only replica.
    Nothing survives: the copy lives in a savepoint that is always rolled back.
    """
    preparer = connection.dialect.identifier_preparer
    source = preparer.quote(metadata_table.name)
    if schema is not None:
        source = f"{preparer.quote_schema(schema)}.{source}"
    savepoint = connection.begin_nested()
    try:
        try:
            connection.execute(
                text(f"CREATE TEMP TABLE {preparer.quote(metadata_table.name)} (LIKE {source})")
            )
        except DBAPIError as exc:
            log.info("vecorm: cannot copy table %s for comparison: %s", source, exc.orig)
            yield None
            return
        copy = metadata_table.to_metadata(MetaData(), schema=None)  # type: ignore[arg-type]
        yield SimulatedTable(connection, copy)
    finally:
        if savepoint.is_active:
            savepoint.rollback()


def _index_copy(index: Index, table: Table, name: str) -> Index:
    """``index`` re-targeted at ``table`` (the unqualified temp copy) under ``name``."""
    for candidate in table.indexes:
        if candidate.name == index.name:
            source = candidate
            break
    else:  # pragma: no cover - to_metadata copies every index
        raise LookupError(index.name)
    # CONCURRENTLY cannot run in the savepoint, and where the index lives is not compared.
    options = {
        key: value
        for key, value in source.dialect_kwargs.items()
        if key not in ("postgresql_concurrently", "postgresql_tablespace")
    }
    copy = Index(name, *source.expressions, unique=source.unique, **options)
    if copy.table is None:  # only text() expressions: nothing bound it to the table
        table.append_constraint(copy)
    return copy


def _number_or_text(value: str) -> object:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value
