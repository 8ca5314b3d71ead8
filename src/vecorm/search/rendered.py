"""SQL rendered once: a statement that does not depend on a query's values, compiled one time
and reused as text, so that a search does not rebuild it element by element on every call.

The text names the CTEs it reads (the caller attaches them with ``add_cte``); every number in
it is written into the SQL, and a bound value is refused, since it would be frozen into every
later statement::

    scoring = rendered_once(select(postings.c.id).where(postings.c.tf > literal_column("1")),
                            [column("id", Integer)])
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.selectable import CompoundSelect, Select, TextualSelect

#: Named parameters (none are expected) and no ``%`` doubling: ``text()`` doubles ``%`` for a
#: pyformat driver when the statement it sits in is compiled.
_DIALECT = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]


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
    return text(compiled.string.replace(":", "\\:")).columns(*columns)
