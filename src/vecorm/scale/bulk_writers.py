"""Writing prepared rows: binary ``COPY`` on psycopg 3, a multi-row ``INSERT`` elsewhere.

:class:`CopyWriter` sends rows to a ``COPY table (columns) FROM STDIN (FORMAT BINARY)``
through psycopg's ``cursor.copy`` with ``set_types`` (the column types read from the
catalog, so an ``int4`` column gets 4 bytes whatever Python int arrives). Values go through
their column type's SQLAlchemy bind processing first, as in an INSERT, and vectors travel in
pgvector's binary format (:func:`vecorm.schema.drivers.copy_dumper`, registered on that cursor
only). Batches of the same columns stream into one open COPY, sent by psycopg's
``QueuedLibpqWriter`` thread while the next batch is prepared; the caller ends it (per batch
when statement triggers would keep every row in a transition table). On psycopg's async
connection (an ``AsyncSession`` through ``run_sync``) the same COPY is awaited from
SQLAlchemy's greenlet.

:class:`InsertWriter` is the fallback, for psycopg2, asyncpg and pg8000 and for columns COPY
cannot write faithfully (a type psycopg has no binary dumper for, a type whose binding is a SQL
expression): ``INSERT ... VALUES (...), (...)`` of up to :data:`MAX_PARAMETERS` values, one
statement (one firing of the table's statement triggers) per chunk.

Every database error becomes a :class:`~vecorm.errors.BulkInsertError` naming the row when the
server tells which (``COPY ..., line n``), else the rows of the statement.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import psycopg
import sqlalchemy.util
from psycopg.copy import QueuedLibpqWriter
from psycopg.pq import Format
from sqlalchemy import Column, Table, insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, StatementError

from vecorm.errors import BulkInsertError
from vecorm.scale.bulk_rows import BulkModel, PreparedRow
from vecorm.scale.copy_types import CopyType, copy_types
from vecorm.schema.drivers import BinaryVectorParam
from vecorm.schema.pgcatalog import qualified_table
from vecorm.schema.types import HalfVec, SparseVec, Vector

__all__ = ["MAX_PARAMETERS", "CopyWriter", "InsertWriter", "Lines", "database_error"]

#: Bound values per fallback INSERT statement (asyncpg takes at most 32,767).
MAX_PARAMETERS = 30_000
_LINE = re.compile(r"\bline (\d+)")

# SQLAlchemy 2.1 renamed await_only to await_; accept both.
_await: Callable[[Any], Any] = (
    getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only
)


def qualified_name(connection: Connection, table: Table) -> str:
    """``"schema"."table"`` (or ``"table"``) quoted by the connection's dialect, in the schema
    its ``schema_translate_map`` gives the table."""
    return qualified_table(connection, table)


class Lines:
    """The caller's row index of each line of a COPY, kept as runs of consecutive indexes
    (a stream of millions of rows holds a few numbers per batch, not one per row):

    >>> lines = Lines(); lines.extend([7, 8, 9, 20]); (lines[2], lines[3], len(lines))
    (9, 20, 4)
    """

    def __init__(self) -> None:
        self._starts: list[int] = []  # the line each run starts at (0-based)
        self._firsts: list[int] = []  # the row index of that line
        self._length = 0

    def extend(self, indexes: Sequence[int]) -> None:
        """Add lines for rows ``indexes`` (increasing, as a batch is written)."""
        if indexes and indexes[-1] - indexes[0] == len(indexes) - 1:
            self._run(indexes[0], len(indexes))  # consecutive rows: one run (the usual case)
            return
        for index in indexes:
            self._run(index, 1)

    def _run(self, first: int, count: int) -> None:
        joins = bool(self._starts) and first == self._firsts[-1] + self._length - self._starts[-1]
        if not joins:
            self._starts.append(self._length)
            self._firsts.append(first)
        self._length += count

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, line: int) -> int:
        if line < 0:
            line += self._length
        if not 0 <= line < self._length:
            raise IndexError(line)
        run = bisect.bisect_right(self._starts, line) - 1
        return self._firsts[run] + line - self._starts[run]


class _Stream:
    """An open ``COPY ... FROM STDIN`` on one cursor, and the rows sent so far (by line)."""

    def __init__(
        self,
        driver: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
        statement: str,
        columns: tuple[Column[Any], ...],
        copy_types: list[CopyType],
    ) -> None:
        self.driver = driver
        self.columns = columns
        self.copy_types = copy_types
        self.lines = Lines()
        #: Rows of the last :meth:`send` handed to psycopg (the one it refused, on an error).
        self.sent = 0
        self.cursor = driver.cursor()
        for copy_type in copy_types:
            if copy_type.dumper is not None:
                self.cursor.adapters.register_dumper(None, copy_type.dumper)
        manager: Any
        if isinstance(self.cursor, psycopg.AsyncCursor):
            manager = self.cursor.copy(statement)
            self.copy: Any = _await(manager.__aenter__())
        else:
            # A worker thread sends the data: preparing the next rows overlaps the sending.
            manager = self.cursor.copy(statement, writer=QueuedLibpqWriter(self.cursor))
            self.copy = manager.__enter__()
        self.manager = manager
        self.copy.set_types([copy_type.oid for copy_type in copy_types])

    def send(self, indexes: Sequence[int], records: Sequence[Sequence[Any]]) -> None:
        """Write ``records`` (the rows ``indexes``); on an error, :attr:`sent` tells which."""
        self.sent = 0
        try:
            if isinstance(self.cursor, psycopg.AsyncCursor):
                _await(_write_async(self, records))
            else:
                write_row = self.copy.write_row
                for record in records:
                    self.sent += 1
                    write_row(record)
        finally:
            self.lines.extend(indexes[: self.sent])

    def end(self, failure: BaseException | None = None) -> None:
        """Finish the COPY (the server reports its errors here), or abandon it on ``failure``."""
        kind = type(failure) if failure is not None else None
        if isinstance(self.cursor, psycopg.AsyncCursor):
            _await(self.manager.__aexit__(kind, failure, None))
            _await(self.cursor.close())
        else:
            self.manager.__exit__(kind, failure, None)
            self.cursor.close()


async def _write_async(stream: _Stream, records: Sequence[Sequence[Any]]) -> None:
    for record in records:
        stream.sent += 1
        await stream.copy.write_row(record)


class CopyWriter:
    """Binary COPY into ``model``'s table on a psycopg 3 connection (sync or async).

    Batches with the same columns stream into one open COPY, so the server stores a batch while
    the next is prepared (and embedded); :meth:`finish` ends it, before any other statement
    runs on the connection. :meth:`abort` abandons it after an error.
    """

    def __init__(self, connection: Connection, model: BulkModel) -> None:
        self.connection = connection
        self.model = model
        driver = connection.connection.driver_connection
        if not isinstance(driver, psycopg.Connection | psycopg.AsyncConnection):
            raise TypeError("CopyWriter needs a psycopg 3 connection")
        self.driver: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] = driver
        self.table = qualified_name(connection, model.table)
        self.copies = 0
        self._types: dict[str, CopyType] | None = None
        self._processors: dict[Column[Any], Callable[[Any], Any] | None] = {}
        self._stream: _Stream | None = None

    @staticmethod
    def available(connection: Connection) -> bool:
        """Whether ``connection`` runs on psycopg 3, the driver with COPY."""
        driver = connection.connection.driver_connection
        return isinstance(driver, psycopg.Connection | psycopg.AsyncConnection)

    def refusal(self, columns: Sequence[Column[Any]]) -> str | None:
        """Why COPY cannot write ``columns`` faithfully (``None``: it can)."""
        types = self._column_types()
        for column in columns:
            found = types.get(column.name)
            if found is None:
                return f"column {column.name} is not in the table"
            if found.refused is not None:
                return found.refused
            if _binds_through_sql(column):
                return f"column {column.name}'s type binds through a SQL expression"
        return None

    def write(self, columns: tuple[Column[Any], ...], rows: Sequence[PreparedRow]) -> None:
        """Send ``rows`` (each holding a value for every one of ``columns``) to the COPY of
        these columns, opening it (and finishing another) if needed."""
        if self._stream is not None and self._stream.columns != columns:
            self.finish()
        records = self._records(columns, rows)
        if self._stream is None:
            types = self._column_types()
            preparer = self.connection.dialect.identifier_preparer
            names = ", ".join(preparer.quote(column.name) for column in columns)
            statement = f"COPY {self.table} ({names}) FROM STDIN (FORMAT BINARY)"
            self._stream = _Stream(
                self.driver, statement, columns, [types[column.name] for column in columns]
            )
            self.copies += 1
        stream = self._stream
        try:
            stream.send([row.index for row in rows], records)
        except psycopg.Error as exc:
            if exc.sqlstate is not None:  # the server's, reported early
                raise self._server_error(exc) from exc
            raise self._dump_error(exc, rows, records, stream.sent - 1) from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._dump_error(exc, rows, records, stream.sent - 1) from exc

    def finish(self) -> None:
        """End the open COPY, if any; the server's errors about its rows surface here."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        lines = stream.lines
        try:
            stream.end()
        except psycopg.Error as exc:
            raise self._server_error(exc, lines) from exc

    def abort(self, failure: BaseException) -> None:
        """Abandon the open COPY after ``failure`` (the savepoint's rollback undoes it)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with suppress(Exception):
                stream.end(failure)

    def _records(
        self, columns: tuple[Column[Any], ...], rows: Sequence[PreparedRow]
    ) -> list[list[Any]]:
        """The rows' values as bind processing makes them (vectors: pgvector's binary)."""
        types = self._column_types()
        processors = [
            _chain(self._processor(column), types[column.name].guard) for column in columns
        ]
        processed = [(n, p) for n, p in enumerate(processors) if p is not None]
        records = []
        try:
            for row in rows:
                values = row.values
                record = [values[column] for column in columns]
                for n, process in processed:
                    if record[n] is not None:
                        record[n] = process(record[n])
                records.append(record)
            return records
        except Exception:
            for row in rows:  # name the row and the column
                for n, bind in processed:
                    column, value = columns[n], row.values[columns[n]]
                    if value is None:
                        continue
                    try:
                        bind(value)
                    except Exception as exc:
                        raise BulkInsertError(
                            f"{self.model.label(row.index)}: {self.model.owner}.{column.key} "
                            f"cannot take {value!r:.80}: {type(exc).__name__}: {exc}",
                            row=row.index,
                        ) from exc
            raise

    def _processor(self, column: Column[Any]) -> Callable[[Any], Any] | None:
        if column not in self._processors:
            if column is self.model.digest or column is self.model.model:
                self._processors[column] = None  # bytes and str that bulk_rows made
            elif column is self.model.embedding:
                # Validated float32 arrays (bulk_rows): straight to pgvector's binary format.
                param = getattr(column.type, "binary_param", BinaryVectorParam)
                self._processors[column] = param
            else:
                dialect = self.connection.dialect
                impl = column.type.dialect_impl(dialect)
                self._processors[column] = impl.bind_processor(dialect)
        return self._processors[column]

    def _column_types(self) -> dict[str, CopyType]:
        if self._types is None:
            self._types = copy_types(self.connection, self.driver, self.table)
        return self._types

    def _dump_error(
        self,
        exc: Exception,
        rows: Sequence[PreparedRow],
        records: Sequence[Sequence[Any]],
        position: int,
    ) -> BulkInsertError:
        """psycopg refused a value of ``rows[position]``: name the row and its column."""
        position = min(max(position, 0), len(rows) - 1)
        index = rows[position].index
        column = self._culprit(records[position])
        where = f" {self.model.owner}.{column.key}" if column is not None else ""
        return BulkInsertError(
            f"{self.model.label(index)}:{where} cannot be written as its column's type: "
            f"{type(exc).__name__}: {exc}; nothing was written",
            row=index,
        )

    def _lines(self) -> Lines:
        return self._stream.lines if self._stream is not None else Lines()

    def _culprit(self, record: Sequence[Any]) -> Column[Any] | None:
        """The first column whose value the dumper of its type refuses."""
        stream = self._stream
        if stream is None:
            return None
        for column, copy_type, value in zip(stream.columns, stream.copy_types, record, strict=True):
            if value is None:
                continue
            dumper = copy_type.dumper or self.driver.adapters.get_dumper_by_oid(
                copy_type.oid, Format.BINARY
            )
            try:
                dumper(type(value), None).dump(value)
            except Exception:
                return column
        return None

    def _server_error(self, exc: psycopg.Error, lines: Lines | None = None) -> BulkInsertError:
        """A server error about the COPY: the row its ``COPY t, line n`` context names."""
        lines = self._lines() if lines is None else lines
        context = getattr(exc.diag, "context", None) or ""
        line = _LINE.search(context) if context.startswith("COPY") else None
        if line is not None and 1 <= int(line.group(1)) <= len(lines):
            index = lines[int(line.group(1)) - 1]
            return BulkInsertError(
                f"{self.model.label(index)}: {_server_message(exc)}; nothing was written",
                row=index,
            )
        where = f"rows[{lines[0]}] to rows[{lines[-1]}]" if lines else "the rows"
        return BulkInsertError(
            f"bulk_insert({self.model.owner}): {where} could not be written: "
            f"{_server_message(exc)}; nothing was written"
        )


def _chain(
    first: Callable[[Any], Any] | None, then: Callable[[Any], Any] | None
) -> Callable[[Any], Any] | None:
    """``then(first(value))``, either of them possibly absent."""
    if first is None or then is None:
        return first or then
    return lambda value: then(first(value))


def _binds_through_sql(column: Column[Any]) -> bool:
    """Whether the column's type wraps its parameter in SQL (a PostGIS-style
    ``bind_expression``) that COPY would skip; vecorm's vector casts only name the type."""
    column_type = column.type
    if isinstance(column_type, Vector | HalfVec | SparseVec):
        return False
    return bool(getattr(column_type, "_has_bind_expression", False))


