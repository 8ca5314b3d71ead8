"""Waking embedding workers: the channel they ``LISTEN`` on, the ``NOTIFY`` a flush sends, and an
optional trigger that notifies for rows written without the flush hook (COPY, raw SQL).

A session installed with ``mode="worker"`` embeds nothing; its flush sends
``pg_notify('vecorm_embed', '<table>')`` in the session's transaction, which PostgreSQL
delivers at COMMIT (never for a rollback, once per transaction for the same table)::

    vecorm.install(SessionLocal, mode="worker")     # no embedder needed in the request
    with SessionLocal() as session:
        session.add(Document(title="Intro"))
        session.commit()                             # INSERT + NOTIFY vecorm_embed, 'documents'

Rows that other writers leave stale are found by the worker's poll; to wake it at once for
them too, add the statement trigger (optional; not on a Citus-distributed table)::

    from vecorm.embedding.notify import create_notify_trigger

    with engine.begin() as connection:
        create_notify_trigger(connection, Document)   # AFTER INSERT OR UPDATE OF title, content

Its function pins ``SET search_path = pg_catalog, pg_temp`` and calls ``pg_catalog.pg_notify``
qualified, like every function vecorm creates (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection

from vecorm.errors import ConfigurationError
from vecorm.schema.embeddings import embedding_slots
from vecorm.schema.generated import qualified_name, trigger_statements
from vecorm.schema.pgcatalog import table_schema
from vecorm.schema.related import related_fields

__all__ = [
    "CHANNEL",
    "MARKED",
    "NotifyTrigger",
    "create_notify_trigger",
    "drop_notify_trigger",
    "notify_tables",
    "notify_trigger",
    "vector_table",
]

#: The channel workers ``LISTEN`` on; each notification's payload is a table's name, or
#: :data:`MARKED` and the name.
CHANNEL = "vecorm_embed"
#: The prefix of the flush hook's notifications: every row it left has a NULL digest, so a
#: worker looks for those (``embedding IS NULL OR digest IS NULL``) instead of comparing the
#: digest of every row's text with its stored one, a scan of the whole table per wake-up.
#: A bare table name (the trigger's, another service's) still asks for that whole check.
MARKED = "marked:"
#: PostgreSQL's identifier limit: a longer trigger or function name would be truncated.
_MAX_NAME = 63

_NOTIFY = text("SELECT pg_catalog.pg_notify(:channel, :payload)")


def notify_tables(
    connection: Connection, tables: Iterable[str], channel: str = CHANNEL, *, marked: bool = False
) -> None:
    """Notify ``channel`` once per table name, delivered when ``connection``'s transaction
    commits. ``notify_tables(session.connection(), ["documents"])``; ``marked=True`` says the
    rows left to the workers have a NULL digest (see :data:`MARKED`)."""
    prefix = MARKED if marked else ""
    for name in sorted(set(tables)):
        connection.execute(_NOTIFY, {"channel": channel, "payload": prefix + name})


@dataclass(frozen=True)
class NotifyTrigger:
    """The statement trigger (and its function) that notifies :data:`CHANNEL` with the table's
    name after an INSERT (COPY included) or an UPDATE of the text ``columns``.

    ``columns`` are database column names. Updates of the vector columns do not fire it, so a
    worker's own writes never wake workers again.
    """

    table_name: str
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        """The function's and the trigger's name: ``<table>_embed_notify``."""
        return f"{self.table_name}_embed_notify"

    def function_body(self) -> str:
        """The PL/pgSQL body (``pg_proc.prosrc``) of the trigger function."""
        channel = "'" + CHANNEL.replace("'", "''") + "'"
        return (
            f"\nBEGIN\n    PERFORM pg_catalog.pg_notify({channel}, "
            "TG_TABLE_NAME::pg_catalog.text);\n    RETURN NULL;\nEND;\n"
        )

    def create_statements(self, schema: str) -> list[str]:
        """``CREATE OR REPLACE FUNCTION`` and ``CREATE TRIGGER`` for the table in ``schema``
        (an existing trigger of that name is replaced)."""
        if len(self.name) > _MAX_NAME:
            raise ConfigurationError(
                f"table {self.table_name!r}: the trigger name {self.name!r} is longer than "
                f"PostgreSQL's {_MAX_NAME} characters; notify from your own trigger instead"
            )
        return trigger_statements(
            schema,
            self.table_name,
            self.name,
            self.name,
            self.function_body(),
            "AFTER INSERT OR UPDATE OF {columns} ON {table} FOR EACH STATEMENT",
            self.columns,
        )

    def drop_statements(self, schema: str) -> list[str]:
        """Drop the function and, with it (``CASCADE``), the trigger."""
        return [f"DROP FUNCTION IF EXISTS {qualified_name(schema, self.name)}() CASCADE"]


def notify_trigger(model: type[Any]) -> NotifyTrigger:
    """The :class:`NotifyTrigger` of a searchable model, e.g. for an Alembic revision::

    for statement in notify_trigger(Document).create_statements("public"):
        op.execute(statement)
    """
    mapper = sa_inspect(model)
    # the fields of every embedding of the model (SearchConfig(embeddings=...) included)
    fields = dict.fromkeys(name for slot in embedding_slots(model) for name in slot.config.fields)
    columns = tuple(mapper.attrs[name].columns[0].name for name in fields)
    # a row pointed at another related row changes its text too
    columns += tuple(
        dict.fromkeys(
            column.name
            for related in related_fields(model)
            for column in related.local_columns
            if column.name not in columns
        )
    )
    return NotifyTrigger(vector_table(model).name, columns)


def create_notify_trigger(connection: Connection, model: type[Any]) -> None:
    """Create ``model``'s :class:`NotifyTrigger` (replacing one of the same name)."""
    schema = table_schema(connection, vector_table(model))
    for statement in notify_trigger(model).create_statements(schema):
        connection.exec_driver_sql(statement)


def drop_notify_trigger(connection: Connection, model: type[Any]) -> None:
    """Drop ``model``'s :class:`NotifyTrigger` and its function, if they exist."""
    schema = table_schema(connection, vector_table(model))
    for statement in notify_trigger(model).drop_statements(schema):
        connection.exec_driver_sql(statement)


def vector_table(model: type[Any]) -> Table:
    """The table holding ``model``'s vector: its name is what the flush hook notifies and what
    a worker answers to."""
    table = sa_inspect(model).attrs["embedding"].columns[0].table
    if not isinstance(table, Table):
        raise ConfigurationError(f"{model.__name__}.embedding is not a column of a table")
    return table
