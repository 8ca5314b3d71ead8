"""Searches over passages that return their parents: one row per parent, with its best
passage(s).

A long document is searched through its passages (:class:`vecorm.Passage`), but a user wants
documents back, each once, with the passage that matched::

    stmt = passage_search(DocPassage, "how do I tune autovacuum?", k=10)
    for doc, passage, distance in session.execute(stmt.where(Doc.category == "postgres")):
        print(doc.title, passage.text[:80], passage.char_start)

The statement is an ordinary ``Select`` of ``(Parent, Passage, distance)`` (``score`` for
:func:`passage_text_search`), the parents ordered by their best passage, ties by the parent's
key, and a parent's ``passages_per_parent`` best passages in a row, best first. It composes:
a ``.where()`` on the parent's or the passage's columns is applied *inside* the search (read
from the statement when it compiles, as :class:`~vecorm.search.vector.BinaryCandidates` reads
its filters), so ``k`` parents that pass it come back whenever ``k`` exist. A filter on
another table (a joined author) only thins the rows found.

How the ``k`` parents are found: the ``depth`` nearest passages through the vector index
(with iterative scan, so ``depth`` passages that pass the filters), grouped by parent. When
they hold fewer than ``k`` parents (the nearest passages crowd into a few long documents),
the same statement ranks the parents exactly instead, by the nearest of all their passages
(a scan of the filtered passages: slower, never short). A parent's best passages are then
ranked exactly, among its own. Full-text search scores every matching passage (BM25 is
exhaustive anyway) and keeps each parent's best.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Boolean, Float, Select, literal, select, true, tuple_, union_all
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.schema import Column
from sqlalchemy.sql.visitors import InternalTraversal

from vecorm.embedding.embedders.base import Embedder
from vecorm.errors import ConfigurationError
from vecorm.schema.config import Distance
from vecorm.schema.passages import passage_config
from vecorm.schema.pgcatalog import pg
from vecorm.search.settings import index_search_options, own_condition
from vecorm.search.text import Ranking, lexical_arm
from vecorm.search.tsquery import Mode
from vecorm.search.vector import (
    BinaryCandidates,
    PendingQuery,
    QueryInput,
    distance_expression,
    metric_of,
    query_value,
    row_limit,
)

__all__ = ["passage_search", "passage_text_search"]

#: Passages taken from the vector index per parent wanted, before grouping (at least 100).
DEPTH_PER_PARENT = 5
MIN_DEPTH = 100
#: "Every matching passage" as a LIMIT.
_ALL_ROWS = 2_147_483_647


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, not {value!r}")
    return value


class _Hits(ColumnElement[bool]):
    """``(passage.parent_id, passage.ordinal) IN (<the chosen passages>)``, the enclosing
    statement's filters on the passage and parent tables copied into the search."""

    inherit_cache = True
    type = Boolean()
    _traverse_internals = [
        ("keys", InternalTraversal.dp_clauseelement_tuple),
        ("parent_join", InternalTraversal.dp_clauseelement),
        ("score", InternalTraversal.dp_clauseelement),
        ("k", InternalTraversal.dp_clauseelement),
        ("per_parent", InternalTraversal.dp_clauseelement),
        ("depth", InternalTraversal.dp_clauseelement),
    ]

    def __init__(
        self,
        keys: Sequence[ColumnElement[Any]],
        parent_join: ColumnElement[bool],
        score: ColumnElement[Any],
        k: int,
        per_parent: int,
        depth: int,
    ) -> None:
        self.keys = tuple(keys)
        self.parent_join = parent_join
        self.score = score
        self.k = row_limit(k)
        self.per_parent = row_limit(per_parent)
        self.depth = row_limit(depth)


class _NearestHits(_Hits):
    """The vector search's: ``score`` is the passage's distance (lower is better)."""

    __visit_name__ = "vecorm_passage_nearest_hits"
    inherit_cache = True


class _TextHits(_Hits):
    """The full-text search's: ``score`` is a column of the scored passages' CTE (higher is
    better), joined to the passages by key."""

    __visit_name__ = "vecorm_passage_text_hits"
    inherit_cache = True


