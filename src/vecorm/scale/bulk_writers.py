"""Writing prepared rows: binary ``COPY`` on psycopg 3, a multi-row ``INSERT`` elsewhere.

:class:`CopyWriter` sends one ``COPY table (columns) FROM STDIN (FORMAT BINARY)`` per group of
rows, through psycopg's ``cursor.copy`` with ``set_types`` (the column types read from the
catalog, so an ``int4`` column gets 4 bytes whatever Python int arrives). Values go through
their column type's SQLAlchemy bind processing first, as in an INSERT, and vectors travel in
pgvector's binary format (:func:`vecorm.schema.drivers.copy_dumper`, registered on that cursor
only). On psycopg's async connection (an ``AsyncSession`` through ``run_sync``) the same COPY
is awaited from SQLAlchemy's greenlet.

:class:`InsertWriter` is the fallback, for psycopg2, asyncpg and pg8000 and for columns COPY
cannot write faithfully (a type psycopg has no binary dumper for, a type whose binding is a SQL
expression): ``INSERT ... VALUES (...), (...)`` of up to :data:`MAX_PARAMETERS` values, one
statement (one firing of the table's statement triggers) per chunk.

Every database error becomes a :class:`~vecorm.errors.BulkInsertError` naming the row when the
server tells which (``COPY ..., line n``), else the rows of the statement.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy.util
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.string import StrBinaryDumper
from sqlalchemy import Column, Table, insert, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, StatementError

from vecorm.errors import BulkInsertError
from vecorm.scale.bulk_rows import BulkModel, PreparedRow
from vecorm.schema.drivers import copy_dumper
from vecorm.schema.types import HalfVec, SparseVec, Vector

__all__ = ["MAX_PARAMETERS", "CopyWriter", "InsertWriter", "database_error"]

#: Bound values per fallback INSERT statement (asyncpg takes at most 32,767).
MAX_PARAMETERS = 30_000
#: Extension types written with :func:`~vecorm.schema.drivers.copy_dumper`.
VECTOR_TYPES = frozenset({"vector", "halfvec", "sparsevec"})
#: A type whose binary form is its text, like an enum's.
_TEXT_LIKE = "bpchar"
_LINE = re.compile(r"\bline (\d+)")

# SQLAlchemy 2.1 renamed await_only to await_; accept both.
_await: Callable[[Any], Any] = (
    getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only
)

_COLUMN_TYPES = text(
    "SELECT a.attname, t.oid, t.typname, t.typtype, b.oid, b.typname, b.typtype "
    "FROM pg_catalog.pg_attribute a "
    "JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid "
    "LEFT JOIN pg_catalog.pg_type b ON b.oid OPERATOR(pg_catalog.=) t.typbasetype "
    "WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table) "
    "AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped"
)


@dataclass(frozen=True)
class _CopyType:
    """How one column travels in a binary COPY: the type OID given to ``set_types`` and the
    dumper to register for it (``None``: psycopg has one), or why it cannot."""

    oid: int
    dumper: type[Dumper] | None = None
    refused: str | None = None


def qualified_name(connection: Connection, table: Table) -> str:
    """``"schema"."table"`` (or ``"table"``) quoted by the connection's dialect."""
    return connection.dialect.identifier_preparer.format_table(table)


