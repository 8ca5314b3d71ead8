"""Hybrid search: semantic and lexical candidates fused in one SQL statement.

Each *arm* is a ranked subquery of ``(pk_0 .. pk_n, score, rank)``: the semantic arm takes the
``depth`` nearest rows through the vector index, the lexical arm the ``depth`` best full-text
matches (BM25 by default, :mod:`vecorm.search.bm25`; ``lexical="ts_rank"`` or any
:class:`LexicalArm` plugs in another ranking). The arms are FULL OUTER JOINed on the primary
key, so a row found by only one arm still competes. By default (``missing="score"``) such a
row then gets its *real* score from the arm that missed it: its distance from the stored
vector, its BM25 score through the postings' (document, lexeme) index (0 when it holds no
query term), so every candidate is judged on both scores, as a search engine's re-ranking
phase does. ``missing="worst"`` is the classic top-k fusion, where absence counts as the
arm's worst. The candidates are fused by one of:

``"blend"`` (default)
    ``w * semantic + (1 - w) * lexical``, each part min-max normalised over *this query's*
    candidates (best 1, worst 0). Raw ``ts_rank`` values are tiny and unbounded and cosine
    similarities crowd near the top, so blending them raw (as the seed did) lets one arm
    dominate whatever ``w`` says; normalised, ``w`` means what it says.
    ``normalization="theoretical"`` replaces the worst candidate by the worst possible value
    (BM25 0, cosine distance 2), Bruch et al.'s TM2C2.
``"rrf"``
    Reciprocal rank fusion: ``sum(weight / (rrf_k + rank))`` over the arms that ranked the
    row among their ``depth`` best.

Defaults come from the literature, not from a test collection: ``w = 0.5`` (no preference
between the arms), per-query min-max (Bruch, Gai & Ingber 2023, "An Analysis of Fusion
Functions for Hybrid Retrieval": a convex combination of normalised scores beats RRF),
``rrf_k = 60`` (Cormack, Clarke & Büttcher 2009) and ``depth = 100`` candidates per arm.
Completing the missing scores is not a tuned knob but the correction of an artefact: a row
outside one arm's top 100 is not that arm's worst possible match. The semantic arm searches
with iterative scan, so it returns ``depth`` rows, and unfiltered it is an index search
(:func:`~vecorm.search.settings.index_search_options`); measurements are in
docs/search-quality.md.

``where`` filters apply inside *both* arms (a filter on the outer query would only thin the
fused top-k). The result is a composable ``Select`` of ``(Model, score, distance, text_score,
semantic_rank, text_rank)`` ordered by ``score`` then primary key; ``semantic_rank`` /
``text_rank`` are ``None`` for a row outside that arm's ``depth`` best::

    stmt = Document.hybrid_search(
        "error 0x80070057 when updating", k=10, where=Document.category == "windows"
    )
    for document, score, distance, text_score, semantic_rank, text_rank in session.execute(stmt):
        ...
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Float, Select, case, cast, func, literal, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Subquery

from vecorm.embedding.embedders.base import Embedder
from vecorm.errors import ConfigurationError
from vecorm.schema.config import Distance
from vecorm.schema.embeddings import EmbeddingRef, embedding_slot
from vecorm.schema.pgcatalog import pg
from vecorm.search.arms import LexicalArm
from vecorm.search.bm25.ranking import shared_statistics
from vecorm.search.exact_fallback import WALK_CAP_OPTION
from vecorm.search.settings import index_search_options
from vecorm.search.text import Ranking, lexical_arm
from vecorm.search.vector import (
    PendingQuery,
    QueryInput,
    distance_expression,
    keys_equal,
    nearest_candidates,
    primary_key_columns,
    query_value,
    row_limit,
)

Method = Literal["blend", "rrf"]
Normalization = Literal["minmax", "theoretical"]
Missing = Literal["score", "worst"]
DEFAULT_NORMALIZATION: Normalization = "minmax"
DEFAULT_MISSING: Missing = "score"
DEFAULT_DEPTH = 100
DEFAULT_RRF_K = 60
DEFAULT_SEMANTIC_WEIGHT = 0.5


def where_filters(
    where: ColumnElement[bool] | Sequence[ColumnElement[bool]] | None,
) -> tuple[ColumnElement[bool], ...]:
    """A search's ``where=``: one condition, several, or none."""
    if where is None:
        return ()
    if isinstance(where, ColumnElement):
        return (where,)
    return tuple(where)