def _server_message(exc: BaseException) -> str:
    """The server's message and detail, without the driver's decoration."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if not primary:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = getattr(diag, "message_detail", None)
    return f"{primary} ({detail})" if detail else str(primary)


def database_error(
    model: BulkModel, rows: Sequence[PreparedRow], exc: BaseException
) -> BulkInsertError:
    """A database error while writing ``rows``, as vecorm's error naming those rows."""
    original = (exc.orig or exc) if isinstance(exc, DBAPIError) else exc
    where = f"rows[{rows[0].index}]" + (f" to rows[{rows[-1].index}]" if len(rows) > 1 else "")
    only = rows[0].index if len(rows) == 1 else None
    return BulkInsertError(
        f"bulk_insert({model.owner}): {where} could not be written: "
        f"{_server_message(original)}; nothing was written",
        row=only,
    )


class InsertWriter:
    """Multi-row ``INSERT`` of the rows through SQLAlchemy (any driver)."""

    def __init__(self, connection: Connection, model: BulkModel) -> None:
        self.connection = connection
        self.model = model

    def write(self, columns: Sequence[Column[Any]], rows: Sequence[PreparedRow]) -> None:
        step = max(1, MAX_PARAMETERS // max(1, len(columns)))
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            values = [{column.key: row.values[column] for column in columns} for row in chunk]
            try:
                self.connection.execute(insert(self.model.table).values(values))
            except (DBAPIError, StatementError) as exc:
                raise database_error(self.model, chunk, exc) from exc
