"""The BM25 trigger functions and triggers as SQL text: pinned ``search_path``, everything
qualified, writers that only append. Rendered from the DDL elements of
:mod:`vecorm.search.bm25.ddl` (one named object per statement) with PostgreSQL's dialect."""

from __future__ import annotations

import hashlib

from vecorm.schema.pgcatalog import table_schema
from vecorm.search.bm25 import ddl
from vecorm.search.bm25.ddl import COMMENT_PREFIX, SEARCH_PATH, TRIGGER_EVENTS
from vecorm.search.bm25.tables import BM25Tables

__all__ = [
    "COMMENT_PREFIX",
    "SEARCH_PATH",
    "TRIGGER_EVENTS",
    "create_statements",
    "drop_statements",
    "function_definitions",
    "indexed_expression",
    "replica_identity_statement",
    "signature",
    "table_schema",
    "trigger_definitions",
    "trigger_names",
]


def function_definitions(tables: BM25Tables, schema: str) -> dict[str, str]:
    """``{function name: CREATE OR REPLACE FUNCTION ...}`` for the triggers, rebuild and
    compact, for the table in ``schema``."""
    return {element.name: element.sql() for element in ddl.function_elements(tables, schema)}


def trigger_names(tables: BM25Tables) -> list[str]:
    """The names of the statement triggers, one per event of :data:`TRIGGER_EVENTS`."""
    return [tables.trigger_name(event_name) for event_name in TRIGGER_EVENTS]


def trigger_definitions(tables: BM25Tables, schema: str) -> dict[str, str]:
    """``{trigger name: CREATE TRIGGER ...}``: one statement-level trigger per event."""
    return {element.name: element.sql() for element in ddl.trigger_elements(tables, schema)}


def indexed_expression(tables: BM25Tables) -> str:
    """SQL of the generated tsvector expression the statistics are computed from."""
    computed = tables.table.c[tables.config.tsvector_column].computed
    return "" if computed is None else str(computed.sqltext)


def signature(tables: BM25Tables) -> str:
    """A digest of the function and trigger definitions and of the indexed tsvector
    expression, stored as the insert function's comment so that Alembic and ``vecorm doctor``
    can tell whether the database has this version (statistics built from another
    expression are stale). Independent of the schema the table is found in."""
    schema = tables.table.schema or ""
    definitions = [
        *function_definitions(tables, schema).values(),
        *trigger_definitions(tables, schema).values(),
        indexed_expression(tables),
    ]
    return hashlib.sha256("\n".join(definitions).encode()).hexdigest()[:16]


def replica_identity_statement(tables: BM25Tables, schema: str) -> str:
    """The postings have no primary key (its INCLUDE would not survive Alembic): their unique
    (document, lexeme) index identifies rows for logical replication instead."""
    return ddl.SetReplicaIdentity(tables.base_name, schema).sql()


def create_elements(
    tables: BM25Tables, schema: str, *, with_replica_identity: bool = True
) -> list[ddl.BM25Object]:
    """:func:`create_statements` as DDL elements, one named object each."""
    return ddl.create_elements(
        tables, schema, signature(tables), with_replica_identity=with_replica_identity
    )


def create_statements(
    tables: BM25Tables, schema: str, *, with_replica_identity: bool = True
) -> list[str]:
    """DDL creating the functions and triggers (the side tables come from the metadata),
    after the side tables exist (a migration runs it after their ``create_table``).

    Replaces earlier versions: triggers are dropped and made again."""
    elements = create_elements(tables, schema, with_replica_identity=with_replica_identity)
    return [element.sql() for element in elements]


def drop_statements(tables: BM25Tables, schema: str) -> list[str]:
    """DDL dropping the functions and, with them (``CASCADE``), the triggers; the sequences."""
    return [element.sql() for element in ddl.drop_elements(tables.base_name, schema)]