def semantic_candidates(
    model: Any,
    query: QueryInput | PendingQuery,
    *,
    where: Sequence[ColumnElement[bool]],
    depth: int,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
    embedding: EmbeddingRef = None,
) -> Select[Any]:
    """``pk_0 .. pk_n, distance`` of the ``depth`` nearest rows under ``where``, nearest first,
    through the model's index whatever its precision (binary indexes re-rank exactly)."""
    return nearest_candidates(
        model,
        query,
        where=where,
        depth=depth,
        distance=distance,
        embedder=embedder,
        embedding=embedding,
    )


def _ranked(
    candidates: Select[Any],
    value: str,
    *,
    lower_is_better: bool,
    name: str,
    limit: float | None = None,
) -> Subquery:
    """The arm's ``pk_*``, its raw ``value`` and ``rank`` (1 = best); with ``limit``, only the
    candidates at least that good (``value <= limit``, or ``>=`` when higher is better)."""
    inner = candidates.subquery(f"{name}_candidates")
    keys = [column for column in inner.c if column.key.startswith("pk_")]
    raw = inner.c[value]
    best_first = raw.asc() if lower_is_better else raw.desc()
    ranked = select(
        *keys,
        raw.label("value"),
        pg.row_number().over(order_by=(best_first, *keys)).label("rank"),
    )
    if limit is not None:
        bound = literal(limit, Float)
        ranked = ranked.where(raw <= bound if lower_is_better else raw >= bound)
    return ranked.subquery(name)


def threshold(name: str, value: float | None) -> float | None:
    """``value`` as a float threshold (``None``: no threshold); anything else not finite is
    refused, naming the argument."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def check_fusion(
    method: str, semantic_weight: float, rrf_k: int, normalization: str = DEFAULT_NORMALIZATION
) -> None:
    """Refuse fusion settings :func:`fused_score` cannot apply, naming the argument."""
    if not 0.0 <= semantic_weight <= 1.0:
        raise ConfigurationError(f"semantic_weight must be between 0 and 1, not {semantic_weight}")
    if normalization not in ("minmax", "theoretical"):
        raise ConfigurationError(
            f"normalization must be 'minmax' or 'theoretical', not {normalization!r}"
        )
    if method not in ("blend", "rrf"):
        raise ConfigurationError(f"method must be 'blend' or 'rrf', not {method!r}")
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 0:
        raise ConfigurationError(f"rrf_k must be a non-negative integer, not {rrf_k!r}")


def bounds(
    value: ColumnElement[Any], *, lower_is_better: bool, floor: float | None
) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """The best and the worst ``value`` over the rows of the ``SELECT`` it is in (windows), or
    ``floor``, the scoring function's worst possible value, as the worst."""
    best = pg.min(value).over() if lower_is_better else pg.max(value).over()
    worst: ColumnElement[Any]
    if floor is not None:
        worst = literal(floor, Float)
    else:
        worst = pg.max(value).over() if lower_is_better else pg.min(value).over()
    return best, worst


def scaled(
    value: ColumnElement[Any],
    best: ColumnElement[Any],
    worst: ColumnElement[Any],
    *,
    lower_is_better: bool,
) -> ColumnElement[float]:
    """``value`` scaled from ``worst`` (0) to ``best`` (1); no value 0, ``best == worst`` 1."""
    to_best = worst - value if lower_is_better else value - worst
    span = func.nullif(
        (worst - best) if lower_is_better else (best - worst), literal(0.0, Float), type_=Float
    )
    result = func.coalesce(to_best / span, literal(1.0, Float))
    return case((value.is_(None), literal(0.0, Float)), else_=result)


def _normalised(
    value: ColumnElement[Any], *, lower_is_better: bool, floor: float | None
) -> ColumnElement[float]:
    """``value`` scaled over the fused rows: the best 1, the worst (or ``floor``, the scoring
    function's worst possible value) 0; a row without a value 0, a single value 1."""
    best, worst = bounds(value, lower_is_better=lower_is_better, floor=floor)
    return scaled(value, best, worst, lower_is_better=lower_is_better)


def blend(
    semantic: ColumnElement[Any], lexical: ColumnElement[Any], semantic_weight: float
) -> ColumnElement[float]:
    """``w * semantic + (1 - w) * lexical`` of two normalised scores."""
    combined: ColumnElement[float] = (
        literal(semantic_weight) * semantic + literal(1.0 - semantic_weight) * lexical
    )
    return combined


def reciprocal_rank(
    semantic_rank: ColumnElement[Any],
    text_rank: ColumnElement[Any],
    semantic_weight: float,
    rrf_k: int,
) -> ColumnElement[float]:
    """``2w / (rrf_k + semantic_rank) + 2(1 - w) / (rrf_k + text_rank)``, an arm that did not
    rank the row adding 0. Weights 2w and 2(1 - w): w = 0.5 is textbook RRF."""
    combined: ColumnElement[float] = func.coalesce(
        literal(2.0 * semantic_weight) / cast(rrf_k + semantic_rank, Float), 0.0
    ) + func.coalesce(
        literal(2.0 * (1.0 - semantic_weight)) / cast(rrf_k + text_rank, Float),
        0.0,
    )
    return combined


