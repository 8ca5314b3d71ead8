"""BM25 scores in SQL: the query's lexemes against the postings, MaxScore pruning, the lexical
arm of hybrid search."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    column,
    exists,
    func,
    literal,
    literal_column,
    select,
    true,
    union_all,
)
from sqlalchemy import table as table_clause
from sqlalchemy.dialects.postgresql import REGCONFIG
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnClause,
    ColumnElement,
)
from sqlalchemy.sql.selectable import CompoundSelect, TableClause, TextualSelect

from vecorm.errors import ConfigurationError
from vecorm.schema import pgcatalog as catalog
from vecorm.schema.config import BM25
from vecorm.schema.pgcatalog import pg
from vecorm.search.bm25.tables import BM25Tables, side_tables
from vecorm.search.rendered import rendered_once
from vecorm.search.tsquery import MODES, Mode
from vecorm.search.vector import keys_equal, keys_in, row_limit

#: The statistics CTEs built so far in one statement's construction (see
#: :func:`shared_statistics`), by (table, text, language).
_SHARED: ContextVar[dict[tuple[Any, ...], tuple[Any, Any]] | None] = ContextVar(
    "vecorm_bm25_statistics", default=None
)


@contextmanager
def shared_statistics() -> Iterator[None]:
    """While building one statement, :func:`scores` of the same text on the same table reuse
    one set of statistics CTEs (the query's terms, their document frequencies, the average
    length), which the statement then computes once: a hybrid search's candidates and the
    completion of the rows its semantic arm found. Statistics kept per distribution value
    are not shared (they depend on the filter)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


#: A posting's contribution is summed as a whole number of 2^-36 (``round(part * 2^36)``):
#: whole numbers below 2^53 add exactly in float8, so a document's score does not depend on
#: the order its postings are added in, which differs between plans (and between scoring
#: every posting and MaxScore's rescoring). Without it two documents whose scores are equal
#: (the same contributions from different words of equal frequency) could differ in the last
#: bit, and which of them makes the k-th place would not be decided by the key. Exact up to a
#: score of 2^17; the resolution, 1.5e-11, is far below any difference BM25 makes.
SCORE_SCALE = float(2**36)

#: Query terms whose bounds together stay under this share of the first threshold are only
#: probed (MaxScore allows any share under 1): every candidate then owes at least the rest of
#: its score to the scanned terms, which keeps the candidates, and the probes, few.
OPTIONAL_SHARE = 0.5


def _keys(table: Table, names: Sequence[str]) -> list[ColumnElement[Any]]:
    return [table.c[name] for name in names]


def _constant(value: float) -> ColumnElement[float]:
    """A float written into the SQL: a bound value would let a prepared statement's generic
    plan guess (psycopg prepares a statement after its fifth run). Typed, so that arithmetic
    with it matches pg_catalog's float8 operators exactly (an implicit cast could resolve to
    an overload on the caller's search_path)."""
    return literal_column(f"CAST({float(value)!r} AS DOUBLE PRECISION)", Float)


def _integer(value: int) -> ColumnElement[int]:
    return literal_column(str(int(value)), Integer)


def query_terms(text: str, language: str) -> Select[Any]:
    """``SELECT term, qtf``: the lexemes of ``text`` (stop words removed) and how often each
    occurs in it (a repeated query word counts that many times, as in Lucene)."""
    from vecorm.search.tsquery import clean_search_text

    vector = catalog.to_tsvector(
        cast(literal(language), REGCONFIG), bindparam(None, clean_search_text(text), type_=Text)
    )
    lexemes = (
        pg.unnest(vector)
        .table_valued("lexeme", "positions", "weights")
        .render_derived(name="lexemes")
    )
    qtf = cast(func.coalesce(pg.array_length(lexemes.c.positions, _integer(1)), _integer(1)), Float)
    return select(lexemes.c.lexeme.label("term"), qtf.label("qtf"))


