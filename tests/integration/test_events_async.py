"""The flush hook under asyncio: AsyncSession, async_sessionmaker, async_scoped_session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
)
from sqlalchemy.orm import Session

import vecorm
from tests.integration.test_events import (
    DIMS,
    Base,
    Document,
    assert_current,
    count_rows,
    openai_embedder,
    stored,
)
from vecorm.embedding.embedders import HashingEmbedder
from vecorm.embedding.events import install, installed_embedder, uninstall
from vecorm.testing import FakeEmbedder
from vecorm.testing.openai_server import OpenAIServer


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    Base.metadata.create_all(vecorm_engine)
    return vecorm_engine


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(dimensions=DIMS, max_batch_size=4)


@pytest.fixture
async def maker(
    engine: Engine, vecorm_async_engine: AsyncEngine, embedder: FakeEmbedder
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    factory = async_sessionmaker(vecorm_async_engine, expire_on_commit=False)
    install(factory, embedder=embedder)
    yield factory
    uninstall(factory)


async def test_async_sessionmaker_embeds_in_batches(
    engine: Engine, maker: async_sessionmaker[AsyncSession], embedder: FakeEmbedder
) -> None:
    async with maker() as session:
        assert installed_embedder(session) is embedder
        session.add_all(Document(title=f"title {i}", content="body") for i in range(10))
        await session.commit()
        assert [len(batch) for batch in embedder.calls] == [4, 4, 2]
        embedder.reset()
        documents = (await session.scalars(select(Document).order_by(Document.id))).all()
        documents[0].category = "not text"
        documents[1].title = "retitled"
        await session.commit()
    assert embedder.calls == [["retitled\nbody"]]
    assert_current(engine)


async def test_install_on_async_maker_is_scoped_and_undone(
    engine: Engine, vecorm_async_engine: AsyncEngine, embedder: FakeEmbedder
) -> None:
    hooked = async_sessionmaker(vecorm_async_engine)
    other = async_sessionmaker(vecorm_async_engine)
    install(hooked, embedder=embedder)
    assert hooked.kw["sync_session_class"] is not Session
    async with other() as session:
        session.add(Document(id=1, title="other maker"))
        await session.commit()
    with Session(engine) as session:
        session.add(Document(id=2, title="sync session"))
        session.commit()
    async with hooked() as session:
        session.add(Document(id=3, title="hooked"))
        await session.commit()
    uninstall(hooked)
    assert "sync_session_class" not in hooked.kw
    async with hooked() as session:
        session.add(Document(id=4, title="after uninstall"))
        await session.commit()
    assert embedder.texts == ["hooked"]
    assert {row_id: row[1] is not None for row_id, row in stored(engine).items()} == {
        1: False,
        2: False,
        3: True,
        4: False,
    }


async def test_async_session_instance_and_async_scoped_session(
    engine: Engine, vecorm_async_engine: AsyncEngine, embedder: FakeEmbedder
) -> None:
    async with AsyncSession(vecorm_async_engine) as session:
        install(session, embedder=embedder)
        session.add(Document(id=1, title="instance"))
        await session.commit()
        uninstall(session)
    scoped = async_scoped_session(
        async_sessionmaker(vecorm_async_engine), scopefunc=asyncio.current_task
    )
    install(scoped, embedder=embedder)
    scoped.add(Document(id=2, title="scoped"))
    await scoped.commit()
    await scoped.remove()
    uninstall(scoped)
    assert embedder.calls == [["instance"], ["scoped"]]
    assert_current(engine)


async def test_autoflush_before_a_query_embeds_too(
    engine: Engine, maker: async_sessionmaker[AsyncSession], embedder: FakeEmbedder
) -> None:
    async with maker() as session:
        session.add(Document(id=1, title="autoflushed"))
        digest = await session.scalar(select(Document.embedding_digest))
        assert digest is not None
        await session.rollback()
    assert embedder.calls == [["autoflushed"]]


class SlowAsyncEmbedder:
    """``aembed`` sleeps on the loop; ``embed`` must never be used from an AsyncSession."""

    dimensions = DIMS
    model_name = f"vecorm-hashing-{DIMS}"
    max_batch_size = 4

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> Any:
        raise AssertionError("the blocking embed() was called inside the event loop")

    async def aembed(self, texts: Sequence[str]) -> Any:
        await asyncio.sleep(0.05)
        self.batches.append(list(texts))
        return HashingEmbedder(DIMS).embed(texts)


class BlockingOnlyEmbedder:
    """No ``aembed``: the hook has to move ``embed`` to a worker thread."""

    dimensions = DIMS
    model_name = f"vecorm-hashing-{DIMS}"
    max_batch_size = 4

    def embed(self, texts: Sequence[str]) -> Any:
        time.sleep(0.05)
        return HashingEmbedder(DIMS).embed(texts)


async def ticks_during(work: Any) -> int:
    """How often another task ran (every 5 ms) while ``work`` was awaited."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        await work
    finally:
        done.set()
        await task
    return ticks