def fused_score(
    method: Method,
    *,
    distance: ColumnElement[Any],
    text_score: ColumnElement[Any],
    semantic_rank: ColumnElement[Any],
    text_rank: ColumnElement[Any],
    semantic_weight: float,
    rrf_k: int,
    semantic_floor: float | None = None,
    lexical_floor: float | None = None,
) -> ColumnElement[float]:
    """The fused score of the candidates in one ``SELECT``: the min-max blend of ``distance``
    and ``text_score`` (normalised over these candidates, down to the floors when given), or
    the reciprocal rank fusion of ``semantic_rank`` and ``text_rank``."""
    if method == "blend":
        return blend(
            _normalised(distance, lower_is_better=True, floor=semantic_floor),
            _normalised(text_score, lower_is_better=False, floor=lexical_floor),
            semantic_weight,
        )
    return reciprocal_rank(semantic_rank, text_rank, semantic_weight, rrf_k)


def floors(
    model: Any, distance: Distance | str | None, normalization: Normalization
) -> tuple[float | None, float | None]:
    """The worst possible distance and lexical score for ``"theoretical"`` normalisation (no
    floors for ``"minmax"``)."""
    if normalization != "theoretical":
        return None, None
    return _distance_floor(model, distance), 0.0


def _distance_floor(model: Any, distance: Distance | str | None) -> float | None:
    """The worst possible distance: 2 for cosine; unbounded metrics fall back to min-max."""
    from vecorm.search.vector import metric_of

    return 2.0 if metric_of(model, distance) is Distance.COSINE else None


def _completed(
    model: Any,
    joined: Select[Any],
    arm: Any,
    text: str,
    query: QueryInput | PendingQuery,
    distance: Distance | str | None,
    where: Sequence[ColumnElement[bool]],
    embedding: EmbeddingRef = None,
) -> Subquery:
    """The fused candidates with both scores for every row: the distance of a row that only
    the lexical arm found, computed on its stored vector; the lexical score of a row that only
    the semantic arm found, from the arm's ``scores_of`` (0 when it matches no query term, or
    when the arm cannot score given rows)."""
    fused = joined.cte("fused")
    count = len(primary_key_columns(model))
    fused_keys = [fused.c[f"pk_{i}"] for i in range(count)]
    completed_text: ColumnElement[Any] = fused.c.text_score
    source: Any = fused.join(model, keys_equal(primary_key_columns(model), fused_keys))
    scores_of = getattr(arm, "scores_of", None)
    if scores_of is not None:
        lacking = select(*fused_keys).where(fused.c.text_score.is_(None))
        # An arm whose scores depend on the filter (BM25 statistics per distribution value)
        # takes it as ``where``.
        scoped = {"where": where} if "where" in inspect.signature(scores_of).parameters else {}
        found = scores_of(model, text, keys=lacking, **scoped).subquery("lexical_completion")
        source = source.outerjoin(
            found, keys_equal(fused_keys, [found.c[f"pk_{i}"] for i in range(count)])
        )
        completed_text = func.coalesce(completed_text, found.c.score)
    return (
        select(
            *fused_keys,
            func.coalesce(
                fused.c.distance,
                distance_expression(model, query, distance=distance, embedding=embedding),
            ).label("distance"),
            func.coalesce(completed_text, literal(0.0, Float)).label("text_score"),
            fused.c.semantic_rank,
            fused.c.text_rank,
        )
        .select_from(source)
        .subquery("completed")
    )


