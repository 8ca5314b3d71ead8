"""Hybrid search: semantic and lexical candidates fused in one SQL statement.

Each *arm* is a ranked subquery of ``(pk_0 .. pk_n, score, rank)``: the semantic arm takes the
``depth`` nearest rows through the vector index, the lexical arm the ``depth`` best full-text
matches (BM25 by default, :mod:`vecorm.bm25`; ``lexical="ts_rank"`` or any
:class:`LexicalArm` plugs in another ranking). The arms are
FULL OUTER JOINed on the primary key, so a row found by only one arm still competes, and
fused by one of:

``"blend"`` (default)
    ``w * semantic + (1 - w) * lexical`` where each part is min-max normalised over *this
    query's* candidates of that arm (best 1, worst 0, absent 0). Raw ``ts_rank`` values are
    tiny and unbounded and cosine similarities crowd near the top, so blending them raw (as
    the seed did) lets one arm dominate whatever ``w`` says; normalised, ``w`` means what it
    says. ``normalization="theoretical"`` replaces each arm's worst candidate by the worst
    possible value (BM25 0, cosine distance 2), Bruch et al.'s TM2C2.
``"rrf"``
    Reciprocal rank fusion: ``sum(weight / (rrf_k + rank))`` over the arms that found the row.

Defaults come from the literature, not from a test collection: ``w = 0.5`` (no preference
between the arms), per-query min-max (Bruch, Gai & Ingber 2023, "An Analysis of Fusion
Functions for Hybrid Retrieval": a convex combination of normalised scores beats RRF),
``rrf_k = 60`` (Cormack, Clarke & Büttcher 2009) and ``depth = 100`` candidates per arm.
Unfiltered, the HNSW arm searches with ``ef_search = depth`` and iterative scan, so it
returns ``depth`` rows; measurements are in docs/search-quality.md.

``where`` filters apply inside *both* arms (a filter on the outer query would only thin the
fused top-k). The result is a composable ``Select`` of ``(Model, score, distance, text_score,
semantic_rank, text_rank)`` ordered by ``score`` then primary key::

    stmt = Document.hybrid_search(
        "error 0x80070057 when updating", k=10, where=Document.category == "windows"
    )
    for document, score, distance, text_score, semantic_rank, text_rank in session.execute(stmt):
        ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from sqlalchemy import Float, Select, and_, func, literal, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Subquery

from vecorm.config import HNSW, Distance
from vecorm.embedders.base import Embedder
from vecorm.errors import ConfigurationError
from vecorm.query import (
    MAX_EF_SEARCH,
    QueryInput,
    index_search_options,
    nearest_candidates,
    primary_key_columns,
)
from vecorm.textsearch import Ranking, lexical_arm

Method = Literal["blend", "rrf"]
Normalization = Literal["minmax", "theoretical"]
DEFAULT_NORMALIZATION: Normalization = "minmax"
DEFAULT_DEPTH = 100
DEFAULT_RRF_K = 60
DEFAULT_SEMANTIC_WEIGHT = 0.5


class LexicalArm(Protocol):
    """Builds the lexical candidates: ``pk_0 .. pk_n`` and ``score`` (higher is better).

    The statement applies ``where``, keeps the ``depth`` best rows and orders them best first.
    """

    def candidates(
        self, model: Any, text: str, *, where: Sequence[ColumnElement[bool]], depth: int
    ) -> Select[Any]: ...


def _filters(
    where: ColumnElement[bool] | Sequence[ColumnElement[bool]] | None,
) -> tuple[ColumnElement[bool], ...]:
    if where is None:
        return ()
    if isinstance(where, ColumnElement):
        return (where,)
    return tuple(where)


def semantic_candidates(
    model: Any,
    query: QueryInput,
    *,
    where: Sequence[ColumnElement[bool]],
    depth: int,
    distance: Distance | str | None = None,
    embedder: Embedder | None = None,
) -> Select[Any]:
    """``pk_0 .. pk_n, distance`` of the ``depth`` nearest rows under ``where``, nearest first,
    through the model's index whatever its precision (binary indexes re-rank exactly)."""
    return nearest_candidates(
        model, query, where=where, depth=depth, distance=distance, embedder=embedder
    )


