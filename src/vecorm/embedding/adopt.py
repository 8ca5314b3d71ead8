"""Adopting vectors that are already in the table: record them as current, or embed them again.

A model whose table already holds an ``embedding vector(1536)`` column, filled by your own code,
switches to :class:`vecorm.Searchable` by naming that column (and its index) in its config; the
migration then adds only the bookkeeping columns (see docs/adopting.md). Their digests are
still NULL, so to vecorm every row looks stale. :func:`adopt` settles that:

* by default it **records** each existing vector as current for its row's present text: the
  digest column gets ``sha256`` of the text (composed as :mod:`vecorm.embedding.source` does, in
  SQL) and
  the model column the provider's ``model_name``. No provider call is made; the embedder is only
  asked its name and width;
* ``re_embed=True`` embeds every row that has not been recorded with the provider instead
  (:func:`vecorm.embedding.backfill.backfill`: resumable, batched, safe next to the application).

Both first compare the existing column with the model and the provider, and stop before doing
anything if the widths differ::

    from vecorm.embedding.adopt import adopt

    result = adopt(Session(engine), Document, embedder=OpenAIEmbedder())
    result.recorded, result.missing      # (120000, 35): 35 rows have text but no vector yet

    $ vecorm adopt myapp.models:Document --embedder myapp.ai:embedder
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, select, text, tuple_, update
from sqlalchemy.orm import Session

from vecorm.embedding.backfill import (
    EmbeddingColumns,
    columns_of,
    key_parameters,
    keyed_update,
    resolve_embedder,
    run_backfill,
)
from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.source import join_text, text_digest
from vecorm.errors import ConfigurationError, DimensionMismatch
from vecorm.progress import ProgressChoice, progress_bar
from vecorm.schema.config import SearchConfig, search_config
from vecorm.schema.pgcatalog import compare, qualified_table

__all__ = ["AdoptResult", "adopt", "check_existing_column"]

#: Rows recorded per transaction: no provider is involved, so batches can be large.
DEFAULT_RECORD_BATCH = 5000

_VECTOR_TYPE = re.compile(r"^(vector|halfvec)(?:\((\d+)\))?$")

_COLUMNS_SQL = text(
    """
    SELECT a.attname, format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a
    WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table)
      AND a.attnum > 0 AND NOT a.attisdropped
    """
)


@dataclass(frozen=True)
class AdoptResult:
    """What :func:`adopt` did.

    ``recorded``: existing vectors recorded as current; ``embedded``: rows the provider embedded
    (``re_embed``); ``missing``: rows with text and no vector left (``re_embed`` fills them);
    ``calls``: provider calls; ``seconds``: time taken.
    """

    recorded: int
    embedded: int
    missing: int
    calls: int
    seconds: float


def adopt(
    session: Session,
    model: type[Any],
    *,
    embedder: Embedder | None = None,
    re_embed: bool = False,
    batch_size: int | None = None,
    progress: ProgressChoice = False,
) -> AdoptResult:
    """Record ``model``'s existing vectors as current, or (``re_embed``) embed them again.

    ``embedder`` defaults to the model's, then to the one :func:`vecorm.install` gave the
    session; recording only reads its ``model_name`` and ``dimensions``. Commits ``session``
    after each batch, and is safe to run again: recorded rows are skipped. Example::

        adopt(Session(engine), Document, embedder=HashingEmbedder(1536))
    """
    started = time.perf_counter()
    columns = columns_of(model)
    provider = resolve_embedder(session, model, embedder)
    check_existing_column(session, model, provider)
    if session.in_transaction():
        session.commit()
    if re_embed:
        done = run_backfill(
            session,
            columns,
            provider,
            batch_size=batch_size,
            progress=progress,
            description=f"adopt {columns.owner} (re-embed)",
        )
        recorded, embedded, calls = 0, done.embedded, done.calls
    else:
        size = batch_size if batch_size is not None else DEFAULT_RECORD_BATCH
        if size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, not {size}")
        recorded = _record(session, columns, provider.model_name, size, progress)
        embedded, calls = 0, 0
    missing = _count(session, and_(columns.embedding.is_(None), columns.text != ""), columns)
    session.commit()
    return AdoptResult(recorded, embedded, missing, calls, time.perf_counter() - started)


def check_existing_column(session: Session, model: type[Any], embedder: Embedder) -> None:
    """Raise unless the stored table can be adopted by ``model`` with ``embedder``.

    The vector column must exist with the configured storage and width (a
    :class:`~vecorm.errors.DimensionMismatch` names both widths otherwise), the provider must
    return that width, and the bookkeeping columns must have been added by a migration.
    """
    config: SearchConfig = search_config(model)
    columns = columns_of(model)
    table = columns.table
    qualified = qualified_table(session.connection(), table)
    stored: dict[str, str] = {
        str(name): str(type_)
        for name, type_ in session.execute(_COLUMNS_SQL, {"table": qualified}).all()
    }
    label = f"{table.name}.{columns.embedding.name}"
    if not stored:
        raise ConfigurationError(
            f"{model.__name__}: table {qualified} does not exist; create it (or run your "
            "migrations) before adopting"
        )
    if columns.embedding.name not in stored:
        raise ConfigurationError(
            f"{model.__name__}: {table.name} has no column {columns.embedding.name!r}; set "
            "SearchConfig(embedding_column=...) to the name of your existing vector column"
        )
    match = _VECTOR_TYPE.match(stored[columns.embedding.name])
    if match is None:
        raise ConfigurationError(
            f"{label} is {stored[columns.embedding.name]}, not a pgvector vector or halfvec column"
        )
    storage, typmod = match.group(1), match.group(2)
    if storage != config.storage:
        raise ConfigurationError(
            f"{label} is stored as {storage} but {model.__name__} declares "
            f"storage={config.storage!r}; set SearchConfig(storage={storage!r})"
        )
    width = int(typmod) if typmod else _stored_width(session, columns)
    provider_width = getattr(embedder, "dimensions", None)
    if width is not None and width != config.dimensions:
        raise DimensionMismatch(
            f"{label} holds {width}-dimensional vectors but {model.__name__} is configured for "
            f"{config.dimensions}; nothing was changed. Set SearchConfig(dimensions={width}) "
            "with a provider of that width, or move to the new width with "
            "vecorm.embedding.reembed.ModelChange"
        )
    if provider_width is not None and provider_width != (width or config.dimensions):
        raise DimensionMismatch(
            f"{label} holds {width or config.dimensions}-dimensional vectors but embedder "
            f"{embedder.model_name!r} returns {provider_width}; nothing was changed. Adopt with "
            "the provider that made these vectors, or move to the new one with "
            "vecorm.embedding.reembed.ModelChange"
        )
    absent = [name for name in (columns.digest.name, columns.model.name) if name not in stored]
    if absent:
        raise ConfigurationError(
            f"{model.__name__}: {table.name} lacks vecorm's bookkeeping columns "
            f"{', '.join(absent)}; generate and run the migration that adds them first "
            "(alembic revision --autogenerate, alembic upgrade head)"
        )


def _stored_width(session: Session, columns: EmbeddingColumns) -> int | None:
    """Width of the first stored vector of a column declared without one (``vector``)."""
    statement = (
        select(func.vector_dims(columns.embedding)).where(columns.embedding.is_not(None)).limit(1)
    )
    found = session.execute(statement).scalar()
    return None if found is None else int(found)


def _pending(columns: EmbeddingColumns) -> ColumnElement[bool]:
    """Rows holding a vector that vecorm has not recorded yet."""
    return and_(columns.embedding.is_not(None), columns.digest.is_(None))


def _count(session: Session, condition: ColumnElement[bool], columns: EmbeddingColumns) -> int:
    statement = select(func.count()).select_from(columns.table).where(condition)
    return int(session.execute(statement).scalar_one())


def _record(
    session: Session,
    columns: EmbeddingColumns,
    model_name: str,
    size: int,
    progress: ProgressChoice,
) -> int:
    total = _count(session, and_(_pending(columns), columns.text != ""), columns)
    session.commit()
    recorded = 0
    with progress_bar(total=total, desc=f"adopt {columns.owner}", enabled=progress) as bar:
        batch = _record_in_sql if columns.exact_in_sql else _record_in_python
        after: tuple[Any, ...] | None = None
        while True:
            try:
                count, after = batch(session, columns, model_name, size, after)
                session.commit()
            except BaseException:
                session.rollback()
                raise
            if after is None:
                return recorded
            recorded += count
            bar.update(count)


def _record_in_sql(
    session: Session,
    columns: EmbeddingColumns,
    model_name: str,
    size: int,
    after: tuple[Any, ...] | None,
) -> tuple[int, tuple[Any, ...] | None]:
    """One batch, digests computed by PostgreSQL (every field is a string column)."""
    claim = (
        select(*columns.keys)
        .where(_pending(columns), columns.text != "")
        .order_by(*columns.keys)
        .limit(size)
        .with_for_update(of=columns.table)
    )
    if after is not None:
        claim = claim.where(compare(tuple_(*columns.keys), ">", tuple_(*after)))
    statement = (
        update(columns.table)
        .where(tuple_(*columns.keys).in_(claim), _pending(columns))
        .values(
            {
                columns.digest.name: func.sha256(func.convert_to(columns.text, "UTF8")),
                columns.model.name: literal(model_name, columns.model.type),
            }
        )
        .returning(*columns.keys)
    )
    keys = [tuple(row) for row in session.execute(statement).all()]
    return len(keys), (max(keys) if keys else None)


def _record_in_python(
    session: Session,
    columns: EmbeddingColumns,
    model_name: str,
    size: int,
    after: tuple[Any, ...] | None,
) -> tuple[int, tuple[Any, ...] | None]:
    """One batch, text composed by :func:`vecorm.embedding.source.join_text` (non-string
    fields)."""
    width = len(columns.keys)
    claim = (
        select(*columns.keys, *columns.fields)
        .where(_pending(columns))
        .order_by(*columns.keys)
        .limit(size)
        .with_for_update(of=columns.table)
    )
    if after is not None:
        claim = claim.where(compare(tuple_(*columns.keys), ">", tuple_(*after)))
    rows = session.execute(claim).all()
    if not rows:
        return 0, None
    work = []
    for row in rows:
        values = tuple(row)
        body = join_text(values[width:])
        if body is not None:
            work.append((values[:width], text_digest(body)))
    if work:
        statement = keyed_update(
            columns, {"vecorm_digest": columns.digest, "vecorm_model": columns.model}
        )
        session.connection().execute(
            statement,
            [
                {**key_parameters(key), "vecorm_digest": digest, "vecorm_model": model_name}
                for key, digest in work
            ],
        )
    return len(work), tuple(rows[-1][:width])
