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

With ``SearchConfig(search_vector="trigger")`` the column is a plain ``tsvector`` that a
``BEFORE INSERT OR UPDATE OF <fields>`` row trigger fills with the same expression over
``NEW.<field>``; :class:`SearchVectorTrigger` holds the DDL of its function (``SET
search_path = pg_catalog, pg_temp``, everything qualified, like the BM25 functions)::

    trigger = SearchVectorTrigger("documents", "search_vector", ("title", "body"), "english")
    trigger.create_statements("public")   # CREATE OR REPLACE FUNCTION ..., CREATE TRIGGER ...
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from vecorm.schema.pgcatalog import qualified_in

_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


def regconfig_literal(language: str) -> str:
    """``'english'::regconfig``; ``language`` must already be validated as an identifier."""
    return "'" + language.replace("'", "''") + "'::pg_catalog.regconfig"


def tsvector_expression(
    columns: Sequence[str],
    language: str,
    weights: Mapping[str, str] | None = None,
    *,
    row: str | None = None,
) -> str:
    """SQL for the generated tsvector over ``columns`` (database column names); ``row``
    qualifies each column (``row="NEW"`` in a trigger function)."""
    config = regconfig_literal(language)
    prefix = f"{row}." if row else ""
    parts = []
    for column in columns:
        source = f"{prefix}{_PREPARER.quote(column)}"
        vector = f"pg_catalog.to_tsvector({config}, coalesce({source}, ''))"
        weight = (weights or {}).get(column)
        if weight is not None:
            vector = f"pg_catalog.setweight({vector}, '{weight}'::\"char\")"
        parts.append(vector)
    return " OPERATOR(pg_catalog.||) ".join(parts)


#: Every function vecorm creates runs with this search_path (see vecorm.search.bm25.triggers).
SEARCH_PATH = "pg_catalog, pg_temp"


def qualified_name(schema: str | None, name: str) -> str:
    """``"schema"."name"``, quoted; just ``"name"`` without a schema."""
    return qualified_in(_PREPARER, schema, name)


@dataclass(frozen=True)
class SearchVectorTrigger:
    """The row trigger that keeps a plain ``tsvector`` column equal to
    :func:`tsvector_expression` over the text columns (``SearchConfig(search_vector="trigger")``).

    ``columns`` and ``column`` are database column names. An INSERT's own value for the
    tsvector column is overwritten; an UPDATE that sets only the tsvector column is left alone
    (that is how the batched fill writes it without computing it twice).
    """

    table_name: str
    column: str
    columns: tuple[str, ...]
    language: str
    weights: Mapping[str, str] | None = field(default=None, compare=False)

    @property
    def function_name(self) -> str:
        return f"{self.table_name}_{self.column}"

    @property
    def trigger_name(self) -> str:
        return f"{self.table_name}_{self.column}"

    def expression(self, row: str | None = None) -> str:
        """The tsvector expression, over ``row.<column>`` when ``row`` is given."""
        return tsvector_expression(self.columns, self.language, self.weights, row=row)

    def function_body(self) -> str:
        """The PL/pgSQL body (``pg_proc.prosrc``) of the trigger function."""
        return (
            f"\nBEGIN\n    NEW.{_PREPARER.quote(self.column)} := {self.expression('NEW')};\n"
            "    RETURN NEW;\nEND;\n"
        )

    def create_statements(self, schema: str) -> list[str]:
        """``CREATE OR REPLACE FUNCTION`` + ``CREATE TRIGGER`` for the table in ``schema``
        (an existing trigger of that name is replaced)."""
        return trigger_statements(
            schema,
            self.table_name,
            self.function_name,
            self.trigger_name,
            self.function_body(),
            "BEFORE INSERT OR UPDATE OF {columns} ON {table} FOR EACH ROW",
            self.columns,
        )

    def drop_statements(self, schema: str) -> list[str]:
        """Drop the function and, with it (``CASCADE``), the trigger."""
        return [f"DROP FUNCTION IF EXISTS {qualified_name(schema, self.function_name)}() CASCADE"]


def trigger_statements(
    schema: str,
    table_name: str,
    function_name: str,
    trigger_name: str,
    body: str,
    when: str,
    columns: Sequence[str],
) -> list[str]:
    """``CREATE OR REPLACE FUNCTION`` (PL/pgSQL ``body``, ``search_path`` pinned) and a
    ``CREATE TRIGGER`` replacing any of that name; ``when`` is the trigger's timing, events
    and level, with ``{columns}`` (the quoted ``columns``) and ``{table}`` filled in::

        trigger_statements("public", "docs", "docs_f", "docs_t", body,
                           "AFTER INSERT OR UPDATE OF {columns} ON {table} FOR EACH STATEMENT",
                           ["title"])
    """
    function = qualified_name(schema, function_name)
    table = qualified_name(schema, table_name)
    trigger = _PREPARER.quote(trigger_name)
    watched = ", ".join(_PREPARER.quote(name) for name in columns)
    return [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger\n"
        f"LANGUAGE plpgsql SET search_path = {SEARCH_PATH} AS $vecorm${body}$vecorm$",
        f"DROP TRIGGER IF EXISTS {trigger} ON {table}",
        f"CREATE TRIGGER {trigger} {when.format(columns=watched, table=table)} "
        f"EXECUTE FUNCTION {function}()",
    ]


# Tables whose tsvector column a trigger keeps; kept off Table.info so Alembic never renders it.
_triggers: weakref.WeakKeyDictionary[Table, SearchVectorTrigger] = weakref.WeakKeyDictionary()


def declare_trigger(table: Table, trigger: SearchVectorTrigger) -> None:
    """Record that ``table``'s tsvector column is kept by ``trigger`` (the mixin calls it)."""
    _triggers[table] = trigger


def trigger_of(table: Table) -> SearchVectorTrigger | None:
    """The :class:`SearchVectorTrigger` of ``table``, or ``None`` (a generated column)."""
    return _triggers.get(table)
