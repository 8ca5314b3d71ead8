"""Snippets (``ts_headline``) on real PostgreSQL: the query's words marked, HTML-safe by
default, added as a column to text, hybrid and nearest searches."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm.search.headline import headline

DIMS = 16


class Base(DeclarativeBase):
    pass


class Page(vecorm.Searchable, Base):
    __tablename__ = "pages"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"), dimensions=DIMS, embedder=vecorm.HashingEmbedder(DIMS)
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]


BODY = (
    "Autovacuum & friends keep \x02dead tuples\x03 in check (1 < 2). <script>alert('x')</script> "
    "Tuning autovacuum means lowering the scale factor on big tables."
)


def _vector(text: str) -> object:
    return vecorm.HashingEmbedder(DIMS).embed([text])[0]


@pytest.fixture
def session(vecorm_engine: Engine) -> Iterator[Session]:
    Base.metadata.create_all(vecorm_engine)
    with Session(vecorm_engine) as session:
        session.add_all(
            [
                Page(id=1, title="Vacuum notes", body=BODY, embedding=_vector("vacuum")),
                Page(
                    id=2,
                    title="Replication",
                    body="Streaming replicas and slots.",
                    embedding=_vector("replicas"),
                ),
            ]
        )
        session.commit()
        yield session


def test_marked_words_in_an_escaped_excerpt(session: Session) -> None:
    column = Page.snippet("tuning autovacuum", "body", max_words=60)
    snippet = session.scalar(select(column).where(Page.id == 1))
    assert snippet is not None
    assert "<mark>Autovacuum</mark>" in snippet and "<mark>autovacuum</mark>" in snippet
    assert "<mark>Tuning</mark>" in snippet
    # PostgreSQL's parser drops the document's tags; what is left is text, escaped (quotes,
    # "<", "&"), and its control characters are not taken for marks.
    assert "alert(&#x27;x&#x27;)" in snippet and "<script>" not in snippet
    assert "1 &lt; 2" in snippet and "&amp;" in snippet
    assert "keep dead tuples in check" in snippet and "\x02" not in snippet


def test_plain_excerpt_with_your_own_marks(session: Session) -> None:
    column = headline(Page, "replicas", "body", html=False, start="[", stop="]")
    assert session.scalar(select(column).where(Page.id == 2)) == "Streaming [replicas] and slots."


def test_default_field_is_the_searchable_text_and_it_composes(session: Session) -> None:
    query = "vacuum"
    rows = session.execute(
        Page.text_search(query, k=5).add_columns(Page.snippet(query, max_words=8, min_words=3))
    ).all()
    assert [row[0].id for row in rows] == [1]
    assert "<mark>Vacuum</mark> notes" in rows[0].snippet  # the title is part of the text
    hybrid = session.execute(
        Page.hybrid_search("streaming slots", k=2).add_columns(Page.snippet("streaming slots"))
    ).all()
    marked = {row[0].id: row.snippet for row in hybrid}
    assert marked[2] == "Replication <mark>Streaming</mark> replicas and <mark>slots</mark>."
    nearest = session.execute(
        Page.nearest("replicas", k=1).add_columns(Page.snippet("replicas", label="excerpt"))
    ).all()
    assert "excerpt" in nearest[0]._fields


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"field": "missing"}, "has no field 'missing'"),
        ({"max_words": 5, "min_words": 5}, r"min_words \(5\) must be smaller"),
        ({"max_fragments": -1}, "MaxFragments must be an integer >= 0"),
        ({"html": False, "start": 'say "hi"'}, "cannot contain a double quote"),
    ],
)
def test_bad_options_are_refused_before_sql(options: dict[str, object], message: str) -> None:
    with pytest.raises(vecorm.ConfigurationError, match=message):
        headline(Page, "vacuum", **options)  # type: ignore[arg-type]
