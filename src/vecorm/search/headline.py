"""Snippets: ``ts_headline`` excerpts of a row's text with the query's words marked, as a column
to add to any search (text, hybrid, nearest) or plain ``select``.

By default the snippet is **HTML-safe**: PostgreSQL marks the words with two control
characters that no text contains, and the column's result processor HTML-escapes the text and
only then turns the marks into ``<mark>`` / ``</mark>``. (``ts_headline`` itself copies the
document as it is, so with ``StartSel=<b>`` a stored ``<script>`` would reach the page.)
``html=False`` returns the plain excerpt with ``start`` / ``stop`` around each word::

    snippet = headline(Document, "autovacuum tuning", "body")
    rows = session.execute(Document.text_search("autovacuum tuning", k=5).add_columns(snippet))
    rows[0].snippet   # '... how <mark>autovacuum</mark> decides ... <mark>tuning</mark> ...'
"""

from __future__ import annotations

from html import escape
from typing import Any

from sqlalchemy import Text, cast, literal
from sqlalchemy.dialects.postgresql import REGCONFIG
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from vecorm.errors import ConfigurationError
from vecorm.schema import pgcatalog as catalog
from vecorm.schema.config import search_config
from vecorm.schema.pgcatalog import pg
from vecorm.search.tsquery import Mode, tsquery_expression

# Start and stop marks PostgreSQL puts around each word when the result is made HTML-safe:
# ASCII STX / ETX, removed from the document first so that only PostgreSQL's marks remain.
_START, _STOP = "\x02", "\x03"


class HighlightedHTML(TypeDecorator[str]):
    """The snippet as HTML: the text escaped, the marked words in ``<mark>`` elements."""

    impl = Text
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        escaped = escape(str(value), quote=True)
        return escaped.replace(_START, "<mark>").replace(_STOP, "</mark>")


def _option(name: str, value: str) -> str:
    if '"' in value or "\\" in value:
        raise ConfigurationError(f"{name} cannot contain a double quote or a backslash")
    return f'{name}="{value}"'


def _count(name: str, value: int, low: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"{name} must be an integer >= {low}, not {value!r}")
    return f"{name}={value}"


def headline(
    model: Any,
    text: str,
    field: str | None = None,
    *,
    mode: Mode = "any",
    max_words: int = 35,
    min_words: int = 15,
    max_fragments: int = 0,
    html: bool = True,
    start: str = "<b>",
    stop: str = "</b>",
    label: str = "snippet",
) -> ColumnElement[str]:
    """``ts_headline`` of ``field`` (default: the model's searchable fields, joined by spaces)
    for ``text``, with the model's text search configuration.

    ``max_words`` / ``min_words`` bound the excerpt; ``max_fragments`` > 0 returns up to that
    many fragments joined by `` ... `` instead of one excerpt. ``html=True`` (the default)
    gives an HTML-escaped excerpt with ``<mark>`` around the words; ``html=False`` the raw
    excerpt with ``start`` / ``stop`` around them (your escaping then).
    """
    config = search_config(model)
    fields = config.fields if field is None else (field,)
    for name in fields:
        if not hasattr(model, name):
            raise ConfigurationError(f"{model.__name__} has no field {name!r} to excerpt")
    if min_words >= max_words:
        raise ConfigurationError(
            f"min_words ({min_words}) must be smaller than max_words ({max_words})"
        )
    marks = (_START, _STOP) if html else (start, stop)
    options = ", ".join(
        [
            _count("MaxWords", max_words, 2),
            _count("MinWords", min_words, 1),
            _count("MaxFragments", max_fragments, 0),
            _option("StartSel", marks[0]),
            _option("StopSel", marks[1]),
        ]
    )
    columns = [getattr(model, name) for name in fields]
    document = columns[0] if len(columns) == 1 else pg.concat_ws(literal(" ", Text), *columns)
    if html:
        document = pg.translate(
            cast(document, Text), literal(_START + _STOP, Text), literal("", Text)
        )
    language = cast(literal(config.language, Text), REGCONFIG)
    query = tsquery_expression(text, language=config.language, mode=mode)
    excerpt = catalog.ts_headline(
        language,
        cast(document, Text),
        query,
        literal(options, Text),
        type_=HighlightedHTML() if html else Text(),
    )
    return excerpt.label(label)
