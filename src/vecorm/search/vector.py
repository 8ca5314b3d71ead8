"""Nearest-neighbour statements and distance expressions.

Everything here *builds* SQLAlchemy statements; nothing executes on its own. A nearest-neighbour
search is an ordinary :class:`~sqlalchemy.sql.Select` of ``(Model, distance)`` that composes
like any other::

    stmt = (
        Document.nearest("how do I tune autovacuum?", k=10)   # or a list / numpy vector
        .where(Document.category == "postgres")
        .options(selectinload(Document.author))
    )
    for document, distance in session.execute(stmt):
        ...

The ``ORDER BY`` uses the operator of the index's operator class (``<=>`` for cosine ...), so
PostgreSQL walks the HNSW / IVFFlat index, and a primary-key tie-break makes the order total.

Query-time settings (``ef_search``, iterative scan, probes) travel with the statement as
execution options; :mod:`vecorm.search.settings` applies them.

**Which embedder embeds a text query.** ``embedder=`` given to the call, else the model's
``SearchConfig(embedder=...)``: the text is embedded while the statement is built (cached), as
before. With neither, the statement carries a :class:`PendingQuery`: a bound parameter whose
value is computed when the statement *executes*, with the embedder that
``vecorm.install(factory, embedder=...)`` gave the session running it::

    vecorm.install(SessionLocal, embedder=HashingEmbedder(384))
    with SessionLocal() as session:
        session.execute(Ticket.hybrid_search("printer on fire", k=5)).all()

Why at execution: a query helper builds a statement and never executes it, and the same
statement may run in any session; only the session knows which installation serves it. The
installation's ``do_orm_execute`` hook runs that one execution with its embedder current
(:func:`vecorm.embedding.embedders.query.executing_with`, a context variable reset right
after), and the bind's ``callable_`` reads it. The vector is an ordinary bind value, so the
compiled statement stays cached across query texts, a ``PendingQuery`` nested in your own
subquery or CTE resolves too, an ``AsyncSession`` awaits the provider's ``aembed`` on its
event loop, and the same text costs one provider call (the query cache), however many times
the statement uses its vector. Executed where no installation knows an embedder (a session
without ``install``, Core's ``connection.execute``), it raises
:class:`~vecorm.ConfigurationError` saying so before any SQL is sent (SQLAlchemy's
``StatementError`` wraps it, as it wraps vecorm's other bind-time errors; ``exc.orig``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    Select,
    and_,
    bindparam,
    cast,
    func,
    inspect,
    literal,
    literal_column,
    not_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.schema import Column
from sqlalchemy.sql.visitors import InternalTraversal

from vecorm.embedding.embedders.base import Embedder
from vecorm.embedding.embedders.query import embed_query, embed_query_now, executing_embedder
from vecorm.errors import ConfigurationError, EmbeddingError
from vecorm.schema.config import Distance, SearchConfig
from vecorm.schema.embeddings import EmbeddingRef, embedding_slot
from vecorm.schema.indexes import indexed_expression
from vecorm.schema.pgcatalog import pg
from vecorm.schema.types import Bit, CheckedVector, FloatArray, HalfVec, Vector, to_float_array
from vecorm.search.exact_fallback import FALLBACK_OPTION
from vecorm.search.settings import index_search_options, own_condition

if TYPE_CHECKING:
    pass


QueryInput = str | Sequence[float] | npt.NDArray[Any]
"""What a search accepts: text (embedded with the model's embedder) or a vector."""


# --------------------------------------------------------------------------- expressions


def _config(model: Any, embedding: EmbeddingRef = None) -> SearchConfig:
    """The settings of ``model``'s ``embedding`` (default: the model's own)."""
    return embedding_slot(model, embedding).config


def _column(model: Any, embedding: EmbeddingRef = None) -> Any:
    """The mapped attribute of ``model``'s ``embedding`` (default: ``model.embedding``)."""
    return getattr(model, embedding_slot(model, embedding).attribute)


def _name(model: Any) -> str:
    return getattr(model, "__name__", type(model).__name__)


class PendingQuery:
    """A text query whose vector is computed when the statement executes (see the module
    docstring): the ``callable_`` of the statement's vector binds.

    ``Ticket.nearest("printer", k=5)`` on a model without ``SearchConfig(embedder=...)`` holds
    one; calling it embeds the text with the executing session's installed embedder.
    """

    __slots__ = ("dimensions", "owner", "text")

    def __init__(self, model: Any, text: str, embedding: EmbeddingRef = None) -> None:
        self.owner = _name(model)
        self.dimensions = _config(model, embedding).dimensions
        self.text = text

    def __call__(self) -> FloatArray:
        embedder = executing_embedder()
        if embedder is None:
            raise ConfigurationError(
                f"{self.owner}: the text query {self.text!r} has no embedder. It is embedded "
                "when the statement runs, by the embedder vecorm.install(..., embedder=...) "
                "gave the session running it, and this execution has none (a session without "
                "vecorm.install, or Core's connection.execute). Run it in an installed session, "
                f"pass embedder=..., set SearchConfig(embedder=...) on {self.owner}.__vecorm__, "
                "or pass a vector"
            )
        return to_float_array(
            embed_query_now(embedder, self.text),
            self.dimensions,
            label=f"{self.owner} query vector",
        )

    def __repr__(self) -> str:
        return f"PendingQuery({self.owner}, {self.text!r})"


QueryValue = FloatArray | PendingQuery
"""A query vector, or the text query a session's embedder turns into one at execution."""


def query_vector(
    model: Any,
    query: QueryInput,
    *,
    embedder: Embedder | None = None,
    embedding: EmbeddingRef = None,
) -> FloatArray:
    """``query`` as a validated float32 vector for ``model``'s ``embedding``; text is
    embedded (LRU cached).

    Raises :class:`~vecorm.ConfigurationError` for text when no embedder is given or configured
    (statements defer that case instead, see :func:`query_value`).
    """
    value = query_value(model, query, embedder=embedder, embedding=embedding)
    if isinstance(value, PendingQuery):
        raise ConfigurationError(
            f"{_name(model)}: a text query needs an embedder here; pass embedder=... or set "
            f"SearchConfig(embedder=...) on {_name(model)}.__vecorm__, or pass a vector"
        )
    return value


def query_value(
    model: Any,
    query: QueryInput | PendingQuery,
    *,
    embedder: Embedder | None = None,
    embedding: EmbeddingRef = None,
) -> QueryValue:
    """``query`` as a vector for a statement on ``model``'s ``embedding``: text is embedded
    now with ``embedder`` or the embedding's own, else left to the executing session (a
    :class:`PendingQuery`)."""
    if isinstance(query, PendingQuery):
        return query
    config = _config(model, embedding)
    if isinstance(query, str):
        provider = embedder if embedder is not None else config.embedder
        if provider is None:
            if not query.strip():
                raise EmbeddingError("cannot embed an empty search text")
            return PendingQuery(model, query, embedding)
        vector: object = embed_query(provider, query)
    else:
        vector = query
    checked = to_float_array(vector, config.dimensions, label=f"{_name(model)} query vector")
    # Marked as checked: the statement's other uses of it (nearest's distance, hybrid
    # search's arms) and its binding do not scan it again.
    return checked.view(CheckedVector)


def _vector_bind(value: QueryValue, type_: Any) -> BindParameter[Any]:
    """An anonymous bind of the query vector (a pending one computes its value at execution,
    so the compiled statement is the same whatever the text)."""
    if isinstance(value, PendingQuery):
        return bindparam(None, type_=type_, callable_=value)
    return bindparam(None, value, type_=type_)


def metric_of(
    model: Any, distance: Distance | str | None = None, embedding: EmbeddingRef = None
) -> Distance:
    """``distance`` parsed, or the configured metric of ``model``'s ``embedding``."""
    return Distance.parse(distance) if distance is not None else _config(model, embedding).metric


def distance_expression(
    model: Any,
    query: QueryInput | PendingQuery,
    *,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
    embedding: EmbeddingRef = None,
) -> ColumnElement[float | None]:
    """``embedding <=> :query`` (the operator of ``distance``, default the model's metric).

    Inner product is pgvector's ``<#>``: the *negative* inner product, so smaller is nearer.
    Only the configured metric can use the model's index. ``embedding`` names another of
    the model's embeddings (``"title_embedding"``).
    """
    config = _config(model, embedding)
    metric = metric_of(model, distance, embedding)
    value = query_value(model, query, embedder=embedder, embedding=embedding)
    column = _column(model, embedding)
    if (
        config.index_precision == "halfvec"
        and config.storage == "vector"
        and metric is config.metric
    ):
        # The expression index's own expression, or the planner cannot use it.
        target: ColumnElement[Any] = indexed_expression(column, config)
        vector = _vector_bind(value, HalfVec(config.dimensions))
    else:
        target = column
        vector = _vector_bind(value, column.type)
    expression: ColumnElement[float | None] = target.op(metric.operator, return_type=Float)(vector)
    return expression


def exact_distance_expression(
    model: Any,
    query: QueryInput | PendingQuery,
    *,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
    embedding: EmbeddingRef = None,
) -> ColumnElement[float | None]:
    """``embedding <=> :query`` on the stored column, whatever the index's precision."""
    metric = metric_of(model, distance, embedding)
    value = query_value(model, query, embedder=embedder, embedding=embedding)
    column = _column(model, embedding)
    vector = _vector_bind(value, column.type)
    expression: ColumnElement[float | None] = column.op(metric.operator, return_type=Float)(vector)
    return expression


def hamming_expression(
    model: Any,
    query: QueryInput | PendingQuery,
    *,
    embedder: Embedder | None = None,
    embedding: EmbeddingRef = None,
) -> ColumnElement[float | None]:
    """``binary_quantize(embedding)::bit(N) <~> binary_quantize(:query)::bit(N)``: the
    ordering a ``precision="bit"`` index serves."""
    config = _config(model, embedding)
    value = query_value(model, query, embedder=embedder, embedding=embedding)
    vector_type = (
        Vector(config.dimensions) if config.storage == "vector" else HalfVec(config.dimensions)
    )
    quantized = cast(func.binary_quantize(_vector_bind(value, vector_type)), Bit(config.dimensions))
    indexed = cast(func.binary_quantize(_column(model, embedding)), Bit(config.dimensions))
    expression: ColumnElement[float | None] = indexed.op("<~>", return_type=Float)(quantized)
    return expression


class BinaryCandidates(ColumnElement[bool]):
    """``pk = ANY(ARRAY(SELECT pk FROM t WHERE <filters> ORDER BY <hamming> LIMIT n))``
    (``(pk1, pk2) IN (...)`` for a composite key).

    The first stage of a search on a binary-quantized index. The filters are the enclosing
    statement's own ``WHERE`` criteria on the model's table, read when the statement is
    compiled, so ``nearest(...).where(Document.tenant_id == 7)`` filters (and prunes
    partitions) inside the candidate scan too, not only after it.
    """

    __visit_name__ = "vecorm_binary_candidates"
    inherit_cache = True
    type = Boolean()
    _traverse_internals = [
        ("keys", InternalTraversal.dp_clauseelement_tuple),
        ("order", InternalTraversal.dp_clauseelement),
        ("count", InternalTraversal.dp_clauseelement),
    ]

    def __init__(
        self,
        keys: Sequence[ColumnElement[Any]],
        order: ColumnElement[Any],
        count: int,
    ) -> None:
        self.keys = tuple(keys)
        self.order = order
        self.count = literal(count, Integer)


def _own_table_criteria(
    criteria: Sequence[ColumnElement[Any]], own_tables: set[Any]
) -> list[ColumnElement[Any]]:
    """The criteria that reference only ``own_tables`` (a filter on a joined table would turn
    the candidate subquery into a correlated one)."""
    kept = []
    for criterion in criteria:
        if isinstance(criterion, BinaryCandidates):
            continue
        columns = [
            element for element in visitors.iterate(criterion) if isinstance(element, Column)
        ]
        if all(element.table in own_tables for element in columns):
            kept.append(criterion)
    return kept


@compiles(BinaryCandidates)
def _compile_binary_candidates(element: BinaryCandidates, compiler: SQLCompiler, **kw: Any) -> str:
    own_tables = {key.table for key in element.keys if isinstance(key, Column)}
    enclosing = compiler.stack[-1]["selectable"] if compiler.stack else None
    criteria = list(getattr(enclosing, "_where_criteria", ()))
    inner = (
        select(*element.keys)
        .where(*_own_table_criteria(criteria, own_tables))
        .order_by(element.order)
        .limit(element.count)
        .correlate(None)  # its own scan of the table, which shadows the outer one inside
    )
    if len(element.keys) == 1:
        # "= ANY(ARRAY(...))": the candidates are computed once (an InitPlan), then fetched by
        # primary key, whatever the planner guesses about the table's size.
        key = compiler.process(element.keys[0], **kw)
        return f"{key} = ANY(ARRAY({compiler.process(inner.scalar_subquery(), **kw)}))"
    return compiler.process(tuple_(*element.keys).in_(inner), **kw)


def similarity_expression(
    distance: ColumnElement[float | None], metric: Distance
) -> ColumnElement[Any]:
    """A higher-is-better score: ``1 - d`` for cosine, the inner product for ``<#>``,
    ``1 / (1 + d)`` for L2 and L1."""
    if metric is Distance.COSINE:
        return literal(1.0) - distance
    if metric is Distance.INNER_PRODUCT:
        return -distance
    return literal(1.0) / (literal(1.0) + distance)


def python_distance(metric: Distance, left: object, right: object) -> float:
    """The distance pgvector computes, in Python (float64): same sign conventions."""
    a = np.asarray(left, dtype=np.float64)
    b = np.asarray(right, dtype=np.float64)
    if metric is Distance.COSINE:
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        return float("nan") if norms == 0.0 else 1.0 - float(a @ b) / norms
    if metric is Distance.L2:
        return float(np.linalg.norm(a - b))
    if metric is Distance.INNER_PRODUCT:
        return -float(a @ b)
    return float(np.abs(a - b).sum())


def instance_distance(
    instance: Any,
    query: QueryInput,
    *,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
    embedding: EmbeddingRef = None,
) -> float | None:
    """Distance from ``instance.embedding`` (or its ``embedding`` of that name) to ``query``
    in Python; ``None`` without one."""
    model = type(instance)
    stored = getattr(instance, embedding_slot(model, embedding).attribute)
    if stored is None:
        return None
    vector = query_vector(model, query, embedder=embedder, embedding=embedding)
    config = _config(model, embedding)
    metric = metric_of(model, distance, embedding)
    if config.storage == "halfvec" or (
        config.index_precision == "halfvec" and metric is config.metric
    ):
        # As the SQL casts round them (distance_expression compares halfvec to halfvec).
        vector = vector.astype(np.float16).astype(np.float32)
        stored = np.asarray(stored, dtype=np.float32).astype(np.float16)
    return python_distance(metric, stored, vector)


def row_limit(count: int) -> ColumnElement[int]:
    """A ``LIMIT`` rendered into the SQL as a number when the statement runs.

    psycopg prepares a statement after its fifth run, and PostgreSQL may then use a generic
    plan; with ``LIMIT $1`` that plan guesses a tenth of the table and can prefer a sequential
    scan and sort to the vector index (measured: 2x slower hybrid searches). A literal keeps
    the estimate right; the compiled form is still cached once::

        select(Document).order_by(distance).limit(row_limit(10))
    """
    return literal(int(count), Integer, literal_execute=True)


def primary_key_columns(model: Any) -> tuple[ColumnElement[Any], ...]:
    """The mapped primary-key columns of ``model``, in order."""
    mapper = inspect(model)
    return tuple(mapper.primary_key)


def keys_equal(left: Sequence[Any], right: Sequence[Any]) -> ColumnElement[bool]:
    """``left_0 = right_0 AND ...``: the join condition of two (composite) keys."""
    return and_(*(a == b for a, b in zip(left, right, strict=True)))


def keys_in(keys: Sequence[Any], rows: Select[Any]) -> ColumnElement[bool]:
    """``key IN (rows)``, or ``(key_0, key_1) IN (rows)`` for a composite key."""
    chosen = keys[0] if len(keys) == 1 else tuple_(*keys)
    condition: ColumnElement[bool] = chosen.in_(rows)
    return condition


def nearest(
    model: Any,
    query: QueryInput | PendingQuery,
    k: int = 10,
    *,
    distance: Distance | str | None = None,
    max_distance: float | None = None,
    embedder: Embedder | None = None,
    with_score: bool = False,
    exact: bool = False,
    candidates: int | None = None,
    embedding: EmbeddingRef = None,
) -> Select[Any]:
    """``SELECT model, distance ... ORDER BY distance, pk LIMIT k`` as a composable ``Select``.

    ``max_distance`` keeps rows with ``distance <= max_distance``; ``with_score`` adds a
    ``score`` column (see :func:`similarity_expression`); ``exact=True`` orders by an
    expression the index cannot serve, forcing an exact scan (use it when a ``where`` keeps
    only a few rows and no index on the filter column lets PostgreSQL see that)::

        stmt = nearest(Document, [0.1, 0.2, 0.3], k=5).where(Document.category == "ml")

    Run in a session, a statement with conditions of yours that comes back with fewer than
    ``k`` rows is run again exactly (:mod:`vecorm.search.exact_fallback`).

    On a ``precision="halfvec"`` index the distance is computed in half precision (the
    index's own expression); on a ``precision="bit"`` index the statement takes
    ``candidates`` rows (default ``k * rerank``) by Hamming distance through the index, with
    ``hnsw.ef_search`` raised to match, and orders them by the exact distance.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigurationError(f"k must be a positive integer, not {k!r}")
    if candidates is not None and (
        isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < k
    ):
        raise ConfigurationError(f"candidates must be an integer >= k ({k}), not {candidates!r}")
    config = _config(model, embedding)
    metric = metric_of(model, distance, embedding)
    binary = config.index_precision == "bit" and metric is config.metric and not exact
    # embedded once, used twice
    query = query_value(model, query, embedder=embedder, embedding=embedding)
    expression = distance_expression(model, query, distance=metric, embedding=embedding)
    distance_column = expression.label("distance")
    columns: list[Any] = [model, distance_column]
    if with_score:
        columns.append(similarity_expression(expression, metric).label("score"))
    stmt = select(*columns).where(own_condition(_column(model, embedding).is_not(None)))
    depth = k
    if binary:
        depth = candidates if candidates is not None else k * config.rerank
        keys = primary_key_columns(model)
        order = hamming_expression(model, query, embedding=embedding)
        stmt = stmt.where(own_condition(BinaryCandidates(keys, order, depth)))
    if max_distance is not None:
        stmt = stmt.where(own_condition(expression <= max_distance))
    # "+ 0" is the same order, but not the index's expression: the planner must scan exactly.
    ordering: ColumnElement[Any] = expression + 0.0 if exact else distance_column
    stmt = stmt.order_by(ordering, *primary_key_columns(model)).limit(row_limit(k))
    options = index_search_options(config, depth=depth)
    if options and not exact:
        options[FALLBACK_OPTION] = True  # short under a filter of yours: run exactly
    return stmt.execution_options(**options) if options else stmt


def similar_to(
    model: Any,
    row: Any,
    k: int = 10,
    *,
    distance: Distance | str | None = None,
    max_distance: float | None = None,
    with_score: bool = False,
    exact: bool = False,
    candidates: int | None = None,
    embedding: EmbeddingRef = None,
) -> Select[Any]:
    """More like this: :func:`nearest` to ``row``'s embedding (or its ``embedding`` of that
    name), ``row`` itself left out.

    ``row`` is an instance of ``model`` with its embedding (the value the instance holds,
    loaded or just computed); the statement composes like ``nearest``'s::

        stmt = similar_to(Document, doc, k=5).where(Document.category == doc.category)

    A row without an embedding yet raises :class:`~vecorm.errors.ConfigurationError` (it has
    no neighbours until it is embedded); a pending row (not flushed) excludes nothing.
    """
    if not isinstance(row, model):
        raise ConfigurationError(
            f"similar_to takes a {_name(model)} instance, not {type(row).__name__}"
        )
    attribute = embedding_slot(model, embedding).attribute
    vector = getattr(row, attribute)
    key = inspect(row).identity
    if vector is None:
        shown = "a new row" if key is None else f"row {key if len(key) > 1 else key[0]!r}"
        raise ConfigurationError(
            f"{_name(model)} {shown} has no {attribute} yet, so no neighbours: flush it with "
            "vecorm.install's hook, or run the backfill, first"
        )
    stmt = nearest(
        model,
        vector,
        k,
        distance=distance,
        max_distance=max_distance,
        with_score=with_score,
        exact=exact,
        candidates=candidates,
        embedding=embedding,
    )
    if key is None:
        return stmt
    keys = primary_key_columns(model)
    itself = keys[0] == key[0] if len(keys) == 1 else tuple_(*keys) == tuple_(*key)
    return stmt.where(own_condition(not_(itself)))


def nearest_candidates(
    model: Any,
    query: QueryInput | PendingQuery,
    *,
    where: Sequence[ColumnElement[bool]] = (),
    depth: int,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
    candidates: int | None = None,
    embedding: EmbeddingRef = None,
) -> Select[Any]:
    """``pk_0 .. pk_n, distance`` of the ``depth`` nearest rows under ``where``, nearest first,
    through the model's index whatever its precision (a hybrid search's semantic arm).

    Under a ``where``, the index's walk can run out before ``depth`` rows pass it (rows that
    sit together away from the query); the statement then answers exactly, by itself: the
    walk is a CTE, and a second branch ordered by ``distance + 0`` (no index serves it) runs
    only when the walk returned fewer than ``depth`` rows (a one-time filter PostgreSQL
    evaluates before the branch, which otherwise never executes; see
    :mod:`vecorm.search.exact_fallback` for the same rule as two statements).

    Run it with :func:`index_search_options` ``(config, depth=candidates)``.
    """
    config = _config(model, embedding)
    metric = metric_of(model, distance, embedding)
    query = query_value(model, query, embedder=embedder, embedding=embedding)
    expression = distance_expression(model, query, distance=metric, embedding=embedding)
    distance_column = expression.label("distance")
    keys = primary_key_columns(model)
    stmt = select(*(key.label(f"pk_{i}") for i, key in enumerate(keys)), distance_column).where(
        _column(model, embedding).is_not(None), *where
    )
    if config.index_precision == "bit" and metric is config.metric:
        count = candidates if candidates is not None else depth * config.rerank
        order = hamming_expression(model, query, embedding=embedding)
        stmt = stmt.where(BinaryCandidates(keys, order, count))
    stmt = stmt.order_by(distance_column, *keys).limit(row_limit(depth))
    if not where or config.index is None:
        return stmt
    walk = stmt.cte("semantic_walk")
    found = select(pg.count(literal_column("*"))).select_from(walk).scalar_subquery()
    complete = select(*walk.c).where(found >= depth)
    exact = (
        select(*(key.label(f"pk_{i}") for i, key in enumerate(keys)), distance_column)
        .where(_column(model, embedding).is_not(None), *where, found < depth)
        .order_by(expression + 0.0, *keys)
        .limit(row_limit(depth))
    )
    either = union_all(complete, exact).subquery("semantic_either")
    return select(*either.c)
