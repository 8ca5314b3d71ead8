"""pytest plugin registered by vecorm (entry point ``pytest11``); fixtures are documented in
:mod:`vecorm.testing`.

pytest loads it in every project that has vecorm installed, with or without the
``vecorm[testing]`` extra, so this module imports only pytest, the standard library and
pytest-asyncio when it is there. The server, pytest-postgresql and the engines are imported by
the fixtures that need them, and a fixture used without its extra fails saying what to
install. Every fixture is named ``vecorm_*``, so none can shadow a project's own.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sqlalchemy import URL
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.orm import Session

    from vecorm.testing.embedders import FakeEmbedder
    from vecorm.testing.server import TestServer

_DATABASE_FIXTURES = "vecorm's database fixtures (vecorm_url, vecorm_engine ...)"
_ASYNC_FIXTURES = "vecorm_async_engine and vecorm_async_session"
#: How to install each optional dependency.
_INSTALL = {
    "pytest_postgresql": "pytest-postgresql: pip install 'vecorm[testing]'",
    "pytest_asyncio": "pytest-asyncio: pip install pytest-asyncio",
}


def _require(module: str, fixtures: str) -> ModuleType:
    """``module`` imported, or the test fails saying what ``fixtures`` need."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in _INSTALL:
            raise
    # Outside the except block: the report shows this message, not the import's traceback.
    pytest.fail(f"{fixtures} need {_INSTALL[missing]}", pytrace=False)


@pytest.fixture(scope="session")
def vecorm_server() -> Iterator[TestServer]:
    """The PostgreSQL server for this test session (embedded unless $VECORM_DATABASE_URL)."""
    server = _require("vecorm.testing.server", _DATABASE_FIXTURES)
    with server.test_server() as running:
        yield running


@pytest.fixture(scope="session")
def vecorm_template(vecorm_server: TestServer) -> Iterator[str]:
    """Name of a template database that has the ``vector`` extension."""
    server = _require("vecorm.testing.server", _DATABASE_FIXTURES)
    with server.template_database(vecorm_server) as name:
        yield name


@pytest.fixture
def vecorm_url(vecorm_server: TestServer, vecorm_template: str) -> Iterator[URL]:
    """URL of a fresh database for this test, dropped afterwards."""
    server = _require("vecorm.testing.server", _DATABASE_FIXTURES)
    with server.fresh_database(vecorm_server, vecorm_template) as url:
        yield url


@pytest.fixture
def vecorm_engine(vecorm_url: URL) -> Iterator[Engine]:
    """``vecorm.create_engine`` (psycopg 3) on this test's database."""
    from vecorm.engine import create_engine

    engine = create_engine(vecorm_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def vecorm_session(vecorm_engine: Engine) -> Iterator[Session]:
    """An ORM session on this test's database, closed afterwards."""
    from sqlalchemy.orm import Session

    with Session(vecorm_engine) as session:
        yield session


@pytest.fixture
def vecorm_fake_embedder() -> FakeEmbedder:
    """Deterministic 1536-d embedder recording its calls (``.calls``)."""
    from vecorm.testing.embedders import FakeEmbedder

    return FakeEmbedder(dimensions=1536)


async def _async_engine(vecorm_url: URL) -> AsyncIterator[AsyncEngine]:
    """An async engine (psycopg 3 async) on this test's database."""
    from vecorm.engine import create_async_engine

    engine = create_async_engine(vecorm_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _async_session(vecorm_async_engine: AsyncEngine) -> AsyncIterator[Any]:
    """An ``AsyncSession`` on this test's database."""
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(vecorm_async_engine) as session:
        yield session


# Async fixtures are declared through pytest-asyncio when it is installed; without it they
# exist all the same and say what is missing.
_asyncio_fixture: Callable[..., Any] | None
try:
    import pytest_asyncio
except ImportError:
    _asyncio_fixture = None
else:
    _asyncio_fixture = pytest_asyncio.fixture

if _asyncio_fixture is None:

    @pytest.fixture(name="vecorm_async_engine")
    def _async_engine_unavailable() -> None:
        """An async engine on this test's database (needs pytest-asyncio)."""
        _require("pytest_asyncio", _ASYNC_FIXTURES)

    @pytest.fixture(name="vecorm_async_session")
    def _async_session_unavailable() -> None:
        """An ``AsyncSession`` on this test's database (needs pytest-asyncio)."""
        _require("pytest_asyncio", _ASYNC_FIXTURES)

else:
    _async_engine_fixture = _asyncio_fixture(_async_engine, name="vecorm_async_engine")
    _async_session_fixture = _asyncio_fixture(_async_session, name="vecorm_async_session")
