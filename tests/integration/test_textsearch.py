"""Full-text search: parsing modes, ranking, hostile input and the GIN index."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import String, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.search.text import TsRankArm, text_search
from vecorm.search.tsquery import tsquery_expression
from vecorm.testing.assertions import assert_index_used


class Base(DeclarativeBase):
    pass


class Article(vecorm.Searchable, Base):
    __tablename__ = "articles"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"), dimensions=4, index=None, weights={"title": "A", "body": "D"}
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str]


ARTICLES = [
    (1, "Windows update", "Update failed with error 0x80070057 while installing."),
    (2, "Windows update", "Update failed with error 0x80070005: access denied."),
    (3, "Connection resets", "The client logged ERR_CONN_RESET after the proxy restarted."),
    (4, "Vacuum tuning", "Autovacuum keeps table bloat low; tune the cost limit."),
    (5, "Vacuum", "Manual vacuum full rewrites the table and locks it."),
    (6, "Replication lag", "Streaming replication lags when the standby replays slowly."),
    (7, "Notes", "The quick brown fox jumps over the lazy dog."),
]


@pytest.fixture
def session(vecorm_engine: Engine) -> Iterator[Session]:
    Base.metadata.create_all(vecorm_engine)
    with Session(vecorm_engine) as setup, setup.begin():
        setup.add_all(Article(id=i, title=t, body=b) for i, t, b in ARTICLES)
    with Session(vecorm_engine) as session:
        yield session


def ids(session: Session, stmt: object) -> list[int]:
    return [row[0].id for row in session.execute(stmt)]  # type: ignore[call-overload]


def test_any_term_is_the_default_and_ranks_more_matches_higher(session: Session) -> None:
    # AND semantics would need every word in one row; none has "autovacuum" and "replication".
    assert ids(session, Article.text_search("autovacuum replication", mode="all")) == []
    found = ids(session, Article.text_search("autovacuum replication"))
    assert sorted(found) == [4, 6]
    # "vacuum" in the title (weight A) beats "vacuum" only in the body (D); 4 has "autovacuum"
    # and "table", so "vacuum table" ranks 5 (both words, title match) first.
    assert ids(session, Article.text_search("vacuum table"))[0] == 5
    rows = session.execute(Article.text_search("vacuum table")).all()
    scores = [score for _, score in rows]
    assert scores == sorted(scores, reverse=True) and all(score > 0 for score in scores)


def test_identifiers_and_error_codes_match_exactly(session: Session) -> None:
    assert ids(session, Article.text_search("error 0x80070057", mode="all")) == [1]
    assert ids(session, Article.text_search("error 0x80070057"))[0] == 1
    # The default parser splits ERR_CONN_RESET at underscores, like the query text.
    assert ids(session, Article.text_search("ERR_CONN_RESET", mode="all")) == [3]


def test_phrase_and_websearch_modes(session: Session) -> None:
    assert ids(session, Article.text_search("table bloat", mode="phrase")) == [4]
    assert ids(session, Article.text_search("bloat table", mode="phrase")) == []
    assert ids(session, Article.text_search('"access denied"', mode="websearch")) == [2]
    assert sorted(ids(session, Article.text_search("update -denied", mode="websearch"))) == [1]
    assert sorted(ids(session, Article.text_search("vacuum or lag", mode="websearch"))) == [4, 5, 6]


def test_ranking_options(session: Session) -> None:
    default = session.execute(Article.text_search("vacuum table")).all()
    ts_rank = session.execute(Article.text_search("vacuum table", ranking="ts_rank")).all()
    cover = session.execute(Article.text_search("vacuum table", ranking="ts_rank_cd")).all()
    assert {a.id for a, _ in default} == {a.id for a, _ in cover} == {a.id for a, _ in ts_rank}
    # Body-only weights: the title no longer counts, so 4 ("table" twice in body) can lead.
    flat = session.execute(
        text_search(
            Article,
            "vacuum table",
            ranking="ts_rank",
            weights={"A": 0.0, "D": 1.0},
            normalization=0,
        )
    ).all()
    reference = session.execute(
        select(
            Article.id,
            func.ts_rank(
                text("'{1,0.2,0.4,0}'::real[]"),
                Article.search_vector,
                text(
                    "replace(plainto_tsquery('english', 'vacuum table')::text, ' & ', ' | ')"
                    "::tsquery"
                ),
                0,
            ),
        ).where(Article.id.in_([a.id for a, _ in flat]))
    ).all()
    by_id = dict(reference)
    for article, score in flat:
        assert score == pytest.approx(by_id[article.id])
    with pytest.raises(vecorm.ConfigurationError):
        Article.text_search("x", ranking="okapi")
    with pytest.raises(vecorm.ConfigurationError, match="ranking='ts_rank'"):
        Article.text_search("x", weights={"A": 1.0})  # label weights are a ts_rank option
    with pytest.raises(vecorm.ConfigurationError):
        Article.text_search("x", mode="fuzzy")
    with pytest.raises(vecorm.ConfigurationError):
        Article.text_search("x", ranking="ts_rank", weights={"E": 1.0})
    with pytest.raises(vecorm.ConfigurationError):
        Article.text_search("x", ranking="ts_rank", normalization=64)


def test_empty_or_stop_word_text_finds_nothing(session: Session) -> None:
    for mode in ("any", "all", "phrase", "websearch"):
        for search in ("", "   ", "the and of", "!!!", "&|()", "'\"", "\\", "\x00"):
            assert ids(session, Article.text_search(search, mode=mode)) == [], (mode, search)  # type: ignore[arg-type]


HOSTILE = st.lists(
    st.one_of(
        st.sampled_from([*list("&|!():*'\"\\;-<>@%$_ "), "--", "/*", "*/", "\x00", "<->", "<2>"]),
        st.sampled_from(["update", "vacuum", "0x80070057", "DROP", "TABLE", "articles", "or"]),
        st.text(max_size=4),
    ),
    max_size=12,
).map("".join)


def test_hostile_text_never_errors_or_injects(session: Session) -> None:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(search=HOSTILE, mode=st.sampled_from(["any", "all", "phrase", "websearch"]))
    def check(search: str, mode: str) -> None:
        rows = session.execute(Article.text_search(search, k=20, mode=mode)).all()  # type: ignore[arg-type]
        assert {article.id for article, _ in rows} <= {i for i, _, _ in ARTICLES}
        assert all(score >= 0 for _, score in rows)

    check()
    for attack in ["'; DROP TABLE articles; --", "x') OR 1=1 --", "$$; DELETE FROM articles"]:
        session.execute(Article.text_search(attack)).all()
    session.commit()
    assert session.scalar(select(func.count()).select_from(Article)) == len(ARTICLES)


def test_tsquery_expression_is_bound_not_interpolated() -> None:
    from sqlalchemy.dialects import postgresql

    compiled = tsquery_expression("x'; DROP TABLE t; --", mode="any").compile(
        dialect=postgresql.dialect()  # type: ignore[no-untyped-call]
    )
    assert "DROP" not in str(compiled)
    assert "x'; DROP TABLE t; --" in compiled.params.values()


def test_explain_uses_the_gin_index(session: Session) -> None:
    # Seven rows: the planner would read the table; disable that to see the GIN path.
    # (BM25, the default ranking, reads its postings instead: tests/integration/test_bm25.py.)
    session.execute(text("SET LOCAL enable_seqscan = off"))
    for mode in ("any", "all", "websearch"):
        assert_index_used(
            session,
            Article.text_search("vacuum table", mode=mode, ranking="ts_rank"),
            "ix_articles_search_vector_gin",
        )


def test_lexical_arm_selects_keys_and_scores_best_first(session: Session) -> None:
    arm = TsRankArm()
    stmt = arm.candidates(Article, "vacuum update", where=[Article.id != 5], depth=2)
    rows = session.execute(stmt).all()
    assert next(row._fields for row in rows) == ("pk_0", "score")
    assert len(rows) == 2 and 5 not in [row.pk_0 for row in rows]
    assert rows[0].score >= rows[1].score