def _criteria(element: _Hits, compiler: SQLCompiler) -> tuple[list[ColumnElement[Any]], bool]:
    """The enclosing statement's ``WHERE`` criteria on the passage and parent tables only, and
    whether any of them names the parent's table."""
    passage_table = element.keys[0].table
    parent_tables = {
        column.table
        for column in visitors.iterate(element.parent_join)
        if isinstance(column, Column) and column.table is not passage_table
    }
    own = {passage_table, *parent_tables}
    enclosing = compiler.stack[-1]["selectable"] if compiler.stack else None
    kept: list[ColumnElement[Any]] = []
    needs_parent = False
    for criterion in getattr(enclosing, "_where_criteria", ()):
        if isinstance(criterion, _Hits | BinaryCandidates):
            continue
        tables = {
            column.table for column in visitors.iterate(criterion) if isinstance(column, Column)
        }
        if tables <= own:
            kept.append(criterion)
            needs_parent = needs_parent or bool(tables & parent_tables)
    return kept, needs_parent


def _scan(element: _Hits, needs_parent: bool, *columns: Any) -> Select[Any]:
    """``SELECT columns FROM passages [JOIN parents]``, an own scan (never correlated)."""
    passage_table = element.keys[0].table
    source: Any = passage_table
    if needs_parent:
        parent_table = next(
            column.table
            for column in visitors.iterate(element.parent_join)
            if isinstance(column, Column) and column.table is not passage_table
        )
        source = passage_table.join(parent_table, element.parent_join)
    return select(*columns).select_from(source)


@compiles(_NearestHits)
def _compile_nearest(element: _NearestHits, compiler: SQLCompiler, **kw: Any) -> str:
    criteria, needs_parent = _criteria(element, compiler)
    parent_key, ordinal = element.keys
    distance = element.score
    nearest = (
        _scan(element, needs_parent, parent_key.label("parent_id"), distance.label("distance"))
        .where(*criteria)
        .order_by(distance, parent_key, ordinal)
        .limit(element.depth)
        .correlate(None)
        .cte("passage_nearest")
    )
    found = (
        select(nearest.c.parent_id, pg.min(nearest.c.distance).label("best"))
        .group_by(nearest.c.parent_id)
        .cte("passage_parents")
    )
    found_count = select(pg.count(found.c.parent_id)).scalar_subquery()
    exact_best = pg.min(distance)
    chosen = union_all(
        select(found.c.parent_id, found.c.best)
        .where(found_count >= element.k)
        .order_by(found.c.best, found.c.parent_id)
        .limit(element.k),
        _scan(element, needs_parent, parent_key.label("parent_id"), exact_best.label("best"))
        .where(*criteria, found_count < element.k)
        .group_by(parent_key)
        .order_by(exact_best, parent_key)
        .limit(element.k)
        .correlate(None),
    ).cte("passage_chosen")
    best_passages = (
        _scan(element, needs_parent, parent_key.label("parent_id"), ordinal.label("ordinal"))
        .where(*criteria, parent_key == chosen.c.parent_id)
        # "+ 0": not the index's expression, so a parent's few passages are fetched by its
        # key and sorted, never searched for in the whole graph
        .order_by(distance + 0.0, ordinal)
        .limit(element.per_parent)
        .correlate_except(parent_key.table, *_parent_tables(element))
        .lateral("passage_best")
    )
    rows = select(best_passages.c.parent_id, best_passages.c.ordinal).select_from(
        chosen.join(best_passages, true())
    )
    return _in(element, rows, compiler, **kw)


@compiles(_TextHits)
def _compile_text(element: _TextHits, compiler: SQLCompiler, **kw: Any) -> str:
    criteria, needs_parent = _criteria(element, compiler)
    parent_key, ordinal = element.keys
    score = element.score
    ranked = (
        _scan(
            element,
            needs_parent,
            parent_key.label("parent_id"),
            ordinal.label("ordinal"),
            pg.row_number()
            .over(partition_by=parent_key, order_by=(score.desc(), ordinal))
            .label("passage_rank"),
            pg.max(score).over(partition_by=parent_key).label("best"),
        )
        .join(score.table, _text_join(element))
        .where(*criteria)
        .correlate(None)
        .cte("passage_ranked")
    )
    chosen = (
        select(ranked.c.parent_id)
        .where(ranked.c.passage_rank == 1)
        .order_by(ranked.c.best.desc(), ranked.c.parent_id)
        .limit(element.k)
    )
    rows = select(ranked.c.parent_id, ranked.c.ordinal).where(
        ranked.c.passage_rank <= element.per_parent, ranked.c.parent_id.in_(chosen)
    )
    return _in(element, rows, compiler, **kw)


def _parent_tables(element: _Hits) -> list[Any]:
    passage_table = element.keys[0].table
    return [
        column.table
        for column in visitors.iterate(element.parent_join)
        if isinstance(column, Column) and column.table is not passage_table
    ]


