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

Each batch is claimed with ``SELECT ... ORDER BY <primary key> LIMIT n FOR UPDATE SKIP LOCKED``,
embedded, written and committed in its own transaction, so:

* a crash loses at most the batch in flight, and running it again carries on where it stopped
  (committed rows are no longer stale);
* two backfills, or a backfill and the application, never embed the same row twice: a claimed
  row is locked until its vector is committed, and the other side skips it (or, on the last
  sweep, waits for it and re-checks it);
* no row is skipped: rows locked by the application during a sweep are picked up by the next
  one, and rows that become stale meanwhile are too.

Staleness is decided in SQL with the same text composition as Python (fields joined by a
newline, NULL and blank values left out, ``sha256(convert_to(text, 'UTF8'))``) and confirmed in
Python before a row is embedded. Use a session of its own: the backfill commits it per batch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    TableClause,
    Update,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.sql.elements import KeyedColumnElement

from vecorm.embedding.embedders.base import Embedder, check_embeddings
from vecorm.embedding.events import call_embedder, installed_embedder
from vecorm.embedding.source import source_text, text_digest
from vecorm.errors import ConfigurationError, DimensionMismatch, EmbeddingError, VecormError
from vecorm.progress import Bar, ProgressChoice, SilentBar, progress_bar
from vecorm.schema.config import SearchConfig, search_config

__all__ = ["BackfillResult", "backfill", "stale_condition", "stale_count"]

#: The characters ``str.strip()`` removes (``str.isspace``), so SQL skips the same blank values.
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


@dataclass(frozen=True)
class BackfillResult:
    """What a backfill did: rows embedded, batches committed, provider calls, seconds taken."""

    embedded: int
    batches: int
    calls: int
    seconds: float

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
    field_names: tuple[str, ...]
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
            case((func.btrim(column, PYTHON_WHITESPACE) == "", None), else_=column)
            for column in self.fields
        ]
        return func.concat_ws("\n", *parts)

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
            self.model.is_distinct_from(literal(model_name, String)),
        ]
        if self.exact_in_sql:
            reasons.append(self.digest != func.sha256(func.convert_to(body, "UTF8")))
        else:  # e.g. a numeric field: str() and ::text may differ, so Python decides
            reasons.append(literal(True))
        return and_(body != "", or_(*reasons))


def columns_of(model: type[Any]) -> EmbeddingColumns:
    """The :class:`EmbeddingColumns` of a searchable model (the table holding its vector)."""
    config: SearchConfig = search_config(model)
    mapper: Mapper[Any] = sa_inspect(model)

    def column(key: str) -> KeyedColumnElement[Any]:
        prop = mapper.attrs.get(key)
        columns = getattr(prop, "columns", None)
        if not columns:
            raise ConfigurationError(f"{model.__name__}.{key} is not a mapped column")
        return columns[0]  # type: ignore[no-any-return]

    embedding = column("embedding")
    table = embedding.table
    return EmbeddingColumns(
        owner=model.__name__,
        table=table,
        keys=tuple(table.primary_key.columns),
        field_names=config.fields,
        fields=tuple(column(name) for name in config.fields),
        embedding=embedding,
        digest=column("embedding_digest"),
        model=column("embedding_model"),
        dimensions=config.dimensions,
    )


def resolve_embedder(session: Session, model: type[Any], embedder: Embedder | None) -> Embedder:
    """``embedder``, else the model's, else the one installed on the session, else an error."""
    found = embedder or search_config(model).embedder or installed_embedder(session)
    if found is None:
        raise ConfigurationError(
            f"no embedder for {model.__name__}: pass embedder=..., set SearchConfig(embedder=...)"
            " or vecorm.install(session, embedder=...)"
        )
    return found


def stale_condition(model: type[Any], model_name: str) -> ColumnElement[bool]:
    """SQL condition selecting ``model``'s stale rows, for your own queries.

    ``session.scalars(select(Document.id).where(stale_condition(Document, embedder.model_name)))``
    """
    return columns_of(model).stale(model_name)


def stale_count(session: Session, model: type[Any], *, embedder: Embedder | None = None) -> int:
    """How many rows of ``model`` :func:`backfill` would embed now.

    ``stale_count(session, Document, embedder=OpenAIEmbedder())``
    """
    columns = columns_of(model)
    provider = resolve_embedder(session, model, embedder)
    return count_stale(session, columns, provider.model_name)


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
) -> BackfillResult:
    """Embed every stale row of ``model``, ``batch_size`` rows per transaction.

    ``embedder`` defaults to the model's, then to the one :func:`vecorm.install` gave the
    session. ``batch_size`` defaults to the provider's ``max_batch_size``. ``progress`` shows a
    tqdm bar on stderr. Commits ``session`` after each batch. Example::

        backfill(Session(engine), Document, batch_size=512)
    """
    provider = resolve_embedder(session, model, embedder)
    return run_backfill(
        session, columns_of(model), provider, batch_size=batch_size, progress=progress
    )