def _scope(
    table: Table, column: str | None, where: Sequence[ColumnElement[bool]]
) -> Callable[[ColumnElement[Any]], ColumnElement[bool]] | None:
    """The values of ``column`` that ``where`` restricts ``table`` to (``column == value`` or
    ``column.in_(values)`` among its conditions), as a condition to put on another table's
    column of the same name; ``None`` when ``where`` names no such value (or ``column`` is
    ``None``)."""
    if column is None:
        return None
    for condition in where:
        for term in _conjuncts(condition):
            if not isinstance(term, BinaryExpression):
                continue
            left = term.left
            if (
                term.operator in (operators.eq, operators.in_op)
                and isinstance(left, ColumnClause)
                and getattr(left, "table", None) is table
                and left.name == column
                and isinstance(term.right, BindParameter)
            ):
                operator, right = term.operator, term.right
                return lambda other: operator(other, right)
    return None


def _conjuncts(condition: ColumnElement[bool]) -> list[ColumnElement[Any]]:
    if isinstance(condition, BooleanClauseList) and condition.operator is operators.and_:
        return [term for clause in condition.clauses for term in _conjuncts(clause)]
    return [condition]


def scores(
    model: Any,
    text: str,
    *,
    mode: Mode = "any",
    where: Sequence[ColumnElement[bool]] = (),
    depth: int = 100,
    k1: float | None = None,
    b: float | None = None,
    prune_above: int | Literal["config"] | None = "config",
    seed: int | None = None,
    only: Select[Any] | None = None,
    prefix: str = "bm25",
) -> Select[Any]:
    """``pk_0 .. pk_n, score`` of the ``depth`` best BM25 matches of ``text``, best first.

    An unfiltered any-term query whose terms hold more than ``prune_above`` postings (the
    model's ``BM25.prune_above``, 10,000 by default) is ranked with MaxScore pruning
    (:func:`_max_score`, exact); otherwise, with ``where``, another mode, statistics kept per
    distribution value or ``prune_above=None``, every posting of the query terms is scored.
    ``only`` (a ``SELECT`` of primary-key tuples) scores just those rows, every one of them
    that matches, through the (document, lexeme) index: a hybrid search completes the
    lexical score of rows that only its semantic arm found this way. ``prefix`` names the
    statement's CTEs, so that two of these can share one statement.
    """
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    tables = side_tables(model)
    settings = tables.settings
    k1_value = settings.k1 if k1 is None else float(k1)
    b_value = settings.b if b is None else float(b)
    BM25(k1=k1_value, b=b_value)  # validate
    threshold = settings.prune_above if prune_above == "config" else prune_above
    BM25(prune_above=threshold, seed=settings.seed if seed is None else seed)  # validate
    seed_postings = settings.seed if seed is None else seed
    postings = tables.postings
    language = tables.config.language
    names = tables.keys

    # Statistics kept per distribution value: those of the values ``where`` names (one value
    # makes the statement a Citus router query), else their sum over every value.
    scope = _scope(tables.table, tables.distributed_by, where)

    def scoped(side: Table) -> list[ColumnElement[bool]]:
        if scope is None or tables.distributed_by is None:
            return []
        return [scope(side.c[tables.distributed_by])]

    shared = _SHARED.get() if scope is None else None
    shared_key = (tables.table, text, language, k1_value, b_value)
    found = shared.get(shared_key) if shared is not None else None
    if found is not None:
        query, weighted = found
    else:
        query, weighted = _statistics(tables, text, language, scoped, prefix, k1_value, b_value)
        if shared is not None:
            shared[shared_key] = (query, weighted)

    # Statistics kept per distribution value (Citus) are always scored exhaustively: the
    # MaxScore statement (lateral probes, correlated subqueries) is not tested on Citus.
    pruned = (
        mode == "any"
        and not where
        and threshold is not None
        and only is None
        and tables.distributed_by is None
    )
    shape = _Shape(
        postings,
        tuple(names),
        mode,
        threshold if pruned else None,
        seed_postings,
        depth,
        prefix,
        # ``only`` names rows read from the table, which its row security filtered already.
        tables.table if only is None else None,
    )
    conditions = scoped(postings)
    if only is not None:
        conditions.append(keys_in(_keys(postings, names), only))
    scored = (
        _scored(shape, query, weighted, conditions)
        if conditions
        # Nothing filters the postings: the same SQL for every text (see _static_scored).
        else _static_scored(shape).add_cte(query, weighted)
    )
    ranked = scored.subquery(f"{prefix}_scored")
    score = (ranked.c.score / _constant(SCORE_SCALE)).label("score")  # exact: a power of 2
    keys = [ranked.c[name] for name in names]
    stmt = select(*(key.label(f"pk_{i}") for i, key in enumerate(keys)), score)
    if where or mode in ("phrase", "websearch"):
        from vecorm.search.tsquery import matches, tsquery_expression

        table_keys = _keys(tables.table, names)
        stmt = stmt.join(tables.table, keys_equal(table_keys, keys)).where(*where)
        if mode in ("phrase", "websearch"):
            stmt = stmt.where(
                matches(model, tsquery_expression(text, language=language, mode=mode))
            )
    stmt = stmt.order_by(score.desc(), *keys)
    return stmt if only is not None else stmt.limit(row_limit(depth))


