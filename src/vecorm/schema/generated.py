"""The full-text side: the generated tsvector expression over a model's text fields.

The expression is immutable (a literal text search configuration, ``coalesce`` for NULLs) so
PostgreSQL accepts it in a ``GENERATED ALWAYS AS (...) STORED`` column, and every name in it is
qualified: PostgreSQL binds a generation expression's functions when the DDL runs, on the
migration's search_path, where an exact-type overload (``setweight(tsvector, text)`` for the
``'A'`` literal) in any schema would otherwise be bound in for good and run on every write::

    tsvector_expression(("title", "body"), "english", {"title": "A"})
    # "pg_catalog.setweight(pg_catalog.to_tsvector('english'::pg_catalog.regconfig,
    #  coalesce(title, '')), 'A'::"char") OPERATOR(pg_catalog.||) pg_catalog.to_tsvector(...)"

PostgreSQL stores it as the functions it resolved to, so ``pg_get_expr`` shows the familiar
unqualified text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy.dialects import postgresql

_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


def regconfig_literal(language: str) -> str:
    """``'english'::regconfig``; ``language`` must already be validated as an identifier."""
    return "'" + language.replace("'", "''") + "'::pg_catalog.regconfig"


def tsvector_expression(
    columns: Sequence[str], language: str, weights: Mapping[str, str] | None = None
) -> str:
    """SQL for the generated tsvector over ``columns`` (database column names)."""
    config = regconfig_literal(language)
    parts = []
    for column in columns:
        vector = f"pg_catalog.to_tsvector({config}, coalesce({_PREPARER.quote(column)}, ''))"
        weight = (weights or {}).get(column)
        if weight is not None:
            vector = f"pg_catalog.setweight({vector}, '{weight}'::\"char\")"
        parts.append(vector)
    return " OPERATOR(pg_catalog.||) ".join(parts)