def run_backfill(
    session: Session,
    columns: EmbeddingColumns,
    embedder: Embedder,
    *,
    batch_size: int | None = None,
    progress: ProgressChoice = False,
    description: str | None = None,
) -> BackfillResult:
    """:func:`backfill` on explicit columns (a model's own, or a model change's shadow)."""
    size = batch_size if batch_size is not None else embedder.max_batch_size
    if size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, not {size}")
    width = getattr(embedder, "dimensions", None)
    if width is not None and width != columns.dimensions:
        raise DimensionMismatch(
            f"{columns.owner}.{columns.embedding.name} has {columns.dimensions} dimensions but "
            f"embedder {embedder.model_name!r} returns {width}"
        )
    if session.in_transaction():
        session.commit()  # start from committed state; per-batch commits follow
    started = time.perf_counter()
    total = count_stale(session, columns, embedder.model_name)
    session.commit()
    counters = _Counters()
    with progress_bar(
        total=total, desc=description or f"backfill {columns.owner}", enabled=progress
    ) as bar:
        while True:
            before = counters.embedded
            _sweep(session, columns, embedder, size, bar, counters, skip_locked=True)
            remaining = count_stale(session, columns, embedder.model_name)
            session.commit()
            if remaining == 0:
                break
            if counters.embedded == before:
                # what is left is locked by other transactions: wait for them, then stop
                _sweep(session, columns, embedder, size, bar, counters, skip_locked=False)
                break
    return BackfillResult(
        counters.embedded, counters.batches, counters.calls, time.perf_counter() - started
    )


def embed_stale_in_transaction(
    session: Session, columns: EmbeddingColumns, embedder: Embedder, *, batch_size: int
) -> BackfillResult:
    """Embed every stale row inside the session's current transaction, committing nothing."""
    started = time.perf_counter()
    counters = _Counters()
    _sweep(
        session,
        columns,
        embedder,
        batch_size,
        SilentBar(),
        counters,
        skip_locked=False,
        commit=False,
    )
    return BackfillResult(
        counters.embedded, counters.batches, counters.calls, time.perf_counter() - started
    )


@dataclass
class _Counters:
    embedded: int = 0
    batches: int = 0
    calls: int = 0


def _sweep(
    session: Session,
    columns: EmbeddingColumns,
    embedder: Embedder,
    size: int,
    bar: Bar,
    counters: _Counters,
    *,
    skip_locked: bool,
    commit: bool = True,
) -> None:
    """One pass over the table in primary-key order, a committed transaction per batch.

    With ``commit=False`` everything happens in the caller's transaction (a model change's
    final catch-up, under a table lock).
    """
    after: tuple[Any, ...] | None = None
    width = len(columns.keys)
    while True:
        statement = (
            select(
                *columns.keys,
                columns.digest,
                columns.model,
                columns.embedding.is_(None),
                *columns.fields,
            )
            .where(columns.stale(embedder.model_name))
            .order_by(*columns.keys)
            .limit(size)
            .with_for_update(skip_locked=skip_locked, of=columns.table)
        )
        if after is not None:
            statement = statement.where(tuple_(*columns.keys) > tuple_(*after))
        try:
            rows = session.execute(statement).all()
            if not rows:
                if commit:
                    session.commit()
                return
            after = tuple(rows[-1][:width])
            work = _stale_rows(columns, embedder.model_name, rows)
            if work:
                counters.calls += _embed_and_write(session, columns, embedder, work)
            if commit:
                session.commit()
        except BaseException:
            if commit:
                session.rollback()
            raise
        counters.batches += 1
        counters.embedded += len(work)
        if bar.total is not None and bar.n + len(work) > bar.total:
            bar.total = bar.n + len(work)
        bar.update(len(work))


def _stale_rows(
    columns: EmbeddingColumns, model_name: str, rows: Sequence[Any]
) -> list[tuple[tuple[Any, ...], str, bytes]]:
    """(key, text, digest) of the claimed rows that Python also finds stale."""
    width = len(columns.keys)
    work = []
    for row in rows:
        values = tuple(row)
        stored_digest, stored_model, is_null = values[width : width + 3]
        fields = SimpleNamespace(**dict(zip(columns.field_names, values[width + 3 :], strict=True)))
        body = source_text(fields, columns.field_names)
        if body is None:
            continue
        digest = text_digest(body)
        if not is_null and stored_digest == digest and stored_model == model_name:
            continue
        work.append((values[:width], body, digest))
    return work


def _embed_and_write(
    session: Session,
    columns: EmbeddingColumns,
    embedder: Embedder,
    work: list[tuple[tuple[Any, ...], str, bytes]],
) -> int:
    texts = list(dict.fromkeys(body for _, body, _ in work))
    vectors: dict[str, Any] = {}
    calls = 0
    step = max(1, embedder.max_batch_size)
    for start in range(0, len(texts), step):
        batch = texts[start : start + step]
        calls += 1
        try:
            matrix = check_embeddings(
                embedder, batch, call_embedder(embedder, batch), columns.dimensions
            )
        except DimensionMismatch:
            raise
        except Exception as exc:
            detail = str(exc) if isinstance(exc, VecormError) else f"{type(exc).__name__}: {exc}"
            raise EmbeddingError(
                f"backfill of {columns.owner} failed: {embedder.model_name!r} could not embed "
                f"{len(batch)} texts: {detail}. Batches already committed are kept; run the "
                "backfill again to carry on"
            ) from exc
        vectors.update(zip(batch, matrix, strict=True))
    statement = keyed_update(
        columns,
        {
            "vecorm_embedding": columns.embedding,
            "vecorm_digest": columns.digest,
            "vecorm_model": columns.model,
        },
    )
    parameters = [
        {
            **key_parameters(key),
            "vecorm_embedding": vectors[body],
            "vecorm_digest": digest,
            "vecorm_model": embedder.model_name,
        }
        for key, body, digest in work
    ]
    session.connection().execute(statement, parameters)
    return calls


def keyed_update(columns: EmbeddingColumns, values: Mapping[str, Any]) -> Update:
    """``UPDATE table SET column = :name ... WHERE pk = :vecorm_key_<n>`` for ``executemany``.

    ``values`` maps each bound parameter's name to the column it sets; rows are addressed by
    :func:`key_parameters` of their primary key.
    """
    return (
        update(columns.table)
        .where(
            *(
                column == bindparam(f"vecorm_key_{n}", type_=column.type)
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