@dataclass(frozen=True)
class _Shape:
    """What the scoring part of a BM25 statement depends on besides the query's statistics:
    the same shape gives the same SQL for every text."""

    postings: Table
    names: tuple[str, ...]
    mode: str
    prune_above: int | None  # None: every posting is scored
    seed: int
    depth: int
    prefix: str
    #: The model's table, to keep its rows the current role sees when row-level security
    #: applies to it (``None``: the postings are of rows read from the table already).
    secured: Table | None = None


def _scored(
    shape: _Shape, query: Any, weighted: Any, conditions: Sequence[ColumnElement[bool]] = ()
) -> Select[Any] | CompoundSelect[Any]:
    """``key .., score`` (in units of 1 / :data:`SCORE_SCALE`) of the documents holding the
    terms of ``weighted`` (the statistics CTE; ``query`` the query's terms), every posting
    summed, or with MaxScore pruning (the ``depth`` best) when ``shape.prune_above`` is set;
    ``conditions`` restrict the postings.

    With ``shape.secured``, a role that the table's row-level security restricts scores every
    posting and keeps the documents it sees (the side tables carry no policy): pruning and
    the ``depth`` cut would otherwise rank rows it cannot see and then lose them."""
    postings, names = shape.postings, shape.names

    def contribution(tf_column: Any, dl_column: Any) -> ColumnElement[Any]:
        # ``weight tf / (tf + base + slope dl)``: the statistics CTE folds idf, k1, b and
        # avgdl into three numbers per term, so each posting costs three float operations.
        tf = cast(tf_column, Float)
        part = (
            weighted.c.weight
            * tf
            / (tf + weighted.c.base + weighted.c.slope * cast(dl_column, Float))
        )
        scaled: ColumnElement[Any] = pg.round(part * _constant(SCORE_SCALE), type_=Float)
        return scaled  # in units of 1 / SCORE_SCALE: sums are exact

    term_score = contribution(postings.c.tf, postings.c.dl)
    key_columns = _keys(postings, names)
    exhaustive = (
        select(*key_columns, pg.sum(term_score).label("score"))
        .select_from(weighted.join(postings, postings.c.term == weighted.c.term))
        .where(*conditions)
        .group_by(*key_columns)
    )
    if shape.mode == "all":
        exhaustive = exhaustive.having(
            pg.count(literal_column("*"))
            == select(pg.count(literal_column("*"))).select_from(query).scalar_subquery()
        )
    if shape.secured is not None:
        restricted = _row_security_active(shape.secured)
        everything = exhaustive.subquery(f"{shape.prefix}_everything")
        table_keys = _keys(shape.secured, names)
        seen = (
            select(*(everything.c[name] for name in names), everything.c.score)
            .select_from(everything)
            .where(exists().where(keys_equal(table_keys, [everything.c[n] for n in names])))
            .where(restricted)
        )
        exhaustive = exhaustive.where(~restricted)
    if shape.prune_above is None:
        return exhaustive if shape.secured is None else union_all(exhaustive, seen)
    many = select(pg.sum(weighted.c.df)).scalar_subquery() > _constant(shape.prune_above)
    pruned_select, pruning = _max_score(
        postings,
        weighted,
        names,
        term_score,
        contribution,
        seed=shape.seed,
        depth=shape.depth,
        prefix=shape.prefix,
    )
    # Without an optional term MaxScore would read every posting anyway: score them.
    useful = and_(many, pruning)
    # Each branch keeps its own best rows: only those pass the gate and the union.
    branches = [exhaustive.where(~useful), pruned_select.where(useful)]
    if shape.secured is not None:
        branches = [branches[0], branches[1].where(~restricted), seen]
    return union_all(
        *(
            branch.order_by(
                branch.selected_columns.score.desc(),
                *(branch.selected_columns[name] for name in names),
            ).limit(row_limit(shape.depth))
            for branch in branches
        )
    )


