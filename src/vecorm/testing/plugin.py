"""pytest plugin registered by vecorm (entry point ``pytest11``); fixtures are documented in
:mod:`vecorm.testing`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import URL
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from vecorm.embedded import create_async_engine, create_engine
from vecorm.testing.embedders import FakeEmbedder
from vecorm.testing.server import TestServer, fresh_database, template_database, test_server


@pytest.fixture(scope="session")
def vecorm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    """The PostgreSQL server for this test session (embedded unless $VECORM_DATABASE_URL)."""
    with test_server() as server:
        yield server


@pytest.fixture(scope="session")
def vecorm_template(vecorm_server: TestServer) -> Iterator[str]:
    """Name of a template database that has the ``vector`` extension."""
    with template_database(vecorm_server) as name:
        yield name


@pytest.fixture
def vecorm_url(vecorm_server: TestServer, vecorm_template: str) -> Iterator[URL]:
    """URL of a fresh database for this test, dropped afterwards."""
    with fresh_database(vecorm_server, vecorm_template) as url:
        yield url


@pytest.fixture
def vecorm_engine(vecorm_url: URL) -> Iterator[Engine]:
    """``vecorm.create_engine`` (psycopg 3, search settings installed) on this test's database."""
    engine = create_engine(vecorm_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def vecorm_session(vecorm_engine: Engine) -> Iterator[Session]:
    """An ORM session on this test's database, closed afterwards."""
    with Session(vecorm_engine) as session:
        yield session


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    """Deterministic 1536-d embedder recording its calls (``.calls``)."""
    return FakeEmbedder(dimensions=1536)


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - async fixtures need pytest-asyncio
    pass
else:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    @pytest_asyncio.fixture
    async def vecorm_async_engine(vecorm_url: URL) -> AsyncIterator[AsyncEngine]:
        """An async engine (psycopg 3 async) on this test's database."""
        engine = create_async_engine(vecorm_url)
        try:
            yield engine
        finally:
            await engine.dispose()

    @pytest_asyncio.fixture
    async def vecorm_async_session(vecorm_async_engine: AsyncEngine) -> AsyncIterator[Any]:
        """An ``AsyncSession`` on this test's database."""
        async with AsyncSession(vecorm_async_engine) as session:
            yield session
