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

:func:`passage_hybrid_search` fuses both per parent, with the fusion of
:mod:`vecorm.search.hybrid`: a parent's ``distance`` is its nearest passage's, its
``text_score`` its best-scoring passage's (0 when none matches). Each arm nominates the
parents of its ``depth`` best passages (a prefix of the parents ranked by that score; at least
``k`` of them, ranked exactly as above when its passages crowd into fewer), both scores are
completed for every nominated parent, and the blend (min-max over these parents) or RRF (their
ranks in each arm) picks the ``k`` best. A parent's passages are ranked by the same fusion of
their own values::

    stmt = passage_hybrid_search(DocPassage, "autovacuum_vacuum_scale_factor", k=10)
    for doc, passage, score, distance, text_score in session.execute(stmt): ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    Select,
    case,
    column,
    func,
    literal,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.schema import Column
from sqlalchemy.sql.visitors import InternalTraversal

from vecorm.embedding.embedders.base import Embedder
from vecorm.errors import ConfigurationError
from vecorm.schema.config import Distance
from vecorm.schema.passages import passage_config
from vecorm.schema.pgcatalog import pg
from vecorm.search.hybrid import (
    DEFAULT_DEPTH,
    DEFAULT_NORMALIZATION,
    DEFAULT_RRF_K,
    DEFAULT_SEMANTIC_WEIGHT,
    Method,
    Normalization,
    blend,
    bounds,
    check_fusion,
    floors,
    fused_score,
    reciprocal_rank,
    scaled,
    threshold,
    where_filters,
)
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

__all__ = ["passage_hybrid_search", "passage_search", "passage_text_search"]

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


def _criteria(
    element: _Hits | _HybridParents, compiler: SQLCompiler
) -> tuple[list[ColumnElement[Any]], bool]:
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


def _scan(element: _Hits | _HybridParents, needs_parent: bool, *columns: Any) -> Select[Any]:
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


def _parent_tables(element: _Hits | _HybridParents) -> list[Any]:
    passage_table = element.keys[0].table
    return [
        column.table
        for column in visitors.iterate(element.parent_join)
        if isinstance(column, Column) and column.table is not passage_table
    ]


def _text_join(element: _Hits | _HybridParents) -> ColumnElement[bool]:
    """The passage's key equal to the scored passages' (the CTE of its score column)."""
    score = element.text_score if isinstance(element, _HybridParents) else element.score
    scored = score.table
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


# --- hybrid: both arms over the passages, fused per parent -------------------------------


@dataclass(frozen=True)
class _Fusion:
    """The settings of one :func:`passage_hybrid_search`, part of its cache key (the SQL they
    shape is built when the statement compiles)."""

    k: int
    per_parent: int
    depth: int
    method: Method
    semantic_weight: float
    rrf_k: int
    semantic_floor: float | None
    lexical_floor: float | None
    max_distance: float | None
    min_text_score: float | None


class _HybridParents(FunctionElement[Any]):
    """The fused parents and their best passages as a ``FROM`` item, ``(parent_id, ordinal,
    score, distance, text_score, passage_rank)``, built when it compiles with the enclosing
    statement's filters on the passage and parent tables (read as :class:`_Hits` reads them)."""

    name = "vecorm_passage_hybrid"
    inherit_cache = True
    _traverse_internals = [
        *FunctionElement._traverse_internals,
        ("keys", InternalTraversal.dp_clauseelement_tuple),
        ("parent_join", InternalTraversal.dp_clauseelement),
        ("distance", InternalTraversal.dp_clauseelement),
        ("embedded", InternalTraversal.dp_clauseelement),
        ("text_score", InternalTraversal.dp_clauseelement),
        ("fusion", InternalTraversal.dp_plain_obj),
    ]

    def __init__(
        self,
        keys: Sequence[ColumnElement[Any]],
        parent_join: ColumnElement[bool],
        distance: ColumnElement[Any],
        embedded: ColumnElement[bool],
        text_score: ColumnElement[Any],
        fusion: _Fusion,
    ) -> None:
        super().__init__()
        self.keys = tuple(keys)
        self.parent_join = parent_join
        self.distance = distance
        self.embedded = embedded
        self.text_score = text_score
        self.fusion = fusion