def _row_security_active(table: Table) -> ColumnElement[bool]:
    """Whether row-level security applies to ``table`` for the current role, asked once per
    statement (an InitPlan: the branch it rules out never runs)."""
    active = pg.row_security_active(catalog.RegClass(table), type_=Boolean)
    return select(active).scalar_subquery()


def _stand_ins(prefix: str) -> tuple[TableClause, TableClause]:
    """Stand-ins for the ``<prefix>_query`` and ``<prefix>_terms`` CTEs: SQL rendered against
    them names the statement's CTEs."""
    query = table_clause(f"{prefix}_query", column("term", Text), column("qtf", Float))
    weighted = table_clause(
        f"{prefix}_terms",
        column("term", Text),
        column("df", Float),
        column("weight", Float),
        column("base", Float),
        column("slope", Float),
    )
    return query, weighted


@lru_cache(maxsize=256)
def _static_scored(shape: _Shape) -> TextualSelect:
    """:func:`_scored` of ``shape``, rendered to SQL once and kept as text.

    Building the scoring part (the MaxScore statement above all) as SQLAlchemy elements costs
    milliseconds of Python on every query, and none of it depends on the text: it reads the
    query's terms and statistics from the ``<prefix>_query`` / ``<prefix>_terms`` CTEs by
    name. Rendered against stand-ins of those CTEs; the caller attaches the real ones
    (``add_cte``), which the statement then renders first. Only unfiltered postings qualify
    (statistics kept per distribution value filter them; a hybrid search's completion names
    its rows)."""
    query, weighted = _stand_ins(shape.prefix)
    postings = shape.postings
    return rendered_once(
        _scored(shape, query, weighted),
        [*(column(name, postings.c[name].type) for name in shape.names), column("score", Float)],
    )


@lru_cache(maxsize=256)
def _static_weighted(
    terms: Table, deltas: Table, prefix: str, k1: float, b: float
) -> TextualSelect:
    """:func:`_weighted` over every distribution value, rendered to SQL once: it reads the
    query's terms from the ``<prefix>_query`` CTE by name (see :func:`_static_scored`)."""
    query, weighted = _stand_ins(prefix)
    return rendered_once(
        _weighted(terms, deltas, query, lambda side: [], prefix, k1, b),
        [weighted.c[name] for name in ("term", "df", "weight", "base", "slope")],
    )


def _statistics(
    tables: BM25Tables,
    text: str,
    language: str,
    scoped: Callable[[Table], list[ColumnElement[bool]]],
    prefix: str,
    k1: float,
    b: float,
) -> tuple[Any, Any]:
    """The CTEs of the query's terms (``term``, ``qtf``) and of their statistics, named
    ``<prefix>_query`` / ``<prefix>_terms`` (see :func:`_weighted`). Only the first carries
    the text; the second is SQL rendered once, unless the statistics are those of the
    distribution values a filter names."""
    query = query_terms(text, language).cte(f"{prefix}_query").prefix_with("MATERIALIZED")
    statistics: Select[Any] | TextualSelect
    if scoped(tables.terms):
        statistics = _weighted(tables.terms, tables.deltas, query, scoped, prefix, k1, b)
    else:
        statistics = _static_weighted(tables.terms, tables.deltas, prefix, k1, b).add_cte(query)
    weighted = statistics.cte(f"{prefix}_terms").prefix_with("MATERIALIZED")
    return query, weighted


