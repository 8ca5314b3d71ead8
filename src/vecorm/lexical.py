"""The full-text side: the generated tsvector expression over a model's text fields.

The expression is immutable (a literal text search configuration, ``coalesce`` for NULLs) so
PostgreSQL accepts it in a ``GENERATED ALWAYS AS (...) STORED`` column::

    tsvector_expression(("title", "body"), "english", {"title": "A"})
    # "setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A')
    #  || to_tsvector('english'::regconfig, coalesce(body, ''))"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy.dialects import postgresql

_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


def regconfig_literal(language: str) -> str:
    """``'english'::regconfig``; ``language`` must already be validated as an identifier."""
    return "'" + language.replace("'", "''") + "'::regconfig"


def tsvector_expression(
    columns: Sequence[str], language: str, weights: Mapping[str, str] | None = None
) -> str:
    """SQL for the generated tsvector over ``columns`` (database column names)."""
    config = regconfig_literal(language)
    parts = []
    for column in columns:
        vector = f"to_tsvector({config}, coalesce({_PREPARER.quote(column)}, ''))"
        weight = (weights or {}).get(column)
        if weight is not None:
            vector = f"setweight({vector}, '{weight}')"
        parts.append(vector)
    return " || ".join(parts)