@shared_statistics()
def hybrid_search(
    model: Any,
    text: str,
    k: int = 10,
    *,
    vector: QueryInput | None = None,
    method: Method = "blend",
    semantic_weight: float = DEFAULT_SEMANTIC_WEIGHT,
    rrf_k: int = DEFAULT_RRF_K,
    depth: int = DEFAULT_DEPTH,
    where: ColumnElement[bool] | Sequence[ColumnElement[bool]] | None = None,
    lexical: LexicalArm | Ranking | None = None,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    missing: Missing = DEFAULT_MISSING,
    max_distance: float | None = None,
    min_text_score: float | None = None,
    embedding: EmbeddingRef = None,
) -> Select[Any]:
    """One statement fusing the nearest rows to ``vector`` (default: ``text`` embedded) with
    the full-text matches of ``text``; see the module docstring. ``embedding`` names the
    embedding the semantic arm searches (default: ``embedding``).

    ``max_distance`` / ``min_text_score`` are thresholds on each arm's raw values: the
    semantic arm keeps rows at most that far, the lexical arm rows scoring at least that much,
    and a row is fused when an arm keeps it. Normalized scores cannot be thresholded (min-max
    gives the best row 1.0 even when nothing matches); these can, and nothing passing them
    returns no rows.

    ``semantic_weight`` is the blend's ``w``; for RRF the arms weigh ``2w`` and ``2(1 - w)``,
    so the default 0.5 is textbook RRF. ``depth`` candidates come from each arm; ``missing``
    says whether a row one arm missed gets its real score from that arm (``"score"``) or
    that arm's worst (``"worst"``)::

        session.execute(hybrid_search(Document, "ERR_CONN_RESET", k=5, method="rrf")).all()
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigurationError(f"k must be a positive integer, not {k!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigurationError(f"depth must be a positive integer, not {depth!r}")
    check_fusion(method, semantic_weight, rrf_k, normalization)
    if missing not in ("score", "worst"):
        raise ConfigurationError(f"missing must be 'score' or 'worst', not {missing!r}")
    distance_limit = threshold("max_distance", max_distance)
    text_limit = threshold("min_text_score", min_text_score)
    filters = where_filters(where)
    depth = max(depth, k)
    # Embedded once: the semantic arm and the completed distances use the same vector. With
    # no embedder here or on the model, the session's installed one embeds it at execution
    # (vecorm.search.vector.PendingQuery).
    query = query_value(
        model, text if vector is None else vector, embedder=embedder, embedding=embedding
    )
    config = embedding_slot(model, embedding).config
    distance = Distance.parse(distance) if distance is not None else config.metric
    semantic = _ranked(
        semantic_candidates(
            model, query, where=filters, depth=depth, distance=distance, embedding=embedding
        ),
        "distance",
        lower_is_better=True,
        name="semantic",
        limit=distance_limit,
    )
    arm = lexical_arm(model, lexical) if lexical is None or isinstance(lexical, str) else lexical
    lexical_ranked = _ranked(
        arm.candidates(model, text, where=filters, depth=depth),
        "score",
        lower_is_better=False,
        name="lexical",
        limit=text_limit,
    )
    keys = primary_key_columns(model)
    semantic_keys = [semantic.c[f"pk_{i}"] for i in range(len(keys))]
    lexical_keys = [lexical_ranked.c[f"pk_{i}"] for i in range(len(keys))]
    joined = select(
        *(
            func.coalesce(left, right).label(f"pk_{i}")
            for i, (left, right) in enumerate(zip(semantic_keys, lexical_keys, strict=True))
        ),
        semantic.c.value.label("distance"),
        lexical_ranked.c.value.label("text_score"),
        semantic.c.rank.label("semantic_rank"),
        lexical_ranked.c.rank.label("text_rank"),
    ).select_from(semantic.join(lexical_ranked, keys_equal(semantic_keys, lexical_keys), full=True))
    candidates = (
        _completed(model, joined, arm, text, query, distance, filters, embedding)
        if missing == "score"
        else joined.subquery("fused")
    )
    candidate_keys = [candidates.c[f"pk_{i}"] for i in range(len(keys))]
    semantic_floor, lexical_floor = floors(model, distance, normalization)
    combined = fused_score(
        method,
        distance=candidates.c.distance,
        text_score=candidates.c.text_score,
        semantic_rank=candidates.c.semantic_rank,
        text_rank=candidates.c.text_rank,
        semantic_weight=semantic_weight,
        rrf_k=rrf_k,
        semantic_floor=semantic_floor,
        lexical_floor=lexical_floor,
    )
    fused = select(
        *candidate_keys,
        combined.label("score"),
        candidates.c.distance,
        candidates.c.text_score,
        candidates.c.semantic_rank,
        candidates.c.text_rank,
    ).subquery("fused_scores")
    score = fused.c.score.label("score")
    stmt = (
        select(
            model,
            score,
            fused.c.distance,
            fused.c.text_score,
            fused.c.semantic_rank,
            fused.c.text_rank,
        )
        .join(fused, keys_equal(keys, [fused.c[f"pk_{i}"] for i in range(len(keys))]))
        .order_by(score.desc(), *keys)
        .limit(row_limit(k))
    )
    binary = config.index_precision == "bit"
    # A binary index hands depth * rerank Hamming candidates to the exact re-rank. Without
    # filters the semantic arm is an index search (see index_search_options).
    options = index_search_options(
        config, depth=depth * config.rerank if binary else depth, filtered=bool(filters)
    )
    if options and filters:
        # the semantic arm answers exactly when its walk comes back short (nearest_candidates):
        # the walk goes only as far as pays (vecorm.search.exact_fallback)
        options[WALK_CAP_OPTION] = True
    return stmt.execution_options(**options) if options else stmt