def _ranked(
    candidates: Select[Any],
    value: str,
    *,
    lower_is_better: bool,
    name: str,
    floor: float | None = None,
) -> Subquery:
    """Add ``rank`` (1 = best) and ``norm`` (best 1) columns: per-query min-max, or with a
    ``floor`` (the scoring function's worst possible value, 0 after normalising) in place of
    the query's worst candidate."""
    inner = candidates.subquery(f"{name}_candidates")
    keys = [column for column in inner.c if column.key.startswith("pk_")]
    raw = inner.c[value]
    best_first = raw.asc() if lower_is_better else raw.desc()
    low = func.min(raw).over() if floor is None else literal(floor, Float)
    high = func.max(raw).over() if floor is None else literal(floor, Float)
    if lower_is_better:
        span = func.nullif(high - func.min(raw).over(), literal(0.0, Float), type_=Float)
        to_best = high - raw
    else:
        span = func.nullif(func.max(raw).over() - low, literal(0.0, Float), type_=Float)
        to_best = raw - low
    norm = func.coalesce(to_best / span, literal(1.0, Float))
    return select(
        *keys,
        raw.label("value"),
        func.row_number().over(order_by=(best_first, *keys)).label("rank"),
        norm.label("norm"),
    ).subquery(name)


def _distance_floor(model: Any, distance: Distance | str | None) -> float | None:
    """The worst possible distance: 2 for cosine; unbounded metrics fall back to min-max."""
    from vecorm.query import metric_of

    return 2.0 if metric_of(model, distance) is Distance.COSINE else None


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
) -> Select[Any]:
    """One statement fusing the nearest rows to ``vector`` (default: ``text`` embedded) with
    the full-text matches of ``text``; see the module docstring.

    ``semantic_weight`` is the blend's ``w``; for RRF the arms weigh ``2w`` and ``2(1 - w)``,
    so the default 0.5 is textbook RRF. ``depth`` candidates come from each arm::

        session.execute(hybrid_search(Document, "ERR_CONN_RESET", k=5, method="rrf")).all()
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigurationError(f"k must be a positive integer, not {k!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigurationError(f"depth must be a positive integer, not {depth!r}")
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
    filters = _filters(where)
    depth = max(depth, k)
    semantic = _ranked(
        semantic_candidates(
            model,
            text if vector is None else vector,
            where=filters,
            depth=depth,
            distance=distance,
            embedder=embedder,
        ),
        "distance",
        lower_is_better=True,
        name="semantic",
        floor=_distance_floor(model, distance) if normalization == "theoretical" else None,
    )
    arm = lexical_arm(model, lexical) if lexical is None or isinstance(lexical, str) else lexical
    lexical_ranked = _ranked(
        arm.candidates(model, text, where=filters, depth=depth),
        "score",
        lower_is_better=False,
        name="lexical",
        floor=0.0 if normalization == "theoretical" else None,
    )
    keys = primary_key_columns(model)
    semantic_keys = [semantic.c[f"pk_{i}"] for i in range(len(keys))]
    lexical_keys = [lexical_ranked.c[f"pk_{i}"] for i in range(len(keys))]
    if method == "blend":
        combined = literal(semantic_weight) * func.coalesce(semantic.c.norm, 0.0) + literal(
            1.0 - semantic_weight
        ) * func.coalesce(lexical_ranked.c.norm, 0.0)
    else:
        # Weights 2w and 2(1 - w): w = 0.5 is textbook RRF.
        combined = func.coalesce(
            literal(2.0 * semantic_weight) / (rrf_k + semantic.c.rank), 0.0
        ) + func.coalesce(
            literal(2.0 * (1.0 - semantic_weight)) / (rrf_k + lexical_ranked.c.rank), 0.0
        )
    fused = (
        select(
            *(
                func.coalesce(left, right).label(f"pk_{i}")
                for i, (left, right) in enumerate(zip(semantic_keys, lexical_keys, strict=True))
            ),
            combined.label("score"),
            semantic.c.value.label("distance"),
            lexical_ranked.c.value.label("text_score"),
            semantic.c.rank.label("semantic_rank"),
            lexical_ranked.c.rank.label("text_rank"),
        )
        .select_from(
            semantic.join(
                lexical_ranked,
                and_(*(a == b for a, b in zip(semantic_keys, lexical_keys, strict=True))),
                full=True,
            )
        )
        .subquery("fused")
    )
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
        .join(fused, and_(*(key == fused.c[f"pk_{i}"] for i, key in enumerate(keys))))
        .order_by(score.desc(), *keys)
        .limit(k)
    )
    from vecorm.mixin import search_config

    config = search_config(model)
    binary = config.index_precision == "bit"
    # A binary index hands depth * rerank Hamming candidates to the exact re-rank.
    options = index_search_options(config, depth=depth * config.rerank if binary else depth)
    if (
        isinstance(config.index, HNSW)
        and config.index.ef_search is None
        and not filters
        and not binary
    ):
        # Unfiltered, an ef_search equal to the depth returns depth rows (iterative scan
        # does the rest) and keeps pgvector's cost estimate low enough for the planner to
        # use the index on small tables; filters keep the query layer's wider default.
        options["vecorm_hnsw_ef_search"] = min(MAX_EF_SEARCH, depth)
    return stmt.execution_options(**options) if options else stmt
