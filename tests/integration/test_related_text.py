"""Text from related rows (``SearchConfig(related=...)``) on real PostgreSQL: the flush embeds
it, a rename re-embeds exactly the rows that reference it, and SQL (backfill) composes the same
text and digest as Python."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import ForeignKey, Integer, String, event, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

import vecorm
from vecorm.embedding.adopt import adopt
from vecorm.embedding.backfill import backfill, columns_of, stale_condition, stale_count
from vecorm.embedding.embedders import HashingEmbedder
from vecorm.embedding.events import install, uninstall
from vecorm.embedding.notify import notify_trigger
from vecorm.embedding.reembed import ModelChange
from vecorm.embedding.source import join_text, text_digest
from vecorm.errors import ConfigurationError
from vecorm.scale.bulk_insert import bulk_insert
from vecorm.testing import FakeEmbedder

DIMS = 8
MODEL = f"vecorm-hashing-{DIMS}"


class Base(DeclarativeBase):
    pass


class Article(vecorm.Searchable, Base):
    """Declared before Author: the relationship names a class further down the module."""

    __tablename__ = "articles"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=DIMS,
        index=None,
        bm25=None,
        related={"author": ("name", "affiliation")},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str | None]
    body: Mapped[str | None]
    category: Mapped[str] = mapped_column(String(20), default="general")
    author_id: Mapped[int | None] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author | None] = relationship()


class Author(Base):
    __tablename__ = "authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None]
    affiliation: Mapped[str | None] = mapped_column(String(100))
    born: Mapped[int | None] = mapped_column(Integer)


class Section(vecorm.Searchable, Base):
    """A relationship to the model's own table: a section embeds its parent's heading."""

    __tablename__ = "sections"
    __vecorm__ = vecorm.SearchConfig(
        fields=("heading",), dimensions=DIMS, index=None, bm25=None, related={"parent": "heading"}
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    heading: Mapped[str]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("sections.id"))
    parent: Mapped[Section | None] = relationship(remote_side=[id])


class Broken:
    """A provider that is down."""

    dimensions = DIMS
    model_name = MODEL
    max_batch_size = 4

    def embed(self, texts: Any) -> Any:
        raise RuntimeError("provider down")


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    Base.metadata.create_all(vecorm_engine)
    return vecorm_engine


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(dimensions=DIMS, max_batch_size=4)


@pytest.fixture
def factory(engine: Engine, embedder: FakeEmbedder) -> Iterator[sessionmaker[Session]]:
    maker = sessionmaker(engine)
    install(maker, embedder=embedder)
    yield maker
    uninstall(maker)


def expected_text(engine: Engine) -> dict[int, str | None]:
    """id -> the text each article should embed, composed in Python from committed rows."""
    with Session(engine) as session:
        rows = session.execute(
            select(Article.id, Article.title, Article.body, Author.name, Author.affiliation)
            .outerjoin(Author, Article.author_id == Author.id)
            .order_by(Article.id)
        ).all()
    return {row[0]: join_text(row[1:]) for row in rows}


def assert_current(engine: Engine) -> None:
    """Every article holds the vector, digest and model of its present text."""
    texts = expected_text(engine)
    with Session(engine) as session:
        rows = session.execute(
            select(Article.id, Article.embedding, Article.embedding_digest, Article.embedding_model)
        ).all()
    assert len(rows) == len(texts)
    for row_id, vector, digest, model in rows:
        body = texts[row_id]
        if body is None:
            assert (vector, digest, model) == (None, None, None), row_id
            continue
        assert vector is not None, row_id
        np.testing.assert_allclose(vector, HashingEmbedder(DIMS).embed([body])[0], rtol=1e-6)
        assert digest == text_digest(body), row_id
        assert model == MODEL, row_id


def seed(factory: sessionmaker[Session]) -> None:
    """Ada: articles 1-3, Grace: 4-5, article 6 without author."""
    with factory() as session:
        ada = Author(id=1, name="Ada", affiliation="Analytical Society")
        grace = Author(id=2, name="Grace", affiliation=None)
        session.add_all([ada, grace])
        session.add_all(Article(id=i, title=f"t{i}", body="b", author=ada) for i in (1, 2, 3))
        session.add_all(Article(id=i, title=f"t{i}", body="b", author=grace) for i in (4, 5))
        session.add(Article(id=6, title="t6", body="b"))
        session.commit()


class Selects:
    def __init__(self, engine: Engine) -> None:
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.statements.append(statement)


def test_new_rows_embed_their_related_text(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    seed(factory)
    assert sorted(embedder.texts) == sorted(
        [f"t{i}\nb\nAda\nAnalytical Society" for i in (1, 2, 3)]
        + [f"t{i}\nb\nGrace" for i in (4, 5)]
        + ["t6\nb"]
    )
    assert_current(engine)


def test_authors_outside_the_session_are_read_in_one_query_not_lazy_loads(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    seed(factory)
    embedder.reset()
    selects = Selects(engine)
    with factory() as session:
        # by foreign key only: neither author is in this session
        session.add_all(Article(id=10 + i, title="new", author_id=1 + i % 2) for i in range(6))
        session.commit()
    # six rows, two distinct texts: one batch
    assert [sorted(batch) for batch in embedder.calls] == [
        ["new\nAda\nAnalytical Society", "new\nGrace"]
    ]
    assert len([s for s in selects.statements if "FROM authors" in s]) == 1
    assert_current(engine)


def test_a_new_author_referenced_by_key_and_a_vector_assigned_by_hand(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    vector = HashingEmbedder(DIMS).embed(["mine"])[0]
    with factory() as session:
        session.add(Author(id=9, name="Hedy"))
        session.add(Article(id=1, title="by key", author_id=9))  # the author is not flushed yet
        session.add(Article(id=2, title="own vector", author_id=9, embedding=vector))
        session.commit()
    assert embedder.texts == ["by key\nHedy"]
    with Session(engine) as session:
        kept = session.get_one(Article, 2)
        np.testing.assert_allclose(kept.embedding, vector)
        assert kept.embedding_digest == text_digest("own vector\nHedy")  # its present text
        assert stale_count(session, Article, embedder=embedder) == 0


def test_renaming_an_author_reembeds_exactly_its_rows_in_the_same_flush(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    seed(factory)
    embedder.reset()
    with factory() as session:
        ada = session.get(Author, 1)
        assert ada is not None
        ada.name = "Ada Lovelace"
        session.commit()
    assert sorted(embedder.texts) == [
        f"t{i}\nb\nAda Lovelace\nAnalytical Society" for i in (1, 2, 3)
    ]
    assert_current(engine)
    embedder.reset()
    with factory() as session:  # an attribute that is not embedded costs nothing
        ada = session.get(Author, 1)
        assert ada is not None
        ada.born = 1815
        session.commit()
    assert embedder.calls == []
    with Session(engine) as session:
        assert stale_count(session, Article, embedder=embedder) == 0


def test_a_rename_next_to_edits_of_the_same_rows_embeds_each_once(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    seed(factory)
    embedder.reset()
    with factory() as session:
        first = session.get(Article, 1)
        fourth = session.get(Article, 4)
        grace = session.get(Author, 2)
        assert first is not None and fourth is not None and grace is not None
        first.title = "edited"  # an own edit of a row the rename reaches too
        fourth.author_id = 1  # re-pointed by key away from the renamed author
        grace.affiliation = "Navy"
        session.commit()
    assert sorted(embedder.texts) == sorted(
        [
            "edited\nb\nAda\nAnalytical Society",
            "t4\nb\nAda\nAnalytical Society",
            "t5\nb\nGrace\nNavy",
        ]
    )
    assert_current(engine)


def test_repointing_and_clearing_the_relationship_reembeds(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    seed(factory)
    embedder.reset()
    with factory() as session:
        article = session.get(Article, 1)
        grace = session.get(Author, 2)
        assert article is not None
        article.author = grace
        session.commit()
    assert embedder.texts == ["t1\nb\nGrace"]
    embedder.reset()
    with factory() as session:
        article = session.get(Article, 2)
        assert article is not None
        article.author = None  # a NULL relation: only the article's own text
        session.commit()
    assert embedder.texts == ["t2\nb"]
    embedder.reset()
    with factory() as session:
        article = session.get(Article, 6)
        assert article is not None
        article.author = Author(id=3, name="Hedy", affiliation="  ")  # new, blank affiliation
        session.commit()
    assert embedder.texts == ["t6\nb\nHedy"]
    assert_current(engine)


def test_a_rename_whose_embedding_fails_writes_nothing_in_strict_mode(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    seed(factory)
    with Session(engine) as session:
        install(session, embedder=Broken())
        ada = session.get_one(Author, 1)
        ada.name = "Ada Lovelace"
        with pytest.raises(vecorm.EmbeddingError, match="provider down"):
            session.commit()
        session.rollback()
        uninstall(session)
    with Session(engine) as session:
        assert session.get_one(Author, 1).name == "Ada"
        assert stale_count(session, Article, embedder=embedder) == 0
    assert_current(engine)


def test_a_rename_whose_embedding_fails_leaves_its_rows_to_the_backfill_in_deferred_mode(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    seed(factory)
    with Session(engine) as session:
        install(session, embedder=Broken(), mode="deferred")
        session.get_one(Author, 1).name = "Ada Lovelace"
        session.commit()
        uninstall(session)
    with Session(engine) as session:
        missing = session.scalars(select(Article.id).where(Article.embedding.is_(None)))
        assert sorted(missing) == [1, 2, 3]
        assert stale_count(session, Article, embedder=embedder) == 3
        backfill(session, Article, embedder=embedder)
    assert_current(engine)


def test_a_relationship_to_the_models_own_table(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    with factory() as session:
        top = Section(id=1, heading="Storage")
        session.add_all([top, Section(id=2, heading="Pages", parent=top)])
        session.commit()
    assert sorted(embedder.texts) == ["Pages\nStorage", "Storage"]
    embedder.reset()
    with factory() as session:
        session.get_one(Section, 1).heading = "Disk storage"
        session.commit()
    assert sorted(embedder.texts) == ["Disk storage", "Pages\nDisk storage"]
    with engine.begin() as conn:
        conn.execute(text("UPDATE sections SET heading = 'Disk' WHERE id = 1"))
    with Session(engine) as session:
        stale = session.scalars(select(Section.id).where(stale_condition(Section, MODEL)))
        assert sorted(stale) == [1, 2]
        embedder.reset()
        backfill(session, Section, embedder=embedder)
    assert sorted(embedder.texts) == ["Disk", "Pages\nDisk"]


def test_worker_mode_leaves_the_renamed_authors_rows_stale_and_notifies(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    seed(factory)
    embedder.reset()
    workers = sessionmaker(engine)
    install(workers, mode="worker")
    notified: list[Any] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, params, *a: (
            notified.append(params) if "pg_notify" in statement else None
        ),
    )
    try:
        with workers() as session:
            ada = session.get(Author, 1)
            assert ada is not None
            ada.name = "Countess"
            session.commit()
    finally:
        uninstall(workers)
    assert embedder.calls == []
    assert any("articles" in str(params) for params in notified)
    with Session(engine) as session:
        assert stale_count(session, Article, embedder=embedder) == 3
        result = backfill(session, Article, embedder=embedder)
    assert result.embedded == 3
    assert sorted(embedder.texts) == [f"t{i}\nb\nCountess\nAnalytical Society" for i in (1, 2, 3)]
    assert_current(engine)


def test_backfill_finds_rows_whose_author_was_renamed_by_raw_sql(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    seed(factory)
    embedder.reset()
    with engine.begin() as conn:
        conn.execute(text("UPDATE authors SET affiliation = 'Navy' WHERE id = 2"))
    with Session(engine) as session:
        stale = session.scalars(
            select(Article.id).where(stale_condition(Article, MODEL)).order_by(Article.id)
        ).all()
        assert stale == [4, 5]
        result = backfill(session, Article, embedder=embedder)
    assert (result.embedded, embedder.texts) == (2, ["t4\nb\nGrace\nNavy", "t5\nb\nGrace\nNavy"])
    assert_current(engine)
    with engine.begin() as conn:  # a row pointed elsewhere by raw SQL is stale too
        conn.execute(update(Article).where(Article.id == 6).values(author_id=1))
    with Session(engine) as session:
        assert session.scalars(select(Article.id).where(stale_condition(Article, MODEL))).all() == [
            6
        ]


def test_sql_text_and_digest_match_python_with_null_and_blank_related_values(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    authors = [
        (1, "Ada", "Society"),
        (2, None, "only affiliation"),
        (3, "  ", "\u3000"),  # blank to Python, so to SQL
        (4, "ünïcødé ✓", None),
        (5, None, None),
    ]
    with engine.begin() as conn:
        for key, name, affiliation in authors:
            conn.execute(
                text("INSERT INTO authors (id, name, affiliation) VALUES (:i, :n, :a)"),
                {"i": key, "n": name, "a": affiliation},
            )
        rows = [(10 + key, "title", None, key) for key, *_ in authors]
        rows += [(20, "no author", "body", None), (21, None, " ", 5), (22, None, None, None)]
        for key, title, body, author in rows:
            conn.execute(
                text(
                    "INSERT INTO articles (id, title, body, category, author_id) "
                    "VALUES (:i, :t, :b, 'x', :a)"
                ),
                {"i": key, "t": title, "b": body, "a": author},
            )
    python = expected_text(engine)
    columns = columns_of(Article)
    with Session(engine) as session:
        sql = {row[0]: row[1] for row in session.execute(select(Article.id, columns.text))}
    assert sql == {key: value or "" for key, value in python.items()}
    assert python[13] == "title" and python[21] is None and python[22] is None
    with Session(engine) as session:
        stale = set(session.scalars(select(Article.id).where(stale_condition(Article, MODEL))))
        assert stale == {key for key, value in python.items() if value is not None}
        backfill(session, Article, embedder=embedder)
        # the digests Python wrote are the ones SQL computes: nothing is stale any more
        assert (
            session.scalars(select(Article.id).where(stale_condition(Article, MODEL))).all() == []
        )
    assert_current(engine)
    embedder.reset()
    with factory() as session:  # and the flush agrees with what the backfill wrote
        for article in session.scalars(select(Article)):
            article.title = article.title  # touched, unchanged: nothing to embed
        session.commit()
    assert embedder.calls == []


def test_adopting_existing_vectors_records_digests_that_include_the_related_text(
    engine: Engine, factory: sessionmaker[Session], embedder: FakeEmbedder
) -> None:
    seed(factory)
    with engine.begin() as conn:  # vectors kept, bookkeeping lost (an adopted table)
        conn.execute(update(Article).values(embedding_digest=None, embedding_model=None))
    with Session(engine) as session:
        assert stale_count(session, Article, embedder=embedder) == 6
        result = adopt(session, Article, embedder=embedder)
        assert result.recorded == 6
        assert stale_count(session, Article, embedder=embedder) == 0
    assert_current(engine)


def test_model_change_and_embedding_bulk_insert_refuse_related_text(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match=r"ModelChange\(Article\): .*related"):
        ModelChange(Article, HashingEmbedder(16))
    with engine.begin() as conn:
        with pytest.raises(ConfigurationError, match=r"bulk_insert\(Article\) .*embed=False"):
            bulk_insert(conn, Article, [{"id": 1, "title": "t"}], embedder=HashingEmbedder(DIMS))
        bulk_insert(conn, Article, [{"id": 1, "title": "t", "author_id": None}], embed=False)
    with Session(engine) as session:
        assert stale_count(session, Article, embedder=HashingEmbedder(DIMS)) == 1


async def test_an_async_session_reembeds_a_renamed_authors_rows(
    engine: Engine,
    factory: sessionmaker[Session],
    embedder: FakeEmbedder,
    vecorm_async_engine: AsyncEngine,
) -> None:
    seed(factory)
    embedder.reset()
    maker = async_sessionmaker(vecorm_async_engine, expire_on_commit=False)
    install(maker, embedder=embedder)
    try:
        async with maker() as session:
            grace = await session.get_one(Author, 2)
            grace.name = "Grace Hopper"
            session.add(Article(id=7, title="t7", author=grace))
            await session.commit()
    finally:
        uninstall(maker)
    assert sorted(embedder.texts) == [
        "t4\nb\nGrace Hopper",
        "t5\nb\nGrace Hopper",
        "t7\nGrace Hopper",
    ]
    assert_current(engine)


def test_the_notify_trigger_watches_the_foreign_key() -> None:
    assert notify_trigger(Article).columns == ("title", "body", "author_id")


def _declare(related: dict[str, Any], *, relation: str = "many") -> type[Any]:
    """A model in a registry of its own, with the relationships the bad declarations name."""

    class Own(DeclarativeBase):
        pass

    class Person(Own):
        __tablename__ = "people"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
        age: Mapped[int]
        post_id: Mapped[int | None] = mapped_column(ForeignKey("posts.id"))

    class Post(vecorm.Searchable, Own):
        __tablename__ = "posts"
        __vecorm__ = vecorm.SearchConfig(fields=("title",), dimensions=DIMS, related=related)
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        writer_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
        writer: Mapped[Person | None] = relationship(foreign_keys=[writer_id])
        readers: Mapped[list[Person]] = relationship(foreign_keys=[Person.post_id])

    try:
        Own.registry.configure()
    finally:
        Own.registry.dispose()
    return Post


@pytest.mark.parametrize(
    ("related", "message"),
    [
        ({"editor": ("name",)}, "related 'editor' is not a relationship of Post"),
        ({"writer_id": ("name",)}, "related 'writer_id' is not a relationship of Post (it is a"),
        (
            {"readers": ("name",)},
            "related 'readers' is a one-to-many relationship; only a many-to-one",
        ),
        ({"writer": ("age",)}, "related 'writer.age' is a INTEGER column of Person; related "),
        ({"writer": ("email",)}, "related 'writer.email' is not a mapped column of Person"),
    ],
)
def test_a_bad_declaration_names_the_class_and_the_problem(
    related: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"^Post\.__vecorm__: ") as raised:
        _declare(related)
    assert message in str(raised.value)


def test_a_good_declaration_in_its_own_registry_resolves() -> None:
    post = _declare({"writer": "name"})
    assert post.__vecorm__.embedded_fields == ("title", "writer.name")
