"""SQLModel table models: the mixin, the types, auto-embedding and the query helpers."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import func, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, Session, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

import vecorm
from vecorm.embedding.events import install
from vecorm.types import BIT, HALFVEC, Vector

DIMENSIONS = 32
TEXTS = {
    1: ("Vacuum tuning", "autovacuum settings for busy tables"),
    2: ("Index types", "hnsw and ivfflat indexes for vectors"),
    3: ("Backups", "point in time recovery with wal archiving"),
}


class Article(vecorm.Searchable, SQLModel, table=True):
    __tablename__ = "sqlmodel_articles"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=DIMENSIONS,
        embedder=vecorm.HashingEmbedder(dimensions=DIMENSIONS),
    )

    id: int | None = Field(default=None, primary_key=True)
    title: str
    body: str
    category: str = "docs"


class Thing(SQLModel, table=True):
    __tablename__ = "sqlmodel_things"

    id: int | None = Field(default=None, primary_key=True)
    embedding: list[float] | None = Field(default=None, sa_type=Vector(3))
    half: list[float] | None = Field(default=None, sa_type=HALFVEC(3))
    bits: str | None = Field(default=None, sa_type=BIT(4))


TABLES = [Article.__table__, Thing.__table__]  # type: ignore[attr-defined]


@pytest.fixture
def engine(vecorm_engine: Engine) -> Iterator[Engine]:
    SQLModel.metadata.create_all(vecorm_engine, tables=TABLES)
    yield vecorm_engine


@pytest.fixture
def embedder() -> vecorm.Embedder:
    return vecorm.search_config(Article).embedder  # type: ignore[return-value]


def _articles() -> list[Article]:
    return [Article(id=key, title=title, body=body) for key, (title, body) in TEXTS.items()]


def test_table_has_the_mixin_columns_and_indexes(engine: Engine) -> None:
    inspector = inspect(engine)
    columns = {c["name"]: str(c["type"]) for c in inspector.get_columns("sqlmodel_articles")}
    assert columns["embedding"] == f"VECTOR({DIMENSIONS})"
    assert columns["search_vector"] == "TSVECTOR"
    indexes = {i["name"] for i in inspector.get_indexes("sqlmodel_articles")}
    assert indexes == {
        "ix_sqlmodel_articles_embedding_hnsw",
        "ix_sqlmodel_articles_search_vector_gin",
    }
    assert "embedding" not in Article.model_fields  # stays out of pydantic / API schemas


def test_auto_embedding_and_query_helpers_sync(engine: Engine, embedder: vecorm.Embedder) -> None:
    with Session(engine) as session:
        install(session)
        session.add_all(_articles())
        session.commit()
        stored = session.exec(select(Article).order_by(Article.id)).all()
        assert all(isinstance(a.embedding, np.ndarray) for a in stored)
        expected = embedder.embed(["Vacuum tuning\n\nautovacuum settings for busy tables"])[0]
        np.testing.assert_allclose(stored[0].embedding, expected, rtol=1e-6)
        assert stored[0].embedding_model == embedder.model_name

        nearest = session.exec(Article.nearest("hnsw ivfflat indexes vectors", k=2)).all()
        assert [row[0].id for row in nearest] == [2, nearest[1][0].id]
        assert nearest[0].distance < nearest[1].distance
        matches = session.exec(Article.text_search("autovacuum")).all()
        assert [row[0].id for row in matches] == [1]
        hybrid = session.exec(Article.hybrid_search("wal archiving recovery", k=3)).all()
        assert hybrid[0][0].id == 3
        close = session.exec(
            select(Article.id).where(Article.distance_to("point in time recovery") < 0.99)
        ).all()
        assert 3 in close

        # Editing the text re-embeds; editing another field does not.
        article = session.get(Article, 1)
        assert article is not None
        before = article.embedding.copy()
        article.category = "ops"
        session.commit()
        np.testing.assert_array_equal(session.get(Article, 1).embedding, before)  # type: ignore[union-attr]
        article.body = "hnsw and ivfflat indexes for vectors"
        session.commit()
        assert not np.array_equal(session.get(Article, 1).embedding, before)  # type: ignore[union-attr]


def test_embedding_in_constructor_and_assignment(engine: Engine, embedder: vecorm.Embedder) -> None:
    mine = np.linspace(-1, 1, DIMENSIONS, dtype=np.float32)
    with Session(engine) as session:
        install(session)
        article = Article(title="Mine", body="my own vector", embedding=mine.tolist())
        assert isinstance(article.embedding, np.ndarray)  # validated and converted on the way in
        session.add(article)
        session.commit()
        stored = session.exec(select(Article)).one()
        np.testing.assert_array_equal(stored.embedding, mine)  # kept, not re-embedded
        assert not np.allclose(stored.embedding, embedder.embed(["Mine\n\nmy own vector"])[0])
        assert stored.embedding_digest is not None

        with pytest.raises(
            vecorm.DimensionMismatch, match=f"Article.embedding expects {DIMENSIONS} values, got 2"
        ):
            stored.embedding = [1.0, 2.0]
        with pytest.raises(vecorm.DimensionMismatch, match="Article.embedding"):
            Article(title="x", body="y", embedding=[1.0])
    dumped = Article(title="t", body="b", embedding=mine).model_dump()
    assert dumped == {"id": None, "title": "t", "body": "b", "category": "docs"}
    validated = Article.model_validate({"title": "t", "body": "b"})
    assert validated.title == "t" and validated.embedding is None


def test_vecorm_types_in_sqlmodel_fields(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all(
            [
                Thing(id=1, embedding=[1, 0, 0], half=[1, 0, 0], bits="1000"),
                Thing(id=2, embedding=[0, 1, 0], half=[0, 1, 0], bits="0111"),
            ]
        )
        session.commit()
        ordered = session.exec(
            select(Thing.id).order_by(Thing.embedding.cosine_distance([0, 1, 0.1]))  # type: ignore[union-attr]
        ).all()
        assert ordered == [2, 1]
        by_bits = session.exec(
            select(Thing.id).order_by(Thing.bits.hamming_distance("0110"))  # type: ignore[union-attr]
        ).all()
        assert by_bits == [2, 1]
        thing = session.get(Thing, 1)
        assert thing is not None
        assert (thing.embedding, thing.half, thing.bits) == (
            [1.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            "1000",
        )


async def test_auto_embedding_and_nearest_async(
    vecorm_async_engine: AsyncEngine, embedder: vecorm.Embedder
) -> None:
    async with vecorm_async_engine.begin() as conn:
        await conn.run_sync(lambda sync: SQLModel.metadata.create_all(sync, tables=TABLES))
    async with AsyncSession(vecorm_async_engine) as session:
        install(session)
        session.add_all(_articles())
        await session.commit()
        missing = await session.exec(
            select(func.count()).select_from(Article).where(Article.embedding.is_(None))
        )
        assert missing.one() == 0
        rows = (await session.exec(Article.nearest("autovacuum busy tables", k=3))).all()
        assert rows[0][0].id == 1
        assert [row.distance for row in rows] == sorted(row.distance for row in rows)
        article = await session.get(Article, 2)
        assert article is not None
        article.embedding = np.ones(DIMENSIONS, dtype=np.float32)
        await session.commit()
        things = await session.exec(select(Article.id).order_by(Article.id))
        assert things.all() == [1, 2, 3]
        refreshed = (await session.exec(select(Article.embedding).where(Article.id == 2))).one()
        np.testing.assert_array_equal(refreshed, np.ones(DIMENSIONS))
