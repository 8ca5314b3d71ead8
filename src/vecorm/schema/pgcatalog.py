"""pg_catalog's functions, schema-qualified, for every statement vecorm builds.

An unqualified function call resolves on the *caller's* ``search_path``, where an overload
with exact argument types in any schema (even one listed last, even ``public``) beats
pg_catalog's polymorphic or implicitly cast candidate: whoever can create objects there runs
code as the role that searches. So vecorm writes ``pg.array_length(...)``, which renders
``pg_catalog.array_length(...)``, and keeps operator operands exactly typed (see
docs/security.md)::

    from vecorm.schema.pgcatalog import pg
    select(pg.sum(table.c.df))      # SELECT pg_catalog.sum(df) ...

``coalesce``, ``nullif``, ``greatest`` and ``least`` are SQL syntax, not functions: keep
``func.coalesce`` for them. The full-text functions that SQLAlchemy's PostgreSQL dialect
special-cases have their own constructs here (``to_tsvector(config, text)`` ...).
"""

from __future__ import annotations

import operator
from typing import Any

from sqlalchemy import Table, Text, TypeDecorator, cast, func, literal, text
from sqlalchemy.dialects.postgresql import TSQUERY, TSVECTOR
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import sqltypes
from sqlalchemy.sql.compiler import IdentifierPreparer, SQLCompiler
from sqlalchemy.sql.elements import ColumnElement, Tuple
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import TableClause
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeEngine

from vecorm.errors import ConfigurationError

pg = func.pg_catalog

_REGCLASS = text("SELECT pg_catalog.to_regclass(:name)")


def relation_exists(connection: Connection, name: str) -> bool:
    """Whether ``name`` (quoted or plain, optionally schema-qualified) names a relation on
    ``connection``'s search_path."""
    return connection.execute(_REGCLASS, {"name": name}).scalar() is not None


# The server quotes the name: a bound value is not escaped for the driver's paramstyle.
_SCHEMA_OF = text(
    "SELECT n.nspname FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
    "WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.quote_ident(:name))"
)


def table_schema(connection: Connection, table: Table) -> str:
    """The schema ``table`` lives in on ``connection``: the one the connection's
    ``schema_translate_map`` names for it, else its own, else the one the connection's
    ``search_path`` resolves it to, else the connection's current schema."""
    schema = connection.schema_for_object(table)
    if schema:
        return schema
    found = connection.execute(_SCHEMA_OF, {"name": table.name}).scalar()
    if found is None:
        found = connection.exec_driver_sql("SELECT pg_catalog.current_schema()").scalar()
    if found is None:
        raise ConfigurationError(
            f"table {table.name!r}: no schema to create its functions and triggers in (the "
            "search_path names no existing schema); give the model a schema"
        )
    return str(found)


def qualified_table(connection: Connection, table: TableClause, name: str | None = None) -> str:
    """``table``'s name (or ``name``, an object beside it such as an index) quoted by
    ``connection``'s dialect and qualified with the schema the connection runs the table in:
    its ``schema_translate_map``'s, else the table's own, else none (the ``search_path``
    resolves it), as SQLAlchemy names the table in the statements it compiles."""
    preparer = connection.dialect.identifier_preparer
    return qualified_in(preparer, effective_schema(connection, table), name or table.name)


def effective_schema(connection: Connection, table: TableClause) -> str | None:
    """The schema SQLAlchemy names ``table`` with on ``connection``: for a ``Table``, the one
    the connection's ``schema_translate_map`` maps its schema to, else its own; a bare
    ``table()`` clause is never translated."""
    if isinstance(table, Table):
        return connection.schema_for_object(table)
    return table.schema


def qualified_in(preparer: IdentifierPreparer, schema: str | None, name: str) -> str:
    """``"schema"."name"`` (``"name"`` without a schema) quoted by ``preparer`` (a dialect's:
    a pyformat driver's doubles ``%``)."""
    quoted = preparer.quote(name)
    return f"{preparer.quote_schema(schema)}.{quoted}" if schema else quoted


class RegClass(ColumnElement[Any]):
    """``CAST('<table's qualified name>' AS pg_catalog.regclass)``: the name quoted by the
    statement's compiler, so that a ``schema_translate_map`` translates it with the rest."""

    inherit_cache = True
    _traverse_internals = [("table", InternalTraversal.dp_clauseelement)]

    def __init__(self, table: TableClause) -> None:
        self.table = table


