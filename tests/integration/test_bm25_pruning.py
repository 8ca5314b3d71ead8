"""MaxScore pruning (``BM25(prune_above=...)``) returns exactly what scoring every posting
returns: the same rows in the same order (ties at the k-th score included), the same scores
(sums of whole units of 2^-36, exact in any order), while never reading the postings of a
word in every document."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import URL, String, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from tests.integration.driver_matrix import DRIVERS, driver_database
from vecorm import bm25
from vecorm.schema.config import BM25
from vecorm.search.bm25 import BM25Arm

DIMS = 8
EMBEDDER = vecorm.HashingEmbedder(dimensions=DIMS)


class Base(DeclarativeBase):
    pass


class Article(vecorm.Searchable, Base):
    __tablename__ = "articles"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=DIMS, embedder=EMBEDDER, index=None, bm25=BM25()
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    category: Mapped[str] = mapped_column(String(10))


# Made-up words that no English stemmer or stop list touches.
WORDS = [f"w{letter}{digit}x" for letter in "bdfgkmnprst" for digit in "aeiou"][:40]
EVERYWHERE = "zorbax"  # in every document: its idf is ~0.001
TIED = "quokkax"  # in the identical documents only


def bodies(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(WORDS) + 1) ** 1.1
    weights /= weights.sum()
    found = []
    for _ in range(count):
        picks = rng.choice(len(WORDS), size=int(rng.integers(3, 25)), p=weights)
        words = [WORDS[i] for i in picks] + [EVERYWHERE] * int(rng.integers(1, 4))
        rng.shuffle(words)
        found.append(" ".join(words))
    # Identical documents: equal scores, so the k-th score is shared by many rows.
    found += [f"{TIED} {WORDS[0]} {WORDS[7]} {EVERYWHERE}"] * 25
    return found


@pytest.fixture
def session(vecorm_engine: Engine) -> Iterator[Session]:
    Base.metadata.create_all(vecorm_engine)
    texts = bodies(400)
    vectors = EMBEDDER.embed(texts)
    with Session(vecorm_engine) as setup, setup.begin():
        setup.execute(
            insert(Article),
            [
                {"id": i + 1, "body": body, "category": "ab"[i % 2], "embedding": vector}
                for i, (body, vector) in enumerate(zip(texts, vectors, strict=True))
            ],
        )
    with Session(vecorm_engine) as session:
        yield session


def both(session: Session, query: str, **options: Any) -> tuple[list[Any], list[Any]]:
    """(pruned, exhaustive) rows of the same search."""
    pruned = session.execute(bm25.scores(Article, query, prune_above=1, **options)).all()
    exhaustive = session.execute(bm25.scores(Article, query, prune_above=None, **options)).all()
    return [tuple(row) for row in pruned], [tuple(row) for row in exhaustive]


def assert_same(pruned: list[Any], exhaustive: list[Any], message: object = None) -> None:
    assert [row[:-1] for row in pruned] == [row[:-1] for row in exhaustive], message
    assert [row[-1] for row in pruned] == pytest.approx(
        [row[-1] for row in exhaustive], rel=1e-12, abs=1e-15
    ), message


def postings_read(session: Session, query: str, **options: Any) -> int:
    """How many postings the statement read through the (lexeme, impact) index."""
    stmt = bm25.scores(Article, query, **options)
    sql = str(stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
    # A table this small is read sequentially otherwise; at scale the index is the plan.
    session.execute(text("SET LOCAL enable_seqscan = off"))
    session.execute(text("SET LOCAL enable_bitmapscan = off"))
    plan = session.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")).scalar_one()
    plan = json.loads(plan) if isinstance(plan, str) else plan

    def walk(node: dict[str, Any]) -> int:
        own = 0
        if node.get("Index Name") == "ix_articles_bm25_postings_impact":
            own = int(node["Actual Rows"] * node["Actual Loops"])
        return own + sum(walk(child) for child in node.get("Plans", []))

    return walk(plan[0]["Plan"])


QUERIES = [
    f"{EVERYWHERE} {WORDS[12]}",  # a word in every document and a rarer one
    f"{EVERYWHERE} {WORDS[0]} {WORDS[25]} {WORDS[33]}",
    f"{WORDS[0]} {WORDS[1]} {WORDS[2]}",  # the commonest words after it
    f"{EVERYWHERE} {EVERYWHERE} {WORDS[3]} {WORDS[3]}",  # repeated query words
    f"{TIED} {EVERYWHERE}",  # ties at the k-th score
    f"{TIED} {WORDS[0]} {WORDS[7]} {EVERYWHERE}",
    EVERYWHERE,  # a single word in every document
    f"{WORDS[39]} nosuchwordx",
]


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("depth", [1, 5, 10, 24, 100, 10_000])
def test_pruned_rows_are_the_exhaustive_rows(session: Session, query: str, depth: int) -> None:
    pruned, exhaustive = both(session, query, depth=depth)
    assert_same(pruned, exhaustive)
    if depth == 10_000:  # more than match: every matching document, nothing else
        assert len(exhaustive) == len({row[0] for row in exhaustive}) > 0 or "nosuch" in query


@pytest.mark.parametrize("depth", [3, 10, 24, 25, 26, 40])
def test_ties_at_the_kth_score_break_by_key_as_without_pruning(
    session: Session, depth: int
) -> None:
    pruned, exhaustive = both(session, f"{TIED} {EVERYWHERE}", depth=depth)
    assert_same(pruned, exhaustive)
    tied = [row for row in exhaustive if row[1] == exhaustive[0][1]]
    assert len(tied) == min(depth, 25)  # the identical documents tie, lowest keys first
    assert [row[0] for row in tied] == sorted(row[0] for row in tied)


def test_a_word_in_every_document_is_never_scanned(session: Session) -> None:
    query = f"{EVERYWHERE} {WORDS[12]}"
    everywhere = session.scalar(
        text("SELECT count(*) FROM articles_bm25_postings WHERE term = :term"), {"term": EVERYWHERE}
    )
    assert everywhere == 425
    scanned = postings_read(session, query, depth=10, prune_above=None)
    pruned = postings_read(session, query, depth=10, prune_above=1)
    assert scanned > everywhere
    # The seed postings of each word, then the rarer word's postings: not the common word's.
    assert pruned < scanned - everywhere + 2 * 100


def test_pruning_is_exact_for_any_query(session: Session) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    # Found by this test: two documents tied at the k-th place through different words of
    # equal frequency, whose float sums differed in the last bit by the order of addition.
    @example(words=["wbax", "wbax", "wkix", "wnox", EVERYWHERE], depth=3, seed=1, k1=0.0, b=None)
    @given(
        words=st.lists(st.sampled_from([*WORDS, EVERYWHERE, TIED]), min_size=1, max_size=5),
        depth=st.integers(1, 60),
        seed=st.sampled_from([1, 3, 100]),
        k1=st.sampled_from([None, 0.0, 1.2]),
        b=st.sampled_from([None, 0.0, 1.0]),
    )
    def check(words: list[str], depth: int, seed: int, k1: float | None, b: float | None) -> None:
        query = " ".join(words)
        pruned, exhaustive = both(session, query, depth=depth, seed=seed, k1=k1, b=b)
        assert_same(pruned, exhaustive, query)

    check()


def test_scores_equal_in_exact_arithmetic_are_equal_whatever_the_order_of_addition(
    session: Session,
) -> None:
    # With k1 = 0 a word contributes its weight whatever its tf: documents 2 and 4 score the
    # same through "wkix" and "wnox" (equal document frequencies), their words added in
    # another order; both tie at the third place with other documents.
    query = "wbax wbax wkix wnox zorbax"
    everything = session.execute(
        bm25.scores(Article, query, depth=500, k1=0.0, prune_above=None)
    ).all()
    score = {row[0]: row[-1] for row in everything}
    assert score[2] == score[4]  # bit for bit
    third = sorted(set(score.values()), reverse=True)[1]
    tied = sorted(key for key, value in score.items() if value == third)
    assert len(tied) > 2 and [row[0] for row in everything[2 : 2 + len(tied)]] == tied
    for prune_above in (1, None):  # MaxScore adds a finalist's parts in another order
        top = session.execute(
            bm25.scores(Article, query, depth=3, seed=1, k1=0.0, prune_above=prune_above)
        ).all()
        assert [row[0] for row in top[2:]] == tied[:1], prune_above


@pytest.mark.parametrize("prune_above", [1, None])
def test_pages_of_tied_results_never_lose_or_repeat_a_row(
    session: Session, prune_above: int | None
) -> None:
    # With k1 = 0 many documents tie through different words of equal frequency; each page
    # is its own statement (another LIMIT, another plan), and together the pages are the
    # ranking read at once, in key order at each tie.
    query = "wbax wbax wkix wnox zorbax"
    whole = session.execute(bm25.scores(Article, query, depth=60, k1=0.0, prune_above=None)).all()
    paged: list[int] = []
    for size in range(3, 58, 3):
        page = session.execute(
            bm25.scores(Article, query, depth=size, seed=1, k1=0.0, prune_above=prune_above)
        ).all()
        paged += [row[0] for row in page[len(paged) :]]
    assert paged == [row[0] for row in whole[: len(paged)]]
    assert len(set(paged)) == len(paged) == 57


@pytest.mark.parametrize("mode", ["any", "all", "phrase", "websearch"])
def test_filters_and_modes_rank_as_without_pruning(session: Session, mode: str) -> None:
    query = f"{EVERYWHERE} {WORDS[0]} {WORDS[4]}"
    if mode == "phrase":
        query = f'"{WORDS[0]} {EVERYWHERE}"'
    for where in ([], [Article.category == "a"], [Article.id > 200]):
        pruned, exhaustive = both(session, query, depth=15, mode=mode, where=where)
        assert_same(pruned, exhaustive, (mode, where))
        assert pruned or mode == "phrase"


def test_the_hybrid_lexical_arm_prunes_exactly(session: Session) -> None:
    query = f"{EVERYWHERE} {WORDS[2]} {WORDS[30]}"
    pruned_arm, exhaustive_arm = BM25Arm(prune_above=1), BM25Arm(prune_above=None)
    for where in ([], [Article.category == "b"]):
        pruned = session.execute(pruned_arm.candidates(Article, query, where=where, depth=20))
        exhaustive = session.execute(
            exhaustive_arm.candidates(Article, query, where=where, depth=20)
        )
        assert_same([tuple(row) for row in pruned], [tuple(row) for row in exhaustive])
    searches = [
        session.execute(
            Article.hybrid_search(query, k=15, depth=20, lexical=arm)  # type: ignore[attr-defined]
        ).all()
        for arm in (pruned_arm, exhaustive_arm)
    ]
    pruned_rows, exhaustive_rows = (
        [(row[0].id, row.text_rank, row.score) for row in rows] for rows in searches
    )
    assert_same(pruned_rows, exhaustive_rows)
    assert any(rank is not None for _, rank, _ in pruned_rows)


@pytest.mark.parametrize("prune_above", [1, None])
def test_the_scoring_sql_rendered_once_ranks_each_text_as_a_built_statement(
    session: Session, prune_above: int | None
) -> None:
    """The scoring part is SQL rendered once per shape and shared by every text (only the
    statistics CTEs carry the text); each text still gets its own rows, those of the statement
    built element by element (``only=``, which scores the rows it names)."""
    every_row = select(Article.id)
    for query in QUERIES:
        shared = session.execute(bm25.scores(Article, query, depth=10, prune_above=prune_above))
        built = session.execute(bm25.scores(Article, query, only=every_row)).all()[:10]
        assert_same([tuple(row) for row in shared], [tuple(row) for row in built], query)


def test_two_texts_send_the_same_sql_with_their_own_text(session: Session) -> None:
    first, second = (
        bm25.scores(Article, query, depth=10, prune_above=1).compile(session.get_bind())
        for query in (WORDS[0], f"{WORDS[1]} {WORDS[2]}")
    )
    assert first.string == second.string
    assert "bm25_seed_threshold" in first.string  # the MaxScore statement
    assert WORDS[0] in first.params.values()
    assert f"{WORDS[1]} {WORDS[2]}" in second.params.values()


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_driver_ranks_as_psycopg(session: Session, driver: str, vecorm_url: URL) -> None:
    """The SQL rendered once runs the same through psycopg 2, asyncpg and psycopg's async
    API (each binds the text its own way), pruned and not, and in a hybrid search."""
    query = f"{EVERYWHERE} {WORDS[0]} {WORDS[4]}"

    def ranked(target: Session) -> list[Any]:
        return [
            [tuple(row) for row in target.execute(bm25.scores(Article, query, depth=12, **kw))]
            for kw in ({"prune_above": 1}, {"prune_above": None})
        ] + [
            [
                (row[0].id, row.score)
                for row in target.execute(Article.hybrid_search(query, k=8))  # type: ignore[attr-defined]
            ]
        ]

    expected = ranked(session)
    with driver_database(driver, vecorm_url) as db:
        found = db.session(ranked)
    for mine, theirs in zip(found, expected, strict=True):
        assert_same(mine, theirs, driver)
    assert expected[0]
