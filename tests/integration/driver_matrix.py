"""Run the same synchronous test code on each PostgreSQL driver SQLAlchemy supports.

Async drivers run the code through ``AsyncConnection.run_sync`` / ``AsyncSession.run_sync`` on a
private event loop, so every statement really goes through asyncpg / psycopg's async API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import URL, create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

T = TypeVar("T")

DRIVERS = ("psycopg", "psycopg_async", "psycopg2", "asyncpg")
ASYNC_DRIVERS = frozenset({"psycopg_async", "asyncpg"})


class DriverDatabase:
    """One test database reached through one driver."""

    def __init__(self, driver: str, url: URL) -> None:
        self.driver = driver
        self.url = url.set(drivername=f"postgresql+{driver}")
        self._runner: asyncio.Runner | None = None
        self._async_engine: AsyncEngine | None = None
        if driver in ASYNC_DRIVERS:
            self._runner = asyncio.Runner()
            self._async_engine = create_async_engine(self.url)
            self.engine: Engine = self._async_engine.sync_engine
        else:
            self.engine = create_engine(self.url)

    @property
    def is_async(self) -> bool:
        return self._runner is not None

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` inside a transaction that commits."""
        if self._runner is None:
            with self.engine.begin() as conn:
                return work(conn)
        return self._runner.run(self._arun(work))

    async def _arun(self, work: Callable[[Connection], T]) -> T:
        assert self._async_engine is not None
        async with self._async_engine.begin() as conn:
            return await conn.run_sync(work)

    def session(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` with an ORM session (an ``AsyncSession`` underneath if async)."""
        if self._runner is None:
            with Session(self.engine) as session:
                return work(session)
        return self._runner.run(self._asession(work))

    async def _asession(self, work: Callable[[Session], T]) -> T:
        async with AsyncSession(self._async_engine) as session:
            return await session.run_sync(work)

    def dispose(self) -> None:
        """Close pooled connections; the next statement connects afresh."""
        if self._runner is None:
            self.engine.dispose()
            return
        assert self._async_engine is not None
        self._runner.run(self._async_engine.dispose())

    def close(self) -> None:
        self.dispose()
        if self._runner is not None:
            self._runner.close()


@contextmanager
def driver_database(driver: str, url: URL) -> Iterator[DriverDatabase]:
    database = DriverDatabase(driver, url)
    try:
        yield database
    finally:
        database.close()


def scalars(conn: Connection, statement: Any) -> list[Any]:
    return list(conn.execute(statement).scalars().all())


def bits_as_text(value: Any) -> Any:
    """``value`` with every bit value as its string of 0 and 1, in tuples and lists too.

    pgvector's ``BIT`` (and vecorm's, to the letter) returns what SQLAlchemy gives: a str,
    except ``asyncpg.BitString`` on asyncpg with SQLAlchemy 2.0 (the lowest-versions run).
    """
    if isinstance(value, tuple | list):
        return type(value)(bits_as_text(item) for item in value)
    as_string = getattr(value, "as_string", None)
    return as_string() if callable(as_string) and not isinstance(value, str) else value
