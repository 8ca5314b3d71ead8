"""Embedding rows whose vector is missing or stale: resumable, batched, safe next to live writes.

A row is **stale** when it has text (see :mod:`vecorm.embedding.source`) and its embedding is NULL,
or its
stored digest is not ``sha256`` of its present text, or another model embedded it. That happens
after a deferred flush failure, rows written without the hook (COPY, raw SQL), or a model
change. :func:`backfill` embeds them::

    from vecorm.embedding.backfill import backfill, stale_count

    stale_count(session, Document)                 # 1200
    result = backfill(session, Document, batch_size=256)
    result.embedded, result.rows_per_second         # (1200, 5300.0)

Each batch is found with ``SELECT <primary key> ... ORDER BY <primary key> LIMIT n`` (no
lock), claimed by those keys ``FOR UPDATE SKIP LOCKED``, embedded, written and committed in
its own transaction, so:

* a crash loses at most the batch in flight, and running it again carries on where it stopped
  (committed rows are no longer stale);
* two backfills, or a backfill and the application, never embed the same row twice: a claimed
  row is locked until its vector is committed, and the other side skips it (or, on the last
  sweep, waits for it and re-checks it);
* no row is skipped: rows locked by the application during a sweep are picked up by the next
  one, and rows that become stale meanwhile are too, for up to :data:`MAX_SWEEPS` passes (a
  writer that bypasses the flush hook can make rows stale for ever: what is left then is
  counted by :func:`stale_count` and picked up by the next run).

Staleness is decided in SQL with the same text composition as Python (fields joined by a
newline, NULL and blank values left out, ``sha256(convert_to(text, 'UTF8'))``; a related
attribute, ``SearchConfig(related=...)``, is a correlated subquery on the referenced row) and
confirmed in Python before a row is embedded. Each batch is written by ONE statement
(``UPDATE ... FROM (VALUES ...)``, vectors bound in pgvector's binary format on psycopg 3), so
a batch costs one round trip and fires the table's statement triggers (BM25) once, not once
per row.

The backfill commits per batch, so it refuses a session whose transaction has written
something (:class:`~vecorm.errors.ConfigurationError`): commit or roll back first, or give it a
session of its own. A session bound to a connection in an outer transaction is fine: its
"commits" only release savepoints. Progress is logged (logger ``vecorm.backfill``, INFO) every
``log_every`` seconds, bar or no bar.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import (
    ColumnElement,
    String,
    TableClause,
    Text,
    Update,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.sql.elements import BindParameter, KeyedColumnElement, TextClause

from vecorm.embedding.embedders.base import Embedder, check_embeddings
from vecorm.embedding.events import call_embedder, installed_embedder
from vecorm.embedding.source import join_text, text_digest
from vecorm.errors import ConfigurationError, DimensionMismatch, EmbeddingError, VecormError
from vecorm.progress import Bar, ProgressChoice, SilentBar, progress_bar
from vecorm.schema.cluster import distribution_column
from vecorm.schema.config import SearchConfig
from vecorm.schema.drivers import BinaryArrayParam, type_oid, uses_binary_binds
from vecorm.schema.embeddings import EmbeddingRef, EmbeddingSlot, embedding_slot, embedding_slots
from vecorm.schema.pgcatalog import (
    catalog_operator,
    compare,
    effective_schema,
    has_catalog_operators,
    pg,
    qualified_in,
    text_value,
)
from vecorm.schema.related import related_fields

__all__ = ["BackfillResult", "backfill", "stale_condition", "stale_count"]

log = logging.getLogger("vecorm.backfill")
#: Seconds between progress log lines.
LOG_EVERY = 10.0
#: Passes over the table: the first, then catch-ups for rows that became stale meanwhile.
MAX_SWEEPS = 3

#: The characters ``str.strip()`` removes (``str.isspace``), so SQL skips the same blank values.
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


@dataclass(frozen=True)
class BackfillResult:
    """What a backfill did: rows embedded, batches committed, provider calls, seconds taken,
    and the primary keys of the rows whose text the provider refused (``rejected``: too long,
    empty, an HTTP 400), which stay stale until their text changes."""

    embedded: int
    batches: int
    calls: int
    seconds: float
    rejected: tuple[tuple[Any, ...], ...] = ()

    @property
    def rows_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EmbeddingColumns:
    """Where a model's text, vector and bookkeeping live: the columns a backfill reads and writes.

    :func:`columns_of` gives the model's own; a model change points ``embedding``, ``digest`` and
    ``model`` at its shadow columns instead.
    """

    owner: str
    table: TableClause
    keys: tuple[KeyedColumnElement[Any], ...]
    #: The names of the parts of the text (:attr:`SearchConfig.embedded_fields`).
    field_names: tuple[str, ...]
    #: Their values in SQL: the text columns, then a correlated scalar subquery per related
    #: attribute (:meth:`vecorm.schema.related.RelatedField.value_expression`).
    fields: tuple[KeyedColumnElement[Any], ...]
    embedding: KeyedColumnElement[Any]
    digest: KeyedColumnElement[Any]
    model: KeyedColumnElement[Any]
    dimensions: int

    @property
    def text(self) -> ColumnElement[str]:
        """The row's text in SQL, composed exactly as :func:`vecorm.embedding.source.source_text`
        does."""
        parts = [
            case((pg.btrim(column, PYTHON_WHITESPACE) == text_value(""), None), else_=column)
            for column in self.fields
        ]
        return pg.concat_ws(text_value("\n"), *parts)

    @property
    def exact_in_sql(self) -> bool:
        """Whether every field is a string column, so SQL composes the same text as Python."""
        return all(isinstance(column.type, String) for column in self.fields)

    def stale(self, model_name: str) -> ColumnElement[bool]:
        """Rows with text whose vector is missing, from another model, or of other text."""
        body = self.text
        reasons: list[ColumnElement[bool]] = [
            self.embedding.is_(None),
            self.digest.is_(None),
            # as text: an exact `=(varchar, varchar)` elsewhere on the path would beat
            # pg_catalog's text operator (docs/security.md)
            cast(self.model, Text).is_distinct_from(text_value(model_name)),
        ]
        if self.exact_in_sql:
            reasons.append(self.digest != pg.sha256(pg.convert_to(body, "UTF8")))
        else:  # e.g. a numeric field: str() and ::text may differ, so Python decides
            reasons.append(literal(True))
        return and_(body != text_value(""), or_(*reasons))

    def marked(self) -> ColumnElement[bool]:
        """Rows with text whose vector or digest is NULL: what the flush hook leaves to a
        worker (it sets the digest to NULL), found without composing and hashing every row's
        text, as :meth:`stale` does."""
        missing = or_(self.embedding.is_(None), self.digest.is_(None))
        return and_(missing, self.text != text_value(""))


def columns_of(model: type[Any], embedding: EmbeddingRef = None) -> EmbeddingColumns:
    """The :class:`EmbeddingColumns` of a searchable model's ``embedding`` (default: the
    ``embedding`` attribute; the table holding its vector)."""
    slot = embedding_slot(model, embedding)
    config: SearchConfig = slot.config
    mapper: Mapper[Any] = sa_inspect(model)

    def column(key: str) -> KeyedColumnElement[Any]:
        prop = mapper.attrs.get(key)
        columns = getattr(prop, "columns", None)
        if not columns:
            raise ConfigurationError(f"{model.__name__}.{key} is not a mapped column")
        return columns[0]  # type: ignore[no-any-return]

    vector = column(slot.attribute)
    table = vector.table
    related = related_fields(model) if slot.uses_related else ()
    return EmbeddingColumns(
        owner=model.__name__ if slot.is_default else f"{model.__name__}.{slot.attribute}",
        table=table,
        keys=tuple(table.primary_key.columns),
        field_names=config.embedded_fields,
        fields=(
            *(column(name) for name in config.fields),
            *(field.value_expression() for field in related),
        ),
        embedding=vector,
        digest=column(slot.digest_attribute),
        model=column(slot.model_attribute),
        dimensions=config.dimensions,
    )


def resolve_embedder(
    session: Session,
    model: type[Any],
    embedder: Embedder | None,
    embedding: EmbeddingRef = None,
) -> Embedder:
    """``embedder``, else the embedding's (the model's), else the one installed on the
    session, else an error."""
    slot = embedding_slot(model, embedding)
    found = embedder or slot.config.embedder or installed_embedder(session)
    if found is None:
        where = "SearchConfig(embedder=...)"
        if not slot.is_default:
            where = f"vecorm.Embedding(embedder=...) on {slot.attribute}"
        raise ConfigurationError(
            f"no embedder for {model.__name__}.{slot.attribute}: pass embedder=..., set "
            f"{where} or vecorm.install(session, embedder=...)"
        )
    return found


def chosen_embeddings(
    model: type[Any], embedding: EmbeddingRef, embedder: Embedder | None
) -> tuple[EmbeddingSlot, ...]:
    """The embeddings a backfill of ``model`` fills: the one named, else every one (an
    ``embedder`` given for a model of several must say which it is for)."""
    if embedding is not None:
        return (embedding_slot(model, embedding),)
    slots = embedding_slots(model)
    if embedder is not None and len(slots) > 1:
        names = ", ".join(repr(slot.attribute) for slot in slots)
        raise ConfigurationError(
            f"{model.__name__} has several embeddings ({names}); pass embedding=... to say "
            f"which one embedder {embedder.model_name!r} is for"
        )
    return slots


def stale_condition(
    model: type[Any], model_name: str, *, embedding: EmbeddingRef = None
) -> ColumnElement[bool]:
    """SQL condition selecting ``model``'s rows whose ``embedding`` (default: ``embedding``)
    is stale for ``model_name``, for your own queries.

    ``session.scalars(select(Document.id).where(stale_condition(Document, embedder.model_name)))``
    """
    return columns_of(model, embedding).stale(model_name)


def stale_count(
    session: Session,
    model: type[Any],
    *,
    embedder: Embedder | None = None,
    embedding: EmbeddingRef = None,
) -> int:
    """How many rows of ``model`` :func:`backfill` would embed now (summed over its
    embeddings, or of the one ``embedding`` names).

    ``stale_count(session, Document, embedder=OpenAIEmbedder())``
    """
    return sum(
        count_stale(session, columns, provider.model_name)
        for columns, provider in _each_embedding(session, model, embedding, embedder)
    )


def _each_embedding(
    session: Session, model: type[Any], embedding: EmbeddingRef, embedder: Embedder | None
) -> Iterator[tuple[EmbeddingColumns, Embedder]]:
    """The columns and provider of each embedding :func:`chosen_embeddings` picks, one after
    the other (a provider is looked for only when its embedding's turn comes)."""
    for slot in chosen_embeddings(model, embedding, embedder):
        yield (
            columns_of(model, slot.attribute),
            resolve_embedder(session, model, embedder, slot.attribute),
        )


def count_stale(session: Session, columns: EmbeddingColumns, model_name: str) -> int:
    statement = select(func.count()).select_from(columns.table).where(columns.stale(model_name))
    return int(session.execute(statement).scalar_one())


def backfill(
    session: Session,
    model: type[Any],
    *,
    embedder: Embedder | None = None,
    batch_size: int | None = None,
    progress: ProgressChoice = False,
    log_every: float | None = LOG_EVERY,
    embedding: EmbeddingRef = None,
) -> BackfillResult:
    """Embed every stale row of ``model``, ``batch_size`` rows per transaction.

    ``embedder`` defaults to the model's, then to the one :func:`vecorm.install` gave the
    session. ``batch_size`` defaults to the provider's ``max_batch_size``. ``progress`` shows a
    tqdm bar on stderr; ``log_every`` logs rows done and rows/s (logger ``vecorm.backfill``)
    every so many seconds (``None``: never). Commits ``session`` after each batch, so it
    raises :class:`~vecorm.errors.ConfigurationError` if the session's transaction has written
    anything. A model with several embeddings (``SearchConfig(embeddings=...)``) has each
    filled in turn, each by its own embedder, and the result sums them; ``embedding="name"``
    fills that one only. Example::

        backfill(Session(engine), Document, batch_size=512)
    """
    results = [
        run_backfill(
            session,
            columns,
            provider,
            batch_size=batch_size,
            progress=progress,
            log_every=log_every,
        )
        for columns, provider in _each_embedding(session, model, embedding, embedder)
    ]
    if len(results) == 1:
        return results[0]
    return BackfillResult(
        sum(result.embedded for result in results),
        sum(result.batches for result in results),
        sum(result.calls for result in results),
        sum(result.seconds for result in results),
        tuple(key for result in results for key in result.rejected),
    )


_WROTE_SQL = "SELECT pg_catalog.txid_current_if_assigned() IS NOT NULL"


def check_no_pending_work(session: Session, owner: str) -> None:
    """Refuse a session whose own transaction has pending ORM changes or has written rows
    (it holds a transaction id): the backfill's per-batch commits would commit them."""
    if isinstance(session.get_bind(), Connection):
        return  # joined to the caller's transaction: its commits release savepoints
    if not session.in_transaction():
        return
    pending = bool(session.new or session.dirty or session.deleted)
    if not pending:
        pending = bool(session.connection().exec_driver_sql(_WROTE_SQL).scalar())
    if pending:
        raise ConfigurationError(
            f"backfill of {owner} commits every batch, and this session's transaction has "
            "uncommitted changes that it would commit with them; commit or roll back first "
            "(session.commit()), or pass a session of its own (Session(engine))"
        )


def checked_batch_size(
    columns: EmbeddingColumns, embedder: Embedder, batch_size: int | None
) -> int:
    """``batch_size`` (default: the provider's ``max_batch_size``), once it and the provider's
    width are known to fit ``columns``."""
    size = batch_size if batch_size is not None else embedder.max_batch_size
    if size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, not {size}")
    width = getattr(embedder, "dimensions", None)
    if width is not None and width != columns.dimensions:
        raise DimensionMismatch(
            f"{columns.owner}.{columns.embedding.name} has {columns.dimensions} dimensions but "
            f"embedder {embedder.model_name!r} returns {width}"
        )
    return size


def run_backfill(
    session: Session,
    columns: EmbeddingColumns,
    embedder: Embedder,
    *,
    batch_size: int | None = None,
    progress: ProgressChoice = False,
    description: str | None = None,
    log_every: float | None = LOG_EVERY,
) -> BackfillResult:
    """:func:`backfill` on explicit columns (a model's own, or a model change's shadow)."""
    size = checked_batch_size(columns, embedder, batch_size)
    check_no_pending_work(session, columns.owner)
    if session.in_transaction():
        session.commit()  # a read-only transaction: start from committed state
    started = time.perf_counter()
    total = count_stale(session, columns, embedder.model_name)
    session.commit()
    counters = Counters(
        label=description or f"backfill {columns.owner}",
        total=total,
        log_every=log_every,
        started=started,
        logged=started,
    )
    with progress_bar(
        total=total, desc=description or f"backfill {columns.owner}", enabled=progress
    ) as bar:
        for attempt in range(1, MAX_SWEEPS + 1):
            before = counters.embedded
            sweep(session, columns, embedder, size, counters, skip_locked=True, bar=bar)
            remaining = count_stale(session, columns, embedder.model_name)
            session.commit()
            if remaining == 0:
                break
            if attempt == MAX_SWEEPS:
                # Writers without the flush hook keep making rows stale: stop instead of
                # chasing them; stale_count() tells, and a later run picks them up.
                log.info(
                    "vecorm: %s: %d rows became stale during the backfill; run it again",
                    counters.label,
                    remaining,
                )
                break
            if counters.embedded == before:
                # what is left is locked by other transactions: wait for them, then stop
                sweep(session, columns, embedder, size, counters, skip_locked=False, bar=bar)
                break
    if counters.logged > started:  # a long run logged progress: say when it is done
        counters.log("done: ")
    rejected = counters.rejected_keys(columns.owner)
    if rejected:
        log.warning(
            "vecorm: %s: the provider refused the text of %d rows (first keys: %s); they stay "
            "stale until their text changes",
            counters.label,
            len(rejected),
            ", ".join(map(repr, rejected[:5])),
        )
    return BackfillResult(
        counters.embedded,
        counters.batches,
        counters.calls,
        time.perf_counter() - started,
        rejected,
    )


def embed_stale_in_transaction(
    session: Session, columns: EmbeddingColumns, embedder: Embedder, *, batch_size: int
) -> BackfillResult:
    """Embed every stale row inside the session's current transaction, committing nothing."""
    started = time.perf_counter()
    counters = Counters()
    sweep(session, columns, embedder, batch_size, counters, skip_locked=False, commit=False)
    return BackfillResult(
        counters.embedded, counters.batches, counters.calls, time.perf_counter() - started
    )


@dataclass
class Counters:
    """What sweeps did so far, updated after each committed batch (a worker's running totals)."""

    embedded: int = 0
    batches: int = 0
    calls: int = 0
    label: str = "backfill"
    total: int = 0
    log_every: float | None = None
    started: float = 0.0
    logged: float = 0.0
    #: ``time.time()`` when the last batch was committed (0.0: none yet).
    last_batch: float = 0.0
    #: (owner, primary key) -> digest of the text the provider refused, and why: such a row
    #: is left alone until its text changes (see :func:`_embed_texts`).
    rejected: dict[tuple[str, tuple[Any, ...]], tuple[bytes, str]] = field(default_factory=dict)

    def refused(self, owner: str, key: tuple[Any, ...], digest: bytes) -> bool:
        """Whether this row's present text was refused before."""
        found = self.rejected.get((owner, key))
        return found is not None and found[0] == digest

    def rejected_keys(self, owner: str) -> tuple[tuple[Any, ...], ...]:
        return tuple(key for name, key in self.rejected if name == owner)

    def tick(self) -> None:
        """Log progress if ``log_every`` seconds passed since the last line."""
        if self.log_every is None:
            return
        now = time.perf_counter()
        if now - self.logged >= self.log_every:
            self.logged = now
            self.log("")

    def log(self, prefix: str) -> None:
        if self.log_every is None:
            return
        seconds = time.perf_counter() - self.started
        log.info(
            "vecorm: %s%s: %d of %d rows, %.0f rows/s, %.1f s",
            prefix,
            self.label,
            self.embedded,
            max(self.total, self.embedded),
            self.embedded / seconds if seconds > 0 else 0.0,
            seconds,
        )


def sweep(
    session: Session,
    columns: EmbeddingColumns,
    embedder: Embedder,
    size: int,
    counters: Counters,
    *,
    skip_locked: bool,
    commit: bool = True,
    bar: Bar | None = None,
    stop: Callable[[], bool] | None = None,
    marked_only: bool = False,
) -> None:
    """One pass over the table in primary-key order, a committed transaction per batch.

    Each batch is claimed (``FOR UPDATE``, ``SKIP LOCKED`` if asked), embedded, written and
    committed; ``counters`` (and ``bar``) then count it. With ``commit=False`` everything
    happens in the caller's transaction (a model change's final catch-up, under a table
    lock). ``stop`` is asked after each committed batch: true, the pass ends there (a worker
    shutting down). A provider's failure rolls the batch in flight back (its rows stay stale)
    and raises :class:`~vecorm.errors.EmbeddingError`. On a table Citus distributes, one pass
    per distribution value of the stale rows: Citus runs ``FOR UPDATE`` only in a query
    routed to one shard, which an equality on that column makes it. ``marked_only`` looks
    only for the rows whose vector or digest is NULL (:meth:`EmbeddingColumns.marked`).
    """
    shown = bar if bar is not None else SilentBar()
    stale = columns.marked() if marked_only else columns.stale(embedder.model_name)
    rows = functools.partial(
        _sweep_rows, session, columns, embedder, size, shown, counters, skip_locked, commit, stale
    )
    column = distribution_column(session.connection(), columns.table)
    if column is None:
        rows(None, stop)
        return
    routed = columns.table.c[column]
    values = session.execute(select(routed).where(stale).distinct().order_by(routed)).scalars()
    for value in list(values):
        rows(compare(routed, "=", value), stop)
        if stop is not None and stop():
            return


def _sweep_rows(
    session: Session,
    columns: EmbeddingColumns,
    embedder: Embedder,
    size: int,
    bar: Bar,
    counters: Counters,
    skip_locked: bool,
    commit: bool,
    stale: ColumnElement[bool],
    only: ColumnElement[bool] | None,
    stop: Callable[[], bool] | None,
) -> None:
    """The batches of one pass over the rows ``stale`` keeps (and ``only`` selects, if
    given), until ``stop()``.

    Each batch is found first without a lock (the keys of the next ``size`` stale rows,
    which may mean reading far through the table to find a few scattered ones), then claimed
    ``FOR UPDATE`` by those keys (and still stale): a row lock is never held while a scan
    goes on looking for more (a writer waited 1.1 s for a catch-up pass over 200,000 rows
    that claimed as it scanned, benchmarks/adoption.py).
    """
    after: tuple[Any, ...] | None = None
    keys = tuple_(*columns.keys)
    while True:
        probe = select(*columns.keys).where(stale).order_by(*columns.keys).limit(size)
        if only is not None:
            probe = probe.where(only)
        if after is not None:
            probe = probe.where(compare(keys, ">", tuple_(*after)))
        try:
            found = session.execute(probe).all()
            if not found:
                if commit:
                    session.commit()
                return
            after = tuple(found[-1])
            statement = (
                select(
                    *columns.keys,
                    columns.digest,
                    columns.model,
                    columns.embedding.is_(None),
                    *columns.fields,
                )
                .where(stale, _one_of(columns.keys, found))
                .order_by(*columns.keys)
                .limit(size)
                .with_for_update(skip_locked=skip_locked, of=columns.table)
            )
            if only is not None:
                statement = statement.where(only)
            rows = session.execute(statement).all()
            work = _stale_rows(columns, embedder.model_name, rows, counters)
            written = 0
            if work:
                calls, written = _embed_and_write(session, columns, embedder, work, counters)
                counters.calls += calls
            if commit:
                session.commit()
        except BaseException:
            if commit:
                session.rollback()
            raise
        counters.batches += 1
        counters.embedded += written
        counters.last_batch = time.time()
        counters.tick()
        if bar.total is not None and bar.n + written > bar.total:
            bar.total = bar.n + written
        bar.update(written)
        if stop is not None and stop():
            return


def _one_of(keys: Sequence[KeyedColumnElement[Any]], found: Sequence[Any]) -> ColumnElement[bool]:
    """The rows whose primary key is one of ``found``: ``pk = ANY(:keys)`` (an index lookup
    per key), or one ``(k0 = .. AND k1 = ..)`` per row for a composite key."""
    if len(keys) == 1:
        (key,) = keys
        values = bindparam("vecorm_keys", [row[0] for row in found], type_=ARRAY(key.type))
        return compare(key, "=", any_(values))
    return or_(
        *(
            and_(*(compare(key, "=", value) for key, value in zip(keys, row, strict=True)))
            for row in found
        )
    )


def _stale_rows(
    columns: EmbeddingColumns, model_name: str, rows: Sequence[Any], counters: Counters
) -> list[tuple[tuple[Any, ...], str, bytes]]:
    """(key, text, digest) of the claimed rows that Python also finds stale (and whose
    present text the provider has not refused already)."""
    width = len(columns.keys)
    work = []
    for row in rows:
        values = tuple(row)
        stored_digest, stored_model, is_null = values[width : width + 3]
        body = join_text(values[width + 3 :])
        if body is None:
            continue
        digest = text_digest(body)
        if not is_null and stored_digest == digest and stored_model == model_name:
            continue
        if counters.refused(columns.owner, values[:width], digest):
            continue
        work.append((values[:width], body, digest))
    return work


def _embed_and_write(
    session: Session,
    columns: EmbeddingColumns,
    embedder: Embedder,
    work: list[tuple[tuple[Any, ...], str, bytes]],
    counters: Counters,
) -> tuple[int, int]:
    """Embed ``work``'s texts and write their rows in one statement: (provider calls, rows
    written). Rows whose text the provider refused are recorded in ``counters`` and left."""
    texts = list(dict.fromkeys(body for _, body, _ in work))
    vectors, refused, calls = _embed_texts(columns, embedder, texts)
    for key, body, digest in work:
        if body in refused:
            counters.rejected[(columns.owner, key)] = (digest, refused[body])
            log.warning(
                "vecorm: %s row %r: the provider refused its text (%s); it stays stale until "
                "its text changes",
                columns.owner,
                key if len(key) > 1 else key[0],
                refused[body],
            )
    work = [item for item in work if item[1] not in refused]
    if not work:
        return calls, 0
    rows = [(*key, vectors[body], digest, embedder.model_name) for key, body, digest in work]
    connection = session.connection()
    statement, parameters = batch_update(columns, rows, connection)
    # The update leaves the text, so the tsvector, as it is: the BM25 statement triggers
    # would copy the batch into transition tables to find no change. Skip them for it.
    connection.execute(_BM25_TRIGGERS, {"value": "on"})
    connection.execute(statement, parameters)
    connection.execute(_BM25_TRIGGERS, {"value": "off"})
    return calls, len(work)


def _embed_texts(
    columns: EmbeddingColumns, embedder: Embedder, texts: list[str]
) -> tuple[dict[str, Any], dict[str, str], int]:
    """Vectors by text, the texts the provider refused with its reason, provider calls.

    A batch refused for its texts (:attr:`~vecorm.errors.EmbeddingError.rejected_input`: one
    too long, one empty, an HTTP 400) is split in halves until the texts to blame are alone,
    so that one bad row does not hold back the rest of its table (a worker would otherwise
    retry the same batch for ever); a few calls more, only when that happens. Any other
    failure (rate limit, timeout, server error) raises at once, and the batch rolls back.
    """
    vectors: dict[str, Any] = {}
    refused: dict[str, str] = {}
    calls = 0
    step = max(1, embedder.max_batch_size)
    pending = [texts[start : start + step] for start in range(0, len(texts), step)]
    while pending:
        batch = pending.pop(0)
        calls += 1
        try:
            matrix = check_embeddings(
                embedder, batch, call_embedder(embedder, batch), columns.dimensions
            )
        except DimensionMismatch:
            raise
        except EmbeddingError as exc:
            if not exc.rejected_input:
                raise _batch_failed(columns, embedder, batch, exc) from exc
            if len(batch) == 1:
                refused[batch[0]] = str(exc)
            else:
                middle = len(batch) // 2
                pending[:0] = [batch[:middle], batch[middle:]]
            continue
        except Exception as exc:
            raise _batch_failed(columns, embedder, batch, exc) from exc
        vectors.update(zip(batch, matrix, strict=True))
    return vectors, refused, calls


def _batch_failed(
    columns: EmbeddingColumns, embedder: Embedder, batch: list[str], exc: Exception
) -> EmbeddingError:
    detail = str(exc) if isinstance(exc, VecormError) else f"{type(exc).__name__}: {exc}"
    return EmbeddingError(
        f"backfill of {columns.owner} failed: {embedder.model_name!r} could not embed "
        f"{len(batch)} texts: {detail}. Batches already committed are kept; run the "
        "backfill again to carry on"
    )


_BM25_TRIGGERS = text("SELECT pg_catalog.set_config('vecorm.bm25_deferred', :value, true)")


def batch_update(
    columns: EmbeddingColumns, rows: Sequence[tuple[Any, ...]], connection: Connection
) -> tuple[TextClause, dict[str, Any]]:
    """One ``UPDATE`` for a whole batch, and its parameters: one round trip and one firing of
    the table's statement triggers.

    ``rows`` are ``(*primary key, vector, digest, model name)``. On psycopg 3 each column of
    the batch is one array parameter, the vectors one ``vector[]`` in pgvector's binary format
    (:class:`~vecorm.schema.drivers.BinaryArrayParam`)::

        UPDATE t SET embedding = b.embedding, ... FROM ROWS FROM (pg_catalog.unnest(CAST(
        :vecorm_k0 AS INTEGER[])), pg_catalog.unnest(CAST(:vecorm_embeddings AS VECTOR(64)[])),
        ...) AS b (k0, embedding, digest) WHERE t.id = b.k0

    (a 1,000-row batch of ``VALUES`` with a parameter per cell cost more in psycopg's and
    SQLAlchemy's handling of 4,000 parameters than the server took to run it). On the other
    drivers, where vectors travel as text, it is ``FROM (VALUES (CAST(:k0_0 AS INTEGER),
    CAST(:embedding_0 AS VECTOR(64)), :digest_0), ...)``. Both are ``text()`` statements
    built once per shape: SQLAlchemy's ``values()`` construct cannot be cached.
    """
    dialect = connection.dialect
    element_type = getattr(
        getattr(columns.embedding.type, "binary_param", None), "element_type", None
    )
    if rows and element_type is not None and uses_binary_binds(dialect):
        return _array_batch_update(columns, rows, connection, element_type)
    width = len(columns.keys)
    parameters: dict[str, Any] = {"vecorm_model": rows[0][width + 2] if rows else None}
    for i, row in enumerate(rows):
        for n in range(width):
            parameters[f"k{n}_{i}"] = row[n]
        parameters[f"embedding_{i}"] = row[width]
        parameters[f"digest_{i}"] = row[width + 1]
    schema = effective_schema(connection, columns.table)
    return _batch_text(columns, len(rows), dialect, schema), parameters


def _array_batch_update(
    columns: EmbeddingColumns,
    rows: Sequence[tuple[Any, ...]],
    connection: Connection,
    element_type: str,
) -> tuple[TextClause, dict[str, Any]]:
    """:func:`batch_update` with one array parameter per column (psycopg 3)."""
    width = len(columns.keys)
    vector_type = columns.embedding.type.compile(connection.dialect)
    vectors = BinaryArrayParam.of_vectors(
        np.stack([row[width] for row in rows]), type_oid(connection, vector_type), element_type
    )
    parameters: dict[str, Any] = {f"vecorm_k{n}": [row[n] for row in rows] for n in range(width)}
    parameters["vecorm_embeddings"] = vectors
    parameters["vecorm_digests"] = BinaryArrayParam.of_bytes([row[width + 1] for row in rows])
    parameters["vecorm_model"] = rows[0][width + 2]
    schema = effective_schema(connection, columns.table)
    return _array_text(columns, connection.dialect, schema), parameters


@functools.lru_cache(maxsize=32)
def _array_text(columns: EmbeddingColumns, dialect: Dialect, schema: str | None) -> TextClause:
    """The statement of :func:`_array_batch_update` (built once per table and the schema the
    connection's ``schema_translate_map`` puts it in)."""
    arrays = [
        f"CAST(:vecorm_k{n} AS {key.type.compile(dialect)}[])" for n, key in enumerate(columns.keys)
    ]
    arrays.append(f"CAST(:vecorm_embeddings AS {columns.embedding.type.compile(dialect)}[])")
    arrays.append(f"CAST(:vecorm_digests AS {columns.digest.type.compile(dialect)}[])")
    binds: list[BindParameter[Any]] = [
        bindparam(f"vecorm_k{n}", type_=ARRAY(key.type)) for n, key in enumerate(columns.keys)
    ]
    binds.append(bindparam("vecorm_embeddings"))
    binds.append(bindparam("vecorm_digests"))
    unnested = ", ".join(f"pg_catalog.unnest({array})" for array in arrays)
    return _update_from(columns, dialect, schema, f"ROWS FROM ({unnested})", binds)


@functools.lru_cache(maxsize=32)
def _batch_text(
    columns: EmbeddingColumns, size: int, dialect: Dialect, schema: str | None
) -> TextClause:
    """The statement of :func:`batch_update` for ``size`` rows (built once per size and
    schema)."""
    width = len(columns.keys)
    key_types = [key.type.compile(dialect) for key in columns.keys]
    vector_type = columns.embedding.type.compile(dialect)
    tuples = []
    binds: list[BindParameter[Any]] = []
    for i in range(size):
        cells = [f"CAST(:k{n}_{i} AS {key_types[n]})" for n in range(width)]
        cells.append(f"CAST(:embedding_{i} AS {vector_type})")
        cells.append(f":digest_{i}")
        tuples.append(f"({', '.join(cells)})")
        binds.extend(bindparam(f"k{n}_{i}", type_=key.type) for n, key in enumerate(columns.keys))
        binds.append(bindparam(f"embedding_{i}", type_=columns.embedding.type))
        binds.append(bindparam(f"digest_{i}", type_=columns.digest.type))
    return _update_from(columns, dialect, schema, f"(VALUES {', '.join(tuples)})", binds)


def _update_from(
    columns: EmbeddingColumns,
    dialect: Dialect,
    schema: str | None,
    source: str,
    binds: list[BindParameter[Any]],
) -> TextClause:
    """``UPDATE schema.table SET <vector, digest, model> FROM <source> AS vecorm_batch (k0 ..,
    embedding, digest) WHERE <key> = vecorm_batch.k0 ...``, with ``binds`` and the model's."""
    preparer = dialect.identifier_preparer
    table = qualified_in(preparer, schema, columns.table.name)
    names = [f"k{n}" for n in range(len(columns.keys))]
    match = " AND ".join(
        f"{table}.{preparer.quote(key.name)} {_equals(key)} vecorm_batch.{name}"
        for key, name in zip(columns.keys, names, strict=True)
    )
    statement = (
        f"UPDATE {table} SET {preparer.quote(columns.embedding.name)} = vecorm_batch.embedding, "
        f"{preparer.quote(columns.digest.name)} = vecorm_batch.digest, "
        f"{preparer.quote(columns.model.name)} = :vecorm_model "
        f"FROM {source} AS vecorm_batch ({', '.join(names)}, embedding, digest) WHERE {match}"
    )
    model = bindparam("vecorm_model", type_=columns.model.type)
    return text(statement).bindparams(*binds, model)


def _equals(key: ColumnElement[Any]) -> str:
    return catalog_operator("=") if has_catalog_operators(key.type) else "="


def keyed_update(columns: EmbeddingColumns, values: Mapping[str, Any]) -> Update:
    """``UPDATE table SET column = :name ... WHERE pk = :vecorm_key_<n>`` for ``executemany``.

    ``values`` maps each bound parameter's name to the column it sets; rows are addressed by
    :func:`key_parameters` of their primary key.
    """
    return (
        update(columns.table)
        .where(
            *(
                compare(column, "=", bindparam(f"vecorm_key_{n}", type_=column.type))
                for n, column in enumerate(columns.keys)
            )
        )
        .values(
            {column.name: bindparam(name, type_=column.type) for name, column in values.items()}
        )
    )


def key_parameters(key: Sequence[Any]) -> dict[str, Any]:
    """The ``vecorm_key_<n>`` parameters that address one row in :func:`keyed_update`."""
    return {f"vecorm_key_{n}": value for n, value in enumerate(key)}