def _weighted(
    terms: Table,
    deltas: Table,
    query: Any,
    scoped: Callable[[Table], list[ColumnElement[bool]]],
    prefix: str,
    k1: float,
    b: float,
) -> Select[Any]:
    """``term``, ``df`` and a posting's contribution ``weight tf / (tf + base + slope dl)``
    for each of ``query``'s terms, as ``weight = qtf idf (k1 + 1)``, ``base = k1 (1 - b)``,
    ``slope = k1 b / avgdl``. ``weight`` also bounds it."""
    wanted = select(query.c.term).union_all(select(literal_column("''", Text)))
    counts = union_all(
        select(terms.c.term, terms.c.df, terms.c.length).where(
            terms.c.term.in_(wanted), *scoped(terms)
        ),
        select(deltas.c.term, deltas.c.df, deltas.c.length).where(
            deltas.c.term.in_(wanted), *scoped(deltas)
        ),
    ).subquery(f"{prefix}_counts")
    totals = (
        select(
            counts.c.term,
            cast(pg.sum(counts.c.df), Float).label("df"),
            cast(pg.sum(counts.c.length), Float).label("length"),
        )
        .group_by(counts.c.term)
        .cte(f"{prefix}_totals")
        .prefix_with("MATERIALIZED")
    )
    collection = (
        select(
            totals.c.df.label("n"),
            func.coalesce(
                totals.c.length / func.nullif(totals.c.df, _constant(0.0), type_=Float),
                _constant(1.0),
            ).label("avgdl"),
        )
        .where(totals.c.term == literal_column("''", Text))
        .subquery(f"{prefix}_collection")
    )
    idf = pg.ln(
        _constant(1.0)
        + (collection.c.n - totals.c.df + _constant(0.5)) / (totals.c.df + _constant(0.5))
    )
    return (
        select(
            totals.c.term,
            totals.c.df,
            (idf * query.c.qtf * _constant(k1 + 1.0)).label("weight"),
            _constant(k1 * (1.0 - b)).label("base"),
            (_constant(k1 * b) / collection.c.avgdl).label("slope"),
        )
        .select_from(totals.join(collection, true()).join(query, query.c.term == totals.c.term))
        .where(totals.c.term != literal_column("''", Text), totals.c.df > _constant(0.0))
    )


@dataclass(frozen=True)
class BM25Arm:
    """The BM25 lexical arm of :func:`vecorm.search.hybrid.hybrid_search` (the default)::

        hybrid_search(Document, "statin myopathy", lexical=BM25Arm(k1=1.2, b=0.75))

    ``k1`` / ``b`` / ``prune_above`` / ``seed`` default to the model's :class:`~vecorm.BM25`.
    """

    mode: Mode = "any"
    k1: float | None = None
    b: float | None = None
    prune_above: int | Literal["config"] | None = "config"
    seed: int | None = None

    def candidates(
        self, model: Any, text: str, *, where: Sequence[ColumnElement[bool]], depth: int
    ) -> Select[Any]:
        """``pk_0 .., score`` of the ``depth`` best BM25 matches under ``where``."""
        return scores(
            model,
            text,
            mode=self.mode,
            where=where,
            depth=depth,
            k1=self.k1,
            b=self.b,
            prune_above=self.prune_above,
            seed=self.seed,
        )

    def scores_of(
        self,
        model: Any,
        text: str,
        *,
        keys: Select[Any],
        where: Sequence[ColumnElement[bool]] = (),
    ) -> Select[Any]:
        """``pk_0 .., score`` of the rows in ``keys`` that match ``text`` (the others score 0),
        with the statistics :meth:`candidates` used under the same ``where`` (which matters
        only to statistics kept per distribution value: the rows in ``keys`` meet it)."""
        return scores(
            model,
            text,
            mode=self.mode,
            where=where if side_tables(model).distributed_by else (),
            k1=self.k1,
            b=self.b,
            only=keys,
            prefix="bm25_fill",
        )