@compiles(_HybridParents)
def _compile_hybrid(element: _HybridParents, compiler: SQLCompiler, **kw: Any) -> str:
    criteria, needs_parent = _criteria(element, compiler)
    parent_key, ordinal = element.keys
    distance, fusion = element.distance, element.fusion
    scored = element.text_score.table
    k, depth = row_limit(fusion.k), row_limit(fusion.depth)
    own_tables = (parent_key.table, *_parent_tables(element))

    def scan(*columns: Any) -> Select[Any]:
        return _scan(element, needs_parent, *columns).where(*criteria).correlate(None)

    # The semantic arm: the parents of the `depth` nearest passages (through the index), a
    # prefix of the parents ranked by their nearest passage; when they are fewer than k, the
    # k nearest parents exactly (a scan of the filtered passages).
    semantic_filters = [element.embedded]
    if fusion.max_distance is not None:
        semantic_filters.append(distance <= literal(fusion.max_distance, Float))
    nearest = (
        scan(parent_key.label("parent_id"), distance.label("distance"))
        .where(*semantic_filters)
        .order_by(distance, parent_key, ordinal)
        .limit(depth)
        .cte("hybrid_nearest")
    )
    found = (
        select(nearest.c.parent_id, pg.min(nearest.c.distance).label("best"))
        .group_by(nearest.c.parent_id)
        .cte("hybrid_semantic_found")
    )
    found_count = select(pg.count(found.c.parent_id)).scalar_subquery()
    exact_best = pg.min(distance)
    semantic_parents = union_all(
        select(found.c.parent_id, found.c.best).where(found_count >= k),
        scan(parent_key.label("parent_id"), exact_best.label("best"))
        .where(*semantic_filters, found_count < k)
        .group_by(parent_key)
        .order_by(exact_best, parent_key)
        .limit(k),
    ).subquery("hybrid_semantic_parents")
    semantic = select(
        semantic_parents.c.parent_id,
        semantic_parents.c.best,
        pg.row_number()
        .over(order_by=(semantic_parents.c.best, semantic_parents.c.parent_id))
        .label("rank"),
    ).cte("hybrid_semantic")

    # The lexical arm: every matching passage is scored (BM25 is exhaustive anyway); the
    # parents of the `depth` best, a prefix of the parents ranked by their best passage, at
    # least k of them when k match.
    matched = (
        scan(
            parent_key.label("parent_id"),
            ordinal.label("ordinal"),
            element.text_score.label("score"),
        )
        .join(scored, _text_join(element))
        .cte("hybrid_matched")
    )
    best_text = (
        select(matched.c.parent_id, pg.max(matched.c.score).label("best"))
        .group_by(matched.c.parent_id)
        .cte("hybrid_text_best")
    )
    text_filters: list[ColumnElement[bool]] = []
    best_filters: list[ColumnElement[bool]] = []
    if fusion.min_text_score is not None:
        text_filters.append(matched.c.score >= literal(fusion.min_text_score, Float))
        best_filters.append(best_text.c.best >= literal(fusion.min_text_score, Float))
    top = (
        select(matched.c.parent_id)
        .where(*text_filters)
        .order_by(matched.c.score.desc(), matched.c.parent_id, matched.c.ordinal)
        .limit(depth)
        .subquery("hybrid_text_top")
    )
    top_count = select(pg.count(top.c.parent_id.distinct())).scalar_subquery()
    text_ranked = (
        select(
            best_text.c.parent_id,
            best_text.c.best,
            pg.row_number()
            .over(order_by=(best_text.c.best.desc(), best_text.c.parent_id))
            .label("rank"),
        )
        .where(*best_filters)
        .subquery("hybrid_text_ranked")
    )
    lexical = (
        select(text_ranked.c.parent_id, text_ranked.c.best, text_ranked.c.rank)
        .where(text_ranked.c.rank <= func.greatest(top_count, k))
        .cte("hybrid_lexical")
    )

    # Both arms' parents, each with both scores: the distance of a parent only the lexical
    # arm found from all its passages, the text score from its matching passages (else 0).
    joined = (
        select(
            func.coalesce(semantic.c.parent_id, lexical.c.parent_id).label("parent_id"),
            semantic.c.best.label("distance"),
            semantic.c.rank.label("semantic_rank"),
            lexical.c.rank.label("text_rank"),
        )
        .select_from(semantic.join(lexical, semantic.c.parent_id == lexical.c.parent_id, full=True))
        .subquery("hybrid_joined")
    )
    own_distance = (
        _scan(element, needs_parent, exact_best)
        .where(*criteria, element.embedded, parent_key == joined.c.parent_id)
        .correlate_except(*own_tables)
        .scalar_subquery()
    )
    completed = (
        select(
            joined.c.parent_id,
            func.coalesce(joined.c.distance, own_distance).label("distance"),
            func.coalesce(best_text.c.best, literal(0.0, Float)).label("text_score"),
            joined.c.semantic_rank,
            joined.c.text_rank,
        )
        .select_from(joined.outerjoin(best_text, best_text.c.parent_id == joined.c.parent_id))
        .subquery("hybrid_completed")
    )
    semantic_bounds = bounds(
        completed.c.distance, lower_is_better=True, floor=fusion.semantic_floor
    )
    lexical_bounds = bounds(
        completed.c.text_score, lower_is_better=False, floor=fusion.lexical_floor
    )
    fused = select(
        completed.c.parent_id,
        fused_score(
            fusion.method,
            distance=completed.c.distance,
            text_score=completed.c.text_score,
            semantic_rank=completed.c.semantic_rank,
            text_rank=completed.c.text_rank,
            semantic_weight=fusion.semantic_weight,
            rrf_k=fusion.rrf_k,
            semantic_floor=fusion.semantic_floor,
            lexical_floor=fusion.lexical_floor,
        ).label("score"),
        completed.c.distance,
        completed.c.text_score,
        semantic_bounds[0].label("semantic_best"),
        semantic_bounds[1].label("semantic_worst"),
        lexical_bounds[0].label("lexical_best"),
        lexical_bounds[1].label("lexical_worst"),
    ).subquery("hybrid_fused")
    chosen = (
        select(fused)
        .order_by(fused.c.score.desc(), fused.c.parent_id)
        .limit(k)
        .cte("hybrid_chosen")
    )

    # A chosen parent's passages, ranked by the same fusion of their own values: the blend
    # scaled by the candidates' bounds (a passage holding both of its parent's best values
    # scores as its parent), or the reciprocal ranks among the parent's own passages.
    passage_text = scored.c.score
    if fusion.method == "blend":
        passage_score = blend(
            scaled(
                distance,
                chosen.c.semantic_best,
                chosen.c.semantic_worst,
                lower_is_better=True,
            ),
            scaled(
                func.coalesce(passage_text, literal(0.0, Float)),
                chosen.c.lexical_best,
                chosen.c.lexical_worst,
                lower_is_better=False,
            ),
            fusion.semantic_weight,
        )
    else:
        by_parent = chosen.c.parent_id
        distance_rank = case(
            (distance.is_(None), None),
            else_=pg.row_number().over(partition_by=by_parent, order_by=(distance, ordinal)),
        )
        text_rank = case(
            (passage_text.is_(None), None),
            else_=pg.row_number().over(
                partition_by=by_parent, order_by=(passage_text.desc().nulls_last(), ordinal)
            ),
        )
        passage_score = reciprocal_rank(
            distance_rank, text_rank, fusion.semantic_weight, fusion.rrf_k
        )
    own = (
        _scan(
            element,
            needs_parent,
            chosen.c.parent_id,
            ordinal.label("ordinal"),
            chosen.c.score,
            chosen.c.distance,
            chosen.c.text_score,
            passage_score.label("passage_score"),
        )
        .join(chosen, chosen.c.parent_id == parent_key)
        .outerjoin(scored, _text_join(element))
        .where(*criteria)
        .correlate(None)
        .subquery("hybrid_passages")
    )
    rows = select(
        own.c.parent_id,
        own.c.ordinal,
        own.c.score,
        own.c.distance,
        own.c.text_score,
        pg.row_number()
        .over(
            partition_by=own.c.parent_id,
            order_by=(own.c.passage_score.desc(), own.c.ordinal),
        )
        .label("passage_rank"),
    ).subquery("hybrid_ranked")
    result = select(rows).where(rows.c.passage_rank <= row_limit(fusion.per_parent))
    inner = {key: value for key, value in kw.items() if key not in _FROM_ONLY}
    return f"({compiler.process(result, **inner)})"


