"""The pytest plugin's janitor: a database per test, made from the template, dropped after."""

from __future__ import annotations

import numpy as np
import psycopg
from sqlalchemy import URL, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm
from vecorm.embedded import libpq_conninfo
from vecorm.testing import FakeEmbedder
from vecorm.testing.server import TestServer, fresh_database


def database_exists(server: TestServer, name: str) -> bool:
    with psycopg.connect(libpq_conninfo(server.base_url), autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def test_fresh_database_has_vector_and_is_dropped(
    vecorm_server: TestServer, vecorm_template: str
) -> None:
    with fresh_database(vecorm_server, vecorm_template) as url:
        assert url.database is not None and url.database.startswith("vecorm_test_")
        engine = vecorm.create_engine(url)
        with engine.connect() as conn:
            assert (
                conn.execute(
                    text("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
                ).scalar_one()
                == 1
            )
        # An open connection must not keep the database alive.
        kept_open = engine.connect()
        assert database_exists(vecorm_server, url.database)
    assert not database_exists(vecorm_server, url.database)
    kept_open.invalidate()
    engine.dispose()


def test_each_test_gets_its_own_database(vecorm_url: URL, vecorm_template: str) -> None:
    assert vecorm_url.database != vecorm_template
    engine = vecorm.create_engine(vecorm_url)
    with engine.connect() as conn:
        tables = conn.execute(
            text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        ).scalar_one()
    engine.dispose()
    assert tables == 0


def test_fake_embedder_is_deterministic_and_records_calls() -> None:
    embedder = FakeEmbedder(dimensions=32, max_batch_size=2)
    first = embedder.embed(["error 0x80070057", "vacuum"])
    again = embedder.embed(["error 0x80070057"])
    assert embedder.calls == [["error 0x80070057", "vacuum"], ["error 0x80070057"]]
    np.testing.assert_array_equal(first[0], again[0])
    assert embedder.model_name == "vecorm-hashing-32"


class Base(DeclarativeBase):
    pass


class Card(vecorm.Searchable, Base):
    __tablename__ = "cards"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=4)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


async def test_async_engine_round_trips_binary_vectors(
    vecorm_async_engine: AsyncEngine, vecorm_async_session: AsyncSession
) -> None:
    async with vecorm_async_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    vecorm_async_session.add_all(
        [Card(body="a", embedding=[1, 0, 0, 0]), Card(body="b", embedding=[0, 1, 0, 0])]
    )
    await vecorm_async_session.commit()
    nearest = await vecorm_async_session.scalars(
        select(Card.body).order_by(Card.embedding.cosine_distance([0.1, 1, 0, 0]))
    )
    assert nearest.all() == ["b", "a"]
    stored = await vecorm_async_session.scalar(select(Card.embedding).where(Card.body == "a"))
    assert isinstance(stored, np.ndarray)
    np.testing.assert_array_equal(stored, [1, 0, 0, 0])