def _max_score(
    postings: Table,
    weighted: Any,
    names: Sequence[str],
    term_score: ColumnElement[Any],
    contribution: Callable[[Any, Any], ColumnElement[Any]],
    *,
    seed: int,
    depth: int,
    prefix: str = "bm25",
) -> tuple[Select[Any], ColumnElement[bool]]:
    """Exact top-``depth`` without scoring every posting (MaxScore, Turtle & Flood 1995).

    1. A first threshold: the ``depth``-th best single-term contribution among each term's
       ``seed`` best postings (by stored impact); a score is at least any of its terms'
       contributions, so the true ``depth``-th score is at least that high.
    2. A term's contribution never exceeds its ``weight``, ``idf * (k1 + 1)``. Terms
       (cheapest bound first) whose bounds together stay under :data:`OPTIONAL_SHARE` of
       the threshold are *optional*: their postings are never read. The others' postings
       are summed per document (the *partial* score), and the threshold rises to the
       ``depth``-th partial.
    3. Documents whose partial plus the optional bounds reaches it are the candidates; each
       is probed through the (document, term) index for the optional term of largest bound,
       and narrowed again; those whose upper end can still reach the ``depth``-th partial
       are probed for the other optional terms, which completes their scores.

    The stored impact only picks the seeds, so the result is exact whatever it holds. The
    second statement returned is true when some term is optional (else the caller scores
    every posting: MaxScore would read them all anyway).
    """

    key_columns = _keys(postings, names)
    best = (
        select(*key_columns, postings.c.tf, postings.c.dl)
        .where(postings.c.term == weighted.c.term)
        .order_by(postings.c.impact.desc())
        .limit(_integer(seed))
        .lateral(f"{prefix}_best")
    )
    # A score is at least any one of its terms' contributions: no probe needed.
    seeded = (
        select(pg.max(contribution(best.c.tf, best.c.dl)).label("score"))
        .select_from(weighted.join(best, true()))
        .group_by(*(best.c[name] for name in names))
        .subquery(f"{prefix}_seeded")
    )

    def probe(candidates: Any, terms: Any) -> Any:
        # One index probe per (candidate, term); LIMIT 1 keeps the planner from turning the
        # probes into a scan of every posting of the terms.
        return (
            select(postings.c.tf, postings.c.dl)
            .where(
                postings.c.term == terms.c.term,
                *(postings.c[name] == candidates.c[name] for name in names),
            )
            .limit(_integer(1))
            .correlate_except(postings)
            .lateral(f"{prefix}_probe")
        )

    def optional_part(rows: Any, terms: Any, name: str) -> Any:
        """``part``: the exact contribution of ``terms`` to each row of ``rows``."""
        found = probe(rows, terms)
        joined = (
            terms if terms is weighted else terms.join(weighted, weighted.c.term == terms.c.term)
        )
        return (
            select(pg.sum(contribution(found.c.tf, found.c.dl)).label("part"))
            .select_from(joined.join(found, true()))
            .lateral(name)
        )

    def kth(scored: Any, column: str) -> ColumnElement[Any]:
        """The ``depth``-th largest ``column`` of ``scored`` (0 when there are fewer)."""
        return func.coalesce(
            select(scored.c[column])
            .order_by(scored.c[column].desc())
            .offset(_integer(depth - 1))
            .limit(_integer(1))
            .scalar_subquery(),
            _constant(0.0),
        )

    first = select(kth(seeded, "score").label("score")).cte(f"{prefix}_seed_threshold")
    first = first.prefix_with("MATERIALIZED")
    # A hair under the threshold: the sums are exact (whole units of 1 / SCORE_SCALE), but
    # the bounds come from the weights, not from the rounded contributions, and a term
    # wrongly made optional would lose documents (a wrongly essential one costs time).
    slack = _constant(1.0 - 1e-9)
    # A contribution never exceeds the weight; rounded to the scale, by at most one unit.
    bound = weighted.c.weight * _constant(SCORE_SCALE) + _constant(1.0)
    cumulative = pg.sum(bound).over(order_by=(bound, weighted.c.term))
    bounds = (
        select(
            weighted.c.term,
            bound.label("bound"),
            (
                cumulative < select(first.c.score).scalar_subquery() * _constant(OPTIONAL_SHARE)
            ).label("optional"),
        )
        .cte(f"{prefix}_bounds")
        .prefix_with("MATERIALIZED")
    )
    optional_bound = func.coalesce(
        select(pg.sum(bounds.c.bound)).where(bounds.c.optional).scalar_subquery(),
        _constant(0.0),
    )
    partials = (
        select(*key_columns, pg.sum(term_score).label("partial"))
        .select_from(weighted.join(postings, postings.c.term == weighted.c.term))
        .where(weighted.c.term.not_in(select(bounds.c.term).where(bounds.c.optional)))
        .group_by(*key_columns)
        .cte(f"{prefix}_partials")
        .prefix_with("MATERIALIZED")
    )
    threshold = (
        select(
            func.greatest(select(first.c.score).scalar_subquery(), kth(partials, "partial")).label(
                "score"
            )
        )
        .cte(f"{prefix}_threshold")
        .prefix_with("MATERIALIZED")
    )
    floor = select(threshold.c.score).scalar_subquery() * slack
    candidates = (
        select(*(partials.c[name] for name in names), partials.c.partial)
        .where(partials.c.partial + optional_bound >= floor)
        .cte(f"{prefix}_candidates")
        .prefix_with("MATERIALIZED")
    )
    # The optional term of largest bound, then the others, each probed per candidate.
    largest = (
        select(bounds.c.term, bounds.c.bound)
        .where(bounds.c.optional)
        .order_by(bounds.c.bound.desc(), bounds.c.term)
        .limit(_integer(1))
        .cte(f"{prefix}_largest")
        .prefix_with("MATERIALIZED")
    )

    first_part = optional_part(candidates, largest, f"{prefix}_first")
    first_value = func.coalesce(first_part.c.part, _constant(0.0))
    largest_bound = func.coalesce(select(largest.c.bound).scalar_subquery(), _constant(0.0))
    narrowed = (
        select(
            *(candidates.c[name] for name in names),
            (candidates.c.partial + first_value).label("partial"),
        )
        .select_from(candidates.join(first_part, true()))
        .where(candidates.c.partial + first_value + optional_bound - largest_bound >= floor)
        .cte(f"{prefix}_narrowed")
        .prefix_with("MATERIALIZED")
    )
    # A survivor's score lies between its partial and its partial plus the other optional
    # bounds (those of the cheapest words): only survivors whose upper end reaches the
    # ``depth``-th partial can be among the best. Their partial already holds every term but
    # those other optional ones, which are probed now. Contributions are whole units of
    # 1 / SCORE_SCALE, so these sums are exact in any order: a finalist's score is the very
    # number scoring every posting gives, and ties break by key exactly as they do there.
    rest_bound = optional_bound - largest_bound
    finalists = (
        select(*(narrowed.c[name] for name in names), narrowed.c.partial)
        .where(narrowed.c.partial + rest_bound >= kth(narrowed, "partial") * slack)
        .cte(f"{prefix}_finalists")
        .prefix_with("MATERIALIZED")
    )
    rest = (
        select(bounds.c.term)
        .where(bounds.c.optional, bounds.c.term.not_in(select(largest.c.term)))
        .cte(f"{prefix}_rest")
        .prefix_with("MATERIALIZED")
    )
    rescored = optional_part(finalists, rest, f"{prefix}_rescored")
    pruning = select(bounds.c.term).where(bounds.c.optional).exists()
    return (
        select(
            *(finalists.c[name].label(name) for name in names),
            (finalists.c.partial + func.coalesce(rescored.c.part, _constant(0.0))).label("score"),
        ).select_from(finalists.join(rescored, true())),
        pruning,
    )
