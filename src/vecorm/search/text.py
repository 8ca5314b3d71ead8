"""Full-text search on the model's generated ``tsvector``: query parsing and ranking.

Ranking is BM25 (:mod:`vecorm.search.bm25`) when the model keeps BM25 statistics (the default),
else ``ts_rank``; ``ranking="ts_rank"`` / ``"ts_rank_cd"`` choose PostgreSQL's own.

Parsing and modes live in :mod:`vecorm.search.tsquery`.

Example::

    stmt = Document.text_search("error 0x80070057", k=10)           # (Document, score)
    stmt = text_search(Document, "vacuum -autovacuum", mode="websearch").where(...)

``TsRankArm`` / :class:`vecorm.search.bm25.BM25Arm` are the rankings packaged as lexical arms for
:mod:`vecorm.search.hybrid`; :func:`lexical_arm` picks one by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import REAL, Select, bindparam, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement

from vecorm.errors import ConfigurationError
from vecorm.schema.pgcatalog import pg
from vecorm.search.tsquery import Mode, language_of, matches, tsquery_expression
from vecorm.search.vector import keys_equal, keys_in, primary_key_columns, row_limit

Ranking = Literal["bm25", "ts_rank", "ts_rank_cd"]
TsRanking = Literal["ts_rank", "ts_rank_cd"]

RANKINGS: tuple[str, ...] = ("bm25", "ts_rank", "ts_rank_cd")
TS_RANKINGS: tuple[str, ...] = ("ts_rank", "ts_rank_cd")
#: ``ts_rank`` normalisation 1 divides by 1 + log(document length): the best of the
#: ``ts_rank`` variants measured on SciFact (nDCG@10 0.575 with any-term queries).
DEFAULT_NORMALIZATION = 1


def _weights_array(weights: Mapping[str, float] | Sequence[float] | None) -> Any:
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        defaults = {"D": 0.1, "C": 0.2, "B": 0.4, "A": 1.0}
        unknown = set(weights) - set(defaults)
        if unknown:
            raise ConfigurationError(f"weights keys must be 'A'..'D', not {sorted(unknown)}")
        values = [float(weights.get(label, defaults[label])) for label in "DCBA"]
    else:
        values = [float(value) for value in weights]
        if len(values) != 4:
            raise ConfigurationError("weights must have 4 values, for labels D, C, B, A")
    if not all(0.0 <= value <= 1.0 for value in values):
        raise ConfigurationError(f"weights must be between 0 and 1, not {values}")
    return bindparam(None, values, type_=ARRAY(REAL))


def rank_expression(
    vector: ColumnElement[Any],
    query: ColumnElement[Any],
    *,
    ranking: TsRanking = "ts_rank",
    normalization: int = DEFAULT_NORMALIZATION,
    weights: Mapping[str, float] | Sequence[float] | None = None,
) -> ColumnElement[float]:
    """``ts_rank([weights,] vector, query, normalization)`` (or ``ts_rank_cd``)."""
    if ranking not in TS_RANKINGS:
        raise ConfigurationError(
            f"ranking must be one of {', '.join(map(repr, TS_RANKINGS))}, not {ranking!r}"
        )
    if isinstance(normalization, bool) or not isinstance(normalization, int):
        raise ConfigurationError(f"normalization must be an int bit mask, not {normalization!r}")
    if not 0 <= normalization <= 63:
        raise ConfigurationError(f"normalization must be between 0 and 63, not {normalization}")
    function = getattr(pg, ranking)
    arguments: list[Any] = [vector, query, literal(normalization)]
    weight_array = _weights_array(weights)
    if weight_array is not None:
        arguments.insert(0, weight_array)
    result: ColumnElement[float] = function(*arguments, type_=REAL)
    return result


@dataclass(frozen=True)
class TsRankArm:
    """A lexical arm for :func:`vecorm.search.hybrid.hybrid_search` ranked with ``ts_rank``.

    Selects ``pk_0 .. pk_n, score`` of the ``depth`` best matching rows, best first::

        hybrid_search(Document, "error 0x80070057", lexical=TsRankArm(mode="all"))
    """

    mode: Mode = "any"
    ranking: TsRanking = "ts_rank"
    normalization: int = DEFAULT_NORMALIZATION
    weights: Mapping[str, float] | Sequence[float] | None = field(default=None, compare=False)

    def _matching(self, model: Any, text: str) -> tuple[Select[Any], ColumnElement[Any]]:
        """``pk_0.., score`` of every match, and the score column."""
        query = tsquery_expression(text, language=language_of(model), mode=self.mode)
        score = rank_expression(
            model.search_vector,
            query,
            ranking=self.ranking,
            normalization=self.normalization,
            weights=self.weights,
        ).label("score")
        keys = primary_key_columns(model)
        stmt = select(*(key.label(f"pk_{i}") for i, key in enumerate(keys)), score)
        return stmt.where(matches(model, query)), score

    def candidates(
        self, model: Any, text: str, *, where: Sequence[ColumnElement[bool]], depth: int
    ) -> Select[Any]:
        """``pk_0.., score`` of the ``depth`` best matches under ``where``, best first."""
        stmt, score = self._matching(model, text)
        return (
            stmt.where(*where)
            .order_by(score.desc(), *primary_key_columns(model))
            .limit(row_limit(depth))
        )

    def scores_of(self, model: Any, text: str, *, keys: Select[Any]) -> Select[Any]:
        """``pk_0.., score`` of the rows in ``keys`` that match ``text`` (the others score 0)."""
        stmt, _ = self._matching(model, text)
        return stmt.where(keys_in(primary_key_columns(model), keys))


def _check_ranking(ranking: str) -> None:
    if ranking not in RANKINGS:
        raise ConfigurationError(
            f"ranking must be one of {', '.join(map(repr, RANKINGS))}, not {ranking!r}"
        )


def default_ranking(model: Any) -> Ranking:
    """``"bm25"`` when ``model`` keeps BM25 statistics, else ``"ts_rank"``."""
    from vecorm.search.bm25 import has_bm25

    return "bm25" if has_bm25(model) else "ts_rank"


def lexical_arm(
    model: Any, ranking: Ranking | None = None, *, mode: Mode = "any", **options: Any
) -> Any:
    """The lexical arm for ``ranking`` (default :func:`default_ranking`)::

    hybrid_search(Document, "q", lexical=lexical_arm(Document, "ts_rank_cd"))
    """
    from vecorm.search.bm25 import BM25Arm

    chosen = default_ranking(model) if ranking is None else ranking
    _check_ranking(chosen)
    if chosen == "bm25":
        return BM25Arm(mode=mode, **options)
    return TsRankArm(mode=mode, ranking=chosen, **options)


def text_search(
    model: Any,
    text: str,
    k: int = 10,
    *,
    mode: Mode = "any",
    ranking: Ranking | None = None,
    normalization: int | None = None,
    weights: Mapping[str, float] | Sequence[float] | None = None,
    k1: float | None = None,
    b: float | None = None,
    where: ColumnElement[bool] | Sequence[ColumnElement[bool]] | None = None,
) -> Select[Any]:
    """``SELECT model, score WHERE <matches> ORDER BY score DESC, pk LIMIT k``.

    A composable ``Select`` of ``(model, score)``, ranked by BM25 (``k1`` / ``b`` override
    the model's) or, with ``ranking="ts_rank"`` / ``"ts_rank_cd"``, by PostgreSQL's
    ``ts_rank`` (``normalization``, label ``weights``). Empty or stop-word-only text returns
    no row::

        session.execute(text_search(Document, "error 0x80070057", k=5)).all()

    ``where`` filters the rows before the ``k`` best are kept (``.where()`` on the result
    would filter BM25's ``k`` best after): ``text_search(Document, "vacuum",
    where=Document.tenant_id == 7)``. With statistics kept per tenant
    (``BM25(distributed_by="tenant_id")``) that tenant's statistics rank the rows.
    """
    filters: tuple[ColumnElement[bool], ...] = (
        () if where is None else (where,) if isinstance(where, ColumnElement) else tuple(where)
    )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigurationError(f"k must be a positive integer, not {k!r}")
    chosen = default_ranking(model) if ranking is None else ranking
    _check_ranking(chosen)
    if chosen == "bm25":
        if normalization is not None or weights is not None:
            raise ConfigurationError(
                "normalization and weights apply to ts_rank; pass ranking='ts_rank' to use "
                "them, or k1= / b= to tune BM25"
            )
        from vecorm.search.bm25 import scores

        ranked = scores(model, text, mode=mode, where=filters, depth=k, k1=k1, b=b).subquery("bm25")
        keys = primary_key_columns(model)
        # The filters again outside: the rows meet them already, and Citus needs them on every
        # reference to a distributed table to route the statement to one shard.
        return (
            select(model, ranked.c.score)
            .join(ranked, keys_equal(keys, [ranked.c[f"pk_{i}"] for i in range(len(keys))]))
            .where(*filters)
            .order_by(ranked.c.score.desc(), *keys)
            .limit(row_limit(k))
        )
    if k1 is not None or b is not None:
        raise ConfigurationError("k1 and b apply to ranking='bm25'")
    query = tsquery_expression(text, language=language_of(model), mode=mode)
    score = rank_expression(
        model.search_vector,
        query,
        ranking=chosen,
        normalization=DEFAULT_NORMALIZATION if normalization is None else normalization,
        weights=weights,
    ).label("score")
    return (
        select(model, score)
        .where(matches(model, query), *filters)
        .order_by(score.desc(), *primary_key_columns(model))
        .limit(row_limit(k))
    )