#: Keywords the compiler passes to an item of a ``FROM`` list, not to a ``SELECT`` in it.
_FROM_ONLY = frozenset(
    {"asfrom", "lateral", "enclosing_alias", "enclosing_lateral", "within_columns_clause"}
)


def passage_hybrid_search(
    model: Any,
    text: str,
    k: int = 10,
    *,
    vector: QueryInput | None = None,
    passages_per_parent: int = 1,
    method: Method = "blend",
    semantic_weight: float = DEFAULT_SEMANTIC_WEIGHT,
    rrf_k: int = DEFAULT_RRF_K,
    depth: int = DEFAULT_DEPTH,
    where: ColumnElement[bool] | Sequence[ColumnElement[bool]] | None = None,
    ranking: Ranking | None = None,
    mode: Mode = "any",
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    max_distance: float | None = None,
    min_text_score: float | None = None,
) -> Select[Any]:
    """``select(Parent, model, score, distance, text_score)``: the ``k`` parents whose
    passages best match ``text`` by meaning (``vector``, default ``text`` embedded) and by
    words (BM25, or ``ranking``), fused per parent as
    :func:`~vecorm.search.hybrid.hybrid_search` fuses rows, each with its
    ``passages_per_parent`` best passages.

    A parent's ``distance`` is its nearest passage's, its ``text_score`` its best passage's
    (0 when none matches), both computed for every candidate parent; the candidates are the
    parents of each arm's ``depth`` best passages (at least ``k`` parents an arm matches).
    ``max_distance`` / ``min_text_score`` keep an arm's parents with a passage that near /
    scoring that much. ``where`` (or ``.where()`` on the result) filters on the parent's and
    the passage's columns apply inside both arms; see docs/passages.md::

        stmt = passage_hybrid_search(DocPassage, "autovacuum tuning", k=5)
        for doc, passage, score, distance, text_score in session.execute(stmt): ...
    """
    k = _count("k", k)
    per_parent = _count("passages_per_parent", passages_per_parent)
    depth = max(_count("depth", depth), k)
    check_fusion(method, semantic_weight, rrf_k, normalization)
    if not isinstance(text, str):
        raise ConfigurationError(f"text must be a string, not {type(text).__name__}")
    distance_limit = threshold("max_distance", max_distance)
    text_limit = threshold("min_text_score", min_text_score)
    config = passage_config(model)
    parent, parent_key, parent_join = _models(model)
    metric = metric_of(model, distance)
    value = query_value(model, text if vector is None else vector, embedder=embedder)
    expression = distance_expression(model, value, distance=metric)
    arm = lexical_arm(model, ranking, mode=mode)
    scored = arm.candidates(model, text, where=(), depth=_ALL_ROWS).cte("passage_scores")
    semantic_floor, lexical_floor = floors(model, metric, normalization)
    fusion = _Fusion(
        k=k,
        per_parent=per_parent,
        depth=depth,
        method=method,
        semantic_weight=float(semantic_weight),
        rrf_k=rrf_k,
        semantic_floor=semantic_floor,
        lexical_floor=lexical_floor,
        max_distance=distance_limit,
        min_text_score=text_limit,
    )
    found = (
        _HybridParents(
            _keys(model),
            parent_join,
            expression,
            model.embedding.is_not(None),
            scored.c.score,
            fusion,
        )
        .table_valued(
            column("parent_id", parent_key.type),
            column("ordinal", Integer),
            column("score", Float),
            column("distance", Float),
            column("text_score", Float),
            column("passage_rank", Integer),
        )
        .render_derived(name="passage_hybrid")
    )
    stmt = (
        select(parent, model, found.c.score, found.c.distance, found.c.text_score)
        .select_from(found)
        .join(model, (model.parent_id == found.c.parent_id) & (model.ordinal == found.c.ordinal))
        .join(parent, parent_join)
        .order_by(found.c.score.desc(), parent_key, found.c.passage_rank)
    )
    filters = where_filters(where)
    if filters:
        stmt = stmt.where(*filters)
    options = index_search_options(config, depth=depth, filtered=True)
    return stmt.execution_options(**options) if options else stmt
