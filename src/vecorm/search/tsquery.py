"""tsquery primitives: search text parsed by PostgreSQL, the modes, and the match condition.

The search text is always a bound parameter and is only ever parsed by PostgreSQL's own
lenient parsers (``plainto_tsquery`` / ``phraseto_tsquery`` / ``websearch_to_tsquery``), which
accept any string: ``& | ! ( ) : * ' "``, backslashes and SQL text are just words to them, and
text made only of stop words gives an empty query that matches nothing. Modes:

``"any"`` (default)
    Rows containing *any* query lexeme, ranked: natural-language queries rarely have every
    word in one document, and ``websearch_to_tsquery``'s AND returns nothing for most of them.
``"all"``
    Every lexeme (``plainto_tsquery``).
``"phrase"``
    The lexemes in order (``phraseto_tsquery``).
``"websearch"``
    Search-engine syntax: ``"quoted phrase"``, ``-excluded``, ``or``.

    matches(Document, tsquery_expression("vacuum -autovacuum", mode="websearch"))
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import Text, bindparam, cast, literal
from sqlalchemy.dialects.postgresql import REGCONFIG, TSQUERY
from sqlalchemy.sql.elements import ColumnElement

from vecorm.errors import ConfigurationError
from vecorm.schema import pgcatalog as catalog
from vecorm.schema.pgcatalog import pg

Mode = Literal["any", "all", "phrase", "websearch"]
MODES: tuple[str, ...] = ("any", "all", "phrase", "websearch")


def clean_search_text(text: str) -> str:
    """``text`` made safe to bind: NUL (which PostgreSQL text cannot hold) becomes a space,
    unencodable surrogates are replaced.

    >>> clean_search_text("error\\x000x80070057")
    'error 0x80070057'
    >>> clean_search_text("\\ud800 bad surrogate")
    '? bad surrogate'
    """
    if not isinstance(text, str):
        raise ConfigurationError(f"search text must be a str, not {type(text).__name__}")
    cleaned = text.replace("\x00", " ")
    return cleaned.encode("utf-8", "replace").decode("utf-8")


def _regconfig(language: str) -> ColumnElement[Any]:
    return cast(literal(language), REGCONFIG)


def tsquery_expression(
    text: str, *, language: str = "english", mode: Mode = "any"
) -> ColumnElement[Any]:
    """The ``tsquery`` for ``text``, parsed by PostgreSQL with the bound text.

    ``"any"`` is ``plainto_tsquery``'s AND rewritten to OR on its canonical text (lexemes are
    quoted there, so only the operators between them change)::

        tsquery_expression("error 0x80070057")   # 'error' | '0x80070057'
    """
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    config = _regconfig(language)
    bound = bindparam(None, clean_search_text(text), type_=Text)
    if mode == "websearch":
        return catalog.websearch_to_tsquery(config, bound)
    if mode == "phrase":
        return catalog.phraseto_tsquery(config, bound)
    parsed = catalog.plainto_tsquery(config, bound)
    if mode == "all":
        return parsed
    # Lexemes never contain a space, so " & " only ever occurs as the operator.
    any_term = pg.replace(cast(parsed, Text), " & ", " | ")
    return cast(any_term, TSQUERY)


def language_of(model: Any) -> str:
    """The text search configuration of ``model``'s tsvector."""
    from vecorm.schema.config import search_config

    return search_config(model).language


def matches(model: Any, query: ColumnElement[Any]) -> ColumnElement[bool]:
    """``search_vector @@ query``: the condition the GIN index serves."""
    condition: ColumnElement[bool] = model.search_vector.bool_op("@@")(query)
    return condition