@pytest.mark.parametrize("provider_class", [SlowAsyncEmbedder, BlockingOnlyEmbedder])
async def test_embedding_does_not_block_the_event_loop(
    engine: Engine, vecorm_async_engine: AsyncEngine, provider_class: type[Any]
) -> None:
    provider = provider_class()
    factory = async_sessionmaker(vecorm_async_engine)
    install(factory, embedder=provider)
    async with factory() as session:
        session.add_all(Document(title=f"row {i}") for i in range(12))
        started = time.perf_counter()
        ticks = await ticks_during(session.commit())
        elapsed = time.perf_counter() - started
    uninstall(factory)
    # three 50 ms provider calls: a blocked loop would let the ticker run ~once in between
    assert elapsed >= 0.15
    assert ticks >= 15, ticks
    if isinstance(provider, SlowAsyncEmbedder):
        assert [len(batch) for batch in provider.batches] == [4, 4, 4]
    assert_current(engine)


@pytest.fixture
def openai_server() -> Any:
    with OpenAIServer() as server:
        yield server


async def test_async_strict_failure_then_retried_commit(
    engine: Engine,
    vecorm_url: URL,
    vecorm_async_engine: AsyncEngine,
    openai_server: OpenAIServer,
) -> None:
    provider = openai_embedder(openai_server)
    async with AsyncSession(vecorm_async_engine) as session:
        install(session, embedder=provider)
        session.add_all(Document(id=i, title=f"doc {i}") for i in range(1, 13))
        openai_server.fail_on_request(2, status=500)
        openai_server.fail_on_request(3, status=500)
        with pytest.raises(vecorm.EmbeddingError, match="batch 2 of 3") as caught:
            await session.commit()
        assert caught.value.__cause__ is not None
        assert await asyncio.to_thread(count_rows, vecorm_url) == 0
        await session.commit()
        uninstall(session)
    assert openai_server.batch_sizes == [4] * 6
    assert_current(engine, model=provider.model_name)
    await provider.aclose()


async def test_async_deferred_failure_writes_rows_without_vectors(
    engine: Engine, vecorm_async_engine: AsyncEngine, openai_server: OpenAIServer
) -> None:
    provider = openai_embedder(openai_server)
    factory = async_sessionmaker(vecorm_async_engine)
    install(factory, embedder=provider, mode="deferred")
    async with factory() as session:
        session.add_all(Document(id=i, title=f"doc {i}") for i in range(1, 13))
        openai_server.fail_on_request(3, status=500)
        openai_server.fail_on_request(4, status=500)
        await session.commit()
    uninstall(factory)
    rows = stored(engine)
    assert sorted(row_id for row_id, row in rows.items() if row[1] is None) == [9, 10, 11, 12]
    vector = rows[1][1]
    assert vector is not None
    np.testing.assert_allclose(vector, HashingEmbedder(DIMS).embed(["doc 1"])[0], rtol=1e-6)
    await provider.aclose()
