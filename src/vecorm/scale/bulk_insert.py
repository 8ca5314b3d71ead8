"""Loading many rows fast: binary COPY, embeddings in batches, indexes built after.

``session.execute(insert(Document), rows)`` runs one INSERT per row on psycopg 3 (SQLAlchemy's
batched form needs RETURNING), which fires the BM25 statement triggers once per row, and the
HNSW index that ``create_all`` made takes every row one at a time. :func:`bulk_insert` loads
the same rows about 9x faster, at 0.95x the speed of a hand-written binary COPY followed by
the index build (docs/scaling.md, "Bulk loading")::

    with Session(engine) as session:
        result = vecorm.bulk_insert(session, Document, rows)   # any iterable of mappings
        session.commit()
    result.rows, result.embedded, result.method                 # (20000, 0, 'copy')

What it does, in one SAVEPOINT of the caller's transaction (all or nothing):

1. When the table is empty (or ``defer_index=True``), drops its HNSW / IVFFlat indexes, to
   build them once after the load from their saved definitions (:mod:`.index_deferral`).
2. Reads ``rows`` ``batch_size`` at a time (a generator of millions of rows runs in bounded
   memory); fills Python-side defaults; embeds the rows that come without a vector and records
   digest and model name as the flush hook would (:mod:`.bulk_rows`).
3. Writes the batches with ``COPY ... FROM STDIN (FORMAT BINARY)`` on psycopg 3 (one COPY per
   batch on a table with BM25 statistics, so each batch fires the statement triggers once;
   else one COPY for all), or multi-row INSERTs on other drivers (:mod:`.bulk_writers`). When
   the table was empty, in READ COMMITTED, the BM25 triggers are deferred instead and the
   statistics rebuilt once at the end (faster: measured in docs/scaling.md).
4. Builds the indexes again and releases the savepoint; ``session.commit()`` is yours.

A bad row (an unknown key, a vector of the wrong width or with NaN, a duplicate key, a value
its column refuses) or a failing embedder raises a vecorm error naming the row
(:class:`~vecorm.errors.BulkInsertError`, :class:`~vecorm.errors.DimensionMismatch`,
:class:`~vecorm.errors.InvalidVector`, :class:`~vecorm.errors.EmbeddingError`) after rolling
the savepoint back: nothing of the call is written, the indexes are there, and the session
goes on (its earlier work included). Mapper events and the flush hook do not run: the rows
never become ORM objects.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sized
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from sqlalchemy import Column, func, literal, select, true
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.events import installed_embedder
from vecorm.errors import BulkInsertError, ConfigurationError, VecormError
from vecorm.progress import ProgressChoice, progress_bar
from vecorm.scale.bulk_rows import (
    BulkModel,
    Embedding,
    PreparedRow,
    RowPreparer,
    bulk_model,
    fill_sql_defaults,
)
from vecorm.scale.bulk_writers import CopyWriter, InsertWriter
from vecorm.scale.index_build import format_memory, parse_memory
from vecorm.scale.index_deferral import (
    SavedIndex,
    drop_indexes,
    recreate_indexes,
    vector_indexes,
)
from vecorm.search.bm25.maintenance import rebuild
from vecorm.search.bm25.tables import tables_of

__all__ = ["DEFAULT_BATCH_SIZE", "BulkInsertResult", "bulk_insert"]

log = logging.getLogger("vecorm.bulk_insert")
#: Rows per COPY (and per embedding pass): big enough that the BM25 statement triggers fire
#: rarely, small enough for a few tens of MB of 1536-d vectors in memory.
DEFAULT_BATCH_SIZE = 5000


@dataclass(frozen=True)
class BulkInsertResult:
    """What :func:`bulk_insert` wrote: rows, of which ``embedded`` got their vector from the
    embedder; the seconds it took; ``"copy"`` or ``"insert"``; the indexes it built after the
    load; whether the BM25 statistics were rebuilt once instead of kept per batch::

        result.rows, result.embedded, result.rows_per_second   # (20000, 20000, 204.1)
    """

    rows: int
    embedded: int
    seconds: float
    method: Literal["copy", "insert"]
    rebuilt_indexes: tuple[str, ...] = ()
    rebuilt_statistics: bool = False

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def bulk_insert(
    target: Session | Connection,
    model: type[Any],
    rows: Iterable[Mapping[str, Any]],
    *,
    embedder: Embedder | None = None,
    embed: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    defer_index: bool | None = None,
    maintenance_work_mem: str | None = None,
    progress: ProgressChoice = "auto",
) -> BulkInsertResult:
    """Insert ``rows`` (mappings of attribute or column names to values) into ``model``'s
    table, in one savepoint of ``target``'s transaction; commit it yourself.

    ``embedder`` embeds rows without a vector (default: the model's, then the one
    :func:`vecorm.install` gave the session); ``embed=False`` leaves them NULL for
    :func:`vecorm.backfill`. ``defer_index``: drop and rebuild the vector indexes around the
    load (``None``: when the table is empty); ``maintenance_work_mem`` is for that build.
    ``progress`` draws a bar on a terminal (``False``: never). An ``AsyncSession`` runs it with
    ``await session.run_sync(vecorm.bulk_insert, Document, rows)``. Example::

        vecorm.bulk_insert(session, Document, ({"title": t, "content": c} for t, c in pairs))
        session.commit()
    """
    started = time.perf_counter()
    if isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, not {batch_size!r}")
    memory = None
    if maintenance_work_mem is not None:
        memory = format_memory(parse_memory(maintenance_work_mem))
    bulk = bulk_model(model)
    if embed and bulk.config.related:
        raise ConfigurationError(
            f"bulk_insert({model.__name__}) cannot embed text from related rows "
            "(SearchConfig(related=...)); pass embed=False and run vecorm.backfill() after, "
            "or insert the rows with session.add_all()"
        )
    if embed and bulk.config.embeddings:
        names = ", ".join(sorted(bulk.config.embeddings))
        raise ConfigurationError(
            f"bulk_insert({model.__name__}) embeds `embedding` only, and {model.__name__} has "
            f"more embeddings ({names}); pass embed=False and run vecorm.backfill(session, "
            f"{model.__name__}) after the load, which fills every one"
        )
    session = target if isinstance(target, Session) else None
    found = embedder or bulk.config.embedder
    if found is None and session is not None:
        found = installed_embedder(session)
    embedding = Embedding(found, enabled=embed)
    if session is not None:
        mapper = {"mapper": sa_inspect(model)}
        _refuse_autocommit(session.connection(bind_arguments=mapper), bulk)
        # A nested session transaction emits its SAVEPOINT when asked for its connection.
        savepoint: Any = session.begin_nested()
        connection = session.connection(bind_arguments=mapper)
    else:
        assert isinstance(target, Connection)
        connection = target
        _refuse_autocommit(connection, bulk)
        savepoint = connection.begin_nested()
    try:
        load = _Load(connection, bulk, embedding, batch_size, memory, progress)
        load.run(rows, defer_index)
    except BaseException as exc:
        with suppress(SQLAlchemyError, psycopg.Error):
            savepoint.rollback()
        if isinstance(exc, DBAPIError | psycopg.Error):
            raise _failed(bulk, exc) from exc
        raise
    savepoint.commit()
    seconds = time.perf_counter() - started
    log.info(
        "vecorm: bulk_insert(%s): %d rows (%d embedded) in %.1f s",
        bulk.owner,
        load.written,
        embedding.embedded,
        seconds,
    )
    return BulkInsertResult(
        rows=load.written,
        embedded=embedding.embedded,
        seconds=seconds,
        method="copy" if load.copy is not None and not load.inserted else "insert",
        rebuilt_indexes=tuple(index.name for index in load.deferred_indexes),
        rebuilt_statistics=load.deferred_statistics,
    )


class _Load:
    """One bulk load in progress: its writers, what it deferred and how far it got."""

    def __init__(
        self,
        connection: Connection,
        bulk: BulkModel,
        embedding: Embedding,
        batch_size: int,
        memory: str | None,
        progress: ProgressChoice,
    ) -> None:
        self.connection = connection
        self.bulk = bulk
        self.embedding = embedding
        self.batch_size = batch_size
        self.memory = memory
        self.progress = progress
        self.preparer = RowPreparer(bulk, embedding)
        self.copy = CopyWriter(connection, bulk) if CopyWriter.available(connection) else None
        self.insert = InsertWriter(connection, bulk)
        self.written = 0
        self.inserted = 0
        self.deferred_indexes: list[SavedIndex] = []
        self.refusals: set[str] = set()
        self.deferred_statistics = False

    def run(self, rows: Iterable[Mapping[str, Any]], defer_index: bool | None) -> None:
        connection, bulk = self.connection, self.bulk
        empty = connection.execute(select(literal(1)).select_from(bulk.table).limit(1)).first()
        empty_table = empty is None
        if defer_index or (defer_index is None and empty_table):
            self.deferred_indexes = vector_indexes(connection, bulk.table)
            drop_indexes(connection, self.deferred_indexes)
        if empty_table and tables_of(bulk.table) is not None and _read_committed(connection):
            # The table was empty: one rebuild over the loaded rows costs less than the
            # statement triggers over each batch (docs/scaling.md, "Bulk loading").
            _defer_statistics(connection, True)
            self.deferred_statistics = True
        total = len(rows) if isinstance(rows, Sized) else None
        with progress_bar(
            total=total, desc=f"bulk_insert {bulk.owner}", enabled=self.progress
        ) as bar:
            # With BM25 triggers (deferred or not) PostgreSQL keeps each statement's rows in
            # a transition table: one COPY per batch bounds it. Without, one COPY streams on,
            # and the server stores a batch while the next one is prepared.
            per_batch = tables_of(bulk.table) is not None
            try:
                for batch in _batches(rows, self.batch_size):
                    prepared = self.preparer.prepare(batch)
                    if per_batch:  # the previous batch's, while the server had it to store
                        self._finish_copy()
                    self._write(prepared)
                    bar.update(len(batch))
                self._finish_copy()
            except BaseException as exc:
                if self.copy is not None:
                    self.copy.abort(exc)
                raise
            if self.deferred_statistics:
                bar.set_postfix_str("BM25 statistics")
                _defer_statistics(connection, False)
                rebuild(connection, bulk.mapped_class)
            if self.deferred_indexes:
                names = ", ".join(index.name for index in self.deferred_indexes)
                bar.set_postfix_str(f"building {names}")
                recreate_indexes(
                    connection, self.deferred_indexes, maintenance_work_mem=self.memory
                )

    def _write(self, prepared: list[PreparedRow]) -> None:
        bulk = self.bulk
        if any(column not in row.values for row in prepared for column, _ in bulk.sql_defaults):
            self._finish_copy()  # the defaults are queried on the same connection
            fill_sql_defaults(self.connection, bulk, prepared)
        for columns, group in _groups(bulk, prepared):
            if self.copy is not None:
                refused = self.copy.refusal(columns)
                if refused is None:
                    self.copy.write(columns, group)
                    self.written += len(group)
                    continue
                if refused not in self.refusals:
                    self.refusals.add(refused)
                    log.info("vecorm: bulk_insert(%s): INSERT, not COPY: %s", bulk.owner, refused)
            self._finish_copy()
            self.insert.write(columns, group)
            self.written += len(group)
            self.inserted += len(group)

    def _finish_copy(self) -> None:
        if self.copy is not None:
            self.copy.finish()


def _refuse_autocommit(connection: Connection, bulk: BulkModel) -> None:
    level = connection.get_execution_options().get("isolation_level")
    autocommit = getattr(connection.connection.dbapi_connection, "autocommit", False)
    if level == "AUTOCOMMIT" or autocommit is True:
        raise ConfigurationError(
            f"bulk_insert({bulk.owner}) writes all rows or none in one transaction; pass a "
            "session or a connection that is not in AUTOCOMMIT mode"
        )


def _batches(
    rows: Iterable[Mapping[str, Any]], size: int
) -> Iterator[list[tuple[int, Mapping[str, Any]]]]:
    numbered = enumerate(rows)
    while batch := list(itertools.islice(numbered, size)):
        yield batch


def _groups(
    bulk: BulkModel, rows: list[PreparedRow]
) -> list[tuple[tuple[Column[Any], ...], list[PreparedRow]]]:
    """The rows by the columns they set (one COPY each), columns in table order."""
    groups: dict[frozenset[Column[Any]], list[PreparedRow]] = {}
    for row in rows:
        groups.setdefault(frozenset(row.values), []).append(row)
    return [
        (tuple(sorted(columns, key=bulk.position.__getitem__)), members)
        for columns, members in groups.items()
    ]


def _read_committed(connection: Connection) -> bool:
    level = connection.execute(select(func.current_setting("transaction_isolation"))).scalar()
    return level == "read committed"


def _defer_statistics(connection: Connection, deferred: bool) -> None:
    value = "on" if deferred else "off"
    connection.execute(select(func.pg_catalog.set_config("vecorm.bm25_deferred", value, true())))


def _failed(bulk: BulkModel, exc: BaseException) -> VecormError:
    original = (exc.orig or exc) if isinstance(exc, DBAPIError) else exc
    diag = getattr(original, "diag", None)
    message = getattr(diag, "message_primary", None) or str(original).strip()
    return BulkInsertError(
        f"bulk_insert({bulk.owner}) failed: {message}; nothing was written", row=None
    )
