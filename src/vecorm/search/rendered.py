"""SQL rendered once: a statement that does not depend on a query's values, compiled one time
and reused as text, so that a search does not rebuild it element by element on every call.

The text names the CTEs it reads (the caller attaches them with ``add_cte``); every number in
it is written into the SQL, and a bound value is refused, since it would be frozen into every
later statement::

    scoring = rendered_once(select(postings.c.id).where(postings.c.tf > literal_column("1")),
                            [column("id", Integer)])

A statement run with a ``schema_translate_map`` (schema-per-tenant) compiles the construct
again for that statement, once per SQLAlchemy cache entry, so that its tables are translated
as the rest of the statement's are: the text alone would name the untranslated schema.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import CompoundSelect, Select, TextualSelect

#: Named parameters (none are expected) and no ``%`` doubling: ``text()`` doubles ``%`` for a
#: pyformat driver when the statement it sits in is compiled.
_DIALECT = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]


class _Rendered(TextClause):
    """``construct``'s SQL as text; its cache key is the text, unique to the construct."""

    inherit_cache = True

    def __init__(self, construct: Select[Any] | CompoundSelect[Any], sql: str) -> None:
        super().__init__(sql)
        self.construct = construct


@compiles(_Rendered)
def _compile_rendered(element: _Rendered, compiler: SQLCompiler, **kw: Any) -> str:
    translate = compiler.schema_translate_map
    if not translate:
        sql: str = compiler.visit_textclause(element, **kw)  # type: ignore[no-untyped-call]
        return sql
    # The tables render as SQLAlchemy's schema placeholders, which the execution replaces
    # with the connection's map, as it does in the rest of the statement.
    return element.construct.compile(
        dialect=compiler.dialect,
        schema_translate_map=translate,
        compile_kwargs={"render_postcompile": True},
    ).string


def rendered_once(
    construct: Select[Any] | CompoundSelect[Any], columns: list[Any]
) -> TextualSelect:
    """``construct`` compiled for PostgreSQL, as a textual ``SELECT`` of ``columns``.

    Raises :class:`AssertionError` when ``construct`` binds a value (``LIMIT`` values rendered
    at execution, :func:`~vecorm.search.vector.row_limit`, are written in). A ``:`` in the SQL
    (a quoted name) is escaped so that ``text()`` does not read it as a parameter."""
    compiled = construct.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    bound = [name for name, bind in compiled.binds.items() if not bind.literal_execute]
    if bound:
        raise AssertionError(f"SQL rendered once binds {bound}; write them into the SQL")
    return _Rendered(construct, compiled.string.replace(":", "\\:")).columns(*columns)