def _text_join(element: _Hits) -> ColumnElement[bool]:
    scored = element.score.table
    parent_key, ordinal = element.keys
    condition: ColumnElement[bool] = (scored.c.pk_0 == parent_key) & (scored.c.pk_1 == ordinal)
    return condition


def _in(element: _Hits, rows: Select[Any], compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(tuple_(*element.keys).in_(rows), **kw)


def _keys(model: Any) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """The passage table's ``parent_id`` and ``ordinal`` columns."""
    columns = sa_inspect(model).columns
    return columns["parent_id"], columns["ordinal"]


def _models(model: Any) -> tuple[Any, ColumnElement[Any], ColumnElement[bool]]:
    """The parent class, its key attribute and the join condition of ``model``'s passages."""
    config = passage_config(model)
    parent = config.parent
    mapper = sa_inspect(parent)
    (key_column,) = mapper.primary_key
    key = getattr(parent, mapper.get_property_by_column(key_column).key)
    return parent, key, model.parent_id == key


def passage_search(
    model: Any,
    query: QueryInput | PendingQuery,
    k: int = 10,
    *,
    passages_per_parent: int = 1,
    depth: int | None = None,
    distance: Distance | str | None = None,
    max_distance: float | None = None,
    embedder: Embedder | None = None,
) -> Select[Any]:
    """``select(Parent, model, distance)``: the ``k`` parents with the nearest passages of
    ``model`` to ``query`` (a vector, or text embedded as for
    :func:`~vecorm.search.vector.nearest`), each with its ``passages_per_parent`` nearest
    passages; see the module docstring.

    ``depth`` passages (default ``max(100, 5 * k * passages_per_parent)``, at least
    ``k * passages_per_parent``) are taken from the index before grouping; ``max_distance``
    keeps passages at most that far::

        stmt = passage_search(DocPassage, vector, k=5, passages_per_parent=2)
        session.execute(stmt.where(Doc.category == "postgres")).all()
    """
    k = _count("k", k)
    per_parent = _count("passages_per_parent", passages_per_parent)
    wanted = k * per_parent
    if depth is None:
        depth = max(MIN_DEPTH, DEPTH_PER_PARENT * wanted)
    else:
        depth = max(_count("depth", depth), wanted)
    config = passage_config(model)
    parent, parent_key, parent_join = _models(model)
    metric = metric_of(model, distance)
    value = query_value(model, query, embedder=embedder)
    expression = distance_expression(model, value, distance=metric)
    distance_column = expression.label("distance")
    stmt = (
        select(parent, model, distance_column)
        .select_from(model)
        .join(parent, parent_join)
        .where(own_condition(model.embedding.is_not(None)))
    )
    if max_distance is not None:
        stmt = stmt.where(own_condition(expression <= literal(float(max_distance), Float)))
    hits = _NearestHits(_keys(model), parent_join, expression, k, per_parent, depth)
    stmt = stmt.where(own_condition(hits)).order_by(
        pg.min(expression).over(partition_by=model.parent_id),
        parent_key,
        distance_column,
        model.ordinal,
    )
    options = index_search_options(config, depth=depth, filtered=True)
    return stmt.execution_options(**options) if options else stmt


def passage_text_search(
    model: Any,
    text: str,
    k: int = 10,
    *,
    passages_per_parent: int = 1,
    mode: Mode = "any",
    ranking: Ranking | None = None,
) -> Select[Any]:
    """``select(Parent, model, score)``: the ``k`` parents with the best full-text matching
    passages (BM25 when the passage model keeps its statistics, else ``ts_rank``; ``ranking``
    chooses), each with its ``passages_per_parent`` best; see the module docstring::

        session.execute(passage_text_search(DocPassage, "autovacuum", k=5)).all()
    """
    k = _count("k", k)
    per_parent = _count("passages_per_parent", passages_per_parent)
    parent, parent_key, parent_join = _models(model)
    arm = lexical_arm(model, ranking, mode=mode)
    scored = arm.candidates(model, text, where=(), depth=_ALL_ROWS).cte("passage_scores")
    score = scored.c.score
    stmt = (
        select(parent, model, score.label("score"))
        .select_from(model)
        .join(parent, parent_join)
        .join(scored, (scored.c.pk_0 == model.parent_id) & (scored.c.pk_1 == model.ordinal))
    )
    hits = _TextHits(_keys(model), parent_join, score, k, per_parent, 1)
    return stmt.where(own_condition(hits)).order_by(
        pg.max(score).over(partition_by=model.parent_id).desc(),
        parent_key,
        score.desc(),
        model.ordinal,
    )