@compiles(RegClass)
def _compile_regclass(element: RegClass, compiler: SQLCompiler, **kw: Any) -> str:
    name = compiler.preparer.format_table(element.table)
    return f"CAST({compiler.render_literal_value(name, sqltypes.String())} AS pg_catalog.regclass)"


class _TextSearchCall(FunctionElement[Any]):
    """SQLAlchemy's PostgreSQL dialect renders its full-text functions (``to_tsvector``,
    ``plainto_tsquery`` ...) by bare name whatever package they come from; these render
    qualified."""

    inherit_cache = True
    name = ""


class to_tsvector(_TextSearchCall):
    type = TSVECTOR()
    name = "to_tsvector"
    inherit_cache = True


class plainto_tsquery(_TextSearchCall):
    type = TSQUERY()
    name = "plainto_tsquery"
    inherit_cache = True


class phraseto_tsquery(_TextSearchCall):
    type = TSQUERY()
    name = "phraseto_tsquery"
    inherit_cache = True


class websearch_to_tsquery(_TextSearchCall):
    type = TSQUERY()
    name = "websearch_to_tsquery"
    inherit_cache = True


class ts_headline(_TextSearchCall):
    """``pg_catalog.ts_headline(config, document, query, options)``; the result type is the
    caller's (``type_=``: vecorm's HTML-safe snippets use their own)."""

    type = Text()
    name = "ts_headline"
    inherit_cache = True

    def __init__(self, *arguments: Any, type_: Any = None) -> None:
        super().__init__(*arguments)
        if type_ is not None:
            self.type = type_


def _compile_text_search(element: _TextSearchCall, compiler: SQLCompiler, **kw: Any) -> str:
    return f"pg_catalog.{element.name}({compiler.process(element.clause_expr.element, **kw)})"


for _call in (to_tsvector, plainto_tsquery, phraseto_tsquery, websearch_to_tsquery, ts_headline):
    compiles(_call)(_compile_text_search)


# --------------------------------------------------------------------------- operators

#: Column types whose comparison operators are pg_catalog's own (for a type of an extension,
#: ``citext`` say, they live in the extension's schema: those keep the plain operator).
_CATALOG_TYPES: tuple[type[TypeEngine[Any]], ...] = (
    sqltypes.Integer,
    sqltypes.Numeric,
    sqltypes.String,
    sqltypes.Uuid,
    sqltypes.Date,
    sqltypes.DateTime,
    sqltypes.Time,
    sqltypes.Interval,
    sqltypes.Boolean,
    sqltypes.LargeBinary,
)
_PYTHON_OPERATORS = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def text_value(value: str) -> ColumnElement[str]:
    """``value`` as a ``text`` expression (``CAST(:param AS TEXT)``: SQLAlchemy binds strings
    as ``varchar``). Compared with another ``text``, an operator has an exact match in
    pg_catalog, searched before any schema on the path, so no planted ``=(text, varchar)``
    can win."""
    return cast(literal(value, Text), Text)


def has_catalog_operators(type_: TypeEngine[Any]) -> bool:
    """Whether ``type_``'s comparisons resolve to pg_catalog's operators (a built-in type)."""
    return isinstance(type_, _CATALOG_TYPES) and not isinstance(type_, TypeDecorator)


def catalog_operator(symbol: str) -> str:
    """``OPERATOR(pg_catalog.=)``: written so in SQL, an operator resolves in pg_catalog
    only, where a planted ``=(varchar, varchar)`` on the search_path cannot win."""
    if symbol not in _PYTHON_OPERATORS:
        raise ConfigurationError(f"not a comparison operator: {symbol!r}")
    return f"OPERATOR(pg_catalog.{symbol})"


def compare(left: Any, symbol: str, right: Any) -> ColumnElement[bool]:
    """``left <symbol> right`` with pg_catalog's operator when ``left`` is a column (or a
    tuple of columns, compared as rows) of built-in types; the plain operator otherwise::

        compare(Document.__table__.c.id, "=", 5)       # id OPERATOR(pg_catalog.=) :id_1
    """
    columns = list(left.clauses) if isinstance(left, Tuple) else [left]
    if all(has_catalog_operators(column.type) for column in columns):
        return left.op(catalog_operator(symbol), is_comparison=True)(right)  # type: ignore[no-any-return]
    return _PYTHON_OPERATORS[symbol](left, right)  # type: ignore[no-any-return]
