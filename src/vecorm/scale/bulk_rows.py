"""The rows of :func:`vecorm.bulk_insert`: the caller's mappings made into column values.

Each mapping (attribute or column names -> values) becomes the values the table's columns
receive, the way ``session.execute(insert(Model), rows)`` plus the flush hook would make them:

* Python-side column defaults (``default=...``: a value, a callable, a SQL expression or a
  sequence) fill what the row leaves out; server defaults are left to the server;
* a row without a vector gets one from the embedder, texts embedded in batches of its
  ``max_batch_size``, and the digest and model name of its text, exactly as the flush hook
  stores them (so :func:`vecorm.stale_count` stays 0);
* a row with a vector keeps it (validated: :class:`~vecorm.errors.DimensionMismatch`,
  :class:`~vecorm.errors.InvalidVector`, naming the row) and gets the digest of its text and
  the embedder's model name unless it gives them.

::

    model = bulk_model(Document)
    preparer = RowPreparer(model, Embedding(HashingEmbedder(384)))
    prepared = preparer.prepare([(0, {"title": "Intro", "content": "..."})])
    prepared[0].values[model.embedding]     # a float32 array from the embedder
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Column, ColumnDefault, Table, func, select
from sqlalchemy import Sequence as SqlSequence
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.elements import ColumnElement

from vecorm.embedding.embedders.base import Embedder, check_embeddings
from vecorm.embedding.events import call_embedder
from vecorm.embedding.source import join_text, text_digest
from vecorm.errors import (
    BulkInsertError,
    ConfigurationError,
    DimensionMismatch,
    EmbeddingError,
    VecormError,
)
from vecorm.schema.config import SearchConfig, search_config
from vecorm.schema.types import FloatArray, to_float_array

__all__ = [
    "BulkModel",
    "Embedding",
    "PreparedRow",
    "RowPreparer",
    "bulk_model",
    "fill_sql_defaults",
]


@dataclass(frozen=True)
class BulkModel:
    """What a bulk load of ``owner`` writes: its table, the names rows may use, the columns
    vecorm keeps and the defaults Python (not the server) supplies."""

    mapped_class: type[Any]
    table: Table
    config: SearchConfig
    by_key: Mapping[str, Column[Any]]
    embedding: Column[Any]
    digest: Column[Any]
    model: Column[Any]
    fields: tuple[tuple[str, Column[Any] | None], ...]
    python_defaults: tuple[tuple[Column[Any], ColumnDefault], ...]
    sql_defaults: tuple[tuple[Column[Any], ColumnElement[Any]], ...]
    position: Mapping[Column[Any], int]
    discriminator: tuple[Column[Any], Any] | None = None

    @property
    def owner(self) -> str:
        return self.mapped_class.__name__

    def label(self, index: int) -> str:
        return f"bulk_insert({self.owner}): rows[{index}]"


def bulk_model(model: type[Any]) -> BulkModel:
    """The :class:`BulkModel` of a searchable model mapped to one table."""
    config = search_config(model)
    mapper: Mapper[Any] = sa_inspect(model)
    table = mapper.local_table
    if not isinstance(table, Table) or mapper.persist_selectable is not table:
        raise ConfigurationError(
            f"bulk_insert({model.__name__}) writes one table, and {model.__name__} is mapped "
            "to several (joined inheritance); insert it with session.add_all() instead"
        )
    by_key: dict[str, Column[Any]] = {}
    for prop in mapper.column_attrs:
        columns = [column for column in prop.columns if isinstance(column, Column)]
        if len(columns) == 1 and columns[0].table is table:
            by_key[prop.key] = columns[0]
    for column in table.columns:
        by_key.setdefault(column.key, column)
        by_key.setdefault(column.name, column)

    def own(key: str) -> Column[Any]:
        column = by_key.get(key)
        if column is None:
            raise ConfigurationError(f"{model.__name__}.{key} is not a column of {table.name}")
        return column

    python_defaults: list[tuple[Column[Any], ColumnDefault]] = []
    sql_defaults: list[tuple[Column[Any], ColumnElement[Any]]] = []
    for column in table.columns:
        default = column.default
        if default is None or column.computed is not None:
            continue
        if isinstance(default, SqlSequence):
            sql_defaults.append((column, default.next_value()))
        elif isinstance(default, ColumnDefault) and default.is_clause_element:
            sql_defaults.append((column, default.arg))
        elif isinstance(default, ColumnDefault):
            python_defaults.append((column, default))
    discriminator = None
    on = mapper.polymorphic_on
    if isinstance(on, Column) and on.table is table and mapper.polymorphic_identity is not None:
        discriminator = (on, mapper.polymorphic_identity)
    return BulkModel(
        mapped_class=model,
        table=table,
        config=config,
        by_key=by_key,
        embedding=own("embedding"),
        digest=own("embedding_digest"),
        model=own("embedding_model"),
        fields=tuple((name, by_key.get(name)) for name in config.fields),
        python_defaults=tuple(python_defaults),
        sql_defaults=tuple(sql_defaults),
        position={column: n for n, column in enumerate(table.columns)},
        discriminator=discriminator,
    )


@dataclass
class Embedding:
    """Who embeds the rows that come without a vector (``embedder`` ``None``: nobody, which is
    an error once such a row arrives, unless ``enabled`` is false and they stay NULL)."""

    embedder: Embedder | None
    enabled: bool = True
    calls: int = 0
    embedded: int = 0

    @property
    def model_name(self) -> str | None:
        return self.embedder.model_name if self.embedder is not None else None


@dataclass(eq=False)
class PreparedRow:
    """One row's column values, and where it was in the caller's rows."""

    index: int
    values: dict[Column[Any], Any]


@dataclass
class _Pending:
    """Rows waiting for the vector of ``text``."""

    text: str
    rows: list[PreparedRow] = field(default_factory=list)


class RowPreparer:
    """Prepares the batches of one load (it remembers the columns of each key order seen)."""

    def __init__(self, model: BulkModel, embedding: Embedding) -> None:
        self.model = model
        self.embedding = embedding
        self._shapes: dict[tuple[Any, ...], tuple[Column[Any], ...]] = {}
        self._field_columns = [column for _, column in model.fields if column is not None]

    def prepare(self, batch: Sequence[tuple[int, object]]) -> list[PreparedRow]:
        """Column values of each ``(index, mapping)`` in ``batch``, vectors included."""
        model, embedding = self.model, self.embedding
        vector, digest, model_column = model.embedding, model.digest, model.model
        prepared: list[PreparedRow] = []
        pending: dict[str, _Pending] = {}
        for index, row in batch:
            values = self._mapped(index, row)
            for column, default in model.python_defaults:
                if column not in values:
                    values[column] = _default_value(model, index, column, default, values)
            if model.discriminator is not None and model.discriminator[0] not in values:
                values[model.discriminator[0]] = model.discriminator[1]
            item = PreparedRow(index, values)
            text = join_text([values.get(column) for column in self._field_columns])
            if values.get(vector) is not None:
                values[vector] = _checked_vector(model, index, values[vector])
                # A vector of the row's own: recorded as the flush hook records one.
                if digest not in values:
                    values[digest] = text_digest(text) if text is not None else None
                if model_column not in values:
                    values[model_column] = embedding.model_name
            elif text is None or not embedding.enabled:
                values[vector] = values[digest] = values[model_column] = None
            else:
                values[digest] = text_digest(text)
                pending.setdefault(text, _Pending(text)).rows.append(item)
            prepared.append(item)
        if pending:
            _embed(model, list(pending.values()), embedding)
        return prepared

    def _mapped(self, index: int, row: object) -> dict[Column[Any], Any]:
        if not isinstance(row, Mapping):
            raise BulkInsertError(
                f"{self.model.label(index)} is a {type(row).__name__}; each row must be a "
                "mapping of attribute or column names to values",
                row=index,
            )
        keys = tuple(row)
        columns = self._shapes.get(keys)
        if columns is None:
            columns = self._shapes[keys] = _columns(self.model, index, keys)
        values = row.values() if type(row) is dict else [row[key] for key in keys]
        return dict(zip(columns, values, strict=True))


def _columns(model: BulkModel, index: int, keys: tuple[Any, ...]) -> tuple[Column[Any], ...]:
    """The columns that ``keys`` (a row's, in its order) name; refuses unknown and generated."""
    columns = []
    for key in keys:
        column = model.by_key.get(key) if isinstance(key, str) else None
        if column is None:
            raise BulkInsertError(
                f"{model.label(index)}: {key!r} is not a column of {model.owner} "
                f"(table {model.table.name})",
                row=index,
            )
        if column.computed is not None:
            raise BulkInsertError(
                f"{model.label(index)}: {model.owner}.{key} is generated by the database; "
                "leave it out of the rows",
                row=index,
            )
        columns.append(column)
    if len(set(columns)) < len(columns):
        raise BulkInsertError(
            f"{model.label(index)} names a column twice (an attribute and its column name)",
            row=index,
        )
    return tuple(columns)


def _checked_vector(model: BulkModel, index: int, value: Any) -> FloatArray:
    """``value`` as a finite float32 vector of the model's width; vecorm's error otherwise."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        array = None
    # The sum is finite exactly when every value is (barring overflow, checked in full below).
    if (
        array is not None
        and array.ndim == 1
        and array.shape[0] == model.config.dimensions
        and np.isfinite(array.sum())
    ):
        return array
    label = f"{model.label(index)}: {model.owner}.embedding"
    return to_float_array(value, model.config.dimensions, label=label)


class _DefaultContext:
    """What a context-sensitive column default (``default=fn(context)``) may ask for."""

    def __init__(self, values: Mapping[Column[Any], Any]) -> None:
        self.current_parameters = {column.key: value for column, value in values.items()}

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        return self.current_parameters


def _default_value(
    model: BulkModel,
    index: int,
    column: Column[Any],
    default: ColumnDefault,
    values: Mapping[Column[Any], Any],
) -> Any:
    if not default.is_callable:
        return default.arg
    try:
        return default.arg(_DefaultContext(values))
    except Exception as exc:
        raise BulkInsertError(
            f"{model.label(index)}: the default of {model.owner}.{column.key} failed: "
            f"{type(exc).__name__}: {exc}; give the column a value in the rows",
            row=index,
        ) from exc


def _embed(model: BulkModel, pending: list[_Pending], embedding: Embedding) -> None:
    """Embed the distinct texts of ``pending`` in provider-sized batches and assign them."""
    embedder = embedding.embedder
    if embedder is None:
        first = pending[0].rows[0].index
        raise ConfigurationError(
            f"{model.label(first)} has text to embed but {model.owner} has no embedder: pass "
            "bulk_insert(..., embedder=...), set SearchConfig(embedder=...), "
            "vecorm.install(session, embedder=...), or embed=False to leave them to backfill"
        )
    width = getattr(embedder, "dimensions", None)
    if width is not None and width != model.config.dimensions:
        raise DimensionMismatch(
            f"{model.owner}.embedding expects {model.config.dimensions} values but embedder "
            f"{embedder.model_name!r} returns {width}"
        )
    step = max(1, int(getattr(embedder, "max_batch_size", 0) or len(pending)))
    for start in range(0, len(pending), step):
        chunk = pending[start : start + step]
        texts = [item.text for item in chunk]
        embedding.calls += 1
        try:
            matrix = check_embeddings(
                embedder, texts, call_embedder(embedder, texts), model.config.dimensions
            )
        except Exception as exc:
            raise _embedding_error(model, embedder, chunk, exc) from exc
        model_name = embedder.model_name
        for item, vector in zip(chunk, np.asarray(matrix, dtype=np.float32), strict=True):
            for row in item.rows:
                row.values[model.embedding] = vector
                row.values[model.model] = model_name
                embedding.embedded += 1


def _embedding_error(
    model: BulkModel, embedder: Embedder, chunk: list[_Pending], exc: Exception
) -> VecormError:
    indexes = sorted(row.index for item in chunk for row in item.rows)
    where = f"rows[{indexes[0]}]" + (f" to rows[{indexes[-1]}]" if len(indexes) > 1 else "")
    detail = str(exc) if isinstance(exc, VecormError) else f"{type(exc).__name__}: {exc}"
    message = (
        f"bulk_insert({model.owner}): embedder {embedder.model_name!r} failed on {where} "
        f"({len(chunk)} texts): {detail}; nothing was written"
    )
    if isinstance(exc, DimensionMismatch):
        return DimensionMismatch(message)
    return EmbeddingError(message)


def fill_sql_defaults(connection: Connection, model: BulkModel, rows: list[PreparedRow]) -> None:
    """Evaluate the SQL-expression and sequence defaults of the rows that leave them out: one
    ``SELECT expression FROM generate_series(1, n)`` per column, so each row gets its own
    value (``nextval``, ``gen_random_uuid()``) as an INSERT would give it."""
    for column, expression in model.sql_defaults:
        missing = [row for row in rows if column not in row.values]
        if not missing:
            continue
        produced = connection.execute(
            select(expression).select_from(func.generate_series(1, len(missing)))
        ).scalars()
        for row, value in zip(missing, produced, strict=True):
            row.values[column] = value
