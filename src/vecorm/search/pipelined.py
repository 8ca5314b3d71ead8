"""A statement sent in the same round trip as the search after it: psycopg 3's pipeline mode.

The query-time settings hook (:mod:`vecorm.search.settings`) runs one ``set_config``
statement before a search whose settings are not yet in effect in the transaction. Run on
its own, that statement costs a round trip to the server before every search that begins a
transaction. On a psycopg 3 connection (libpq 14 or later) the hook instead opens a
pipeline, queues the settings statement, lets SQLAlchemy queue the search behind it, and
closes the pipeline when SQLAlchemy's ``after_cursor_execute`` fires, before SQLAlchemy
reads the result: psycopg sends the transaction's ``BEGIN``, the settings and the search in
one message and reads the three results together. The server still runs them one after the
other, in order, so the search sees the settings exactly as before::

    waiting = start(conn, "SELECT pg_catalog.set_config('hnsw.ef_search', %s, true)", ("200",))
    # ... SQLAlchemy executes the search on the same connection ...
    row = finish(waiting)         # the settings statement's row: ('200',)

An error in either statement is raised when the pipeline closes, inside SQLAlchemy's
execution, so it reaches the caller as the usual ``sqlalchemy.exc.DBAPIError``. An error
before that (SQLAlchemy failing to send the search) closes the pipeline from the
``handle_error`` event (:func:`abandon`). Other drivers (psycopg 2, asyncpg, psycopg's
async connection), a server-side cursor and Citus (whose settings also go to the workers)
keep the separate statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.engine import Connection


@dataclass
class Pending:
    """A pipeline opened before a search, with the statement queued in it."""

    pipeline: Any  # psycopg's pipeline context manager
    cursor: psycopg.Cursor[Any]


def available(conn: Connection) -> bool:
    """Whether a statement can be queued ahead of the next one on ``conn``: a sync psycopg 3
    connection with pipeline support, not already in a pipeline."""
    driver = conn.connection.driver_connection
    return (
        isinstance(driver, psycopg.Connection)
        and psycopg.Pipeline.is_supported()
        and driver.pgconn.pipeline_status == 0  # PQ_PIPELINE_OFF
    )


def start(conn: Connection, statement: str, arguments: Any) -> Pending:
    """Open a pipeline on ``conn``'s DBAPI connection and queue ``statement``; the next
    statement executed on the connection joins it. Pass what this returns to :func:`finish`
    after that one (or to :func:`abandon` if it failed)."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    pipeline = driver.pipeline()
    pipeline.__enter__()
    cursor = driver.cursor()
    try:
        cursor.execute(statement, arguments)
    except BaseException as exc:
        cursor.close()
        pipeline.__exit__(type(exc), exc, exc.__traceback__)
        raise
    return Pending(pipeline, cursor)


def finish(waiting: Pending) -> tuple[Any, ...]:
    """Close the pipeline (sending everything queued and reading every result) and return
    the queued statement's first row. Raises the first error of either statement, as
    psycopg raises it."""
    try:
        waiting.pipeline.__exit__(None, None, None)
        row = waiting.cursor.fetchone() if waiting.cursor.description else None
    finally:
        waiting.cursor.close()
    return tuple(row or ())


def abandon(waiting: Pending, error: BaseException) -> tuple[Any, ...] | None:
    """Close the pipeline after ``error`` (its own errors are then only logged by psycopg).
    Returns the queued statement's first row, or ``None`` if it did not run: a search that
    failed before it was sent (a parameter psycopg cannot adapt) leaves the queued
    statement run, in a transaction that goes on."""
    row: tuple[Any, ...] | None = None
    try:
        waiting.pipeline.__exit__(type(error), error, error.__traceback__)
        if waiting.cursor.description is not None:
            row = tuple(waiting.cursor.fetchone() or ())
    except psycopg.Error:
        row = None
    finally:
        waiting.cursor.close()
    return row