class CopyWriter:
    """Binary COPY into ``model``'s table on a psycopg 3 connection (sync or async)."""

    def __init__(self, connection: Connection, model: BulkModel) -> None:
        self.connection = connection
        self.model = model
        driver = connection.connection.driver_connection
        if not isinstance(driver, psycopg.Connection | psycopg.AsyncConnection):
            raise TypeError("CopyWriter needs a psycopg 3 connection")
        self.driver: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] = driver
        self.table = qualified_name(connection, model.table)
        self._types: dict[str, _CopyType] | None = None
        self._processors: dict[Column[Any], Callable[[Any], Any] | None] = {}

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

    def write(self, columns: Sequence[Column[Any]], rows: Sequence[PreparedRow]) -> None:
        """One COPY of ``rows`` (each holding a value for every one of ``columns``)."""
        types = self._column_types()
        copy_types = [types[column.name] for column in columns]
        processors = [self._processor(column) for column in columns]
        records = [self._record(columns, processors, row) for row in rows]
        names = ", ".join(
            self.connection.dialect.identifier_preparer.quote(column.name) for column in columns
        )
        statement = f"COPY {self.table} ({names}) FROM STDIN (FORMAT BINARY)"
        oids = [copy_type.oid for copy_type in copy_types]
        dumpers = [copy_type.dumper for copy_type in copy_types if copy_type.dumper is not None]
        written = [0]
        try:
            if isinstance(self.driver, psycopg.AsyncConnection):
                _await(_copy_async(self.driver, statement, oids, dumpers, records, written))
            else:
                _copy(self.driver, statement, oids, dumpers, records, written)
        except psycopg.Error as exc:
            if exc.sqlstate is None and written[0] < len(rows):  # psycopg's, not the server's
                raise self._dump_error(exc, columns, copy_types, rows, records, written[0]) from exc
            raise self._copy_error(exc, rows) from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._dump_error(exc, columns, copy_types, rows, records, written[0]) from exc

    def _dump_error(
        self,
        exc: Exception,
        columns: Sequence[Column[Any]],
        copy_types: Sequence[_CopyType],
        rows: Sequence[PreparedRow],
        records: Sequence[Sequence[Any]],
        position: int,
    ) -> BulkInsertError:
        """psycopg refused a value of ``rows[position]``: name the row and its column."""
        position = min(position, len(rows) - 1)
        index = rows[position].index
        column = self._culprit(columns, copy_types, records[position])
        where = f" {self.model.owner}.{column.key}" if column is not None else ""
        return BulkInsertError(
            f"{self.model.label(index)}:{where} cannot be written as its column's type: "
            f"{type(exc).__name__}: {exc}; nothing was written",
            row=index,
        )

    def _culprit(
        self,
        columns: Sequence[Column[Any]],
        copy_types: Sequence[_CopyType],
        record: Sequence[Any],
    ) -> Column[Any] | None:
        """The first column whose value the dumper of its type refuses."""
        for column, copy_type, value in zip(columns, copy_types, record, strict=True):
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

    def _record(
        self,
        columns: Sequence[Column[Any]],
        processors: Sequence[Callable[[Any], Any] | None],
        row: PreparedRow,
    ) -> list[Any]:
        values = row.values
        record = []
        for column, process in zip(columns, processors, strict=True):
            value = values[column]
            if process is not None and value is not None:
                try:
                    value = process(value)
                except Exception as exc:
                    raise BulkInsertError(
                        f"{self.model.label(row.index)}: {self.model.owner}.{column.key} "
                        f"cannot take {value!r:.80}: {type(exc).__name__}: {exc}",
                        row=row.index,
                    ) from exc
            record.append(value)
        return record

    def _processor(self, column: Column[Any]) -> Callable[[Any], Any] | None:
        if column not in self._processors:
            dialect = self.connection.dialect
            self._processors[column] = column.type.dialect_impl(dialect).bind_processor(dialect)
        return self._processors[column]

    def _column_types(self) -> dict[str, _CopyType]:
        if self._types is None:
            rows = self.connection.execute(_COLUMN_TYPES, {"table": self.table}).all()
            self._types = {str(row[0]): self._copy_type(*row[1:]) for row in rows}
        return self._types

    def _copy_type(
        self,
        oid: int,
        name: str,
        kind: str,
        base_oid: int | None,
        base_name: str | None,
        base_kind: str | None,
    ) -> _CopyType:
        if kind == "d" and base_oid is not None:  # a domain travels as its base type
            oid, name, kind = base_oid, str(base_name), str(base_kind)
        if name in VECTOR_TYPES:
            return _CopyType(oid, copy_dumper(oid))
        if kind == "e" or name == _TEXT_LIKE:
            return _CopyType(oid, type("TextLikeDumper", (StrBinaryDumper,), {"oid": oid}))
        try:
            self.driver.adapters.get_dumper_by_oid(oid, Format.BINARY)
        except psycopg.ProgrammingError:
            return _CopyType(oid, refused=f"psycopg cannot write type {name} in binary")
        return _CopyType(oid)

    def _copy_error(self, exc: psycopg.Error, rows: Sequence[PreparedRow]) -> BulkInsertError:
        """A server error during the COPY: the row its ``COPY t, line n`` context names."""
        context = getattr(exc.diag, "context", None) or ""
        line = _LINE.search(context) if context.startswith("COPY") else None
        if line is not None and 1 <= int(line.group(1)) <= len(rows):
            index = rows[int(line.group(1)) - 1].index
            return BulkInsertError(
                f"{self.model.label(index)}: {_server_message(exc)}; nothing was written",
                row=index,
            )
        return database_error(self.model, rows, exc)


def _copy(
    driver: psycopg.Connection[Any],
    statement: str,
    oids: list[int],
    dumpers: list[type[Dumper]],
    records: list[list[Any]],
    written: list[int],
) -> None:
    with driver.cursor() as cursor:
        for dumper in dumpers:
            cursor.adapters.register_dumper(None, dumper)
        with cursor.copy(statement) as copy:
            copy.set_types(oids)
            for record in records:
                copy.write_row(record)
                written[0] += 1


async def _copy_async(
    driver: psycopg.AsyncConnection[Any],
    statement: str,
    oids: list[int],
    dumpers: list[type[Dumper]],
    records: list[list[Any]],
    written: list[int],
) -> None:
    async with driver.cursor() as cursor:
        for dumper in dumpers:
            cursor.adapters.register_dumper(None, dumper)
        async with cursor.copy(statement) as copy:
            copy.set_types(oids)
            for record in records:
                await copy.write_row(record)
                written[0] += 1


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
